"""Pure chart builders: a tidy DataFrame in, an ``alt.Chart`` out. No streamlit here."""

from __future__ import annotations

import altair as alt
import pandas as pd

OVERVIEW_SELECTION = "pick"


def overview_chart(points: pd.DataFrame, focus_id: str | None) -> alt.LayerChart:
    """View A: one dot per image at its 2-D layout position, coloured by class.

    ``points`` columns: x, y, id, name, class (label when known, else prediction),
    predicted, probability (of the predicted class). Dot opacity and size grow with
    the predicted probability, so uncertain images stand out as faint small dots.
    """
    pick = alt.selection_point(name=OVERVIEW_SELECTION, fields=["id"], on="click", clear="dblclick")
    base = alt.Chart(points)
    dots = (
        base.mark_circle(stroke="white", strokeWidth=0.5)
        .encode(
            x=alt.X("x:Q", axis=None),
            y=alt.Y("y:Q", axis=None),
            color=alt.Color("class:N", title="class", legend=alt.Legend(columns=2, symbolLimit=40)),
            size=alt.Size("probability:Q", title="probability", scale=alt.Scale(domain=[0, 1], range=[20, 140])),
            opacity=alt.Opacity("probability:Q", legend=None, scale=alt.Scale(domain=[0, 1], range=[0.35, 1.0])),
            tooltip=[
                alt.Tooltip("id:N"),
                alt.Tooltip("name:N"),
                alt.Tooltip("class:N"),
                alt.Tooltip("predicted:N"),
                alt.Tooltip("probability:Q", format=".3f"),
            ],
        )
        .add_params(pick)
    )
    ring = (
        alt.Chart(points[points["id"] == focus_id])
        .mark_point(shape="circle", size=320, strokeWidth=2.5, color="#d62728", filled=False)
        .encode(x="x:Q", y="y:Q")
    )
    return alt.layer(dots, ring).properties(height=460)


def top5_chart(top: pd.DataFrame) -> alt.Chart:
    """Horizontal bars of the top-k probabilities; ``top`` columns: rank, class, probability."""
    return (
        alt.Chart(top)
        .mark_bar()
        .encode(
            x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
            y=alt.Y("class:N", sort=alt.EncodingSortField("rank"), title=None),
            tooltip=["rank:O", "class:N", alt.Tooltip("probability:Q", format=".4f")],
        )
        .properties(height=alt.Step(22))
    )
