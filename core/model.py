"""Loading Vision Transformers and describing them: the ``ViTHandle`` every analysis takes.

A handle wraps one timm ``VisionTransformer`` whose blocks use timm's standard
``Attention`` module, together with what the analyses need to know about it: the
number of layers and heads, the patch grid, how many prefix tokens (CLS,
distillation, registers) precede the patches, the class names and the exact image
preprocessing. Weights come from the embedded demo model, from the Hugging Face hub
(or its local cache when offline), or from a checkpoint the user supplies. Loading a
checkpoint is a security boundary: safetensors first, ``torch.load`` only with
``weights_only=True``, and no unsafe fallback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import threading
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn

from core._hooks import locked_forward
from core._memory import check_fits, out_of_memory_as_sentence
from core._zipcheck import (
    ARCHIVE_ERRORS, EOCD, EOCD_FORMAT, EOCD_SIZE, LOCATOR, LOCATOR_SIZE, ZIP64, ZIP64_FORMAT, ZIP64_SIZE,
    declared_directory,
)
from core.errors import (
    CheckpointRejected,
    HeadScopeError,
    InvalidSetting,
    LabelsMismatch,
    ModelUnavailable,
    NonFiniteOutputs,
    UnsupportedModel,
)

if TYPE_CHECKING:
    from core.probe import LinearProbe

__all__ = [
    "BUILTIN_MODELS",
    "DATA_DIR",
    "DEFAULT_IMG_SIZE",
    "DEMO_CARD",
    "DEMO_NAME",
    "DINOV2_NAME",
    "FASHION_NAME",
    "FASHION_PROBE",
    "LoadProgress",
    "ViTHandle",
    "imagenet_class_names",
    "imagenet_synsets",
    "load_model",
    "model_lock",
    "pick_device",
    "prefix_names",
    "wrap_model",
]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
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
# A model whose native grid has more patches than ViT-B/16 at 384 px (24 x 24) runs at
# DEFAULT_IMG_SIZE unless the user picks a size: DINOv2 is built at 518 px (37 x 37
# patches), where one image's attention alone is 12 layers x 6 heads x 1370^2 floats (540 MB).
_MAX_DEFAULT_PATCHES = 24 * 24
DEFAULT_IMG_SIZE = 224
# What loading reports while it works: (stage description, fraction done in [0, 1]).
LoadProgress = Callable[[str, float], None]

# timm's ViT headers measure about 100 bytes a tensor: 14 KB for ViT-B (152 tensors), 47 KB for
# ViT-g (488) and 59 KB for the 7B DINOv3 (606). 1 MiB leaves 17 times that for metadata and long
# names and parses in milliseconds; an 87 MB header of empty tensors took 23 s and 1.8 GB.
_SAFETENSORS_MAX_HEADER = 2**20
_ZIP_MAGIC = b"PK\x03\x04"

_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises hooked forwards of ``model``, shared by all its handles."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the best one present: ``cuda``, then ``mps``, then the CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def prefix_names(num_prefix_tokens: int, num_registers: int = 0, class_token: bool = True) -> tuple[str, ...]:
    """Names of a model's prefix tokens in timm's order: class token, distillation token, registers.

    Any prefix token that is neither a class token nor a register is the distillation token.
    """
    registers = max(0, min(num_registers, num_prefix_tokens))
    others = num_prefix_tokens - registers
    names = []
    if class_token and others:
        names.append("CLS")
        others -= 1
    names += ["distillation"] * others
    return (*names, *(f"register {i + 1}" for i in range(registers)))


@dataclass(frozen=True, eq=False)
class ViTHandle:
    """A loaded ViT plus the facts every analysis needs. Shared by sessions: never mutate.

    Attributes:
        model: the timm ``VisionTransformer`` in eval mode, on ``device``.
        device: where the model and every batch run.
        num_layers: number of transformer blocks ``L``.
        num_heads: attention heads per block ``H``.
        grid: patch grid ``(rows, cols)``; tokens after the prefix are patches in row-major order.
        num_prefix_tokens: CLS, distillation and register tokens before the patches.
        class_names: one display name per output class; empty for a backbone (no
            classifier: ``model(x)`` returns the pooled features).
        name: what the user picked (``"demo"``, a timm name, or a name plus checkpoint).
        key: content hash of architecture and weights; keys every cached result.
        data_config: timm data config (input_size, mean, std, interpolation, crop_pct).
        card: the demo model's JSON card, else ``None``.
        probe: the linear probe that gives a backbone its classes (``core.probe``), else ``None``.
        backbone: the backbone handle the probe sits on, else ``None``.
    """

    model: nn.Module
    device: torch.device
    num_layers: int
    num_heads: int
    grid: tuple[int, int]
    num_prefix_tokens: int
    class_names: list[str]
    name: str
    key: str
    data_config: Mapping[str, Any]
    card: Mapping[str, Any] | None = None
    probe: "LinearProbe | None" = None
    backbone: "ViTHandle | None" = None
    _transform: Callable[[Image.Image], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def is_backbone(self) -> bool:
        """No classifier head: the model's output is its pooled features, and there are no classes."""
        return not self.class_names

    @property
    def img_size(self) -> tuple[int, int]:
        """Input height and width in pixels."""
        return int(self.data_config["input_size"][1]), int(self.data_config["input_size"][2])

    @property
    def num_tokens(self) -> int:
        """Sequence length ``T`` = prefix tokens + rows * cols."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    @property
    def prefix_names(self) -> tuple[str, ...]:
        """What each prefix token is, in token order: ``"CLS"``, ``"distillation"``, ``"register 1"``, ...

        timm puts the class token first, then the distillation token, then the registers.
        """
        registers = int(getattr(self.model, "num_reg_tokens", 0) or 0)
        return prefix_names(self.num_prefix_tokens, registers, getattr(self.model, "cls_token", None) is not None)

    @property
    def num_registers(self) -> int:
        """Register tokens (Darcet et al. 2024) among the prefix tokens."""
        return sum(name.startswith("register") for name in self.prefix_names)

    @property
    def patch_size(self) -> tuple[int, int]:
        """Patch height and width in input pixels."""
        return tuple(self.model.patch_embed.patch_size)  # type: ignore[return-value]

    @property
    def in_chans(self) -> int:
        return int(self.data_config["input_size"][0])

    @property
    def lock(self) -> threading.RLock:
        return model_lock(self.model)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Turn PIL images into the model's input batch ``[B, C, H, W]`` (on the CPU)."""
        mode = "L" if self.in_chans == 1 else "RGB"
        return torch.stack([self._transform(image.convert(mode)) for image in images])


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
            ViT-S/14 backbone (prepared once from a registry package, see ``core.dinov2``),
            a timm model name, or a Hugging Face transformers ViT, DeiT or DINOv2: a hub repo
            id (``facebook/dinov2-small``; the local cache first), a folder written by
            ``save_pretrained`` or a ZIP file of one (see ``core.hfmodels``).
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
    from core import hfmodels

    if hfmodels.is_transformers_source(name, local_paths=local_paths):
        if checkpoint is not None:
            raise CheckpointRejected(
                f"'{name}' is a transformers model with its own weights; a checkpoint goes with a timm name."
            )
        return hfmodels.load_transformers(
            name, device=device, img_size=img_size, local_paths=local_paths, progress=progress
        )
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
        state = _read_checkpoint(checkpoint, name)  # checked against the architecture before any model is built
        num_classes = _classifier_width({k: (tuple(v.shape), v.dtype) for k, v in state.items()})
        model = _create_supported(name, num_classes=num_classes, img_size=size)
        _load_weights(model, _fit_position_table(model, state, name), f"architecture '{name}'")
        key = f"{name}-{_model_digest(model)}"
        return _make_handle(
            model, name=f"{name} (checkpoint {key[-8:]}{suffix})", device=device, key=key, refuse=CheckpointRejected
        )
    if not pretrained:
        model = _create_supported(name, img_size=size)
        return _make_handle(model, name=f"{name} (random weights{suffix})", device=device)
    path = _pretrained_weights_path(name)  # before building: an offline user hears at once
    model = _create_supported(name, img_size=size)
    state = _read_checkpoint(path, name)
    _load_weights(model, _fit_position_table(model, state, name), f"architecture '{name}'")
    return _make_handle(model, name=name if size is None else f"{name} ({size} px)", device=device)


def wrap_model(
    model: nn.Module,
    *,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> ViTHandle:
    """Describe an in-memory timm ViT (put in eval mode and moved to ``device``).

    Raises:
        UnsupportedModel: not a ViT whose blocks use timm's standard attention.
    """
    _check_supported(model, type(model).__name__)
    return _make_handle(model, name=type(model).__name__, device=device, class_names=class_names)


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions shipped with timm, e.g. ``"tabby, tabby cat"``."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def imagenet_synsets() -> list[str]:
    """WordNet ids (``n02123045``) of the ImageNet-1k classes, in class order."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo().label_names())


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
    from core import dinov2

    size = DEFAULT_IMG_SIZE if img_size is None else _check_img_size(img_size, dinov2.PATCH_SIZE)
    check_fits(lambda: _create_supported(dinov2.TIMM_NAME, num_classes=0, img_size=size), DINOV2_NAME)
    weights = dinov2.prepare_weights(progress=progress)
    if progress is not None:
        progress("building the model", 1.0)
    model = dinov2.build_model(weights, img_size=size)
    return _make_handle(model, name=DINOV2_NAME if size == DEFAULT_IMG_SIZE else f"{DINOV2_NAME} ({size} px)", device=device)


def _load_fashion(device: str | torch.device | None, img_size: int | None, progress: LoadProgress | None) -> ViTHandle:
    """DINOv2-S with the shipped Fashion-MNIST probe, checked against the weights it was fitted on."""
    from core import dinov2
    from core.errors import ProbeRejected
    from core.probe import probe_from_bytes, with_probe

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


def _check_img_size(img_size: int, patch: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < patch or img_size % patch:
        raise InvalidSetting(
            f"The input size must be a positive multiple of the model's {patch} px patches "
            f"(e.g. {patch * (DEFAULT_IMG_SIZE // patch)}), not {img_size!r}."
        )
    return img_size


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


def _large_grid_size(patches: int, side: int, patch: int) -> int | None:
    """The default input side of a model built for ``patches`` patches at ``side`` px, or ``None`` for its own.

    A model built for more than 24 x 24 patches at more than 224 px runs at 224 px
    (rounded down to whole patches); smaller ones, and ViT-B/8 at 224, keep their size.
    """
    size = patch * max(1, DEFAULT_IMG_SIZE // patch)
    return None if patches <= _MAX_DEFAULT_PATCHES or side <= size else size


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


def _create_supported(name: str, num_classes: int | None = None, img_size: int | None = None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as err:  # timm raises assorted errors for models that cannot be built
        raise ModelUnavailable(
            f"timm could not build '{name}' ({type(err).__name__}); check the name and its pretrained tag."
        ) from err
    _check_supported(model, name)
    return model


def _check_supported(model: nn.Module, label: str) -> None:
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer):
        raise UnsupportedModel(
            f"'{label}' is not a timm VisionTransformer; HeadScope supports vit_*, deit_*, deit3_* and register variants."
        )
    blocks = list(getattr(model, "blocks", []))
    if not blocks or any(type(getattr(b, "attn", None)) is not Attention for b in blocks):
        raise UnsupportedModel(
            f"'{label}' does not use timm's standard Attention in every block, so its attention cannot be read."
        )
    if getattr(model, "attn_pool", None) is not None:
        raise UnsupportedModel(f"'{label}' pools with an attention head, which HeadScope does not analyse.")
    if not hasattr(model.patch_embed, "grid_size") or model.patch_embed.grid_size is None:
        raise UnsupportedModel(f"'{label}' has no fixed patch grid.")


def _make_handle(
    model: nn.Module,
    *,
    name: str,
    device: str | torch.device | None,
    class_names: Sequence[str] | None = None,
    key: str | None = None,
    card: Mapping[str, Any] | None = None,
    refuse: type[HeadScopeError] = ModelUnavailable,
    data_config: Mapping[str, Any] | None = None,
    transform: Callable[[Image.Image], torch.Tensor] | None = None,
    probe: LinearProbe | None = None,
    backbone: ViTHandle | None = None,
) -> ViTHandle:
    """Describe ``model`` and probe it once; a model whose outputs are not finite is refused with ``refuse``.

    ``data_config`` and ``transform`` replace timm's (a transformers model brings its own preprocessing).
    """
    from timm.data import create_transform, resolve_data_config

    dev = pick_device(device)
    model.eval().to(dev)
    num_classes = int(getattr(model, "num_classes", 0) or 0)  # 0: a backbone, whose output is its pooled features
    if class_names is None:
        class_names = imagenet_class_names() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        what = "a backbone without a classifier" if num_classes == 0 else f"a model with {num_classes} outputs"
        raise LabelsMismatch(f"{len(class_names)} class names were given for {what}.")
    if data_config is None:
        data_config = resolve_data_config(model=model)
        # a model built without a pretrained config would get timm's 224x224 RGB default:
        # the input size the patch embedding was built for is the one that fits
        data_config["input_size"] = (
            int(model.patch_embed.proj.in_channels),
            *(int(side) for side in model.patch_embed.img_size),
        )
    if transform is None:
        transform = create_transform(**data_config, is_training=False)
    first = model.blocks[0].attn
    handle = ViTHandle(
        model=model,
        device=dev,
        num_layers=len(model.blocks),
        num_heads=int(first.num_heads),
        grid=tuple(int(g) for g in model.patch_embed.grid_size),  # type: ignore[arg-type]
        num_prefix_tokens=int(model.num_prefix_tokens),
        class_names=list(class_names),
        name=name,
        key=key or f"{type(model).__name__}-{_model_digest(model)}",
        data_config=dict(data_config),
        card=card,
        probe=probe,
        backbone=backbone,
        _transform=transform,
    )
    _probe_outputs(handle, refuse)
    return handle


@out_of_memory_as_sentence
def _probe_outputs(handle: ViTHandle, refuse: type[HeadScopeError]) -> None:
    """Refuse the model with ``refuse`` if one forward of a noise image is not finite.

    Weights that are finite but overflow (say 1e30 times too large) give NaN for every
    image; refused here, the previous model stays active instead of NaN reaching every
    analysis and scikit-learn.
    """
    c, h, w = handle.data_config["input_size"]
    # normalised images have roughly unit variance, as standard normal noise does
    x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))
    try:
        locked_forward(handle, x)
    except NonFiniteOutputs as err:
        what = "checkpoint's weights make the model" if refuse is CheckpointRejected else "model's weights make it"
        raise refuse(
            f"The {what} output NaN or infinite values even on a plain test image, so it cannot give "
            "meaningful predictions or attention; check that the weights were saved from a trained model."
        ) from err


def _model_digest(model: nn.Module) -> str:
    """Hash of the architecture and every weight: two handles share results only if this matches."""
    digest = hashlib.sha256(repr(model).encode())
    for tensor_name, tensor in model.state_dict().items():
        digest.update(tensor_name.encode())
        # viewed as raw bytes so bfloat16 and other dtypes without a numpy twin hash too
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --- weights -----------------------------------------------------------------------


def _pretrained_weights_path(name: str) -> str:
    """Local path of timm's pretrained safetensors for ``name``: the hub cache first, then the hub."""
    from huggingface_hub import constants, hf_hub_download
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        raise ModelUnavailable(
            f"timm has no pretrained weights on the Hugging Face hub for '{name}'; upload a checkpoint instead."
        )
    repo_id, _, revision = hub_id.partition("@")
    filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
    request = dict(repo_id=repo_id, filename=filename, revision=revision or None)
    try:
        return hf_hub_download(**request, local_files_only=True)
    except Exception:  # not cached: fall through to the network unless offline
        pass
    if _hub_offline():
        raise ModelUnavailable(
            f"The weights of '{name}' are not in the local Hugging Face cache and the hub is offline; "
            "download them once while online, or upload a checkpoint."
        )
    unreachable = ModelUnavailable(
        f"The weights of '{name}' are not cached locally and the Hugging Face hub cannot be reached; "
        "connect to the internet once, or upload a checkpoint."
    )
    if not _hub_resolves(constants.ENDPOINT):
        raise unreachable  # at once: the hub client would retry for half a minute first
    try:
        return hf_hub_download(**request, etag_timeout=10)
    except Exception as err:  # any network or hub failure means the same thing to the user
        raise unreachable from err


def _hub_offline() -> bool:
    """Hugging Face's offline mode is on (the environment is read here too: huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _hub_resolves(endpoint: str) -> bool:
    """Whether the hub's host name resolves: a cheap offline check before any download."""
    host = urlparse(endpoint).hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, 443))
    except OSError:
        return False


def _read_checkpoint(source: str | Path | bytes, name: str, *, architecture: Any = None) -> dict[str, torch.Tensor]:
    """Read a state dict for architecture ``name`` safely, choosing the reader by content, never by file name.

    ``architecture`` replaces the timm layout check of ``name`` (``core.hfmodels`` checks
    Hugging Face names against a config.json this way).

    Every size, count, dtype and shape the file declares is checked against the
    architecture before the reader allocates what it declares: safetensors by its
    header, a PyTorch archive by its ZIP records before ``torch.load`` and by its tensors
    before any model is built.
    """
    path = Path(source) if isinstance(source, (str, Path)) else None
    try:
        if path is not None:
            with path.open("rb") as f:
                head = f.read(16)
            size = path.stat().st_size
        else:
            data = bytes(source)  # type: ignore[arg-type]
            head, size = data[:16], len(data)
    except OSError as err:
        raise CheckpointRejected(f"The checkpoint file {path.name if path else ''} cannot be read.") from err
    if not head:
        raise CheckpointRejected("The checkpoint file is empty.")
    architecture = architecture or _Architecture(name)
    if _looks_like_safetensors(head, size):
        return _read_safetensors(path if path is not None else data, size, architecture)
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise CheckpointRejected(f"The checkpoint file {path.name} cannot be read.") from err
    return _read_torch(data, architecture)


# The dtypes a ViT state dict holds that torch converts exactly (float weights,
# integer and bool buffers); float8, 4- and 6-bit, unsigned wide and complex dtypes are
# refused before loading, since the finiteness check and the cast to float32 reject them.
_SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_TENSOR_DTYPES = frozenset(_SAFETENSORS_DTYPES.values())
# ImageNet-21k's 21,843 classes is the widest classifier timm ships; a wider one only
# costs memory (a ViT-B head of 100,000 classes is 300 MB) and a class list no page can show.
_MAX_CLASSES = 100_000
# A training checkpoint holds the weights, an EMA copy and two Adam moments plus a step
# counter per weight: five storages per tensor; eight leaves room for other wrappers.
_RECORDS_PER_TENSOR = 8
_EXTRA_RECORDS = 64  # data.pkl, version, byteorder and the other small records torch.save adds
# torch.save pickles about 170 bytes per tensor of a state dict and 600 per weight of a training
# checkpoint; unpickling can cost several times its size, so the pickle is bounded too.
_PICKLE_BYTES_PER_TENSOR = 4096
_PICKLE_BYTES_EXTRA = 2**20
# Braces in the header bound its objects, hence its tensors, from above; the slack lets
# metadata strings hold some braces of their own.
_HEADER_BRACE_SLACK = 1024

_Declared = dict[str, tuple[tuple[int, ...], torch.dtype]]  # state-dict key -> (shape, dtype)


class _Architecture:
    """The state-dict layout of one architecture, read from a copy built on the meta device.

    A meta model has every parameter's shape and dtype but no storage, so a checkpoint
    is compared with what the architecture needs before a single weight is allocated,
    whatever classifier width the checkpoint claims.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._layouts: dict[int | None, _Declared] = {}
        self.default = self.layout(None)

    def layout(self, num_classes: int | None) -> _Declared:
        """Key -> (shape, dtype) of the architecture with ``num_classes`` outputs (timm's default if ``None``)."""
        if num_classes not in self._layouts:
            with torch.device("meta"):
                model = _create_supported(self.name, num_classes=num_classes)
            self._layouts[num_classes] = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        return self._layouts[num_classes]

    def check(self, declared: _Declared) -> None:
        """Refuse ``declared`` unless it has exactly the architecture's keys, shapes and kinds of dtype."""
        num_classes = _classifier_width(declared)
        if num_classes is not None and num_classes > _MAX_CLASSES:
            raise CheckpointRejected(
                f"The checkpoint's classifier has {num_classes:,} outputs; HeadScope loads at most "
                f"{_MAX_CLASSES:,} classes."
            )
        expected = self.layout(num_classes)
        missing = [k for k in expected if k not in declared]
        unexpected = [k for k in declared if k not in expected]
        wrong_shape = [k for k in expected if k in declared and declared[k][0] != expected[k][0]]
        if missing or unexpected or wrong_shape:
            example = (missing or unexpected or wrong_shape)[0]
            raise CheckpointRejected(
                f"The checkpoint does not fit architecture '{self.name}': {len(missing)} missing, "
                f"{len(unexpected)} unexpected and {len(wrong_shape)} mis-shaped tensors (e.g. '{example}'); "
                "pick the architecture it was trained with."
            )
        # an integer tensor cast to a float weight would cost four times its bytes in the file
        wrong_kind = [k for k in expected if declared[k][1].is_floating_point != expected[k][1].is_floating_point]
        if wrong_kind:
            raise CheckpointRejected(
                f"The checkpoint stores '{wrong_kind[0]}' as {declared[wrong_kind[0]][1]}, but the architecture "
                f"'{self.name}' holds {expected[wrong_kind[0]][1]} there; it was not saved from this model."
            )


def _read_safetensors(source: Path | bytes, size: int, architecture: _Architecture) -> dict[str, torch.Tensor]:
    """Check a safetensors header against ``architecture``, then load the tensors it declares."""
    from safetensors.torch import load, load_file

    if isinstance(source, bytes):
        prefix = source[:8 + _SAFETENSORS_MAX_HEADER]
    else:
        try:
            with source.open("rb") as f:
                prefix = f.read(8 + _SAFETENSORS_MAX_HEADER)
        except OSError as err:
            raise CheckpointRejected(f"The checkpoint file {source.name} cannot be read.") from err
    header_len = int.from_bytes(prefix[:8], "little")
    if header_len > _SAFETENSORS_MAX_HEADER:
        raise CheckpointRejected(
            f"The safetensors header is {header_len / 2**20:.0f} MB, far more than any ViT's "
            f"(at most {_SAFETENSORS_MAX_HEADER // 2**20} MB); the file was not saved from a model."
        )
    header = prefix[8:8 + header_len]
    # each tensor entry is a JSON object, so the braces bound the tensor count before parsing
    if header.count(b"{") > len(architecture.default) + _HEADER_BRACE_SLACK:
        raise CheckpointRejected(
            f"The checkpoint does not fit architecture '{architecture.name}': its header declares far more "
            f"tensors than the {len(architecture.default)} the architecture has; pick the architecture it was trained with."
        )
    declared = _safetensors_declared(header, size - 8 - header_len)
    architecture.check(declared)
    try:
        state = load_file(str(source)) if isinstance(source, Path) else load(source)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointRejected("The safetensors checkpoint is damaged or truncated.") from err
    return _unwrap_state_dict(state)


def _safetensors_declared(header: bytes, data_len: int) -> _Declared:
    """Shape and dtype of every tensor a safetensors header declares, each checked against the data it covers."""
    damaged = CheckpointRejected("The safetensors checkpoint is damaged or truncated.")
    try:
        entries = json.loads(header)
    except (ValueError, RecursionError) as err:  # deep nesting overflows the JSON parser
        raise damaged from err
    if not isinstance(entries, dict):
        raise damaged
    declared: _Declared = {}
    for key, entry in entries.items():
        if key == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise damaged
        dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype_name not in _SAFETENSORS_DTYPES:
            raise CheckpointRejected(
                f"The checkpoint stores '{key}' as {str(dtype_name)[:20]}, which HeadScope does not load; "
                "save the weights as float32, float16 or bfloat16."
            )
        dtype = _SAFETENSORS_DTYPES[dtype_name]
        if not (_int_list(shape) and _int_list(offsets) and len(offsets) == 2):
            raise damaged
        begin, end = offsets
        numel = 0 if 0 in shape else 1
        for side in shape if numel else ():
            numel *= side
            if numel > data_len:  # stop before a product of huge JSON integers gets slow
                break
        if not 0 <= begin <= end <= data_len or end - begin != numel * dtype.itemsize:
            raise damaged
        declared[_plain_key(key)] = (tuple(shape), dtype)
    if not declared:
        raise CheckpointRejected("The checkpoint does not contain any tensors.")
    return declared


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int and v >= 0 for v in value)


def _read_torch(data: bytes, architecture: _Architecture) -> dict[str, torch.Tensor]:
    """Load a PyTorch file with ``weights_only=True`` once its ZIP records are known to cost no more than its size."""
    if data.startswith(_ZIP_MAGIC):
        count = len(architecture.default)
        _check_torch_archive(
            data,
            max_records=count * _RECORDS_PER_TENSOR + _EXTRA_RECORDS,
            max_pickle=count * _PICKLE_BYTES_PER_TENSOR + _PICKLE_BYTES_EXTRA,
        )
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for damage
        kind = "a PyTorch zip archive" if data.startswith(_ZIP_MAGIC) else "a safetensors or PyTorch file"
        raise CheckpointRejected(
            f"The checkpoint could not be loaded safely: it is not {kind} holding only tensors "
            "(damaged, truncated, or containing code that HeadScope refuses to run)."
        ) from err
    tensors = _unwrap_state_dict(state)
    declared: _Declared = {}
    for key, tensor in tensors.items():
        if tensor.layout != torch.strided or tensor.dtype not in _TENSOR_DTYPES:
            raise CheckpointRejected(
                f"The checkpoint stores '{key}' as a {tensor.layout} {tensor.dtype} tensor, which HeadScope does "
                "not load; save the weights as dense float32, float16 or bfloat16 tensors."
            )
        # a view may repeat one stored element (stride 0) into any shape: it must be backed by its own bytes
        available = tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()
        if tensor.numel() > available:
            raise CheckpointRejected(
                f"The checkpoint's tensor '{key}' declares more values than it stores; it was not saved from a model."
            )
        declared[key] = (tuple(tensor.shape), tensor.dtype)
    architecture.check(declared)
    return tensors


# torch.save names records "archive/data/123" and pads each local header to 64 bytes; a
# directory entry of an honest checkpoint is well under this
_DIRECTORY_BYTES_PER_RECORD = 512


def _check_torch_archive(data: bytes, *, max_records: int, max_pickle: int) -> None:
    """Refuse a PyTorch ZIP unless it is laid out as ``torch.save`` writes it, at no more cost than its size.

    ``torch.save`` stores every record uncompressed and ends the file with a zip64 record,
    its locator and a classic end record without comment. PyTorch reads the archive with
    its own ZIP reader, which inflates compressed records whatever their size, so the
    records are checked here with :mod:`zipfile`; the layout rules make both readers see
    the same central directory (no comment, the zip64 record where its locator says, no
    bytes between the directory and its end records).
    """
    refused = CheckpointRejected(
        "The checkpoint is a ZIP archive but not one written by torch.save (it is compressed, re-packed or "
        "damaged); save the state dict again with torch.save or as safetensors."
    )
    claimed = declared_directory(data)
    if claimed is None or len(data) < EOCD_SIZE:
        raise refused
    # zipfile builds a record per entry until the declared directory size is consumed
    if claimed.entries > max_records or claimed.size > max_records * _DIRECTORY_BYTES_PER_RECORD:
        raise CheckpointRejected(
            f"The checkpoint archive declares {max(claimed.entries, claimed.size // _DIRECTORY_BYTES_PER_RECORD):,} "
            "records; a checkpoint of this architecture "
            f"has at most {max_records:,}."
        )
    eocd = struct.unpack_from(EOCD_FORMAT, data, len(data) - EOCD_SIZE)
    if eocd[0] != EOCD or eocd[7] != 0:
        raise refused
    directory_size, directory_offset, directory_end = eocd[5], eocd[6], len(data) - EOCD_SIZE
    locator = directory_end - LOCATOR_SIZE
    if locator >= 0 and data[locator:locator + 4] == LOCATOR:
        record = int.from_bytes(data[locator + 8:locator + 16], "little")
        if record != locator - ZIP64_SIZE or data[record:record + 4] != ZIP64:
            raise refused
        directory_size, directory_offset = struct.unpack_from(ZIP64_FORMAT, data, record)[8:10]
        directory_end = record
    if directory_offset + directory_size != directory_end:
        raise refused
    try:
        records = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except ARCHIVE_ERRORS as err:
        raise refused from err
    stored = 0
    for info in records:
        stored += info.file_size
        if (
            info.compress_type != zipfile.ZIP_STORED
            or info.flag_bits & 0x1  # encrypted
            or info.compress_size != info.file_size
            or info.header_offset + info.file_size > directory_offset
            or stored > directory_offset
        ):
            raise refused
        if info.filename.endswith(".pkl") and info.file_size > max_pickle:
            raise CheckpointRejected(
                f"The checkpoint's pickle is {info.file_size / 2**20:.0f} MB, far more than a checkpoint of this "
                "architecture needs; save only the state dict."
            )


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= size - 8 and head[8:9] == b"{"


def _plain_key(key: str) -> str:
    """``key`` without the prefixes DataParallel and ``torch.compile`` add."""
    for prefix in ("module.", "_orig_mod."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _unwrap_state_dict(state: Any) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual training wrappers around one."""
    if isinstance(state, Mapping):
        for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointRejected("The checkpoint does not contain a state dict of named tensors.")
    tensors = {_plain_key(key): value for key, value in state.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise CheckpointRejected("The checkpoint does not contain any tensors.")
    return tensors


def _classifier_width(declared: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> int | None:
    """Outputs of the checkpoint's classifier: 0 for a backbone saved without one, ``None`` when unclear."""
    if "head.weight" not in declared and "head.bias" not in declared:
        return 0
    head = declared.get("head.weight")
    return int(head[0][0]) if head is not None and len(head[0]) == 2 else None


def _load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointRejected(
            f"The checkpoint has NaN or infinite values (first in '{bad[0]}'); it cannot give meaningful attention."
        )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        example = (missing or unexpected or wrong_shape)[0]
        raise CheckpointRejected(
            f"The checkpoint does not fit {what}: {len(missing)} missing, {len(unexpected)} unexpected and "
            f"{len(wrong_shape)} mis-shaped tensors (e.g. '{example}'); pick the architecture it was trained with."
        )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
