"""core.models (handle, load, checkpoint): building handles, loading weights safely, typed errors."""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save, save_file
from timm.models.deit import VisionTransformerDistilled

import core.models.load
from core.errors import CheckpointRejected, ModelUnavailable, UnsupportedModel
from core.models.handle import wrap_model
from core.models.load import DATA_DIR, load_model
from helpers.models import tiny_vit


def test_test_vit_handle_describes_the_model() -> None:
    handle = load_model("test_vit", pretrained=False, device="cpu")
    assert (handle.num_layers, handle.num_heads, handle.grid, handle.num_prefix_tokens) == (6, 2, (10, 10), 1)
    assert len(handle.class_names) == 1000 and handle.class_names[281] == "tabby, tabby cat"
    x = handle.preprocess([Image.new("RGB", (300, 200), "red")])
    assert x.shape == (1, 3, 160, 160)


@pytest.mark.parametrize(
    "model, prefix, grid",
    [
        (tiny_vit(reg_tokens=4), 5, (4, 4)),
        (tiny_vit(class_token=False, reg_tokens=2, global_pool="avg"), 2, (4, 4)),
        (tiny_vit(img_size=(16, 40)), 1, (2, 5)),
        (VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=24, depth=2, num_heads=3, num_classes=4), 2, (4, 4)),
    ],
)
def test_prefix_tokens_and_grid_come_from_the_model(model, prefix: int, grid: tuple[int, int]) -> None:
    handle = wrap_model(model, device="cpu")
    assert handle.num_prefix_tokens == prefix
    assert handle.grid == grid
    assert handle.num_tokens == prefix + grid[0] * grid[1]


def test_unsupported_architectures_are_refused_with_a_sentence() -> None:
    with pytest.raises(UnsupportedModel, match="attention head"):
        load_model("test_vit3", pretrained=False)  # attention-pool head
    with pytest.raises(UnsupportedModel, match="not a timm VisionTransformer"):
        wrap_model(timm.create_model("test_resnet", pretrained=False))
    with pytest.raises(UnsupportedModel, match="not a timm VisionTransformer"):
        load_model("test_convnext", pretrained=False)
    with pytest.raises(ModelUnavailable, match="no model called"):
        load_model("vit_nonexistent_patch3")


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def test_safetensors_checkpoint_path_and_bytes(tmp_path: Path) -> None:
    source = timm.create_model("test_vit", pretrained=False, num_classes=7)
    path = tmp_path / "weights.safetensors"
    save_file(_state(source), str(path))
    for checkpoint in (path, path.read_bytes()):
        handle = load_model("test_vit", checkpoint=checkpoint, device="cpu")
        assert len(handle.class_names) == 7  # classifier width read from the checkpoint
        for key, value in source.state_dict().items():
            assert torch.equal(handle.model.state_dict()[key], value), key


def test_torch_checkpoint_with_training_wrapper(tmp_path: Path) -> None:
    source = timm.create_model("test_vit", pretrained=False, num_classes=3)
    buffer = io.BytesIO()
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, buffer)
    handle = load_model("test_vit", checkpoint=buffer.getvalue(), device="cpu")
    assert torch.equal(handle.model.head.weight, source.head.weight)


class _Payload:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_never_runs(tmp_path: Path, legacy: bool) -> None:
    sentinel = tmp_path / "pwned"
    if legacy:
        data = pickle.dumps({"head.weight": _Payload(sentinel)}, protocol=2)
    else:
        buffer = io.BytesIO()
        torch.save({"head.weight": _Payload(sentinel)}, buffer)
        data = buffer.getvalue()
    with pytest.raises(CheckpointRejected, match="could not be loaded safely"):
        load_model("test_vit", checkpoint=data)
    renamed = tmp_path / "model.safetensors"
    renamed.write_bytes(data)
    with pytest.raises(CheckpointRejected):
        load_model("test_vit", checkpoint=renamed)
    assert not sentinel.exists()
    # the payload is real: unpickling it unsafely would have created the sentinel
    pickle.loads(pickle.dumps(_Payload(sentinel)))
    assert sentinel.exists()


def test_damaged_and_mismatched_checkpoints(tmp_path: Path) -> None:
    source = timm.create_model("test_vit", pretrained=False)
    good = save(_state(source))
    buffer = io.BytesIO()
    torch.save(source.state_dict(), buffer)
    cases = {
        "empty": b"",
        "truncated safetensors": good[: len(good) // 2],
        "truncated torch": buffer.getvalue()[: len(buffer.getvalue()) // 2],
        "not a checkpoint": b"hello, I am a text file",
    }
    for label, data in cases.items():
        with pytest.raises(CheckpointRejected):
            load_model("test_vit", checkpoint=data)
    with pytest.raises(CheckpointRejected, match="does not fit"):
        load_model("test_vit2", checkpoint=good)  # 8 blocks expected, 6 given
    nan_state = _state(source)
    nan_state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    with pytest.raises(CheckpointRejected, match="NaN"):
        load_model("test_vit", checkpoint=save(nan_state))
    with pytest.raises(CheckpointRejected, match="own weights"):
        load_model("demo", checkpoint=good)


def _fake_hub_cache(cache: Path, repo_id: str, state: dict[str, torch.Tensor]) -> None:
    """Lay out a Hugging Face hub cache holding ``model.safetensors`` for ``repo_id``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_pretrained_weights_from_the_local_hub_cache_when_offline(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    source = timm.create_model("test_vit", pretrained=False)
    torch.nn.init.normal_(source.head.weight)
    _fake_hub_cache(tmp_path, "timm/test_vit.r160_in1k", _state(source))
    handle = load_model("test_vit", device="cpu")
    assert torch.equal(handle.model.head.weight, source.head.weight)
    with pytest.raises(ModelUnavailable, match="not in the local Hugging Face cache"):
        load_model("test_vit2")


def test_demo_model_loads_with_no_network_and_matches_its_card(demo_handle, monkeypatch) -> None:
    card = json.loads((DATA_DIR / "demo_vit.json").read_text())
    assert demo_handle.grid == (8, 8) and demo_handle.num_prefix_tokens == 1
    assert demo_handle.num_layers == card["architecture"]["depth"] == 6
    assert demo_handle.num_heads == card["architecture"]["num_heads"] == 6
    assert demo_handle.class_names == [str(d) for d in range(10)]
    assert demo_handle.key.startswith("demo-")

    def no_network(*args, **kwargs):
        raise AssertionError("the demo model must load without any network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert load_model("demo").key == demo_handle.key


def test_demo_weights_that_do_not_match_the_card_are_refused(tmp_path: Path, monkeypatch) -> None:
    card = json.loads((DATA_DIR / "demo_vit.json").read_text())
    weights = bytearray((DATA_DIR / card["weights"]).read_bytes())
    weights[-1] ^= 0xFF  # one flipped bit in the last tensor
    (tmp_path / card["weights"]).write_bytes(bytes(weights))
    (tmp_path / "demo_vit.json").write_text(json.dumps(card))
    monkeypatch.setattr(core.models.load, "DATA_DIR", tmp_path)
    monkeypatch.setattr(core.models.load, "DEMO_CARD", tmp_path / "demo_vit.json")
    with pytest.raises(ModelUnavailable, match="not the ones its card describes"):
        load_model("demo")


def test_demo_model_reaches_its_accuracy_through_the_app_pipeline(demo_handle) -> None:
    from core.inputs.images import demo_digits_set
    from core.measures.inference import predict_images

    card = demo_handle.card
    image_set = demo_digits_set(card["split"]["seed"], card["split"]["test_fraction"])
    preds = predict_images(demo_handle, image_set.pil_images())
    accuracy = float((preds.predicted == torch.tensor(image_set.labels).numpy()).mean())
    assert accuracy >= 0.97
    assert abs(accuracy - card["test_accuracy"]) <= 1 / len(image_set)


def test_unreachable_hub_fails_fast_without_download_attempts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    def no_dns(*args, **kwargs):
        raise socket.gaierror("Name or service not known")

    def download(*args, local_files_only: bool = False, **kwargs):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        pytest.fail("no download may be attempted when the hub's name does not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    with pytest.raises(ModelUnavailable, match="cannot be reached"):
        load_model("test_vit")


def test_device_preference_is_cuda_then_mps_then_cpu(monkeypatch) -> None:
    from core.models.handle import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    assert pick_device("cpu").type == "cpu"
