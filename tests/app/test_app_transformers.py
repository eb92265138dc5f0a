"""AppTest of loading Hugging Face transformers models from the home page: a repo id, a ZIP, bad ZIPs."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from helpers.app import load_transformers_model, notice_texts, started_app
from helpers.markdown import shown
from helpers.transformers import fake_hub_cache, hf_model, save, zip_folder

TIMEOUT = 180


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return started_app(monkeypatch, TIMEOUT)


def test_a_repo_id_from_the_local_cache_becomes_the_active_model(
    app: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    fake_hub_cache(tmp_path / "hub", "someone/vit-tiny", save(hf_model("ViTForImageClassification"), tmp_path / "vit"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    load_transformers_model(app, repo="someone/vit-tiny")
    header = shown(app.caption[0].value)
    assert header.startswith("**someone/vit-tiny (ViTForImageClassification")
    assert "2 layers × 4 heads" in header
    assert "kind a" in notice_texts(app) or len(app.dataframe[0].value) == 5  # id2label's names in the top-5


def test_a_zip_upload_loads_and_a_bad_one_keeps_the_previous_model(app: AppTest, tmp_path: Path) -> None:
    folder = save(hf_model("Dinov2WithRegistersModel"), tmp_path / "dino-reg")
    load_transformers_model(app, archive=("dino-reg.zip", zip_folder(folder, inside="dino-reg/")))
    header = shown(app.caption[0].value)
    assert header.startswith("**dino-reg (Dinov2WithRegistersModel")
    assert "4 prefix token(s)" in header and "backbone" in header

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bad:
        bad.writestr("../config.json", json.dumps({"model_type": "vit"}))
    app.sidebar.get("file_uploader")[0].set_value(("evil.zip", buffer.getvalue(), "application/zip"))
    app.run()
    app.button(key="load_model").click().run()
    assert not app.exception
    assert "unsafe path" in shown(app.sidebar.error[0].value)
    assert shown(app.caption[0].value).startswith("**dino-reg (Dinov2WithRegistersModel")  # still active

    swin = {"model_type": "swin", "architectures": ["SwinForImageClassification"]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as other:
        other.writestr("swin/config.json", json.dumps(swin))
        other.writestr("swin/model.safetensors", b"\0" * 16)
    app.sidebar.get("file_uploader")[0].set_value(("swin.zip", buffer.getvalue(), "application/zip"))
    app.run()
    app.button(key="load_model").click().run()
    assert "HeadScope reads transformers ViT, DeiT and DINOv2" in shown(app.sidebar.error[0].value)
    assert shown(app.caption[0].value).startswith("**dino-reg (Dinov2WithRegistersModel")


def test_a_typed_path_is_never_read_from_the_server(
    app: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core import load_model

    save(hf_model("ViTModel"), tmp_path / "local" / "vit")
    monkeypatch.chdir(tmp_path)
    assert load_model("local/vit", device="cpu").is_backbone  # the library reads the folder
    load_transformers_model(app, repo="local/vit")  # the app's visitor only names hub repos
    assert "not in the local Hugging Face cache" in shown(app.sidebar.error[0].value)
    assert "demo" in app.caption[0].value


def test_an_id_or_revision_the_hub_refuses_is_said_and_the_previous_model_stays(
    app: AppTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    fake_hub_cache(tmp_path / "hub", "someone/vit-tiny", save(hf_model("ViTForImageClassification"), tmp_path / "vit"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "secret.txt").write_text("TOP-SECRET")  # what the revision below points at, from the cache's refs/
    for typed, expected in [
        ("someone/vit-tiny@../../../secret.txt", "is not a branch, tag or commit id"),
        ("a--b/c", "is not a hub repo id"),
    ]:
        load_transformers_model(app, repo=typed)
        error = shown(app.sidebar.error[0].value)
        assert expected in error and "TOP-SECRET" not in error
        assert "demo" in app.caption[0].value


def test_the_start_model_may_be_a_transformers_folder_on_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = save(hf_model("DeiTForImageClassificationWithTeacher"), tmp_path / "deit-distilled")
    monkeypatch.setenv("HEADSCOPE_MODEL", str(folder))
    app = started_app(monkeypatch, TIMEOUT)
    assert not app.error
    header = shown(app.caption[0].value)
    assert header.startswith("**deit-distilled (DeiTForImageClassificationWithTeacher)")
    assert "2 prefix token(s)" in header and "5 classes" in header
    assert app.radio(key="model_source").value == "transformers model"
