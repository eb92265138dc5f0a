"""What every chart shares: the colours, the head-picking selection, tooltips, top-head names.

No streamlit here: the pages in ``ui/`` and ``pages/`` render these charts and read their
selections, and ``viz.report`` renders them offline.
"""

from __future__ import annotations

import altair as alt
import pandas as pd

__all__ = [
    "CHART_WIDTH",
    "FOCUS_RED",
    "HEAD_SELECTION",
    "LAYER_COLOURS",
    "PATCH_SCHEME",
    "RESERVED_TOOLTIP_KEYS",
    "tooltip_field",
    "top_head_names",
]

FOCUS_RED = "#d62728"  # the focus image or head on the pages, the top heads in the report
LAYER_COLOURS = "tableau20"  # one distinct hue per layer (up to 20), as the paper's views C1 and D1
PATCH_SCHEME = "oranges"  # patch-to-patch attention and patch maps
HEAD_SELECTION = "head"  # every chart where a click picks a head: fields layer, head
CHART_WIDTH = 540  # the report's plot area; with axes and legends a chart stays within about 600 px
# vega-tooltip (on the pages and in the report) takes two keys out of the table: ``title``
# becomes a heading and ``image`` becomes ``<img src=VALUE>``, a fetch of whatever URL the
# value (say an image's name) holds. No tooltip here may carry either key.
RESERVED_TOOLTIP_KEYS = frozenset({"image", "title"})


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
