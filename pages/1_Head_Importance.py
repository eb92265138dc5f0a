"""View B, head importance: which heads the predictions depend on, and which part of a head's attention matters."""

from __future__ import annotations

import streamlit as st

from core.measures.importance import (
    BACKBONE_REASON,
    METRIC_HELP,
    MODE_REMOVES,
    MODES,
    RANKED_BY_MAGNITUDE,
    metrics_for,
)
from ui import export, importance, links, probe, selection, sidebar, stages
from ui.display import plain
from ui.importance import GLOBAL, LOCAL
from viz.importance import (
    importance_heatmap,
    importance_line_chart,
    metric_title,
    partial_pruning_chart,
    pruning_curve_chart,
)
from viz.overview import top5_chart

st.set_page_config(page_title="Head importance · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("importance")
handle, focus = ctx.handle, ctx.focus
name = ctx.image_set.by_id(ctx.focus_id).name
image = ctx.image_set.index_of(ctx.focus_id)
measure = importance.target_measure(ctx.image_set)
# the exact metrics once the sweep has finished; until then the first pass's Taylor preview
state = importance.importance_state(handle, ctx.image_set)
tables = state.tables
offered = tuple(m for m in metrics_for(handle) if m in state.metrics)


def _metric_name(metric: str) -> str:
    return metric.replace("_", " ")


def _b1(values, value_title: str, baseline: float | None, where: str, on_image: bool, metric: str) -> None:
    """B1: the paper's line over every head, the layers × heads heatmap and the ranked table."""
    b1, heat, ranked = st.columns([5, 3, 3], gap="medium")
    with b1:
        selection.show_head_chart(
            importance_line_chart(values, value_title, handle.num_heads, head_at, baseline, where),
            key="importance_line",
        )
        rule = "" if baseline is None else " The dashed rule is the unpruned model."
        st.caption(f"{METRIC_HELP[metric].capitalize()}, {plain(where)}.{rule} Click a dot to focus a head.")
    with heat:
        signed = on_image and metric in RANKED_BY_MAGNITUDE
        selection.show_head_chart(
            importance_heatmap(values, metric, value_title, head_at, signed), key="importance_heatmap"
        )
    with ranked:
        importance.show_ranked_table(values, "importance_ranked", value_title)
        by = " (by magnitude)" if metric in RANKED_BY_MAGNITUDE else ""
        st.caption(f"Most important first{by}. Select a row to focus a head.")


st.title("Head importance")
if handle.is_backbone:
    st.caption(
        "Pruning a head sets all its attention weights to zero, so it adds nothing to the residual stream. "
        "A backbone has no classes, so a head matters as much as pruning it changes what the model computes."
    )
    shown_metrics = " and ".join(map(_metric_name, metrics_for(handle)))
    st.info(f"Only {shown_metrics} are offered for {plain(handle.name)}: {BACKBONE_REASON}.")
    can_fit, hint = probe.probe_offer(handle, ctx.image_set)
    st.caption(plain(hint) + (" The Overview page fits it in seconds." if can_fit else ""))
else:
    st.caption(
        "Pruning a head sets all its attention weights to zero, so it adds nothing to the residual stream. "
        "The target class of an image is its label when known, else the unpruned model's top-1."
    )

if not state.exact:
    st.info(
        "B1 shows the Taylor preview (one backward pass over every image) until the exact sweep, which prunes each "
        "head alone, has finished; the other metrics and the pruning curve follow."
        if offered else
        "B1 appears when the exact sweep has finished: a backbone's heads are judged by pruning each alone."
    )

# the heavy stages' estimate and Start, or their progress and Stop, stand here; drawn last, so
# that B2, which needs only the first pass, is on screen while they run
heavy_box = st.container()

head_at = (focus.layer, focus.head)
images_used = state.sample_note or f"the {len(ctx.image_set)} images"
links.offer_pending_metric("importance", offered)  # a link's metric, once the exact sweep offers it
if offered:
    left, right = st.columns([1, 2])
    metric = left.selectbox(
        "Metric", list(offered), key="importance_metric", persist_state="session", format_func=_metric_name,
        help="; ".join(f"{m}: {METRIC_HELP[m]}" for m in offered),
    )
    scope = right.radio("Scope", [GLOBAL, LOCAL], key="importance_scope", horizontal=True, persist_state="session")
    on_image = scope == LOCAL
    if on_image and not state.has_image(image):
        st.info(
            f"The focus image {plain(name)} is not among {images_used} the exact sweep ran on: "
            "B1 shows the set, and the sidebar's focus image picks another."
        )
        on_image = False
    shown = image if on_image else None
    values = importance.metric_values(tables, metric, shown)
    value_title = metric_title(metric, on_image, measure)
    baseline = importance.baseline_value(tables, metric, shown)
    where = f"on the focus image {name}" if on_image else f"over {images_used}"

    st.subheader("B1 · Every head")
    _b1(values, value_title, baseline, where, on_image, metric)

st.subheader(f"B2 · Partial pruning of {focus.head_label} on {plain(name)}")
partial = importance.partial(handle, ctx.image_set, ctx.focus_id, focus.layer, focus.head)
# the first pass's table covers every image, a sample's exact one only its own
every_image = state.job.preview.importance.unpruned
target_name = None if handle.is_backbone else handle.class_names[int(every_image.iloc[image]["target"])]
mode = st.radio(
    "Mode shown in B3", list(MODES), key="importance_mode", horizontal=True, persist_state="session",
    format_func=lambda m: f"{m} ({MODE_REMOVES[m]})",
)
b2, b3 = st.columns([3, 2], gap="large")
with b2:
    export.chart(partial_pruning_chart(partial, mode, target_name), f"B2 partial pruning {focus.head_label}", width="content")
    equals = "local output impact" if handle.is_backbone else "local probability"
    st.caption(
        f"The head's post-softmax attention is multiplied by a 0/1 mask, not renormalised; prefix = the "
        f"{handle.num_prefix_tokens} CLS/distillation/register token(s). Mode `head` equals B1's {equals}. "
        "Output impact: 1 - cosine similarity of the model's output with the unpruned output."
    )
with b3:
    row = partial.set_index("mode").loc[mode]
    after = (
        f"removes {row['removes']} ({row['removed_attention']:.1%} of the head's attention), "
        f"output impact {row['output_impact']:.3g}"
    )
    if handle.is_backbone:
        st.markdown(f"**B3 · After `{mode}`** · {after}")
        export.table(
            importance.partial_table(partial), f"B3 partial pruning {focus.head_label}",
            hide_index=True,
            width="stretch",
            column_config={
                "removed_attention": st.column_config.NumberColumn("attention removed", format="percent"),
                "output_impact": st.column_config.NumberColumn("output impact", format="%.3g"),
            },
        )
    else:
        st.markdown(f"**B3 · Top-5 after `{mode}`** · {after}")
        export.chart(top5_chart(importance.top5_table(row)), f"B3 top-5 after {mode}", width="stretch")

st.subheader("Which metric to trust")
if state.curve is None:
    st.caption("The pruning curve follows the exact sweep (above).")
    with heavy_box:
        stages.heavy_panel(state.job)  # the page stops or reruns here
    st.rerun()  # it finished since this run began
pruning = state.curve
export.chart(pruning_curve_chart(pruning, measure), "B pruning curve", width="stretch")
measured = (
    "the cosine similarity of the model's output to the unpruned output is averaged"
    if handle.is_backbone
    else f"the {measure} is measured"
)
st.caption(
    f"Heads are pruned cumulatively, least important first under each metric's global ranking (Michel et al. 2019), "
    f"and {measured} over {images_used}; the dashed line prunes in a random order. "
    "A metric whose line stays high the longest has found the heads the model can spare."
)
