"""AppTest of the study library as the pages use it: save on the Case study page, list, filter, open,
compare, download and delete on the Library page, and every way the library can fail or be off.

Each test has a library of its own (``HEADSCOPE_LIBRARY`` in its temporary folder), read back with
``core.study.library.Library`` to see what the pages wrote. The Case study page's live study is the
small study (``conftest.small_study``): the save form is under test here, not the two minutes the
demo set's own study takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from core.study.bundle import load_bundle, save_bundle
from core.study.library import Library
from helpers.app import assert_clean, new_session
from helpers.data import DATA
from helpers.markdown import assert_text_only, shown
from ui import casestudy
from ui import compare as compare_state

TIMEOUT = 300
CASE_PAGE = "pages/4_Case_Study.py"
COMPARE_PAGE = "pages/6_Compare.py"
LIBRARY_PAGE = "pages/7_Library.py"
IMPORTANCE_PAGE = "pages/1_Head_Importance.py"
V3 = DATA / "bundle_v3_demo.zip"
V4 = DATA / "bundle_v4_demo.zip"
SAVE_BUTTON = "Save to the library"
HOSTILE_TITLE = "**bold** [x](http://evil.example) <b>x</b> $x$"
OFF = "The study library is off on this server (HEADSCOPE_LIBRARY=off)."


@pytest.fixture(scope="module")
def small_bundle(small_study) -> bytes:
    return save_bundle(small_study)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Each file a download button with bytes registered, by its file name."""
    files: dict[str, bytes] = {}
    real = MediaFileManager.add

    def recording(self, path_or_data, mimetype, coordinates, file_name=None, is_for_static_download=False) -> str:
        if file_name is not None and isinstance(path_or_data, bytes):
            files[file_name] = path_or_data
        return real(self, path_or_data, mimetype, coordinates, file_name, is_for_static_download)

    monkeypatch.setattr(MediaFileManager, "add", recording)
    return files


def _save(at: AppTest, title: str, note: str = "") -> None:
    """Type a title and a note in the Case study page's library form and submit it."""
    at.text_input(key="case_library_title").set_value(title)
    at.text_area(key="case_library_note").set_value(note)
    next(b for b in at.button if b.label == SAVE_BUTTON).click().run()
    assert not at.exception, at.exception


def _variant(data: bytes, created: str, **model) -> bytes:
    """Another bundle of the same study: another creation time (and model facts), so other bytes and another id."""
    study = load_bundle(data)
    manifest = {**study.manifest, "created": created, "model": {**study.manifest["model"], **model}}
    return save_bundle(dataclasses.replace(study, manifest=manifest))


def _titles(at: AppTest) -> list[str]:
    """The titles the Library page's table lists, in its order."""
    return list(at.dataframe[0].value["title"]) if at.dataframe else []


def _library_buttons(at: AppTest) -> list[str]:
    return [b.key for b in at.button if b.key and b.key.startswith("library_") and b.key != "library_add"]


def _texts(elements) -> list[str]:
    return [shown(e.value) for e in elements]


def test_a_study_saved_on_the_case_study_page_opens_from_the_library_in_another_session(
    folder: Path, live_study, small_bundle: bytes, downloads: dict[str, bytes]
) -> None:
    study_id = hashlib.sha256(small_bundle).hexdigest()
    saver = new_session(CASE_PAGE)
    _save(saver, "Digits under pruning", "Three heads carry the digits.")
    assert_clean(saver)
    assert _texts(saver.success) == [
        "Saved to the library as 'Digits under pruning'; the sidebar's link opens it."
    ]
    assert saver.query_params["study"] == study_id  # the saved study is the page's: its link names it

    library = Library(folder)
    [entry] = library.entries()
    assert (entry.id, entry.title, entry.note, entry.model_name, entry.images) == (
        study_id, "Digits under pruning", "Three heads carry the digits.", "demo", 24,
    )
    assert library.read(study_id) == small_bundle and (folder / f"{study_id}.zip").read_bytes() == small_bundle

    reader = new_session(LIBRARY_PAGE)  # another browser
    assert_clean(reader)
    assert _titles(reader) == ["Digits under pruning"]
    assert "#### Digits under pruning" in _texts(reader.markdown)
    assert "Three heads carry the digits." in _texts(reader.markdown)
    assert downloads[f"headscope-{study_id[:12]}.zip"] == small_bundle

    reader.button(key="library_open").click().run()
    assert_clean(reader)
    assert [t.value for t in reader.title] == ["Case study"]
    [info] = _texts(reader.info)
    assert info.startswith("Showing the library study **Digits under pruning**: demo on 24 digits, created ")
    opened = reader.session_state[casestudy.OPENED_KEY]
    assert opened.digest == study_id and save_bundle(opened.study) == library.read(study_id)
    assert reader.query_params["study"] == study_id


def test_filters_match_text_literally_and_by_model(folder: Path) -> None:
    library = Library(folder)
    library.add(V4.read_bytes(), title="Baseline 100% run", note="first pass")
    library.add(V3.read_bytes(), title="snake_case probe", note="**markdown** [x](y)")
    library.add(
        _variant(V4.read_bytes(), "2026-01-02T03:04:05+00:00", name="vit-other", key="vit-other-0123456789abcdef"),
        title="Other model", note="plain words",
    )
    at = new_session(LIBRARY_PAGE)
    assert_clean(at)
    assert sorted(_titles(at)) == ["Baseline 100% run", "Other model", "snake_case probe"]
    assert at.selectbox(key="library_model").options == ["All models", "demo", "vit-other"]

    for text, expected in (
        ("%", ["Baseline 100% run"]),  # a LIKE pattern would match every study
        ("_", ["snake_case probe"]),
        ("**markdown**", ["snake_case probe"]),
        ("[x](y)", ["snake_case probe"]),
        ("FIRST", ["Baseline 100% run"]),
        ("vit-other", ["Other model"]),  # the model's name
        ("  baseline  ", ["Baseline 100% run"]),
    ):
        at.text_input(key="library_filter").set_value(text).run()
        assert_clean(at)
        assert _titles(at) == expected, text
        assert len(at.selectbox(key="library_pick").options) == len(expected)

    at.text_input(key="library_filter").set_value("").run()
    at.selectbox(key="library_model").set_value("vit-other").run()
    assert _titles(at) == ["Other model"]
    at.selectbox(key="library_model").set_value("demo").run()
    assert sorted(_titles(at)) == ["Baseline 100% run", "snake_case probe"]
    at.text_input(key="library_filter").set_value("Other").run()  # a title of the other model only
    assert_clean(at)
    assert _titles(at) == [] and _texts(at.info) == ["No study matches."]
    assert not _library_buttons(at)


def test_delete_asks_first_then_removes_the_entry_and_its_file(folder: Path) -> None:
    entry = Library(folder).add(V4.read_bytes(), title="Old run")
    path = folder / f"{entry.id}.zip"
    at = new_session(LIBRARY_PAGE)
    at.button(key="library_delete_ask").click().run()
    assert_clean(at)
    assert _texts(at.warning) == ["Delete 'Old run' for everyone who uses this server? This cannot be undone."]
    at.button(key="library_delete_no").click().run()
    assert_clean(at)
    assert not at.warning and [e.id for e in Library(folder).entries()] == [entry.id] and path.is_file()
    assert "library_delete_ask" in _library_buttons(at)

    at.button(key="library_delete_ask").click().run()
    at.button(key="library_delete_yes").click().run()
    assert_clean(at)
    assert _texts(at.success) == ["Deleted 'Old run'."]
    assert Library(folder).entries() == [] and not path.exists()
    assert _texts(at.info) == ["The library holds no studies yet."]


def test_compare_sides_from_the_library_page_and_from_the_compare_page(folder: Path, small_bundle: bytes) -> None:
    library = Library(folder)
    v4 = library.add(V4.read_bytes(), title="Eight digits")
    small = library.add(small_bundle, title="Twenty-four digits")

    at = new_session(LIBRARY_PAGE)
    at.selectbox(key="library_pick").set_value(v4.id).run()
    at.button(key="library_compare_A").click().run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Compare"]
    assert at.radio(key=compare_state.source_key("A")).value == compare_state.LIBRARY
    assert _texts(at.info) == ["Give side B a result bundle or a library study to compare."]
    at.switch_page(LIBRARY_PAGE).run()
    at.selectbox(key="library_pick").set_value(small.id).run()
    at.button(key="library_compare_B").click().run()
    assert_clean(at)
    assert [t.value for t in at.title] == ["Compare"] and "What changed" in [s.value for s in at.subheader]
    assert at.query_params["a"] == v4.id and at.query_params["b"] == small.id

    own = new_session(COMPARE_PAGE)  # the Compare page's own pickers, in another session
    for side, entry in (("A", v4), ("B", small)):
        own.radio(key=compare_state.source_key(side)).set_value(compare_state.LIBRARY).run()
        picker = next(s for s in own.selectbox if s.label == f"Library study for side {side}")
        assert sorted(picker.options) == [
            f"Eight digits · demo · {v4.saved[:10]}", f"Twenty-four digits · demo · {small.saved[:10]}"
        ]
        picker.set_value(entry.id).run()
        assert_clean(own)
        assert own.query_params[side.lower()] == entry.id  # the link names the side in the run that picked it
    assert "What changed" in [s.value for s in own.subheader]
    assert own.session_state[compare_state.library_key("A")] == v4.id
    assert own.session_state[compare_state.library_key("B")] == small.id


def _overwritten(path: Path) -> None:
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))  # other bytes, the same size


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def _deleted(path: Path) -> None:
    path.unlink()


CHANGED_UNSEEN = "The file of study 'Eight digits' changed on disk since it was saved, so it is not opened."
CHANGED = "The file of this study changed on disk since it was saved."
MISSING = "The file of this study is missing from the library folder."


@pytest.mark.parametrize(
    "damage, state, sentence",
    [(_overwritten, "ok", CHANGED_UNSEEN), (_truncated, "damaged", CHANGED), (_deleted, "damaged", MISSING)],
    ids=["overwritten", "truncated", "deleted"],
)
def test_a_damaged_study_is_one_sentence_and_can_only_be_deleted(
    folder: Path, live_study, damage, state: str, sentence: str
) -> None:
    entry = Library(folder).add(V4.read_bytes(), title="Eight digits")
    damage(folder / f"{entry.id}.zip")

    at = new_session(LIBRARY_PAGE)
    assert not at.exception, at.exception
    assert list(at.dataframe[0].value["state"]) == [state]  # listing compares sizes only; opening hashes
    assert _texts(at.error) == [f"{sentence} Only deleting it is offered."]
    assert _library_buttons(at) == ["library_delete_ask"]
    assert not [b for b in at.get("download_button") if b.label in ("Bundle", "Report")]
    at.button(key="library_delete_ask").click().run()
    at.button(key="library_delete_yes").click().run()
    assert_clean(at)
    assert Library(folder).entries() == [] and not (folder / f"{entry.id}.zip").exists()


@pytest.mark.parametrize(
    "damage, sentence",
    [(_overwritten, CHANGED_UNSEEN), (_truncated, CHANGED), (_deleted, MISSING)],
    ids=["overwritten", "truncated", "deleted"],
)
def test_a_link_to_a_damaged_study_says_why_it_is_not_opened(folder: Path, live_study, damage, sentence: str) -> None:
    entry = Library(folder).add(V4.read_bytes(), title="Eight digits")
    damage(folder / f"{entry.id}.zip")
    at = new_session(CASE_PAGE, {"study": entry.id, "head": "L1H4"})
    assert_clean(at)
    assert _texts(at.warning) == [f"The link's study is not opened. {sentence}"]
    assert not at.info  # the live study is shown, not a library one
    assert at.session_state["focus"].head_label == "L1H4"  # the rest of the link applies
    assert "study" not in at.query_params


def test_a_save_past_the_quota_says_how_much_is_used_and_adds_nothing(
    folder: Path, live_study, small_bundle: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADSCOPE_LIBRARY_MB", "1")
    library = Library(folder)  # filled under the default quota, as before the server's was lowered
    used = 0
    for day in range(1, 32):
        data = _variant(V4.read_bytes(), f"2026-01-{day:02d}T00:00:00+00:00")
        if used + len(data) > 2**20:
            break
        library.add(data, title=f"Run {day}")
        used += len(data)
    assert used + len(small_bundle) > 2**20
    count = len(library.entries())

    at = new_session(CASE_PAGE)
    _save(at, "One too many")
    assert not at.exception
    [error] = _texts(at.error)
    found = re.fullmatch(
        r"Saving this study \(([\d.]+) KB\) would take the library past its limit of 1 MB: ([\d.]+) KB is used by "
        rf"{count} studies\. Delete studies on the Library page \(or with python -m core library remove\) or raise "
        r"HEADSCOPE_LIBRARY_MB\.",
        error,
    )
    assert found, error
    assert float(found[1]) == pytest.approx(len(small_bundle) / 1024, abs=0.05)
    assert float(found[2]) == pytest.approx(used / 1024, abs=0.05)
    assert len(library.entries()) == count and "One too many" not in [e.title for e in library.entries()]
    assert not at.success


def test_a_library_that_cannot_be_written_is_one_sentence_and_the_pages_still_work(
    tmp_path: Path, live_study, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HEADSCOPE_LIBRARY", str(blocker / "library"))

    at = new_session(CASE_PAGE)
    _save(at, "Nowhere to go")
    assert not at.exception
    [error] = _texts(at.error)
    assert error.startswith("The study library at ") and error.endswith(
        " cannot be written (Not a directory); HeadScope works without it. "
        "Set HEADSCOPE_LIBRARY to a writable folder, or to off."
    ), error
    assert not at.success and blocker.read_text() == "not a folder"

    at.switch_page(LIBRARY_PAGE).run()
    assert_clean(at)
    assert _texts(at.info) == ["The library holds no studies yet."]
    at.switch_page(COMPARE_PAGE).run()
    at.radio(key=compare_state.source_key("A")).set_value(compare_state.LIBRARY).run()
    assert_clean(at)
    assert _texts(at.info)[0].startswith("The library holds no studies yet")
    at.switch_page("streamlit_app.py").run()
    assert_clean(at)


@pytest.mark.slow  # the demo set's exact sweep, the first time in the process
def test_head_importance_runs_clean_when_the_library_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("HEADSCOPE_LIBRARY", str(blocker / "library"))
    at = new_session(IMPORTANCE_PAGE)
    assert_clean(at)
    assert [t.value for t in at.title] == ["Head importance"] and at.get("vega_lite_chart")
    assert not at.warning


def test_an_off_library_says_so_on_every_page_that_offers_it(live_study, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEADSCOPE_LIBRARY", "off")

    at = new_session(LIBRARY_PAGE)
    assert_clean(at)
    assert _texts(at.info) == [OFF] and not at.get("file_uploader") and not at.dataframe

    at.switch_page(CASE_PAGE).run()
    assert_clean(at)
    texts = [m.value for m in at.markdown]
    assert "##### Save to the library" in texts
    assert OFF in _texts(at.caption)
    assert not [b for b in at.button if b.label == SAVE_BUTTON] and not at.text_area

    at.switch_page(COMPARE_PAGE).run()
    at.radio(key=compare_state.source_key("B")).set_value(compare_state.LIBRARY).run()
    assert_clean(at)
    assert OFF in _texts(at.info)


def test_a_file_that_is_no_bundle_is_refused_in_one_sentence(folder: Path) -> None:
    at = new_session(LIBRARY_PAGE)
    at.get("file_uploader")[0].set_value(("notes.zip", b"meeting notes, not a bundle", "application/zip"))
    at.run()
    at.button(key="library_add").click().run()
    assert not at.exception
    assert _texts(at.error) == [(
        "This file is not a readable ZIP archive, so it is not a HeadScope bundle (it may be truncated); download or "
        "save it again."
    )]
    assert not at.success and Library(folder).entries() == []
    assert not folder.exists() or not list(folder.glob("*.zip"))


def test_a_hostile_title_is_shown_as_text_on_the_library_and_case_study_pages(folder: Path, live_study) -> None:
    at = new_session(CASE_PAGE)
    _save(at, HOSTILE_TITLE, "a note with <script>alert(1)</script>")
    assert_clean(at)
    [success] = [s.value for s in at.success]
    assert_text_only(success, HOSTILE_TITLE)
    assert shown(success) == f"Saved to the library as '{HOSTILE_TITLE}'; the sidebar's link opens it."
    [info] = [i.value for i in at.info]
    assert_text_only(info, HOSTILE_TITLE)
    assert shown(info).startswith(f"Showing the library study **{HOSTILE_TITLE}**: demo on 24 digits")

    at.switch_page(LIBRARY_PAGE).run()
    assert_clean(at)
    heading = next(m.value for m in at.markdown if m.value.startswith("#### "))
    assert_text_only(heading, HOSTILE_TITLE)
    assert shown(heading) == f"#### {HOSTILE_TITLE}"
    note = next(m.value for m in at.markdown if "script" in m.value)
    assert_text_only(note, "a note with <script>alert(1)</script>")
    assert _titles(at) == [HOSTILE_TITLE]  # a table cell is text already

    at.button(key="library_open").click().run()  # and opened from the library
    assert_clean(at)
    [info] = [i.value for i in at.info]
    assert_text_only(info, HOSTILE_TITLE)
