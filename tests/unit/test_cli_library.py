"""The command line's study library (``python -m core library add|list|remove``) and what it says about bad input."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from core.__main__ import EXIT_BAD_INPUT, main
from core.errors import human_size
from core.study.bundle import save_bundle
from core.study.library import INDEX
from helpers.bundles import edited_bundle
from helpers.cli import one_error_line


@pytest.fixture(scope="module")
def bundles(small_study, tmp_path_factory) -> list[Path]:
    """Two bundles of the small study that differ in their "created" time."""
    folder = tmp_path_factory.mktemp("bundles")
    data = save_bundle(small_study)
    paths = []
    for n in range(2):
        path = folder / f"study-{n}.zip"
        path.write_bytes(edited_bundle(data, manifest=lambda manifest, n=n: manifest.update(created=f"2020-01-0{n + 1}")))
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def _no_library_from_the_environment(monkeypatch):
    monkeypatch.delenv("HEADSCOPE_LIBRARY", raising=False)
    monkeypatch.delenv("HEADSCOPE_LIBRARY_MB", raising=False)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _out_lines(capsys) -> list[str]:
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


def test_add_list_and_remove_round_trip(bundles, tmp_path, capsys):
    folder, path = tmp_path / "library", bundles[0]
    study, size = sha(path), path.stat().st_size
    assert main(["library", "add", str(path), "--title", "Nightly digits", "--note", "from cron", "--library", str(folder)]) == 0
    assert _out_lines(capsys) == [f'Added {study} "Nightly digits" (demo, 24 images, {human_size(size)}) to {folder}.']
    assert (folder / f"{study}.zip").read_bytes() == path.read_bytes()

    assert main(["library", "add", str(path), "--title", "Other title", "--library", str(folder)]) == 0
    assert _out_lines(capsys) == [f'Already in the library: {study} "Nightly digits".']

    assert main(["library", "list", "--library", str(folder)]) == 0
    (line, usage) = _out_lines(capsys)
    assert line.startswith(f"{study[:12]}  20") and line.endswith(f"  demo  24 images  {human_size(size)}  Nightly digits")
    assert usage == f"1 study, {size / 2**20:.1f} of 2000 MB."

    assert main(["library", "remove", study[:10], "--library", str(folder)]) == 0
    assert _out_lines(capsys) == [f'Removed {study} "Nightly digits".']
    assert not (folder / f"{study}.zip").exists()
    assert main(["library", "list", "--library", str(folder)]) == 0
    assert _out_lines(capsys) == [f"The library at {folder} holds no studies."]


def test_list_filters_and_marks_damaged_studies(bundles, tmp_path, capsys):
    folder = tmp_path / "library"
    for path, title in zip(bundles, ("Baseline", "Shuffled labels")):
        assert main(["library", "add", str(path), "--title", title, "--library", str(folder)]) == 0
    capsys.readouterr()
    total = sum(path.stat().st_size for path in bundles)

    assert main(["library", "list", "--filter", "SHUFFLED", "--library", str(folder)]) == 0
    lines = _out_lines(capsys)
    assert len(lines) == 2 and lines[0].endswith("  Shuffled labels")
    assert lines[1] == f"2 studies, {total / 2**20:.1f} of 2000 MB."
    assert main(["library", "list", "--model", "vit_base", "--library", str(folder)]) == 0
    assert _out_lines(capsys) == ["No study in the library matches.", f"2 studies, {total / 2**20:.1f} of 2000 MB."]

    (folder / f"{sha(bundles[0])}.zip").unlink()
    assert main(["library", "list", "--model", "demo", "--library", str(folder)]) == 0
    damaged = [line for line in _out_lines(capsys) if "DAMAGED" in line]
    assert len(damaged) == 1 and damaged[0].startswith(sha(bundles[0])[:12])
    assert damaged[0].endswith("  Baseline  DAMAGED: The file of this study is missing from the library folder.")


def test_the_library_comes_from_the_environment_and_off_needs_a_folder(bundles, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "from-env"
    monkeypatch.setenv("HEADSCOPE_LIBRARY", str(folder))
    assert main(["library", "add", str(bundles[0]), "--title", "Published"]) == 0
    assert _out_lines(capsys)[0].endswith(f"to {folder}.")
    assert (folder / INDEX).is_file()

    monkeypatch.setenv("HEADSCOPE_LIBRARY", "OFF")
    assert main(["library", "list"]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == "error: The study library is off (HEADSCOPE_LIBRARY=off); pass --library DIR."
    assert main(["library", "list", "--library", str(folder)]) == 0
    assert _out_lines(capsys)[-1].startswith("1 study, ")

    monkeypatch.setenv("HEADSCOPE_LIBRARY_MB", "lots")
    assert main(["library", "list", "--library", str(folder)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == (
        "error: HEADSCOPE_LIBRARY_MB must be a whole number of megabytes such as 2000, not 'lots'."
    )


def test_an_unknown_short_or_ambiguous_prefix_gives_one_line(bundles, tmp_path, capsys):
    folder = tmp_path / "library"
    assert main(["library", "add", str(bundles[0]), "--title", "Only", "--library", str(folder)]) == 0
    capsys.readouterr()
    study = sha(bundles[0])
    unknown = "0" * 8 if not study.startswith("0" * 8) else "1" * 8
    assert main(["library", "remove", unknown, "--library", str(folder)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == f"error: No study in the library has an id starting with '{unknown}'."
    assert main(["library", "remove", study[:7], "--library", str(folder)]) == EXIT_BAD_INPUT
    assert "is too short or not hex: give at least 8 of the hex characters" in one_error_line(capsys)

    # two ids that share their first 8 characters: a row copied under a made-up id (no real bundle hashes so)
    twin = study[:8] + ("0" if study[8] != "0" else "1") * 56
    with sqlite3.connect(folder / INDEX) as index:
        columns = "title, note, model_name, model_key, image_set_title, images, metrics, format_version, size, saved"
        index.execute(f"INSERT INTO studies (id, {columns}) SELECT ?, {columns} FROM studies WHERE id = ?", (twin, study))
    index.close()
    assert main(["library", "remove", study[:8], "--library", str(folder)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == (
        f"error: Several studies in the library have ids starting with '{study[:8]}'; give more of the id."
    )
    assert main(["library", "remove", study[:9], "--library", str(folder)]) == 0
    assert _out_lines(capsys) == [f'Removed {study} "Only".']


def test_a_title_with_escape_sequences_reaches_the_terminal_without_control_characters(bundles, tmp_path, capsys):
    folder = tmp_path / "library"
    title = "red \x1b[31malert\x1b]0;owned\x07"
    assert main(["library", "add", str(bundles[0]), "--title", title, "--library", str(folder)]) == 0
    assert main(["library", "list", "--library", str(folder)]) == 0
    assert main(["library", "remove", sha(bundles[0]), "--library", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.count("red \N{REPLACEMENT CHARACTER}[31malert\N{REPLACEMENT CHARACTER}]0;owned") == 3


def test_a_file_that_is_no_bundle_or_cannot_be_read_gives_one_line_naming_it(tmp_path, capsys):
    folder = tmp_path / "library"
    foreign = tmp_path / "notes.zip"
    foreign.write_text("not a bundle at all")
    assert main(["library", "add", str(foreign), "--title", "Foreign", "--library", str(folder)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == (
        f"error: {foreign}: This file is not a readable ZIP archive, so it is not a HeadScope bundle (it may be "
        "truncated); download or save it again."
    )
    missing = tmp_path / "nowhere.zip"
    assert main(["library", "add", str(missing), "--title", "Missing", "--library", str(folder)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == f"error: {missing} cannot be read: No such file or directory."
    assert not folder.exists()


def test_an_empty_title_or_an_unwritable_library_gives_one_line(bundles, tmp_path, capsys):
    assert main(["library", "add", str(bundles[0]), "--title", "  ", "--library", str(tmp_path / "lib")]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == "error: Give the study a title to save it in the library."
    (tmp_path / "file").write_text("a regular file")
    unwritable = tmp_path / "file" / "lib"
    assert main(["library", "add", str(bundles[0]), "--title", "T", "--library", str(unwritable)]) == EXIT_BAD_INPUT
    assert "cannot be written (Not a directory)" in one_error_line(capsys)
