"""Two case studies side by side: the charts of a ``Comparison`` (``core.study.comparison``).

Pure builders: a ``Comparison`` in, an ``alt.Chart`` out; nothing is computed here beyond
picking and labelling its tables. Differences are always B minus A, and every chart says
which side is which: side A is blue and side B orange (``SIDE_COLOURS``), also in the
difference heatmaps, where orange means higher in B. The Compare page and the comparison
report (``viz.compare_report``) draw the same charts; ``comparison_charts`` gives the
report's.
"""

from __future__ import annotations

import json
import textwrap

import altair as alt
import numpy as np
import pandas as pd

from core.measures.importance import HIGHER_MEANS_LESS_IMPORTANT, RANDOM_ORDER
from core.study.comparison import (
    MEASURE_TITLES,
    SIDES,
    TREND_MEASURES,
    Comparison,
    JointPatterns,
)
from viz.common import (
    CHART_WIDTH,
    FOCUS_RED,
    HEAD_SELECTION,
    LAYER_COLOURS,
    PATCH_SCHEME,
    tooltip_field,
    top_head_names,
)
from viz.importance import SIMILARITY_TITLE

__all__ = [
    "PATTERN_SELECTION",
    "SIDE_COLOURS",
    "comparison_charts",
    "curves_chart",
    "difference_heatmap",
    "joint_patterns_chart",
    "prototypes_chart",
    "rank_chart",
    "trends_chart",
]

SIDE_COLOURS = {"A": "#1f77b4", "B": "#ff7f0e"}  # blue and orange: told apart with the common colour blindnesses
PATTERN_SELECTION = "pattern_head"  # the joint pattern space's click: fields side, layer, head
_DIFFERENCE_SCHEME = "blueorange"  # B - A: blue where A is higher, orange where B is, as the sides' colours
_EPSILON = 1e-9  # half the colour domain when every difference is 0, so the heatmap still draws
_LABEL_CHARS = 72  # a side's label wraps at this many characters: about 430 px of 11 px subtitle text
_MOVED = 5  # heads named on the rank chart
_RANK_CHART_SIZE = 400  # the rank chart's plot, pixels a side
_SHAPES = ["circle", "triangle-up"]  # side A, side B in the joint pattern space


# --- shared pieces ---------------------------------------------------------------------


def _wrapped(label: str) -> list[str]:
    """A side's label (``A: model at 224 px on set``) in lines short enough that no chart cuts one."""
    return textwrap.wrap(label, _LABEL_CHARS, subsequent_indent="    ")


def _side_lines(c: Comparison) -> list[str]:
    """Both sides' labels as subtitle lines."""
    return [line for side in c.sides for line in _wrapped(side.label)]


def _legend_labels(c: Comparison) -> list[str]:
    """Each side's label as a legend shows it: its wrapped lines joined by newlines, which ``_side_legend`` splits."""
    return ["\n".join(_wrapped(side.label)) for side in c.sides]


def _labelled(frame: pd.DataFrame, c: Comparison) -> pd.DataFrame:
    """``frame`` with a column ``study``: its side's label as the legends show it."""
    labels = dict(zip(SIDES, _legend_labels(c)))
    return frame.assign(study=frame["side"].map(labels))


def _side_legend() -> alt.Legend:
    """A legend of the two sides' labels (column ``study``), one entry per line and each label on lines of its own."""
    return alt.Legend(
        orient="bottom", direction="vertical", title=None, labelLimit=CHART_WIDTH, labelExpr="split(datum.label, '\\n')"
    )


def _side_colour(c: Comparison) -> alt.Color:
    """Colour by side (column ``study``): A blue, B orange."""
    return alt.Color(
        "study:N", scale=alt.Scale(domain=_legend_labels(c), range=[SIDE_COLOURS[s] for s in SIDES]), legend=_side_legend()
    )


def _a_wider(sizes: tuple[float, float]) -> dict:
    """A's lines (or points) wider than B's, so that where the two coincide A still shows around B."""
    return alt.condition("datum.side == 'A'", alt.value(sizes[0]), alt.value(sizes[1]))


def _checked_patterns(c: Comparison) -> JointPatterns:
    if c.patterns is None:
        raise ValueError("This comparison has no joint pattern space: compare the studies with patterns=True.")
    return c.patterns


# --- per head, when the heads match ------------------------------------------------------

_DIFFERENCE_TOOLTIP = [
    tooltip_field("head_label:N", "head"),
    tooltip_field("a:Q", "A", format=".4~g"),
    tooltip_field("b:Q", "B", format=".4~g"),
    tooltip_field("difference:Q", "B − A", format=".3~g"),
]


def difference_heatmap(
    c: Comparison, measure: str, *, focus: tuple[int, int] | None = None, for_report: bool = False
) -> alt.LayerChart:
    """Layers x heads coloured by B minus A of one measure, on a diverging scale centred on 0.

    The colour domain is symmetric, ``[-m, m]`` with ``m`` the largest absolute difference,
    so equal changes either way look equally strong. On a page (not ``for_report``) a click
    selects ``(layer, head)`` under ``HEAD_SELECTION``; ``focus`` (layer, head) is outlined
    in red.

    Raises:
        ValueError: the heads do not match one to one, or the measure is not one both sides hold.
    """
    if not c.same_heads:
        raise ValueError(c.why_not)
    if measure not in c.measures:
        raise ValueError(f"A and B do not both hold {MEASURE_TITLES.get(measure, measure)}: they share {', '.join(c.measures)}.")
    grid = c.difference_grid(measure)
    largest = float(grid["difference"].abs().max())
    bound = largest if np.isfinite(largest) and largest > 0 else _EPSILON
    title = c.measure_title(measure)
    x = alt.X("head:O", title="head", axis=alt.Axis(labelAngle=0))
    y = alt.Y("layer:O", title="layer")
    cells = (
        alt.Chart(grid)
        .mark_rect()
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "difference:Q",
                title="B − A",
                scale=alt.Scale(scheme=_DIFFERENCE_SCHEME, domain=[-bound, bound], domainMid=0),
                legend=alt.Legend(orient="bottom", gradientLength=160, format=".2~r"),
            ),
            tooltip=_DIFFERENCE_TOOLTIP,
        )
    )
    if not for_report:
        cells = cells.add_params(alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False))
    layers: list[alt.Chart] = [cells]
    if focus is not None:
        layer, head = focus
        layers.append(
            alt.Chart(grid[(grid["layer"] == layer) & (grid["head"] == head)])
            .mark_rect(fill=None, stroke=FOCUS_RED, strokeWidth=3)
            .encode(x=x, y=y)
        )
    key = "orange: higher in B · blue: higher in A" if largest > 0 else "A and B are equal on every head"
    if HIGHER_MEANS_LESS_IMPORTANT.get(measure, False):
        key += " · a lower value is a more important head"
    if not for_report:
        key += " · click to focus"
    step = max(14, min(30, 320 // max(c.a.heads, c.a.layers)))
    return alt.layer(*layers).properties(
        title=alt.TitleParams(f"B − A: {title}", subtitle=[*_side_lines(c), key], anchor="start"),
        width=alt.Step(step),
        height=alt.Step(step),
    )


def rank_chart(c: Comparison, metric: str) -> alt.LayerChart:
    """Each head at (its rank in A, its rank in B) under ``metric``; the diagonal is an unchanged rank.

    The heads whose rank moved most are ringed and named in red.

    Raises:
        ValueError: the two sides hold no matched ranking under ``metric``.
    """
    moves = c.moves[c.moves["metric"] == metric]
    if moves.empty:
        raise ValueError(f"A and B cannot be ranked head by head by {metric.replace('_', ' ')}.")
    n = len(moves)
    axis = alt.Scale(domain=[0, n + 1], nice=False, zero=False)
    x = alt.X("rank_a:Q", title="rank in A (1 = most important)", scale=axis)
    y = alt.Y("rank_b:Q", title="rank in B (1 = most important)", scale=axis)
    label_y = alt.Y("label_y:Q", title="rank in B (1 = most important)", scale=axis)
    tooltip = [
        tooltip_field("head_label:N", "head"),
        tooltip_field("rank_a:Q", "rank in A"),
        tooltip_field("rank_b:Q", "rank in B"),
        tooltip_field("move:Q", "places risen in B", format="+d"),
    ]
    diagonal = (
        alt.Chart(pd.DataFrame({"rank_a": [0, n + 1], "rank_b": [0, n + 1]}))
        .mark_line(color="#999999", strokeDash=[5, 4])
        .encode(x=x, y=y)
    )
    dots = (
        alt.Chart(moves)
        .mark_circle(size=max(20, min(70, 2400 // n)), opacity=0.9)
        .encode(
            x=x, y=y,
            color=alt.Color("layer:O", scale=alt.Scale(scheme=LAYER_COLOURS), legend=alt.Legend(orient="right")),
            tooltip=tooltip,
        )
    )
    moved = moves[moves["move"] != 0].head(_MOVED)
    rings = alt.Chart(moved).mark_point(shape="circle", size=220, strokeWidth=2, color=FOCUS_RED).encode(x=x, y=y, tooltip=tooltip)
    agreement = c.agreement[c.agreement["metric"] == metric]
    key = "dashed: the same rank on both sides · below it: more important in B · red: the heads that moved most"
    lines = [*_side_lines(c), key]
    if len(agreement):
        row = agreement.iloc[0]
        lines.insert(0, f"Spearman {row['spearman']:.2f} · Kendall {row['kendall']:.2f} over {n} heads")
    return alt.layer(diagonal, dots, rings, *_moved_names(moved, n, x, label_y)).properties(
        title=alt.TitleParams(f"Rank by {metric.replace('_', ' ')}: A against B", subtitle=lines, anchor="start"),
        width=_RANK_CHART_SIZE,
        height=_RANK_CHART_SIZE,
    )


def _moved_names(moved: pd.DataFrame, n: int, x: alt.X, label_y: alt.Y) -> list[alt.Chart]:
    """Red names of the heads that moved most, pointing away from the diagonal.

    A rising head (below the diagonal) is named to its right, a dropping one to its left,
    so names stay off the crowded diagonal. On each side, names that would overlap are
    pushed up one by one until a line of text apart; ``label_y`` is the rank axis on the
    field ``label_y`` that says where.
    """
    gap = 13 * (n + 1) / _RANK_CHART_SIZE  # 13 px in ranks
    placed = []
    for _, part in moved.groupby(moved["move"] > 0):
        part = part.sort_values("rank_b")
        levels = []
        for rank in part["rank_b"]:
            levels.append(max(float(rank), levels[-1] + gap) if levels else float(rank))
        placed.append(part.assign(label_y=levels))
    names = pd.concat(placed, ignore_index=True) if placed else moved.assign(label_y=moved["rank_b"])
    at = {"x": x, "y": label_y, "text": "head_label:N"}
    looks = [dict(color="white", stroke="white", strokeWidth=3), dict(color=FOCUS_RED)]  # a halo, then the name
    return [
        alt.Chart(names[(names["move"] > 0) == rising])
        .mark_text(fontWeight="bold", fontSize=11, baseline="middle", align=align, dx=dx, **look)
        .encode(**at)
        for look in looks
        for rising, align, dx in ((True, "left", 9), (False, "right", -9))
    ]


# --- any two models -------------------------------------------------------------------


def _curve_order(c: Comparison, side: str, order: str) -> str:
    """``order`` when the side's curve was pruned by it, else the side's own ranking metric."""
    held = set(c.curves.loc[c.curves["side"] == side, "order"])
    return order if order in held else c.top[side].metric


def curves_chart(c: Comparison, order: str | None = None) -> alt.Chart:
    """Both pruning curves: accuracy (or the output's similarity) as heads are pruned, least important first.

    ``order`` is the metric the heads were pruned by (default the comparison's metric; a side
    whose curve lacks it shows its own ranking metric). Colour is the side; each side's
    random order is dashed.
    """
    wanted = order or c.metric
    orders = {side: _curve_order(c, side, wanted) for side in SIDES}
    rows = pd.concat(
        [c.curves[(c.curves["side"] == side) & c.curves["order"].isin([orders[side], RANDOM_ORDER])] for side in SIDES],
        ignore_index=True,
    )
    rows = _labelled(rows, c).assign(random=rows["order"] == RANDOM_ORDER)
    quantity = str(c.curves["quantity"].iloc[0]) if len(c.curves) else "accuracy"
    y_title = SIMILARITY_TITLE if quantity == "similarity" else "accuracy"
    low = min(0.0, float(rows["value"].min())) if rows["value"].notna().any() else 0.0
    by = orders["A"].replace("_", " ")
    if orders["A"] != orders["B"]:
        by = f"{by} in A and {orders['B'].replace('_', ' ')} in B"
    return (
        alt.Chart(rows)
        .mark_line(point=True)
        .encode(
            x=alt.X("fraction:Q", title="share of all heads pruned (least important first)", axis=alt.Axis(format="%", tickCount=10)),
            y=alt.Y("value:Q", title=y_title, scale=alt.Scale(domain=[low, 1])),
            color=_side_colour(c),
            strokeWidth=_a_wider((3.5, 2)),
            strokeDash=alt.StrokeDash("random:N", legend=None, scale=alt.Scale(domain=[False, True], range=[[1, 0], [5, 4]])),
            tooltip=[
                tooltip_field("side:N", "side"),
                tooltip_field("order:N", "order by"),
                tooltip_field("pruned:Q", "heads pruned"),
                tooltip_field("fraction:Q", "share pruned", format=".0%"),
                tooltip_field("value:Q", y_title, format=".3f"),
            ],
        )
        .properties(
            title=alt.TitleParams(
                "Cumulative pruning, A and B",
                subtitle=[*_side_lines(c), f"solid: heads pruned by {by} · dashed: in a random order"],
                anchor="start",
            ),
            width=CHART_WIDTH,
            height=280,
        )
    )


def trends_chart(c: Comparison) -> alt.FacetChart:
    """Per-layer means of ``TREND_MEASURES`` against depth (layer / (L - 1)), one small panel each, A and B in colour.

    Depth as a fraction of the network lines up models of different depths: 0 is the first
    layer, 1 the last. A measure a side's bundle lacks leaves that side out of its panel.
    """
    titles = [c.measure_title(m) for m in TREND_MEASURES]
    data = _labelled(c.trends.dropna(subset=["value"]), c)
    data = data.assign(title=data["measure"].map(c.measure_title))
    base = alt.Chart().encode(
        x=alt.X("depth:Q", title="depth (layer / last layer)", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format=".1f")),
        y=alt.Y("value:Q", title=None, scale=alt.Scale(zero=False)),
        color=_side_colour(c),
        tooltip=[
            tooltip_field("side:N", "side"),
            tooltip_field("layer:Q", "layer"),
            tooltip_field("depth:Q", "depth", format=".2f"),
            tooltip_field("title:N", "measure"),
            tooltip_field("value:Q", "layer mean", format=".4~g"),
        ],
    )
    return (
        alt.layer(
            base.mark_line().encode(strokeWidth=_a_wider((3.5, 2))),
            base.mark_point(filled=True).encode(size=_a_wider((70, 25))),
            data=data,
        )
        .properties(width=230, height=140)
        .facet(facet=alt.Facet("title:N", sort=titles, title=None), columns=2, spacing=16)
        .resolve_scale(y="independent")
        .properties(
            title=alt.TitleParams(
                "Per-layer means against depth",
                subtitle=[
                    *_side_lines(c), "a point per layer: the mean over its heads · depth 0 = the first layer, 1 = the last"
                ],
                anchor="start",
            )
        )
    )


# --- patterns across both ------------------------------------------------------------------


def _nearest(patterns: JointPatterns) -> pd.DataFrame:
    """Per head (side, layer, head): its nearest heads of the other side, as text (``L3H1, L5H0``)."""
    table = patterns.neighbours.sort_values(["side", "layer", "head", "rank"])
    return table.groupby(["side", "layer", "head"], as_index=False).agg(nearest=("other_label", ", ".join))


def joint_patterns_chart(c: Comparison, *, focus: tuple[str, int, int] | None = None) -> alt.LayerChart:
    """Both studies' heads in one pattern space: A as circles, B as triangles, coloured by joint cluster.

    A click selects ``(side, layer, head)`` under ``PATTERN_SELECTION``. ``focus`` (side,
    layer, head) is ringed in red, its nearest heads of the other side ringed dashed and named.

    Raises:
        ValueError: the comparison has no joint pattern space.
    """
    patterns = _checked_patterns(c)
    heads = _labelled(patterns.heads, c).merge(_nearest(patterns), on=["side", "layer", "head"], how="left")
    heads = heads.assign(cluster_name="C" + heads["cluster"].astype(str))
    clusters = [f"C{k}" for k in sorted(heads["cluster"].unique())]
    name = patterns.method.upper()
    room = alt.Scale(zero=False, padding=12)  # the marks at the edges stay inside the frame
    x = alt.X("x:Q", title=f"{name} 1", scale=room, axis=alt.Axis(labels=False, ticks=False, grid=False))
    y = alt.Y("y:Q", title=f"{name} 2", scale=room, axis=alt.Axis(labels=False, ticks=False, grid=False))
    dots = (
        alt.Chart(heads)
        .mark_point(filled=True, size=90, opacity=0.85)
        .encode(
            x=x, y=y,
            shape=alt.Shape("study:N", scale=alt.Scale(domain=_legend_labels(c), range=_SHAPES), legend=_side_legend()),
            # dark2 has no red: red rings the focus head
            color=alt.Color("cluster_name:N", title="joint cluster", sort=clusters, scale=alt.Scale(scheme="dark2")),
            tooltip=[
                tooltip_field("side:N", "side"),
                tooltip_field("head_label:N", "head"),
                tooltip_field("cluster_name:N", "joint cluster"),
                tooltip_field("nearest:N", "nearest heads of the other side"),
            ],
        )
        .add_params(alt.selection_point(name=PATTERN_SELECTION, fields=["side", "layer", "head"], on="click", clear=False))
        .properties(name="joint_heads")  # a fixed view name: the spec is the same each time it is built
    )
    layers: list[alt.Chart] = [dots]
    notes = [*_side_lines(c), "a mark per head at its mean offset map's code · colour: joint cluster · click a head"]
    if focus is not None:
        layers += _focus_rings(heads, patterns, focus, x, y)
        side, layer, head = focus
        notes.append(f"red: {side}'s L{layer}H{head} · dashed: its nearest heads of the other side")
    return alt.layer(*layers).properties(
        title=alt.TitleParams("Both studies' heads in one pattern space", subtitle=notes, anchor="start"),
        width=CHART_WIDTH,
        height=400,
    )


def _focus_rings(heads: pd.DataFrame, patterns: JointPatterns, focus: tuple[str, int, int], x: alt.X, y: alt.Y) -> list[alt.Chart]:
    """The focus head ringed in red, and its nearest heads of the other side ringed dashed and named by rank."""
    side, layer, head = focus
    picked = heads[(heads["side"] == side) & (heads["layer"] == layer) & (heads["head"] == head)]
    table = patterns.neighbours
    near = table[(table["side"] == side) & (table["layer"] == layer) & (table["head"] == head)]
    other = heads[heads["side"] != side].merge(
        near[["other_layer", "other_head", "rank"]].rename(columns={"other_layer": "layer", "other_head": "head"}),
        on=["layer", "head"],
    )
    ring = alt.Chart(picked).mark_point(shape="circle", size=420, strokeWidth=2.5, color=FOCUS_RED, filled=False)
    dashed = alt.Chart(other).mark_point(shape="circle", size=320, strokeWidth=2, strokeDash=[3, 2], color=FOCUS_RED, filled=False)
    return [ring.encode(x=x, y=y), dashed.encode(x=x, y=y), *top_head_names(other, x, y)]


def prototypes_chart(c: Comparison) -> alt.FacetChart:
    """Each joint cluster's decoded prototype as a small heatmap, titled with how many heads of A and B it holds.

    Rows and columns are offsets (dy, dx) from the query patch, which is outlined; each map
    is coloured relative to its own peak, so its shape shows even when it is faint.

    Raises:
        ValueError: the comparison has no joint pattern space.
    """
    patterns = _checked_patterns(c)
    # thousands of cells (6 clusters of 31 x 31 offsets): 4 digits each, the rest worked out by Vega
    data = patterns.prototypes[["cluster", "row", "col"]].assign(
        value=[float(f"{value:.4g}") for value in patterns.prototypes["value"]]
    )
    titles = {  # each header's two lines, built from counts only
        str(int(row.cluster)): [
            f"C{int(row.cluster)}{' · on both' if row.shared else ''}", f"A: {int(row.heads_a)} · B: {int(row.heads_b)} heads"
        ]
        for row in patterns.clusters.itertuples()
    }
    rows, cols = sorted(data["row"].unique()), sorted(data["col"].unique())
    return (
        alt.Chart(data)
        .transform_joinaggregate(peak="max(value)", groupby=["cluster"])
        .transform_calculate(relative="datum.value / max(datum.peak, 1e-12)", source="datum.row == 0 && datum.col == 0")
        .mark_rect()
        .encode(
            x=alt.X("col:O", title="dx", axis=alt.Axis(values=[cols[0], cols[-1]], labelAngle=0, titleFontWeight="normal")),
            y=alt.Y("row:O", title="dy", axis=alt.Axis(values=[rows[0], rows[-1]], titleFontWeight="normal")),
            color=alt.Color(
                "relative:Q", title="weight / peak", scale=alt.Scale(scheme=PATCH_SCHEME, domain=[0, 1]),
                legend=alt.Legend(orient="bottom"),
            ),
            stroke=alt.condition("datum.source", alt.value("#222222"), alt.value(None)),
            strokeWidth=alt.condition("datum.source", alt.value(1.5), alt.value(0)),
            tooltip=[
                tooltip_field("cluster:O", "joint cluster"),
                tooltip_field("row:O", "dy"),
                tooltip_field("col:O", "dx"),
                tooltip_field("value:Q", "decoded weight", format=".3f"),
            ],
        )
        .properties(width=84, height=84)
        .facet(
            facet=alt.Facet(
                "cluster:O", title=None, header=alt.Header(labelExpr=f"{json.dumps(titles, ensure_ascii=False)}[datum.value]")
            ),
            columns=4 if len(titles) % 4 == 0 else 3,  # full rows where it can: an empty cell still draws its axis
            spacing=12,
        )
        .properties(
            title=alt.TitleParams(
                "What each joint cluster's heads look at",
                subtitle=[*_side_lines(c), "the decoded centre of each cluster's mean offset maps · outlined: the query patch"],
                anchor="start",
            )
        )
    )


# --- the report's charts --------------------------------------------------------------------


def comparison_charts(c: Comparison) -> dict[str, alt.TopLevelMixin]:
    """The charts of the comparison report, by key, in its order.

    Keys: ``trends``, ``curves``; when the heads match, ``difference-<measure>`` for each
    measure both hold and ``ranks`` when both rank heads by the comparison's metric;
    ``patterns`` and ``prototypes`` when the joint pattern space was computed.
    """
    charts: dict[str, alt.TopLevelMixin] = {"trends": trends_chart(c), "curves": curves_chart(c)}
    if c.same_heads:
        for measure in c.measures:
            charts[f"difference-{measure}"] = difference_heatmap(c, measure, for_report=True)
        if c.metric in set(c.agreement["metric"]):
            charts["ranks"] = rank_chart(c, c.metric)
    if c.patterns is not None:
        charts["patterns"] = joint_patterns_chart(c)
        charts["prototypes"] = prototypes_chart(c)
    return charts
