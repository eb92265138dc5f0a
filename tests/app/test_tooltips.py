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
import re
from typing import Any, Iterator

import pytest
import vl_convert
from conftest import ROOT
from streamlit.testing.v1 import AppTest
from test_images import encode
from test_markdown import HOSTILE_NAME

from core.study.casestudy import findings
from core.inputs.digits import digit_images, digits_split
from ui import patterns
from viz.common import RESERVED_TOOLTIP_KEYS, tooltip_field
from viz.report import case_charts

APP = str(ROOT / "streamlit_app.py")
PAGES = [f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("[0-9]*_*.py"))]
# Streamlit's theme (``mark: {tooltip: {content: "encoding"}}`` in its frontend) gives every mark a tooltip
STREAMLIT_THEME_CONFIG = {"mark": {"tooltip": {"content": "encoding"}}}
URL_NAMES = ["https:host?1.png", "https://host/x.png", HOSTILE_NAME]
_COMPOSITES = ("layer", "hconcat", "vconcat", "concat")
_SIGNAL_KEY = re.compile(r'(?:^\{|, )"((?:[^"\\]|\\.)*)": ')


def _field_key(definition: dict[str, Any]) -> str | None:
    """A channel definition's tooltip key as Vega-Lite forms it: the title, else a default from the field."""
    if "condition" in definition and "field" not in definition:
        definition = definition["condition"] if isinstance(definition["condition"], dict) else {}
    title = definition.get("title")
    if title:
        return ", ".join(title) if isinstance(title, list) else str(title)
    if definition.get("aggregate") == "count":
        return "Count of Records"
    if "field" in definition:
        field = str(definition["field"])
        if definition.get("aggregate"):
            return f"{str(definition['aggregate']).capitalize()} of {field}"
        return f"{field} (binned)" if definition.get("bin") else field
    if "datum" in definition:
        return str(definition["datum"])
    return None  # a constant value: no key


def tooltip_keys(spec: dict[str, Any], streamlit_theme: bool, inherited: dict | None = None) -> Iterator[str]:
    """Every tooltip key of a Vega-Lite spec and its sub-specs; encodings pass down to layers."""
    encoding = {**(inherited or {}), **spec.get("encoding", {})}
    for composite in _COMPOSITES:
        for child in spec.get(composite, []):
            yield from tooltip_keys(child, streamlit_theme, encoding if composite == "layer" else None)
    if isinstance(spec.get("spec"), dict):  # facet and repeat
        yield from tooltip_keys(spec["spec"], streamlit_theme, encoding)
    if "mark" not in spec:
        return
    mark = spec["mark"] if isinstance(spec["mark"], dict) else {"type": spec["mark"]}
    if "tooltip" in encoding:
        channels = encoding["tooltip"]
        for definition in channels if isinstance(channels, list) else [channels] if channels else []:
            if (key := _field_key(definition)) is not None:
                yield key
        return
    shows = mark.get("tooltip", {"content": "encoding"} if streamlit_theme else None)
    if shows is True or (isinstance(shows, dict) and shows.get("content") == "encoding"):
        for definition in encoding.values():
            if isinstance(definition, dict) and (key := _field_key(definition)) is not None:
                yield key
    elif isinstance(shows, dict) and shows.get("content") == "data":
        yield "<every data column>"  # keys from the data itself: never allowed
    elif isinstance(shows, dict) and "signal" in shows:
        yield "<a tooltip signal>"


def compiled_tooltip_keys(spec: dict[str, Any], streamlit_theme: bool) -> set[str]:
    """The keys of every tooltip object in the Vega spec that Vega-Lite compiles ``spec`` to."""
    if streamlit_theme:
        spec = {**spec, "config": {**STREAMLIT_THEME_CONFIG, **spec.get("config", {})}}
    keys: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            tooltip = node.get("tooltip")
            if isinstance(tooltip, dict) and isinstance(tooltip.get("signal"), str):
                keys.update(json.loads(f'"{key}"') for key in _SIGNAL_KEY.findall(tooltip["signal"]))
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(vl_convert.vegalite_to_vega(spec))
    return keys


def _assert_no_reserved_key(name: str, spec: dict[str, Any], streamlit_theme: bool) -> set[str]:
    walked = set(tooltip_keys(spec, streamlit_theme))
    compiled = compiled_tooltip_keys(spec, streamlit_theme)
    assert compiled <= walked, (name, compiled - walked)  # the walker sees all the compiler makes
    for key in walked:
        assert key.strip().lower() not in RESERVED_TOOLTIP_KEYS and not key.startswith("<"), (name, key)
    return walked


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
        keys |= _assert_no_reserved_key(name, chart.to_dict(), streamlit_theme=False)
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
    for page in PAGES:
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
        _assert_no_reserved_key(name, spec, streamlit_theme)
