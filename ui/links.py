"""Links that open the same view: every page keeps what a person would send in the URL's query parameters.

The URL's path names the page; its query parameters name the rest::

    study=<id>       a study of the server's library (the Case study page shows it; its model is loaded)
    model=<name>     a built-in model (``BUILTIN_MODELS``) with its sample images, and
    size=<px>        its input size, when it is not the model's default
    image=<id>       the focus image
    head=L3H2        the focus head
    metric=<name>    the page's head-importance metric (Head importance, Case study, Compare)
    scope=<word>     set or image, on the pages that offer both
    a=<id>, b=<id>   library studies on the two sides of the Compare page

``share`` writes them on every run of every page and shows the link in the sidebar. A new session
(a link opened in another browser) applies them once, in ``restore``, before the page reads its
state. Query parameters are untrusted input: one that cannot apply (an unknown study, a head the
model lacks, an image not in the set, a model this server loads only when typed, a long value) is
ignored with one sentence, and the rest of the link still applies. A parameter never makes the
server read a path or reach the network: a model comes only from the built-in list, a study only
from the library's index, by its hash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.inputs.images import ImageSet
from core.measures.importance import METRICS, metrics_for
from core.models.handle import ViTHandle
from core.models.load import BUILTIN_MODELS, builtin_ready
from ui import casestudy, compare, images, library, models, navigation, selection
from ui.attribution import FOCUS_ONLY, SET_START
from ui.display import plain
from ui.importance import GLOBAL, LOCAL
from ui.models import MAX_IMG_SIZE
from ui.strength import FOCUS_IMAGE, SET_MEAN

__all__ = [
    "MAX_VALUE_CHARS",
    "NOTES_KEY",
    "PAGES",
    "PARAMETERS",
    "RESTORED_KEY",
    "PageParams",
    "current_params",
    "offer_pending_metric",
    "restore",
    "share",
    "shared_url",
]

STUDY, MODEL, SIZE, IMAGE, HEAD, METRIC, SCOPE, SIDE_A, SIDE_B = (
    "study", "model", "size", "image", "head", "metric", "scope", "a", "b"
)
PARAMETERS = (STUDY, MODEL, SIZE, IMAGE, HEAD, METRIC, SCOPE, SIDE_A, SIDE_B)
SIDE_PARAMETERS = {"A": SIDE_A, "B": SIDE_B}
RESTORED_KEY = "link_restored"  # this session has applied its URL's parameters
NOTES_KEY = "link_notes"  # (page, sentences of the parameters the link's page ignored), shown on that page
PENDING_KEY = "link_pending_metric"  # (widget key, metric) a link asked for, until its page offers it
MAX_VALUE_CHARS = 100  # a study id is 64; nothing a link needs is longer
_HEAD = re.compile(r"L([0-9]{1,3})H([0-9]{1,3})")
_SHOWN_CHARS = 40
LIBRARY_PAGE = "pages/7_Library.py"


@dataclass(frozen=True)
class PageParams:
    """The page-specific state a link keeps: the metric widget's key, and the scope radio's key and
    options by the word the URL uses for each. ``metric_waits``: the page offers some of the model's
    metrics only later (``offer_pending_metric``)."""

    metric_key: str | None = None
    scope_key: str | None = None
    scopes: Mapping[str, str] = field(default_factory=dict)
    metric_waits: bool = False


PAGES: dict[str, PageParams] = {
    "overview": PageParams(),
    "importance": PageParams("importance_metric", "importance_scope", {"set": GLOBAL, "image": LOCAL}, metric_waits=True),
    "strength": PageParams(None, "strength_scope", {"image": FOCUS_IMAGE, "set": SET_MEAN}),
    "patterns": PageParams(),
    "case": PageParams("case_metric"),
    "explanations": PageParams(None, "explain_scope", {"image": FOCUS_ONLY, "set": SET_START}),
    "compare": PageParams(compare.METRIC_KEY),
    "library": PageParams(),
}


# --- reading a link ----------------------------------------------------------------------


def restore(page: str) -> None:
    """Apply the URL's parameters once per session, before the page reads the model, images and focus."""
    if st.session_state.get(RESTORED_KEY):
        return
    st.session_state[RESTORED_KEY] = True
    notes: list[str] = []
    values = {}
    for key in PARAMETERS:
        value = st.query_params.get(key)
        if not value:  # absent, or ``?study=`` with nothing after it
            continue
        if len(value) > MAX_VALUE_CHARS:
            notes.append(f"The link's {key} is {len(value)} characters long, so it is ignored.")
        else:
            values[key] = value
    _restore_source(page, values, notes)
    handle = models.current_model()
    _restore_focus(values, handle, images.active_image_set(handle), notes)
    _restore_page(page, values, handle, notes)
    st.session_state[NOTES_KEY] = (page, notes)


def _shown(value: str) -> str:
    return value if len(value) <= _SHOWN_CHARS else value[: _SHOWN_CHARS - 1] + "…"


def _restore_source(page: str, values: dict[str, str], notes: list[str]) -> None:
    """A library study (which names its model), or a built-in model at an input size."""
    if STUDY in values:
        if MODEL in values or SIZE in values:
            notes.append("The link names a study, whose own model is loaded, so its model is ignored.")
        if page != "case":
            notes.append("The link's study opens on the Case study page, so it is ignored here.")
            return
        error = casestudy.open_library_study(values[STUDY], rerun=False)  # the rest of the link applies first
        if error:
            notes.append(f"The link's study is not opened. {error}")
        return
    name, size_text = values.get(MODEL), values.get(SIZE)
    if name is None:
        if size_text is not None:
            notes.append("The link gives an input size without a model, so it is ignored.")
        return
    if name not in BUILTIN_MODELS:
        notes.append(
            f"The link names the model '{_shown(name)}', which this server loads only when it is typed on the "
            f"Overview page, so the link's view is shown on {models.current_model().name}."
        )
        return
    size = None
    if size_text is not None:
        if size_text.isascii() and size_text.isdecimal() and 1 <= int(size_text) <= MAX_IMG_SIZE:
            size = int(size_text)
        else:
            notes.append(f"The link's input size '{_shown(size_text)}' is not a number of pixels up to {MAX_IMG_SIZE}, so {name} keeps its own.")
    spec = models.current_spec()
    if spec == models.ModelSpec(name, img_size=size, server_paths=spec.server_paths):
        return
    if not builtin_ready(name):  # preparing its weights would reach the network
        notes.append(f"The link's model {name} is not prepared on this server yet, so the current model stays.")
    elif size is not None and models.switch_model(name, None, size):
        fallback = models.switch_model(name, None, None)
        at_own = "it opens at its own size" if fallback is None else "the current model stays"
        notes.append(f"The link's input size {size} px does not fit {name}, so {at_own}.")
    elif size is None and models.switch_model(name, None, None):
        notes.append(f"The link's model {name} cannot be loaded on this server now, so the current model stays.")


def _restore_focus(values: dict[str, str], handle: ViTHandle, image_set: ImageSet, notes: list[str]) -> None:
    image_id = values.get(IMAGE)
    if image_id is not None and not selection.focus_image_if_in(image_set, image_id):
        notes.append(f"The link's focus image '{_shown(image_id)}' is not in {image_set.title}, so it is ignored.")
    head = values.get(HEAD)
    if head is None:
        return
    match = _HEAD.fullmatch(head)
    if match is None:
        notes.append(f"The link's head '{_shown(head)}' is not a head like L3H2, so it is ignored.")
    elif int(match[1]) >= handle.num_layers or int(match[2]) >= handle.num_heads:
        notes.append(
            f"The link's head {head} is not one of {handle.name}'s {handle.num_layers} layers x "
            f"{handle.num_heads} heads, so it is ignored."
        )
    else:
        selection.set_focus_head(int(match[1]), int(match[2]))


def _restore_page(page: str, values: dict[str, str], handle: ViTHandle, notes: list[str]) -> None:
    """The page's own state: its metric, its scope, the Compare page's sides."""
    params = PAGES[page]
    metric, scope = values.get(METRIC), values.get(SCOPE)
    if metric is not None:
        offered = _metrics(page, handle)
        if params.metric_key is None or metric not in offered:
            where = f"one of {', '.join(offered)}" if params.metric_key else "a metric this page has"
            notes.append(f"The link's metric '{_shown(metric)}' is not {where}, so it is ignored.")
        else:
            st.session_state[params.metric_key] = metric
            if params.metric_waits:
                st.session_state[PENDING_KEY] = (params.metric_key, metric)  # until the page offers it
    if scope is not None:
        if params.scope_key is None or scope not in params.scopes:
            where = f"{' or '.join(params.scopes)}" if params.scopes else "a scope this page has"
            notes.append(f"The link's scope '{_shown(scope)}' is not {where}, so it is ignored.")
        else:
            st.session_state[params.scope_key] = params.scopes[scope]
    for side, key in SIDE_PARAMETERS.items():
        if key not in values:
            continue
        error = compare.use_library_study(side, values[key]) if page == "compare" else "It names a side of the Compare page."
        if error:
            notes.append(f"The link's side {side} is not opened. {error}")


def _metrics(page: str, handle: ViTHandle) -> tuple[str, ...]:
    """The metrics the page can show: a case study's own, any for a comparison, else the model's."""
    opened = casestudy.opened_bundle()
    if page == "case" and opened is not None:
        return tuple(opened.study.metrics)
    return METRICS if page == "compare" else tuple(metrics_for(handle))


# --- writing a link ----------------------------------------------------------------------


def current_params(page: str, handle: ViTHandle, image_set: ImageSet) -> tuple[dict[str, str], str | None]:
    """The query parameters of what the page shows now, and the sentence that says why a link cannot
    bring it back (or ``None``)."""
    params: dict[str, str] = {}
    needs_model, why_not = True, None
    if page == "case" and casestudy.opened_bundle() is not None:
        opened = casestudy.opened_bundle()
        needs_model = False
        if library.holds(opened.digest):
            params[STUDY] = opened.digest
        else:
            why_not = (
                "This case study comes from a bundle uploaded in this session, which a link cannot bring back: "
                "save it to the library below, and its link opens it anywhere."
            )
    if page == "compare":
        needs_model, why_not = _compare_sides(params)
    spec = models.current_spec()
    builtin = spec.name in BUILTIN_MODELS and spec.checkpoint_digest is None and spec.probe_digest is None
    if STUDY in params or not needs_model:
        pass  # the study names its model; the Compare page's sides are library studies
    elif builtin and not spec.transformers_zip:
        params[MODEL] = spec.name
        if spec.img_size is not None:
            params[SIZE] = str(spec.img_size)
    elif needs_model and why_not is None:
        why_not = (
            f"{handle.name} was loaded in this session, and a link loads only the built-in models: save the case "
            "study to the library, and its link opens it anywhere."
        )
    if needs_model and why_not is None and images.uses_upload():
        why_not = (
            "The images were uploaded in this session only, so a link cannot bring them back: save the case study "
            "to the library, and its link opens it anywhere."
        )
    focus = selection.focus()
    params[IMAGE] = selection.focus_image_id(image_set)
    params[HEAD] = focus.head_label
    _page_params(page, params)
    return params, why_not


def _compare_sides(params: dict[str, str]) -> tuple[bool, str | None]:
    """The Compare page's sides as ``a`` and ``b``; whether a side is the current analysis, and why a side
    cannot be linked."""
    needs_model, why_not = False, None
    for side, key in SIDE_PARAMETERS.items():
        if compare.source(side) == compare.LIVE:
            needs_model = True
            continue
        opened = compare.opened_bundle(side)
        if opened is None:
            continue
        if library.holds(opened.digest):
            params[key] = opened.digest
        elif why_not is None:
            why_not = (
                f"Side {side} is a bundle uploaded in this session, which a link cannot bring back: add it to the "
                "library on the Library page, and the link names it."
            )
    return needs_model, why_not


def offer_pending_metric(page: str, offered: Sequence[str]) -> None:
    """Before the page's metric widget: the metric a link asked for, once the page offers it.

    The Head importance page offers only its Taylor preview until the server's exact sweep ends; a widget
    drops a value it does not offer, so the link's metric waits here (and stays in the URL) until then.
    """
    pending = st.session_state.get(PENDING_KEY)
    if pending is not None and pending[0] == PAGES[page].metric_key and pending[1] in offered:
        st.session_state[pending[0]] = pending[1]
        st.session_state.pop(PENDING_KEY)


def _page_params(page: str, params: dict[str, str]) -> None:
    page_params = PAGES[page]
    pending = st.session_state.get(PENDING_KEY)
    if pending is not None and pending[0] == page_params.metric_key:
        metric = pending[1]  # asked for by the link, not offered yet
    else:
        metric = st.session_state.get(page_params.metric_key) if page_params.metric_key else None
    if metric in METRICS:
        params[METRIC] = metric
    if page_params.scope_key:
        chosen = st.session_state.get(page_params.scope_key)
        word = next((word for word, option in page_params.scopes.items() if option == chosen), None)
        if word is not None:
            params[SCOPE] = word


def shared_url(params: Mapping[str, str]) -> str:
    """The URL of this page with ``params``: what the browser's address bar shows (relative when it is unknown)."""
    here = st.context.url or ""
    scheme, netloc, path, _, _ = urlsplit(here)
    return urlunsplit((scheme, netloc, path, urlencode(params), ""))


def share(page: str, handle: ViTHandle, image_set: ImageSet, place: DeltaGenerator | None = None) -> None:
    """Write the page's state into the URL and show the link to copy (or why there is none) in ``place``,
    by default the end of the sidebar."""
    # on the page the link opened, until another page runs: a page's own reruns keep them
    landed, notes = st.session_state.get(NOTES_KEY, (page, []))
    if landed != page:
        st.session_state.pop(NOTES_KEY, None)
    for note in notes if landed == page else []:
        st.warning(plain(note))  # it quotes what the link held
    params, why_not = current_params(page, handle, image_set)
    st.query_params.from_dict(params)
    with (place or st.sidebar).expander("Copy link", icon=":material/link:", expanded=False):
        if why_not is None:
            st.code(shared_url(params), language=None, wrap_lines=True)
            st.caption("Opens this page with the same model, images, focus and settings in any browser.")
            return
        st.caption(plain(why_not))
        if page == "compare":
            navigation.link(st, LIBRARY_PAGE, "Add a bundle to the library", ":material/library_add:")
        elif page != "case":
            navigation.link(st, casestudy.CASE_PAGE, "Save the case study to the library", ":material/bookmark_add:")
