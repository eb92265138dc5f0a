"""View D, attention patterns: which patterns the heads learned, and the focus head's attention up close."""

from __future__ import annotations

import streamlit as st

from core.errors import HeadScopeError
from core.measures.patterns import (
    DEFAULT_CLUSTERS,
    attention_cells,
    grid_maps,
    strong_links,
    token_names,
    weight_histogram,
)
from core.measures.projection import start_umap_warmup
from ui import export, patterns, selection, sidebar
from ui.display import enlarge_for_display, plain
from viz.patterns import (
    CELL_SELECTION,
    histogram_chart,
    link_chart,
    matrix_chart,
    pattern_space_chart,
    prototype_chart,
)

st.set_page_config(page_title="Attention patterns · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("patterns")
start_umap_warmup()  # once per process: a no-op when the home page started it
handle, focus = ctx.handle, ctx.focus

st.title("Attention patterns")
st.caption(
    "A patch map is one source patch's attention over all patches; a CLS map is the CLS token's. "
    "A small autoencoder compresses a random sample of maps from every head and image, and UMAP lays out "
    "their codes, so heads with the same pattern land together."
)

st.subheader("Pattern space")
c1, c2, c3, c4 = st.columns(4, gap="medium")
cls_maps = c1.toggle(
    "CLS maps", key="pattern_cls", persist_state="session",
    help="Off: patch maps, each centred on its source patch. On: the CLS token's maps over the grid.",
)
scatter = c2.toggle(
    "Scatter plot", key="pattern_scatter", persist_state="session",
    help="Off: the density of all sampled maps. On: the maps as points, coloured by layer.",
)
n_clusters = c3.slider("Pattern clusters", 2, 12, DEFAULT_CLUSTERS, key="pattern_clusters", persist_state="session")
max_maps = c4.select_slider(
    "Maps sampled", options=patterns.SAMPLE_SIZES, value=patterns.DEFAULT_SAMPLE_SIZE,
    format_func="{:,}".format, key="pattern_max_maps", persist_state="session",
)
kind = "cls" if cls_maps else "patch"

try:
    view = patterns.pattern_view(handle, ctx.image_set, kind, max_maps, n_clusters)
except HeadScopeError as err:
    st.warning(plain(str(err)))
    view = None
if view is not None:
    left, right = st.columns([3, 2], gap="large")
    with left:
        heads = view.layout.heads.merge(view.clusters.heads[["layer", "head", "cluster", "share"]], on=["layer", "head"])
        selection.show_head_chart(
            pattern_space_chart(view.layout.samples, heads, (focus.layer, focus.head), density=not scatter),
            key=patterns.SPACE_CHART_KEY,
        )
        method = "UMAP" if view.layout.method == "umap" else "PCA"
        st.caption(
            f"D1 · {len(view.layout.samples):,} {'CLS' if kind == 'cls' else 'patch'} maps from "
            f"{handle.num_layers * handle.num_heads} heads and {len(ctx.image_set)} images, laid out by {method} of "
            "their autoencoder codes. Click a head's dot to make it the focus head; scroll to zoom. "
            f"Reconstruction error {view.space.reconstruction_mse:.4f} per pixel "
            f"(always answering the mean map: {view.space.baseline_mse:.4f})."
        )
        if view.note:
            st.caption(view.note)
    with right:
        export.chart(prototype_chart(view.clusters.prototypes, view.clusters.clusters, kind), "D1 pattern prototypes", width="content")
        export.table(
            view.clusters.clusters[["cluster", "maps", "share", "heads"]], "D1 pattern clusters",
            hide_index=True,
            width="stretch",
            column_config={
                "share": st.column_config.NumberColumn("share", format="percent"),
                "heads": st.column_config.TextColumn("member heads", width="large"),
            },
        )
        st.caption(
            "Pattern clusters (k-means on the codes), each drawn as its decoded centre scaled to its peak"
            + (", centred on the source patch (outlined)" if kind == "patch" else "")
            + "; the peak is about the share of attention going to patches rather than prefix tokens. "
            "A head belongs to the cluster that holds most of its maps."
        )

st.subheader(f"Focus head {focus.head_label} on the focus image")
attn = patterns.image_attention(handle, ctx.image_set, ctx.focus_id)[focus.layer, focus.head]
names = token_names(handle)
prefix = handle.num_prefix_tokens
patterns.reset_token_picks(handle)
c1, c2, c3 = st.columns(3, gap="medium")
source = c1.selectbox("Source token (query, layer l+1)", list(range(handle.num_tokens)), format_func=names.__getitem__, key=patterns.SOURCE_KEY)
target = c2.selectbox("Target token (key, layer l)", list(range(handle.num_tokens)), format_func=names.__getitem__, key=patterns.TARGET_KEY)
threshold = c3.slider("Link threshold", 0.0, 1.0, 0.1, step=0.01, key="pattern_threshold", persist_state="session")
cells = attention_cells(attn, names, prefix)

d2, d3 = st.columns([1, 3], gap="large")
with d2:
    seen = patterns.model_view(handle, ctx.image_set.by_id(ctx.focus_id).image)
    st.image(enlarge_for_display(seen, 200), caption="What the model sees", width=200)
    st.image(
        patterns.attention_overlay(
            seen,
            grid_maps(attn[source], handle.grid, prefix),
            patterns.patch_position(source, handle.grid, prefix),
            patterns.patch_position(target, handle.grid, prefix),
            min_side=200,
        ),
        caption=f"Attention of {names[source]} (orange); source boxed red, target blue",
        width=200,
    )
    st.caption(f"D2 · {names[source]} → {names[target]}: weight {attn[source, target]:.4f}.")
with d3:
    links = strong_links(cells, threshold)
    export.chart(link_chart(links, names[:prefix], handle.num_tokens, focus.head_label, threshold), "D3 links", width="stretch")
    st.caption(
        f"D3 · {focus.head_label} builds each token of layer {focus.layer + 1} (top, the query) from the tokens "
        f"of layer {focus.layer} (bottom, the keys): one line per weight at or above the threshold. "
        "Blue: links with a prefix token; orange: patch to patch."
    )

d4, d5 = st.columns(2, gap="large")
with d4:
    export.chart(
        matrix_chart(cells, names[:prefix], (source, target), focus.head_label),
        "D4 attention matrix",
        key=patterns.MATRIX_CHART_KEY,
        on_select=patterns.pick_cell,
        selection_mode=CELL_SELECTION,
        width="content",
    )
    st.caption("D4 · the full token × token attention; rows are sources (queries), columns targets (keys).")
with d5:
    export.chart(histogram_chart(weight_histogram(attn), threshold, focus.head_label), "D5 attention values", width="stretch")
    above = int((cells["weight"] >= threshold).sum())
    st.caption(f"D5 · {above:,} of {len(cells):,} weights reach the threshold {threshold:.2f}.")
