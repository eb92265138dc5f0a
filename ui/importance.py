"""Head importance page (view B): cached computations, pure chart builders, head picking.

The cached wrappers key on the model's and the image set's content hashes (and the
focus image's id, a hash of its bytes) plus plain parameters, and show a progress bar
while the set is streamed. The chart builders are pure: a tidy DataFrame in, an
``alt.Chart`` out.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.casestudy import set_labels
from core.charts import FOCUS_RED, head_line, importance_cells, metric_title, tooltip_field, unpruned_rule, unpruned_value  # noqa: F401  (page B reads metric_title here)
from core.images import ImageSet
from core.importance import (
    MODE_BLOCKS,
    MODES,
    HeadImportance,
    head_importance_tables,
    partial_pruning,
    pruning_curve,
    rank_heads,
)
from core.importance import target_measure as core_target_measure
from core.model import ViTHandle
from ui import session
# one head-picking selection and focus colour for every view's head charts
from ui.charts import HEAD_SELECTION

__all__ = [
    "CURVE_STEPS",
    "baseline_value",
    "curve",
    "importance_heatmap",
    "importance_line_chart",
    "importance_tables",
    "metric_values",
    "partial",
    "partial_pruning_chart",
    "partial_table",
    "show_ranked_table",
    "target_measure",
    "top5_table",
]

_CHART_HEIGHT = 300
# (query, key) blocks of the attention matrix in the order of ``MODE_BLOCKS``' flags
_BLOCK_NAMES = ("prefix → prefix", "prefix → patch", "patch → prefix", "patch → patch")
CURVE_STEPS = 10


# --- cached computations ---------------------------------------------------------------


def target_measure(image_set: ImageSet) -> str:
    """What 'accuracy' means on this set: against labels, the unpruned model, or both."""
    return core_target_measure([label is not None for label in image_set.labels])


@st.cache_data(max_entries=8, show_spinner=False)
def _tables(model_key: str, set_key: str, _handle: ViTHandle, _images: ImageSet) -> HeadImportance:
    heads = _handle.num_layers * _handle.num_heads
    with session.progress_bar(
        f"Pruning each of the {heads} heads on {len(_images)} images…", "Head importance: {done} of {total} images…"
    ) as progress:
        return head_importance_tables(_handle, _images.pil_images(), set_labels(_images), progress=progress)


def importance_tables(handle: ViTHandle, image_set: ImageSet) -> HeadImportance:
    """Every metric the model supports (``metrics_for``) of every head, per image and over the set.

    Cached per model and set.
    """
    return _tables(handle.key, image_set.key, handle, image_set)


@st.cache_data(max_entries=8, show_spinner=False)
def _curve(
    model_key: str, set_key: str, steps: int, _handle: ViTHandle, _images: ImageSet, _overall: pd.DataFrame
) -> pd.DataFrame:
    with session.progress_bar(
        f"Pruning more and more heads on {len(_images)} images…", "Pruning curve: {done} of {total} images…"
    ) as progress:
        return pruning_curve(_handle, _images.pil_images(), _overall, set_labels(_images), steps=steps, progress=progress)


def curve(handle: ViTHandle, image_set: ImageSet, tables: HeadImportance) -> pd.DataFrame:
    """The cumulative pruning curve of every metric's order (cached per model and set).

    ``tables`` is a function of the model and the set, so those keys cover it too.
    """
    return _curve(handle.key, image_set.key, CURVE_STEPS, handle, image_set, tables.overall)


@st.cache_data(max_entries=64, show_spinner="Masking the head's attention…")
def _partial(
    model_key: str, image_id: str, layer: int, head: int, target: int | None, _handle: ViTHandle, _images: ImageSet
) -> pd.DataFrame:
    x = _handle.preprocess([_images.by_id(image_id).image])
    return partial_pruning(_handle, x, layer, head, target)


def partial(handle: ViTHandle, image_set: ImageSet, image_id: str, layer: int, head: int) -> pd.DataFrame:
    """B2/B3 for one head on one image; the target is the image's label when known, as in B1.

    A backbone has no target class (its labels name the set's folders, not outputs), and
    its table has no probabilities: only what each mode removes and its output impact.
    """
    target = None if handle.is_backbone else image_set.by_id(image_id).label
    return _partial(handle.key, image_id, layer, head, target, handle, image_set)


# --- head picking ----------------------------------------------------------------------


def _pick_from_table(key: str, ranked: pd.DataFrame) -> None:
    rows = st.session_state[key].selection.rows
    if rows:
        row = ranked.iloc[rows[0]]
        session.set_focus_head(int(row["layer"]), int(row["head"]))


def show_ranked_table(ranked: pd.DataFrame, key: str, value_title: str) -> None:
    """The ranked heads as a table; selecting a row makes that head the focus head."""
    st.dataframe(
        ranked[["rank", "head_label", "value"]],
        key=key,
        on_select=lambda: _pick_from_table(key, ranked),
        selection_mode="single-row",
        hide_index=True,
        height=_CHART_HEIGHT,
        width="stretch",
        column_config={
            "rank": st.column_config.NumberColumn("rank", width="small"),
            "head_label": st.column_config.TextColumn("head"),
            "value": st.column_config.NumberColumn(value_title, format="%.4f"),
        },
    )


# --- tables ----------------------------------------------------------------------------

# Metrics that measure how much pruning a head changes something: nothing, for the unpruned model
_IMPACT_METRICS = frozenset({"layer_impact", "output_impact"})


def baseline_value(tables: HeadImportance, metric: str, image: int | None) -> float | None:
    """What B1's dashed rule marks: the unpruned model's value of ``metric`` (on one image, or over the set).

    The unpruned model changes nothing, so its impact is 0; a target probability or
    accuracy is measured (a backbone offers neither); a Taylor gradient has no
    unpruned value (``None``).
    """
    if metric in _IMPACT_METRICS:
        return 0.0
    return unpruned_value(tables, metric, image)


def metric_values(tables: HeadImportance, metric: str, image: int | None) -> pd.DataFrame:
    """One metric's value per head, over the set (``image`` None) or on one image.

    Columns layer, head, metric, value, head_label, index (``l * H + h``, the x of the
    paper's line), rank (1 = most important).
    """
    table = tables.overall if image is None else tables.per_image[tables.per_image["image"] == image]
    ranked = rank_heads(table, metric)
    num_heads = int(ranked["head"].max()) + 1
    return ranked.assign(
        head_label=[f"L{layer}H{head}" for layer, head in zip(ranked["layer"], ranked["head"])],
        index=ranked["layer"] * num_heads + ranked["head"],
    )


def partial_table(partial: pd.DataFrame) -> pd.DataFrame:
    """``partial_pruning``'s modes as a table for display: mode, removed_attention, output_impact.

    What each mode removes is left out: the mode picker above the table names it.
    """
    return partial[["mode", "removed_attention", "output_impact"]]


def top5_table(partial_row: pd.Series) -> pd.DataFrame:
    """``partial_pruning``'s top5 list of one mode as columns rank, class, probability."""
    top = partial_row["top5"]
    return pd.DataFrame(
        {"rank": range(1, len(top) + 1), "class": [name for name, _ in top], "probability": [p for _, p in top]}
    )


# --- charts ----------------------------------------------------------------------------


def importance_line_chart(
    values: pd.DataFrame, metric_title: str, num_heads: int, focus: tuple[int, int], baseline: float | None, subtitle: str
) -> alt.LayerChart:
    """B1: the metric of every head along ``x = l * H + h`` (as in the paper), dots coloured by layer.

    ``values``: ``metric_values`` output. ``baseline`` (``baseline_value``: the unpruned
    model's value, ``None`` for none) is drawn as a dashed rule. A click selects
    ``(layer, head)`` under ``HEAD_SELECTION``; the focus head is ringed in red.
    """
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)
    line, dots, where = head_line(values, metric_title, num_heads, dot_size=55)
    dots = dots.add_params(pick)
    x, y = where["x"], where["y"]
    layer, head = focus
    ring = (
        alt.Chart(values[(values["layer"] == layer) & (values["head"] == head)])
        .mark_point(shape="circle", size=260, strokeWidth=2.5, color=FOCUS_RED, filled=False)
        .encode(x=x, y=y)
    )
    layers: list[alt.Chart] = [line, dots, ring]
    if baseline is not None:
        layers.insert(0, unpruned_rule(baseline, metric_title))
    return alt.layer(*layers).properties(
        title=alt.TitleParams(f"{metric_title} of every head", subtitle=subtitle), height=_CHART_HEIGHT
    )


def importance_heatmap(
    values: pd.DataFrame, metric: str, metric_title: str, focus: tuple[int, int], signed: bool
) -> alt.LayerChart:
    """B1: layers x heads, darker = more important; the focus head outlined in red.

    ``values``: ``metric_values`` output. ``signed`` values (a local Taylor gradient)
    get a diverging scale centred on 0. A click selects ``(layer, head)``.
    """
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)
    cells, x, y = importance_cells(values, metric, metric_title, signed=signed)
    cells = cells.add_params(pick)
    layer, head = focus
    outline = (
        alt.Chart(values[(values["layer"] == layer) & (values["head"] == head)])
        .mark_rect(fill=None, stroke=FOCUS_RED, strokeWidth=3)
        .encode(x=x, y=y)
    )
    step = max(14, min(36, 320 // max(values["head"].nunique(), values["layer"].nunique())))
    return alt.layer(cells, outline).properties(
        title=alt.TitleParams("Layers × heads", subtitle="darker = more important; click to focus"),
        width=alt.Step(step),
        height=alt.Step(step),
    )


def partial_pruning_chart(partial: pd.DataFrame, chosen: str, target_name: str | None) -> alt.HConcatChart:
    """B2: per mode, a glyph of the attention blocks it removes and a bar of what the model outputs after it.

    ``partial``: ``core.importance.partial_pruning`` output. The glyph has one cell per
    (query, key) block of the head's attention matrix, dark where the mode zeroes it;
    the chosen mode's bar is highlighted. A classifier's bar is the probability of
    ``target_name`` with the unpruned probability as a dashed rule; a backbone's (no
    probability column, ``target_name`` None) is the output impact, 0 for ``none``.
    """
    order = list(MODES)
    glyph_rows = [
        {"mode": mode, "block": name, "removed": "removed" if flag else "kept"}
        for mode in MODES
        for name, flag in zip(_BLOCK_NAMES, MODE_BLOCKS[mode])
    ]
    y = alt.Y("mode:N", sort=order, title="mode")
    glyph = (
        alt.Chart(pd.DataFrame(glyph_rows))
        .mark_rect(stroke="white", strokeWidth=2)
        .encode(
            x=alt.X(
                "block:N",
                sort=list(_BLOCK_NAMES),
                title="query → key block",
                axis=alt.Axis(labelAngle=-45, orient="top", labelOverlap=False, labelLimit=120),
            ),
            y=y,
            color=alt.Color(
                "removed:N",
                scale=alt.Scale(domain=["removed", "kept"], range=["#333333", "#e6e6e6"]),
                legend=alt.Legend(orient="bottom", title=None),
            ),
            tooltip=[tooltip_field("mode:N", "mode"), tooltip_field("block:N", "query → key"), tooltip_field("removed:N", "")],
        )
        .properties(width=alt.Step(34), height=alt.Step(30))
    )
    classified = "probability" in partial.columns
    data = partial.drop(columns=["top5"], errors="ignore").assign(chosen=partial["mode"] == chosen)
    tooltip = [
        tooltip_field("mode:N", "mode"),
        tooltip_field("removes:N", "removes"),
        tooltip_field("removed_attention:Q", "share of the head's attention removed", format=".1%"),
        tooltip_field("output_impact:Q", "output impact", format=".4g"),
    ]
    if classified:
        measure, shown = "probability", ".3f"
        x = alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title=f"probability of '{target_name}'")
        tooltip += [tooltip_field("probability:Q", "probability", format=".4f"), tooltip_field("predicted:N", "top-1")]
        subtitle = "left: what each mode removes · right: target probability after it"
    else:
        measure, shown = "output_impact", ".3~g"  # impacts are often below 1e-3: digits, not decimals
        x = alt.X("output_impact:Q", scale=alt.Scale(zero=True), title="output impact (1 - cosine)")
        subtitle = "left: what each mode removes · right: how much it changes the output features"
    bars = (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=x,
            y=y.axis(None),
            color=alt.condition("datum.chosen", alt.value(FOCUS_RED), alt.value("#9ecae1")),
            tooltip=tooltip,
        )
    )
    labels = bars.mark_text(align="left", dx=3, fontSize=11).encode(
        text=alt.Text(f"{measure}:Q", format=shown), color=alt.value("#333333")
    )
    layers: list[alt.Chart] = [bars, labels]
    if classified:
        unpruned = float(partial.loc[partial["mode"] == "none", "probability"].iloc[0])
        layers.append(
            alt.Chart(pd.DataFrame({"probability": [unpruned]}))
            .mark_rule(strokeDash=[5, 4], color="#555555")
            .encode(x="probability:Q")
        )
    return alt.hconcat(glyph, alt.layer(*layers).properties(width=320, height=alt.Step(30))).properties(
        title=alt.TitleParams("Partial pruning", subtitle=subtitle)
    )
