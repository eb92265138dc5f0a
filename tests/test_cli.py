"""The command line (``python -m core analyze``) and the image folders it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.__main__ import EXIT_BAD_INPUT, main
from core.bundle import load_bundle
from core.casestudy import findings
from core.errors import ImageRejected
from core.images import image_set_from_folder

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--layout", "pca", "--max-maps", "300", "--top-k", "2", "--hurt-images", "2", "--curve-steps", "2", "--clusters", "3"]


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory, small_set) -> tuple[Path, dict[str, int | None]]:
    """ImageFolder layout: digits in class folders, one at the root, a folder matching no class, a broken file."""
    root = tmp_path_factory.mktemp("digits")
    expected: dict[str, int | None] = {}
    for i, item in enumerate(small_set.images[:12]):
        folder = root / str(item.label) if i < 9 else (root if i == 9 else root / "unknown-class")
        folder.mkdir(exist_ok=True)
        item.image.save(folder / f"img{i:02d}.png")
        expected[f"img{i:02d}.png"] = item.label if i < 9 else None
    (root / "broken.png").write_bytes(b"this is not an image")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return root, expected


def test_folder_labels_come_from_class_folders(digit_folder, demo_handle):
    root, expected = digit_folder
    image_set, notes = image_set_from_folder(root, demo_handle.class_names)
    assert {item.name: item.label for item in image_set.images} == expected
    assert any("broken.png" in note for note in notes)
    assert any("unknown-class" in note for note in notes)
    assert not any("DS_Store" in note for note in notes)  # hidden files are not images


def test_folder_errors_are_sentences(tmp_path, demo_handle):
    with pytest.raises(ImageRejected, match=r"is not a folder"):
        image_set_from_folder(tmp_path / "missing", demo_handle.class_names)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ImageRejected, match=r"\.$"):
        image_set_from_folder(tmp_path, demo_handle.class_names)


def test_analyze_writes_a_bundle_and_report_headless(digit_folder, demo_handle, tmp_path):
    """The real entry point in a fresh process: bundle, report, progress bars, summary."""
    root, expected = digit_folder
    out, report = tmp_path / "results.zip", tmp_path / "report.html"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "core", "analyze", "--model", "demo", "--images", str(root), "--out", str(out),
         "--report", str(report), *FAST],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for stage in ("head importance", "pruning curve", "attention strength", "training the autoencoder", "partial pruning"):
        assert stage in done.stderr  # a tqdm bar per stage
    assert "broken.png" in done.stderr  # the skipped file is named

    study = load_bundle(out.read_bytes(), model_key=demo_handle.key)
    images = study.manifest["image_set"]["images"]
    assert {image["name"]: image["label"] for image in images} == expected
    assert study.manifest["settings"]["top_k"] == 2 and study.manifest["settings"]["layout"] == "pca"
    top = findings(study, "probability")
    assert f"Top heads by probability: {', '.join(f.label for f in top.heads)}." in done.stdout
    assert top.layer_trend in done.stdout
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and top.heads[0].label in html


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--model", "no_such_model_anywhere"], "no_such_model_anywhere"),
    ],
)
def test_analyze_bad_arguments_give_one_line(digit_folder, tmp_path, capsys, extra, message):
    root, _ = digit_folder
    code = main(["analyze", "--images", str(root), "--out", str(tmp_path / "x.zip"), *FAST, *extra])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.zip").exists()


def test_analyze_missing_or_empty_folder(tmp_path, capsys):
    code = main(["analyze", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.zip"), *FAST])
    assert code == EXIT_BAD_INPUT and "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    code = main(["analyze", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "x.zip"), *FAST])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "no" in err.lower() and "Traceback" not in err
    assert not (tmp_path / "x.zip").exists()
