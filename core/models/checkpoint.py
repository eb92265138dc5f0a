"""Reading a checkpoint's weights safely, and finding timm's pretrained weights.

Loading a checkpoint is a security boundary: the reader is chosen by content, never
by file name; safetensors first, ``torch.load`` only with ``weights_only=True``, and no
unsafe fallback. Every size, count, dtype and shape the file declares is checked
against the architecture (built on the meta device) before anything it declares is
allocated.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from core.errors import CheckpointRejected, ModelUnavailable
from core.inputs.archive import (
    EOCD,
    EOCD_FORMAT,
    EOCD_SIZE,
    LOCATOR,
    LOCATOR_SIZE,
    ZIP64,
    ZIP64_FORMAT,
    ZIP64_SIZE,
    ArchiveWording,
    open_archive,
)
from core.models.handle import _create_supported

__all__ = []

# timm's ViT headers measure about 100 bytes a tensor: 14 KB for ViT-B (152 tensors), 47 KB for
# ViT-g (488) and 59 KB for the 7B DINOv3 (606). 1 MiB leaves 17 times that for metadata and long
# names and parses in milliseconds; an 87 MB header of empty tensors took 23 s and 1.8 GB.
_SAFETENSORS_MAX_HEADER = 2**20
_ZIP_MAGIC = b"PK\x03\x04"


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

    ``architecture`` replaces the timm layout check of ``name`` (``core.models.transformers`` checks
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


_NOT_TORCH_SAVE = (
    "The checkpoint is a ZIP archive but not one written by torch.save (it is compressed, re-packed or "
    "damaged); save the state dict again with torch.save or as safetensors."
)


def _torch_archive_wording(max_records: int) -> ArchiveWording:
    return ArchiveWording.one_sentence(
        CheckpointRejected,
        _NOT_TORCH_SAVE,  # a repeated name among the faults: PyTorch's reader and zipfile may pick different ones
        too_many=lambda declared: (
            f"The checkpoint archive declares {max(declared.entries, declared.size // _DIRECTORY_BYTES_PER_RECORD):,} "
            f"records; a checkpoint of this architecture has at most {max_records:,}."
        ),
    )


def _check_torch_archive(data: bytes, *, max_records: int, max_pickle: int) -> None:
    """Refuse a PyTorch ZIP unless it is laid out as ``torch.save`` writes it, at no more cost than its size.

    ``torch.save`` stores every record uncompressed and ends the file with a zip64 record,
    its locator and a classic end record without comment. PyTorch reads the archive with
    its own ZIP reader, which inflates compressed records whatever their size, so the
    records are checked here with the checked reader; the layout rules make both readers see
    the same central directory (no comment, the zip64 record where its locator says, no
    bytes between the directory and its end records).
    """
    # zipfile builds a record per entry until the declared directory size is consumed
    with open_archive(
        data,
        _torch_archive_wording(max_records),
        max_entries=max_records,
        max_directory_bytes=max_records * _DIRECTORY_BYTES_PER_RECORD,
    ) as archive:
        records = archive.check_all()
    directory_offset = _torch_save_directory_offset(data)
    if directory_offset is None:
        raise CheckpointRejected(_NOT_TORCH_SAVE)
    stored = 0
    for info in records.values():
        stored += info.file_size
        if (
            info.compress_type != zipfile.ZIP_STORED
            or info.compress_size != info.file_size
            or info.header_offset + info.file_size > directory_offset
            or stored > directory_offset
        ):
            raise CheckpointRejected(_NOT_TORCH_SAVE)
        if info.filename.endswith(".pkl") and info.file_size > max_pickle:
            raise CheckpointRejected(
                f"The checkpoint's pickle is {info.file_size / 2**20:.0f} MB, far more than a checkpoint of this "
                "architecture needs; save only the state dict."
            )


def _torch_save_directory_offset(data: bytes) -> int | None:
    """Where the central directory starts, if the end records are laid out as ``torch.save`` writes them, else ``None``.

    The classic end record ends the file without comment; when a zip64 locator precedes it,
    the zip64 record lies just before the locator, which points at it; and the directory
    ends where the end records begin.
    """
    eocd = struct.unpack_from(EOCD_FORMAT, data, len(data) - EOCD_SIZE)
    if eocd[0] != EOCD or eocd[7] != 0:
        return None
    directory_size, directory_offset, directory_end = eocd[5], eocd[6], len(data) - EOCD_SIZE
    locator = directory_end - LOCATOR_SIZE
    if locator >= 0 and data[locator:locator + 4] == LOCATOR:
        record = int.from_bytes(data[locator + 8:locator + 16], "little")
        if record != locator - ZIP64_SIZE or data[record:record + 4] != ZIP64:
            return None
        directory_size, directory_offset = struct.unpack_from(ZIP64_FORMAT, data, record)[8:10]
        directory_end = record
    return directory_offset if directory_offset + directory_size == directory_end else None


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
