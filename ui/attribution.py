"""Explanations page: the focus image's relevance maps and how faithful they are, cached.

The cached wrappers key on the model's key, image ids (hashes of their bytes) and plain
settings; the handle and the images go in as underscore arguments. The gradient
rollout explains each image's target class: its label when known, else the model's
top-1, as everywhere in the app. The page's charts are in ``viz.attribution``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
import torch
from PIL import Image

from core.inputs.images import ImageSet
from core.measures.attribution import METHODS, compare_faithfulness, relevance_maps
from core.models.handle import ViTHandle
from ui import patterns
from ui.display import progress_bar
from viz.attribution import TINT_PERCENTILE, tint_scale

__all__ = [
    "FOCUS_ONLY",
    "SET_START",
    "FAITHFULNESS_IMAGES",
    "TINT_PERCENTILE",
    "ImageMaps",
    "faithfulness",
    "head_frame",
    "head_table",
    "image_maps",
    "map_picture",
    "methods_for",
]

FOCUS_ONLY, SET_START = "focus", "set"  # the faithfulness scores' scope radio

# The most images the set-level faithfulness check scores: each costs (2 + 2 x methods) x
# (steps + 1) forwards (the random order once): about 15 s on DINOv2-S on this machine's 2 cores.
FAITHFULNESS_IMAGES = 32


@dataclass(frozen=True)
class ImageMaps:
    """One image's maps, ``[rows, cols]`` per method (``core.measures.attribution.METHODS``), and the heads' shares.

    ``heads``: ``[L, H]`` each head's share of the gradient rollout, ``None`` for a
    backbone; ``target``: the class it explains and ``predicted`` the model's top-1,
    ``None`` for a backbone.
    """

    maps: dict[str, np.ndarray]
    heads: np.ndarray | None
    target: int | None
    predicted: int | None = None


def _target(handle: ViTHandle, image_set: ImageSet, image_id: str) -> int | None:
    """The image's label as the class to explain, ``None`` (the top-1) when unknown or for a backbone."""
    label = image_set.by_id(image_id).label
    return None if handle.is_backbone or label is None else int(label)


@st.cache_data(max_entries=32, show_spinner="Explaining the focus image…")
def _image_maps(
    model_key: str, image_id: str, fusion: str, discard: float, target: int | None, _handle: ViTHandle, _image: Image.Image
) -> ImageMaps:
    found = relevance_maps(_handle, _handle.preprocess([_image]), head_fusion=fusion, discard_ratio=discard, target=target)
    rows, cols = _handle.grid
    return ImageMaps(
        maps={name: values[0].reshape(rows, cols).numpy() for name, values in found.maps.items()},
        heads=None if found.heads is None else found.heads[0].numpy(),
        target=None if found.targets is None else int(found.targets[0]),
        predicted=None if found.predicted is None else int(found.predicted[0]),
    )


def image_maps(handle: ViTHandle, image_set: ImageSet, image_id: str, fusion: str, discard: float) -> ImageMaps:
    """Every method's map of one image (``core.measures.attribution.relevance_maps``), cached by the image's id."""
    target = _target(handle, image_set, image_id)
    return _image_maps(handle.key, image_id, fusion, discard, target, handle, image_set.by_id(image_id).image)


def map_picture(handle: ViTHandle, image: Image.Image, relevance: np.ndarray) -> Image.Image:
    """The image as the model sees it, tinted by ``relevance`` ``[rows, cols]`` up to its ``TINT_PERCENTILE``."""
    return patterns.attention_overlay(patterns.model_view(handle, image), tint_scale(relevance), None, None)


@st.cache_data(max_entries=8, show_spinner=False)
def _faithfulness(
    model_key: str,
    image_ids: tuple[str, ...],
    fusion: str,
    discard: float,
    fill: str,
    steps: int,
    targets: tuple[int, ...] | None,
    _handle: ViTHandle,
    _images: ImageSet,
) -> pd.DataFrame:
    n = len(image_ids)
    with progress_bar(
        f"Deleting and revealing patches of {n} image(s)…", "Faithfulness: {done} of {total} images…"
    ) as progress:
        x = _handle.preprocess([_images.by_id(image_id).image for image_id in image_ids])
        target = None if targets is None else torch.tensor(targets)
        maps = relevance_maps(_handle, x, head_fusion=fusion, discard_ratio=discard, target=target).maps
        curves = compare_faithfulness(_handle, x, maps, target=target, steps=steps, fill=fill, progress=progress)
    return curves.assign(image_id=[image_ids[i] for i in curves["image"]])


def faithfulness(
    handle: ViTHandle, image_set: ImageSet, image_ids: list[str], fusion: str, discard: float, fill: str, steps: int
) -> pd.DataFrame:
    """Deletion and insertion curves of every method on these images (``compare_faithfulness``), cached.

    Columns method, image, order, curve, fraction, score, image_id.
    """
    targets = None
    if not handle.is_backbone:
        targets = tuple(-1 if (t := _target(handle, image_set, i)) is None else t for i in image_ids)
    return _faithfulness(handle.key, tuple(image_ids), fusion, discard, fill, steps, targets, handle, image_set)


def head_frame(heads: np.ndarray) -> pd.DataFrame:
    """``[L, H]`` shares as ``viz.strength.heads_by_layer_chart``'s table: layer, head, head_label, share."""
    layers, per_layer = heads.shape
    layer, head = np.divmod(np.arange(layers * per_layer), per_layer)
    return pd.DataFrame(
        {"layer": layer, "head": head, "head_label": [f"L{l}H{h}" for l, h in zip(layer, head)], "share": heads.reshape(-1).astype(float)}
    )


def head_table(heads: np.ndarray, ranked: pd.DataFrame | None, count: int = 5) -> pd.DataFrame:
    """The ``count`` heads with the largest share of the gradient rollout, with their importance rank.

    ``heads``: ``[L, H]`` shares; ``ranked``: ``core.measures.importance.rank_heads`` of the set
    (most important first), or ``None``. Columns head, layer, head_index, share, rank.
    """
    layers, per_layer = heads.shape
    order = np.argsort(-heads.reshape(-1), kind="stable")[:count]
    rank = {}
    if ranked is not None:
        rank = {(int(l), int(h)): i + 1 for i, (l, h) in enumerate(zip(ranked["layer"], ranked["head"]))}
    rows = []
    for flat in order:
        layer, head = divmod(int(flat), per_layer)
        rows.append((f"L{layer}H{head}", layer, head, float(heads[layer, head]), rank.get((layer, head))))
    return pd.DataFrame(rows, columns=["head", "layer", "head_index", "share", "rank"])


def methods_for(handle: ViTHandle) -> tuple[str, ...]:
    """The methods a model has: a backbone has no class, so no gradient rollout."""
    return tuple(m for m in METHODS if not (handle.is_backbone and m == "gradient rollout"))
