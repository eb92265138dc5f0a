"""Every default of an analysis, in one place: the pages, the command line and core read them here.

``CaseSettings`` holds what a set's analysis is computed with (it is stored in a saved
bundle's manifest); ``images_per_batch`` is the one rule for how many images a batch
of any pass holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from core.errors import InvalidSetting

if TYPE_CHECKING:
    from core.models.handle import ViTHandle

__all__ = [
    "ATTENTION_BUDGET_BYTES",
    "BATCH_CAP",
    "DEFAULT_CLUSTERS",
    "DEFAULT_CURVE_STEPS",
    "DEFAULT_LIBRARY_MB",
    "DEFAULT_HURT_IMAGES",
    "DEFAULT_MAX_MAPS",
    "DEFAULT_SEED",
    "DEFAULT_STUDY_MB",
    "DEFAULT_TOP_K",
    "HELD_BUDGET",
    "MAP_KINDS",
    "MEMORY_CAP",
    "MEMORY_ENV",
    "MEMORY_SHARE",
    "RUNNING_ANALYSES",
    "SAMPLE_SIZES",
    "CaseSettings",
    "MapKind",
    "images_per_batch",
    "memory_budget",
]

MapKind = Literal["patch", "cls"]
MAP_KINDS: tuple[MapKind, ...] = get_args(MapKind)

DEFAULT_TOP_K = 5
DEFAULT_HURT_IMAGES = 5
DEFAULT_MAX_MAPS = 10_000  # demo set: sampled, trained, laid out and clustered in about 9 s on two idle cores
SAMPLE_SIZES = (2_000, 5_000, 10_000, 20_000)  # the sample caps the patterns page offers
DEFAULT_CLUSTERS = 6
DEFAULT_CURVE_STEPS = 10
DEFAULT_SEED = 0

# the server's study library (core.study.library): its quota in all, and the cap on one study
# when the caller gives none (the dashboard passes its upload limit)
DEFAULT_LIBRARY_MB = 2000
DEFAULT_STUDY_MB = 512

BATCH_CAP = 64  # images per batch at most
# a batch keeps the input of every block for the ablations to restart from: at most this many floats
HELD_BUDGET = 2**27
# and its attention [B, L, H, T, T] in float32, captured once and reduced batch by batch
ATTENTION_BUDGET_BYTES = 128 * 2**20
# a server's analyses that compute at once; more wait in line. Each already uses every core
# through torch's threads, so two share this project's two cores without starving the pages.
RUNNING_ANALYSES = 2

# What one model and one image's analysis may take (core.models.memory checks it before a model
# loads): a share of the machine's memory (of the container's limit when that is lower),
# so the analyses RUNNING_ANALYSES allows, the pages and the other sessions' models still
# fit beside it; capped, so a large server still refuses what one image should never need
# (16 GiB loads ViT-g's 1.1 billion weights: 13 GB at the peak). On this project's 24 GiB
# machine: 5.9 GiB, which loads ViT-L but not ViT-H. HEADSCOPE_MEMORY_MB replaces it (in megabytes).
MEMORY_ENV = "HEADSCOPE_MEMORY_MB"
MEMORY_SHARE = 0.25
MEMORY_CAP = 16 * 2**30


@dataclass(frozen=True)
class CaseSettings:
    """What a set's analysis (and the case study built on it) is computed with; stored in a bundle's manifest.

    Attributes:
        top_k: heads studied per metric (partial pruning runs for the union over metrics).
        hurt_images: images per head on which partial pruning runs: those where pruning
            the whole head lowers the target probability most (for a backbone: changes
            its output most).
        kind: ``"patch"`` or ``"cls"`` maps for the pattern clusters.
        max_maps: maps sampled for the pattern autoencoder.
        n_clusters: pattern clusters.
        curve_steps: points of the cumulative pruning curve.
        seed: seed of the map sample, the autoencoder, the layout, k-means and the
            curve's random order.
    """

    top_k: int = DEFAULT_TOP_K
    hurt_images: int = DEFAULT_HURT_IMAGES
    kind: MapKind = "patch"
    max_maps: int = DEFAULT_MAX_MAPS
    n_clusters: int = DEFAULT_CLUSTERS
    curve_steps: int = DEFAULT_CURVE_STEPS
    seed: int = DEFAULT_SEED

    def __post_init__(self) -> None:
        if self.kind not in MAP_KINDS:
            raise InvalidSetting(f"Unknown map kind '{self.kind}'; use 'patch' or 'cls'.")
        for name in ("top_k", "hurt_images", "max_maps", "n_clusters", "curve_steps"):
            if int(getattr(self, name)) < 1:
                raise InvalidSetting(f"The setting {name.replace('_', ' ')} must be at least 1, not {getattr(self, name)}.")


def images_per_batch(handle: ViTHandle, cap: int | None = None) -> int:
    """Images one batch of any pass holds: at most ``cap`` (default ``BATCH_CAP``), within both budgets.

    A batch keeps every block's input (``(L + 1) * T * D`` floats per image, within
    ``HELD_BUDGET``) and its attention (``L * H * T * T`` float32 per image, within
    ``ATTENTION_BUDGET_BYTES``), so memory is bounded by the batch whatever the set's size.
    """
    if cap is not None and cap < 1:
        raise InvalidSetting("The batch size must be at least 1.")
    tokens = (handle.num_layers + 1) * handle.num_tokens * int(handle.model.embed_dim)
    attention = handle.num_layers * handle.num_heads * handle.num_tokens**2 * 4
    return max(1, min(cap or BATCH_CAP, HELD_BUDGET // tokens, ATTENTION_BUDGET_BYTES // attention))


def memory_budget() -> int:
    """Bytes one model and one image's analysis may take: ``$HEADSCOPE_MEMORY_MB``, else
    ``MEMORY_SHARE`` of the machine's (or container's) memory, at most ``MEMORY_CAP``.

    Raises:
        InvalidSetting: ``HEADSCOPE_MEMORY_MB`` is not a positive whole number.
    """
    given = os.environ.get(MEMORY_ENV, "").strip()
    if given:
        if not given.isdecimal() or int(given) < 1:
            raise InvalidSetting(f"{MEMORY_ENV} must be a whole number of megabytes such as 8192, not '{given[:20]}'.")
        return int(given) * 2**20
    return min(int(_physical_memory() * MEMORY_SHARE), MEMORY_CAP)


def _physical_memory() -> int:
    """The machine's memory in bytes, or the container's cgroup limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdecimal():  # v2 says "max" when there is no limit
            total = min(total, int(text))
    return total
