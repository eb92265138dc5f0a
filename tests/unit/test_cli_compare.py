"""The command line's comparison (``python -m core compare A.zip B.zip``) and what it says about bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

import core.__main__
from core.__main__ import EXIT_BAD_INPUT, main
from core.errors import NothingToCompare
from core.study.bundle import load_bundle, save_bundle
from core.study.comparison import compare
from helpers.cli import one_error_line
from helpers.data import DATA, V1_BUNDLE

V3_BUNDLE = DATA / "bundle_v3_demo.zip"


@pytest.fixture(scope="module")
def small_bundle(small_study, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundles") / "small.zip"
    path.write_bytes(save_bundle(small_study))
    return path


def test_two_bundles_print_the_sentences_and_write_the_report(small_bundle, tmp_path, capsys):
    report = tmp_path / "compare.html"
    code = main(["compare", str(V3_BUNDLE), str(small_bundle), "--layout", "pca", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    # the sentences do not depend on the pattern space, so a comparison without it says the same
    expected = compare(load_bundle(V3_BUNDLE.read_bytes()), load_bundle(small_bundle.read_bytes())).sentences
    lines = out.splitlines()
    assert lines[: len(expected)] == list(expected)
    assert lines[len(expected)].startswith("Rank agreement by probability over 36 heads: Spearman ")
    assert f"Wrote {report}." in lines
    document = report.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>")
    assert 'id="chart-patterns"' in document  # the command always computes the joint pattern space


def test_a_damaged_b_is_named_in_one_line(small_bundle, tmp_path, capsys):
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(small_bundle.read_bytes()[: 5000])
    assert main(["compare", str(V3_BUNDLE), str(damaged)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys).startswith(f"error: B ({damaged}): ")


def test_a_file_that_is_no_bundle_is_named_in_one_line(tmp_path, capsys):
    foreign = tmp_path / "notes.zip"
    foreign.write_text("not a bundle at all")
    assert main(["compare", str(foreign), str(V3_BUNDLE)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys).startswith(f"error: A ({foreign}): ")


def test_a_missing_file_or_a_folder_is_named_in_one_line(tmp_path, capsys):
    assert main(["compare", str(V3_BUNDLE), str(tmp_path / "nowhere.zip")]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == f"error: B ({tmp_path / 'nowhere.zip'}) cannot be read: No such file or directory."
    assert main(["compare", str(tmp_path), str(V3_BUNDLE)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys).startswith(f"error: A ({tmp_path}) cannot be read: ")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metric", "loudness"], "--metric loudness is not a head-importance metric"),
        (["--metric", "output_impact"], "Neither study holds 'output_impact' importance"),  # bundles saved before it
        (["--top-k", "0"], "--top-k must be at least 1"),
    ],
)
def test_bad_arguments_give_one_line(extra, message, capsys):
    assert main(["compare", str(V1_BUNDLE), str(V1_BUNDLE), *extra]) == EXIT_BAD_INPUT
    assert message in one_error_line(capsys)


def test_two_studies_with_nothing_in_common_give_one_line(monkeypatch, capsys):
    def nothing(*args, **kwargs):
        raise NothingToCompare("A and B hold no measure in common: A has none, B has entropy.")

    monkeypatch.setattr(core.__main__, "compare", nothing)
    assert main(["compare", str(V1_BUNDLE), str(V3_BUNDLE)]) == EXIT_BAD_INPUT
    assert one_error_line(capsys) == "error: A and B hold no measure in common: A has none, B has entropy."


def test_a_bundles_names_reach_the_terminal_without_control_characters(small_study, tmp_path, capsys):
    """A bundle's model name could hold terminal escape sequences: they are printed as replacement characters."""
    import dataclasses
    import json

    manifest = json.loads(json.dumps(small_study.manifest))
    manifest["model"]["name"] = "vit\x1b]0;owned\x07\x1b[2J"
    hostile = tmp_path / "hostile.zip"
    hostile.write_bytes(save_bundle(dataclasses.replace(small_study, manifest=manifest)))
    assert main(["compare", str(V3_BUNDLE), str(hostile), "--layout", "pca"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "vit\N{REPLACEMENT CHARACTER}]0;owned" in out
