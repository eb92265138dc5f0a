"""Charts of the explanations: the faithfulness curves of each method against a random order.

No streamlit here: ``pages/5_Explanations.py`` renders these, and the report renders them offline.
"""

from __future__ import annotations

import base64

import altair as alt
import numpy as np
import pandas as pd

from core.measures.attribution import METHODS, RANDOM_ORDER
from viz.common import tooltip_field

__all__ = ["METHOD_COLOURS", "TINT_PERCENTILE", "faithfulness_chart", "mean_curves", "relevance_grid_chart", "score_title", "tint_scale"]

# A map's colour saturates at this percentile of its patches (a value some patch has): one
# outlier patch (DINOv2-S's rollout has a few) would otherwise leave every other patch blank.
TINT_PERCENTILE = 98
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

    ``curves``: ``core.measures.attribution.compare_faithfulness`` output. Every method's random
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


def relevance_grid_chart(
    entries: list[tuple[str, dict[str, np.ndarray], bytes | None]], width: int = 110
) -> alt.VConcatChart:
    """Relevance maps as heatmaps: one row per ``(title, maps, thumbnail)`` entry, the image first, then one map per method.

    ``maps``: method to ``[rows, cols]``; ``thumbnail``: PNG bytes of the image (or
    ``None``). Each map is shown from its least relevant patch (0) to its
    ``TINT_PERCENTILE``th percentile (1), so one outlier patch does not leave the rest
    blank; the tooltip gives the raw value.
    """
    rows_of_charts = []
    for title, maps, thumbnail in entries:
        cells: list[alt.Chart] = []
        if thumbnail is not None:
            url = "data:image/png;base64," + base64.b64encode(thumbnail).decode("ascii")
            cells.append(
                alt.Chart(pd.DataFrame({"url": [url], "x": [0.5], "y": [0.5]}))
                .mark_image(width=width, height=width)
                .encode(
                    x=alt.X("x:Q", axis=None, scale=alt.Scale(domain=[0, 1])),
                    y=alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[0, 1])),
                    url="url:N",
                )
                .properties(width=width, height=width, title=alt.TitleParams("the image, uncropped", fontSize=11, anchor="start"))
            )
        for method in (m for m in METHODS if m in maps):
            cells.append(_map_cell(maps[method], method, width))
        # the row's own title, so a long image name never widens the first column
        rows_of_charts.append(
            alt.hconcat(*cells, spacing=8).properties(title=alt.TitleParams(title, fontSize=12, anchor="start", limit=4 * width))
        )
    return alt.vconcat(*rows_of_charts, spacing=12).properties(
        title=alt.TitleParams(
            "Where the model looked",
            subtitle=f"the image, then each map: brighter = more relevant, up to the map's {TINT_PERCENTILE}th percentile",
        )
    )


def tint_scale(values: np.ndarray) -> np.ndarray:
    """``values`` scaled to [0, 1]: 0 at the least relevant patch, 1 from the ``TINT_PERCENTILE``th percentile up.

    The percentile is a value some patch has; a flat map is all 0.
    """
    low, top = float(values.min()), float(np.percentile(values, TINT_PERCENTILE, method="lower"))
    return np.clip((values - low) / (top - low), 0, 1) if top > low else np.zeros_like(values, dtype=float)


def _map_cell(values: np.ndarray, method: str, width: int) -> alt.Chart:
    rows, cols = values.shape
    shown = tint_scale(values)
    r, c = np.divmod(np.arange(rows * cols), cols)
    data = pd.DataFrame({
        "method": method, "row": r + 1, "col": c + 1,
        "value": values.reshape(-1).astype(float), "shown": shown.reshape(-1).astype(float),
    })
    return (
        alt.Chart(data)
        .mark_rect()
        .encode(
            x=alt.X("col:O", axis=None),
            y=alt.Y("row:O", axis=None),
            color=alt.Color("shown:Q", scale=alt.Scale(scheme="oranges", domain=[0, 1]), legend=None),
            tooltip=[
                tooltip_field("method:N", "map"), tooltip_field("row:O", "row"), tooltip_field("col:O", "column"),
                tooltip_field("value:Q", "relevance", format=".4f"),
            ],
        )
        .properties(width=width, height=width, title=alt.TitleParams(method, fontSize=11, anchor="start"))
    )
