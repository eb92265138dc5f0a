"""Altair pieces shared by the dashboard's pages and the HTML report: one look for the same data.

Pure builders (a tidy DataFrame in, an ``alt.Chart`` or an encoding out) and the colours
every view uses. No streamlit here: ``core.report`` renders these charts offline, and the
pages in ``ui/`` add their click selections on top.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from core.importance import HIGHER_MEANS_LESS_IMPORTANT, METRICS, RANDOM_ORDER, HeadImportance

__all__ = [
    "FOCUS_RED",
    "LAYER_COLOURS",
    "ORDER_COLOURS",
    "PATCH_SCHEME",
    "RESERVED_TOOLTIP_KEYS",
    "SIMILARITY_TITLE",
    "curve_column",
    "density_rects",
    "head_index_x",
    "head_line",
    "head_value_tooltip",
    "importance_cells",
    "layer_dots",
    "metric_title",
    "prototype_chart",
    "pruning_curve_chart",
    "tooltip_field",
    "unpruned_rule",
    "unpruned_value",
]

FOCUS_RED = "#d62728"  # the focus image or head on the pages, the top heads in the report
LAYER_COLOURS = "tableau20"  # one distinct hue per layer (up to 20), as the paper's views C1 and D1
ORDER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#8c564b", "#9467bd", "#8c8c8c"]  # one per metric, grey for random
PATCH_SCHEME = "oranges"  # patch-to-patch attention and patch maps
# vega-tooltip (on the pages and in the report) takes two keys out of the table: ``title``
# becomes a heading and ``image`` becomes ``<img src=VALUE>``, a fetch of whatever URL the
# value (say an image's name) holds. No tooltip here may carry either key.
RESERVED_TOOLTIP_KEYS = frozenset({"image", "title"})


def tooltip_field(shorthand: str, title: str, format: str | None = None, **channel: object) -> alt.Tooltip:
    """One tooltip field, shown as ``title: value``; every chart's tooltips are built here.

    Vega-Lite keys a tooltip field by its title, or by the field's own name when the title
    is empty; ``channel`` takes any other ``alt.Tooltip`` argument (``bin``...).

    Raises:
        ValueError: the key would be one vega-tooltip renders as markup (``RESERVED_TOOLTIP_KEYS``).
    """
    key = title or shorthand.split(":")[0]
    if key.strip().lower() in RESERVED_TOOLTIP_KEYS:
        raise ValueError(f"A tooltip field keyed {key!r} is rendered as markup, not text; give it another title.")
    if format is not None:
        channel["format"] = format
    return alt.Tooltip(shorthand, title=title, **channel)


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
    values = tables.unpruned[column].astype(float)
    return float(values.iloc[image] if image is not None else values.mean())


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


SIMILARITY_TITLE = "output similarity (cosine)"  # to the unpruned model's output; short: a long axis title squeezes the plot


def curve_column(curve: pd.DataFrame) -> str:
    """What a pruning curve measures: ``accuracy`` for a classifier, ``similarity`` of the output for a backbone."""
    if "similarity" in curve.columns and bool(curve["accuracy"].isna().all()):
        return "similarity"
    return "accuracy"


def pruning_curve_chart(curve: pd.DataFrame, measure: str, width: int | None = None) -> alt.Chart:
    """Cumulative pruning: ``measure`` as heads are removed least important first, one line per order.

    ``curve``: ``core.importance.pruning_curve`` output; the random order is dashed. A
    classifier's curve is its accuracy, a backbone's the cosine similarity of its output
    to the unpruned output (``curve_column``), titled ``SIMILARITY_TITLE`` whatever
    ``measure`` says. ``width`` in pixels, or ``None`` to let
    the container decide.
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
                axis=alt.Axis(format="%", tickCount=10),
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
        .properties(
            title=alt.TitleParams("Cumulative pruning", subtitle="the metric whose line stays up longest ranks heads best"),
            height=300,
        )
    )
    return chart if width is None else chart.properties(width=width)


def prototype_chart(prototypes: pd.DataFrame, clusters: pd.DataFrame, kind: str) -> alt.FacetChart:
    """Each cluster's decoded prototype map as a small heatmap, titled with its size, head count and peak.

    ``prototypes`` columns: cluster, row, col, value; ``clusters`` columns: cluster, share,
    head_count (``core.patterns.PatternClusters``). Each map is coloured relative to its own
    peak, so its shape shows even when it is faint; the peak itself, in the title, is about
    the share of attention the maps give to patches rather than prefix tokens (the
    autoencoder's inputs are scaled that way). Patch-map prototypes (``kind`` "patch") are
    centred on the source patch (``row``/``col`` are offsets, the source cell outlined);
    CLS-map prototypes are grid positions.
    """
    peaks = prototypes.groupby("cluster")["value"].max()
    titles = {  # "|" breaks the facet header into two lines
        row.cluster: f"C{row.cluster} · {row.share:.0%} of maps|{row.head_count} head{'s' if row.head_count != 1 else ''}"
        f" · peak {peaks[row.cluster]:.2f}"
        for row in clusters.itertuples()
    }
    data = prototypes.assign(
        title=prototypes["cluster"].map(titles),
        relative=prototypes["value"] / prototypes["cluster"].map(peaks).clip(lower=1e-12),
        source=(prototypes["row"] == 0) & (prototypes["col"] == 0) if kind == "patch" else False,
    )
    row_title, col_title = ("dy from source", "dx from source") if kind == "patch" else ("row", "col")
    rows, cols = sorted(data["row"].unique()), sorted(data["col"].unique())
    return (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("col:O", title=col_title, axis=alt.Axis(values=[cols[0], cols[-1]], labelAngle=0, titleFontWeight="normal")),
            y=alt.Y("row:O", title=row_title, axis=alt.Axis(values=[rows[0], rows[-1]], titleFontWeight="normal")),
            color=alt.Color(
                "relative:Q", title="weight / peak", scale=alt.Scale(scheme=PATCH_SCHEME, domain=[0, 1]), legend=alt.Legend(orient="bottom")
            ),
            stroke=alt.condition("datum.source", alt.value("#222222"), alt.value(None)),
            strokeWidth=alt.condition("datum.source", alt.value(1.5), alt.value(0)),
            tooltip=[
                tooltip_field("title:N", "cluster"),
                tooltip_field("row:O", row_title),
                tooltip_field("col:O", col_title),
                tooltip_field("value:Q", "decoded weight", format=".3f"),
            ],
        )
        .properties(width=84, height=84)
        .facet(
            facet=alt.Facet(
                "title:N", title=None, sort=alt.EncodingSortField("cluster"), header=alt.Header(labelExpr="split(datum.value, '|')")
            ),
            columns=3,
            spacing=12,
        )
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


def density_rects(samples: pd.DataFrame, x: alt.X, y: alt.Y, scale: alt.Scale, bins: int) -> alt.Chart:
    """The 2-D positions (columns x, y) as a ``bins`` x ``bins`` histogram: one rect per non-empty cell.

    Binned here, so the chart stays small for any number of samples.
    """
    counts, x_edges, y_edges = np.histogram2d(samples["x"], samples["y"], bins=bins)
    i, j = np.nonzero(counts)
    cells = pd.DataFrame(
        {"x": x_edges[i], "x2": x_edges[i + 1], "y": y_edges[j], "y2": y_edges[j + 1], "maps": counts[i, j].astype(int)}
    )
    return (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=x,
            x2="x2:Q",
            y=y,
            y2="y2:Q",
            color=alt.Color("maps:Q", title="maps per cell", scale=scale, legend=alt.Legend(orient="bottom")),
            tooltip=[tooltip_field("maps:Q", "maps in this cell")],
        )
    )
