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
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn

from core.errors import CheckpointRejected, ModelUnavailable, UnsupportedModel

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEMO_CARD = DATA_DIR / "demo_vit.json"
DEMO_NAME = "demo"

_SAFETENSORS_MAX_HEADER = 100 * 2**20
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
        class_names: one display name per output class.
        name: what the user picked (``"demo"``, a timm name, or a name plus checkpoint).
        key: content hash of architecture and weights; keys every cached result.
        data_config: timm data config (input_size, mean, std, interpolation, crop_pct).
        card: the demo model's JSON card, else ``None``.
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
    _transform: Callable[[Image.Image], torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def num_tokens(self) -> int:
        """Sequence length ``T`` = prefix tokens + rows * cols."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

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
) -> ViTHandle:
    """Build a supported ViT and load its weights.

    Args:
        name: ``"demo"`` for the embedded digits model, or a timm model name.
        checkpoint: a local checkpoint (path or raw bytes) for the architecture ``name``;
            safetensors, or a torch file loaded with ``weights_only=True``.
        pretrained: load timm's pretrained weights (hub, or its local cache when offline)
            when no checkpoint is given; ``False`` gives random weights.
        device: where to run; default ``cuda``, then ``mps``, then the CPU.

    Raises:
        ModelUnavailable: unknown name, or weights not available offline.
        UnsupportedModel: the architecture is not a ViT with timm's standard attention.
        CheckpointRejected: the checkpoint is unreadable, unsafe, non-finite or for
            another architecture.
    """
    name = name.strip()
    if name == DEMO_NAME:
        if checkpoint is not None:
            raise CheckpointRejected(
                "The demo model has its own weights; pick a timm architecture name to load a checkpoint."
            )
        return _load_demo(device)
    import timm

    if not timm.is_model(name):
        raise ModelUnavailable(
            f"timm has no model called '{name}'; use a name such as vit_base_patch16_224 or deit_small_patch16_224."
        )
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint)
        num_classes = _classifier_width(state)
        model = _create_supported(name, num_classes=num_classes)
        _load_weights(model, state, f"architecture '{name}'")
        key = f"{name}-{_model_digest(model)}"
        return _make_handle(model, name=f"{name} (checkpoint {key[-8:]})", device=device, key=key)
    if not pretrained:
        model = _create_supported(name)
        return _make_handle(model, name=f"{name} (random weights)", device=device)
    path = _pretrained_weights_path(name)  # before building: an offline user hears at once
    model = _create_supported(name)
    _load_weights(model, _read_checkpoint(path), f"architecture '{name}'")
    return _make_handle(model, name=name, device=device)


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


def _create_supported(name: str, num_classes: int | None = None) -> nn.Module:
    import timm

    kwargs: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
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
    if getattr(model, "num_classes", 0) <= 0:
        raise UnsupportedModel(f"'{label}' has no classifier head; HeadScope needs class predictions.")
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
) -> ViTHandle:
    from timm.data import create_transform, resolve_data_config

    dev = pick_device(device)
    model.eval().to(dev)
    num_classes = int(model.num_classes)
    if class_names is None:
        class_names = imagenet_class_names() if num_classes == 1000 else [f"class {i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names were given for a model with {num_classes} outputs.")
    data_config = resolve_data_config(model=model)
    # a model built without a pretrained config would get timm's 224x224 RGB default:
    # the input size the patch embedding was built for is the one that fits
    data_config["input_size"] = (
        int(model.patch_embed.proj.in_channels),
        *(int(side) for side in model.patch_embed.img_size),
    )
    transform = create_transform(**data_config, is_training=False)
    first = model.blocks[0].attn
    return ViTHandle(
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
        _transform=transform,
    )


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
    # the environment is read here too: huggingface_hub reads it once, at import
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
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


def _hub_resolves(endpoint: str) -> bool:
    """Whether the hub's host name resolves: a cheap offline check before any download."""
    host = urlparse(endpoint).hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, 443))
    except OSError:
        return False


def _read_checkpoint(source: str | Path | bytes) -> dict[str, torch.Tensor]:
    """Read a state dict safely, choosing the reader by content, never by file name."""
    from safetensors.torch import load as load_safetensors
    from safetensors.torch import load_file

    path = Path(source) if isinstance(source, (str, Path)) else None
    try:
        if path is not None:
            with path.open("rb") as f:
                head = f.read(16)
            is_safetensors = _looks_like_safetensors(head, path.stat().st_size)
        else:
            data = bytes(source)  # type: ignore[arg-type]
            head = data[:16]
            is_safetensors = _looks_like_safetensors(head, len(data))
    except OSError as err:
        raise CheckpointRejected(f"The checkpoint file {path.name if path else ''} cannot be read.") from err
    if not head:
        raise CheckpointRejected("The checkpoint file is empty.")
    if is_safetensors:
        try:
            state: Any = load_file(str(path)) if path is not None else load_safetensors(data)
        except Exception as err:  # safetensors raises its own error types for damaged files
            raise CheckpointRejected("The safetensors checkpoint is damaged or truncated.") from err
    else:
        try:
            state = torch.load(path if path is not None else io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for unsafe pickles, RuntimeError/EOFError for damage
            kind = "a PyTorch zip archive" if head.startswith(_ZIP_MAGIC) else "a safetensors or PyTorch file"
            raise CheckpointRejected(
                f"The checkpoint could not be loaded safely: it is not {kind} holding only tensors "
                "(damaged, truncated, or containing code that HeadScope refuses to run)."
            ) from err
    return _unwrap_state_dict(state)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len <= min(_SAFETENSORS_MAX_HEADER, size - 8) and head[8:9] == b"{"


def _unwrap_state_dict(state: Any) -> dict[str, torch.Tensor]:
    """Accept a bare state dict or the usual training wrappers around one."""
    if isinstance(state, Mapping):
        for wrapper in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointRejected("The checkpoint does not contain a state dict of named tensors.")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        tensors[key] = value
    if not tensors:
        raise CheckpointRejected("The checkpoint does not contain any tensors.")
    return tensors


def _classifier_width(state: Mapping[str, torch.Tensor]) -> int | None:
    head = state.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else None


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
