"""No tooltip of any chart, on a page or in the report, has a key vega-tooltip renders as markup.

vega-tooltip (in Streamlit's frontend and in the report's vega-embed) destructures a
tooltip object as ``{title, image, ...rest}``: ``title`` becomes ``<h2>``, ``image``
becomes ``<img src=VALUE>``, a fetch of whatever URL an image's name holds. The keys are
the fields' titles (their names when the title is empty); under Streamlit's theme a mark
with no tooltip channel shows every encoding channel, keyed the same way.

Each chart is checked twice: by walking its ``to_dict()`` (layers, concats, facets), and
by compiling it with the Vega-Lite compiler the report ships (``vl_convert``) and reading
the keys of the tooltip signals it emits, so the walker cannot miss what the compiler makes.
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from core.study.casestudy import findings
from helpers.data import APP, VIEW_PAGES
from helpers.images import encode
from helpers.markdown import HOSTILE_NAME
from helpers.tooltips import assert_no_reserved_key, compiled_tooltip_keys, tooltip_keys
from ui import patterns
from viz.common import tooltip_field
from viz.report import case_charts

URL_NAMES = ["https:host?1.png", "https://host/x.png", HOSTILE_NAME]


def test_the_one_owner_refuses_a_reserved_key() -> None:
    for title in ("image", "title", " Image "):
        with pytest.raises(ValueError, match="rendered as markup"):
            tooltip_field("name:N", title)
    with pytest.raises(ValueError):
        tooltip_field("image:N", "")  # an empty title keys the field by its name
    assert tooltip_field("name:N", "image name").to_dict()["title"] == "image name"


def test_the_checks_see_a_reserved_key() -> None:
    """The walker and the compiler both find an ``image`` key, direct, layered or from the theme."""
    tip = {"field": "name", "type": "nominal", "title": "image"}
    unit = {"data": {"values": [{"name": "https://host/x.png", "v": 1}]}, "mark": "point"}
    layered = {"layer": [{**unit, "encoding": {"x": {"field": "v", "type": "quantitative"}, "tooltip": [tip]}}]}
    themed = {**unit, "encoding": {"x": {"field": "v", "type": "quantitative"}, "y": {**tip, "title": "title"}}}
    assert "image" in set(tooltip_keys(layered, False)) and "image" in compiled_tooltip_keys(layered, False)
    assert "title" in set(tooltip_keys(themed, True)) and "title" in compiled_tooltip_keys(themed, True)
    assert not set(tooltip_keys(themed, False)) and not compiled_tooltip_keys(themed, False)


def test_every_report_chart_keys_its_tooltips_as_text(small_study) -> None:
    charts = case_charts(small_study, findings(small_study))
    keys: set[str] = set()
    for name, chart in charts.items():
        keys |= assert_no_reserved_key(name, chart.to_dict(), streamlit_theme=False)
    assert "image name" in keys  # the partial-pruning dots name their image, as text


def _page_charts(at: AppTest, where: str, seen: dict[str, tuple[dict, bool]]) -> None:
    assert not at.exception, (where, at.exception)
    for i, element in enumerate(at.get("vega_lite_chart")):
        seen[f"{where} #{i}"] = (json.loads(element.proto.spec), element.proto.theme == "streamlit")


def test_every_page_chart_keys_its_tooltips_as_text(monkeypatch) -> None:
    """Every page, on a set whose image names are URLs, with the settings that change which charts show."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)  # PCA at once: the charts are the same
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    images, _ = digit_images(digits_split(0, 0.2).test[:3])
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    at.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(n, encode(im), "image/png") for n, im in zip(URL_NAMES, images)])
    at.run()
    seen: dict[str, tuple[dict, bool]] = {}
    _page_charts(at, "home", seen)
    for page in VIEW_PAGES:
        at.switch_page(page).run()
        _page_charts(at, page, seen)
        if page.endswith("Head_Importance.py"):
            at.radio(key="importance_scope").set_value(at.radio(key="importance_scope").options[1]).run()
            _page_charts(at, f"{page} local", seen)
        if page.endswith("Attention_Patterns.py"):
            at.toggle(key="pattern_scatter").set_value(True).run()
            _page_charts(at, f"{page} scatter", seen)
    assert len(seen) >= 25, sorted(seen)
    themed = [name for name, (_, streamlit_theme) in seen.items() if streamlit_theme]
    assert themed and len(themed) < len(seen)  # the case study draws the report's charts unthemed
    for name, (spec, streamlit_theme) in seen.items():
        assert_no_reserved_key(name, spec, streamlit_theme)
