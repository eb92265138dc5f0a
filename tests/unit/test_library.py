"""The study library on the server: saving, listing, opening and removing studies, from several processes at once.

Bundles are the small study's, made distinct by their manifest's "created" time (so they hash
differently and still open). Concurrency and crashes are real processes: two that save at once,
and ones killed with SIGKILL in the middle of a save.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

import core.study.library as library_module
from core.errors import (
    BundleRejected,
    HeadScopeError,
    InvalidSetting,
    LibraryFull,
    LibraryUnavailable,
    StudyDamaged,
    StudyNotFound,
    human_size,
)
from core.study.bundle import save_bundle
from core.study.casestudy import TABLES
from core.study.library import (
    INDEX,
    Library,
    default_folder,
    library_from_environment,
)
from helpers.bundles import edited_bundle
from helpers.data import ROOT

MB = 2**20
SAVED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")
INDEX_FILES = {INDEX, f"{INDEX}-wal", f"{INDEX}-shm"}
MISSING = "The file of this study is missing from the library folder."
CHANGED = "The file of this study changed on disk since it was saved."
START_SECONDS = 180  # a child imports core (torch, pandas, pyarrow) on a loaded 2-core machine


@pytest.fixture(scope="module")
def bundle(small_study) -> bytes:
    return save_bundle(small_study)


def created(n: int) -> str:
    return (datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=n)).isoformat()


def variant(data: bytes, n: int, **manifest_edits) -> bytes:
    """The bundle created ``n`` seconds later (and other manifest edits): other bytes, still a bundle."""

    def edit(manifest: dict) -> None:
        manifest["created"] = created(n)
        for part, values in manifest_edits.items():
            manifest[part].update(values)

    return edited_bundle(data, manifest=edit)


@pytest.fixture
def library(tmp_path) -> Library:
    return Library(tmp_path / "library")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_names(library: Library) -> set[str]:
    return {path.name for path in library.folder.iterdir()} - INDEX_FILES


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert isinstance(err.value, HeadScopeError)
    assert message[0].isupper() and message.endswith("."), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


# --- saving, listing, opening, removing ------------------------------------------------------


def test_a_saved_study_is_listed_got_and_opened_as_it_was(library, bundle, small_study):
    entry = library.add(bundle, title="  Digits baseline ", note="first run")

    assert entry.id == sha(bundle) and len(entry.id) == 64
    assert (entry.title, entry.note) == ("Digits baseline", "first run")
    assert (entry.model_name, entry.model_key) == ("demo", small_study.manifest["model"]["key"])
    assert (entry.image_set_title, entry.images) == ("24 digits", 24)
    assert entry.metrics == ("probability", "accuracy", "layer_impact", "output_impact", "taylor")
    assert (entry.format_version, entry.size, entry.damaged) == (4, len(bundle), None)
    assert SAVED.fullmatch(entry.saved), entry.saved
    assert (library.folder / f"{entry.id}.zip").read_bytes() == bundle
    assert oct((library.folder / f"{entry.id}.zip").stat().st_mode & 0o777) == "0o644"

    assert library.get(entry.id) == entry
    assert library.entries() == [entry]
    assert library.models() == ["demo"]
    assert library.usage() == (len(bundle), 1)
    assert library.read(entry.id) == bundle
    opened = library.open(entry.id, model_key=small_study.manifest["model"]["key"])
    for name in TABLES:
        pd.testing.assert_frame_equal(opened.tables[name], small_study.tables[name])
    assert opened.manifest == small_study.manifest


def test_nothing_touches_the_disk_before_the_first_save(tmp_path):
    library = Library(tmp_path / "not" / "yet")
    assert (library.entries(), library.models(), library.usage()) == ([], [], (0, 0))
    with pytest.raises(StudyNotFound):
        library.get("0" * 64)
    with pytest.raises(StudyNotFound):
        library.remove("0" * 64)
    with pytest.raises(StudyNotFound):
        library.find("0" * 8)
    assert not (tmp_path / "not").exists()


def test_studies_are_listed_newest_first_and_filtered_literally(library, bundle, monkeypatch):
    times = iter(["2026-01-01T10:00:00+00:00", "2026-01-01T11:00:00+00:00", "2026-01-01T12:00:00+00:00"])
    monkeypatch.setattr(library_module, "_now", lambda: next(times))
    first = library.add(variant(bundle, 1), title="Baseline run", note="50% of the heads, under_score")
    second = library.add(variant(bundle, 2), title="Shuffled labels", note='it\'s "quoted", `code` and **bold**')
    third = library.add(variant(bundle, 3, model={"name": "ViT-B/16 [edited]"}), title="Fine-tuned")

    def titles(*args, **kwargs) -> list[str]:
        return [entry.title for entry in library.entries(*args, **kwargs)]

    assert [entry.id for entry in library.entries()] == [third.id, second.id, first.id]
    assert [entry.saved for entry in library.entries()] == [
        "2026-01-01T12:00:00+00:00", "2026-01-01T11:00:00+00:00", "2026-01-01T10:00:00+00:00",
    ]
    assert titles("BASELINE") == titles("baseline") == titles("  baseline ") == ["Baseline run"]
    assert titles("under_score") == ["Baseline run"]  # in the note
    # characters with a meaning in SQL LIKE, in quotes or in Markdown match only themselves
    for literal in ("%", "_", "50%"):
        assert titles(literal) == ["Baseline run"], literal
    for literal in ("'", "it's", '"quoted"', "`code`", "**bold**"):
        assert titles(literal) == ["Shuffled labels"], literal
    assert titles("[edited]") == ["Fine-tuned"]  # the model name
    assert titles("24 DIGITS") == ["Fine-tuned", "Shuffled labels", "Baseline run"]  # the image set's title
    assert titles("nothing like this") == []
    assert titles(model="demo") == ["Shuffled labels", "Baseline run"]
    assert titles(model="Demo") == titles(model="dem") == []
    assert titles("shuffled", model="demo") == ["Shuffled labels"]
    assert titles("shuffled", model="ViT-B/16 [edited]") == []
    assert library.models() == ["ViT-B/16 [edited]", "demo"]
    assert library.usage() == (sum(entry.size for entry in (first, second, third)), 3)


def test_the_same_bytes_saved_twice_are_one_study(library, bundle):
    first = library.add(bundle, title="One")
    again = library.add(bundle, title="Two", note="another session")
    assert again == first and again.title == "One"
    assert library.entries() == [first]
    assert library.usage() == (len(bundle), 1)
    assert folder_names(library) == {f"{first.id}.zip"}


def test_remove_deletes_the_row_and_the_file(library, bundle):
    kept = library.add(variant(bundle, 1), title="Kept")
    gone = library.add(variant(bundle, 2), title="Gone")
    library.remove(gone.id)
    assert library.entries() == [kept]
    assert folder_names(library) == {f"{kept.id}.zip"}
    assert library.usage() == (kept.size, 1)
    for call in (library.get, library.read, library.open, library.remove):
        with pytest.raises(StudyNotFound) as caught:
            call(gone.id)
        assert one_sentence(caught) == f"No study in the library has the id '{gone.id}'; it may have been deleted."


def test_a_study_saved_again_between_the_two_steps_of_a_removal_keeps_its_file(library, bundle, monkeypatch):
    entry = library.add(bundle, title="Raced")
    real = library_module._write_lock
    steps = []

    @contextlib.contextmanager
    def racing(connection):
        steps.append(connection)
        if len(steps) == 2:  # the row is deleted, the file not yet: another session saves the study again
            monkeypatch.setattr(library_module, "_write_lock", real)
            Library(library.folder).add(bundle, title="Saved again")
        with real(connection):
            yield

    monkeypatch.setattr(library_module, "_write_lock", racing)
    library.remove(entry.id)
    assert len(steps) == 2
    assert [(e.title, e.damaged) for e in library.entries()] == [("Saved again", None)]
    assert library.read(entry.id) == bundle


def test_find_takes_a_unique_prefix_of_eight_hex_characters(library, bundle):
    entry = library.add(bundle, title="Prefix")
    assert library.find(entry.id[:8]) == entry
    assert library.find(f" {entry.id[:12].upper()} ") == entry
    assert library.find(entry.id) == entry
    for short in (entry.id[:7], "", "not-hex!", "g" * 10):
        with pytest.raises(StudyNotFound) as caught:
            library.find(short)
        assert "give at least 8 of the hex characters" in one_sentence(caught)
    unknown = "0" * 8 if not entry.id.startswith("0" * 8) else "f" * 8
    with pytest.raises(StudyNotFound) as caught:
        library.find(unknown)
    assert one_sentence(caught) == f"No study in the library has an id starting with '{unknown}'."


@pytest.mark.parametrize(
    ("title", "note", "match"),
    [
        ("", "", "Give the study a title"),
        (" \t\n ", "", "Give the study a title"),
        ("x" * 201, "", "title is at most 200 characters; this one has 201"),
        ("ok", "n" * 2001, "note is at most 2,000 characters; this one has 2,001"),
        ("bad \udcff bytes", "", "title holds bytes that are not text"),
        ("ok", "bad \udcff bytes", "note holds bytes that are not text"),
    ],
)
def test_a_title_or_note_that_cannot_be_saved_is_refused_before_anything_is_written(library, bundle, title, note, match):
    with pytest.raises(InvalidSetting, match=match) as caught:
        library.add(bundle, title=title, note=note)
    one_sentence(caught)
    assert not library.folder.exists()


def test_the_longest_title_and_note_are_kept_whole(library, bundle):
    entry = library.add(bundle, title="t" * 200, note="n" * 2000)
    assert library.get(entry.id).title == "t" * 200 and library.get(entry.id).note == "n" * 2000


def test_a_file_that_is_no_bundle_is_refused_and_nothing_is_written(library, bundle):
    with pytest.raises(BundleRejected, match="not a readable ZIP archive"):
        library.add(b"not a bundle at all", title="Foreign")
    assert not library.folder.exists()
    kept = library.add(bundle, title="Real")
    with pytest.raises(BundleRejected):
        library.add(bundle[:5000], title="Truncated")
    assert library.entries() == [kept]
    assert folder_names(library) == {f"{kept.id}.zip"}


# --- damage ------------------------------------------------------------------------------------


def test_a_file_overwritten_with_as_many_other_bytes_is_listed_but_not_opened(library, bundle):
    entry = library.add(bundle, title="Overwritten")
    other = bytearray(bundle)
    other[len(other) // 2] ^= 0xFF
    (library.folder / f"{entry.id}.zip").write_bytes(bytes(other))
    assert library.entries()[0].damaged is None  # listing compares sizes only
    sentence = "The file of study 'Overwritten' changed on disk since it was saved, so it is not opened."
    for call in (library.read, library.open):
        with pytest.raises(StudyDamaged) as caught:
            call(entry.id)
        assert one_sentence(caught) == sentence


def test_a_truncated_or_deleted_file_is_listed_damaged_and_can_be_removed(library, bundle):
    truncated = library.add(variant(bundle, 1), title="Truncated")
    deleted = library.add(variant(bundle, 2), title="Deleted")
    (library.folder / f"{truncated.id}.zip").write_bytes(variant(bundle, 1)[:1000])
    (library.folder / f"{deleted.id}.zip").unlink()

    damage = {entry.title: entry.damaged for entry in library.entries()}
    assert damage == {"Truncated": CHANGED, "Deleted": MISSING}
    assert library.get(deleted.id).damaged == MISSING
    with pytest.raises(StudyDamaged) as caught:
        library.read(truncated.id)
    assert "changed on disk since it was saved" in one_sentence(caught)
    with pytest.raises(StudyDamaged) as caught:
        library.open(deleted.id)
    assert one_sentence(caught) == "The file of study 'Deleted' is missing from the library folder, so it is not opened."

    library.remove(truncated.id)
    library.remove(deleted.id)
    assert library.entries() == [] and folder_names(library) == set()


def test_saving_a_damaged_study_again_restores_its_file(library, bundle):
    entry = library.add(bundle, title="Restored")
    (library.folder / f"{entry.id}.zip").unlink()
    assert library.add(bundle, title="Other title") == entry
    assert library.entries()[0].damaged is None and library.read(entry.id) == bundle


def test_a_study_that_no_longer_opens_is_damaged_but_one_of_another_model_is_refused_as_such(
    library, bundle, monkeypatch
):
    entry = library.add(bundle, title="Old")
    with pytest.raises(BundleRejected, match="This bundle was computed with model 'demo'") as caught:
        library.open(entry.id, model_key="other-0123456789abcdef", model_name="Other")
    assert not isinstance(caught.value, StudyDamaged)

    def refuse(*args, **kwargs):
        raise BundleRejected("The bundle is damaged (array 'sink' holds a number that is out of range); save it again.")

    monkeypatch.setattr(library_module, "load_bundle", refuse)  # as a stricter HeadScope would
    with pytest.raises(StudyDamaged) as caught:
        library.open(entry.id)
    assert one_sentence(caught) == (
        "The study 'Old' in the library no longer opens: The bundle is damaged (array 'sink' holds a number that "
        "is out of range); save it again."
    )


# --- limits and an unusable folder -------------------------------------------------------------


def test_a_save_past_the_quota_is_refused_with_what_is_used_and_writes_nothing(tmp_path, bundle):
    first, second = variant(bundle, 1), variant(bundle, 2)
    quota = len(first) + 1000
    library = Library(tmp_path / "library", quota_bytes=quota)
    kept = library.add(first, title="Fits")
    with pytest.raises(LibraryFull) as caught:
        library.add(second, title="Too much")
    assert one_sentence(caught) == (
        f"Saving this study ({human_size(len(second))}) would take the library past its limit of "
        f"{human_size(quota)}: {human_size(len(first))} is used by 1 study. Delete studies on the Library page "
        "(or with python -m core library remove) or raise HEADSCOPE_LIBRARY_MB."
    )
    assert library.entries() == [kept]
    assert folder_names(library) == {f"{kept.id}.zip"}  # no temporary file either
    assert library.add(first, title="Again") == kept  # the same study takes no more room


def test_the_quota_is_decided_again_under_the_write_lock(tmp_path, bundle, monkeypatch):
    """Another session may have saved since the first look: the check that counts is the one under the lock."""
    first, second = variant(bundle, 1), variant(bundle, 2)
    library = Library(tmp_path / "library", quota_bytes=len(first) + 1000)
    library.add(first, title="Fits")
    monkeypatch.setattr(Library, "usage", lambda self: (0, 0))  # the first look sees an empty library
    with pytest.raises(LibraryFull, match="is used by 1 study"):
        library.add(second, title="Too much")
    assert folder_names(library) == {f"{sha(first)}.zip"}


def test_a_study_over_the_cap_on_one_study_is_refused_before_it_is_read(tmp_path, bundle):
    library = Library(tmp_path / "library", max_study_bytes=len(bundle) - 1)
    with pytest.raises(LibraryFull) as caught:
        library.add(bundle, title="Large")
    assert one_sentence(caught) == (
        f"This study is {human_size(len(bundle))}; a study in the library is at most {human_size(len(bundle) - 1)}."
    )
    with pytest.raises(LibraryFull):  # not opened first: no BundleRejected
        library.add(b"x" * len(bundle), title="Large and foreign")
    assert not library.folder.exists()


def test_a_folder_that_cannot_be_created_makes_the_library_unavailable(tmp_path, bundle):
    (tmp_path / "file").write_text("a regular file")
    library = Library(tmp_path / "file" / "lib")
    with pytest.raises(LibraryUnavailable) as caught:
        library.add(bundle, title="Nowhere")
    message = one_sentence(caught)
    assert message.startswith("The study library at ")
    assert message.endswith(
        "cannot be written (Not a directory); HeadScope works without it. "
        "Set HEADSCOPE_LIBRARY to a writable folder, or to off."
    )
    assert (library.entries(), library.models(), library.usage()) == ([], [], (0, 0))
    assert (tmp_path / "file").read_text() == "a regular file"


def test_an_index_that_is_no_database_makes_the_library_unavailable(library, bundle):
    library.folder.mkdir()
    (library.folder / INDEX).write_bytes(b"not a database, " * 100)
    with pytest.raises(LibraryUnavailable) as caught:
        library.entries()
    assert "cannot be read (file is not a database)" in one_sentence(caught)
    with pytest.raises(LibraryUnavailable) as caught:
        library.add(bundle, title="Anything")
    assert "cannot be read (file is not a database)" in one_sentence(caught)  # it looks for the study first


@pytest.mark.parametrize(
    "hostile",
    ["", "../etc/passwd", "../etc/passwd.zip", "x" * 10_000, "L99H0", "g" * 64, "../" + "a" * 61, "a" * 63 + "\n",
     "/" + "a" * 63, "0" * 64],
    ids=["empty", "traversal", "traversal-zip", "long", "cell", "not-hex", "traversal-64", "newline", "absolute", "unknown"],
)
def test_a_hostile_id_is_not_found_and_touches_no_path(tmp_path, bundle, hostile):
    secret = tmp_path / "etc"
    secret.mkdir()
    for name in ("passwd", "passwd.zip"):
        (secret / name).write_text("root:x:0:0")
    library = Library(tmp_path / "library")
    entry = library.add(bundle, title="Kept")
    for call in (library.get, library.read, library.open, library.remove):
        with pytest.raises(StudyNotFound) as caught:
            call(hostile)
        message = one_sentence(caught)
        assert len(message) < 200 and message.startswith("No study in the library has the id '")
    assert [path.read_text() for path in sorted(secret.iterdir())] == ["root:x:0:0", "root:x:0:0"]
    assert library.entries() == [entry]
    assert folder_names(library) == {f"{entry.id}.zip"}


# --- leftovers, crashes and two processes at once -------------------------------------------


def test_a_save_sweeps_its_own_temporary_files_an_hour_old_and_nothing_else(library, bundle):
    kept = library.add(variant(bundle, 1), title="Kept")
    old, young = time.time() - 2 * 3600, time.time() - 60
    leftovers = {
        ".headscope-save-old.tmp": old, ".headscope-save-young.tmp": young,
        # a study file without its row (a crash before the commit, or an index moved away), and another
        # program's temporary file in a folder it shares: never the library's to delete
        f"{'a' * 64}.zip": old, f"{'b' * 64}.zip": young, ".session.tmp": old,
    }
    for name, when in leftovers.items():
        (library.folder / name).write_bytes(b"left over")
        os.utime(library.folder / name, (when, when))
    os.utime(library.folder / f"{kept.id}.zip", (old, old))  # a study's file is never a leftover
    (library.folder / "notes.txt").write_text("not the library's")
    os.utime(library.folder / "notes.txt", (old, old))

    added = library.add(variant(bundle, 2), title="Added")
    assert folder_names(library) == {
        f"{kept.id}.zip", f"{added.id}.zip", ".headscope-save-young.tmp", f"{'a' * 64}.zip", f"{'b' * 64}.zip",
        ".session.tmp", "notes.txt",
    }
    assert {entry.title for entry in library.entries()} == {"Added", "Kept"}


_SAVER = """
import sys, time
from pathlib import Path
from core.study.library import Library
folder, ready, go, *bundles = sys.argv[1:]
library = Library(folder)
Path(ready).touch()
while not Path(go).exists():
    time.sleep(0.005)
started = time.time()
for path in bundles:
    library.add(Path(path).read_bytes(), title=Path(path).stem)
print(started, time.time())
"""


def _child(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(path: Path, child: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while not path.exists():
        assert child.poll() is None, child.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_two_processes_saving_twenty_studies_each_at_once_leave_forty_whole_studies(tmp_path, bundle):
    files = []
    for n in range(40):
        path = tmp_path / f"study-{n:02d}.zip"
        path.write_bytes(variant(bundle, n))
        files.append(path)
    folder, go = tmp_path / "library", tmp_path / "go"
    children = [_child(_SAVER, folder, tmp_path / f"ready-{i}", go, *files[i::2]) for i in range(2)]
    try:
        for i, child in enumerate(children):
            _wait_for(tmp_path / f"ready-{i}", child)
        go.touch()  # both are imported and waiting
        spans = []
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err[-3000:]
            spans.append([float(value) for value in out.split()])
    finally:
        for child in children:
            child.kill()
    assert max(start for start, _ in spans) < min(end for _, end in spans)  # their saves overlapped

    library = Library(folder)
    entries = library.entries()
    expected = {sha(path.read_bytes()): path.stem for path in files}
    assert {entry.id: entry.title for entry in entries} == expected
    assert all(entry.damaged is None for entry in entries)
    assert library.usage() == (sum(path.stat().st_size for path in files), 40)
    assert folder_names(library) == {f"{study}.zip" for study in expected}  # no orphan, no temporary file
    assert INDEX in {path.name for path in folder.iterdir()}
    for entry in entries:
        assert library.open(entry.id).manifest["created"] == created(int(entry.title[-2:]))


_KILLED_SAVER = """
import sys, time
from pathlib import Path
import core.study.library as library
folder, marker, bundle, stage = sys.argv[1:]

def pause(*args):
    Path(marker).touch()
    time.sleep(600)

if stage == "commit":
    library._before_commit = pause  # renamed, row inserted, not committed
else:
    library.os.fsync = pause  # the temporary file written, not yet synced nor renamed
library.Library(folder).add(Path(bundle).read_bytes(), title="Killed")
"""


def _killed_mid_save(tmp_path: Path, bundle: bytes, stage: str) -> Library:
    """A library in which a process was killed (SIGKILL) at ``stage`` of saving ``bundle``."""
    path, marker = tmp_path / "study.zip", tmp_path / f"paused-{stage}"
    path.write_bytes(bundle)
    child = _child(_KILLED_SAVER, tmp_path / "library", marker, path, stage)
    try:
        _wait_for(marker, child)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    return Library(tmp_path / "library")


def test_a_process_killed_before_its_commit_leaves_no_study_and_the_study_can_be_saved_again(tmp_path, bundle):
    library = _killed_mid_save(tmp_path, bundle, "commit")
    assert folder_names(library) == {f"{sha(bundle)}.zip"}  # renamed, but no row points at it
    assert library.entries() == [] and library.usage() == (0, 0)
    with pytest.raises(StudyNotFound):
        library.get(sha(bundle))

    entry = library.add(bundle, title="Saved again")
    assert [(e.id, e.title, e.damaged) for e in library.entries()] == [(sha(bundle), "Saved again", None)]
    assert library.open(entry.id).manifest["model"]["name"] == "demo"
    assert folder_names(library) == {f"{entry.id}.zip"}


def test_a_process_killed_while_writing_leaves_only_a_temporary_file_that_is_swept_later(tmp_path, bundle):
    library = _killed_mid_save(tmp_path, bundle, "write")
    (leftover,) = folder_names(library)
    assert leftover.startswith(".headscope-save-") and leftover.endswith(".tmp")
    assert library.entries() == [] and library.usage() == (0, 0)

    entry = library.add(bundle, title="Saved again")
    assert folder_names(library) == {f"{entry.id}.zip", leftover}  # young: it could be a save under way
    an_hour_ago = time.time() - 3601
    os.utime(library.folder / leftover, (an_hour_ago, an_hour_ago))
    other = library.add(variant(bundle, 1), title="Another")
    assert folder_names(library) == {f"{entry.id}.zip", f"{other.id}.zip"}
    assert all(e.damaged is None for e in library.entries())


# --- the environment ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["off", "OFF", " Off "])
def test_the_library_is_off_when_the_environment_says_so(value):
    assert library_from_environment({"HEADSCOPE_LIBRARY": value, "HEADSCOPE_LIBRARY_MB": "not checked"}) is None


def test_the_environment_names_the_folder_and_the_quota(tmp_path, monkeypatch):
    library = library_from_environment({"HEADSCOPE_LIBRARY": f" {tmp_path / 'shared'} ", "HEADSCOPE_LIBRARY_MB": "10"})
    assert library.folder == tmp_path / "shared"
    assert (library.quota_bytes, library.max_study_bytes) == (10 * MB, 512 * MB)
    capped = library_from_environment({"HEADSCOPE_LIBRARY": str(tmp_path / "shared")}, max_study_bytes=200 * MB)
    assert (capped.quota_bytes, capped.max_study_bytes) == (2000 * MB, 200 * MB)
    monkeypatch.setenv("HEADSCOPE_LIBRARY", "off")
    assert library_from_environment() is None
    monkeypatch.setenv("HEADSCOPE_LIBRARY", str(tmp_path / "from-os"))
    assert library_from_environment().folder == tmp_path / "from-os"
    assert not (tmp_path / "shared").exists() and not (tmp_path / "from-os").exists()


def test_without_a_folder_the_library_is_in_the_users_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_folder() == tmp_path / "home" / ".local" / "share" / "headscope" / "library"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_folder() == tmp_path / "data" / "headscope" / "library"
    assert library_from_environment({}).folder == tmp_path / "data" / "headscope" / "library"
    assert library_from_environment({"HEADSCOPE_LIBRARY": "  "}).folder == tmp_path / "data" / "headscope" / "library"
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()


@pytest.mark.parametrize("value", ["abc", "0", "-5", "1e9x", "2.5", "１０"])
def test_a_quota_that_is_no_positive_whole_number_is_refused(tmp_path, value):
    with pytest.raises(InvalidSetting) as caught:
        library_from_environment({"HEADSCOPE_LIBRARY": str(tmp_path), "HEADSCOPE_LIBRARY_MB": value})
    assert one_sentence(caught) == (
        f"HEADSCOPE_LIBRARY_MB must be a whole number of megabytes such as 2000, not '{value}'."
    )


def test_a_long_quota_value_is_shown_shortened():
    with pytest.raises(InvalidSetting) as caught:
        library_from_environment({"HEADSCOPE_LIBRARY_MB": "x" * 5000})
    message = one_sentence(caught)
    assert len(message) < 200 and "x" * 79 + "…'" in message
