"""Charts as files: a PNG and an SVG of any chart the pages show, rendered offline by vl-convert.

The files have vl-convert's plain look (white background, Vega's default fonts), as the
report does, not the page's theme. Every table a chart holds is inlined, so a file
stands alone.
"""

from __future__ import annotations

import threading
from typing import Any

import altair as alt

__all__ = ["PNG_SCALE", "chart_png", "chart_svg", "inline_spec"]

PNG_SCALE = 2  # pixels per CSS pixel: sharp on a slide or a high-density screen

# Altair refuses to inline more than 5,000 rows unless told otherwise, a global switch: the
# lock keeps one conversion's switch from being undone under another's.
_INLINE_LOCK = threading.Lock()


def inline_spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    """The chart's Vega-Lite spec with all its data inline, whatever its row count.

    Every chart here draws a table bounded by the model's shape (the pattern prototypes
    of 6 clusters on a 16x16 grid are 5,766 rows); Altair's global limit is left as it was.
    """
    with _INLINE_LOCK, alt.data_transformers.disable_max_rows():
        spec = chart.to_dict()
    spec.pop("$schema", None)  # a URL nothing needs
    return spec


def chart_svg(chart: alt.TopLevelMixin) -> str:
    """The chart as a standalone SVG document."""
    import vl_convert

    return vl_convert.vegalite_to_svg(inline_spec(chart))


def chart_png(chart: alt.TopLevelMixin, scale: float = PNG_SCALE) -> bytes:
    """The chart as a PNG, ``scale`` pixels per CSS pixel."""
    import vl_convert

    return vl_convert.vegalite_to_png(inline_spec(chart), scale=scale)
