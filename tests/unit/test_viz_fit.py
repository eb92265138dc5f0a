"""Charts whose text fits: titles, axis labels and values stay inside the chart, on a page and in the report.

The report gives a chart's plot its ``width`` and draws axes, legend and title around it
(Vega's ``pad``). A page (``ui.export.chart``) squeezes plot, axes and legend together into
``width`` (Vega's ``fit``) and sets axis and legend text at 12 px, so what fits in the
report can be cut off there: "…carry the patter", "90%100%", "0.00000397" past the edge.
Each chart is drawn both ways by the Vega the report ships (``vl_convert``), and its text is
measured with Arial's widths (Liberation Sans, what vl_convert draws with), a letter at 0.6 em
(0.66 bold): wider than Streamlit's Source Sans, and than Arial's own letters on average.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest
import vl_convert

from core.measures.importance import MODE_REMOVES, MODES
from viz.common import CHART_WIDTH, LABEL_GAP, compact_number, fitted_title, text_lines
from viz.export import inline_spec
from viz.importance import partial_pruning_chart, pruning_curve_chart
from viz.patterns import pattern_space_chart, reconstruction_chart

# how a page draws a chart: Streamlit's look without its theme (``theme=None``), sized to fit
PAGE = {
    "autosize": {"type": "fit", "contains": "padding"},
    "config": {"axis": {"labelFontSize": 12, "titleFontSize": 12}, "legend": {"labelFontSize": 12, "titleFontSize": 12}},
}
EM_PER_CHAR = 0.6
_EM = {**dict.fromkeys("0123456789e", 0.556), "%": 0.889, ".": 0.278, ",": 0.278, "-": 0.333, " ": 0.278}


def _width(text: str, font_px: float, bold: bool = False) -> float:
    return sum(_EM.get(char, EM_PER_CHAR) for char in text) * font_px * (1.1 if bold else 1)


def _drawn(chart, *, page: bool) -> dict[str, Any]:
    spec = inline_spec(chart)
    if page:
        spec["autosize"] = PAGE["autosize"]
        spec["config"] = {**spec.get("config", {}), **PAGE["config"]}
    return vl_convert.vegalite_to_scenegraph(spec)


def _texts(scene: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every text Vega draws (hidden axis labels left out): its role, its left and right edge in the
    chart, and the left and right edge of the view it belongs to (a plot, a cell of a concat)."""

    def walk(node: dict[str, Any], x: float, role: str, view: tuple[float, float]) -> Iterator[dict[str, Any]]:
        for item in node.get("items", []):
            if node.get("marktype") == "text" and item.get("opacity", 1) > 0:
                lines = item["text"] if isinstance(item["text"], list) else [item["text"]]
                width = max(_width(str(line), item.get("fontSize", 11), item.get("fontWeight") == "bold") for line in lines)
                at = x + item.get("x", 0) + item.get("dx", 0)
                left = {"left": at, "right": at - width}.get(item.get("align", "left"), at - width / 2)
                yield {"role": node.get("role", role), "text": item["text"], "left": left, "right": left + width, "view": view}
            inner, inner_view = x, view
            if node.get("marktype") == "group":
                inner += item.get("x", 0)
                if "width" in item:
                    inner_view = (inner, inner + item["width"])
            yield from walk(item, inner, node.get("role", role), inner_view)

    origin = scene.get("origin", [0, 0])[0]
    yield from walk({"items": [scene["scenegraph"]]}, origin, "", (0, scene["width"]))


def _inside(chart, *, page: bool) -> list[dict[str, Any]]:
    """The chart's texts, after asserting that its titles lie within its drawing and the values it
    writes beside its marks within their plot. (Vega keeps the axis labels and legends inside.)"""
    scene = _drawn(chart, page=page)
    texts = list(_texts(scene))
    titles = [t for t in texts if t["role"] in ("title-text", "title-subtitle")]
    outside = [(t["text"], round(t["left"]), round(t["right"])) for t in titles if t["left"] < -0.5 or t["right"] > scene["width"] + 0.5]
    assert not outside, f"drawn {scene['width']} px wide, these run out: {outside}"
    values = [t for t in texts if t["role"] == "mark"]
    outside = [(t["text"], round(t["right"]), round(t["view"][1])) for t in values if t["left"] < t["view"][0] - 0.5 or t["right"] > t["view"][1] + 0.5]
    assert not outside, f"these values run out of their plot (text's right edge, plot's right edge): {outside}"
    return texts


def _x_labels_apart(texts: list[dict[str, Any]], gap: float) -> list[str]:
    """The bottom axis' labels, after asserting that neighbours stand at least ``gap`` px apart."""
    labels = sorted((t for t in texts if t["role"] == "axis-label" and "%" in str(t["text"])), key=lambda t: t["left"])
    for before, after in zip(labels, labels[1:]):
        assert after["left"] - before["right"] >= gap, f"{before['text']!r} and {after['text']!r} touch"
    return [t["text"] for t in labels]


# --- the shared pieces --------------------------------------------------------------------


def test_text_lines_break_between_words_into_even_lines_that_fit() -> None:
    sentence = "lower than the mean map = the codes carry the pattern"
    lines = text_lines(sentence, 200, 12)
    assert " ".join(lines) == sentence and len(lines) == 2
    assert all(_width(line, 12) <= 200 for line in lines)
    assert lines == ["lower than the mean map =", "the codes carry the pattern"]  # even: no word left alone
    assert text_lines("short", 380, 12) == ["short"]
    assert text_lines("a supercalifragilistic word", 60, 12) == ["a", "supercalifragilistic", "word"]  # never cut


def test_a_fitted_title_is_centred_on_the_whole_chart_in_lines_within_its_width() -> None:
    spec = fitted_title("How well the autoencoder keeps the maps", "lower than the mean map = the codes carry the pattern", 260).to_dict()
    assert spec["anchor"] == "middle" and spec["frame"] == "bounds"
    assert len(spec["text"]) == 2 and all(_width(line, 13, bold=True) <= 260 for line in spec["text"])
    assert len(spec["subtitle"]) == 2 and all(_width(line, 12) <= 260 for line in spec["subtitle"])
    one_line = fitted_title("Partial pruning", "bar: mean", 260).to_dict()
    assert (one_line["text"], one_line["subtitle"]) == ("Partial pruning", "bar: mean")  # a line stays a string


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.0, "0"), (3.97e-6, "3.97e-6"), (3.42e-5, "3.42e-5"), (8.1e-7, "8.1e-7"), (0.0853, "0.0853"), (0.00123, "0.00123"),
     (0.5, "0.5"), (1.0, "1"), (-2.5e-6, "-2.5e-6"), (12345.0, "1.23e4"),
     (1234.5, "1.23e3"), (999.96, "1e3")],
)
def test_compact_numbers_keep_three_digits_in_few_characters(value: float, shown: str) -> None:
    assert compact_number(value) == shown
    assert len(shown) <= 8


# --- B2: partial pruning ------------------------------------------------------------------


def _partial(impacts: list[float], probabilities: list[float] | None = None) -> pd.DataFrame:
    partial = pd.DataFrame(
        {"mode": list(MODES), "removes": [MODE_REMOVES[m] for m in MODES], "removed_attention": [0.0, 1.0, 0.4, 0.6, 0.3, 0.1],
         "output_impact": impacts}
    )
    if probabilities is not None:
        partial = partial.assign(probability=probabilities, predicted=["cat"] * 6)
    return partial


TINY_IMPACTS = [0.0, 3.97e-6, 1.2e-6, 2.5e-6, 8.1e-7, 3.42e-5]  # a backbone's heads change its features this little


def test_partial_pruning_values_are_compact_and_start_at_the_left_of_their_column() -> None:
    spec = partial_pruning_chart(_partial(TINY_IMPACTS), "cls", None).to_dict()
    values = spec["hconcat"][2]
    rows = spec["datasets"][values["data"]["name"]]
    assert values["encoding"]["text"]["field"] == "shown"
    assert [r["shown"] for r in rows] == ["0", "3.97e-6", "1.2e-6", "2.5e-6", "8.1e-7", "3.42e-5"]
    assert values["encoding"]["x"] == {"value": 4}  # not centred in the column, where a long value ran out of it
    assert values["width"] >= 4 + max(_width(r["shown"], 11) for r in rows)
    axis = spec["hconcat"][1]["layer"][0]["encoding"]["x"]["axis"]
    assert axis["format"] == "~g" and axis["labelSeparation"] >= LABEL_GAP  # "0.00 0.02" nearly touched


@pytest.mark.parametrize("page", [True, False], ids=["page", "report"])
@pytest.mark.parametrize(
    "partial",
    [_partial(TINY_IMPACTS), _partial([0.0, 0.2, 0.01, 0.15, 0.003, 0.0004]), _partial(TINY_IMPACTS, [0.9, 0.2, 0.5, 0.6, 0.999, 0.88])],
    ids=["backbone-tiny", "backbone", "classifier"],
)
def test_partial_pruning_values_stay_inside_the_chart(partial: pd.DataFrame, page: bool) -> None:
    target = "cat" if "probability" in partial.columns else None
    texts = _inside(partial_pruning_chart(partial, "cls", target), page=page)
    assert len([t for t in texts if t["role"] == "mark"]) == len(MODES)


# --- the pruning curve ----------------------------------------------------------------------


def _curve(steps: int = 13) -> pd.DataFrame:
    fraction = np.linspace(0, 1, steps)
    return pd.concat(
        [pd.DataFrame({"order": order, "pruned": np.arange(steps), "fraction": fraction, "accuracy": np.nan, "similarity": 1 - fraction * k})
         for order, k in [("layer_impact", 0.5), ("output_impact", 0.6), ("random", 0.9)]]
    )


def test_pruning_curve_axis_drops_labels_that_come_closer_than_a_gap() -> None:
    axis = pruning_curve_chart(_curve(), "accuracy").to_dict()["encoding"]["x"]["axis"]
    assert axis["labelOverlap"] == "parity" and axis["labelSeparation"] >= LABEL_GAP >= 4
    assert axis["tickCount"] == {"expr": "ceil(width / 90)"}  # fewer ticks on a narrower plot


@pytest.mark.parametrize(
    ("width", "page"),
    [(CHART_WIDTH, True), (CHART_WIDTH, False), (380, True), (700, True), (1000, True)],
    ids=["case-study-page", "report", "narrow-page", "page", "wide-page"],
)
def test_pruning_curve_labels_never_touch_and_the_last_is_100_percent(width: int, page: bool) -> None:
    texts = _inside(pruning_curve_chart(_curve(), "accuracy", width=width), page=page)
    labels = _x_labels_apart(texts, gap=4)
    assert labels[0] == "0%" and labels[-1] == "100%"
    assert len(labels) >= (6 if width >= CHART_WIDTH else 3)


# --- the autoencoder's reconstruction ----------------------------------------------------------


@pytest.mark.parametrize("page", [True, False], ids=["page", "report"])
@pytest.mark.parametrize("mse", [(0.0072, 0.0233), (0.0233, 0.0072), (1.2e-5, 3.4e-5)])
def test_reconstruction_title_subtitle_and_values_stay_inside_the_chart(mse: tuple[float, float], page: bool) -> None:
    chart = reconstruction_chart(*mse)
    title = chart.to_dict()["title"]
    assert isinstance(title["subtitle"], list) and title["frame"] == "bounds"
    texts = _inside(chart, page=page)
    assert "the codes carry the pattern" in " ".join(str(line) for t in texts if t["role"] == "title-subtitle" for line in t["text"])
    assert len([t for t in texts if t["role"] == "mark"]) == 2  # both values, the longer bar's inside too


# --- the pattern space in the report ------------------------------------------------------------


def test_report_pattern_space_legends_fit_the_page_width() -> None:
    """Twelve layers in one legend row beside the density's legend ran past the case study's 540 px."""
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"x": rng.normal(size=500), "y": rng.normal(size=500)})
    heads = pd.DataFrame(
        [(layer, head, f"L{layer}H{head}", *rng.normal(size=2), 10, 0, 1.0, 6 * layer + head + 1) for layer in range(12) for head in range(6)],
        columns=["layer", "head", "head_label", "x", "y", "maps", "cluster", "share", "rank"],
    ).assign(top=lambda frame: frame["rank"] <= 5)
    scene = _drawn(pattern_space_chart(samples, heads, method="umap", for_report=True), page=True)
    legend = [t for t in _texts(scene) if t["role"].startswith("legend")]
    assert {"0", "11"} <= {t["text"] for t in legend}
    assert max(t["right"] for t in legend) <= scene["width"], "a legend runs out of the chart"
