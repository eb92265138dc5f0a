"""Small random Hugging Face transformers models: built with ``transformers`` itself (a test-only
dependency), saved with ``save_pretrained``, zipped, or laid out as the hub's cache."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch
import transformers

SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8, num_labels=5)
# every supported class: its config class and what that config needs besides SMALL
CLASSES = {
    "ViTModel": ("ViTConfig", dict(intermediate_size=80)),
    "ViTForImageClassification": ("ViTConfig", dict(intermediate_size=80)),
    "DeiTModel": ("DeiTConfig", dict(intermediate_size=80)),
    "DeiTForImageClassification": ("DeiTConfig", dict(intermediate_size=80)),
    "DeiTForImageClassificationWithTeacher": ("DeiTConfig", dict(intermediate_size=80)),
    "Dinov2Model": ("Dinov2Config", dict(mlp_ratio=3)),
    "Dinov2ForImageClassification": ("Dinov2Config", dict(mlp_ratio=3)),
    "Dinov2WithRegistersModel": ("Dinov2WithRegistersConfig", dict(mlp_ratio=3, num_register_tokens=3)),
    "Dinov2WithRegistersForImageClassification": ("Dinov2WithRegistersConfig", dict(mlp_ratio=3, num_register_tokens=3)),
}


def hf_model(name: str, seed: int = 0, **overrides):
    """A random transformers model of class ``name``: every parameter drawn, none left at its init."""
    config_class, extra = CLASSES[name]
    config = getattr(transformers, config_class)(**{**SMALL, **extra, **overrides})
    config.id2label = {i: f"kind {chr(97 + i)}" for i in range(config.num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    model = getattr(transformers, name)(config, **({"add_pooling_layer": True} if name in {"ViTModel", "DeiTModel"} else {}))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.2)  # layer scales, LayerNorms and biases move off 1 and 0
    return model.eval()


def save(model, folder: Path, *, safetensors: bool = True) -> Path:
    """``model.save_pretrained(folder)``; with ``safetensors=False`` its weights as a ``pytorch_model.bin``."""
    model.save_pretrained(folder)
    if not safetensors:
        weights = folder / "model.safetensors"
        from safetensors.torch import load_file

        torch.save(load_file(weights), folder / "pytorch_model.bin")
        weights.unlink()
    return folder


def zip_folder(folder: Path, *, inside: str = "", extra: dict[str, bytes] | None = None) -> bytes:
    """A ZIP of a saved folder's files under ``inside``, plus ``extra`` members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.iterdir()):
            archive.writestr(inside + path.name, path.read_bytes())
        for name, content in (extra or {}).items():
            archive.writestr(name, content)
    return buffer.getvalue()


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub writes: refs/main names a snapshot holding the files."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
