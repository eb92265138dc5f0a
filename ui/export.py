"""Every chart on a page with a PNG and an SVG download, every table with a CSV one.

The files are made when their button is clicked (on another thread, without rerunning
the page), so a page with twenty charts renders no image it is not asked for. The
charts come out in the report's plain look (``viz.export``).
"""

from __future__ import annotations

import re
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from core.csvfile import csv_bytes
from viz.export import chart_png, chart_svg

__all__ = ["chart", "file_stem", "table"]


def file_stem(name: str) -> str:
    """``name`` as a file name: letters, digits and dashes, prefixed ``headscope-``."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "chart"
    return f"headscope-{slug[:80]}"


def chart(figure: alt.TopLevelMixin, name: str, **options: Any) -> Any:
    """``st.altair_chart(figure, **options)``, then its PNG and SVG buttons; returns what it returns.

    ``name`` names the files and keys the buttons: one name per chart on a page.
    """
    event = st.altair_chart(figure, **options)
    stem = file_stem(name)
    with st.container(horizontal=True, gap="small"):
        st.download_button(
            "PNG", lambda: chart_png(figure), file_name=f"{stem}.png", mime="image/png", key=f"{stem}-png",
            on_click="ignore", type="tertiary", icon=":material/download:", help="This chart as a PNG image.",
        )
        st.download_button(
            "SVG", lambda: chart_svg(figure), file_name=f"{stem}.svg", mime="image/svg+xml", key=f"{stem}-svg",
            on_click="ignore", type="tertiary", icon=":material/download:", help="This chart as an SVG drawing.",
        )
    return event


def table(frame: pd.DataFrame, name: str, **options: Any) -> Any:
    """``st.dataframe(frame, **options)``, then its CSV button; returns what it returns.

    The CSV holds the frame's own columns and full-precision values, not the page's
    rounded display of them, written by ``core.csvfile`` so no name in it runs as a
    spreadsheet formula.
    """
    event = st.dataframe(frame, **options)
    stem = file_stem(name)
    st.download_button(
        "CSV", lambda: csv_bytes(frame), file_name=f"{stem}.csv", mime="text/csv",
        key=f"{stem}-csv", on_click="ignore", type="tertiary", icon=":material/download:",
        help="This table as a CSV file.",
    )
    return event
