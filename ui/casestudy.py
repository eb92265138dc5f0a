"""Case study page: the live study from the views' cached results, or a study opened from a bundle.

The live study reads the set's analysis every view reads (``results.analysis``) and the
patterns page's cached pattern space, so after visiting the views only the partial
pruning of the top heads runs here. An opened bundle is checked against the loaded model and kept in the session
until the user closes it; a bad bundle leaves the previous state untouched. A study of the
server's library opens the same way (``open_library_study``, from the Library page or a
link), and ``library_form`` saves the study on screen to the library, which then becomes the
page's opened bundle so that the page's link names it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import streamlit as st

from core.errors import HeadScopeError
from core.inputs.images import ImageSet
from core.models.handle import DEFAULT_IMG_SIZE, ViTHandle
from core.models.load import BUILTIN_MODELS, DEMO_NAME, builtin_ready
from core.settings import DEFAULT_CLUSTERS, CaseSettings
from core.study.bundle import bundle_probe, load_bundle
from core.study.casestudy import CaseStudy, assemble
from core.study.library import MAX_NOTE_CHARS, MAX_TITLE_CHARS, LibraryEntry
from ui import library, models, navigation, patterns, results, selection
from ui.display import plain, progress_bar

__all__ = [
    "CAPTION_LINE",
    "CASE_PAGE",
    "EVIDENCE",
    "FINDING_LINKS",
    "MAX_TOP_K",
    "OPENED_KEY",
    "REFUSED_KEY",
    "THUMBNAIL_WIDTH",
    "UPLOAD_ROUND_KEY",
    "VIEW_PAGES",
    "OpenedBundle",
    "caption_px",
    "close_bundle",
    "library_form",
    "live_settings",
    "live_study",
    "open_bundle",
    "open_in_view",
    "open_library_study",
    "open_upload",
    "opened_bundle",
    "thumbnail_caption",
    "uploader_key",
]

CASE_PAGE = "pages/4_Case_Study.py"
OPENED_KEY = "case_bundle"  # (sha256 of the bundle, file name, CaseStudy)
UPLOAD_ROUND_KEY = "case_bundle_round"
REFUSED_KEY = "case_bundle_refused"  # ((sha256, model key), sentence) of the last bundle refused
MAX_TOP_K = 10
VIEW_PAGES = {
    "importance": ("pages/1_Head_Importance.py", "Head importance"),
    "strength": ("pages/2_Attention_Strength.py", "Attention strength"),
    "patterns": ("pages/3_Attention_Patterns.py", "Attention patterns"),
    "explanations": ("pages/5_Explanations.py", "Explanations"),
}

# Each sentence of a finding, the view it comes from, and its link's label.
FINDING_LINKS = (
    ("importance", "importance", "B1 →"),
    ("mechanism", "importance", "B2 →"),
    ("locality", "strength", "C →"),
    ("concentration", "strength", "C →"),
    ("pattern", "patterns", "D →"),
    ("explanation", "explanations", "E →"),
)
# The case study's charts (``viz.report.case_charts`` keys) under the view each comes from;
# a bundle saved before concentration was measured has no concentration-by-layer, one saved
# before relevance maps were kept no relevance-maps.
EVIDENCE = {
    "importance": ("importance-line", "importance-heatmap", "pruning-curve"),
    "strength": ("entropy-by-layer", "hop-profiles", "distance-by-layer", "concentration-by-layer"),
    "patterns": ("pattern-space", "pattern-prototypes", "pattern-mse"),
    "explanations": ("relevance-maps",),
}


@dataclass(frozen=True)
class OpenedBundle:
    digest: str
    file_name: str
    study: CaseStudy


def live_settings(top_k: int) -> CaseSettings:
    """The settings the views use now: the patterns page's choices when the user made any."""
    state = st.session_state
    return CaseSettings(
        top_k=top_k,
        kind="cls" if state.get("pattern_cls", False) else "patch",
        max_maps=int(state.get("pattern_max_maps", patterns.DEFAULT_SAMPLE_SIZE)),
        n_clusters=int(state.get("pattern_clusters", DEFAULT_CLUSTERS)),
        curve_steps=results.ANALYSIS_SETTINGS.curve_steps,
        seed=results.ANALYSIS_SETTINGS.seed,
    )


@st.cache_data(max_entries=4, show_spinner=False)
def _assembled(
    model_key: str, set_key: str, settings_key: str, layout_method: str,
    _handle: ViTHandle, _images: ImageSet, _settings: CaseSettings, _parts: dict,
) -> CaseStudy:
    with progress_bar(
        "Masking parts of the top heads' attention…", "Partial pruning: head {done} of {total}…"
    ) as progress:
        return assemble(_handle, _images, _settings, **_parts, progress=lambda _stage, done, total: progress(done, total))


def live_study(handle: ViTHandle, image_set: ImageSet, settings: CaseSettings) -> CaseStudy:
    """The case study of the current model and set, from the views' cached results.

    Raises:
        HeadScopeError: with a sentence for the user (e.g. ``UnsupportedMapKind`` for CLS maps
            on a model without CLS).
    """
    analysis = results.analysis(handle, image_set, why="The case study")
    view = patterns.pattern_view(handle, image_set, settings.kind, settings.max_maps, settings.n_clusters)
    parts = dict(
        importance=analysis.importance, curve=analysis.curve, strength=analysis.strength,
        space=view.space, layout=view.layout, clusters=view.clusters, outputs=analysis.predictions.logits,
    )
    return _assembled(handle.key, image_set.key, repr(settings), view.layout.method, handle, image_set, settings, parts)


def open_upload(handle: ViTHandle) -> None:
    """``on_change`` of the page's bundle uploader, before the page runs: the page's link then says at once that
    an uploaded bundle cannot be linked. The page reads the sentence of a refused file with ``open_bundle``."""
    upload = st.session_state.get(uploader_key())
    if upload is not None:
        open_bundle(upload.name, upload.getvalue(), handle)


def open_bundle(file_name: str, data: bytes, handle: ViTHandle, *, rerun: bool = True) -> str | None:
    """Open an uploaded bundle for this model; returns the sentence that says why not, or ``None``.

    A bundle of a linear probe on the session's backbone activates that probe and reruns the page
    (unless ``rerun`` is ``False``), which then draws the probed model.
    """
    digest = hashlib.sha256(data).hexdigest()
    opened = st.session_state.get(OPENED_KEY)
    if opened is not None and opened.digest == digest:
        return None
    refused = st.session_state.get(REFUSED_KEY)
    if refused is not None and refused[0] == (digest, handle.key):
        return refused[1]  # the same file again (any rerun while it sits in the uploader): not read twice
    try:
        model, probe_file = _bundle_model(data, handle)
        study = load_bundle(data, model_key=model.key, model_name=model.name)
    except HeadScopeError as err:
        st.session_state[REFUSED_KEY] = ((digest, handle.key), str(err))
        return str(err)
    st.session_state[OPENED_KEY] = OpenedBundle(digest, file_name, study)
    if probe_file is not None:  # the bundle's classifier: its probe on the active backbone
        error = models.activate_probe(probe_file)
        if error:
            st.session_state.pop(OPENED_KEY, None)
            return error
        if rerun:
            st.rerun()
    return None


def _bundle_model(data: bytes, handle: ViTHandle) -> tuple[ViTHandle, bytes | None]:
    """The model a bundle was computed with, when the session can give it: a bundle saved with a linear
    probe opens on its backbone with that probe (returned as its file, to activate once the bundle opens).

    Otherwise ``handle`` itself, which ``load_bundle`` refuses with the sentence that names the bundle's model.
    """
    probe = bundle_probe(data)
    if probe is None or (handle.probe is not None and handle.probe.digest == probe.digest):
        return handle, None
    backbone = handle.backbone if handle.probe is not None else handle
    if backbone is None or not backbone.is_backbone or backbone.key != probe.backbone_key:
        return handle, None
    probe_file = probe.to_bytes()
    return models.probed_model(probe_file), probe_file


def open_library_study(study_id: str, *, rerun: bool = True) -> str | None:
    """Open a library study on this page; returns the sentence that says why not, or ``None``.

    A study of another model than the session's opens after switching the session to that model
    when it is a built-in one prepared on this server, with the study's weights (a study of a linear
    probe on a built-in backbone: to that backbone, and the bundle's probe goes on it); any other
    model must be loaded on the Overview page first. A study that cannot open leaves the session's
    model as it was. ``rerun=False``: a probe goes on without rerunning the page (a link, before
    the page has drawn anything).
    """
    try:
        entry, data, study = library.opened_study(study_id)
    except HeadScopeError as err:
        return str(err)
    if study.manifest["model"]["key"] != models.current_model().key:
        error = _switch_to_model_of(entry, study.manifest["model"])
        if error:
            return error
    return open_bundle(entry.title, data, models.current_model(), rerun=rerun)


def _switch_to_model_of(entry: LibraryEntry, model: dict) -> str | None:
    """Make the study's built-in model the session's, once it is known to be the one the study was computed with."""
    wanted = _builtin_model(model)
    if wanted is None:
        return (
            f"The study '{entry.title}' was computed with {entry.model_name}, which a link or the library cannot load: "
            "load that model on the Overview page, then open the study again (the Compare page opens it with any model)."
        )
    if not builtin_ready(wanted[0]):
        return (
            f"The study '{entry.title}' needs {wanted[0]}, which is not prepared on this server yet: load it once on "
            "the Overview page, then open the study again."
        )
    try:
        candidate = models.builtin_model(*wanted)
    except HeadScopeError as err:
        return str(err)
    probe = model.get("probe")
    if candidate.key not in (model["key"], probe.get("backbone_key") if isinstance(probe, dict) else None):
        return (
            f"The study '{entry.title}' was computed with other weights of {entry.model_name} than this server's, so "
            "only the Compare page opens it."
        )
    return models.switch_model(wanted[0], None, wanted[1])


_AT_SIZE = re.compile(r"(.*) \(([0-9]{1,4}) px\)")  # "dinov2-s (448 px)": a built-in model at another input size


def _builtin_model(model: dict) -> tuple[str, int | None] | None:
    """The built-in model (name, input size or ``None`` for its default) a bundle's model facts name, if any."""
    name, probe = str(model.get("name", "")), model.get("probe")
    if name not in BUILTIN_MODELS and isinstance(probe, dict):  # a probe on a backbone: that backbone
        name = str(probe.get("backbone_name", ""))
    at_size = _AT_SIZE.fullmatch(name)
    name = at_size[1] if at_size else name
    if name not in BUILTIN_MODELS:
        return None
    if name == DEMO_NAME:
        return name, None
    side = int(at_size[2]) if at_size else int(model["grid"][0]) * int(model["patch_size"][0])
    return name, None if side == DEFAULT_IMG_SIZE else side


SAVED_KEY = "case_library_saved"  # (kind, sentence) of the last save to the library, shown once


def library_form(study: CaseStudy) -> None:
    """Save to the library: a title and an optional note; the saved study is then the page's, so its link opens it."""
    st.markdown("##### Save to the library")
    shelf, why = library.current()
    if shelf is None:
        st.caption(plain(why))
        return
    default_title = f"{study.manifest['model']['name']} on {study.manifest['image_set']['title']}"
    with st.form("case_library_form", border=True, width=720):
        st.text_input("Title", key="case_library_title", max_chars=MAX_TITLE_CHARS, placeholder=default_title)
        st.text_area("Note (optional)", key="case_library_note", max_chars=MAX_NOTE_CHARS, height=80)
        st.form_submit_button(
            "Save to the library", icon=":material/bookmark_add:", on_click=_save_to_library, args=(study, default_title),
            help="Keeps the study on this server for the whole team: the Library page lists it and its link opens it.",
        )
    kind, sentence = st.session_state.pop(SAVED_KEY, (None, None))
    if kind == "error":
        st.error(plain(sentence))  # it may quote the title
    elif kind == "success":
        st.success(plain(sentence))
    st.caption(library.usage_sentence(shelf))


def _save_to_library(study: CaseStudy, default_title: str) -> None:
    """The form's ``on_click``, before the page runs again: the sidebar's link then names the saved study."""
    title = st.session_state.get("case_library_title", "").strip() or default_title
    with st.spinner("Saving the study to the library…"):
        entry, sentence = library.save(study, title, st.session_state.get("case_library_note", ""))
    if entry is None:
        st.session_state[SAVED_KEY] = ("error", sentence)
        return
    st.session_state[OPENED_KEY] = OpenedBundle(entry.id, entry.title, study)
    st.session_state[SAVED_KEY] = ("success", f"{sentence.removesuffix('.')}; the sidebar's link opens it.")


def opened_bundle() -> OpenedBundle | None:
    return st.session_state.get(OPENED_KEY)


THUMBNAIL_WIDTH = 72  # px: a thumbnail, and the caption under it
CAPTION_LINE = THUMBNAIL_WIDTH - 4  # px of text on a caption's line: it has 2 px of padding either side
# Each character's advance in the caption's font (Streamlit's Source Sans, 14 px) as Chromium
# measures it, rounded up to 0.1 px; a character not listed counts as 1 em
_CAPTION_PX = {
    " ": 2.8,
    **dict.fromkeys("ijlI.,:;'!|·", 3.7),
    **dict.fromkeys("f()[]-", 4.4),
    **dict.fromkeys("rt/", 4.9),
    **dict.fromkeys("sz", 6.0),
    **dict.fromkeys("cx", 6.4),
    **dict.fromkeys("vy", 6.6),
    **dict.fromkeys("JLY", 6.9),
    **dict.fromkeys("ekF0123456789_", 7.0),
    **dict.fromkeys("ag", 7.1),
    **dict.fromkeys("VX", 7.3),
    **dict.fromkeys("ESTZ", 7.6),
    **dict.fromkeys("hnouA", 7.7),
    **dict.fromkeys("bdpq", 7.8),
    **dict.fromkeys("CPR", 8.0),
    **dict.fromkeys("BK", 8.3),
    **dict.fromkeys("DG", 8.7),
    **dict.fromkeys("HNU", 9.2),
    **dict.fromkeys("OQ", 9.3),
    **dict.fromkeys("wM", 10.2),
    "W": 11.1,
    "m": 11.7,
    "…": 13.3,
}
_EM = 14.0
_ELLIPSIS = "…"
_ZERO_WIDTH_SPACE = "\u200b"  # a line may break here, after the "_" or "-" of hubble_deep_field
_PART = re.compile(r"[^_\-]+[_\-]*|[_\-]+")  # a word's parts, each with the "_" or "-" that ends it


def caption_px(text: str) -> float:
    """About how wide ``text`` is in a thumbnail's caption, in px (a little wider than it is)."""
    return sum(_CAPTION_PX.get(char, _EM) for char in text)


def _fitted(part: str, width: float) -> str:
    """``part`` whole when it fits on a line, else cut to what does, ending in "…"."""
    if caption_px(part) <= width:
        return part
    room = width - caption_px(_ELLIPSIS)
    kept = ""
    for char in part:
        if caption_px(kept + char) > room:
            break
        kept += char
    return kept + _ELLIPSIS


def thumbnail_caption(name: str, target: str = "") -> str:
    """An image's name (and target) under its ``THUMBNAIL_WIDTH`` px thumbnail.

    The browser wraps the caption between words, and breaks a word in the middle when it
    does not fit on a line (``hubble_de`` / ``e…``). Here every word, or part of a word
    between its "_" and "-", fits on a line (a longer one ends in "…"), and an invisible
    space after each "_" or "-" lets the browser break there: ``hubble_`` / ``deep_field``.
    """
    text = " · ".join(part for part in (name, target) if part.strip())
    words = ([_fitted(part, CAPTION_LINE) for part in _PART.findall(word)] for word in text.split())
    return " ".join(_ZERO_WIDTH_SPACE.join(parts) for parts in words)


def uploader_key() -> str:
    """The bundle uploader's key: a new one after closing, so the closed file is not opened again."""
    return f"case_bundle_upload_{st.session_state.get(UPLOAD_ROUND_KEY, 0)}"


def close_bundle() -> None:
    st.session_state.pop(OPENED_KEY, None)
    st.session_state[UPLOAD_ROUND_KEY] = st.session_state.get(UPLOAD_ROUND_KEY, 0) + 1


def open_in_view(view: str, layer: int, head: int, image_set: ImageSet, image_id: str | None = None) -> None:
    """Make the head the focus head (and the image the focus image, when the set has it) and open the view."""
    selection.set_focus_head(layer, head)
    if image_id is not None and any(item.id == image_id for item in image_set.images):
        selection.set_focus_image(image_id)
    if view == "explanations":  # the maps the finding describes: the mean of the heads, nothing discarded
        st.session_state["explain_fusion"], st.session_state["explain_discard"] = "mean", 0.0
    navigation.switch_to(VIEW_PAGES[view][0])

