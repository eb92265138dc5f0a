"""Attention patterns page (view D): cached analyses, the UMAP wait, picking, the overlay.

The cached wrappers key on content hashes only (the model's ``key``, the image set's
``key``, an image id) and plain parameters; the handle, the images and intermediate
results go in as underscore arguments. The overlay helpers turn the focus image into
what the model sees, with a patch map on top. The page's charts are in ``viz.patterns``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch
from PIL import Image, ImageDraw

from core.inputs.images import ImageSet
from core.measures.attention import extract_attention
from core.measures.patterns import (
    MapSample,
    PatternClusters,
    PatternLayout,
    PatternSpace,
    check_map_kind,
    cluster_patterns,
    project_patterns,
    sample_maps,
    train_autoencoder,
)
from core.measures.projection import Method, umap_failed, umap_ready
from core.models.handle import ViTHandle
from core.settings import DEFAULT_MAX_MAPS, MapKind
from core.settings import (
    SAMPLE_SIZES as SAMPLE_SIZES,  # the sample caps the page offers
)
from ui import results
from ui.display import enlarge_for_display, sentence_on_error
from viz.common import FOCUS_RED
from viz.patterns import CELL_SELECTION

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "MATRIX_CHART_KEY",
    "PATCH_ORANGE",
    "SAMPLE_SIZES",
    "SOURCE_KEY",
    "SPACE_CHART_KEY",
    "TARGET_BLUE",
    "TARGET_KEY",
    "UMAP_COMPILE_SECONDS",
    "UMAP_WAIT_LIMIT",
    "PatternView",
    "attention_overlay",
    "image_attention",
    "layout_method",
    "model_view",
    "patch_position",
    "pattern_view",
    "pick_cell",
    "reset_token_picks",
]

SPACE_CHART_KEY = "pattern_space_chart"
MATRIX_CHART_KEY = "pattern_matrix_chart"
SOURCE_KEY = "pattern_source"
TARGET_KEY = "pattern_target"
DEFAULT_SAMPLE_SIZE = DEFAULT_MAX_MAPS
UMAP_COMPILE_SECONDS = 40  # what the progress bar expects; the wait itself lasts as long as compiling does
UMAP_WAIT_LIMIT = 300
TARGET_BLUE = "#1f77b4"
PATCH_ORANGE = (253, 141, 60)
_KIND_NOUN = {"patch": "patch maps", "cls": "CLS maps"}


# --- cached analyses -------------------------------------------------------------------


@st.cache_data(max_entries=6, show_spinner=False)
def _space(
    model_key: str, set_key: str, kind: MapKind, max_maps: int, seed: int,
    _handle: ViTHandle, _images: ImageSet, _sample: MapSample | None,
) -> PatternSpace:
    count = len(_images)
    bar = st.progress(0.0, text=f"Sampling {_KIND_NOUN[kind]} from {count} images…")
    try:
        # the set's analysis drew its sample of each kind in its one pass; another size needs its own pass
        sample = _sample or sample_maps(
            _handle,
            _images.pil_images(),
            kind=kind,
            max_maps=max_maps,
            seed=seed,
            progress=lambda done, total: bar.progress(
                0.2 * done / total, text=f"Sampling {_KIND_NOUN[kind]}: {done} of {total} images…"
            ),
        )
        return train_autoencoder(
            sample,
            seed=seed,
            device=_handle.device,
            progress=lambda done, total: bar.progress(
                0.2 + 0.8 * done / total,
                text=f"Training the autoencoder on {len(sample.inputs):,} maps: step {done} of {total}…",
            ),
        )
    finally:
        bar.empty()


@st.cache_data(max_entries=6, show_spinner="Laying out the latent codes in 2-D…")
def _layout(model_key: str, set_key: str, kind: MapKind, max_maps: int, seed: int, method: Method, _space: PatternSpace) -> PatternLayout:
    return project_patterns(_space, method=method, seed=seed)


@st.cache_data(max_entries=12, show_spinner="Clustering the patterns…")
def _clusters(model_key: str, set_key: str, kind: MapKind, max_maps: int, seed: int, n_clusters: int, _space: PatternSpace) -> PatternClusters:
    return cluster_patterns(_space, n_clusters=n_clusters, seed=seed)


@st.cache_data(max_entries=8, show_spinner="Reading the focus image's attention…")
def _image_attention(model_key: str, image_id: str, _handle: ViTHandle, _image: Image.Image) -> np.ndarray:
    return extract_attention(_handle, _handle.preprocess([_image])).attn[0].numpy()


@dataclass(frozen=True)
class PatternView:
    """Everything D1 shows: the trained space, its 2-D layout and its clusters.

    Attributes:
        space: autoencoder, latent codes and reconstruction errors.
        layout: 2-D positions of the maps and heads.
        clusters: k-means pattern clusters with prototypes and member heads.
        note: why the layout is not UMAP, or ``None`` when it is.
    """

    space: PatternSpace
    layout: PatternLayout
    clusters: PatternClusters
    note: str | None


def pattern_view(handle: ViTHandle, image_set: ImageSet, kind: MapKind, max_maps: int, n_clusters: int) -> PatternView:
    """Sample, train, lay out and cluster (each step cached); waits visibly for UMAP if needed.

    Raises:
        UnsupportedMapKind, InvalidSetting: with a sentence for the user (no CLS token, cap
            below the head count); NotEnoughImages for an empty set.
    """
    check_map_kind(handle, kind)
    first = results.preview(handle, image_set)  # the first pass drew the default sample of both kinds
    seed = results.ANALYSIS_SETTINGS.seed
    drawn = first.samples[kind] if max_maps == results.ANALYSIS_SETTINGS.max_maps else None
    space = _space(handle.key, image_set.key, kind, max_maps, seed, handle, image_set, drawn)
    method, note = layout_method()
    layout = _layout(handle.key, image_set.key, kind, max_maps, seed, method, space)
    clusters = _clusters(handle.key, image_set.key, kind, max_maps, seed, n_clusters, space)
    return PatternView(space, layout, clusters, note)


def image_attention(handle: ViTHandle, image_set: ImageSet, image_id: str) -> np.ndarray:
    """``[L, H, T, T]`` attention of one image of the set (cached by model and image id)."""
    with sentence_on_error():
        return _image_attention(handle.key, image_id, handle, image_set.by_id(image_id).image)


def layout_method() -> tuple[Method, str | None]:
    """UMAP once its background compilation is done; until then a progress bar, never a frozen page.

    Returns the method and, for PCA, the sentence that says why.
    """
    if not umap_ready() and not umap_failed():
        slot = st.empty()
        with slot.container():
            with st.status("UMAP is compiling its kernels (once per server process)…", expanded=True):
                bar = st.progress(0.0)
                start = time.monotonic()
                while not umap_ready() and not umap_failed() and time.monotonic() - start < UMAP_WAIT_LIMIT:
                    waited = time.monotonic() - start
                    bar.progress(
                        min(waited / UMAP_COMPILE_SECONDS, 0.99),
                        text=f"Waiting {waited:.0f} s of about {UMAP_COMPILE_SECONDS} s; the patterns are ready and laid out right after.",
                    )
                    time.sleep(0.5)
        slot.empty()
    if umap_ready():
        return "umap", None
    if umap_failed():
        return "pca", "UMAP is unavailable in this server process, so the latent codes are laid out with PCA."
    return "pca", f"UMAP was still compiling after {UMAP_WAIT_LIMIT} s, so the latent codes are laid out with PCA."


# --- picking ---------------------------------------------------------------------------


def pick_cell() -> None:
    """``on_select`` of the matrix chart: the clicked cell's query and key become source and target."""
    selected = st.session_state[MATRIX_CHART_KEY].selection.get(CELL_SELECTION) or []
    if selected and {"source", "target"} <= selected[0].keys():
        st.session_state[SOURCE_KEY] = int(selected[0]["source"])
        st.session_state[TARGET_KEY] = int(selected[0]["target"])


def reset_token_picks(handle: ViTHandle) -> None:
    """Start source and target at the centre patch, and again when the model has fewer tokens."""
    rows, cols = handle.grid
    centre = handle.num_prefix_tokens + (rows // 2) * cols + cols // 2
    for key in (SOURCE_KEY, TARGET_KEY):
        if st.session_state.get(key, handle.num_tokens) >= handle.num_tokens:
            st.session_state[key] = centre


# --- images ----------------------------------------------------------------------------


def patch_position(token: int, grid: tuple[int, int], num_prefix_tokens: int) -> tuple[int, int] | None:
    """``(row, col)`` of a patch token on the grid; ``None`` for a prefix token."""
    return divmod(token - num_prefix_tokens, grid[1]) if token >= num_prefix_tokens else None


def model_view(handle: ViTHandle, image: Image.Image) -> Image.Image:
    """The image as the model sees it (resized, cropped), undoing the normalisation for display."""
    x = handle.preprocess([image])[0]
    mean = torch.tensor(handle.data_config["mean"], dtype=x.dtype)[:, None, None]
    std = torch.tensor(handle.data_config["std"], dtype=x.dtype)[:, None, None]
    pixels = ((x * std + mean).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).convert("RGB")


def attention_overlay(
    view: Image.Image,
    weights: np.ndarray,
    source: tuple[int, int] | None,
    target: tuple[int, int] | None,
    min_side: int = 256,
) -> Image.Image:
    """``view`` enlarged, tinted orange by ``weights`` (``[rows, cols]``, scaled to its maximum), patches boxed.

    The source patch gets a red box and the target a blue one; ``None`` (a prefix token,
    which has no place on the image) draws no box. When both are the same patch, the blue
    box is drawn inside the red one, so both show.
    """
    base = enlarge_for_display(view, min_side).convert("RGB")
    rows, cols = weights.shape
    alpha = np.asarray(weights, dtype=np.float64) / max(float(np.max(weights)), 1e-12)
    alpha_image = Image.fromarray(np.uint8(np.round(alpha * 190))).resize(base.size, Image.Resampling.NEAREST)
    tinted = Image.composite(Image.new("RGB", base.size, PATCH_ORANGE), base, alpha_image)
    draw = ImageDraw.Draw(tinted)
    cell_w, cell_h = base.width / cols, base.height / rows
    line = max(2, round(min(cell_w, cell_h) / 8))
    for patch, colour in ((source, FOCUS_RED), (target, TARGET_BLUE)):
        if patch is not None:
            r, c = patch
            inset = line if colour == TARGET_BLUE and patch == source else 0
            box = (c * cell_w + inset, r * cell_h + inset, (c + 1) * cell_w - 1 - inset, (r + 1) * cell_h - 1 - inset)
            draw.rectangle(box, outline=colour, width=line)
    return tinted
