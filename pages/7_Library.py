"""Library: the studies saved on this server for the whole team; open, compare, download or delete one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import HeadScopeError, LibraryUnavailable, StudyDamaged, human_size
from core.study.library import MAX_NOTE_CHARS, MAX_TITLE_CHARS, LibraryEntry
from ui import casestudy, compare, export, library, navigation, sidebar
from ui.display import plain
from viz.report import render_report

st.set_page_config(page_title="Library · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("library")
ALL_MODELS = "All models"
DELETE_KEY = "library_delete"  # the id of the study whose deletion waits for its confirmation
NOTICE_KEY = "library_notice"  # (kind, sentence) of the last add or delete, shown once
GOTO_KEY = "library_goto_case"  # a study was opened for the Case study page: go there (after a rerun, too)
if st.session_state.pop(GOTO_KEY, False) and casestudy.opened_bundle() is not None:
    navigation.switch_to(casestudy.CASE_PAGE)  # opening a probe's study reran the page on its way


def _add_form() -> None:
    with st.expander("Add a result bundle", icon=":material/library_add:"):
        upload = st.file_uploader(
            "A result bundle (.zip) of any model, saved from the Case study page or by `python -m core analyze`",
            type=["zip"], key="library_upload",
        )
        title = st.text_input("Title", key="library_add_title", max_chars=MAX_TITLE_CHARS, placeholder="the file's name")
        note = st.text_area("Note (optional)", key="library_add_note", max_chars=MAX_NOTE_CHARS, height=80)
        if st.button("Add to the library", key="library_add", disabled=upload is None):
            with st.spinner("Checking the bundle…"):
                name = upload.name.removesuffix(".zip").removesuffix(".ZIP") or "uploaded bundle"
                entry, sentence = library.add(upload.getvalue(), title.strip() or name, note)
            # it may quote names from the file
            (st.error if entry is None else st.success)(plain(sentence))


def _table(entries: list[LibraryEntry]) -> None:
    rows = pd.DataFrame({
        "title": [entry.title for entry in entries],
        "model": [entry.model_name for entry in entries],
        "images": [entry.images for entry in entries],
        "saved": [entry.saved.replace("T", " ").removesuffix("+00:00") + " UTC" for entry in entries],
        "size": [human_size(entry.size) for entry in entries],
        "state": ["damaged" if entry.damaged else "ok" for entry in entries],
    })
    export.table(rows, "library studies", hide_index=True, width="stretch", height=min(400, 38 + 35 * len(rows)))


def _actions(entry: LibraryEntry) -> None:
    """What can be done with the picked study: open it, compare it, download it, delete it."""
    with st.container(border=True):
        st.markdown(f"#### {plain(entry.title)}")
        if entry.note:
            st.markdown(plain(entry.note))
        st.caption(
            f"{plain(entry.model_name)} on {plain(entry.image_set_title)} · {entry.images} images · ranked by "
            f"{', '.join(m.replace('_', ' ') for m in entry.metrics)} · bundle format {entry.format_version}, "
            f"{human_size(entry.size)} · saved {entry.saved} · id {entry.id[:12]}"
        )
        try:
            if entry.damaged:
                raise StudyDamaged(entry.damaged)
            _, data, study = library.opened_study(entry.id)
        except HeadScopeError as err:
            st.error(plain(f"{err} Only deleting it is offered."))
        else:
            _open_buttons(entry, data, study)
        _delete(entry)


def _open_buttons(entry: LibraryEntry, data: bytes, study) -> None:
    columns = st.columns(5)
    if columns[0].button("Open in Case study", key="library_open", icon=":material/summarize:"):
        st.session_state[GOTO_KEY] = True
        error = casestudy.open_library_study(entry.id)
        if error:
            st.session_state.pop(GOTO_KEY, None)
            st.error(plain(error))
        else:
            st.session_state.pop(GOTO_KEY, None)
            navigation.switch_to(casestudy.CASE_PAGE)
    for side, column in zip(("A", "B"), columns[1:3]):
        if column.button(f"Compare as side {side}", key=f"library_compare_{side}", icon=":material/compare_arrows:"):
            error = compare.use_library_study(side, entry.id)
            if error:
                st.error(plain(error))
            else:
                navigation.switch_to(compare.COMPARE_PAGE)
    stem = f"headscope-{entry.id[:12]}"
    columns[3].download_button(
        "Bundle", data=data, file_name=f"{stem}.zip", mime="application/zip", icon=":material/folder_zip:",
        key="library_bundle", on_click="ignore", help="The study's result bundle, as saved.",
    )
    columns[4].download_button(
        "Report", data=lambda: render_report(study), file_name=f"{stem}.html", mime="text/html",
        icon=":material/description:", key="library_report", on_click="ignore",
        help="The case study's HTML report: every chart, image and number in one file that opens with no network.",
    )


def _delete(entry: LibraryEntry) -> None:
    if st.session_state.get(DELETE_KEY) != entry.id:
        st.button("Delete…", key="library_delete_ask", on_click=lambda: st.session_state.update({DELETE_KEY: entry.id}))
        return
    st.warning(plain(f"Delete '{entry.title}' for everyone who uses this server? This cannot be undone."))
    yes, no = st.columns(2)
    if yes.button("Delete for good", key="library_delete_yes", type="primary"):
        st.session_state.pop(DELETE_KEY, None)
        shelf, why = library.current()
        try:
            if shelf is None:
                raise LibraryUnavailable(why or library.OFF_SENTENCE)
            shelf.remove(entry.id)
        except HeadScopeError as err:
            st.session_state[NOTICE_KEY] = ("error", str(err))
        else:
            st.session_state[NOTICE_KEY] = ("success", f"Deleted '{entry.title}'.")
        st.rerun()
    no.button("Keep it", key="library_delete_no", on_click=lambda: st.session_state.pop(DELETE_KEY, None))


st.title("Library")
st.caption(
    "The studies saved on this server, for the whole team. Open one on the Case study page, put it on a side of "
    "the Compare page, or download its bundle or report. Save a study from the Case study page, add a bundle below, "
    "or publish one from a batch job with `python -m core library add results.zip --title ...`."
)
shelf, why = library.current()
if shelf is None:
    st.info(plain(why))
    st.stop()
kind, sentence = st.session_state.pop(NOTICE_KEY, (None, None))
if kind:
    (st.error if kind == "error" else st.success)(plain(sentence))
_add_form()
try:
    st.caption(library.usage_sentence(shelf))
    f1, f2 = st.columns([2, 1])
    text = f1.text_input("Filter", key="library_filter", placeholder="words from a title, note, model or image set")
    model = f2.selectbox("Model", [ALL_MODELS, *shelf.models()], key="library_model")
    entries = shelf.entries(text, None if model == ALL_MODELS else model)
except HeadScopeError as err:  # the index cannot be read
    st.error(plain(str(err)))
    st.stop()
if not entries:
    st.info("No study matches." if text or model != ALL_MODELS else "The library holds no studies yet.")
    st.stop()
_table(entries)
by_id = {entry.id: entry for entry in entries}
picked = st.selectbox(
    "Study", list(by_id), key="library_pick",
    format_func=lambda study_id: library.entry_label(by_id[study_id]),
)
_actions(by_id[picked])
