"""The sidebar every view page shares, and the context it resolves: the active model, image set and focus.

The sidebar shows what is being analysed, lets the user change the focus image and the focus
head from any page, links to every page and shows the link that opens the same view (``ui.links``); the Overview page (``streamlit_app.py``) has
its own, which picks the model and the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from core.inputs.images import ImageSet
from core.models.handle import ViTHandle
from ui import links, navigation
from ui.display import enlarge_for_display, plain
from ui.images import active_image_set
from ui.models import current_model
from ui.probe import probe_header
from ui.selection import (
    FocusSelection,
    clamp_focus_head,
    focus,
    focus_image_id,
    set_focus_head,
    set_focus_image,
)

__all__ = ["PageContext", "page_context"]


@dataclass(frozen=True)
class PageContext:
    """What every analysis page starts from: the active model, image set and selections."""

    handle: ViTHandle
    image_set: ImageSet
    focus_id: str
    focus: FocusSelection


def page_context(page: str) -> PageContext:
    """Resolve the active model, set and focus, and draw the sidebar every view page shares.

    ``page`` names the page in ``ui.links.PAGES``: a link opened in a new session restores its
    state first, and every run writes it back into the URL.
    """
    navigation.sidebar_links()
    links.restore(page)
    handle = current_model()
    image_set = active_image_set(handle)
    focus_id = focus_image_id(image_set)
    clamp_focus_head(handle)
    _focus_sidebar(handle, image_set, focus_id)
    probe_header(handle)
    links.share(page, handle, image_set)
    # the set's analysis is read where a view needs it: an opened bundle needs none
    return PageContext(handle, image_set, focus_id, focus())


def _focus_sidebar(handle: ViTHandle, image_set: ImageSet, focus_id: str) -> None:
    sidebar = st.sidebar
    sidebar.caption(f"**{plain(handle.name)}** · {plain(image_set.title)} · the Overview page changes them")

    # keyed widgets ignore their default after the first run, and a page switch makes them
    # new widgets: set their state from the focus on every run
    current = focus()
    for key, value in (("focus_image_pick", focus_id), ("focus_layer", current.layer), ("focus_head", current.head)):
        st.session_state[key] = value

    sidebar.header("Focus")
    names = {image.id: image.name for image in image_set.images}
    sidebar.selectbox(
        "Focus image",
        list(names),
        format_func=lambda image_id: f"{names[image_id]} ({image_id[:8]})",
        key="focus_image_pick",
        on_change=lambda: set_focus_image(st.session_state["focus_image_pick"]),
    )
    image = image_set.by_id(focus_id)
    sidebar.image(enlarge_for_display(image.image, min_side=120), width=120)
    left, right = sidebar.columns(2)
    left.selectbox(
        "Focus layer", list(range(handle.num_layers)), key="focus_layer",
        on_change=lambda: set_focus_head(st.session_state["focus_layer"], focus().head),
    )
    right.selectbox(
        "Focus head", list(range(handle.num_heads)), key="focus_head",
        on_change=lambda: set_focus_head(focus().layer, st.session_state["focus_head"]),
    )
    sidebar.caption(f"Focus head **{focus().head_label}**; click a head in a chart to change it.")
