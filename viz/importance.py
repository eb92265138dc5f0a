"""View B, head importance: the paper's line over all heads, the layers x heads heatmap, partial pruning, the pruning curve.

Pure builders: a tidy DataFrame in, an ``alt.Chart`` out. The same builder draws a chart
on the page (``focus``: the focus head ringed, a click picks a head under
``HEAD_SELECTION``) and in the report (``for_report``: the top heads ringed and named, a
fixed width).
"""

from __future__ import annotations

import math

import altair as alt
import numpy as np
import pandas as pd

from core.measures.importance import (
    HIGHER_MEANS_LESS_IMPORTANT,
    METRICS,
    MODE_BLOCKS,
    MODES,
    RANDOM_ORDER,
    HeadImportance,
)
from viz.common import (
    CHART_WIDTH,
    FOCUS_RED,
    HEAD_SELECTION,
    LABEL_GAP,
    LAYER_COLOURS,
    compact_number,
    fitted_title,
    tooltip_field,
    top_head_names,
)

__all__ = [
    "CHART_HEIGHT",
    "ORDER_COLOURS",
    "SIMILARITY_TITLE",
    "curve_column",
    "head_index_x",
    "head_line",
    "head_value_tooltip",
    "importance_cells",
    "importance_heatmap",
    "importance_line_chart",
    "metric_title",
    "mode_probability_chart",
    "partial_pruning_chart",
    "pruning_curve_chart",
    "unpruned_rule",
    "unpruned_value",
]

CHART_HEIGHT = 300  # B1's charts on the page (and the ranked table beside them)
ORDER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#8c564b", "#9467bd", "#8c8c8c"]  # one per metric, grey for random
SIMILARITY_TITLE = "output similarity (cosine)"  # to the unpruned model's output; short: a long axis title squeezes the plot
# (query, key) blocks of the attention matrix in the order of ``MODE_BLOCKS``' flags
_BLOCK_NAMES = ("prefix → prefix", "prefix → patch", "patch → prefix", "patch → patch")
_VALUE_FONT_PX, _VALUE_INDENT = 11, 4  # B2's values: their font, and their gap to the bars


# --- shared pieces ---------------------------------------------------------------------


def metric_title(metric: str, on_image: bool, measure: str) -> str:
    """Axis title of a metric: a local accuracy is 1/0 per image, a global one is the set's ``measure``."""
    if metric == "accuracy":
        return "top-1 is the target (1/0)" if on_image else measure
    return metric.replace("_", " ")


def unpruned_value(tables: HeadImportance, metric: str, image: int | None) -> float | None:
    """The unpruned model's value of a probability or accuracy metric (on one image, or the set mean); else None."""
    column = {"probability": "probability", "accuracy": "correct"}.get(metric)
    if column is None:
        return None
    values = tables.unpruned.set_index("image")[column].astype(float)  # the images it holds: maybe a sample
    return float(values.loc[image] if image is not None else values.mean())


def head_index_x(num_layers: int, num_heads: int) -> alt.X:
    """The x of the paper's line over all heads: ``l * H + h``, a tick at each layer's head 0."""
    return alt.X(
        "index:Q",
        title=f"head index l·{num_heads} + h (ticks at each layer's head 0)",
        scale=alt.Scale(domain=[-0.5, num_layers * num_heads - 0.5], nice=False, zero=False),
        axis=alt.Axis(values=list(range(0, num_layers * num_heads, num_heads)), format="d"),
    )


def head_line(values: pd.DataFrame, title: str, num_heads: int, dot_size: int) -> tuple[alt.Chart, alt.Chart, dict[str, alt.X | alt.Y]]:
    """The paper's line over all heads: a grey line along ``x = l * H + h`` and a dot per head coloured by layer.

    ``values`` columns: layer, head, head_label, index (``l * H + h``), value, rank.
    Returns the line, the dots (legend on the right) and the x and y encodings for marks on top.
    """
    where = {
        "x": head_index_x(int(values["layer"].max()) + 1, num_heads),
        "y": alt.Y("value:Q", title=title, scale=alt.Scale(zero=False)),
    }
    line = alt.Chart(values).mark_line(color="#bbbbbb", strokeWidth=1).encode(**where, order="index:Q")
    dots = (
        alt.Chart(values)
        .mark_circle(size=dot_size, opacity=0.95)
        .encode(
            **where,
            color=alt.Color("layer:O", scale=alt.Scale(scheme=LAYER_COLOURS), legend=alt.Legend(orient="right")),
            tooltip=head_value_tooltip(title),
        )
    )
    return line, dots, where


def head_value_tooltip(title: str) -> list[alt.Tooltip]:
    """Tooltip of a head's importance: its label, value and rank."""
    return [
        tooltip_field("head_label:N", "head"),
        tooltip_field("value:Q", title, format=".4f"),
        tooltip_field("rank:Q", "rank"),
    ]


def unpruned_rule(baseline: float, title: str) -> alt.Chart:
    """A dashed horizontal rule at the unpruned model's value (field ``value``)."""
    return (
        alt.Chart(pd.DataFrame({"value": [baseline], "what": ["unpruned model"]}))
        .mark_rule(color="#555555", strokeDash=[5, 4])
        .encode(y="value:Q", tooltip=[tooltip_field("what:N", ""), tooltip_field("value:Q", title, format=".4f")])
    )


def importance_cells(values: pd.DataFrame, metric: str, title: str, *, signed: bool = False) -> tuple[alt.Chart, alt.X, alt.Y]:
    """The layers x heads heatmap of one importance metric, darker = more important.

    ``values`` columns: layer, head, head_label, value, rank. ``signed`` values (a local
    Taylor gradient) get a diverging scale centred on 0. Returns the chart and its x and y
    encodings, for outlines layered on top.
    """
    if signed:
        scale = alt.Scale(scheme="redblue", domainMid=0, reverse=True)
    else:
        # important heads dark: for probability and accuracy a LOW value is the important one
        scale = alt.Scale(scheme="blues", reverse=HIGHER_MEANS_LESS_IMPORTANT[metric], zero=False)
    x = alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0))
    y = alt.Y("layer:O", title="layer")
    cells = (
        alt.Chart(values)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color("value:Q", title=title, scale=scale, legend=alt.Legend(orient="bottom", gradientLength=160)),
            tooltip=head_value_tooltip(title),
        )
    )
    return cells, x, y


# --- B1: every head's importance ---------------------------------------------------


def importance_line_chart(
    values: pd.DataFrame,
    title: str,
    num_heads: int,
    focus: tuple[int, int] | None = None,
    baseline: float | None = None,
    subtitle: str | None = None,
    *,
    for_report: bool = False,
) -> alt.LayerChart:
    """B1: the metric of every head along ``x = l * H + h`` (as in the paper), dots coloured by layer.

    ``values`` columns: layer, head, head_label, index (``l * H + h``), value, rank
    (``ui.importance.metric_values``), and top for the report (``viz.report.head_values``).
    ``baseline`` (the unpruned model's value, ``None`` for none) is a dashed rule.

    ``focus`` (layer, head), on a page: that head is ringed in red and a click selects
    ``(layer, head)`` under ``HEAD_SELECTION``. ``for_report``: the top heads are ringed
    and named in red, at the report's fixed width; ``subtitle`` defaults to saying so.
    """
    line, dots, where = head_line(values, title, num_heads, dot_size=45 if for_report else 55)
    x, y = where["x"], where["y"]
    if focus is not None:
        dots = dots.add_params(alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False))
    layers: list[alt.Chart] = [line, dots]
    if for_report:
        top = values[values["top"]]
        rings = (
            alt.Chart(top)
            .mark_point(shape="circle", size=220, strokeWidth=2, color=FOCUS_RED)
            .encode(x=x, y=y, tooltip=head_value_tooltip(title))
        )
        layers += [rings, *top_head_names(top, x, y)]
    if focus is not None:
        layer, head = focus
        layers.append(
            alt.Chart(values[(values["layer"] == layer) & (values["head"] == head)])
            .mark_point(shape="circle", size=260, strokeWidth=2.5, color=FOCUS_RED, filled=False)
            .encode(x=x, y=y)
        )
    if baseline is not None:
        layers.insert(0, unpruned_rule(baseline, title))
    if for_report and subtitle is None:
        subtitle = "top heads ringed in red" + (" · dashed: the unpruned model" if baseline is not None else "")
    size = {"width": CHART_WIDTH, "height": 260} if for_report else {"height": CHART_HEIGHT}
    return alt.layer(*layers).properties(
        title=alt.TitleParams(f"{title} of every head", subtitle=alt.Undefined if subtitle is None else subtitle), **size
    )


def importance_heatmap(
    values: pd.DataFrame,
    metric: str,
    title: str,
    focus: tuple[int, int] | None = None,
    signed: bool = False,
    *,
    for_report: bool = False,
) -> alt.LayerChart:
    """B1: layers x heads, darker = more important.

    ``values``: as for ``importance_line_chart``. ``signed`` values (a local Taylor
    gradient) get a diverging scale centred on 0. ``focus`` (layer, head), on a page: that
    head is outlined in red and a click selects ``(layer, head)`` under ``HEAD_SELECTION``.
    ``for_report``: the top heads (column top) are outlined in red with their rank.
    """
    cells, x, y = importance_cells(values, metric, title, signed=signed)
    if focus is not None:
        cells = cells.add_params(alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False))
    layers: list[alt.Chart] = [cells]
    if for_report:
        spread = (values["value"] - values["value"].min()) / max(float(np.ptp(values["value"])), 1e-12)
        # the rank reads white on the darkest half of the scale, red on the light half
        dark = spread < 0.5 if HIGHER_MEANS_LESS_IMPORTANT[metric] else spread > 0.5
        top = values.assign(dark=dark)[values["top"]]
        outline = alt.Chart(top).mark_rect(fill=None, stroke=FOCUS_RED, strokeWidth=3).encode(x=x, y=y)
        ranks = (
            alt.Chart(top)
            .mark_text(fontWeight="bold", fontSize=12)
            .encode(x=x, y=y, text="rank:Q", color=alt.condition("datum.dark", alt.value("white"), alt.value(FOCUS_RED)))
        )
        layers += [outline, ranks]
    if focus is not None:
        layer, head = focus
        layers.append(
            alt.Chart(values[(values["layer"] == layer) & (values["head"] == head)])
            .mark_rect(fill=None, stroke=FOCUS_RED, strokeWidth=3)
            .encode(x=x, y=y)
        )
    if for_report:
        subtitle = "darker = more important · red: top heads by rank"
    else:
        subtitle = "darker = more important; click to focus" if focus is not None else "darker = more important"
    step = max(14, min(34 if for_report else 36, 320 // max(values["head"].nunique(), values["layer"].nunique())))
    return alt.layer(*layers).properties(
        title=alt.TitleParams("Layers × heads", subtitle=subtitle),
        width=alt.Step(step),
        height=alt.Step(step),
    )


# --- B2: partial pruning ---------------------------------------------------------------


def _value_column_width(shown: pd.Series) -> int:
    """Pixels a column of value labels needs: its longest label at 0.7 em a character (digits and
    "e-" run narrower in any sans-serif font), after the gap to the bars."""
    longest = int(shown.str.len().max()) if len(shown) else 1
    return _VALUE_INDENT + math.ceil(longest * 0.7 * _VALUE_FONT_PX) + 2


def partial_pruning_chart(partial: pd.DataFrame, chosen: str, target_name: str | None) -> alt.HConcatChart:
    """B2: per mode, a glyph of the attention blocks it removes and a bar of what the model outputs after it.

    ``partial``: ``core.measures.importance.partial_pruning`` output. The glyph has one cell per
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
    measure = "probability" if classified else "output_impact"
    data = partial.drop(columns=["top5"], errors="ignore").assign(
        chosen=partial["mode"] == chosen,
        # impacts are often a few millionths: "3.97e-6", not "0.00000397"
        shown=[f"{value:.3f}" if classified else compact_number(value) for value in partial[measure].astype(float)],
    )
    tooltip = [
        tooltip_field("mode:N", "mode"),
        tooltip_field("removes:N", "removes"),
        tooltip_field("removed_attention:Q", "share of the head's attention removed", format=".1%"),
        tooltip_field("output_impact:Q", "output impact", format=".4g"),
    ]
    # 250 px of plot: no two labels closer than the gap; impacts without trailing zeros ("0.02", "1e-5")
    axis = dict(labelOverlap="parity", labelSeparation=LABEL_GAP)
    if classified:
        x = alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title=f"probability of '{target_name}'", axis=alt.Axis(**axis))
        tooltip += [tooltip_field("probability:Q", "probability", format=".4f"), tooltip_field("predicted:N", "top-1")]
        subtitle = "left: what each mode removes · right: target probability after it"
    else:
        x = alt.X("output_impact:Q", scale=alt.Scale(zero=True), title="output impact (1 - cosine)", axis=alt.Axis(format="~g", **axis))
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
    # the values in a column of their own, as wide as the longest, each starting at its left edge: beside a
    # bar that ends at the axis' end they would be cut off
    labels = (
        alt.Chart(data)
        .mark_text(align="left", fontSize=_VALUE_FONT_PX, color="#333333")
        .encode(x=alt.value(_VALUE_INDENT), y=y.axis(None), text="shown:N", tooltip=tooltip)
        .properties(
            width=_value_column_width(data["shown"]), height=alt.Step(30), view=alt.ViewBackground(stroke=None)
        )
    )
    layers: list[alt.Chart] = [bars]
    if classified:
        unpruned = float(partial.loc[partial["mode"] == "none", "probability"].iloc[0])
        layers.append(
            alt.Chart(pd.DataFrame({"probability": [unpruned]}))
            .mark_rule(strokeDash=[5, 4], color="#555555")
            .encode(x="probability:Q")
        )
    # glyph, bars and values within the 520 px a wide page's B2 column holds
    return alt.hconcat(glyph, alt.layer(*layers).properties(width=250, height=alt.Step(30)), labels, spacing=4).properties(
        title=alt.TitleParams("Partial pruning", subtitle=subtitle)
    )


def mode_probability_chart(
    partial: pd.DataFrame, head_label: str, killer_mode: str | None, *, backbone: bool = False
) -> alt.LayerChart:
    """Target probability (a backbone: output change) after each partial-pruning mode of one head, on the images it hurts most.

    ``partial``: the head's rows of the ``partial`` table with the image's ``name``. A bar
    is the mean over the images, a dot one image; the mode that kills the prediction
    (``killer_mode``) is red. A backbone's bars are the output_impact of each mode
    (1 - cosine of its features with the unpruned ones).
    """
    column = "output_impact" if backbone else "probability"
    means = partial.groupby("mode", as_index=False)[column].mean()
    means["killer"] = means["mode"] == killer_mode
    y = alt.Y("mode:N", sort=list(MODES), title="mode")
    if backbone:
        x = alt.X("output_impact:Q", title="output change (1 - cosine)", scale=alt.Scale(zero=True))
    else:
        x = alt.X("probability:Q", title="target probability", scale=alt.Scale(domain=[0, 1]))
    value_title = "output change" if backbone else "probability"
    bars = (
        alt.Chart(means)
        .mark_bar(height=alt.RelativeBandSize(0.7))
        .encode(
            x=x,
            y=y,
            color=alt.condition("datum.killer", alt.value(FOCUS_RED), alt.value("#9ecae1")),
            tooltip=[tooltip_field("mode:N", "mode"), tooltip_field(f"{column}:Q", "mean over the images", format=".4f" if backbone else ".3f")],
        )
    )
    dot_tooltip = [
        tooltip_field("name:N", "image name"),
        tooltip_field("mode:N", "mode"),
        tooltip_field(f"{column}:Q", value_title, format=".4f" if backbone else ".3f"),
    ]
    if not backbone:
        dot_tooltip.append(tooltip_field("predicted:N", "top-1"))
    dots = (
        alt.Chart(partial[["mode", column, "name", "predicted"]])
        .mark_circle(size=28, color="#333333", opacity=0.75)
        .encode(x=x, y=y, tooltip=dot_tooltip)
    )
    return alt.layer(bars, dots).properties(
        title=alt.TitleParams(f"{head_label}: partial pruning", subtitle="bar: mean · dot: an image · red: killer"),
        width=280,
        height=alt.Step(20),
    )


# --- B3: cumulative pruning --------------------------------------------------------------


def curve_column(curve: pd.DataFrame) -> str:
    """What a pruning curve measures: ``accuracy`` for a classifier, ``similarity`` of the output for a backbone."""
    if "similarity" in curve.columns and bool(curve["accuracy"].isna().all()):
        return "similarity"
    return "accuracy"


def pruning_curve_chart(curve: pd.DataFrame, measure: str, width: int | None = None) -> alt.Chart:
    """Cumulative pruning: ``measure`` as heads are removed least important first, one line per order.

    ``curve``: ``core.measures.importance.pruning_curve`` output; the random order is dashed. A
    classifier's curve is its accuracy, a backbone's the cosine similarity of its output
    to the unpruned output (``curve_column``), titled ``SIMILARITY_TITLE`` whatever
    ``measure`` says. ``width`` in pixels (the title then wraps to it), or ``None`` to let
    the container decide. The x axis has fewer ticks on a narrower plot, and drops every
    other label where neighbours would come closer than ``LABEL_GAP``.
    """
    column = curve_column(curve)
    colours = dict(zip([*METRICS, RANDOM_ORDER], ORDER_COLOURS))
    present = set(curve["order"])
    orders = [name for name in (*METRICS, RANDOM_ORDER) if name in present]
    if column == "similarity":
        measure = SIMILARITY_TITLE
    low = min(0.0, float(curve[column].min())) if len(curve) else 0.0
    chart = (
        alt.Chart(curve.assign(baseline=curve["order"] == RANDOM_ORDER))
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "fraction:Q",
                title="share of all heads pruned (least important first)",
                # a page squeezes plot, axes and legend into the chart's width ("90%100%" touched): a tick
                # about every 90 px of plot, and every other label gone where neighbours still come too close
                axis=alt.Axis(
                    format="%", tickCount=alt.ExprRef("ceil(width / 90)"), labelOverlap="parity", labelSeparation=LABEL_GAP
                ),
            ),
            y=alt.Y(f"{column}:Q", title=measure, scale=alt.Scale(domain=[low, 1])),
            color=alt.Color(
                "order:N",
                title="order by",
                # only the orders the curve has (a backbone has two metrics), each in its fixed colour
                scale=alt.Scale(domain=orders, range=[colours[name] for name in orders]),
                legend=alt.Legend(orient="right"),
            ),
            strokeDash=alt.StrokeDash("baseline:N", legend=None, scale=alt.Scale(domain=[False, True], range=[[1, 0], [5, 4]])),
            tooltip=[
                tooltip_field("order:N", "order by"),
                tooltip_field("pruned:Q", "heads pruned"),
                tooltip_field("fraction:Q", "share pruned", format=".0%"),
                tooltip_field(f"{column}:Q", measure, format=".3f"),
            ],
        )
        .properties(height=300)
    )
    title, subtitle = "Cumulative pruning", "the metric whose line stays up longest ranks heads best"
    if width is None:  # as wide as the page's column: the page cuts a title too long for it with "…"
        return chart.properties(title=alt.TitleParams(title, subtitle=subtitle))
    return chart.properties(title=fitted_title(title, subtitle, width), width=width)
