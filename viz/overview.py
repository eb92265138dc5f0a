"""View A, the image overview on the home page: the images laid out in 2-D, and the focus image's top-5.

Pure builders: a tidy DataFrame in, an ``alt.Chart`` out. No streamlit here.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from viz.common import FOCUS_RED, tooltip_field

__all__ = ["OVERVIEW_SELECTION", "overview_chart", "top5_chart"]

__all__ = [
    "OVERVIEW_SELECTION",
    "overview_chart",
    "top5_chart",
]

OVERVIEW_SELECTION = "pick"
_ONE_COLOUR = "#4c78a8"  # a backbone's overview when no image has a label: nothing to colour by


def overview_chart(points: pd.DataFrame, focus_id: str | None) -> alt.LayerChart:
    """View A: one dot per image at its 2-D layout position, coloured by class.

    ``points`` columns: x, y, id, name, class (label when known, else prediction),
    and for a classifier predicted, probability (of the predicted class) and wrong
    (prediction differs from a known label). A classifier's dot opacity and size grow
    with the predicted probability, so uncertain images stand out as faint small dots,
    and wrong predictions get a dark ring. A backbone's points (no ``probability``)
    are all one size, coloured by label, or all one colour when no image has a label.
    Scroll to zoom and drag to pan; a click picks the image.
    """
    pick = alt.selection_point(name=OVERVIEW_SELECTION, fields=["id"], on="click", clear="dblclick")
    zoom = alt.selection_interval(bind="scales")
    largest = 140 if len(points) <= 100 else 70
    # below the plot: long ImageNet class names beside it would squeeze the plot away
    legend = alt.Legend(orient="bottom", columns=4, symbolLimit=40, labelLimit=180)
    tooltip = [tooltip_field("id:N", "id"), tooltip_field("name:N", "name")]
    if "probability" in points.columns:
        encoding = dict(
            color=alt.Color("class:N", title="class", legend=legend),
            size=alt.Size(
                "probability:Q",
                title="probability",
                scale=alt.Scale(domain=[0, 1], range=[largest // 3, largest]),
                legend=alt.Legend(orient="bottom"),
            ),
            opacity=alt.Opacity("probability:Q", legend=None, scale=alt.Scale(domain=[0, 1], range=[0.5, 1.0])),
            stroke=alt.condition("datum.wrong", alt.value("#222222"), alt.value("white")),
            strokeWidth=alt.condition("datum.wrong", alt.value(1.5), alt.value(0.5)),
        )
        tooltip += [
            tooltip_field("class:N", "class"),
            tooltip_field("predicted:N", "predicted"),
            tooltip_field("probability:Q", "probability", format=".3f"),
        ]
    else:
        labelled = bool((points["label"] != "").any()) if len(points) else False
        encoding = dict(
            color=alt.Color("class:N", title="label", legend=legend) if labelled else alt.value(_ONE_COLOUR),
            size=alt.value(largest * 2 // 3),
            opacity=alt.value(0.85),
            stroke=alt.value("white"),
            strokeWidth=alt.value(0.5),
        )
        if labelled:
            tooltip.append(tooltip_field("label:N", "label"))
    dots = (
        alt.Chart(points)
        .mark_circle()
        # the layout's coordinates are arbitrary: zero in the domain would squeeze a few images into a corner
        .encode(
            x=alt.X("x:Q", axis=None, scale=alt.Scale(zero=False, padding=24)),
            y=alt.Y("y:Q", axis=None, scale=alt.Scale(zero=False, padding=24)),
            tooltip=tooltip,
            **encoding,
        )
        .add_params(pick, zoom)
    )
    ring = (
        alt.Chart(points[points["id"] == focus_id])
        .mark_point(shape="circle", size=320, strokeWidth=2.5, color=FOCUS_RED, filled=False)
        .encode(x="x:Q", y="y:Q")
    )
    return alt.layer(dots, ring).properties(height=420)


def top5_chart(top: pd.DataFrame) -> alt.Chart:
    """Horizontal bars of the top-k probabilities; ``top`` columns: rank, class, probability."""
    return (
        alt.Chart(top)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=alt.Y("class:N", sort=alt.EncodingSortField("rank"), title=None),
            tooltip=[tooltip_field("rank:O", "rank"), tooltip_field("class:N", "class"), tooltip_field("probability:Q", "probability", format=".4f")],
        )
        .properties(height=alt.Step(22))
    )
