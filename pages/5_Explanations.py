"""Explanations: where the model looked for its answer on the focus image, by three methods, and which to trust."""

from __future__ import annotations

import streamlit as st

from core.measures.attribution import (
    FILLS,
    HEAD_FUSIONS,
    faithfulness_areas,
    faithfulness_summary,
)
from core.measures.importance import metrics_for, rank_heads
from ui import attribution, export, importance, navigation, selection, sidebar
from ui.attribution import FOCUS_ONLY, SET_START
from ui.display import plain, sentence_on_error
from viz.attribution import faithfulness_chart, score_title
from viz.strength import heads_by_layer_chart

st.set_page_config(page_title="Explanations · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("explanations")
handle, focus = ctx.handle, ctx.focus
image = ctx.image_set.by_id(ctx.focus_id)
name = plain(image.name)  # shown in Markdown only
methods = attribution.methods_for(handle)

st.title("Explanations")
st.caption(
    "Attention rollout (Abnar and Zuidema, 2020) multiplies every layer's attention, with the residual connection "
    "as an identity, so the answer's row says how much of each patch reaches it. Gradient rollout (Chefer, Gur and "
    "Wolf, 2021) weights each layer's attention by the gradient of the target class, so only what raises that class "
    "counts. The last layer's attention is the plain baseline most tools show. Brighter orange = more relevant, from "
    f"the map's least relevant patch to its {attribution.TINT_PERCENTILE}th percentile, so one outlier patch does not "
    "leave the rest dark."
)
if handle.is_backbone:
    st.info(
        f"{plain(handle.name)} is a backbone without classes: gradient rollout needs a class to explain, so this page "
        "shows attention rollout and the last layer's attention, and no head carries a share of a class's relevance."
    )

left, middle, _ = st.columns([2, 2, 3])
fusion = left.radio(
    "Rollout's head fusion", list(HEAD_FUSIONS), key="explain_fusion", horizontal=True, persist_state="session",
    help="How attention rollout makes one map of a layer's heads: their mean (the paper's), max or min.",
)
discard = middle.select_slider(
    "Rollout's discard ratio", [0.0, 0.5, 0.8, 0.9, 0.95], key="explain_discard", persist_state="session",
    help="The share of the smallest fused weights set to 0 in each layer before multiplying (vit-explain's option); "
    "the columns of the tokens the answer is read from (the class token) are always kept.",
)

with sentence_on_error():
    found = attribution.image_maps(handle, ctx.image_set, ctx.focus_id, fusion, float(discard))
target = ""
if found.target is not None:
    target = f" for class **{plain(handle.class_names[found.target])}**"
    if found.predicted is not None and found.predicted != found.target:
        target += f" (its label; the model answered **{plain(handle.class_names[found.predicted])}**)"
st.subheader(f"Where the model looked on {name}")
captions = {
    "attention rollout": f"Attention rollout · {fusion} of the heads" + (f", {discard:.0%} discarded" if discard else ""),
    "gradient rollout": f"Gradient rollout{target}",
    "last-layer attention": f"Last layer's attention (L{handle.num_layers - 1}, mean of the heads)",
}
for column, method in zip(st.columns(len(methods), gap="medium"), methods):
    with column:
        st.image(attribution.map_picture(handle, image.image, found.maps[method]), width="stretch")
        st.caption(captions[method])

st.subheader("Heads that carry the relevance")
if found.heads is None:
    st.caption("The heads' shares come from gradient rollout, which a backbone does not have.")
else:
    chart_col, table_col = st.columns([3, 2], gap="medium")
    shares = attribution.head_frame(found.heads)
    with chart_col:
        selection.show_head_chart(
            heads_by_layer_chart(shares, "share", "Share of the gradient rollout by head", "share of the relevance",
                                 (focus.layer, focus.head), ".1%"),
            key="explain_heads_chart",
        )
        st.caption(
            f"What each head adds to the gradient rollout of {name}: the rollout is a sum over layers and heads, so "
            "the shares add up to everything the layers add to the map. Click a dot to make it the focus head."
        )
    with table_col:
        state = importance.importance_state(handle, ctx.image_set)  # ranked by the Taylor preview until the sweep ends
        metric = metrics_for(handle)[0] if state.exact else "taylor"
        ranked = rank_heads(state.tables.overall, metric)
        table = attribution.head_table(found.heads, ranked)
        export.table(
            table[["head", "share", "rank"]], "E heads carrying the relevance", hide_index=True, width="stretch",
            column_config={
                "share": st.column_config.ProgressColumn("share of the relevance", format="percent", min_value=0.0, max_value=1.0),
                "rank": st.column_config.NumberColumn(f"importance rank ({metric.replace('_', ' ')})", format="%d"),
            },
        )
        top = table.iloc[0]
        if st.button(f"Focus on {top['head']}", key="explain_focus_top"):
            selection.set_focus_head(int(top["layer"]), int(top["head_index"]))
            st.rerun()
        navigation.link(st, "pages/1_Head_Importance.py", "See these heads in Head importance", ":material/arrow_forward:")

st.subheader("Which map to trust")
st.caption(
    "Deletion removes patches from the image, most relevant first; insertion reveals them on a blank image. "
    f"The {score_title(handle.is_backbone)} is watched as they go: a map that finds what the model uses makes deletion "
    "fall and insertion rise faster than a random order (dashed)."
)
scored = min(len(ctx.image_set), attribution.FAITHFULNESS_IMAGES)
a, b, c = st.columns([2, 2, 3])
scope = a.radio(
    "Score on", [FOCUS_ONLY, SET_START], key="explain_scope", horizontal=True, persist_state="session",
    format_func=lambda s: "Focus image" if s == FOCUS_ONLY else f"First {scored} image{'s' if scored != 1 else ''} of the set",
)
fill = b.radio(
    "Removed patches become", list(FILLS), key="explain_fill", horizontal=True, persist_state="session",
    format_func=lambda f: "the image's mean colour" if f == "mean" else "the image blurred",
)
ids = [ctx.focus_id] if scope == FOCUS_ONLY else [i.id for i in ctx.image_set.images[: attribution.FAITHFULNESS_IMAGES]]
request = (handle.key, tuple(ids), fusion, float(discard), fill)
c.caption(f"About {(2 + 2 * len(methods)) * 11 * len(ids)} forwards of the model: it can take a while on a large model.")
if c.button("Score the maps", key="explain_score", type="primary"):
    st.session_state["explain_scored"] = request
if st.session_state.get("explain_scored") == request:
    with sentence_on_error():
        curves = attribution.faithfulness(handle, ctx.image_set, ids, fusion, float(discard), fill, steps=10)
    export.chart(faithfulness_chart(curves, handle.is_backbone, len(ids)), "E faithfulness", width="content")
    summary = faithfulness_summary(faithfulness_areas(curves))
    export.table(
        summary, "E faithfulness summary", hide_index=True, width="stretch",
        column_config={
            "relevance": st.column_config.NumberColumn("area: map", format="%.3f"),
            "random": st.column_config.NumberColumn("area: random order", format="%.3f"),
            "gain": st.column_config.NumberColumn("better than random by", format="%.3f"),
            "wins": st.column_config.NumberColumn("images where better", format="percent"),
        },
    )
    st.caption(
        "Area under each curve (mean over the images). \"Better than random by\" is random minus map for deletion and "
        "map minus random for insertion, so above 0 means the map beats a random order."
    )
else:
    st.caption("Press **Score the maps** to run the curves with these settings.")
