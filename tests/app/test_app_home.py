"""AppTest of the home page (view A): default demo run, focus picking, uploads, model switching."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from helpers.app import notice_texts, started_app
from helpers.data import APP
from helpers.images import encode
from helpers.markdown import shown

TIMEOUT = 180


@pytest.fixture
def app(monkeypatch) -> AppTest:
    return started_app(monkeypatch, TIMEOUT)


def test_demo_overview_and_top5(app: AppTest) -> None:
    assert app.title[0].value == "HeadScope"
    assert "demo" in app.caption[0].value and "360" in app.caption[0].value
    assert not app.error
    top = app.dataframe[0].value
    assert list(top["rank"]) == [1, 2, 3, 4, 5]
    assert top["probability"].is_monotonic_decreasing and top["probability"].sum() <= 1.0 + 1e-6
    assert "Accuracy on the 360 labelled images" in notice_texts(app)


def test_typing_an_id_moves_the_focus(app: AppTest) -> None:
    first = app.text_input(key="focus_id_input").value
    split = digits_split(0, 0.2)
    from core.inputs.images import demo_digits_set

    other = demo_digits_set(0, 0.2).images[10]
    assert other.id != first and len(split.test) == 360
    app.text_input(key="focus_id_input").set_value(other.id).run()
    assert app.text_input(key="focus_id_input").value == other.id
    assert app.session_state["focus"].image_id == other.id
    assert f"{other.name} · " in notice_texts(app)
    app.text_input(key="focus_id_input").set_value("no-such-id").run()
    assert not app.exception
    assert "No image in this set has the id 'no-such-id'" in notice_texts(app)


def test_upload_images_keeps_good_files_and_explains_bad_ones(app: AppTest) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[:3])
    app.radio(key="image_source").set_value("Upload images").run()
    uploader = app.sidebar.get("file_uploader")[0]
    files = [(f"d{i}.png", encode(im), "image/png") for i, im in enumerate(images)]
    files.append(("fake.png", b"this is not an image", "image/png"))
    uploader.set_value(files)
    app.run()
    assert not app.exception
    text = notice_texts(app)
    assert "3 images ready" in text
    assert "fake.png" in text and "not an image" in text
    assert "Uploaded images (3 images)" in app.caption[0].value


def test_zip_folders_become_labels(app: AppTest) -> None:
    split = digits_split(0, 0.2)
    images, labels = digit_images(split.test[:6])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (image, label) in enumerate(zip(images, labels)):
            archive.writestr(f"digits/{label}/img{i}.png", encode(image))
    app.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    app.sidebar.get("file_uploader")[0].set_value(("digits.zip", buffer.getvalue(), "application/zip"))
    app.run()
    assert not app.exception
    assert "Accuracy on the 6 labelled images" in notice_texts(app)


def test_bad_model_names_keep_the_demo_model(app: AppTest) -> None:
    app.radio(key="model_source").set_value("timm model").run()
    app.text_input(key="timm_name").set_value("resnet_not_a_model").run()
    app.button(key="load_model").click().run()
    assert not app.exception
    assert "timm has no model called 'resnet_not_a_model'" in shown(app.error[0].value)
    assert "demo" in app.caption[0].value
    app.text_input(key="timm_name").set_value("test_vit").run()
    app.button(key="load_model").click().run()  # offline, nothing cached
    assert "not in the local Hugging Face cache" in notice_texts(app)
    assert "demo" in app.caption[0].value


def test_checkpoint_upload_switches_model(app: AppTest) -> None:
    source = timm.create_model("test_vit", pretrained=False)
    data = save({k: v.contiguous() for k, v in source.state_dict().items()})
    app.radio(key="model_source").set_value("timm model").run()
    app.text_input(key="timm_name").set_value("test_vit").run()
    app.sidebar.get("file_uploader")[0].set_value(("weights.safetensors", data, "application/octet-stream"))
    app.run()
    app.button(key="load_model").click().run()
    assert not app.exception
    assert shown(app.caption[0].value).startswith("**test_vit (checkpoint")
    assert "scikit-image" in app.caption[0].value or "photos" in app.caption[0].value.lower()
    assert len(app.dataframe[0].value) == 5


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_malicious_checkpoint_upload_is_refused_and_demo_stays(app: AppTest, tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"head.weight": _Payload(sentinel)}, buffer)
    app.radio(key="model_source").set_value("timm model").run()
    app.text_input(key="timm_name").set_value("test_vit").run()
    app.sidebar.get("file_uploader")[0].set_value(("weights.safetensors", buffer.getvalue(), "application/octet-stream"))
    app.run()
    app.button(key="load_model").click().run()
    assert not app.exception
    assert "could not be loaded safely" in shown(app.error[0].value)
    assert app.caption[0].value.startswith("**demo**")
    assert not sentinel.exists()


def test_focus_box_follows_the_focus_when_the_set_changes(app: AppTest) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[100:102])
    app.radio(key="image_source").set_value("Upload images").run()
    app.sidebar.get("file_uploader")[0].set_value([(f"u{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    app.run()
    focus_id = app.session_state["focus"].image_id
    assert focus_id == hashlib.sha256(encode(images[0])).hexdigest()[:16]
    assert app.text_input(key="focus_id_input").value == focus_id


@pytest.mark.parametrize(
    "ready, failed, expected",
    [(False, False, "Quick PCA layout"), (True, False, "UMAP of the final CLS features"), (False, True, "PCA layout of the final CLS features (UMAP is unavailable")],
)
def test_overview_layout_follows_umap_state(monkeypatch, ready: bool, failed: bool, expected: str) -> None:
    from core.measures import projection

    monkeypatch.setattr(projection, "umap_ready", lambda: ready)
    monkeypatch.setattr(projection, "umap_failed", lambda: failed)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert any(c.value.startswith(expected) for c in at.caption)


def test_a_bad_upload_keeps_the_previous_images(app: AppTest) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[:2])
    app.radio(key="image_source").set_value("Upload images").run()
    uploader = app.sidebar.get("file_uploader")[0]
    uploader.set_value([(f"d{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    app.run()
    assert "Uploaded images (2 images)" in app.caption[0].value
    app.sidebar.get("file_uploader")[0].set_value([("empty.png", b"", "image/png")])
    app.run()
    assert not app.exception
    assert "empty.png is empty" in shown(app.error[0].value)
    assert "Still showing Uploaded images (2 images)" in shown(app.error[0].value)
    assert "Uploaded images (2 images)" in app.caption[0].value
