"""Attention patterns page (view D): cached analyses, the UMAP wait, pure chart builders, picking.

The cached wrappers key on content hashes only (the model's ``key``, the image set's
``key``, an image id) and plain parameters; the handle, the images and intermediate
results go in as underscore arguments. The chart builders are pure: tidy DataFrames
in, an ``alt.Chart`` out. The overlay helpers turn the focus image into what the model
sees, with a patch map on top.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
import torch
from PIL import Image, ImageDraw

from core.attention import extract_attention
from core.images import ImageSet
from core.model import ViTHandle
from core.patterns import (
    MapKind,
    PatternClusters,
    PatternLayout,
    PatternSpace,
    cluster_patterns,
    project_patterns,
    sample_maps,
    train_autoencoder,
)
from core.projection import Method, umap_failed, umap_ready
from core.charts import FOCUS_RED, LAYER_COLOURS, PATCH_SCHEME, density_rects, tooltip_field
from ui.charts import HEAD_SELECTION
from ui.display import enlarge_for_display

__all__ = [
    "CELL_SELECTION",
    "DEFAULT_SAMPLE_SIZE",
    "MATRIX_CHART_KEY",
    "MAX_POINTS",
    "PATCH_ORANGE",
    "SAMPLE_SIZES",
    "SEED",
    "SOURCE_KEY",
    "SPACE_CHART_KEY",
    "TARGET_BLUE",
    "TARGET_KEY",
    "UMAP_COMPILE_SECONDS",
    "UMAP_WAIT_LIMIT",
    "PatternView",
    "attention_overlay",
    "histogram_chart",
    "image_attention",
    "layout_method",
    "link_chart",
    "matrix_chart",
    "model_view",
    "patch_position",
    "pattern_space_chart",
    "pattern_view",
    "pick_cell",
    "reset_token_picks",
]

CELL_SELECTION = "cell"
SPACE_CHART_KEY = "pattern_space_chart"
MATRIX_CHART_KEY = "pattern_matrix_chart"
SOURCE_KEY = "pattern_source"
TARGET_KEY = "pattern_target"
SEED = 0
SAMPLE_SIZES = [2_000, 5_000, 10_000, 20_000]
DEFAULT_SAMPLE_SIZE = 10_000  # demo set: sampled, trained, laid out and clustered in about 9 s on two idle cores
UMAP_COMPILE_SECONDS = 40  # what the progress bar expects; the wait itself lasts as long as compiling does
UMAP_WAIT_LIMIT = 300
MAX_POINTS = 5000  # scatter mode: a browser draws this many dots smoothly
TARGET_BLUE = "#1f77b4"
PATCH_ORANGE = (253, 141, 60)
_PREFIX_SCHEME = "blues"
_KIND_NOUN = {"patch": "patch maps", "cls": "CLS maps"}


# --- cached analyses -------------------------------------------------------------------


@st.cache_data(max_entries=6, show_spinner=False)
def _space(model_key: str, set_key: str, kind: str, max_maps: int, seed: int, _handle: ViTHandle, _images: ImageSet) -> PatternSpace:
    count = len(_images)
    bar = st.progress(0.0, text=f"Sampling {_KIND_NOUN[kind]} from {count} images…")
    try:
        sample = sample_maps(
            _handle,
            _images.pil_images(),
            kind=kind,  # type: ignore[arg-type]
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
def _layout(model_key: str, set_key: str, kind: str, max_maps: int, seed: int, method: str, _space: PatternSpace) -> PatternLayout:
    return project_patterns(_space, method=method, seed=seed)  # type: ignore[arg-type]


@st.cache_data(max_entries=12, show_spinner="Clustering the patterns…")
def _clusters(model_key: str, set_key: str, kind: str, max_maps: int, seed: int, n_clusters: int, _space: PatternSpace) -> PatternClusters:
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
    space = _space(handle.key, image_set.key, kind, max_maps, SEED, handle, image_set)
    method, note = layout_method()
    layout = _layout(handle.key, image_set.key, kind, max_maps, SEED, method, space)
    clusters = _clusters(handle.key, image_set.key, kind, max_maps, SEED, n_clusters, space)
    return PatternView(space, layout, clusters, note)


def image_attention(handle: ViTHandle, image_set: ImageSet, image_id: str) -> np.ndarray:
    """``[L, H, T, T]`` attention of one image of the set (cached by model and image id)."""
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
    which has no place on the image) draws no box.
    """
    base = enlarge_for_display(view, min_side).convert("RGB")
    rows, cols = weights.shape
    alpha = np.asarray(weights, dtype=np.float64) / max(float(np.max(weights)), 1e-12)
    alpha_image = Image.fromarray(np.uint8(np.round(alpha * 190))).resize(base.size, Image.Resampling.NEAREST)
    tinted = Image.composite(Image.new("RGB", base.size, PATCH_ORANGE), base, alpha_image)
    draw = ImageDraw.Draw(tinted)
    cell_w, cell_h = base.width / cols, base.height / rows
    for patch, colour in ((source, FOCUS_RED), (target, TARGET_BLUE)):
        if patch is not None:
            r, c = patch
            box = (c * cell_w, r * cell_h, (c + 1) * cell_w - 1, (r + 1) * cell_h - 1)
            draw.rectangle(box, outline=colour, width=max(2, round(min(cell_w, cell_h) / 8)))
    return tinted


# --- charts ----------------------------------------------------------------------------


def _layer_colour(title: str = "layer") -> alt.Color:
    return alt.Color("layer:O", title=title, scale=alt.Scale(scheme=LAYER_COLOURS), legend=alt.Legend(orient="bottom", columns=6))


def _token_axis(prefix_names: list[str], num_tokens: int, title: str) -> alt.Axis:
    """Ticks at every prefix token and at evenly spaced patches; prefix tokens by name, patches by index."""
    p = len(prefix_names)
    step = max(1, (num_tokens - p) // 8)
    values = list(range(p)) + list(range(p, num_tokens, step))
    names = "[" + ", ".join(f"'{n}'" for n in prefix_names) + "]"
    label = f"datum.value < {p} ? {names}[datum.value] : 'p' + (datum.value - {p})" if p else "'p' + datum.value"
    return alt.Axis(values=values, labelExpr=label, title=title, labelAngle=0)


def pattern_space_chart(samples: pd.DataFrame, heads: pd.DataFrame, focus: tuple[int, int], *, density: bool) -> alt.LayerChart:
    """D1: the maps' 2-D positions (a density, or points) and one dot per head, coloured by layer.

    ``samples`` columns: x, y, layer (``PatternLayout.samples``). ``heads`` columns: layer,
    head, head_label, x, y, maps, cluster, share (layout heads joined with
    ``PatternClusters.heads``). Clicking a head dot selects ``(layer, head)`` under
    ``HEAD_SELECTION``; the focus head is ringed. Scroll to zoom, drag to pan.
    """
    x = alt.X("x:Q", axis=None, scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False))
    if density:
        background = density_rects(samples, x, y, alt.Scale(scheme="greys", type="sqrt"), bins=60)
    else:
        shown = samples.sample(MAX_POINTS, random_state=0) if len(samples) > MAX_POINTS else samples
        background = (
            alt.Chart(shown[["x", "y", "layer", "head"]])
            .mark_circle(size=8, opacity=0.3)
            .encode(x=x, y=y, color=_layer_colour(), tooltip=[tooltip_field("layer:O", "layer"), tooltip_field("head:O", "head")])
        )
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)
    zoom = alt.selection_interval(bind="scales")
    dots = (
        alt.Chart(heads)
        .mark_circle(size=110, opacity=0.95, stroke="white", strokeWidth=1)
        .encode(
            x=x,
            y=y,
            color=_layer_colour(),
            tooltip=[
                tooltip_field("head_label:N", "head"),
                tooltip_field("cluster:O", "pattern cluster"),
                tooltip_field("share:Q", "its maps in that cluster", format=".0%"),
                tooltip_field("maps:Q", "maps sampled"),
            ],
        )
        .add_params(pick, zoom)
    )
    layer, head = focus
    ring = (
        alt.Chart(heads[(heads["layer"] == layer) & (heads["head"] == head)])
        .mark_point(shape="circle", size=360, strokeWidth=2.5, color=FOCUS_RED, filled=False)
        .encode(x=x, y=y)
    )
    chart = alt.layer(background, dots, ring)
    if density:
        chart = chart.resolve_scale(color="independent")
    return chart.properties(
        title=alt.TitleParams(
            "Attention maps by their autoencoder codes",
            subtitle=f"one dot per head at the mean of its maps · focus head L{layer}H{head} ringed",
        ),
        height=460,
    )


def link_chart(links: pd.DataFrame, prefix_names: list[str], num_tokens: int, head_label: str, threshold: float) -> alt.LayerChart:
    """D3: a line from each source token (layer l+1, top) to each target token (layer l, bottom).

    ``links`` columns: source, target, source_name, target_name, weight, prefix
    (``core.patterns.strong_links``). Links with a prefix token at either end use a blue
    scale, patch-to-patch links an orange one; stronger links are darker.
    """
    data = links.assign(top=1.0, bottom=0.0)
    x = alt.X("source:Q", scale=alt.Scale(domain=[0, num_tokens - 1], nice=False), axis=_token_axis(prefix_names, num_tokens, "token"))
    y = alt.Y(
        "top:Q",
        scale=alt.Scale(domain=[0, 1]),
        axis=alt.Axis(values=[0, 1], labelExpr="datum.value == 1 ? 'source (l+1)' : 'target (l)'", title=None, grid=False),
    )
    tooltip = [
        tooltip_field("source_name:N", "source (query)"),
        tooltip_field("target_name:N", "target (key)"),
        tooltip_field("weight:Q", "weight", format=".3f"),
    ]
    top = max(float(links["weight"].max()), threshold) if len(links) else 1.0

    def rules(prefix: bool, scheme: str, title: str) -> alt.Chart:
        return (
            alt.Chart(data[data["prefix"] == prefix])
            .mark_rule(strokeWidth=1.2, opacity=0.85)
            .encode(
                x=x,
                x2="target:Q",
                y=y,
                y2="bottom:Q",
                color=alt.Color("weight:Q", title=title, scale=alt.Scale(scheme=scheme, domain=[0, top]), legend=alt.Legend(orient="bottom")),
                tooltip=tooltip,
            )
        )

    return (
        alt.layer(rules(True, _PREFIX_SCHEME, "prefix-token attention"), rules(False, PATCH_SCHEME, "patch attention"))
        .resolve_scale(color="independent")
        .properties(
            title=alt.TitleParams(f"Links of {head_label}", subtitle=f"{len(links):,} links with weight ≥ {threshold:.2f}"),
            height=260,
        )
    )


def matrix_chart(cells: pd.DataFrame, prefix_names: list[str], selected: tuple[int, int], head_label: str) -> alt.LayerChart:
    """D4: the token x token attention of one head; prefix rows and columns blue, patch cells orange.

    ``cells`` columns: source, target, source_name, target_name, weight, prefix
    (``core.patterns.attention_cells``). One diverging scale carries both colours (prefix
    weights are plotted negative, the legend shows magnitudes) so the whole matrix is a
    single clickable layer: a click selects ``(source, target)`` under ``CELL_SELECTION``.
    The selected cell is outlined.
    """
    t = int(cells["source"].max()) + 1
    data = cells.assign(signed=np.where(cells["prefix"], -cells["weight"], cells["weight"]))
    top = max(float(cells["weight"].max()), 1e-6)
    x = alt.X("target:O", axis=_token_axis(prefix_names, t, "target token (key, layer l)"))
    y = alt.Y("source:O", axis=_token_axis(prefix_names, t, "source token (query, layer l+1)"))
    pick = alt.selection_point(name=CELL_SELECTION, fields=["source", "target"], on="click", clear=False)
    heat = (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "signed:Q",
                title="attention",
                scale=alt.Scale(scheme="blueorange", domain=[-top, top], domainMid=0),
                legend=alt.Legend(orient="bottom", labelExpr="format(abs(datum.value), '.2f')", gradientLength=260),
            ),
            tooltip=[
                tooltip_field("source_name:N", "source (query)"),
                tooltip_field("target_name:N", "target (key)"),
                tooltip_field("weight:Q", "weight", format=".4f"),
            ],
        )
        .add_params(pick)
    )
    source, target = selected
    mark = (
        alt.Chart(data[(data["source"] == source) & (data["target"] == target)])
        .mark_rect(filled=False, stroke="#222222", strokeWidth=2)
        .encode(x=x, y=y)
    )
    return alt.layer(heat, mark).properties(
        title=alt.TitleParams(
            f"Attention matrix of {head_label}", subtitle="blue: with a prefix token · orange: patch to patch · click a cell to pick it"
        ),
        width=420,
        height=420,
    )


def histogram_chart(histogram: pd.DataFrame, threshold: float, head_label: str) -> alt.LayerChart:
    """D5: how many of the head's attention weights fall in each bin, with the link threshold as a red rule.

    ``histogram`` columns: start, end, count (``core.patterns.weight_histogram``). Counts
    use a symlog scale: nearly all weights are tiny and would flatten every other bar.
    """
    bars = (
        alt.Chart(histogram[histogram["count"] > 0])
        .mark_bar(color="#fdae6b")
        .encode(
            x=alt.X("start:Q", title="attention weight", scale=alt.Scale(domain=[0, 1])),
            x2="end:Q",
            y=alt.Y("count:Q", title="weights (symlog scale)", scale=alt.Scale(type="symlog")),
            y2=alt.datum(0),
            tooltip=[
                tooltip_field("start:Q", "from", format=".2f"),
                tooltip_field("end:Q", "to", format=".2f"),
                tooltip_field("count:Q", "weights"),
            ],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [threshold]}))
        .mark_rule(color=FOCUS_RED, strokeWidth=2)
        .encode(x="threshold:Q", tooltip=[tooltip_field("threshold:Q", "link threshold", format=".2f")])
    )
    return alt.layer(bars, rule).properties(
        title=alt.TitleParams(f"Attention values of {head_label}", subtitle="red: the link threshold"), height=260
    )
