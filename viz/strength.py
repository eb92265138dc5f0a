"""View C, attention strength: heads by layer, hop profiles, entropy over the images, 2-D offsets.

Pure builders: a tidy DataFrame from ``core.measures.strength.StrengthStats`` in, an ``alt.Chart``
out. ``heads_by_layer_chart`` draws C1 on the page (``focus``) and in the report
(``for_report``).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.measures.strength import SPREAD_QUANTILES
from viz.common import (
    CHART_WIDTH,
    FOCUS_RED,
    HEAD_SELECTION,
    LAYER_COLOURS,
    tooltip_field,
)

__all__ = [
    "ALL_HEADS",
    "HIGH_NORM_PURPLE",
    "DISTRIBUTION_BINS",
    "distribution_bins",
    "distribution_chart",
    "entropy_distribution_chart",
    "heads_by_layer_chart",
    "hop_profile_chart",
    "layer_dots",
    "offset_heatmap",
    "token_norms_chart",
    "top_heads_hop_profiles_chart",
]

ALL_HEADS = "all heads (mean)"  # the reference line of ``top_heads_hop_profiles_chart``
_CHART_HEIGHT = 300  # the page's charts
HIGH_NORM_PURPLE = "#7b3294"  # high-norm (outlier) tokens, on the norms chart and the image
_PREFIX_COLOURS = ["#1f77b4", "#2ca02c", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
_HEAD_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]


def layer_dots(
    heads: pd.DataFrame, value: str, axis_title: str, value_format: str = ".3f", *, zero: bool = True, largest: int = 70
) -> tuple[alt.Chart, dict[str, alt.X | alt.XOffset | alt.Y]]:
    """A dot per head by layer (a layer's heads side by side), coloured by layer.

    ``heads`` columns: layer, head, head_label and ``value``. Returns the chart and its
    ``x``, ``xOffset`` and ``y`` encodings, for marks layered on the same heads.
    """
    where = {
        "x": alt.X("layer:O", title="layer", axis=alt.Axis(labelAngle=0)),
        "xOffset": alt.XOffset("head:O"),
        "y": alt.Y(f"{value}:Q", title=axis_title, scale=alt.Scale(zero=zero)),
    }
    dots = (
        alt.Chart(heads)
        # 36 heads get dots of about 66 px², ViT-B's 144 heads 20 px², so a layer's heads stay apart
        .mark_circle(size=max(20, min(largest, 2400 // max(1, len(heads)))), opacity=0.9)
        .encode(
            **where,
            color=alt.Color("layer:O", scale=alt.Scale(scheme=LAYER_COLOURS), legend=None),
            tooltip=[tooltip_field("head_label:N", "head"), tooltip_field(f"{value}:Q", axis_title, format=value_format)],
        )
    )
    return dots, where


def heads_by_layer_chart(
    heads: pd.DataFrame,
    value: str,
    title: str,
    axis_title: str,
    focus: tuple[int, int] | None = None,
    value_format: str = ".3f",
    *,
    reference: tuple[float, str] | None = None,
    for_report: bool = False,
) -> alt.LayerChart:
    """C1: a dot per head, by layer (heads side by side within a layer), coloured by layer.

    ``heads`` columns: layer, head, head_label and ``value`` (e.g. ``StrengthStats.heads()``),
    and top for the report. ``focus`` (layer, head), on a page: that head is ringed in red
    and a click selects ``(layer, head)`` under ``HEAD_SELECTION``. ``for_report``: the
    top heads are ringed in red and a black tick marks each layer's mean, at the report's
    fixed width. ``reference`` (value, label) draws a dashed rule, e.g. uniform attention's entropy.
    """
    tooltip = [tooltip_field("head_label:N", "head"), tooltip_field(f"{value}:Q", axis_title, format=value_format)]
    if for_report:
        dots, where = layer_dots(heads, value, axis_title, value_format, zero=False, largest=60)
    else:
        dots, where = layer_dots(heads, value, axis_title, value_format)
    x, y = where["x"], where["y"]
    if focus is not None:
        dots = dots.add_params(alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False))
    layers: list[alt.Chart] = [dots]
    notes: list[str] = []
    if for_report:
        means = heads.groupby("layer", as_index=False)[value].mean()
        ticks = (
            alt.Chart(means)
            .mark_tick(color="#222222", thickness=2, opacity=0.8)
            .encode(
                x=x,
                y=y,
                tooltip=[tooltip_field("layer:O", "layer"), tooltip_field(f"{value}:Q", f"layer mean {axis_title}", format=value_format)],
            )
        )
        rings = (
            alt.Chart(heads[heads["top"]])
            .mark_point(shape="circle", size=200, strokeWidth=2, color=FOCUS_RED)
            .encode(**where, tooltip=tooltip)
        )
        layers += [ticks, rings]
        notes += ["a dot per head (set mean)", "tick: layer mean", "red: top heads"]
    if focus is not None:
        layer, head = focus
        layers.append(
            alt.Chart(heads[(heads["layer"] == layer) & (heads["head"] == head)])
            .mark_point(shape="circle", size=260, strokeWidth=2.5, color=FOCUS_RED, filled=False)
            .encode(**where)
        )
        notes.append(f"focus head L{layer}H{head} ringed in red")
    if reference is not None:
        level, label = reference
        layers.insert(
            0,
            alt.Chart(pd.DataFrame({value: [level], "what": [label]}))
            .mark_rule(color="#777777", strokeDash=[5, 4])
            .encode(y=y, tooltip=[tooltip_field("what:N", ""), tooltip_field(f"{value}:Q", value, format=value_format)]),
        )
        notes.append(f"dashed: {label}")
    size = {"width": CHART_WIDTH, "height": 240} if for_report else {"height": _CHART_HEIGHT}
    subtitle = " · ".join(notes) if notes else alt.Undefined
    if len(notes) > 1 and not for_report:
        subtitle = notes  # a line each: a third of a wide page cuts a joined line short
    return alt.layer(*layers).properties(title=alt.TitleParams(title, subtitle=subtitle), **size)


def hop_profile_chart(profile: pd.DataFrame, head_label: str) -> alt.LayerChart:
    """C2: ``s_n`` of one head on the focus image (bars), the set's spread (line) and mean (tick).

    ``profile`` columns: hop, strength, mean, low, high (``StrengthStats.hop_profile``).
    """
    low, high = (f"{q:.0%}" for q in SPREAD_QUANTILES)
    x = alt.X("hop:O", title="n-hop neighbours", axis=alt.Axis(labelAngle=0))
    tooltip = [
        tooltip_field("hop:O", "hop"),
        tooltip_field("strength:Q", "focus image", format=".4f"),
        tooltip_field("mean:Q", "set mean", format=".4f"),
        tooltip_field("low:Q", f"set {low}", format=".4f"),
        tooltip_field("high:Q", f"set {high}", format=".4f"),
    ]
    base = alt.Chart(profile).encode(x=x, tooltip=tooltip)
    bars = base.mark_bar(color="#9ecae1", width=alt.RelativeBandSize(0.7)).encode(y=alt.Y("strength:Q", title="strength s_n"))
    band = base.mark_rule(color="#333333", strokeWidth=2).encode(y="low:Q", y2="high:Q")
    mean = base.mark_tick(color="#333333", thickness=2, size=14).encode(y="mean:Q")
    return alt.layer(bars, band, mean).properties(
        title=alt.TitleParams(
            f"Strength by hop · {head_label}",
            # two short lines: the chart has a third of the page
            subtitle=["bars: focus image · tick: set mean", f"line: {low}-{high} of the images"],
        ),
        height=_CHART_HEIGHT,
    )


def _head_colours(labels: Sequence[str]) -> alt.Scale:
    """One hue per top head in rank order, grey for the mean over all heads."""
    hues = [_HEAD_COLOURS[i % len(_HEAD_COLOURS)] for i in range(len(labels))]
    return alt.Scale(domain=[*labels, ALL_HEADS], range=[*hues, "#8c8c8c"])


def top_heads_hop_profiles_chart(profiles: pd.DataFrame) -> alt.Chart:
    """The set-mean hop profile ``s_n`` of each top head, and of all heads for comparison.

    ``profiles`` columns: head_label (``ALL_HEADS`` for the reference), hop,
    strength; the top heads come first, in rank order.
    """
    labels = [label for label in dict.fromkeys(profiles["head_label"]) if label != ALL_HEADS]
    return (
        alt.Chart(profiles.assign(reference=profiles["head_label"] == ALL_HEADS))
        .mark_line(point=True)
        .encode(
            x=alt.X("hop:O", title="n-hop neighbours", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("strength:Q", title="mean attention strength s_n"),
            color=alt.Color("head_label:N", title="head", scale=_head_colours(labels), sort=[*labels, ALL_HEADS]),
            strokeDash=alt.StrokeDash("reference:N", legend=None, scale=alt.Scale(domain=[False, True], range=[[1, 0], [5, 4]])),
            tooltip=[
                tooltip_field("head_label:N", "head"),
                tooltip_field("hop:O", "hop"),
                tooltip_field("strength:Q", "s_n", format=".4f"),
            ],
        )
        .properties(
            title=alt.TitleParams(
                "Attention strength across neighbours", subtitle="mean over the images · flat = global, falling = local"
            ),
            width=CHART_WIDTH,
            height=240,
        )
    )


def entropy_distribution_chart(entropies: pd.DataFrame, focus_value: float, head_label: str) -> alt.Chart:
    """C3: histogram of one head's entropy over the images, the focus image's bar in red.

    ``entropies`` columns: image, entropy (``StrengthStats.entropy_over_images``).
    """
    return distribution_chart(
        entropies, "entropy", focus_value, f"Head entropy over images · {head_label}", "entropy (nats)", ".3f"
    )


DISTRIBUTION_BINS = 20


def distribution_bins(values: np.ndarray, focus_value: float, domain: tuple[float, float] | None = None) -> pd.DataFrame:
    """``values`` in ``DISTRIBUTION_BINS`` equal bins over ``domain`` (default: their range).

    Columns start, end, images (how many values fall in the bin; the last bin holds its
    end) and focus (the bin holds ``focus_value``). NaN values are left out.
    """
    finite = values[np.isfinite(values)]
    low, high = domain if domain else (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if high <= low:  # every image alike: one narrow bin's worth of room around the value
        half = max(abs(low) * 1e-3, 1e-3)
        low, high = low - half, high + half
    counts, edges = np.histogram(finite, bins=DISTRIBUTION_BINS, range=(low, high))
    focus = int(np.clip(np.searchsorted(edges, focus_value, side="right") - 1, 0, DISTRIBUTION_BINS - 1))
    return pd.DataFrame(
        {"start": edges[:-1], "end": edges[1:], "images": counts, "focus": np.arange(DISTRIBUTION_BINS) == focus}
    )


def distribution_chart(
    values: pd.DataFrame, column: str, focus_value: float, title: str, axis_title: str, value_format: str = ".3f",
    *, domain: tuple[float, float] | None = None,
) -> alt.Chart:
    """Histogram of one head's ``column`` over the images (``StrengthStats.over_images``), the focus image's bar in red.

    The focus image is a bar, not a rule: a rule at the smallest value would sit on the
    axis and read as a stray line. ``domain`` fixes the x axis (e.g. ``(0, 1)`` for a
    share), so a narrow spread is not stretched across the chart.
    """
    bins = distribution_bins(values[column].to_numpy(dtype=np.float64), focus_value, domain)
    low, high = float(bins["start"].iloc[0]), float(bins["end"].iloc[-1])
    return (
        alt.Chart(bins[bins["images"] > 0])  # the axis keeps the empty bins' room
        .mark_bar(binSpacing=1)
        .encode(
            x=alt.X("start:Q", title=axis_title, scale=alt.Scale(domain=[low, high], nice=False), axis=alt.Axis(format=value_format)),
            x2="end:Q",
            y=alt.Y("images:Q", title="images", axis=alt.Axis(tickMinStep=1, format="d"), scale=alt.Scale(domainMin=0)),
            y2=alt.datum(0),  # upright bars from 0: with x and x2 alone Vega-Lite lays them down
            color=alt.condition("datum.focus", alt.value(FOCUS_RED), alt.value("#9ecae1")),
            tooltip=[
                tooltip_field("start:Q", f"{axis_title} from", format=value_format),
                tooltip_field("end:Q", "to", format=value_format),
                tooltip_field("images:Q", "images"),
                tooltip_field("focus:N", "holds the focus image"),
            ],
        )
        .properties(
            title=alt.TitleParams(title, subtitle=f"red: the bar of the focus image ({focus_value:{value_format}})"),
            height=_CHART_HEIGHT,
        )
    )


def token_norms_chart(norms: pd.DataFrame, threshold: float, focus_layer: int) -> alt.LayerChart:
    """Every token's norm on one image, over the median patch norm, from the embeddings to the last block; outliers marked.

    ``norms`` columns: position (0 = the embeddings, ``l + 1`` = leaving block ``l``),
    stage (its axis label: ``"in"``, ``"0"``, ...), token (index), name (``"patch"`` or
    a prefix token's name), ratio (norm / that stage's median patch norm), outlier
    (``ratio >= threshold``). The patches are a box per stage (whiskers: min to max),
    prefix tokens a coloured dot each, outliers purple, and a dashed rule marks
    ``threshold``. The stage at position ``focus_layer``, the keys block ``focus_layer``
    attends to, is shaded. The y axis is logarithmic so a 10x artefact and the ordinary
    tokens both stay readable.
    """
    stages = list(dict.fromkeys(norms.sort_values("position")["stage"]))
    # every stage labelled, level: slanted labels would push the title out of the page's frame
    x = alt.X(
        "stage:O", title="block output (in: the embeddings)", sort=stages, axis=alt.Axis(labelAngle=0, labelOverlap=False)
    )
    y_title, y_scale = "norm ÷ median patch norm", alt.Scale(type="log")
    y = alt.Y("ratio:Q", title=y_title, scale=y_scale)
    tooltip = [
        tooltip_field("stage:O", "block output"),
        tooltip_field("token:Q", "token"),
        tooltip_field("name:N", "kind"),
        tooltip_field("ratio:Q", "norm ÷ median patch norm", format=".2f"),
    ]
    # the patches' box per stage, drawn from its quartiles (Vega-Lite's boxplot writes its own tooltip keys)
    ratio = norms[norms["name"] == "patch"].groupby("stage", sort=False)["ratio"]
    spread = pd.DataFrame(
        {"low": ratio.min(), "q1": ratio.quantile(0.25), "median": ratio.median(), "q3": ratio.quantile(0.75), "high": ratio.max()}
    ).reset_index()
    box_tooltip = [
        tooltip_field("stage:O", "block output"),
        *(tooltip_field(f"{column}:Q", f"patches' {what}", format=".2f")
          for column, what in (("low", "least"), ("median", "median"), ("high", "largest"))),
    ]
    base = alt.Chart(spread).encode(x=x, tooltip=box_tooltip)
    boxes = alt.layer(
        base.mark_rule(color="#6baed6").encode(y=alt.Y("low:Q", title=y_title, scale=y_scale), y2="high:Q"),
        base.mark_bar(color="#9ecae1", size=14).encode(y=alt.Y("q1:Q", title=y_title, scale=y_scale), y2="q3:Q"),
        base.mark_tick(color="#333333", size=14, thickness=2).encode(y=alt.Y("median:Q", title=y_title, scale=y_scale)),
    )
    prefix = norms[(norms["name"] != "patch")]
    names = list(dict.fromkeys(prefix["name"]))
    dots = (
        alt.Chart(prefix)
        .mark_point(filled=True, size=45, opacity=0.9)
        .encode(
            x=x, y=y, tooltip=tooltip,
            color=alt.Color(
                "name:N", title="prefix token", sort=names,
                scale=alt.Scale(domain=names, range=[_PREFIX_COLOURS[i % len(_PREFIX_COLOURS)] for i in range(len(names))]),
                legend=None,  # named in the tooltip and the caption: a legend would squeeze the plot
            ),
        )
    )
    outliers = (
        alt.Chart(norms[norms["outlier"]])
        .mark_point(shape="diamond", size=70, strokeWidth=2, color=HIGH_NORM_PURPLE, filled=False)
        .encode(x=x, y=y, tooltip=tooltip)
    )
    rule = (
        alt.Chart(pd.DataFrame({"ratio": [threshold], "what": [f"outlier threshold: {threshold:g}× the median"]}))
        .mark_rule(color=HIGH_NORM_PURPLE, strokeDash=[5, 4])
        .encode(y=y, tooltip=[tooltip_field("what:N", "")])
    )
    focus = (
        alt.Chart(pd.DataFrame({"stage": [stages[focus_layer]]}))
        .mark_rect(color=FOCUS_RED, opacity=0.08)
        .encode(x=x)
    )
    count = int(norms["outlier"].sum())
    marks = f"purple: {count} outliers" if count else "shaded: focus layer's keys"
    return alt.layer(focus, boxes, rule, dots, outliers).properties(
        title=alt.TitleParams(
            "Token norms by layer",
            # two short lines: a third of a wide page cuts a long one, and a third line pushes the title out
            subtitle=["boxes: patches · dots: prefix tokens", f"dashed: {threshold:g}× median · {marks}"],
        ),
        height=_CHART_HEIGHT,
    )


def offset_heatmap(offsets: pd.DataFrame, subtitle: str) -> alt.Chart:
    """Mean attention at each 2-D offset from the source patch; up is up, left is left.

    ``offsets`` columns: dy, dx, attention (``StrengthStats.offsets``). The centre cell is
    a patch's attention to itself.
    """
    # square cells, the whole map about 240 px wide so it fits a third of a wide page
    step = max(6, min(18, 240 // offsets["dx"].nunique()))
    return (
        alt.Chart(offsets)
        .mark_rect()
        .encode(
            x=alt.X("dx:O", title="dx (patches right of the source)", axis=alt.Axis(labelAngle=0)),
            # ascending: negative dy (rows above the source) on top, as on the image
            y=alt.Y("dy:O", title="dy (patches below the source)", sort="ascending"),
            # below the map: beside it, the legend would take the room a third of the page does not have
            color=alt.Color(
                "attention:Q", scale=alt.Scale(scheme="oranges"),
                legend=alt.Legend(title="mean attention", orient="bottom", format=".3f", gradientLength=200),
            ),
            tooltip=[
                tooltip_field("dy:O", "dy"),
                tooltip_field("dx:O", "dx"),
                tooltip_field("attention:Q", "mean attention", format=".4f"),
            ],
        )
        .properties(
            title=alt.TitleParams("Attention by 2-D offset", subtitle=subtitle),
            width=alt.Step(step),
            height=alt.Step(step),
        )
    )
