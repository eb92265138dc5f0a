"""Compare page: what each of its two sides is, the bundles opened on them, and the cached comparison.

A side is the current analysis (the live case study of the session's model and image set), a
result bundle of any model, opened without checking it against the loaded model, or a study of
the server's library (``ui.library``), which a link names by its id. An opened
bundle stays in the session, keyed by side, until the user removes it from its uploader or
uploads another, so a visit to another page keeps both sides. A refused bundle leaves its
side empty and the other side as it was.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import altair as alt
import pandas as pd
import streamlit as st

from core.errors import HeadScopeError
from core.inputs.images import ImageSet
from core.measures.importance import METRICS
from core.measures.projection import Method
from core.models.handle import ViTHandle
from core.study.bundle import load_bundle
from core.study.casestudy import CaseStudy
from core.study.comparison import Comparison, compare
from ui import casestudy, export, library, selection
from ui.casestudy import OpenedBundle
from viz.common import HEAD_SELECTION
from viz.compare import PATTERN_SELECTION

__all__ = [
    "BUNDLE",
    "COMPARE_PAGE",
    "FOCUS_KEY",
    "LIBRARY",
    "LIVE",
    "METRIC_KEY",
    "PATTERNS_KEY",
    "PATTERN_FOCUS_KEY",
    "SOURCES",
    "TOP_K",
    "comparison",
    "focus_head",
    "focus_values",
    "forget_if_cleared",
    "is_given",
    "library_error",
    "library_key",
    "library_pick_key",
    "library_study_id",
    "nearest_heads",
    "open_bundle",
    "opened_bundle",
    "pattern_focus",
    "pick_head",
    "pick_library_study",
    "pick_pattern_head",
    "ranking_metric",
    "refused_sentence",
    "shared_metrics",
    "show_chart",
    "side_study",
    "source",
    "source_key",
    "uploader_key",
    "use_library_study",
]

LIVE, BUNDLE, LIBRARY = "the current analysis", "a result bundle", "a library study"
SOURCES = (LIVE, BUNDLE, LIBRARY)
COMPARE_PAGE = "pages/6_Compare.py"
TOP_K = 5  # the case study page's default, so the live side reuses its study
METRIC_KEY = "compare_metric"
PATTERNS_KEY = "compare_patterns"
FOCUS_KEY = "compare_focus"  # (layer, head) picked in a difference heatmap
PATTERN_FOCUS_KEY = "compare_pattern_focus"  # (side, layer, head) picked in the joint pattern space
SideName = Literal["A", "B"]  # which side of the page


def source_key(side: SideName) -> str:
    return f"compare_source_{side}"


def uploader_key(side: SideName) -> str:
    return f"compare_upload_{side}"


def library_key(side: SideName) -> str:
    return f"compare_library_{side}"  # the id of the library study the side shows


def _opened_key(side: SideName) -> str:
    return f"compare_bundle_{side}"


def _library_error_key(side: SideName) -> str:
    return f"compare_library_error_{side}"  # why the study last picked for the side did not open


def _library_opened_key(side: SideName) -> str:
    return f"compare_library_opened_{side}"  # (id, OpenedBundle) of the side's library study


def _refused_key(side: SideName) -> str:
    return f"compare_refused_{side}"  # (sha256, sentence) of the file the side's uploader holds


def source(side: SideName) -> str:
    """What the side is: A starts as the current analysis, B as a result bundle."""
    return st.session_state.get(source_key(side), LIVE if side == "A" else BUNDLE)


def opened_bundle(side: SideName) -> OpenedBundle | None:
    """The study the side shows from a file: its uploaded bundle, or its library study."""
    if source(side) == LIBRARY:
        opened = st.session_state.get(_library_opened_key(side))
        return opened if opened is not None and opened.digest == library_study_id(side) else None
    return st.session_state.get(_opened_key(side))


def library_study_id(side: SideName) -> str | None:
    return st.session_state.get(library_key(side))


def library_pick_key(side: SideName) -> str:
    return f"compare_library_pick_{side}"  # the side's picker of library studies


def library_error(side: SideName) -> str | None:
    """Why the study last picked for the side did not open (it was deleted or damaged meanwhile)."""
    return st.session_state.get(_library_error_key(side))


def pick_library_study(side: SideName) -> None:
    """``on_change`` of a side's picker, before the page runs: the picked study opens on the side, so the
    page's link names it in the same run."""
    picked = st.session_state.get(library_pick_key(side))
    error = use_library_study(side, picked) if picked is not None else None
    st.session_state[_library_error_key(side)] = error


def use_library_study(side: SideName, study_id: str) -> str | None:
    """Make the side the library study ``study_id``; returns the sentence that says why not, or ``None``.

    A study that cannot be opened leaves the side as it was.
    """
    try:
        entry, _, study = library.opened_study(study_id)
    except HeadScopeError as err:
        return str(err)
    if source(side) != LIBRARY:  # on the Compare page, its radio already says so (and cannot be set again)
        st.session_state[source_key(side)] = LIBRARY
    st.session_state[library_key(side)] = study_id
    st.session_state[_library_opened_key(side)] = OpenedBundle(study_id, entry.title, study)
    st.session_state.pop(_library_error_key(side), None)
    return None


def refused_sentence(side: SideName) -> str | None:
    refused = st.session_state.get(_refused_key(side))
    return refused[1] if refused else None


def open_bundle(side: SideName, file_name: str, data: bytes) -> None:
    """Open the bundle the side's uploader holds (a bundle of any model); read once per file.

    A refused file leaves the side empty and its sentence for ``refused_sentence``.
    """
    digest = hashlib.sha256(data).hexdigest()
    opened, refused = opened_bundle(side), st.session_state.get(_refused_key(side))
    if (opened is not None and opened.digest == digest) or (refused is not None and refused[0] == digest):
        return
    st.session_state.pop(_opened_key(side), None)
    st.session_state.pop(_refused_key(side), None)
    try:
        study = load_bundle(data)
    except HeadScopeError as err:
        st.session_state[_refused_key(side)] = (digest, str(err))
        return
    st.session_state[_opened_key(side)] = OpenedBundle(digest, file_name, study)


def forget_if_cleared(side: SideName) -> None:
    """``on_change`` of a side's uploader: a file removed by the user closes its bundle.

    An uploader drawn anew after a visit to another page is empty without a change, so the
    bundle opened before stays.
    """
    if st.session_state.get(uploader_key(side)) is None:
        st.session_state.pop(_opened_key(side), None)
        st.session_state.pop(_refused_key(side), None)


def is_given(side: SideName) -> bool:
    """The side can be compared: the current analysis, an opened bundle or an opened library study."""
    return source(side) == LIVE or opened_bundle(side) is not None


def side_study(side: SideName, handle: ViTHandle, image_set: ImageSet) -> tuple[str, CaseStudy]:
    """The side's identity (what its comparison is cached by) and its study.

    The current analysis is computed here (with progress bars) unless the case study page
    or an earlier run already did.

    Raises:
        HeadScopeError: the current analysis cannot be computed, in a sentence for the user.
    """
    if source(side) == LIVE:
        settings = casestudy.live_settings(TOP_K)
        return f"live {handle.key} {image_set.key} {settings!r}", casestudy.live_study(handle, image_set, settings)
    opened = opened_bundle(side)
    assert opened is not None, "a side without a bundle is not given"
    return f"bundle {opened.digest}", opened.study


def ranking_metric(study_a: CaseStudy, study_b: CaseStudy) -> str | None:
    """The metric the user chose, when both studies hold it; else ``None`` (the comparison's default)."""
    chosen = st.session_state.get(METRIC_KEY)
    return chosen if chosen in study_a.metrics and chosen in study_b.metrics else None


def shared_metrics(c: Comparison) -> list[str]:
    """The importance metrics both sides hold: what heads can be ranked by on both."""
    return [m for m in c.measures if m in METRICS]


def comparison(a: tuple[str, CaseStudy], b: tuple[str, CaseStudy], metric: str | None, layout: Method | None) -> Comparison:
    """``compare`` of the two sides, cached by their identities; ``layout`` set also lays out the joint patterns.

    Raises:
        HeadScopeError: ``NothingToCompare`` when the studies hold no measure in common.
    """
    return _compared(a[0], b[0], metric, layout, a[1], b[1])


@st.cache_data(max_entries=4, show_spinner="Comparing the two studies…")
def _compared(
    identity_a: str, identity_b: str, metric: str | None, layout: Method | None,
    _study_a: CaseStudy, _study_b: CaseStudy,
) -> Comparison:
    return compare(_study_a, _study_b, metric=metric, patterns=layout is not None, layout=layout or "pca")


def focus_head(c: Comparison) -> tuple[int, int]:
    """The head picked in a difference heatmap; A's top head until one is picked (or when it is not in these heads)."""
    layer, head = st.session_state.get(FOCUS_KEY, (-1, -1))
    if 0 <= layer < c.a.layers and 0 <= head < c.a.heads:
        return layer, head
    top = c.top["A"].heads
    return (top[0].layer, top[0].head) if top else (0, 0)


def pattern_focus(c: Comparison) -> tuple[str, int, int] | None:
    """The head picked in the joint pattern space, when it is one of this comparison's."""
    picked = st.session_state.get(PATTERN_FOCUS_KEY)
    if picked is None or c.patterns is None:
        return None
    side, layer, head = picked
    heads = c.patterns.heads
    found = (heads["side"] == side) & (heads["layer"] == layer) & (heads["head"] == head)
    return picked if found.any() else None


def pick_head(chart_key: str) -> None:
    """``on_select`` of a difference heatmap: the clicked head becomes the page's focus head."""
    clicked = selection.clicked(chart_key, HEAD_SELECTION, {"layer", "head"})
    if clicked is not None:
        st.session_state[FOCUS_KEY] = (int(clicked["layer"]), int(clicked["head"]))


def pick_pattern_head(chart_key: str) -> None:
    """``on_select`` of the joint pattern space: the clicked head (of either side) becomes its focus."""
    clicked = selection.clicked(chart_key, PATTERN_SELECTION, {"side", "layer", "head"})
    if clicked is not None:
        st.session_state[PATTERN_FOCUS_KEY] = (str(clicked["side"]), int(clicked["layer"]), int(clicked["head"]))


def focus_values(c: Comparison, layer: int, head: int) -> pd.DataFrame:
    """The head's value in A and B, and B minus A, for every measure both hold: one row per measure."""
    rows = c.differences[(c.differences["layer"] == layer) & (c.differences["head"] == head)]
    return pd.DataFrame({
        "measure": [c.measure_title(m) for m in rows["measure"]],
        "A": rows["a"].to_numpy(), "B": rows["b"].to_numpy(), "B − A": rows["difference"].to_numpy(),
    })


def nearest_heads(c: Comparison, side: str, layer: int, head: int) -> pd.DataFrame:
    """The head's nearest heads of the other side in the joint pattern space (empty without it)."""
    if c.patterns is None:
        return pd.DataFrame(columns=["rank", "other_label", "distance"])
    table = c.patterns.neighbours
    rows = table[(table["side"] == side) & (table["layer"] == layer) & (table["head"] == head)]
    return rows[["rank", "other_label", "distance"]].reset_index(drop=True)


def show_chart(chart: alt.TopLevelMixin, name: str, **options) -> object:
    """Draw one of the comparison report's charts as the report draws it, with its downloads.

    Its own size and look: Streamlit's default fits title, legend and axes into the chart's
    width and height, which squeezes a plot under a long subtitle (the sides' labels) to a
    sliver; Vega-Lite's ``pad`` keeps the plot at the size its builder gave it.
    """
    natural = chart.properties(autosize=alt.AutoSizeParams(type="pad", contains="padding"))
    return export.chart(natural, name, theme=None, width="content", **options)
