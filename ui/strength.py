"""Attention strength page (view C): cached statistics and the focus image's sink and token norms.

The cached wrappers key on the model's and the image set's content hashes only, and
show a progress bar while the set is streamed. The page's charts are in ``viz.strength``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch
from PIL import Image, ImageDraw

from core.inputs.images import ImageSet
from core.measures.attention import OUTLIER_NORM_RATIO, norm_ratios, stream_norms
from core.measures.strength import StrengthStats, strength_statistics
from core.models.handle import ViTHandle
from ui import patterns, results
from ui.display import sentence_on_error
from viz.strength import HIGH_NORM_PURPLE

__all__ = [
    "FOCUS_IMAGE",
    "SET_MEAN",
    "image_norms",
    "image_statistics",
    "key_outliers",
    "norms_table",
    "set_statistics",
    "sink_overlay",
]

FOCUS_IMAGE, SET_MEAN = "Focus image", "Set mean"  # the per-head values' scope radio


# --- cached statistics -----------------------------------------------------------------


def set_statistics(handle: ViTHandle, image_set: ImageSet) -> StrengthStats:
    """Strength summaries of every image of the set, from the set's first pass (``results.preview``)."""
    return results.preview(handle, image_set).strength


@st.cache_data(max_entries=32, show_spinner=False)
def _image_statistics(model_key: str, image_id: str, _handle: ViTHandle, _images: ImageSet) -> StrengthStats:
    return strength_statistics(_handle, [_images.by_id(image_id).image])


def image_statistics(handle: ViTHandle, image_set: ImageSet, image_id: str) -> StrengthStats:
    """Strength of one image alone: its ``offset_mean`` is that image's own offset map.

    Keyed by the image id (a hash of its bytes), so moving the focus never reruns the set.
    """
    with sentence_on_error():
        return _image_statistics(handle.key, image_id, handle, image_set)


@st.cache_data(max_entries=16, show_spinner="Reading the focus image's token norms…")
def _image_norms(model_key: str, image_id: str, _handle: ViTHandle, _image: Image.Image) -> np.ndarray:
    return stream_norms(_handle, _handle.preprocess([_image]))[0].numpy()


def image_norms(handle: ViTHandle, image_set: ImageSet, image_id: str) -> np.ndarray:
    """``[L + 1, T]`` token norms of one image: entering each block (0: the embeddings), then leaving the last."""
    with sentence_on_error():
        return _image_norms(handle.key, image_id, handle, image_set.by_id(image_id).image)


# --- the focus image -------------------------------------------------------------------


def _ratios(norms: np.ndarray, num_prefix_tokens: int) -> np.ndarray:
    """Each token's norm over its row's median patch norm (``core.measures.attention.norm_ratios``)."""
    return norm_ratios(torch.from_numpy(norms), num_prefix_tokens).numpy()


def norms_table(norms: np.ndarray, prefix_names: tuple[str, ...]) -> pd.DataFrame:
    """``viz.strength.token_norms_chart``'s table from ``image_norms``: the embeddings, then the tokens leaving each block.

    Column stage is ``"in"`` for the embeddings and ``str(l)`` for block ``l``'s output;
    position counts them from 0, so the keys of block ``l`` are at position ``l``.
    """
    ratio = _ratios(norms, len(prefix_names))  # [L + 1, T]
    stages, tokens = ratio.shape
    position, token = np.divmod(np.arange(stages * tokens), tokens)
    names = np.array([*prefix_names, *(["patch"] * (tokens - len(prefix_names)))], dtype=object)
    labels = np.array(["in", *(str(layer) for layer in range(stages - 1))], dtype=object)
    return pd.DataFrame(
        {
            "position": position,
            "stage": labels[position],
            "token": token,
            "name": names[token],
            "ratio": ratio.reshape(-1).astype(float),
            "outlier": ratio.reshape(-1) >= OUTLIER_NORM_RATIO,
        }
    )


def key_outliers(norms: np.ndarray, layer: int, num_prefix_tokens: int) -> np.ndarray:
    """Indices of the high-norm tokens among the keys of block ``layer`` (the tokens entering it)."""
    return np.flatnonzero(_ratios(norms, num_prefix_tokens)[layer] >= OUTLIER_NORM_RATIO)


def sink_overlay(
    handle: ViTHandle, image: Image.Image, attn: np.ndarray, outliers: np.ndarray
) -> tuple[Image.Image, np.ndarray]:
    """The image as the model sees it, tinted by how much of the patches' attention each patch receives.

    ``attn``: one head's ``[T, T]`` attention on the image. The sink (the token that
    receives the most) is boxed red when it is a patch; ``outliers`` (token indices) are
    boxed purple. Returns the picture and the ``[T]`` shares each token receives.
    """
    prefix = handle.num_prefix_tokens
    received = attn[prefix:].mean(axis=0)  # [T]
    sink = int(received.argmax())
    rows, cols = handle.grid
    position = patterns.patch_position(sink, handle.grid, prefix)
    picture = patterns.attention_overlay(
        patterns.model_view(handle, image), received[prefix:].reshape(rows, cols), position, None
    )
    draw = ImageDraw.Draw(picture)
    cell_w, cell_h = picture.width / cols, picture.height / rows
    for token in outliers:
        spot = patterns.patch_position(int(token), handle.grid, prefix)
        if spot is not None:
            r, c = spot
            inset = max(2, round(min(cell_w, cell_h) / 5))
            draw.rectangle(
                (c * cell_w + inset, r * cell_h + inset, (c + 1) * cell_w - 1 - inset, (r + 1) * cell_h - 1 - inset),
                outline=HIGH_NORM_PURPLE, width=2,
            )
    return picture, received
