"""What an analysis needs to know about a Vision Transformer: the ``ViTHandle``.

A handle wraps one timm ``VisionTransformer`` whose blocks use timm's standard
``Attention`` module, together with what the analyses need to know about it: the
number of layers and heads, the patch grid, how many prefix tokens (CLS,
distillation, registers) precede the patches, the class names and the exact image
preprocessing. ``wrap_model`` describes a model already in memory; every loader
(``load``, ``transformers``) builds its handle with ``_make_handle``, which refuses a
model whose outputs are not finite. The input-size rules every loader shares live here too.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from PIL import Image
from torch import nn

from core.errors import (
    CheckpointRejected,
    HeadScopeError,
    InvalidSetting,
    LabelsMismatch,
    ModelUnavailable,
    NonFiniteOutputs,
    UnsupportedModel,
)
from core.models.hooks import locked_forward
from core.models.memory import out_of_memory_as_sentence

if TYPE_CHECKING:
    from core.models.probe import LinearProbe

__all__ = [
    "DEFAULT_IMG_SIZE",
    "ViTHandle",
    "imagenet_class_names",
    "imagenet_synsets",
    "model_lock",
    "pick_device",
    "prefix_names",
    "wrap_model",
]

# A model whose native grid has more patches than ViT-B/16 at 384 px (24 x 24) runs at
# DEFAULT_IMG_SIZE unless the user picks a size: DINOv2 is built at 518 px (37 x 37
# patches), where one image's attention alone is 12 layers x 6 heads x 1370^2 floats (540 MB).
_MAX_DEFAULT_PATCHES = 24 * 24
DEFAULT_IMG_SIZE = 224

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
        probe: the linear probe that gives a backbone its classes (``core.models.probe``), else ``None``.
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


def _check_img_size(img_size: int, patch: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < patch or img_size % patch:
        raise InvalidSetting(
            f"The input size must be a positive multiple of the model's {patch} px patches "
            f"(e.g. {patch * (DEFAULT_IMG_SIZE // patch)}), not {img_size!r}."
        )
    return img_size


def _large_grid_size(patches: int, side: int, patch: int) -> int | None:
    """The default input side of a model built for ``patches`` patches at ``side`` px, or ``None`` for its own.

    A model built for more than 24 x 24 patches at more than 224 px runs at 224 px
    (rounded down to whole patches); smaller ones, and ViT-B/8 at 224, keep their size.
    """
    size = patch * max(1, DEFAULT_IMG_SIZE // patch)
    return None if patches <= _MAX_DEFAULT_PATCHES or side <= size else size


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
