"""View B, head importance: which heads the predictions depend on, and which part of a head's attention matters."""

from __future__ import annotations

import streamlit as st

from core.importance import BACKBONE_REASON, METRIC_HELP, MODE_REMOVES, MODES, RANKED_BY_MAGNITUDE, metrics_for
from ui import importance, session
from ui.display import plain
from viz.importance import importance_heatmap, importance_line_chart, metric_title, partial_pruning_chart, pruning_curve_chart
from viz.overview import top5_chart

st.set_page_config(page_title="Head importance · HeadScope", page_icon="🔭", layout="wide")
ctx = session.page_context()
handle, focus = ctx.handle, ctx.focus
name = ctx.image_set.by_id(ctx.focus_id).name
image = ctx.image_set.index_of(ctx.focus_id)
measure = importance.target_measure(ctx.image_set)
offered = metrics_for(handle)


def _metric_name(metric: str) -> str:
    return metric.replace("_", " ")


st.title("Head importance")
if handle.is_backbone:
    st.caption(
        "Pruning a head sets all its attention weights to zero, so it adds nothing to the residual stream. "
        "A backbone has no classes, so a head matters as much as pruning it changes what the model computes."
    )
    st.info(f"Only {' and '.join(map(_metric_name, offered))} are offered for {plain(handle.name)}: {BACKBONE_REASON}.")
else:
    st.caption(
        "Pruning a head sets all its attention weights to zero, so it adds nothing to the residual stream. "
        "The target class of an image is its label when known, else the unpruned model's top-1."
    )

tables = importance.importance_tables(handle, ctx.image_set)

GLOBAL, LOCAL = "Over the set (global)", "Focus image (local)"
left, right = st.columns([1, 2])
metric = left.selectbox(
    "Metric", list(offered), key="importance_metric", persist_state="session", format_func=_metric_name,
    help="; ".join(f"{m}: {METRIC_HELP[m]}" for m in offered),
)
scope = right.radio("Scope", [GLOBAL, LOCAL], key="importance_scope", horizontal=True, persist_state="session")
on_image = scope == LOCAL
shown = image if on_image else None
values = importance.metric_values(tables, metric, shown)
value_title = metric_title(metric, on_image, measure)
baseline = importance.baseline_value(tables, metric, shown)
where = f"on the focus image {name}" if on_image else f"over the {len(ctx.image_set)} images"
head_at = (focus.layer, focus.head)

st.subheader("B1 · Every head")
b1, heat, ranked = st.columns([5, 3, 3], gap="medium")
with b1:
    session.show_head_chart(
        importance_line_chart(values, value_title, handle.num_heads, head_at, baseline, where),
        key="importance_line",
    )
    rule = "" if baseline is None else " The dashed rule is the unpruned model."
    st.caption(f"{METRIC_HELP[metric].capitalize()}, {plain(where)}.{rule} Click a dot to focus a head.")
with heat:
    signed = on_image and metric in RANKED_BY_MAGNITUDE
    session.show_head_chart(
        importance_heatmap(values, metric, value_title, head_at, signed), key="importance_heatmap"
    )
with ranked:
    importance.show_ranked_table(values, "importance_ranked", value_title)
    by = " (by magnitude)" if metric in RANKED_BY_MAGNITUDE else ""
    st.caption(f"Most important first{by}. Select a row to focus a head.")

st.subheader(f"B2 · Partial pruning of {focus.head_label} on {plain(name)}")
partial = importance.partial(handle, ctx.image_set, ctx.focus_id, focus.layer, focus.head)
target_name = None if handle.is_backbone else handle.class_names[int(tables.unpruned.iloc[image]["target"])]
mode = st.radio(
    "Mode shown in B3", list(MODES), key="importance_mode", horizontal=True, persist_state="session",
    format_func=lambda m: f"{m} ({MODE_REMOVES[m]})",
)
b2, b3 = st.columns([3, 2], gap="large")
with b2:
    st.altair_chart(partial_pruning_chart(partial, mode, target_name), width="content")
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
        st.dataframe(
            importance.partial_table(partial),
            hide_index=True,
            width="stretch",
            column_config={
                "removed_attention": st.column_config.NumberColumn("attention removed", format="percent"),
                "output_impact": st.column_config.NumberColumn("output impact", format="%.3g"),
            },
        )
    else:
        st.markdown(f"**B3 · Top-5 after `{mode}`** · {after}")
        st.altair_chart(top5_chart(importance.top5_table(row)), width="stretch")

st.subheader("Which metric to trust")
pruning = importance.curve(handle, ctx.image_set)
st.altair_chart(pruning_curve_chart(pruning, measure), width="stretch")
measured = (
    "the cosine similarity of the model's output to the unpruned output is averaged"
    if handle.is_backbone
    else f"the {measure} is measured"
)
st.caption(
    f"Heads are pruned cumulatively, least important first under each metric's global ranking (Michel et al. 2019), "
    f"and {measured} over the {len(ctx.image_set)} images; the dashed line prunes in a random order. "
    "A metric whose line stays high the longest has found the heads the model can spare."
)
