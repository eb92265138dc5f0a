"""View D, attention patterns: the pattern space, cluster prototypes, token links, the attention matrix.

Pure builders: tidy DataFrames in, an ``alt.Chart`` out. ``pattern_space_chart`` draws D1
on the page (``focus``: clickable, zoomable) and in the report (``for_report``).
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from viz.common import (
    CHART_WIDTH,
    FOCUS_RED,
    HEAD_SELECTION,
    LABEL_GAP,
    LAYER_COLOURS,
    PATCH_SCHEME,
    fitted_title,
    tooltip_field,
    top_head_names,
)

__all__ = [
    "CELL_SELECTION",
    "MAX_POINTS",
    "density_rects",
    "histogram_chart",
    "link_chart",
    "matrix_chart",
    "pattern_space_chart",
    "prototype_chart",
    "reconstruction_chart",
]

CELL_SELECTION = "cell"  # the matrix chart's click: fields source, target
MAX_POINTS = 5000  # scatter mode: a browser draws this many dots smoothly
_PREFIX_SCHEME = "blues"
_DENSITY_BINS = 50  # the report's pattern sample is drawn as at most 50 x 50 cells, whatever its size
_MSE_WIDTH = 380  # the reconstruction chart (on a page: its plot, labels and values together)
_VALUE_ROOM = 1.35  # a bar chart's domain up to this many times its longest bar: its value fits beside it


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


def pattern_space_chart(
    samples: pd.DataFrame,
    heads: pd.DataFrame,
    focus: tuple[int, int] | None = None,
    *,
    density: bool = True,
    method: str | None = None,
    for_report: bool = False,
) -> alt.LayerChart:
    """D1: the maps' 2-D positions (a density, or points) and one dot per head, coloured by layer.

    ``samples`` columns: x, y, and layer, head for points (``PatternLayout.samples``);
    ``density`` bins them here, so the chart stays small for any sample size. ``heads``
    columns: layer, head, head_label, x, y, maps, cluster, share (layout heads joined with
    ``PatternClusters.heads``), and rank, top for the report. ``method`` ("umap", "pca")
    titles the axes; without it they are left out.

    ``focus`` (layer, head), on a page: that head is ringed and clicking a head dot selects
    ``(layer, head)`` under ``HEAD_SELECTION``; scroll to zoom, drag to pan. ``for_report``:
    a static chart, light density, the top heads ringed and named in red, a fixed width.
    """
    if method is None:
        x = alt.X("x:Q", axis=None, scale=alt.Scale(zero=False))
        y = alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False))
    else:
        name = method.upper()
        x = alt.X("x:Q", title=f"{name} 1", scale=alt.Scale(zero=False), axis=alt.Axis(labels=False, ticks=False, grid=False))
        y = alt.Y("y:Q", title=f"{name} 2", scale=alt.Scale(zero=False), axis=alt.Axis(labels=False, ticks=False, grid=False))
    if density and for_report:
        # light, so the head dots stand out
        background = density_rects(samples, x, y, alt.Scale(range=["#f0f0f0", "#636363"], type="sqrt"), _DENSITY_BINS)
    elif density:
        background = density_rects(samples, x, y, alt.Scale(scheme="greys", type="sqrt"), bins=60)
    else:
        shown = samples.sample(MAX_POINTS, random_state=0) if len(samples) > MAX_POINTS else samples
        background = (
            alt.Chart(shown[["x", "y", "layer", "head"]])
            .mark_circle(size=8, opacity=0.3)
            .encode(x=x, y=y, color=_layer_colour(), tooltip=[tooltip_field("layer:O", "layer"), tooltip_field("head:O", "head")])
        )
    tooltip = [
        tooltip_field("head_label:N", "head"),
        tooltip_field("cluster:O", "pattern cluster"),
        tooltip_field("share:Q", "its maps in that cluster", format=".0%"),
        tooltip_field("maps:Q", "maps sampled"),
    ]
    if for_report:
        # six a row: beside the density's legend, twelve ran past the 540 px a page squeezes the chart into
        colour = alt.Color("layer:O", scale=alt.Scale(scheme=LAYER_COLOURS), legend=alt.Legend(orient="bottom", columns=6))
        dots = alt.Chart(heads).mark_circle(size=90, opacity=0.95, stroke="white", strokeWidth=1).encode(
            x=x, y=y, color=colour, tooltip=tooltip
        )
    else:
        dots = alt.Chart(heads).mark_circle(size=110, opacity=0.95, stroke="white", strokeWidth=1).encode(
            x=x, y=y, color=_layer_colour(), tooltip=tooltip
        )
        params = [alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)] if focus is not None else []
        dots = dots.add_params(*params, alt.selection_interval(bind="scales"))
    layers: list[alt.Chart] = [background, dots]
    if for_report:
        top = heads[heads["top"]]
        rings = alt.Chart(top).mark_point(shape="circle", size=260, strokeWidth=2, color=FOCUS_RED).encode(x=x, y=y, tooltip=tooltip)
        layers += [rings, *top_head_names(top, x, y)]
        subtitle = "grey: density of the sampled maps · a dot per head at the mean of its maps · top heads in red"
    else:
        subtitle = "one dot per head at the mean of its maps"
    if focus is not None:
        layer, head = focus
        layers.append(
            alt.Chart(heads[(heads["layer"] == layer) & (heads["head"] == head)])
            .mark_point(shape="circle", size=360, strokeWidth=2.5, color=FOCUS_RED, filled=False)
            .encode(x=x, y=y)
        )
        subtitle += f" · focus head L{layer}H{head} ringed"
    chart = alt.layer(*layers)
    if density:
        chart = chart.resolve_scale(color="independent")
    size = {"width": CHART_WIDTH, "height": 400} if for_report else {"height": 460}
    return chart.properties(title=alt.TitleParams("Attention maps by their autoencoder codes", subtitle=subtitle), **size)


def prototype_chart(prototypes: pd.DataFrame, clusters: pd.DataFrame, kind: str) -> alt.FacetChart:
    """Each cluster's decoded prototype map as a small heatmap, titled with its size, head count and peak.

    ``prototypes`` columns: cluster, row, col, value; ``clusters`` columns: cluster, share,
    head_count (``core.measures.patterns.PatternClusters``). Each map is coloured relative to its own
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


def reconstruction_chart(reconstruction_mse: float, baseline_mse: float) -> alt.LayerChart:
    """The autoencoder's reconstruction error beside the error of always answering the mean map."""
    data = pd.DataFrame(
        {"what": ["autoencoder reconstruction", "baseline: the mean map"], "mse": [reconstruction_mse, baseline_mse]}
    )
    y = alt.Y("what:N", title=None, sort=None, axis=alt.Axis(labelLimit=220))
    top = max(reconstruction_mse, baseline_mse, 1e-12)
    bars = (
        alt.Chart(data)
        .mark_bar(height=alt.RelativeBandSize(0.7))
        .encode(
            # room past the longer bar for its value: a page squeezes the plot to about 210 px
            x=alt.X(
                "mse:Q",
                title="mean squared error per pixel",
                scale=alt.Scale(domain=[0, top * _VALUE_ROOM]),
                axis=alt.Axis(labelOverlap="parity", labelSeparation=LABEL_GAP),
            ),
            y=y,
            color=alt.Color("what:N", legend=None, scale=alt.Scale(range=["#fd8d3c", "#bdbdbd"])),
            tooltip=[tooltip_field("what:N", ""), tooltip_field("mse:Q", "MSE", format=".5f")],
        )
    )
    labels = bars.mark_text(align="left", dx=4, fontSize=11).encode(text=alt.Text("mse:Q", format=".4f"), color=alt.value("#333333"))
    return alt.layer(bars, labels).properties(
        title=fitted_title(
            "How well the autoencoder keeps the maps", "lower than the mean map = the codes carry the pattern", _MSE_WIDTH
        ),
        width=_MSE_WIDTH,
        height=alt.Step(28),
    )


def link_chart(links: pd.DataFrame, prefix_names: list[str], num_tokens: int, head_label: str, threshold: float) -> alt.LayerChart:
    """D3: a line from each source token (layer l+1, top) to each target token (layer l, bottom).

    ``links`` columns: source, target, source_name, target_name, weight, prefix
    (``core.measures.patterns.strong_links``). Links with a prefix token at either end use a blue
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
    (``core.measures.patterns.attention_cells``). One diverging scale carries both colours (prefix
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

    ``histogram`` columns: start, end, count (``core.measures.patterns.weight_histogram``). Counts
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
