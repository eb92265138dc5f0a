"""The shared selections every page reads and may change: the focus image and the focus head.

They live in the session (``FOCUS_KEY``); a click on a head in any chart built with
``viz.common.HEAD_SELECTION`` makes that head the focus head (``show_head_chart``).
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.inputs.images import ImageSet
from core.models.handle import ViTHandle
from ui import export
from viz.common import HEAD_SELECTION

__all__ = [
    "FOCUS_KEY",
    "FocusSelection",
    "clamp_focus_head",
    "clicked",
    "focus",
    "focus_image_id",
    "focus_image_if_in",
    "pick_head",
    "set_focus_head",
    "set_focus_image",
    "show_head_chart",
]

FOCUS_KEY = "focus"


@dataclass(frozen=True)
class FocusSelection:
    """The focus image and focus head that every page reads and may change."""

    image_id: str | None = None
    layer: int = 0
    head: int = 0

    @property
    def head_label(self) -> str:
        return f"L{self.layer}H{self.head}"


def focus() -> FocusSelection:
    return st.session_state.get(FOCUS_KEY, FocusSelection())


def set_focus_image(image_id: str) -> None:
    st.session_state[FOCUS_KEY] = FocusSelection(image_id, focus().layer, focus().head)


def focus_image_if_in(image_set: ImageSet, image_id: str) -> bool:
    """Make ``image_id`` the focus image when ``image_set`` has it; ``False`` (and nothing changes) when not."""
    try:
        image_set.by_id(image_id)
    except KeyError:
        return False
    set_focus_image(image_id)
    return True


def set_focus_head(layer: int, head: int) -> None:
    st.session_state[FOCUS_KEY] = FocusSelection(focus().image_id, layer, head)


def focus_image_id(image_set: ImageSet) -> str:
    """The focus image if it belongs to ``image_set``, else the set's first image (made the focus)."""
    current = focus().image_id
    try:
        image_set.by_id(current or "")
    except KeyError:
        current = image_set.images[0].id
        set_focus_image(current)
    return current


def clamp_focus_head(handle: ViTHandle) -> None:
    """A head picked on a larger model may not exist in the current one: fall back to L0H0."""
    current = focus()
    if current.layer >= handle.num_layers or current.head >= handle.num_heads:
        set_focus_head(0, 0)


def clicked(chart_key: str, selection: str, fields: set[str]) -> dict | None:
    """The point a click picked in the chart drawn under ``chart_key``, when it carries ``fields``; else ``None``."""
    picked = st.session_state[chart_key].selection.get(selection) or []
    return picked[0] if picked and fields <= picked[0].keys() else None


def pick_head(chart_key: str) -> None:
    """``on_select`` of a head chart: the clicked ``(layer, head)`` becomes the focus head."""
    point = clicked(chart_key, HEAD_SELECTION, {"layer", "head"})
    if point is not None:
        set_focus_head(int(point["layer"]), int(point["head"]))


def show_head_chart(chart, key: str) -> None:
    """Render a chart built with ``HEAD_SELECTION`` with its downloads; clicking a head makes it the focus head."""
    export.chart(chart, key, key=key, on_select=lambda: pick_head(key), selection_mode=HEAD_SELECTION, width="stretch")
