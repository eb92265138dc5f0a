"""Hugging Face transformers checkpoints: built with transformers itself, loaded by HeadScope, compared.

Small random models of every supported class are made with ``transformers`` (a test-only
dependency), saved with ``save_pretrained``, loaded through ``core.load_model`` and run on the
same pixels: the attention of every block must match transformers' eager ``output_attentions``
within 1e-5 and the output (logits, or a backbone's pooled output) within 1e-4.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # test-only: the reference every conversion is compared with
from PIL import Image

from core import load_model
from core.errors import (
    CheckpointRejected,
    HeadScopeError,
    InvalidSetting,
    ModelUnavailable,
    UnsupportedModel,
)
from core.measures.attention import extract_attention
from core.models.transformers import load_transformers
from core.study.casestudy import CaseSettings
from helpers.archives import DAMAGE, corrupt_deflate, damage
from helpers.cli import FAST
from helpers.data import ROOT
from helpers.transformers import (
    CLASSES,
    SMALL,
    fake_hub_cache,
    hf_model,
    save,
    zip_folder,
)

BACKBONES = {"ViTModel", "DeiTModel", "Dinov2Model", "Dinov2WithRegistersModel"}


def reference(model, x: torch.Tensor, **kwargs):
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        out = model(pixel_values=x, output_attentions=True, **kwargs)
    attentions = torch.stack(out.attentions, dim=1)  # [B, L, H, T, T]
    value = out.logits if hasattr(out, "logits") else out.pooler_output
    return attentions, value


def compare(handle, model, x: torch.Tensor, **kwargs) -> tuple[float, float]:
    expected_attention, expected_output = reference(model, x, **kwargs)
    batch = extract_attention(handle, x)
    assert batch.attn.shape == expected_attention.shape
    return (
        float((batch.attn - expected_attention).abs().max()),
        float((batch.logits - expected_output).abs().max()),
    )


@pytest.mark.parametrize("name", list(CLASSES))
def test_every_supported_class_computes_what_transformers_computes(name: str, tmp_path: Path) -> None:
    model = hf_model(name)
    handle = load_model(str(save(model, tmp_path / name)), device="cpu")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    attention_error, output_error = compare(handle, model, x)
    assert attention_error <= 1e-5
    assert output_error <= 1e-4
    registers = CLASSES[name][1].get("num_register_tokens", 0)
    assert handle.num_prefix_tokens == 1 + (name.startswith("DeiT")) + registers
    assert handle.grid == (4, 4) and handle.num_layers == 2 and handle.num_heads == 4
    if name in BACKBONES:
        assert handle.is_backbone and handle.class_names == []
    else:
        assert handle.class_names == [f"kind {c}" for c in "abcde"]  # from id2label


@pytest.mark.parametrize("name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher",
                                  "Dinov2Model", "Dinov2WithRegistersModel"])
def test_another_input_size_resamples_the_position_table_as_transformers_does(name: str, tmp_path: Path) -> None:
    model = hf_model(name)
    handle = load_model(str(save(model, tmp_path / name)), device="cpu", img_size=48)
    assert handle.grid == (6, 6) and handle.img_size == (48, 48)
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    kwargs = {} if name.startswith("Dinov2") else {"interpolate_pos_encoding": True}
    attention_error, output_error = compare(handle, model, x, **kwargs)
    assert attention_error <= 1e-5
    assert output_error <= 1e-4


def test_layer_norm_eps_and_activation_come_from_the_config(tmp_path: Path) -> None:
    # eps 0.5 makes a difference a wrong eps cannot hide; quick_gelu is no plain GELU
    model = hf_model("ViTForImageClassification", layer_norm_eps=0.5, hidden_act="quick_gelu")
    handle = load_model(str(save(model, tmp_path / "vit")), device="cpu")
    assert handle.model.blocks[0].norm1.eps == 0.5
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    attention_error, output_error = compare(handle, model, x)
    assert attention_error <= 1e-5 and output_error <= 1e-4


def test_pytorch_bin_weights_load_through_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = hf_model("Dinov2ForImageClassification")
    folder = save(model, tmp_path / "bin", safetensors=False)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or real_load(*a, **k))
    handle = load_model(str(folder), device="cpu")
    assert calls == [True]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    assert compare(handle, model, x)[1] <= 1e-4


def test_a_checkpoint_without_a_pooler_loads_as_the_class_token(tmp_path: Path) -> None:
    config = transformers.ViTConfig(**SMALL, intermediate_size=80)
    model = transformers.ViTModel(config, add_pooling_layer=False).eval()
    handle = load_model(str(save(model, tmp_path / "nopool")), device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(pixel_values=x).last_hidden_state[:, 0]
    assert float((extract_attention(handle, x).logits - expected).abs().max()) <= 1e-4


PROCESSORS = [
    # (model class, config overrides, processor class, its arguments): each processor's own way of
    # reading its sizes (a whole number is a square for ViT and DeiT, a short side for Bit)
    ("Dinov2Model", {"image_size": 56}, "BitImageProcessor",
     dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=3,
          image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])),
    ("Dinov2Model", {}, "BitImageProcessor", dict(size=35, crop_size=32, resample=3)),
    ("ViTForImageClassification", {}, "ViTImageProcessor", dict(size=32, resample=2)),
    ("DeiTForImageClassification", {}, "DeiTImageProcessor",
     dict(size=37, crop_size=32, resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
]


@pytest.mark.parametrize("model_name, overrides, processor_name, arguments", PROCESSORS)
def test_preprocessing_gives_what_the_models_own_image_processor_gives(
    model_name: str, overrides: dict, processor_name: str, arguments: dict, tmp_path: Path
) -> None:
    folder = save(hf_model(model_name, **overrides), tmp_path / "pre")
    getattr(transformers, processor_name)(**arguments).save_pretrained(folder)
    handle = load_model(str(folder), device="cpu")
    assert handle.img_size == (32, 32) and handle.grid == (4, 4)  # the processor's crop, not config's image_size
    rng = np.random.default_rng(0)
    # odd and even margins: the crop's corner rounds down, as transformers rounds it
    for height, width in ((50, 70), (83, 64), (64, 83), (41, 41), (33, 120)):
        photo = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        ours = handle.preprocess([photo])
        # the PIL backend resizes as torchvision does on PIL images: the same numbers; the
        # torchvision backend resizes uint8 tensors, a pixel now and then one level apart
        level = 1 / 255 / min(handle.data_config["std"])
        for backend, largest, mean in ((processor_name + "Pil", 1e-5, 1e-6), (processor_name, level + 1e-5, 1e-3)):
            theirs = getattr(transformers, backend)(**arguments)(images=photo, return_tensors="pt")["pixel_values"]
            assert ours.shape == theirs.shape == (1, 3, 32, 32)
            difference = (ours - theirs).abs()
            assert float(difference.max()) <= largest and float(difference.mean()) <= mean, (backend, height, width)


def test_a_zip_of_the_folder_loads_like_the_folder(tmp_path: Path) -> None:
    model = hf_model("DeiTForImageClassificationWithTeacher")
    folder = save(model, tmp_path / "deit-tiny")
    data = zip_folder(folder, inside="deit-tiny/")
    from_zip = load_transformers(data, device="cpu")
    from_folder = load_model(str(folder), device="cpu")
    assert from_zip.key == from_folder.key
    assert "deit-tiny" in from_zip.name and "DeiTForImageClassificationWithTeacher" in from_zip.name


def test_a_repo_id_loads_from_the_local_hub_cache_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    model = hf_model("Dinov2WithRegistersModel")
    fake_hub_cache(tmp_path / "hub", "someone/dinov2-reg-tiny", save(model, tmp_path / "saved"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    handle = load_model("someone/dinov2-reg-tiny", device="cpu")
    assert handle.name.startswith("someone/dinov2-reg-tiny") and handle.num_prefix_tokens == 4
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    assert compare(handle, model, x)[0] <= 1e-5
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache and the hub is offline"):
        load_model("someone/not-cached", device="cpu")


# --- bad input: one sentence each, nothing loaded ------------------------------------------


def one_sentence(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "Traceback" not in text and len(text) < 400
    return text


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save(hf_model("ViTForImageClassification"), tmp_path_factory.mktemp("vit") / "vit")


def with_config(source: Path, target: Path, change) -> Path:
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    config = json.loads((source / "config.json").read_text())
    result = change(config)
    (target / "config.json").write_text(result if isinstance(result, str) else json.dumps(config))
    return target


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: "{not json", "config.json is not valid JSON"),
        (lambda c: "[1, 2]", "does not hold a JSON object"),
        (lambda c: "[" * 100_000 + "]" * 100_000, "not valid JSON"),
        (lambda c: c.update(hidden_size=10**12), "hidden_size must be a whole number from 1 to 16,384"),
        (lambda c: c.update(num_hidden_layers=100_000), "num_hidden_layers must be a whole number"),
        (lambda c: c.update(num_attention_heads="4"), "num_attention_heads must be a whole number"),
        (lambda c: c.update(num_attention_heads=5), "not divisible by its 5 attention heads"),
        (lambda c: c.update(image_size=True), "image_size must be a whole number"),
        (lambda c: c.update(patch_size=7), "not a multiple of its patch_size 7"),
        (lambda c: c.update(layer_norm_eps=float("nan")), "layer_norm_eps must be a number"),
        (lambda c: c.update(hidden_act="mish_v9"), "hidden_act is \"mish_v9\"; HeadScope supports gelu"),
        (lambda c: c.update(qkv_bias="yes"), "qkv_bias must be true or false"),
        (lambda c: c.update(id2label={"0": "a", "7": "b"}), "does not number its classes 0, 1, 2"),
        (lambda c: c.update(id2label={"9" * 5000: "a"}), "it must map \"0\", \"1\", ... to names"),
        (lambda c: c.update(id2label=[1, 2]), "id2label must map class numbers to names"),
        (lambda c: c.update(model_type="swin", architectures=["SwinForImageClassification"]), "this config.json is for 'SwinForImageClassification'"),
        (lambda c: c.update(model_type="vit_mae", architectures=["ViTMAEModel"]), "HeadScope reads transformers ViT, DeiT and DINOv2"),
        (lambda c: c.update(model_type="beit", architectures=None), "this config.json is for model_type \"beit\""),
        (lambda c: c.update(model_type="clip_text_model", architectures=["CLIPTextModel"]), "for 'CLIPTextModel'"),
        (lambda c: c.update(image_size=[32, 24]), "image_size is 32 x 24; HeadScope reads square ones only"),
        (lambda c: c.update(architectures=["ViTForMaskedImageModeling"]), "'ViTForMaskedImageModeling'"),
        (lambda c: c.update(architectures=["Dinov2Model"]), "names Dinov2Model but its model_type is 'vit'"),
        (lambda c: c.update(num_hidden_layers=3), "The weights do not match config.json"),
        (lambda c: c.update(hidden_size=64), "The weights do not match config.json"),
        (lambda c: c.update(intermediate_size=81), "mis-shaped"),
    ],
)
def test_a_bad_config_is_refused_in_one_sentence(saved_vit: Path, tmp_path: Path, change, expected: str) -> None:
    folder = with_config(saved_vit, tmp_path / "bad", change)
    with pytest.raises(HeadScopeError) as caught:
        load_model(str(folder), device="cpu")
    assert expected in one_sentence(caught.value)


def test_a_folder_without_weights_or_config_is_refused(saved_vit: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointRejected, match="has no config.json"):
        load_model(str(empty))
    (empty / "config.json").write_bytes((saved_vit / "config.json").read_bytes())
    with pytest.raises(CheckpointRejected, match="has a config.json but no weights"):
        load_model(str(empty))
    (empty / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointRejected, match="in shards"):
        load_model(str(empty))


def test_weights_of_another_model_or_damaged_weights_are_refused(saved_vit: Path, tmp_path: Path) -> None:
    other = save(hf_model("Dinov2Model"), tmp_path / "dino")
    folder = with_config(saved_vit, tmp_path / "mixed", lambda c: None)
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointRejected, match="do not match config.json") as caught:
        load_model(str(folder))
    one_sentence(caught.value)
    (folder / "model.safetensors").write_bytes((saved_vit / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointRejected, match="damaged or truncated"):
        load_model(str(folder))
    from safetensors.torch import load_file, save_file

    state = load_file(saved_vit / "model.safetensors")
    state["vit.layernorm.weight"] = torch.full_like(state["vit.layernorm.weight"], float("nan"))
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointRejected, match="NaN or infinite"):
        load_model(str(folder))


@pytest.mark.parametrize(
    "members, expected",
    [
        ({"../config.json": b"{}"}, "unsafe path"),
        ({"/etc/config.json": b"{}"}, "unsafe path"),
        ({"a\\..\\config.json": b"{}"}, "unsafe path"),
        ({"a/config.json": b"{}", "b/config.json": b"{}"}, "holds 2 models"),
        ({"readme.txt": b"hi"}, "has no config.json"),
        ({"x/y/z/config.json": b"{}"}, "has no config.json"),
    ],
)
def test_a_zip_with_path_tricks_or_no_model_is_refused(members: dict[str, bytes], expected: str) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    with pytest.raises(CheckpointRejected) as caught:
        load_transformers(buffer.getvalue())
    assert expected in one_sentence(caught.value)


def test_a_zip_bomb_and_a_symlink_are_refused(saved_vit: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/config.json", (saved_vit / "config.json").read_bytes())
        archive.writestr("m/model.safetensors", b"\0" * (64 * 2**20))  # 64 MB of zeros deflate to 64 KB
    with pytest.raises(CheckpointRejected, match="ZIP bomb"):
        load_transformers(buffer.getvalue())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        link = zipfile.ZipInfo("m/model.safetensors")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
        archive.writestr("m/config.json", (saved_vit / "config.json").read_bytes())
    with pytest.raises(CheckpointRejected, match="symbolic link"):
        load_transformers(buffer.getvalue())
    with pytest.raises(CheckpointRejected, match="not a readable ZIP"):
        load_transformers(b"PK\x03\x04 not really a zip")


def test_names_that_are_no_model_say_what_is_accepted(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="is not a hub repo id"):
        load_transformers(str(tmp_path), local_paths=False)
    with pytest.raises(UnsupportedModel, match="SwiGLU"):
        folder = save(hf_model("Dinov2Model"), tmp_path / "g")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "use_swiglu_ffn": True}))
        load_model(str(folder))


@pytest.mark.parametrize("name", ["DeiTForImageClassificationWithTeacher", "Dinov2WithRegistersForImageClassification"])
def test_the_whole_analysis_runs_on_a_transformers_model(name: str, tmp_path: Path) -> None:
    """Prefix tokens beyond the class token and timm subclasses go through every stage."""
    from core.pipeline.analysis import analyze_set

    model = hf_model(name)
    handle = load_model(str(save(model, tmp_path / name)), device="cpu")
    rng = np.random.default_rng(1)
    photos = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]
    result = analyze_set(handle, photos, torch.tensor([0, 1, 2, 3]), CaseSettings(max_maps=64, curve_steps=3))
    with torch.no_grad():
        expected = model(pixel_values=handle.preprocess(photos)).logits.argmax(dim=1)
    assert result.predictions.logits.argmax(axis=1).tolist() == expected.tolist()
    overall = result.importance.overall
    assert len(overall[overall.metric == "probability"]) == handle.num_layers * handle.num_heads
    assert np.isfinite(overall.value).all()
    assert np.isfinite(result.strength.distance).all() and result.strength.prefix_share.shape == (4, 2, 4)


def test_a_config_without_architectures_is_read_from_the_weights(saved_vit: Path, tmp_path: Path) -> None:
    folder = with_config(saved_vit, tmp_path / "plain", lambda c: c.pop("architectures") and c.update(image_size=[32, 32]))
    handle = load_model(str(folder), device="cpu")  # a square size may be written as [side, side]
    assert "ViTForImageClassification" in handle.name and len(handle.class_names) == 5 and handle.grid == (4, 4)


def not_on_hub(url: str):
    """What the hub client raises for a file the repo does not have (a 404)."""
    import httpx2
    from huggingface_hub.errors import RemoteEntryNotFoundError

    return RemoteEntryNotFoundError("absent", response=httpx2.Response(404, request=httpx2.Request("HEAD", url)))


def hub_online(monkeypatch: pytest.MonkeyPatch, *, reachable: bool, download=None, metadata=None) -> None:
    """Offline mode off, the hub's host name resolving or not, and the client's calls replaced when given."""
    import huggingface_hub
    from huggingface_hub import constants

    import core.models.checkpoint

    if download is not None:
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    if metadata is not None:
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(core.models.checkpoint, "_hub_resolves", lambda endpoint: reachable)


def test_a_repo_that_is_not_cached_with_the_hub_out_of_reach_is_said(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    hub_online(monkeypatch, reachable=False)
    with pytest.raises(ModelUnavailable, match="cannot be reached") as caught:
        load_model("facebook/dinov2-small")
    one_sentence(caught.value)


@pytest.mark.parametrize("name", ["ViTForImageClassification", "Dinov2Model"])
def test_weights_saved_under_transformers_5_module_names_load_too(name: str, tmp_path: Path) -> None:
    """A state dict saved by hand from a loaded model has the in-memory names (q_proj, layers.N)."""
    from safetensors.torch import save_file

    model = hf_model(name)
    folder = save(model, tmp_path / name)
    in_memory = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert any(".q_proj." in k for k in in_memory)  # the names this test is about
    save_file(in_memory, folder / "model.safetensors")
    handle = load_model(str(folder), device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    attention_error, output_error = compare(handle, model, x)
    assert attention_error <= 1e-5 and output_error <= 1e-4


@pytest.mark.slow
def test_the_command_line_analyses_a_transformers_folder(tmp_path: Path) -> None:
    from core.__main__ import main
    from core.study.bundle import load_bundle

    folder = save(hf_model("DeiTForImageClassification"), tmp_path / "deit")
    images = tmp_path / "images" / "kind b"
    images.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(images / f"photo{i}.png")
    out = tmp_path / "results.zip"
    code = main(["analyze", "--model", str(folder), "--images", str(tmp_path / "images"), "--out", str(out),
                 *FAST, "--max-maps", "16"])
    assert code == 0
    handle = load_model(str(folder), device="cpu")
    study = load_bundle(out.read_bytes(), model_key=handle.key)
    assert study.manifest["model"]["class_names"] == [f"kind {c}" for c in "abcde"]
    assert {item["label"] for item in study.manifest["image_set"]["images"]} == {1}  # folder "kind b": class 1


def test_an_input_grid_too_large_to_analyse_is_refused(saved_vit: Path, tmp_path: Path) -> None:
    folder = with_config(saved_vit, tmp_path / "huge", lambda c: c.update(patch_size=1, image_size=512))
    with pytest.raises(InvalidSetting, match="50,176 patches; HeadScope analyses at most 6,400") as caught:
        load_model(str(folder))
    one_sentence(caught.value)


# --- found in review: each once a traceback, a silent difference or an unbounded cost ---------


@pytest.mark.parametrize("name", ["DeiTForImageClassificationWithTeacher", "Dinov2ForImageClassification",
                                  "Dinov2WithRegistersForImageClassification", "ViTForImageClassification"])
def test_a_classifier_saved_with_no_labels_outputs_what_its_identity_head_reads(name: str, tmp_path: Path) -> None:
    model = hf_model(name, num_labels=0)
    handle = load_model(str(save(model, tmp_path / name)), device="cpu")
    assert handle.is_backbone
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    attention_error, output_error = compare(handle, model, x)  # teacher: both tokens' mean; DINOv2: 2 x 48 wide
    assert attention_error <= 1e-5 and output_error <= 1e-4


def test_registers_model_with_no_registers_loads(tmp_path: Path) -> None:
    model = hf_model("Dinov2WithRegistersModel", num_register_tokens=0)
    handle = load_model(str(save(model, tmp_path / "noreg")), device="cpu", img_size=48)  # the antialiased resampling
    assert handle.num_prefix_tokens == 1
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(9))
    attention_error, output_error = compare(handle, model, x)
    assert attention_error <= 1e-5 and output_error <= 1e-4


def test_the_key_changes_with_the_preprocessing_and_the_class_names(saved_vit: Path, tmp_path: Path) -> None:
    first = load_model(str(saved_vit), device="cpu").key
    renamed = with_config(saved_vit, tmp_path / "renamed", lambda c: c.update(id2label={str(i): f"other {i}" for i in range(5)}))
    assert load_model(str(renamed), device="cpu").key != first
    processed = with_config(saved_vit, tmp_path / "processed", lambda c: None)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1] * 3, image_std=[0.2] * 3).save_pretrained(processed)
    assert load_model(str(processed), device="cpu").key != first
    assert load_model(str(saved_vit), device="cpu").key == first  # and stays put for the same files


def test_an_image_size_the_position_table_does_not_have_is_refused(saved_vit: Path, tmp_path: Path) -> None:
    folder = with_config(saved_vit, tmp_path / "wrong-size", lambda c: c.update(image_size=64))  # weights hold 4x4
    with pytest.raises(CheckpointRejected, match="do not match config.json.*position_embeddings"):
        load_model(str(folder))


def test_duplicate_weights_under_two_names_are_refused(saved_vit: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = with_config(saved_vit, tmp_path / "twice", lambda c: None)
    state = load_file(folder / "model.safetensors")
    state["vit.layernorm.weight"], state["layernorm.weight"] = state["vit.layernorm.weight"], -state["vit.layernorm.weight"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointRejected, match="beside another tensor for the same weight"):
        load_model(str(folder))


def preprocessor(folder: Path, **fields) -> Path:
    base = {"do_resize": True, "size": {"height": 32, "width": 32}, "resample": 2, "do_normalize": True,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_rescale": True, "rescale_factor": 1 / 255}
    (folder / "preprocessor_config.json").write_text(json.dumps({**base, **fields}))
    return folder


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"resample": [3]}, "resample is list"),
        ({"resample": True}, "resample is true"),
        ({"size": {"height": 32, "width": 24}}, "size is 32 x 24; HeadScope feeds square inputs only"),
        ({"size": {"longest_edge": 32}}, "size is dict"),
        ({"do_center_crop": True, "crop_size": 8, "size": 4096}, "would resize images to"),
        ({"image_std": [1e-320, 1, 1]}, "image_std is list"),
        ({"rescale_factor": 1e308}, "rescale_factor is 1e+308"),
        ({"image_mean": "half"}, "image_mean is \"half\""),
        ({"do_resize": "yes"}, "do_resize is \"yes\""),
    ],
)
def test_a_bad_preprocessor_config_is_refused_in_one_sentence(saved_vit: Path, tmp_path: Path, fields, expected: str) -> None:
    folder = preprocessor(with_config(saved_vit, tmp_path / "pre", lambda c: None), **fields)
    with pytest.raises(HeadScopeError) as caught:
        load_model(str(folder), img_size=640 if "crop_size" in fields else None)
    assert expected in one_sentence(caught.value)


def test_a_short_side_resize_without_a_crop_feeds_the_centre_square(saved_vit: Path, tmp_path: Path) -> None:
    folder = preprocessor(with_config(saved_vit, tmp_path / "short", lambda c: None), size={"shortest_edge": 32})
    handle = load_model(str(folder), device="cpu")
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, 20:60] = 255  # a white centre square between black sides
    x = handle.preprocess([Image.fromarray(wide)])
    assert x.shape == (1, 3, 32, 32)
    # the white centre, (1 - 0.5) / 0.5 = 1, with the resize's blur at its edges; a squash would be half black
    assert float(x.mean()) > 0.9


def test_an_empty_entry_name_in_a_zip_is_refused(saved_vit: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/config.json", (saved_vit / "config.json").read_bytes())
        archive.writestr(zipfile.ZipInfo(""), b"hi")  # zipfile's is_dir() raises IndexError on it
    with pytest.raises(CheckpointRejected, match="an entry without a name") as caught:
        load_transformers(buffer.getvalue())
    one_sentence(caught.value)


@pytest.mark.parametrize("name", ["~nosuchuser_headscope/x", "a" * 5000, "owner/x" + "\0"])
def test_names_no_filesystem_accepts_give_a_sentence(name: str) -> None:
    with pytest.raises(HeadScopeError) as caught:
        load_model(name)
    one_sentence(caught.value)


def test_a_repo_is_fetched_config_first_and_huge_weights_are_never_downloaded(
    saved_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub, mocked: config.json from the cache, the weights declared at 3 GB on the hub."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(saved_vit.parent))  # where the mocked client's files are

    cached = {"config.json": saved_vit / "config.json"}
    downloads: list[str] = []

    def download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        if local_files_only:
            if filename in cached:
                return str(cached[filename])
            raise LocalEntryNotFoundError("not cached")
        downloads.append(filename)
        return str(saved_vit / filename)

    class Metadata:
        def __init__(self, size):
            self.size = size

    def metadata(url, timeout=None):
        if url.endswith("model.safetensors"):
            return Metadata(3 * 2**30)
        raise not_on_hub(url)

    hub_online(monkeypatch, reachable=True, download=download, metadata=metadata)
    with pytest.raises(CheckpointRejected, match="HeadScope does not download it") as caught:
        load_model("someone/partly-cached")
    one_sentence(caught.value)
    assert downloads == []  # the cached config came from the cache; the weights were never fetched
    cached["model.safetensors"] = saved_vit / "model.safetensors"  # a partial cache completed by hand
    assert load_model("someone/partly-cached", device="cpu").name.startswith("someone/partly-cached")


def test_a_network_failure_on_the_hub_is_said_not_taken_for_a_missing_file(
    saved_vit: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preprocessor's file lost to a dropped connection must not silently become the defaults."""
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(saved_vit.parent))

    def download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        if local_files_only and filename == "config.json":
            return str(saved_vit / "config.json")
        raise LocalEntryNotFoundError("connection error")  # what the client raises when the hub drops

    def metadata(url, timeout=None):
        raise LocalEntryNotFoundError("connection error")

    hub_online(monkeypatch, reachable=True, download=download, metadata=metadata)
    with pytest.raises(ModelUnavailable, match="could not be fetched from the Hugging Face hub") as caught:
        load_model("someone/flaky")
    one_sentence(caught.value)


def test_a_folder_named_like_a_timm_model_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "test_vit").mkdir()  # say, an earlier --out folder
    monkeypatch.chdir(tmp_path)
    assert "test_vit" in load_model("test_vit", pretrained=False, device="cpu").name


def test_a_classifier_the_config_gives_no_labels_is_left_unused(saved_vit: Path, tmp_path: Path) -> None:
    """num_labels 0 beside classifier weights: transformers builds an identity head and ignores them."""
    folder = with_config(saved_vit, tmp_path / "nolabels", lambda c: c.update(id2label={}, label2id={}))
    handle = load_model(str(folder), device="cpu")
    assert handle.is_backbone
    config = transformers.ViTConfig.from_pretrained(folder)
    model = transformers.ViTForImageClassification.from_pretrained(folder, config=config).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(10))
    assert compare(handle, model, x)[1] <= 1e-4


# --- what a typed hub id or a damaged ZIP may not do -----------------------------------------

SECRET = "TOP-SECRET-not-a-commit-id"
COMMIT = "0" * 40  # the snapshot fake_hub_cache's refs/main names


def cached_vit_beside_a_secret(saved_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """someone/vit-tiny in a local hub cache, offline; a secret file next to the cache (returned)."""
    from huggingface_hub import constants

    fake_hub_cache(tmp_path / "hub", "someone/vit-tiny", saved_vit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return secret


@pytest.mark.parametrize(
    "revision",
    # refs/ is <cache>/models--someone--vit-tiny/refs: three levels up is the secret's folder
    ["../../../secret.txt", "{secret}", "refs/../../../../secret.txt", "main/../../../..", "main\0", "m" * 129, "main~1"],
)
def test_a_revision_that_names_a_path_is_refused_before_any_file_is_opened(
    revision: str, saved_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = cached_vit_beside_a_secret(saved_vit, tmp_path, monkeypatch)
    opened: list[str] = []
    real_open = io.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    with pytest.raises(ModelUnavailable, match="is not a branch, tag or commit id") as caught:
        load_model(f"someone/vit-tiny@{revision.format(secret=secret)}", local_paths=False)
    assert SECRET not in one_sentence(caught.value)
    assert opened == []


@pytest.mark.parametrize("revision", ["main", "v1.0", "refs/pr/1", COMMIT])
def test_branch_tag_pull_request_and_commit_revisions_load_from_the_cache(
    revision: str, saved_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached_vit_beside_a_secret(saved_vit, tmp_path, monkeypatch)
    ref = tmp_path / "hub" / "models--someone--vit-tiny" / "refs" / revision
    if revision != COMMIT:  # a commit id names its snapshot directly
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(COMMIT)
    handle = load_model(f"someone/vit-tiny@{revision}", local_paths=False, device="cpu")
    assert handle.name.startswith(f"someone/vit-tiny@{revision} (ViTForImageClassification")


@pytest.mark.parametrize(
    "repo_id",
    ["facebook/dinov2-small", "A.b_c/D-9", "_x/y_", "a--b/c", "a..b/c", "-a/b", "a/b.", "a/b.git", "caf\u00e9/vit",
     "a/" + "b" * 96, "a/" + "b" * 97],
)
def test_a_repo_id_is_accepted_exactly_when_the_hub_client_accepts_it(
    repo_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
        hub_accepts = True
    except HFValidationError:
        hub_accepts = False
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    hub_online(monkeypatch, reachable=False)
    with pytest.raises(ModelUnavailable) as caught:
        load_model(repo_id)
    expected = "not in the local Hugging Face cache" if hub_accepts else "is not a hub repo id"
    assert expected in one_sentence(caught.value)


@pytest.mark.parametrize("error", ["HFValidationError", "OfflineModeIsEnabled", "UnicodeDecodeError"])
def test_any_error_of_the_hub_client_becomes_one_sentence(error: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the client raises for an id it refuses, in offline mode, and on a binary ref file in the cache."""
    import huggingface_hub
    from huggingface_hub import errors

    def fail(*args, **kwargs):
        if error == "UnicodeDecodeError":
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        raise getattr(errors, error)("refused")

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", fail)
    hub_online(monkeypatch, reachable=True, download=fail, metadata=fail)
    with pytest.raises(ModelUnavailable, match="could not be fetched from the Hugging Face hub") as caught:
        load_model("someone/vit-tiny", local_paths=False)
    assert error in one_sentence(caught.value)


def test_a_cached_file_that_links_outside_the_cache_is_not_read(
    saved_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = cached_vit_beside_a_secret(saved_vit, tmp_path, monkeypatch)
    config = tmp_path / "hub" / "models--someone--vit-tiny" / "snapshots" / COMMIT / "config.json"
    config.unlink()
    config.symlink_to(secret)
    with pytest.raises(CheckpointRejected, match="outside the Hugging Face cache") as caught:
        load_model("someone/vit-tiny", local_paths=False)
    assert SECRET not in one_sentence(caught.value)


@pytest.mark.parametrize("member", ["m/config.json", "m/model.safetensors"])
@pytest.mark.parametrize("kind", DAMAGE)
def test_a_zip_with_a_damaged_member_is_refused_in_one_sentence(kind: str, member: str, saved_vit: Path) -> None:
    data = damage(kind, zip_folder(saved_vit, inside="m/"), member)
    with pytest.raises(CheckpointRejected) as caught:
        load_transformers(data)
    assert member.removeprefix("m/") in one_sentence(caught.value)


@pytest.mark.slow
def test_the_command_line_refuses_a_corrupt_zip_in_one_line(saved_vit: Path, tmp_path: Path) -> None:
    (tmp_path / "corrupt.zip").write_bytes(corrupt_deflate(zip_folder(saved_vit, inside="m/"), "m/config.json"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "core", "analyze", "--model", "corrupt.zip", "--images", "images", "--out", "out.zip"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 2, done.stderr  # the README's exit code for bad input
    assert done.stderr.splitlines() == ["error: config.json could not be read from the ZIP; it is damaged or encrypted."]


@pytest.mark.parametrize(
    "key, dtype",
    [("vit.encoder.layer.0.attention.attention.query.weight", torch.int8),
     ("vit.encoder.layer.1.attention.attention.value.bias", torch.int32)],
)
def test_an_integer_query_key_or_value_is_refused(key: str, dtype: torch.dtype, saved_vit: Path, tmp_path: Path) -> None:
    """Stacked into qkv beside float tensors, torch.cat would make it float and hide it."""
    from safetensors.torch import load_file, save_file

    folder = with_config(saved_vit, tmp_path / "integer", lambda c: None)
    state = load_file(saved_vit / "model.safetensors")
    state[key] = state[key].to(dtype)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointRejected) as caught:
        load_model(str(folder))
    assert f"'{key}' as {dtype}" in one_sentence(caught.value)
