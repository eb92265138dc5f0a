"""What every chart shares: the colours, the head-picking selection, tooltips, top-head names,
titles wrapped to a chart's width and short numbers.

No streamlit here: the pages in ``ui/`` and ``pages/`` render these charts and read their
selections, and ``viz.report`` renders them offline.
"""

from __future__ import annotations

import math
import textwrap

import altair as alt
import pandas as pd

__all__ = [
    "CHART_WIDTH",
    "FOCUS_RED",
    "HEAD_SELECTION",
    "LABEL_GAP",
    "LAYER_COLOURS",
    "PATCH_SCHEME",
    "RESERVED_TOOLTIP_KEYS",
    "compact_number",
    "fitted_title",
    "text_lines",
    "tooltip_field",
    "top_head_names",
]

FOCUS_RED = "#d62728"  # the focus image or head on the pages, the top heads in the report
LAYER_COLOURS = "tableau20"  # one distinct hue per layer (up to 20), as the paper's views C1 and D1
PATCH_SCHEME = "oranges"  # patch-to-patch attention and patch maps
HEAD_SELECTION = "head"  # every chart where a click picks a head: fields layer, head
# px between neighbouring axis labels; with an axis' ``labelOverlap``, Vega hides labels that come
# closer (its default, 0, lets "90%" and "100%" touch)
LABEL_GAP = 6
CHART_WIDTH = 540  # the report's plot area; with axes and legends a chart stays within about 600 px
# vega-tooltip (on the pages and in the report) takes two keys out of the table: ``title``
# becomes a heading and ``image`` becomes ``<img src=VALUE>``, a fetch of whatever URL the
# value (say an image's name) holds. No tooltip here may carry either key.
RESERVED_TOOLTIP_KEYS = frozenset({"image", "title"})
# Vega's default title (13 px bold) and subtitle (12 px): the widest of the fonts a browser picks
# for "sans-serif" (DejaVu Sans) averages about 0.6 of the font size per character of an English
# sentence, bold a little more.
_EM_PER_CHAR = {False: 0.6, True: 0.66}
_TITLE_PX, _SUBTITLE_PX = 13, 12


def tooltip_field(shorthand: str, title: str, format: str | None = None, **channel: object) -> alt.Tooltip:
    """One tooltip field, shown as ``title: value``; every chart's tooltips are built here.

    Vega-Lite keys a tooltip field by its title, or by the field's own name when the title
    is empty; ``channel`` takes any other ``alt.Tooltip`` argument (``bin``...).

    Raises:
        ValueError: the key would be one vega-tooltip renders as markup (``RESERVED_TOOLTIP_KEYS``).
    """
    key = title or shorthand.split(":")[0]
    if key.strip().lower() in RESERVED_TOOLTIP_KEYS:
        raise ValueError(f"A tooltip field keyed {key!r} is rendered as markup, not text; give it another title.")
    if format is not None:
        channel["format"] = format
    return alt.Tooltip(shorthand, title=title, **channel)


def top_head_names(top: pd.DataFrame, x: alt.X, y: alt.Y) -> list[alt.Chart]:
    """Red names of the top heads (columns head_label, rank) above or below their marks, alternating by rank."""
    sides = [dict(dy=-15), dict(dy=17)]  # above for odd ranks, below for even ones
    # a white halo under each name keeps it legible over dots and dark cells
    looks = [dict(color="white", stroke="white", strokeWidth=3), dict(color=FOCUS_RED)]
    return [
        alt.Chart(top[(top["rank"] - 1) % len(sides) == i])
        .mark_text(fontWeight="bold", fontSize=11, baseline="middle", **side, **look)
        .encode(x=x, y=y, text="head_label:N")
        for look in looks
        for i, side in enumerate(sides)
    ]


def text_lines(text: str, width_px: float, font_px: float, *, bold: bool = False) -> list[str]:
    """``text`` broken between words into lines of at most ``width_px`` in Vega's default font.

    The lines are as even as their number allows (no last word alone on a line); a word
    longer than a line stands alone on its line rather than being cut.
    """
    def wrap(chars: int) -> list[str]:
        return textwrap.wrap(text, chars, break_long_words=False, break_on_hyphens=False) or [text]

    widest = max(1, math.floor(width_px / (font_px * _EM_PER_CHAR[bold])))
    count = len(wrap(widest))
    return next(wrap(chars) for chars in range(1, widest + 1) if len(wrap(chars)) <= count)


def fitted_title(text: str, subtitle: str | None, width_px: int) -> alt.TitleParams:
    """A chart's title and subtitle as lines no wider than ``width_px``, centred on the whole chart.

    ``width_px`` is the chart's ``width``. The report gives the plot that width and draws the axes
    and legend beside it; a page (Streamlit's ``fit``) squeezes plot, axes and legend into it. Centred
    on the chart's bounds rather than on its plot, lines within ``width_px`` fit both.
    """
    def shown(lines: list[str]) -> str | list[str]:
        return lines[0] if len(lines) == 1 else lines  # Vega-Lite draws a list as lines

    return alt.TitleParams(
        shown(text_lines(text, width_px, _TITLE_PX, bold=True)),
        subtitle=shown(text_lines(subtitle, width_px, _SUBTITLE_PX)) if subtitle else alt.Undefined,
        anchor="middle",
        frame="bounds",
    )


def compact_number(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, short: ``0.0853``, ``3.97e-6``, ``0``.

    An output impact is often a few millionths, which plain digits spell ``0.00000397``; below
    0.001 (or from 10,000) the value is written with an exponent instead.
    """
    if value == 0 or not math.isfinite(value):
        return "0" if value == 0 else str(value)
    plain = f"{value:.{digits}g}"
    if 1e-3 <= abs(value) < 1e4 and "e" not in plain:  # "g" turns 1234.5 into 1.23e+03 itself
        return plain
    mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"
