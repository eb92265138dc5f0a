"""Charts of the explanations: the faithfulness curves of each method against a random order.

No streamlit here: ``pages/5_Explanations.py`` renders these, and the report renders them offline.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

from core.attribution import METHODS, RANDOM_ORDER
from viz.common import tooltip_field

__all__ = ["METHOD_COLOURS", "faithfulness_chart", "mean_curves", "score_title"]

# one fixed colour per method, grey for the random order every method is compared with
METHOD_COLOURS = dict(zip([*METHODS, RANDOM_ORDER], ["#d62728", "#1f77b4", "#ff7f0e", "#8c8c8c"]))
_CURVE_TITLES = {
    "deletion": ("Deletion", "most relevant patches removed first: a faithful map falls fast"),
    "insertion": ("Insertion", "most relevant patches revealed first: a faithful map rises fast"),
}


def score_title(backbone: bool) -> str:
    """What the curves measure: the target probability, or a backbone's output cosine to the unmodified image's."""
    return "cosine to the unmodified output" if backbone else "target probability"


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Each method's curves averaged over the images, with the random order once (its name as the method).

    ``curves``: ``core.attribution.compare_faithfulness`` output. Every method's random
    order is the same per image, so the first method's stands for all of them.
    Columns method, curve, fraction, score.
    """
    keys = ["method", "curve", "fraction"]
    ranked = curves[curves["order"] == "relevance"].groupby(keys, sort=False, as_index=False)["score"].mean()
    first = curves["method"].iloc[0] if len(curves) else None
    random = curves[(curves["order"] == RANDOM_ORDER) & (curves["method"] == first)]
    random = random.groupby(["curve", "fraction"], sort=False, as_index=False)["score"].mean().assign(method=RANDOM_ORDER)
    return pd.concat([ranked, random[keys + ["score"]]], ignore_index=True)


def faithfulness_chart(curves: pd.DataFrame, backbone: bool, images: int, width: int | None = None) -> alt.HConcatChart:
    """Deletion beside insertion: one line per method, the random order dashed in grey.

    ``curves``: ``compare_faithfulness`` output (averaged here over its ``images`` images).
    """
    mean = mean_curves(curves)
    present = [name for name in (*METHODS, RANDOM_ORDER) if name in set(mean["method"])]
    measure = score_title(backbone)
    over = "the image" if images == 1 else f"the mean of {images} images"
    panels = []
    for curve, (title, subtitle) in _CURVE_TITLES.items():
        part = mean[mean["curve"] == curve].assign(baseline=lambda frame: frame["method"] == RANDOM_ORDER)
        chart = (
            alt.Chart(part)
            .mark_line(point=True)
            .encode(
                x=alt.X("fraction:Q", title=f"share of patches {'removed' if curve == 'deletion' else 'revealed'}",
                        axis=alt.Axis(format="%", tickCount=5)),
                y=alt.Y("score:Q", title=f"{measure} ({over})", scale=alt.Scale(domain=[min(0.0, float(mean["score"].min()) if len(mean) else 0.0), 1])),
                color=alt.Color(
                    "method:N", title="map",
                    scale=alt.Scale(domain=present, range=[METHOD_COLOURS[name] for name in present]),
                    legend=alt.Legend(orient="bottom", columns=2, labelLimit=220),
                ),
                strokeDash=alt.StrokeDash("baseline:N", legend=None, scale=alt.Scale(domain=[False, True], range=[[1, 0], [5, 4]])),
                tooltip=[
                    tooltip_field("method:N", "map"),
                    tooltip_field("fraction:Q", "share of patches", format=".0%"),
                    tooltip_field("score:Q", measure, format=".3f"),
                ],
            )
            .properties(title=alt.TitleParams(title, subtitle=subtitle), height=260, **({"width": width} if width else {}))
        )
        panels.append(chart)
    return alt.hconcat(*panels).resolve_scale(color="shared")
