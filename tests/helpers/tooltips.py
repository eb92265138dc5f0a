"""The tooltip keys of a Vega-Lite spec, found twice: by walking it and by compiling it.

vega-tooltip (in Streamlit's frontend and in the report's vega-embed) destructures a
tooltip object as ``{title, image, ...rest}``: ``title`` becomes ``<h2>``, ``image``
becomes ``<img src=VALUE>``. The keys are the fields' titles (their names when the title
is empty); under Streamlit's theme a mark with no tooltip channel shows every encoding
channel, keyed the same way. ``compiled_tooltip_keys`` compiles with the Vega-Lite compiler
the report ships (``vl_convert``), so the walker cannot miss what the compiler makes.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import vl_convert

from viz.common import RESERVED_TOOLTIP_KEYS

# Streamlit's theme (``mark: {tooltip: {content: "encoding"}}`` in its frontend) gives every mark a tooltip
STREAMLIT_THEME_CONFIG = {"mark": {"tooltip": {"content": "encoding"}}}
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


def assert_no_reserved_key(name: str, spec: dict[str, Any], streamlit_theme: bool) -> set[str]:
    """Every tooltip key of ``spec`` (named ``name`` in a failure) is text: the walker sees all the
    compiler makes, and no key is one vega-tooltip renders as markup. Returns the keys."""
    walked = set(tooltip_keys(spec, streamlit_theme))
    compiled = compiled_tooltip_keys(spec, streamlit_theme)
    assert compiled <= walked, (name, compiled - walked)  # the walker sees all the compiler makes
    for key in walked:
        assert key.strip().lower() not in RESERVED_TOOLTIP_KEYS and not key.startswith("<"), (name, key)
    return walked
