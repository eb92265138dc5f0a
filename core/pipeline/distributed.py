"""Sharding the heavy analyses over processes started by ``torchrun``.

Each process (rank) runs head importance, the pruning curve and attention strength on its
own contiguous part of the image set, on its own GPU when there is one; the per-image
results are gathered and reduced to exactly what one process would compute. Rank 0 then
finishes the cheap parts (pattern sample, partial pruning of the top heads) and writes the
bundle, which the dashboard opens like any other:

    torchrun --nproc-per-node 4 -m core analyze --model NAME --images DIR --out results.zip

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs in one
process and these helpers are no-ops.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from core.inputs.images import share_of
from core.measures.importance import HeadImportance
from core.measures.strength import PER_IMAGE, StrengthStats

__all__ = [
    "Shards",
    "combine_curves",
    "combine_importance",
    "combine_strength",
    "current",
    "gather",
    "local_device",
    "start_from_environment",
    "stop",
]


@dataclass(frozen=True)
class Shards:
    """This process's place among ``size`` processes (rank 0 writes the results)."""

    rank: int = 0
    size: int = 1

    def part(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items: sizes differ by at most one."""
        return share_of(n, self.rank, self.size)


def start_from_environment() -> Shards:
    """Join the process group ``torchrun`` describes in the environment; one process without it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return current()


def current() -> Shards:
    if dist.is_available() and dist.is_initialized():
        return Shards(dist.get_rank(), dist.get_world_size())
    return Shards()


def local_device() -> torch.device | None:
    """The GPU of this rank (``LOCAL_RANK``) when GPUs are present; ``None`` lets the model choose."""
    if "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    return None


def stop(*, together: bool = False) -> None:
    """Leave the process group (a no-op without one).

    Args:
        together: wait for every rank first. A rank that tore its group down while
            rank 0 was still working was seen to abort at exit now and then (gloo, CPU),
            so a run that succeeded leaves together; after an error ranks leave at once.
    """
    if dist.is_available() and dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def gather(value: Any, shards: Shards) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank (small results only: they are pickled)."""
    if shards.size == 1:
        return [value]
    out: list[Any] = [None] * shards.size
    dist.all_gather_object(out, value)
    return out


def combine_importance(parts: Sequence[HeadImportance]) -> HeadImportance:
    """The importance of the whole set from its shards' (in image order): per-image rows re-indexed, set values recomputed.

    The global values are the mean over all images (``taylor``: the absolute value of that
    mean), as ``head_importance_tables`` computes them in one process.
    """
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(part.unpruned) for part in parts])
    per_image = pd.concat(
        [part.per_image.assign(image=part.per_image["image"] + offset) for part, offset in zip(parts, offsets)],
        ignore_index=True,
    )
    unpruned = pd.concat(
        [part.unpruned.assign(image=part.unpruned["image"] + offset) for part, offset in zip(parts, offsets)],
        ignore_index=True,
    )
    # one process's row order: metric by metric, then image, layer, head
    rank = {metric: i for i, metric in enumerate(dict.fromkeys(per_image["metric"]))}
    per_image = (
        per_image.assign(order=per_image["metric"].map(rank))
        .sort_values(["order", "image", "layer", "head"], kind="stable")
        .drop(columns="order")
        .reset_index(drop=True)
    )
    keys = ["layer", "head", "metric"]
    means = per_image.groupby(keys, sort=False)["value"].mean().reset_index()
    taylor = means["metric"] == "taylor"
    means.loc[taylor, "value"] = means.loc[taylor, "value"].abs()
    overall = parts[0].overall[keys].merge(means, on=keys, how="left")
    return HeadImportance(overall=overall, per_image=per_image, unpruned=unpruned)


def combine_curves(parts: Sequence[tuple[pd.DataFrame, int]]) -> pd.DataFrame:
    """The pruning curve of the whole set from ``(curve, images)`` per shard: accuracy and similarity weighted by images."""
    if len(parts) == 1:
        return parts[0][0]
    total = sum(images for _, images in parts)
    curve = parts[0][0].copy()
    for column in ("accuracy", "similarity"):
        curve[column] = sum(part[column].to_numpy() * images for part, images in parts) / total
    return curve


def combine_strength(parts: Sequence[StrengthStats]) -> StrengthStats:
    """Strength statistics of the whole set from its shards': per-image arrays joined, offset means weighted."""
    if len(parts) == 1:
        return parts[0]
    total = sum(part.num_images for part in parts)
    offset = sum(part.offset_mean.astype(np.float64) * part.num_images for part in parts) / total
    joined = {name: np.concatenate([getattr(part, name) for part in parts]) for name in PER_IMAGE}
    return StrengthStats(**joined, offset_mean=offset.astype(np.float32), grid=parts[0].grid)
