"""AppTests of linear probes: a backbone with an uploaded labelled ZIP becomes a classifier on every page.

The backbone is timm's tiny ``test_vit`` with ``num_classes=0`` and random weights (as in
``test_app_backbone``); the set is a ZIP of three folders of five coloured squares each,
which its features separate.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import timm
from PIL import Image
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from core.errors import ProbeRejected
from core.models.probe import probe_from_bytes
from helpers.app import assert_clean, chart_specs, page_texts
from helpers.data import APP, VIEW_PAGES
from helpers.images import encode
from helpers.markdown import shown
from ui import images, models
from ui.probe import NO_LABELS_HINT

TIMEOUT = 240
CLASSES = ("green", "red", "blue")


@pytest.fixture(scope="module")
def backbone_weights() -> bytes:
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _start(monkeypatch, tmp_path: Path, weights: bytes) -> AppTest:
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(weights)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(models.ENV_IMG_SIZE, raising=False)
    monkeypatch.setenv(models.ENV_MODEL, "test_vit")
    monkeypatch.setenv(models.ENV_CHECKPOINT, str(path))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    return at


def _zip(counts: dict[str, int]) -> bytes:
    colours = {"green": (30, 200, 40), "red": (210, 30, 30), "blue": (30, 40, 210), "grey": (128, 128, 128)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder, count in counts.items():
            base = colours.get(folder, (90, 90, 90))
            for i in range(count):
                shade = tuple(min(255, c + 6 * i) for c in base)
                archive.writestr(f"{folder}/{i}.png", encode(Image.new("RGB", (48, 48), shade)))
    return buffer.getvalue()


def _upload(at: AppTest, data: bytes) -> None:
    at.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    at.file_uploader(key="zip_upload").set_value(("clothes.zip", data, "application/zip"))
    at.run()
    assert_clean(at)


def _fit(at: AppTest) -> None:
    assert "fit a linear probe" in page_texts(at)
    at.button(key="probe_fit").click().run()
    assert_clean(at)


def test_a_labelled_zip_gives_a_backbone_classes_on_every_page(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    backbone_key = at.session_state[models.MODEL_KEY]
    _fit(at)
    spec = at.session_state[models.MODEL_KEY]
    assert spec.probe_digest is not None and spec.name == backbone_key.name
    header = shown(at.info[0].value)
    assert "Linear probe on 3 classes" in header and "cross-validated accuracy on 15 images" in header
    assert "chance 33%" in header and "the attention is the backbone's own" in header.lower()
    assert "3 classes" in shown(at.caption[0].value)  # the model line: a classifier now
    # the uploaded set's labels are now the probe's class indices, and the overview predicts
    image_set = at.session_state[images.UPLOADED_KEY][1]
    assert image_set.label_names == () and sorted({i.label for i in image_set.images}) == [0, 1, 2]
    assert "Accuracy on the 15 labelled images" in page_texts(at)
    assert "predicted" in page_texts(at)
    probe_file = at.session_state[models.PROBE_KEY]
    probe = probe_from_bytes(probe_file)
    assert probe.class_names == ("blue", "green", "red")  # the sorted folder names
    assert [b.label for b in at.get("download_button") if "probe" in b.label.lower()]
    for page in VIEW_PAGES:
        at.switch_page(page).run()
        assert_clean(at)
        assert any("Linear probe on 3 classes" in shown(i.value) for i in at.info), page
    at.switch_page(VIEW_PAGES[0]).run()
    options = at.selectbox(key="importance_metric").options
    assert "probability" in options and "accuracy" in options  # class-based metrics on a backbone
    assert chart_specs(at)


def test_removing_the_probe_gives_the_backbone_and_its_folder_labels_back(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    _fit(at)
    at.button(key="probe_remove").click().run()
    assert_clean(at)
    assert at.session_state[models.MODEL_KEY].probe_digest is None
    assert models.PROBE_KEY not in at.session_state
    image_set = at.session_state[images.UPLOADED_KEY][1]
    assert image_set.label_names == ("blue", "green", "red")
    assert "backbone: no classifier" in shown(at.caption[0].value)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"green": 6}, "at least 2 classes"),
        ({"green": 5, "red": 4}, "'red' has 4 images"),
    ],
)
def test_a_set_a_probe_cannot_be_fitted_on_says_why(monkeypatch, tmp_path, backbone_weights, counts, expected) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip(counts))
    assert expected in page_texts(at)
    assert not [b for b in at.button if b.key == "probe_fit"]


def test_photos_without_labels_point_to_a_labelled_zip(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    assert NO_LABELS_HINT in page_texts(at)
    at.switch_page(VIEW_PAGES[0]).run()
    assert_clean(at)
    assert NO_LABELS_HINT in page_texts(at)


def test_a_probe_file_shared_by_a_teammate_gives_the_same_classifier(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    _fit(at)
    shared, key = at.session_state[models.PROBE_KEY], at.session_state[models.MODEL_KEY]
    other = _start(monkeypatch, tmp_path, backbone_weights)  # a new session on the same backbone
    other.file_uploader(key="probe_upload").set_value(("probe.safetensors", shared, "application/octet-stream")).run()
    other.button(key="probe_use").click().run()
    assert_clean(other)
    assert other.session_state[models.MODEL_KEY].probe_digest == key.probe_digest
    assert "Linear probe on 3 classes" in shown(other.info[0].value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda data: b"not a probe at all", "is not a HeadScope probe"),
        (lambda data: data[:-7], "is not a HeadScope probe"),
    ],
)
def test_a_bad_probe_file_keeps_the_backbone(monkeypatch, tmp_path, backbone_weights, change, expected) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    _fit(at)
    data = change(at.session_state[models.PROBE_KEY])
    other = _start(monkeypatch, tmp_path, backbone_weights)
    before = other.session_state[models.MODEL_KEY]
    other.file_uploader(key="probe_upload").set_value(("probe.safetensors", data, "application/octet-stream")).run()
    other.button(key="probe_use").click().run()
    assert not other.exception
    assert any(expected in shown(e.value) for e in other.error)
    assert other.session_state[models.MODEL_KEY] == before
    assert models.PROBE_KEY not in other.session_state


def test_a_probe_for_another_backbone_is_refused(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    _fit(at)
    data = at.session_state[models.PROBE_KEY]
    other_weights = save(
        {k: v.contiguous() for k, v in timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict().items()}
    )
    other = _start(monkeypatch, tmp_path, other_weights)
    before = other.session_state[models.MODEL_KEY]
    other.file_uploader(key="probe_upload").set_value(("probe.safetensors", data, "application/octet-stream")).run()
    other.button(key="probe_use").click().run()
    assert any("This probe was fitted on" in shown(e.value) for e in other.error)
    assert other.session_state[models.MODEL_KEY] == before
    with pytest.raises(ProbeRejected):
        probe_from_bytes(data, models._cached_model("test_vit", before.checkpoint_digest, None, before.checkpoint_path, False, True))


def test_a_bundle_saved_with_a_probe_opens_on_the_backbone_with_that_probe(monkeypatch, tmp_path, backbone_weights) -> None:
    from core.inputs.images import image_set_from_zip
    from core.models.load import load_model
    from core.models.probe import fit_probe, probe_features, with_probe
    from core.study.bundle import save_bundle
    from core.study.casestudy import CaseSettings, analyze

    at = _start(monkeypatch, tmp_path, backbone_weights)
    backbone = load_model("test_vit", checkpoint=tmp_path / "backbone.safetensors")
    data = _zip({name: 5 for name in CLASSES})
    labelled, _ = image_set_from_zip(data, [])
    probe = fit_probe(
        probe_features(backbone, labelled.pil_images()), labelled.labels, labelled.label_names, backbone=backbone
    )
    probed = with_probe(backbone, probe)
    image_set, _ = image_set_from_zip(data, probed.class_names)
    study = analyze(probed, image_set, CaseSettings(max_maps=24, top_k=2, hurt_images=2), layout_method="pca")
    assert at.session_state[models.MODEL_KEY].probe_digest is None  # the bare backbone is active
    at.switch_page(VIEW_PAGES[3]).run()
    at.get("file_uploader")[0].set_value([("probed.zip", save_bundle(study), "application/zip")]).run()
    assert_clean(at)
    assert at.session_state[models.MODEL_KEY].probe_digest is not None
    assert probe_from_bytes(at.session_state[models.PROBE_KEY]).digest == probe.digest
    assert any("Linear probe on 3 classes" in shown(i.value) for i in at.info)
    assert "probed.zip" in page_texts(at)  # the opened bundle is shown, not closed as another model's


def test_folders_that_are_no_class_of_a_probe_keep_their_labels_for_the_next(monkeypatch, tmp_path, backbone_weights) -> None:
    at = _start(monkeypatch, tmp_path, backbone_weights)
    _upload(at, _zip({name: 5 for name in CLASSES}))
    _fit(at)
    # a probe of two of the three folders: the third folder's images have no class under it
    at.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    at.file_uploader(key="zip_upload").set_value(("two.zip", _zip({"green": 5, "red": 5}), "application/zip")).run()
    at.button(key="probe_remove").click().run()
    assert_clean(at)
    assert at.session_state[images.UPLOADED_KEY][1].label_names == ("green", "red")
    _fit(at)
    at.file_uploader(key="zip_upload").set_value(("three.zip", _zip({name: 5 for name in CLASSES}), "application/zip")).run()
    assert_clean(at)
    labels = [item.label for item in at.session_state[images.UPLOADED_KEY][1].images]
    assert labels.count(None) == 5  # blue is no class of the two-class probe
    at.button(key="probe_remove").click().run()
    assert_clean(at)
    restored = at.session_state[images.UPLOADED_KEY][1]
    assert restored.label_names == ("blue", "green", "red") and None not in [i.label for i in restored.images]
