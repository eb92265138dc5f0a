"""The command line (``python -m core analyze``) and the image folders it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.__main__ import EXIT_BAD_INPUT, main
from core.errors import ImageRejected
from core.inputs.images import image_set_from_folder
from core.pipeline.distributed import Shards
from core.study.bundle import load_bundle
from core.study.casestudy import findings
from helpers.cli import FAST
from helpers.data import ROOT


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


def test_a_lazy_folder_set_keeps_no_pixels_and_each_process_decodes_its_share(digit_folder, demo_handle, monkeypatch):
    import core.inputs.images
    from core.inputs.images import FolderImage, join_folder_shares

    root, _ = digit_folder
    whole, whole_notes = image_set_from_folder(root, demo_handle.class_names)
    decoded: list[str] = []
    real_decode = core.inputs.images.decode_image
    monkeypatch.setattr(core.inputs.images, "decode_image", lambda data, name, **kw: decoded.append(name) or real_decode(data, name, **kw))
    shares = [image_set_from_folder(root, demo_handle.class_names, lazy=True, share=(rank, 2)) for rank in range(2)]
    # 13 files (12 digits and a broken one): 7 for rank 0, 6 for rank 1, each read once
    assert len(decoded) == 13 and len(set(decoded)) == 13
    assert len(shares[0][0].images) + len(shares[1][0].images) == len(whole)
    lazy, notes = join_folder_shares(shares, root)
    assert lazy.key == whole.key and sorted(notes) == sorted(whole_notes)
    assert all(isinstance(item, FolderImage) for item in lazy.images)
    assert not any(isinstance(value, Image.Image) for item in lazy.images for value in vars(item).values())
    decoded.clear()
    batch = lazy.pil_images()[2:5]  # a slice decodes just its own images
    assert decoded == [item.path.name for item in lazy.images[2:5]]
    assert [np.asarray(im).tolist() for im in batch] == [np.asarray(item.image).tolist() for item in whole.images[2:5]]


def test_shares_of_a_folder_of_broken_files_say_what_one_process_says(tmp_path, demo_handle):
    from core.inputs.images import join_folder_shares

    for i in range(4):
        (tmp_path / f"broken{i}.png").write_bytes(b"not an image")
    with pytest.raises(ImageRejected) as whole:
        image_set_from_folder(tmp_path, demo_handle.class_names)
    shares = [image_set_from_folder(tmp_path, demo_handle.class_names, lazy=True, share=(rank, 2)) for rank in range(2)]
    with pytest.raises(ImageRejected) as joined:
        join_folder_shares(shares, tmp_path)
    assert str(joined.value) == str(whole.value) and "None of the 4 files" in str(whole.value)


def test_folder_errors_are_sentences(tmp_path, demo_handle):
    with pytest.raises(ImageRejected, match=r"is not a folder"):
        image_set_from_folder(tmp_path / "missing", demo_handle.class_names)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ImageRejected, match=r"\.$"):
        image_set_from_folder(tmp_path, demo_handle.class_names)


def _analyze(command: list[str], folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``command`` + ``analyze`` on ``folder`` in a fresh process, from a scratch folder."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, "analyze", "--model", "demo", "--images", str(folder), "--out", str(out), *FAST, *extra],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=900,
    )


@pytest.fixture(scope="module")
def one_process(digit_folder, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    root, _ = digit_folder
    where = tmp_path_factory.mktemp("one_process")
    out, report = where / "results.zip", where / "report.html"
    return _analyze([sys.executable, "-m", "core"], root, out, "--report", str(report)), out, report


@pytest.mark.slow
def test_analyze_writes_a_bundle_and_report_headless(one_process, digit_folder, demo_handle):
    """The real entry point in a fresh process: bundle, report, progress bars, summary."""
    done, out, report = one_process
    _, expected = digit_folder
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for stage in ("reading the set", "pruning curve", "training the autoencoder", "partial pruning", "relevance maps"):
        assert stage in done.stderr  # a tqdm bar per stage
    assert "broken.png" in done.stderr  # the skipped file is named

    study = load_bundle(out.read_bytes(), model_key=demo_handle.key)
    images = study.manifest["image_set"]["images"]
    assert {image["name"]: image["label"] for image in images} == expected
    assert study.manifest["settings"]["top_k"] == 2 and study.manifest["settings"]["layout"] == "pca"
    top = findings(study, "probability")
    assert f"Top heads by probability: {', '.join(f.label for f in top.heads)}." in done.stdout
    assert top.layer_trend in done.stdout
    assert top.concentration and top.concentration in done.stdout
    for finding in top.heads:  # where the model looked on the image each top head hurts most
        assert finding.explanation and f"{finding.label}: {finding.explanation}" in done.stdout
    cited = {images[p]["id"] for p in study.arrays["relevance_images"]}
    assert set(top.heads[0].hurt_images) <= cited and not np.isnan(study.arrays["relevance"]).any()
    html = report.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and top.heads[0].label in html
    assert "Where the model looked" in html and "relevance-maps" in html


@pytest.mark.slow
def test_torchrun_shards_give_the_bundle_of_one_process(one_process, digit_folder, tmp_path, demo_handle):
    """Two ranks (gloo on the CPU) split the images; the gathered results equal one process's."""
    _, single_out, _ = one_process
    root, _ = digit_folder
    out = tmp_path / "sharded.zip"
    done = _analyze([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "core"], root, out)
    assert done.returncode == 0, done.stderr
    assert "x 2 processes" in done.stderr
    assert done.stdout.count("Top heads by probability") == 1  # only rank 0 reports and writes

    single = load_bundle(single_out.read_bytes(), model_key=demo_handle.key)
    sharded = load_bundle(out.read_bytes(), model_key=demo_handle.key)
    for name in ("images", "importance_overall", "importance_per_image", "importance_unpruned", "pruning_curve", "partial"):
        pd.testing.assert_frame_equal(sharded.tables[name], single.tables[name], check_exact=False, atol=1e-5)
    for name, array in single.arrays.items():
        np.testing.assert_allclose(sharded.arrays[name], array, atol=1e-5, err_msg=name)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--model", "no_such_model_anywhere"], "no_such_model_anywhere"),
        (["--report", "/no/such/folder/report.html"], "the folder /no/such/folder does not exist"),
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
    assert code == EXIT_BAD_INPUT and "There are no files in empty" in err and "Traceback" not in err
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize("n, size", [(10, 3), (2, 2), (7, 1), (5, 4)])
def test_shards_cover_the_set_once_in_order_and_evenly(n, size):
    parts = [Shards(rank, size).part(n) for rank in range(size)]
    assert [i for part in parts for i in range(n)[part]] == list(range(n))
    lengths = [part.stop - part.start for part in parts]
    assert max(lengths) - min(lengths) <= 1


def test_an_unreadable_file_is_skipped_with_a_note(digit_folder, demo_handle, monkeypatch):
    root, expected = digit_folder
    real_open = Path.open

    def refuse(path, *args, **kwargs):
        if path.name == "img03.png":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    image_set, notes = image_set_from_folder(root, demo_handle.class_names)
    assert sorted(item.name for item in image_set.images) == sorted(set(expected) - {"img03.png"})
    assert "img03.png could not be read (Permission denied), so it was skipped." in notes


_PEAK_RSS = """
import resource, runpy, sys
sys.argv = ["core", *sys.argv[1:]]
try:
    runpy.run_module("core", run_name="__main__")
except SystemExit as done:
    if done.code:
        raise
print(f"peak_kib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
"""


def _photo_folder(root: Path, count: int) -> Path:
    """``count`` different 512x384 JPEG photos (noise over a gradient): 0.56 MiB each once decoded."""
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(count)
    ramp = np.linspace(0, 200, 512, dtype=np.float32)[None, :, None]
    for i in range(count):
        pixels = np.clip(ramp + rng.normal(0, 40, (384, 512, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"photo_{i:04d}.jpg", quality=80)
    return root


def _peak_mib(folder: Path, out: Path) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, "analyze", "--model", "demo", "--images", str(folder), "--out", str(out), *FAST],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("peak_kib=", 1)[1].split()[0]) / 1024


@pytest.mark.slow
def test_the_command_line_streams_its_folder(tmp_path):
    """Peak memory grows by less than 0.1 MiB per extra photo: the folder is decoded batch by batch.

    Holding the decoded photos, as the command line once did, grows it by 0.56 MiB per photo.
    Both folders fill whole batches (``BATCH_CAP`` photos or more), so the pass's per-batch
    peak (about 3.5 MiB per photo of a batch) is the same in both and only the set's own
    growth is measured: with 40 photos, a batch of 40 against batches of 64, the
    difference in batch size alone read as 0.3 to 0.7 MiB per photo.
    """
    from core.settings import BATCH_CAP

    small, large = BATCH_CAP, BATCH_CAP + 160
    few = _peak_mib(_photo_folder(tmp_path / "few", small), tmp_path / "few.zip")
    many = _peak_mib(_photo_folder(tmp_path / "many", large), tmp_path / "many.zip")
    per_image = (many - few) / (large - small)
    assert per_image < 0.1, f"{few:.0f} MiB for {small} photos, {many:.0f} MiB for {large}: {per_image:.3f} MiB per photo"


# --- a backbone with a linear probe (--probe) ----------------------------------------------

PROBE_FAST = ["--layout", "pca", "--max-maps", "100", "--top-k", "1", "--hurt-images", "1", "--curve-steps", "1", "--clusters", "2"]
PROBE_CLASSES = ("ant", "bee", "cat")


def _class_folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """ImageFolder layout of 48 px noise images, each class a brightness of its own."""
    rng = np.random.default_rng(seed)
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(rng.normal(60 + 60 * c, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{name}{i}.png")
    return root


@pytest.fixture(scope="module")
def probe_backbone(tmp_path_factory) -> tuple[Path, list[str]]:
    """timm's tiny ``test_vit`` saved without a classifier, and the arguments that load it at 48 px."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(0)
    weights = tmp_path_factory.mktemp("backbone") / "backbone.safetensors"
    weights.write_bytes(save(dict(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict())))
    return weights, ["--model", "test_vit", "--checkpoint", str(weights), "--img-size", "48"]


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: exit code, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def probe_fit(probe_backbone, tmp_path_factory):
    """``--probe fit --save-probe`` on 3 classes of 5 images: the run, the bundle and the probe file."""
    where = tmp_path_factory.mktemp("probe_fit")
    folder = _class_folder(where / "images", dict.fromkeys(PROBE_CLASSES, 5))
    out, saved = where / "fit.zip", where / "probe.safetensors"
    _, model = probe_backbone
    done = _run(["analyze", *model, "--images", str(folder), "--out", str(out), *PROBE_FAST,
                 "--probe", "fit", "--save-probe", str(saved)])
    return done, folder, out, saved


@pytest.mark.slow
def test_probe_fit_analyses_the_backbone_as_a_classifier_and_keeps_the_probe(probe_fit, probe_backbone):
    from core.models.load import load_model
    from core.models.probe import probe_from_bytes, with_probe
    from core.study.bundle import bundle_probe

    (code, stdout, stderr), folder, out, saved = probe_fit
    assert code == 0, stderr
    assert "probe features" in stderr and "Traceback" not in stderr  # the features' progress line
    probe = probe_from_bytes(saved.read_bytes())
    assert probe.class_names == PROBE_CLASSES and probe.images == 15
    assert probe.summary() in stdout
    assert bundle_probe(out.read_bytes()).digest == probe.digest
    weights, _ = probe_backbone
    backbone = load_model("test_vit", checkpoint=weights, device="cpu", img_size=48)
    probed = with_probe(backbone, probe)
    study = load_bundle(out.read_bytes(), model_key=probed.key, model_name=probed.name)
    assert study.manifest["model"]["class_names"] == list(PROBE_CLASSES)
    assert study.manifest["model"]["probe"]["backbone_key"] == backbone.key
    assert study.metrics == ("probability", "accuracy", "layer_impact", "output_impact", "taylor")
    labels = {image["name"]: image["label"] for image in study.manifest["image_set"]["images"]}
    assert labels == {f"{name}{i}.png": c for c, name in enumerate(PROBE_CLASSES) for i in range(5)}
    assert f"{probed.name}: 6 layers x 2 heads" in stderr
    assert "Top heads by probability" in stdout


@pytest.mark.slow
def test_probe_file_gives_the_bundle_of_probe_fit(probe_fit, probe_backbone, tmp_path):
    (code, _, stderr), folder, fitted, saved = probe_fit
    assert code == 0, stderr
    out = tmp_path / "file.zip"
    _, model = probe_backbone
    code, stdout, stderr = _run(["analyze", *model, "--images", str(folder), "--out", str(out), *PROBE_FAST, "--probe", str(saved)])
    assert code == 0, stderr
    assert "probe features" not in stderr  # nothing fitted
    first, again = load_bundle(fitted.read_bytes()), load_bundle(out.read_bytes())
    assert again.probe == first.probe == saved.read_bytes()
    assert again.manifest["model"] == first.manifest["model"] and again.manifest["image_set"] == first.manifest["image_set"]
    for name, table in first.tables.items():
        pd.testing.assert_frame_equal(again.tables[name], table, check_exact=False, atol=1e-6)
    for name, array in first.arrays.items():
        np.testing.assert_allclose(again.arrays[name], array, atol=1e-6, err_msg=name)


def test_probe_file_labels_the_folders_matching_its_classes(tmp_path):
    """Folders are matched to the probe's classes as to a classifier's; other folders' images have no label."""
    from core.__main__ import _labelled_by_classes

    folder = _class_folder(tmp_path / "images", {"Bee": 2, "ant": 2, "dog": 1})
    backbone_set, _ = image_set_from_folder(folder, [])
    assert backbone_set.label_names == ("Bee", "ant", "dog")
    relabelled, notes = _labelled_by_classes(backbone_set, PROBE_CLASSES)
    assert {item.name: item.label for item in relabelled.images} == {
        "Bee0.png": 1, "Bee1.png": 1, "ant0.png": 0, "ant1.png": 0, "dog0.png": None,
    }
    assert relabelled.label_names == () and [item.id for item in relabelled.images] == [item.id for item in backbone_set.images]
    assert notes == ["Folders that match none of the probe's classes, so their images have no label: dog."]


def _probe_variant(saved: Path, where: Path, change) -> Path:
    """The saved probe changed by ``change(probe) -> bytes``, written next to it."""
    from core.models.probe import probe_from_bytes

    path = where / "variant.safetensors"
    path.write_bytes(change(probe_from_bytes(saved.read_bytes())))
    return path


def _nan_weights(probe) -> bytes:
    import dataclasses

    weight = probe.weight.copy()
    weight[1, 2] = np.nan
    return dataclasses.replace(probe, weight=weight).to_bytes()


def _lying_card(probe) -> bytes:
    import json

    import torch
    from safetensors.torch import save

    card = {**probe.card(), "features": probe.num_features + 1}
    tensors = {"weight": torch.from_numpy(probe.weight.copy()), "bias": torch.from_numpy(probe.bias.copy())}
    return save(tensors, metadata={"headscope_probe": json.dumps(card)})


def _other_backbone(probe) -> bytes:
    import dataclasses

    return dataclasses.replace(probe, backbone_key="test_vit-0123456789abcdef", backbone_name="another test_vit").to_bytes()


@pytest.mark.slow
@pytest.mark.parametrize(
    "folder_counts, probe, extra, message",
    [
        (dict.fromkeys(PROBE_CLASSES, 5), "fit", ["--model", "demo"], "'demo' already has 10 classes"),
        ({"ant": 5}, "fit", [], "--probe fit needs at least 2 class subfolders"),
        ({"ant": 5, "bee": 3}, "fit", [], "The class 'bee' has 3 images; a linear probe needs at least 5"),
        (dict.fromkeys(PROBE_CLASSES, 5), "FILE", ["--save-probe", "again.safetensors"], "--save-probe writes a probe fitted here"),
        (dict.fromkeys(PROBE_CLASSES, 5), _other_backbone, [], "This probe was fitted on 'another test_vit'"),
        (dict.fromkeys(PROBE_CLASSES, 5), _nan_weights, [], "NaN or infinite weights"),
        (dict.fromkeys(PROBE_CLASSES, 5), _lying_card, [], "The probe's card does not match its weights"),
        (dict.fromkeys(PROBE_CLASSES, 5), lambda probe: b"\x89PNG not a probe", [], "This file is not a HeadScope probe"),
        (dict.fromkeys(PROBE_CLASSES, 5), "missing.safetensors", [], "No such file or directory"),
        (dict.fromkeys(PROBE_CLASSES, 5), ".", [], "is not a file; give a probe file"),
    ],
    ids=["classifier", "one class", "few images", "save without fit", "other backbone", "nan weights", "lying card",
         "not a probe", "missing file", "a folder"],
)
def test_bad_probe_inputs_exit_2_with_one_line(probe_fit, probe_backbone, tmp_path, folder_counts, probe, extra, message):
    saved = probe_fit[3]
    folder = _class_folder(tmp_path / "images", folder_counts)
    if callable(probe):
        probe = str(_probe_variant(saved, tmp_path, probe))
    elif probe == "FILE":
        probe = str(saved)
    elif probe != "fit":
        probe = str(tmp_path / probe)
    # the test backbone, or the model the case gives (the demo classifier)
    model = [] if "--model" in extra else probe_backbone[1]
    extra = [str(tmp_path / arg) if arg.endswith(".safetensors") else arg for arg in extra]
    out = tmp_path / "x.zip"
    code, stdout, stderr = _run(["analyze", *model, "--images", str(folder), "--out", str(out), *PROBE_FAST, "--probe", probe, *extra])
    assert code == EXIT_BAD_INPUT, stderr
    assert stderr.startswith("error: ") and message in stderr and "Traceback" not in stderr
    assert stderr.count("\n") == 1 and stdout == ""  # one line, nothing before it: refused before any fit
    assert not out.exists() and not (tmp_path / "again.safetensors").exists()
