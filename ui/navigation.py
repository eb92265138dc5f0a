"""The sidebar's links to every page, named as the pages name themselves.

Streamlit's own page list names the entry file ("streamlit app"), so it is hidden
(``client.showSidebarNavigation`` in ``.streamlit/config.toml``) and every page draws
these links instead. A page script run on its own (``streamlit run pages/…``, or an
AppTest of one page) has no other pages to link to: the links it cannot make are left
out with a sentence, and a switch to another page says why it cannot happen.
"""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

__all__ = ["ALONE", "HOME", "PAGES", "link", "sidebar_links", "switch_to"]

HOME = "streamlit_app.py"
# (script, label, icon): the order of the sidebar
PAGES = (
    (HOME, "Overview", ":material/scatter_plot:"),
    ("pages/1_Head_Importance.py", "Head importance", ":material/content_cut:"),
    ("pages/2_Attention_Strength.py", "Attention strength", ":material/blur_on:"),
    ("pages/3_Attention_Patterns.py", "Attention patterns", ":material/bubble_chart:"),
    ("pages/4_Case_Study.py", "Case study", ":material/summarize:"),
    ("pages/5_Explanations.py", "Explanations", ":material/visibility:"),
    ("pages/6_Compare.py", "Compare", ":material/compare_arrows:"),
    ("pages/7_Library.py", "Library", ":material/local_library:"),
)
ALONE = (
    "This page runs on its own, on the start model and the sample images; "
    "`streamlit run streamlit_app.py` opens every view, with the model and image pickers."
)


def sidebar_links() -> None:
    """Every page's link at the top of the sidebar; only those this run can reach."""
    linked = [link(st.sidebar, script, label, icon) for script, label, icon in PAGES]
    if not all(linked):
        st.sidebar.caption(ALONE)
    st.sidebar.divider()


def link(container, script: str, label: str, icon: str | None = None) -> bool:
    """``container.page_link`` to ``script``; ``False`` (and no link) when it is not a page of this run."""
    try:
        container.page_link(script, label=label, icon=icon)
    except StreamlitAPIException:  # the page runs on its own
        return False
    return True


def switch_to(script: str) -> None:
    """Open another page; when this page runs on its own, say why it cannot."""
    try:
        st.switch_page(script)
    except StreamlitAPIException:
        st.warning(f"That view is another page, and this page runs on its own. {ALONE}")
