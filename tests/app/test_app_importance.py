"""AppTest of the head importance page (view B), and its pure chart builders."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import pytest
from PIL import Image
from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from core.measures.importance import METRICS, MODE_REMOVES, MODES
from helpers.data import APP
from ui import importance as ui
from viz import importance as charts
from viz.common import HEAD_SELECTION
from viz.importance import pruning_curve_chart

PAGE = "pages/1_Head_Importance.py"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _open(monkeypatch, labelled: bool) -> AppTest:
    """The page on six held-out digits: uploaded one by one (no labels) or as an ImageFolder ZIP (labels)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    images, labels = digit_images(digits_split(0, 0.2).test[:6])
    if labelled:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for i, (image, label) in enumerate(zip(images, labels)):
                archive.writestr(f"{label}/d{i}.png", _png(image))
        at.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
        at.sidebar.get("file_uploader")[0].set_value(("digits.zip", buffer.getvalue(), "application/zip"))
    else:
        at.radio(key="image_source").set_value("Upload images").run()
        at.sidebar.get("file_uploader")[0].set_value([(f"d{i}.png", _png(im), "image/png") for i, im in enumerate(images)])
    at.run()
    at.switch_page(PAGE).run()
    _assert_clean(at)
    return at


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _texts(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.caption, *at.markdown, *at.subheader])


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def _chart(at: AppTest, index: int) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The rendered chart's Vega-Lite spec and its datasets by name."""
    proto = _charts(at)[index].proto
    return json.loads(proto.spec), {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in proto.datasets}


def test_page_clicks_through_metrics_scopes_and_modes(monkeypatch) -> None:
    at = _open(monkeypatch, labelled=False)
    assert at.title[0].value == "Head importance"
    assert at.selectbox(key="importance_metric").options == [m.replace("_", " ") for m in METRICS]
    assert len(_charts(at)) == 5  # line, heatmap, partial pruning, top-5, pruning curve
    assert "agreement with the unpruned model" in _texts(at)  # uploads carry no labels
    for scope in ("Over the set (global)", "Focus image (local)"):
        at.radio(key="importance_scope").set_value(scope).run()
        for metric in METRICS:
            at.selectbox(key="importance_metric").set_value(metric).run()
            _assert_clean(at)
            ranked = at.dataframe[0].value
            assert ranked["rank"].tolist() == list(range(1, 37))  # the demo model: 6 x 6 heads
            if metric in ("probability", "accuracy"):
                assert ranked.iloc[:, 2].is_monotonic_increasing  # a low remaining value = important
            elif metric == "layer_impact":
                assert ranked.iloc[:, 2].is_monotonic_decreasing
            else:
                assert ranked.iloc[:, 2].abs().is_monotonic_decreasing
    for mode in MODES:
        at.radio(key="importance_mode").set_value(mode).run()
        _assert_clean(at)
        assert f"B3 · Top-5 after `{mode}`" in _texts(at) and MODE_REMOVES[mode] in _texts(at)


def test_focus_head_from_the_sidebar_drives_partial_pruning(monkeypatch) -> None:
    at = _open(monkeypatch, labelled=False)
    at.selectbox(key="focus_layer").set_value(4).run()
    at.selectbox(key="focus_head").set_value(2).run()
    _assert_clean(at)
    assert "B2 · Partial pruning of L4H2" in _texts(at)
    at.radio(key="importance_scope").set_value("Focus image (local)").run()
    _assert_clean(at)
    line, line_data = _chart(at, 0)
    ring = line_data[line["layer"][3]["data"]["name"]]
    assert ring[["layer", "head"]].values.tolist() == [[4, 2]]
    heatmap, heatmap_data = _chart(at, 1)
    assert heatmap_data[heatmap["layer"][1]["data"]["name"]][["layer", "head"]].values.tolist() == [[4, 2]]
    # B2's `head` mode on the focus image is B1's local probability of the focus head
    partial, partial_data = _chart(at, 2)
    bars = partial_data[partial["hconcat"][1]["layer"][0]["data"]["name"]].set_index("mode")
    assert bars.loc["head", "probability"] == pytest.approx(float(ring["value"].iloc[0]), abs=1e-5)
    unpruned = line_data[line["layer"][0]["data"]["name"]]["value"].iloc[0]  # the dashed rule
    assert bars.loc["none", "probability"] == pytest.approx(float(unpruned), abs=1e-6)


def test_labelled_set_measures_accuracy(monkeypatch) -> None:
    at = _open(monkeypatch, labelled=True)
    text = _texts(at)
    assert "the accuracy is measured over the 6 images" in text
    assert "agreement" not in text


# --- pure pieces -------------------------------------------------------------------------


def _values(metric: str = "probability") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "metric": metric,
            "value": [0.5, 0.2, 0.6, 0.9],
            "rank": [2, 1, 3, 4],
            "head_label": ["L0H0", "L0H1", "L1H0", "L1H1"],
            "index": [0, 1, 2, 3],
        }
    )


def _data(spec: dict, layer: dict) -> list[dict]:
    return spec["datasets"][layer["data"]["name"]]


def test_line_chart_encodes_heads_along_l_times_h_plus_h_and_rings_the_focus() -> None:
    spec = charts.importance_line_chart(_values(), "probability", 2, (1, 0), baseline=0.7, subtitle="over 4 images").to_dict()
    assert spec["params"][0]["name"] == HEAD_SELECTION
    assert spec["params"][0]["select"]["fields"] == ["layer", "head"]
    rule, line, dots, ring = spec["layer"]
    assert dots["encoding"]["x"]["field"] == "index" and dots["encoding"]["y"]["field"] == "value"
    assert dots["encoding"]["color"]["field"] == "layer"
    assert dots["encoding"]["x"]["axis"]["values"] == [0, 2]  # each layer's head 0
    assert [(r["layer"], r["head"]) for r in _data(spec, ring)] == [(1, 0)]
    assert _data(spec, rule)[0]["value"] == 0.7
    assert {t["field"] for t in dots["encoding"]["tooltip"]} == {"head_label", "value", "rank"}
    assert spec["title"]["text"] == "probability of every head"


def test_heatmap_is_dark_where_heads_matter() -> None:
    low_is_important = charts.importance_heatmap(_values(), "probability", "probability", (0, 1), signed=False).to_dict()
    cells = low_is_important["layer"][0]
    assert (cells["encoding"]["x"]["field"], cells["encoding"]["y"]["field"]) == ("head", "layer")
    assert cells["encoding"]["color"]["scale"]["reverse"] is True
    high_is_important = charts.importance_heatmap(_values("layer_impact"), "layer_impact", "layer impact", (0, 1), signed=False)
    assert high_is_important.to_dict()["layer"][0]["encoding"]["color"]["scale"]["reverse"] is False
    signed = charts.importance_heatmap(_values("taylor"), "taylor", "taylor", (0, 1), signed=True).to_dict()
    assert signed["layer"][0]["encoding"]["color"]["scale"]["domainMid"] == 0
    outline = low_is_important["layer"][1]
    assert [(r["layer"], r["head"]) for r in _data(low_is_important, outline)] == [(0, 1)]


def test_partial_pruning_chart_shows_what_each_mode_removes() -> None:
    partial = pd.DataFrame(
        {
            "mode": list(MODES),
            "removes": [MODE_REMOVES[m] for m in MODES],
            "removed_attention": [0.0, 1.0, 0.4, 0.6, 0.3, 0.1],
            "probability": [0.9, 0.2, 0.5, 0.6, 0.7, 0.88],
            "predicted": ["1"] * 6,
            "top5": [[("1", 0.9)]] * 6,
        }
    )
    spec = charts.partial_pruning_chart(partial, "cls", "1").to_dict()
    glyph, bars, values = spec["hconcat"]
    removed = {(r["mode"], r["block"]) for r in _data(spec, glyph) if r["removed"] == "removed"}
    assert {block for mode, block in removed if mode == "patch"} == {"patch → patch"}
    assert {block for mode, block in removed if mode == "cls_cls"} == {"prefix → prefix"}
    assert {block for mode, block in removed if mode == "cls"} == {"prefix → prefix", "prefix → patch", "patch → prefix"}
    assert {block for mode, block in removed if mode == "cls_patch"} == {"prefix → patch", "patch → prefix"}
    assert len({block for mode, block in removed if mode == "head"}) == 4
    assert not {block for mode, block in removed if mode == "none"}
    bar_layer = bars["layer"][0]
    assert bar_layer["encoding"]["x"]["field"] == "probability" and bar_layer["encoding"]["y"]["sort"] == list(MODES)
    assert [r["mode"] for r in _data(spec, bar_layer) if r["chosen"]] == ["cls"]
    assert bars["layer"][1]["mark"]["type"] == "rule"
    # the values stand in a column of their own, so a bar reaching 1 cannot push its label out of the chart
    assert values["mark"]["type"] == "text" and values["encoding"]["text"]["field"] == "shown"
    assert [r["shown"] for r in _data(spec, values)] == ["0.900", "0.200", "0.500", "0.600", "0.700", "0.880"]
    assert values["encoding"]["x"] == {"value": 4} and values["encoding"]["y"]["sort"] == list(MODES)


def test_pruning_curve_chart_has_one_line_per_order_and_a_dashed_baseline() -> None:
    curve = pd.DataFrame(
        {
            "order": ["probability", "probability", "random", "random"],
            "pruned": [0, 4, 0, 4],
            "fraction": [0, 1, 0, 1],
            "accuracy": [1, 0.1, 1, 0.1],
        }
    )
    spec = pruning_curve_chart(curve, "accuracy").to_dict()
    assert spec["encoding"]["color"]["field"] == "order"
    assert spec["encoding"]["strokeDash"]["field"] == "baseline"
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1] and spec["encoding"]["y"]["title"] == "accuracy"
    assert [r["baseline"] for r in spec["datasets"][spec["data"]["name"]]] == [False, False, True, True]


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([1, 2], "accuracy"),
        ([None, None], "agreement with the unpruned model"),
        ([1, None], "accuracy (agreement where there is no label)"),
    ],
)
def test_target_measure_names_what_accuracy_means(labels, expected: str) -> None:
    from core.inputs.images import ImageSet, SetImage

    image = Image.new("RGB", (8, 8))
    images = ImageSet.from_images("t", [SetImage(f"id{i}", f"n{i}", image, label) for i, label in enumerate(labels)])
    assert ui.target_measure(images) == expected
    from core.study.casestudy import set_labels

    tensor = set_labels(images)
    assert (tensor is None) == (expected.startswith("agreement"))
    if tensor is not None:
        assert tensor.tolist() == [-1 if label is None else label for label in labels]


def test_unpruned_baseline_and_axis_titles() -> None:
    from core.measures.importance import HeadImportance

    unpruned = pd.DataFrame({"image": [0, 1], "target": [3, 4], "probability": [0.8, 0.4], "correct": [True, False]})
    tables = HeadImportance(overall=pd.DataFrame(), per_image=pd.DataFrame(), unpruned=unpruned)
    assert charts.unpruned_value(tables, "probability", None) == pytest.approx(0.6)
    assert charts.unpruned_value(tables, "accuracy", 1) == 0.0 and charts.unpruned_value(tables, "accuracy", None) == 0.5
    assert charts.unpruned_value(tables, "layer_impact", 0) is None and charts.unpruned_value(tables, "taylor", None) is None
    assert charts.metric_title("accuracy", False, "agreement with the unpruned model") == "agreement with the unpruned model"
    assert charts.metric_title("accuracy", True, "accuracy") == "top-1 is the target (1/0)"
    assert charts.metric_title("layer_impact", True, "accuracy") == "layer impact"
