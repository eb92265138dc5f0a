"""Hugging Face ``transformers`` ViTs, read as timm ``VisionTransformer``s.

Supported: ``ViTModel``, ``ViTForImageClassification``, ``DeiTModel``,
``DeiTForImageClassification``, ``DeiTForImageClassificationWithTeacher``, ``Dinov2Model``,
``Dinov2ForImageClassification``, ``Dinov2WithRegistersModel`` and
``Dinov2WithRegistersForImageClassification``, from a folder written by ``save_pretrained``
(``config.json`` with ``model.safetensors``, or ``pytorch_model.bin`` read with
``weights_only=True``), a ZIP of such a folder, or a hub repo in that format (the local
Hugging Face cache first, the hub when online).

``transformers`` itself is never imported. ``config.json`` is checked field by field, a
timm model that computes what ``transformers`` computes in eager mode is built from it on
the meta device, and the names and shapes the weight file declares (its header, or the
tensors of a ``weights_only`` load) are renamed onto that model and compared before a
single weight is allocated. What maps onto what:

- the blocks: ``query``/``key``/``value`` stack into timm's ``qkv``, ``layernorm_before`` and
  ``layernorm_after`` (ViT, DeiT) or ``norm1``/``norm2`` (DINOv2) are ``norm1``/``norm2``, DINOv2's
  ``layer_scale`` ``lambda1`` is timm's ``ls.gamma``; LayerNorm eps (1e-12 in ViT and DeiT)
  and the activation come from the config;
- the tokens: DeiT's distillation token is a second prefix token with its own position
  (timm's ``dist_token``); DINOv2's registers are inserted after the class token and get
  no position, so the class token's position is added to it once at load and timm's
  table covers the patches only (``no_embed_class``);
- the position table is resampled to the run grid as ``transformers`` does at every
  forward: bicubic with half-pixel centres, antialiased only in DINOv2 with registers;
- the output: ``ViTForImageClassification`` and ``DeiTForImageClassification`` classify the
  class token, ``DeiTForImageClassificationWithTeacher`` averages the class-token and
  distillation-token heads, ``Dinov2ForImageClassification`` classifies the class token
  beside the mean of the patch tokens; a backbone's output is its pooled output:
  ``ViTModel``'s and ``DeiTModel``'s pooler (dense + tanh on the class token) when the
  weights have one, else the class token after the final LayerNorm.

Class names come from ``id2label``; preprocessing from ``preprocessor_config.json`` when it
is there (resize, centre crop, rescale and normalisation, as the model's image processor
does them), else the defaults of the model type's image processor at the config's size.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from PIL import Image
from torch import nn

from core.errors import (
    CheckpointRejected,
    HeadScopeError,
    InvalidSetting,
    ModelUnavailable,
    UnsupportedModel,
    human_size,
)
from core.inputs.archive import ArchiveWording, CheckedArchive, open_archive
from core.models.checkpoint import _MAX_CLASSES, _load_weights, _read_checkpoint
from core.models.handle import (
    ViTHandle,
    _check_img_size,
    _large_grid_size,
    _make_handle,
    _model_digest,
)
from core.models.memory import check_fits

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "CONFIG_FILE",
    "PREPROCESSOR_FILE",
    "WEIGHT_FILES",
    "is_repo_id",
    "is_transformers_source",
    "load_transformers",
]

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_SHARDED_INDEX = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# class name in config.json "architectures" -> (model_type, how the output is made)
SUPPORTED_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "ViTModel": ("vit", "backbone"),
    "ViTForImageClassification": ("vit", "class_token"),
    "DeiTModel": ("deit", "backbone"),
    "DeiTForImageClassification": ("deit", "class_token"),
    "DeiTForImageClassificationWithTeacher": ("deit", "distilled"),
    "Dinov2Model": ("dinov2", "backbone"),
    "Dinov2ForImageClassification": ("dinov2", "class_and_patch_mean"),
    "Dinov2WithRegistersModel": ("dinov2_with_registers", "backbone"),
    "Dinov2WithRegistersForImageClassification": ("dinov2_with_registers", "class_and_patch_mean"),
}
_SUPPORTED_TEXT = f"HeadScope reads transformers ViT, DeiT and DINOv2 models ({', '.join(SUPPORTED_ARCHITECTURES)})"
_MODEL_TYPES = ("vit", "deit", "dinov2", "dinov2_with_registers")
_BASE_PREFIX = {"vit": "vit.", "deit": "deit.", "dinov2": "dinov2.", "dinov2_with_registers": "dinov2_with_registers."}
_BASE_MODEL = {"vit": "ViTModel", "deit": "DeiTModel", "dinov2": "Dinov2Model",
               "dinov2_with_registers": "Dinov2WithRegistersModel"}
_CLASSIFIER = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
               "dinov2": "Dinov2ForImageClassification",
               "dinov2_with_registers": "Dinov2WithRegistersForImageClassification"}

# Bounds on what config.json may ask for. The largest ViTs in transformers (ViT-22B: 6,144
# wide, 48 blocks, 48 heads; DINOv2-g: 1,536 wide, 40 blocks) are well inside them; beyond
# them a config is a mistake or an attack, refused before anything is built.
_MAX_WIDTH = 16_384
_MAX_DEPTH = 128
_MAX_HEADS = 256
_MAX_HIDDEN = 131_072
_MAX_IMAGE = 4_096
_MAX_REGISTERS = 64
# Attention grows with the square of the tokens: 80 x 80 patches (DINOv2 at 1,120 px) is
# already 41 million weights per head and image; the app's largest input size gives 73 x 73.
_MAX_RUN_PATCHES = 80 * 80
_MAX_LABEL_CHARS = 200
# ImageNet-21k's id2label is about 700 KB of JSON; a config many times that is no model's.
_MAX_JSON_BYTES = 16 * 2**20
# A save_pretrained folder holds a handful of files; a ZIP of one lists a few entries more.
_MAX_ZIP_ENTRIES = 256
# Float weights barely compress (deflate gains about 10%); an entry that would expand to more
# than this many times the whole archive is a ZIP bomb.
_MAX_EXPANSION = 4
# Beyond a weight file's tensors: its header or pickle, and tensors saved beside the model's.
_HEADER_SLACK = 64 * 2**20
# A ZIP file named on this machine is read into memory: the app's upload limit is 512 MB.
_MAX_ZIP_BYTES = 8 * 2**30

# hidden_act / pooler_act -> the layer computing what transformers' ACT2FN does under that name
# (module, class): timm is imported only when a model is built
_ACTIVATIONS: dict[str, tuple[str, str]] = {
    "gelu": ("torch.nn", "GELU"),
    "gelu_python": ("torch.nn", "GELU"),
    "gelu_new": ("timm.layers", "GELUTanh"),
    "gelu_pytorch_tanh": ("timm.layers", "GELUTanh"),
    "gelu_fast": ("timm.layers", "GELUTanh"),
    "quick_gelu": ("timm.layers", "QuickGELU"),
    "relu": ("torch.nn", "ReLU"),
    "silu": ("torch.nn", "SiLU"),
    "swish": ("torch.nn", "SiLU"),
    "tanh": ("torch.nn", "Tanh"),
}
_ACTIVATION_NAMES = tuple(_ACTIVATIONS)


def _activation(name: str) -> type[nn.Module]:
    module, attribute = _ACTIVATIONS[name]
    return getattr(importlib.import_module(module), attribute)

# PIL resampling codes in preprocessor_config.json -> torchvision's names
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_SHORT_SIDE_PROCESSORS = ("Bit", "CLIP")
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# What each model type's image processor does when a folder has no preprocessor_config.json
# (the hub repos' own files): ViT squashes to its size, DeiT resizes to 256 and crops 224,
# DINOv2 resizes the short side to 256 and crops 224.
_DEFAULT_PREPROCESSING: dict[str, dict[str, Any]] = {
    "vit": {"do_resize": True, "size": None, "resample": 2, "do_center_crop": False,
            "image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5)},
    "deit": {"do_resize": True, "size": {"height": 256, "width": 256}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 224, "width": 224}, "image_mean": _IMAGENET_MEAN, "image_std": _IMAGENET_STD},
    "dinov2": {"do_resize": True, "size": {"shortest_edge": 256}, "resample": 3, "do_center_crop": True,
               "crop_size": {"height": 224, "width": 224}, "image_mean": _IMAGENET_MEAN, "image_std": _IMAGENET_STD},
}
_DEFAULT_PREPROCESSING["dinov2_with_registers"] = _DEFAULT_PREPROCESSING["dinov2"]

# What the loader takes for a hub repo id: one slash before any "@". Whether it is a valid id
# is decided by _hub_request, so a mistyped one is told what is wrong, not sent to timm.
_REPO_SHAPE = re.compile(r"[^/@\s]+/[^/@\s]+(@.*)?", re.DOTALL)
# huggingface_hub's validate_repo_id: ASCII letters, digits, "_", "-" and ".", starting and
# ending with a letter, digit or "_", at most 96 characters a part
_HUB_NAME = re.compile(r"\w(?:[\w.-]{0,94}\w)?", re.ASCII)
# git's rules for a branch or tag name (git check-ref-format), which a 40-hex commit id meets
# too: the cache keeps a branch or tag as a file under refs/, so these rules are also what
# keeps a revision from naming a path outside it
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
_MAX_REVISION = 128

Progress = Callable[[str, float], None]


# --- where the files come from ---------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    """The files of one save_pretrained folder: the config text, the preprocessor text, and
    ``weights(cap)``: the weight file (a path, or bytes from a ZIP), refused above ``cap`` bytes."""

    label: str
    config: bytes
    weights: Callable[[int], Path | bytes]
    preprocessor: bytes | None


def is_repo_id(name: str) -> bool:
    """``name`` has the form of a hub repo id, ``owner/name`` (optionally ``@revision``); whether
    the hub accepts it is checked when it is loaded."""
    return bool(_REPO_SHAPE.fullmatch(name.strip()))


def _hub_request(text: str) -> tuple[str, str | None]:
    """The repo id and revision of ``owner/name[@revision]``, refused unless the hub accepts both.

    Checked before huggingface_hub sees them: it validates ids with exceptions of its own, and
    joins a revision onto a path under the local cache without a check.
    """
    repo_id, at, revision = text.partition("@")
    owner, _, name = repo_id.partition("/")
    if not (
        _HUB_NAME.fullmatch(owner)
        and _HUB_NAME.fullmatch(name)
        and ".." not in repo_id
        and "--" not in repo_id  # the cache writes owner/name as models--owner--name
        and not repo_id.endswith(".git")
    ):
        raise ModelUnavailable(
            f"{_show(repo_id)} is not a hub repo id; give owner/name in letters, digits, '-', '_' and '.' "
            "(no '--' or '..'), such as facebook/dinov2-small."
        )
    if at and not (
        0 < len(revision) <= _MAX_REVISION
        and revision.isascii()
        and not _REF_FORBIDDEN.search(revision)
        and not revision.startswith(("/", "-"))
        and not revision.endswith(("/", "."))
        and revision != "@"
        and not any(part.startswith(".") or part.endswith(".lock") for part in revision.split("/"))
    ):
        raise ModelUnavailable(
            f"The revision {_show(revision)} of {_show(repo_id)} is not a branch, tag or commit id; "
            "give one such as main, v1.0 or a 40-character commit hash."
        )
    return repo_id, revision if at else None


def is_transformers_source(name: str, *, local_paths: bool = True) -> bool:
    """Whether :func:`load_transformers` is the loader for ``name``: a repo id, or (with
    ``local_paths``) an existing folder or ``.zip`` file. timm names never contain a slash."""
    name = name.strip()
    return (local_paths and _local_kind(name) is not None) or is_repo_id(name)


def _local_kind(name: str) -> str | None:
    """``"folder"`` or ``"zip"`` when ``name`` is such a path on this machine, else ``None``."""
    if not name:
        return None
    try:
        path = Path(name).expanduser()
        if path.is_dir() and ((path / CONFIG_FILE).exists() or "/" in name or os.sep in name):
            return "folder"  # a bare name (a timm model's) is a folder only when it holds a model
        if path.suffix.lower() == ".zip" and path.is_file():
            return "zip"
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, ~nosuchuser, a NUL byte
        return None
    return None


def load_transformers(
    source: str | Path | bytes,
    *,
    label: str | None = None,
    device: str | torch.device | None = None,
    img_size: int | None = None,
    local_paths: bool = True,
    progress: Progress | None = None,
) -> ViTHandle:
    """Load a transformers ViT, DeiT or DINOv2 as a :class:`~core.models.handle.ViTHandle`.

    Args:
        source: a save_pretrained folder or a ZIP file of one (path), the bytes of such a ZIP,
            or a hub repo id (``facebook/dinov2-small``, optionally ``@revision``).
        label: the name the handle shows; default the folder, file or repo name.
        device: where to run.
        img_size: input side in pixels, a multiple of the patch size; default the size the
            preprocessor feeds (its crop), else the config's ``image_size`` (224 for a model
            built for more than 24 x 24 patches, as for timm models).
        local_paths: read folders and ZIP files on this machine; ``False`` takes a string as
            a repo id only (what the app's text field does).
        progress: called as ``progress(stage, fraction)``.

    Raises:
        ModelUnavailable: no such folder, file or repo, or the repo is not cached and the hub
            cannot be reached.
        UnsupportedModel: the config is for an architecture HeadScope does not read.
        ModelTooLarge: the config declares weights, or one image's analysis at the input
            size, that need more memory than the server's budget (checked before any weight is read).
        CheckpointRejected: the config, preprocessor, ZIP or weights are malformed, hostile
            or do not match each other.
        InvalidSetting: ``img_size`` does not fit the model's patches.
    """
    report = progress or (lambda stage, fraction: None)
    report("reading the files", 0.0)
    files = _files_of(source, local_paths=local_paths)
    config = _parse_json(files.config, CONFIG_FILE)
    spec = _spec_from_config(config)
    preprocessing = _preprocessing(spec, None if files.preprocessor is None else _parse_json(files.preprocessor, PREPROCESSOR_FILE))
    run = _run_size(spec, preprocessing, img_size)
    _geometry(preprocessing, run)  # refused now, before any weight is read
    check_fits(partial(_build_timm, replace(spec, run_size=run)), label or files.label)  # from config.json alone
    architecture = _HFArchitecture(replace(spec, run_size=run))
    report("checking the weights against config.json", 0.3)
    state = _read_checkpoint(files.weights(architecture.max_bytes), spec.architecture, architecture=architecture)
    spec = architecture.spec  # now knows whether the weights hold a pooler (or which head they have)
    report("building the model", 0.7)
    return _build_handle(spec, state, preprocessing, label or files.label, device)


def _files_of(source: str | Path | bytes, *, local_paths: bool) -> _Files:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _zip_files(bytes(source), "uploaded ZIP")
    text = str(source).strip()
    if not text:
        raise ModelUnavailable("No model was named; give a hub repo id such as facebook/dinov2-small.")
    kind = _local_kind(text) if local_paths else None
    if kind == "folder":
        return _folder_files(Path(text).expanduser())
    if kind == "zip":
        path = Path(text).expanduser()
        return _zip_files(_read_regular(path, _MAX_ZIP_BYTES), path.stem)
    if is_repo_id(text):
        return _repo_files(text)
    what = "a folder, a ZIP file or a hub repo id" if local_paths else "a hub repo id (owner/name)"
    raise ModelUnavailable(f"'{text[:80]}' is not {what} of a transformers model.")


def _folder_files(folder: Path) -> _Files:
    try:
        names = {p.name for p in folder.iterdir()}
    except OSError as err:
        raise CheckpointRejected(f"The folder {folder.name} cannot be read ({err.strerror or err}).") from err
    if CONFIG_FILE not in names:
        raise CheckpointRejected(
            f"The folder {folder.name} has no {CONFIG_FILE}; give a folder written by save_pretrained."
        )
    path = folder / _pick_weights(names, folder.name)

    def weights(cap: int) -> Path:
        size = _regular(path)
        if size > cap:
            raise CheckpointRejected(
                f"{path.name} is {human_size(size)}, more than a model of its config.json can hold ({human_size(cap)})."
            )
        return path

    return _Files(
        label=folder.name,
        config=_read_regular(folder / CONFIG_FILE, _MAX_JSON_BYTES),
        weights=weights,
        preprocessor=_read_regular(folder / PREPROCESSOR_FILE, _MAX_JSON_BYTES) if PREPROCESSOR_FILE in names else None,
    )


def _pick_weights(names: set[str], where: str) -> str:
    for name in WEIGHT_FILES:
        if name in names:
            return name
    if any(index in names for index in _SHARDED_INDEX):
        raise CheckpointRejected(
            f"{where} holds its weights in shards; HeadScope reads one model.safetensors or pytorch_model.bin "
            "(save it again with save_pretrained(max_shard_size='20GB'))."
        )
    raise CheckpointRejected(f"{where} has a {CONFIG_FILE} but no weights ({' or '.join(WEIGHT_FILES)}).")


def _regular(path: Path) -> int:
    """The size of ``path``, refusing anything but a regular file (a FIFO or a device never ends)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise CheckpointRejected(f"{path.name} cannot be read ({err.strerror or err}).") from err
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointRejected(f"{path.name} is not a regular file.")
    return info.st_size


def _read_regular(path: Path, cap: int) -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (read with the cap, whatever its size said)."""
    size = _regular(path)
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError as err:
        raise CheckpointRejected(f"{path.name} cannot be read ({err.strerror or err}).") from err
    if max(size, len(data)) > cap:
        raise CheckpointRejected(
            f"{path.name} is {human_size(max(size, len(data)))}; HeadScope reads at most {human_size(cap)} there."
        )
    return data


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1]


_ZIP_WORDING = ArchiveWording(
    error=CheckpointRejected,
    empty="The uploaded ZIP is empty.",
    unreadable="The uploaded file is not a readable ZIP archive.",
    too_many=lambda declared: (
        f"The ZIP's directory declares more than {_MAX_ZIP_ENTRIES} entries; a save_pretrained folder has a "
        "handful. Zip one model folder."
    ),
    unsafe_name=lambda name: f"The ZIP holds an entry with an unsafe path ('{name[:60]}'); zip the model folder itself.",
    encrypted=lambda name: f"{_short(name)} could not be read from the ZIP; it is damaged or encrypted.",
    unsupported_method=lambda name: (
        f"{_short(name)} in the ZIP uses a compression HeadScope does not read (only stored or deflate)."
    ),
    damaged=lambda name: f"{_short(name)} could not be read from the ZIP; it is damaged or encrypted.",
    too_large=lambda name, cap: (
        f"{_short(name)} expands to more than {human_size(cap)}, more than the ZIP's size allows for real weights "
        "or a model of its config.json can hold; it is a ZIP bomb, damaged or another model's."
    ),
)


def _zip_files(data: bytes, label: str) -> _Files:
    """The model folder inside a ZIP, read in memory: nothing is extracted to disk."""
    archive = open_archive(
        data, _ZIP_WORDING, max_entries=_MAX_ZIP_ENTRIES, max_directory_bytes=_MAX_ZIP_ENTRIES * 1024,
        refuse_name=lambda name: "\\" in name,
    )
    members = _zip_members(archive)
    configs = [n for n in members if n.rsplit("/", 1)[-1] == CONFIG_FILE and n.count("/") <= 1]
    if not configs:
        raise CheckpointRejected(
            f"The ZIP has no {CONFIG_FILE} at its top or in one folder; zip a folder written by save_pretrained."
        )
    if len(configs) > 1:
        raise CheckpointRejected(f"The ZIP holds {len(configs)} models ({CONFIG_FILE} files); zip one model folder.")
    folder = configs[0][: -len(CONFIG_FILE)]
    names = {n[len(folder):] for n in members if n.startswith(folder) and "/" not in n[len(folder):]}
    member = members[folder + _pick_weights(names, "The ZIP")]
    budget = _MAX_EXPANSION * len(data) + 2**20

    def weights(cap: int) -> bytes:
        with archive:
            return archive.read(member, min(cap, budget))

    return _Files(
        label=folder.rstrip("/") or label,
        config=archive.read(members[folder + CONFIG_FILE], _MAX_JSON_BYTES),
        weights=weights,
        preprocessor=(
            archive.read(members[folder + PREPROCESSOR_FILE], _MAX_JSON_BYTES) if PREPROCESSOR_FILE in names else None
        ),
    )


def _zip_members(archive: CheckedArchive) -> dict[str, zipfile.ZipInfo]:
    """The ZIP's files by name, once no entry is nameless, unsafe or a link; Finder's and hidden files left out."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.entries:
        name = info.filename
        if not name:
            raise CheckpointRejected("The ZIP holds an entry without a name; zip the model folder again.")
        archive.check_name(info)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise CheckpointRejected(f"The ZIP holds a symbolic link ('{name[:60]}'); zip the files themselves.")
        parts = [p for p in name.split("/") if p]
        if info.is_dir() or not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
            continue
        if name in members:
            raise CheckpointRejected(f"The ZIP holds '{name[:60]}' twice; zip the model folder again.")
        members[name] = info
    return members


def _repo_files(repo: str) -> _Files:
    """The files of a hub repo, each from the local cache when it is there, else from the hub.

    Nothing is downloaded before its size is known to fit: ``config.json`` and the
    preprocessor's file at most 16 MB, the weights at most what ``config.json`` implies
    (:meth:`_HFArchitecture.max_bytes`), so a typed repo id of some other, huge model is
    refused before its weights are fetched.
    """
    hub = _HubRepo(repo)
    config = hub.fetch(CONFIG_FILE, _MAX_JSON_BYTES)
    if config is None:
        if not hub.online():
            raise hub.unreachable("config.json")
        raise CheckpointRejected(f"The repo '{repo}' has no {CONFIG_FILE}; it is not a transformers model.")
    preprocessor = hub.fetch(PREPROCESSOR_FILE, _MAX_JSON_BYTES)

    def weights(cap: int) -> Path:
        for name in WEIGHT_FILES:
            found = hub.fetch(name, cap)
            if found is not None:
                return found
        if not hub.online():
            raise hub.unreachable("The weights")
        if any(hub.fetch(index, _MAX_JSON_BYTES) is not None for index in _SHARDED_INDEX):
            _pick_weights({_SHARDED_INDEX[0]}, f"The repo '{repo}'")
        raise CheckpointRejected(f"The repo '{repo}' has no {' or '.join(WEIGHT_FILES)}.")

    return _Files(
        label=repo,
        config=_read_regular(config, _MAX_JSON_BYTES),
        weights=weights,
        preprocessor=None if preprocessor is None else _read_regular(preprocessor, _MAX_JSON_BYTES),
    )


class _HubRepo:
    """The files of one hub repo at one revision: from the local cache, else from the hub when it can be reached
    (decided once, on the first file the cache lacks), never from outside the cache."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        repo_id, revision = _hub_request(repo)
        self._request = dict(repo_id=repo_id, revision=revision)
        self._reachable: bool | None = None

    def online(self) -> bool:
        from huggingface_hub import constants

        from core.models.checkpoint import _hub_offline, _hub_resolves

        if self._reachable is None:
            self._reachable = not _hub_offline() and _hub_resolves(constants.ENDPOINT)
        return self._reachable

    def unreachable(self, what: str) -> ModelUnavailable:
        return ModelUnavailable(
            f"{what} of '{self.repo}' {'is' if what == 'config.json' else 'are'} not in the local Hugging Face cache "
            "and the hub is offline or cannot be reached; download the repo once while online, or upload a ZIP of "
            "its save_pretrained folder."
        )

    def fetch(self, filename: str, cap: int) -> Path | None:
        """The file's path in the cache (downloaded first if need be), ``None`` if the repo has no such file."""
        try:
            path = self._find(filename, cap)
        except HeadScopeError:
            raise
        except Exception as err:  # the hub client's own (HFValidationError, HTTP errors) and an unreadable cache alike
            raise ModelUnavailable(
                f"'{self.repo}' could not be fetched from the Hugging Face hub ({type(err).__name__}); try again, "
                "or upload a ZIP of the model folder."
            ) from err
        if path is not None and _regular(path) > cap:
            raise CheckpointRejected(
                f"{filename} of '{self.repo}' is {human_size(_regular(path))}, more than a model of its config.json "
                f"can hold ({human_size(cap)})."
            )
        return path

    def _find(self, filename: str, cap: int) -> Path | None:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
        from huggingface_hub.file_download import _CACHED_NO_EXIST

        try:
            path = Path(hf_hub_download(filename=filename, local_files_only=True, **self._request))
        except Exception:  # not cached, or cached as absent: the hub decides when it can be reached
            path = None
        if path is None and try_to_load_from_cache(filename=filename, **self._request) is _CACHED_NO_EXIST:
            return None  # the cache recorded that the repo has no such file
        if path is None and self.online():
            path = self._download(filename, cap)
        if path is not None and not path.resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve()):
            # whatever a ref file or link in the cache says, nothing outside the cache is read
            raise CheckpointRejected(
                f"{filename} of '{self.repo}' lies outside the Hugging Face cache; HeadScope does not read it."
            )
        return path

    def _download(self, filename: str, cap: int) -> Path | None:
        """The file downloaded into the cache once the hub says it fits ``cap``; ``None`` if the repo lacks it."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import (
            RemoteEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            size = get_hf_file_metadata(hf_hub_url(filename=filename, **self._request), timeout=10).size
            if size is not None and size > cap:
                raise CheckpointRejected(
                    f"{filename} of '{self.repo}' is {human_size(size)}, more than a model of its config.json can "
                    f"hold ({human_size(cap)}); HeadScope does not download it."
                )
            return Path(hf_hub_download(filename=filename, etag_timeout=10, **self._request))
        except (RepositoryNotFoundError, RevisionNotFoundError) as err:
            raise ModelUnavailable(
                f"The hub has no model repo '{self.repo}' (or it is private); check the id, such as "
                "facebook/dinov2-small."
            ) from err
        except RemoteEntryNotFoundError:  # the hub says the repo has no such file (a network failure is no answer)
            return None


def _parse_json(data: bytes, what: str) -> dict[str, Any]:
    if len(data) > _MAX_JSON_BYTES:
        raise CheckpointRejected(f"{what} is {human_size(len(data))}; a model's is well under {human_size(_MAX_JSON_BYTES)}.")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: hostile nesting
        raise CheckpointRejected(f"{what} is not valid JSON.") from err
    if not isinstance(value, dict):
        raise CheckpointRejected(f"{what} does not hold a JSON object.")
    return value


# --- config.json -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What config.json (and the weights) say about the model, checked."""

    model_type: str
    architecture: str
    output: str  # backbone, class_token, distilled or class_and_patch_mean
    width: int
    depth: int
    heads: int
    mlp_hidden: int
    activation: str
    eps: float
    qkv_bias: bool
    layer_scale: bool
    image_size: int
    patch_size: int
    channels: int
    registers: int
    class_names: tuple[str, ...]
    labels_in_config: bool = True  # id2label or num_labels is there (then a classifier the file holds beyond them is unused)
    pooler: int | None = None  # the pooler's width when a backbone's weights hold one
    pooler_activation: str = "tanh"
    run_size: int = 0  # the input side the model is built for

    @property
    def native_grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def position_prefix(self) -> int:
        """Rows of the position table before the patches: class token, and DeiT's distillation token."""
        return 2 if self.model_type == "deit" else 1


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _whole(config: Mapping[str, Any], key: str, default: Any, low: int, high: int) -> int:
    value = config.get(key, default)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value):
        if value[0] != value[1]:
            raise UnsupportedModel(f"config.json's {key} is {value[0]} x {value[1]}; HeadScope reads square ones only.")
        value = value[0]  # a square size written as [side, side]
    if type(value) is not int or not low <= value <= high:
        raise CheckpointRejected(
            f"config.json's {key} must be a whole number from {low:,} to {high:,}, not {_show(value)}."
        )
    return value


def _number(config: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = config.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value) or not low < value <= high:
        raise CheckpointRejected(f"config.json's {key} must be a number above {low:g} and at most {high:g}, not {_show(value)}.")
    return float(value)


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if type(value) is not bool:
        raise CheckpointRejected(f"config.json's {key} must be true or false, not {_show(value)}.")
    return value


def _choice(config: Mapping[str, Any], key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = config.get(key, default)
    if value not in allowed:
        raise UnsupportedModel(
            f"config.json's {key} is {_show(value)}; HeadScope supports {', '.join(allowed)}."
        )
    return value


def _spec_from_config(config: Mapping[str, Any]) -> _Spec:
    model_type = config.get("model_type")
    architectures = config.get("architectures")
    named = architectures[0] if isinstance(architectures, list) and architectures and isinstance(architectures[0], str) else None
    if model_type not in _MODEL_TYPES:
        what = f"'{named}'" if named and named not in SUPPORTED_ARCHITECTURES else f"model_type {_show(model_type)}"
        raise UnsupportedModel(f"{_SUPPORTED_TEXT}; this config.json is for {what}.")
    if named is not None and named not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModel(f"{_SUPPORTED_TEXT}; this config.json is for '{named[:60]}'.")
    if named is not None and SUPPORTED_ARCHITECTURES[named][0] != model_type:
        raise CheckpointRejected(f"config.json names {named} but its model_type is '{model_type}'; they do not go together.")
    architecture = named or ""  # decided from the weights when config.json does not say
    width = _whole(config, "hidden_size", 768, 1, _MAX_WIDTH)
    heads = _whole(config, "num_attention_heads", 12, 1, _MAX_HEADS)
    if width % heads:
        raise CheckpointRejected(f"config.json's hidden_size {width} is not divisible by its {heads} attention heads.")
    depth = _whole(config, "num_hidden_layers", 12, 1, _MAX_DEPTH)
    dinov2 = model_type.startswith("dinov2")
    if dinov2:
        if _flag(config, "use_swiglu_ffn", False):
            raise UnsupportedModel("This DINOv2 uses a SwiGLU feed-forward (the giant model), which HeadScope does not read yet.")
        ratio = _number(config, "mlp_ratio", 4, 0, 64)
        mlp_hidden = int(width * ratio)
        if not 1 <= mlp_hidden <= _MAX_HIDDEN:
            raise CheckpointRejected(f"config.json's mlp_ratio {ratio:g} gives {mlp_hidden:,} hidden units; at most {_MAX_HIDDEN:,}.")
    else:
        mlp_hidden = _whole(config, "intermediate_size", 3072, 1, _MAX_HIDDEN)
    # defaults as transformers' config classes have them (save_pretrained writes every field anyway)
    image_size = _whole(config, "image_size", 224, 1, _MAX_IMAGE)
    patch_size = _whole(config, "patch_size", 14 if model_type == "dinov2" else 16, 1, image_size)
    if image_size % patch_size:
        raise CheckpointRejected(
            f"config.json's image_size {image_size} is not a multiple of its patch_size {patch_size}."
        )
    channels = _whole(config, "num_channels", 3, 1, 3)
    if channels == 2:
        raise CheckpointRejected("config.json's num_channels is 2; HeadScope reads grayscale (1) or RGB (3) models.")
    registers = _whole(config, "num_register_tokens", 4, 0, _MAX_REGISTERS) if model_type == "dinov2_with_registers" else 0
    spec = _Spec(
        model_type=model_type,
        architecture=architecture,
        output=SUPPORTED_ARCHITECTURES[architecture][1] if architecture else "",
        width=width,
        depth=depth,
        heads=heads,
        mlp_hidden=mlp_hidden,
        activation=_choice(config, "hidden_act", "gelu", _ACTIVATION_NAMES),
        eps=_number(config, "layer_norm_eps", 1e-6 if dinov2 else 1e-12, 0, 1),
        qkv_bias=_flag(config, "qkv_bias", True),
        layer_scale=dinov2,
        image_size=image_size,
        patch_size=patch_size,
        channels=channels,
        registers=registers,
        class_names=_class_names(config),
        labels_in_config="id2label" in config or "num_labels" in config,
        pooler_activation=_choice(config, "pooler_act", "tanh", _ACTIVATION_NAMES) if not dinov2 else "tanh",
    )
    if not dinov2:
        pooler = config.get("pooler_output_size")
        spec = replace(spec, pooler=width if pooler is None else _whole(config, "pooler_output_size", width, 1, _MAX_WIDTH))
    return spec


def _class_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    labels = config.get("id2label")
    if labels is None:
        count = config.get("num_labels", 0)
        if type(count) is not int or not 0 <= count <= _MAX_CLASSES:
            raise CheckpointRejected(f"config.json's num_labels must be a whole number up to {_MAX_CLASSES:,}, not {_show(count)}.")
        return tuple(f"LABEL_{i}" for i in range(count))
    if not isinstance(labels, dict) or len(labels) > _MAX_CLASSES:
        raise CheckpointRejected(f"config.json's id2label must map class numbers to names, at most {_MAX_CLASSES:,} of them.")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if not (isinstance(key, str) and key.isdecimal() and len(key) <= 6 and isinstance(value, str)):
            raise CheckpointRejected(f"config.json's id2label maps {_show(key)} to {_show(value)}; it must map \"0\", \"1\", ... to names.")
        names[int(key)] = value.strip()[:_MAX_LABEL_CHARS] or f"LABEL_{key}"
    if sorted(names) != list(range(len(names))):
        raise CheckpointRejected("config.json's id2label does not number its classes 0, 1, 2, ... without gaps.")
    return tuple(names[i] for i in range(len(names)))


# --- preprocessing -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Preprocessing:
    resize: tuple[int, int] | int | None  # (height, width) squash, a shortest edge, or no resize
    resample: str
    crop: tuple[int, int] | None
    scale: float  # what pixel values 0..255 are multiplied by
    mean: tuple[float, ...]
    std: tuple[float, ...]
    given: bool = True  # read from preprocessor_config.json, not the model type's defaults

    @property
    def output_side(self) -> int | None:
        """The square side this pipeline produces, when it produces a fixed one."""
        if self.crop is not None:
            return self.crop[0] if self.crop[0] == self.crop[1] else None
        if isinstance(self.resize, tuple):
            return self.resize[0] if self.resize[0] == self.resize[1] else None
        return None


def _preprocessing(spec: _Spec, config: Mapping[str, Any] | None) -> _Preprocessing:
    """The image pipeline of ``preprocessor_config.json``, or of the model type's defaults."""
    source = dict(_DEFAULT_PREPROCESSING[spec.model_type])
    if source["size"] is None:
        source["size"] = {"height": spec.image_size, "width": spec.image_size}
    given = config is not None
    if config is not None:
        source.update(config)
    what = PREPROCESSOR_FILE if given else "the default preprocessing"
    # A whole-number size is a square for ViT's and DeiT's processors, a short side for
    # BitImageProcessor (DINOv2's) and CLIP's, as transformers' get_size_dict reads it.
    kind = source.get("image_processor_type") or source.get("feature_extractor_type")
    if isinstance(kind, str) and kind:
        short_side = kind.startswith(_SHORT_SIDE_PROCESSORS)
    else:
        short_side = spec.model_type.startswith("dinov2")

    def fail(key: str) -> CheckpointRejected:
        return CheckpointRejected(f"{what}'s {key} is {_show(source.get(key))}, which HeadScope cannot apply.")

    def side(value: Any) -> bool:
        return type(value) is int and 1 <= value <= _MAX_IMAGE

    def side_pair(key: str) -> tuple[int, int] | int:
        value = source.get(key)
        if isinstance(value, dict) and set(value) == {"height", "width"} and all(side(v) for v in value.values()):
            if value["height"] != value["width"]:
                raise UnsupportedModel(
                    f"{what}'s {key} is {value['height']} x {value['width']}; HeadScope feeds square inputs only."
                )
            return (value["height"], value["width"])
        if isinstance(value, dict) and set(value) == {"shortest_edge"} and side(value["shortest_edge"]):
            return value["shortest_edge"]
        if side(value):
            return value if key == "size" and short_side else (value, value)
        raise fail(key)

    def flag(key: str, default: bool) -> bool:
        value = source.get(key, default)
        if type(value) is not bool:
            raise fail(key)
        return value

    resize = side_pair("size") if flag("do_resize", True) else None
    crop = side_pair("crop_size") if flag("do_center_crop", False) else None
    if isinstance(crop, int):
        crop = (crop, crop)
    resample = source.get("resample", 3)
    if type(resample) is not int or resample not in _RESAMPLE:
        raise fail("resample")
    scale = 1.0
    if flag("do_rescale", True):
        factor = source.get("rescale_factor", 1 / 255)
        # 1/255 maps pixels to 0..1; anything far outside makes every input overflow or vanish
        if type(factor) not in (int, float) or not 1e-6 <= factor <= 1:
            raise fail("rescale_factor")
        scale = float(factor)
    mean, std = (0.0,) * spec.channels, (1.0,) * spec.channels
    if flag("do_normalize", True):
        mean, std = _per_channel(source.get("image_mean"), spec.channels), _per_channel(source.get("image_std"), spec.channels)
        if mean is None or max(abs(m) for m in mean) > 1e3:
            raise fail("image_mean")
        if std is None or not all(1e-3 <= v <= 1e3 for v in std):
            raise fail("image_std")
    return _Preprocessing(
        resize=resize, resample=_RESAMPLE[resample], crop=crop, scale=scale, mean=mean, std=std, given=given
    )


def _per_channel(value: Any, channels: int) -> tuple[float, ...] | None:
    if type(value) in (int, float):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value or not all(type(v) in (int, float) and math.isfinite(v) for v in value):
        return None
    if len(value) == 1:
        value = list(value) * channels
    elif len(value) != channels:
        if channels == 1:
            value = [sum(value) / len(value)]  # a grayscale model given RGB statistics
        else:
            return None
    return tuple(float(v) for v in value)


def _run_size(spec: _Spec, preprocessing: _Preprocessing, img_size: int | None) -> int:
    """The input side: ``img_size``, else the preprocessor's output, else the config's (224 px for a large grid)."""
    run = _default_run_size(spec, preprocessing) if img_size is None else _check_img_size(img_size, spec.patch_size)
    patches = (run // spec.patch_size) ** 2
    if patches > _MAX_RUN_PATCHES:
        raise InvalidSetting(
            f"At {run} px with {spec.patch_size} px patches the model would see {patches:,} patches; HeadScope "
            f"analyses at most {_MAX_RUN_PATCHES:,} (80 x 80), so choose a smaller input size."
        )
    return run


def _default_run_size(spec: _Spec, preprocessing: _Preprocessing) -> int:
    fed = preprocessing.output_side if preprocessing.given else None
    if fed is not None and fed % spec.patch_size == 0:
        return fed  # what the model's own preprocessor gives it (224 for DINOv2, built at 518)
    return _large_grid_size(spec.native_grid**2, spec.image_size, spec.patch_size) or spec.image_size


def _geometry(preprocessing: _Preprocessing, run: int) -> list[tuple[str, int | tuple[int, int]]]:
    """The resize and crop steps that give ``run`` x ``run`` pixels, scaled from the file's own.

    The file's steps are scaled by ``run`` over the side they produce (so 256 then 224 at
    224 px becomes 512 then 448 at 448 px, as timm scales by its crop fraction). HeadScope
    feeds square inputs: a short-side resize without a crop (or no resize at all) is
    followed by a centre crop to the square.

    Raises:
        UnsupportedModel: the scaled steps would resize an image to more than twice the
            input side (a tiny crop of a huge resize).
    """
    resize = preprocessing.resize
    fed = preprocessing.output_side or (resize if isinstance(resize, int) else run)
    ratio = run / fed
    steps: list[tuple[str, int | tuple[int, int]]] = []
    if isinstance(resize, int):
        steps.append(("resize", max(1, round(resize * ratio))))
    elif isinstance(resize, tuple):
        steps.append(("resize", (max(1, round(resize[0] * ratio)), max(1, round(resize[1] * ratio)))))
    else:
        steps.append(("resize", run))  # no resize in the file: the short side to the input side
    if preprocessing.crop is not None:
        steps.append(("crop", (max(1, round(preprocessing.crop[0] * ratio)), max(1, round(preprocessing.crop[1] * ratio)))))
    elif not isinstance(resize, tuple):
        steps.append(("crop", (run, run)))
    largest = max(max(size) if isinstance(size, tuple) else size for _, size in steps)
    if largest > 2 * run:  # hub files resize to 1.14 times the crop (256 for 224)
        raise UnsupportedModel(
            f"{PREPROCESSOR_FILE} would resize images to {largest:,} px on a side for a {run} px input; "
            "HeadScope cannot apply it."
        )
    return steps


def _centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The centre ``size`` (height, width) of ``image``, its corner rounded down as transformers'
    ``center_crop`` does (torchvision rounds half to even: one pixel off for a quarter of the
    shapes); black where the image is smaller."""
    height, width = size
    top, left = (image.height - height) // 2, (image.width - width) // 2
    return image.crop((left, top, left + width, top + height))


def _transform(preprocessing: _Preprocessing, run: int) -> Callable:
    """torchvision's pipeline for ``preprocessing`` at ``run`` x ``run`` pixels.

    It gives what transformers' image processors for these models give (ViTImageProcessor,
    DeiTImageProcessor and BitImageProcessor, and their ``Pil`` twins), to float rounding,
    on the input size they crop to; a test holds it to them.
    """
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(preprocessing.resample)
    steps: list[Callable] = [
        transforms.Resize(size, interpolation=mode) if kind == "resize" else partial(_centre_crop, size=size)
        for kind, size in _geometry(preprocessing, run)
    ]
    # a no-op when the steps give the input size; a safety net for rounding of scaled steps
    steps.append(transforms.Resize((run, run), interpolation=mode))
    steps.append(transforms.PILToTensor())
    scale, mean, std = preprocessing.scale, preprocessing.mean, preprocessing.std
    steps.append(transforms.Lambda(lambda x: x.float() * scale))
    steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


# --- the timm model ----------------------------------------------------------------------


_CLASSES: dict[str, type] = {}


def _timm_subclass(kind: str) -> type:
    """The timm subclass for an output timm's own heads do not make (built once, as timm is imported late).

    ``class_and_patch_mean``: ``Dinov2ForImageClassification``'s classifier reads the class
    token beside the mean of the patch tokens. ``class_token``: ``DeiTForImageClassification``
    (and ``DeiTModel``'s pooler) read the class token alone; the distillation token only attends.
    """
    if not _CLASSES:
        from timm.models.deit import VisionTransformerDistilled
        from timm.models.vision_transformer import VisionTransformer

        class ClassAndPatchMeanViT(VisionTransformer):
            headscope_readout = "class_and_patch_mean"  # the tokens the output reads (core.measures.attribution.answer_readout)

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.num_features = self.head_hidden_size = 2 * self.embed_dim
                self.head = nn.Linear(2 * self.embed_dim, self.num_classes) if self.num_classes else nn.Identity()

            def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
                return torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)

        class ClassTokenDeiT(VisionTransformerDistilled):
            headscope_readout = "class"

            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.head_dist = nn.Identity()

            def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
                x = self.head_drop(x[:, 0])
                return x if pre_logits else self.head(x)

        _CLASSES.update(class_and_patch_mean=ClassAndPatchMeanViT, class_token=ClassTokenDeiT)
    return _CLASSES[kind]


def _build_timm(spec: _Spec) -> nn.Module:
    """The timm model for ``spec`` at ``spec.run_size`` (on the current default device)."""
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    classes = len(spec.class_names) if spec.output != "backbone" else 0
    kwargs: dict[str, Any] = dict(
        img_size=spec.run_size,
        patch_size=spec.patch_size,
        in_chans=spec.channels,
        num_classes=classes,
        global_pool="token",
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=spec.mlp_hidden / spec.width,
        qkv_bias=spec.qkv_bias,
        init_values=1.0 if spec.layer_scale else None,
        norm_layer=partial(nn.LayerNorm, eps=spec.eps),
        act_layer=_activation(spec.activation),
        weight_init="skip",
    )
    if spec.registers:
        kwargs.update(reg_tokens=spec.registers, no_embed_class=True)
    if spec.model_type == "deit":
        distilled = spec.output == "distilled"
        model = VisionTransformerDistilled(**kwargs) if distilled else _timm_subclass("class_token")(**kwargs)
    elif spec.output == "class_and_patch_mean":
        model = _timm_subclass("class_and_patch_mean")(**kwargs)
    else:
        model = VisionTransformer(**kwargs)
    if spec.output == "backbone" and spec.pooler is not None:
        model.head = nn.Sequential(nn.Linear(spec.width, spec.pooler), _activation(spec.pooler_activation)())
    for block in model.blocks:
        if int(block.mlp.fc1.out_features) != spec.mlp_hidden:  # mlp_ratio rounded
            raise CheckpointRejected(f"config.json's feed-forward width {spec.mlp_hidden} cannot be built exactly.")
    return model


def _mapping(spec: _Spec) -> dict[str, tuple[str, int | None]]:
    """Hugging Face key (without the base model's prefix) -> (timm key, part of qkv or None)."""
    top: dict[str, str] = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    if spec.model_type == "deit":
        top["embeddings.distillation_token"] = "dist_token"
    if spec.registers:
        top["embeddings.register_tokens"] = "reg_token"
    if spec.output == "backbone" and spec.pooler is not None:
        top.update({"pooler.dense.weight": "head.0.weight", "pooler.dense.bias": "head.0.bias"})
    elif spec.output == "distilled" and spec.class_names:
        top.update({"cls_classifier.weight": "head.weight", "cls_classifier.bias": "head.bias",
                    "distillation_classifier.weight": "head_dist.weight", "distillation_classifier.bias": "head_dist.bias"})
    elif spec.output != "backbone" and spec.class_names:
        top.update({"classifier.weight": "head.weight", "classifier.bias": "head.bias"})
    if spec.model_type.startswith("dinov2"):
        block = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        scales = {"layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
    else:
        block = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
                 "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
        scales = {}
    mapping: dict[str, tuple[str, int | None]] = {k: (v, None) for k, v in top.items()}
    parameters = ("weight", "bias") if spec.qkv_bias else ("weight",)
    for n in range(spec.depth):
        hf, timm = f"encoder.layer.{n}.", f"blocks.{n}."
        for source, target in block.items():
            for p in ("weight", "bias"):
                mapping[f"{hf}{source}.{p}"] = (f"{timm}{target}.{p}", None)
        for source, target in scales.items():
            mapping[hf + source] = (timm + target, None)
        for part, name in enumerate(("query", "key", "value")):
            for p in parameters:
                mapping[f"{hf}attention.attention.{name}.{p}"] = (f"{timm}attn.qkv.{p}", part)
    return mapping


def _current_names(spec: _Spec) -> dict[str, str]:
    """The names transformers 5 gives these modules in memory -> the names its files use (which
    :func:`_mapping` reads): a state dict saved from a loaded model by hand has these."""
    dinov2 = spec.model_type.startswith("dinov2")
    renames: dict[str, str] = {}
    for n in range(spec.depth):
        old = f"encoder.layer.{n}."
        new = old if dinov2 else f"layers.{n}."
        pairs = {"attention.q_proj": "attention.attention.query", "attention.k_proj": "attention.attention.key",
                 "attention.v_proj": "attention.attention.value", "attention.o_proj": "attention.output.dense"}
        if not dinov2:
            pairs.update({"layernorm_before": "layernorm_before", "layernorm_after": "layernorm_after",
                          "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"})
        for source, target in pairs.items():
            for p in ("weight", "bias"):
                renames[f"{new}{source}.{p}"] = f"{old}{target}.{p}"
    return renames


# keys transformers itself ignores when it loads these classes
_IGNORED = ("embeddings.mask_token",)
_CLASSIFIERS = ("classifier.", "cls_classifier.", "distillation_classifier.")


def _to_timm(state: Mapping[str, torch.Tensor], spec: _Spec) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """``state`` (Hugging Face names) as the timm model's state dict, the keys nothing maps, and
    the keys that map onto a weight another key already gave (a prefixed and a plain copy).

    Works on meta tensors too: that is how a file's declared shapes are checked before loading.
    """
    mapping = _mapping(spec)
    current = _current_names(spec)
    prefix = _BASE_PREFIX[spec.model_type]
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, list[torch.Tensor | None]] = {}
    unknown: list[str] = []
    repeated: list[str] = []
    seen: set[tuple[str, int | None]] = set()
    for key, tensor in state.items():
        plain = key[len(prefix):] if key.startswith(prefix) else key
        plain = current.get(plain, plain)
        if plain in _IGNORED or (plain.startswith("pooler.") and spec.output != "backbone"):
            continue
        if not spec.class_names and plain.startswith(_CLASSIFIERS):
            continue  # num_labels 0: transformers' classifier is an identity and leaves these unused
        if plain == "embeddings.register_tokens" and not spec.registers and tensor.numel() == 0:
            continue  # num_register_tokens 0 saves an empty table
        target = mapping.get(plain)
        if target is None:
            unknown.append(key)
            continue
        if target in seen:
            repeated.append(key)
            continue
        seen.add(target)
        name, part = target
        if part is None:
            out[name] = tensor
        elif not tensor.dtype.is_floating_point:
            # torch.cat would promote it to its neighbours' float dtype, past the check of each weight's dtype
            raise CheckpointRejected(f"The weights store '{key}' as {tensor.dtype}; they are not a model's.")
        else:
            parts.setdefault(name, [None, None, None])[part] = tensor
    for name, pieces in parts.items():
        if all(p is not None for p in pieces) and len({tuple(p.shape) for p in pieces}) == 1:  # type: ignore[union-attr]
            out[name] = torch.cat(pieces, dim=0)  # type: ignore[arg-type]
    table = out.get("pos_embed")
    if table is not None and table.dim() == 3 and table.shape[0] == 1:
        out.update(_positions(table, out.get("cls_token"), spec))
    return out, unknown, repeated


def _positions(table: torch.Tensor, cls_token: torch.Tensor | None, spec: _Spec) -> dict[str, torch.Tensor]:
    """The position table at the run grid, as transformers' ``interpolate_pos_encoding`` makes it."""
    prefix = spec.position_prefix
    patches = table.shape[1] - prefix
    if patches != spec.native_grid**2:
        return {}  # not the table config.json's image_size and patch_size make: the shape check names it
    side = spec.native_grid
    grid = spec.run_size // spec.patch_size
    head, rows = table[:, :prefix], table[:, prefix:]
    if patches != grid * grid:  # transformers skips the resampling exactly when the counts agree on a square input
        image = rows.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        resampled = nn.functional.interpolate(
            image.float(), size=(grid, grid), mode="bicubic", align_corners=False,
            antialias=spec.model_type == "dinov2_with_registers",
        ).to(table.dtype)
        rows = resampled.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    if spec.registers:
        # registers take no position: timm adds the table to the patches only, so the class
        # token carries its own position from the start (the same sum transformers makes)
        result = {"pos_embed": rows}
        if cls_token is not None and tuple(cls_token.shape) == tuple(head.shape):
            result["cls_token"] = cls_token + head
        return result
    return {"pos_embed": torch.cat([head, rows], dim=1)}


class _HFArchitecture:
    """Checks a weight file's declared names and shapes against config.json, before loading.

    Same interface as ``core.models.checkpoint``'s timm architecture check: ``name``, ``default`` (the
    layout, for bounding what a file may declare) and ``check(declared)``.
    """

    def __init__(self, spec: _Spec) -> None:
        self.spec = spec
        self.name = spec.architecture or _BASE_MODEL[spec.model_type]
        layout = self._layout(spec if spec.architecture else replace(spec, architecture=self.name, output="backbone"))
        # what a file of this config declares: timm's tensors, with q, k and v apart
        self.default = {f"{k}#{i}": v for k, v in layout.items() for i in range(3 if k.endswith(("qkv.weight", "qkv.bias")) else 1)}
        # the most values a file of this config holds: the layout, the position table at its
        # native grid, any classifier pair and pooler, and the unused mask token
        values = sum(math.prod(shape) for shape, _ in layout.values())
        values += (spec.native_grid**2 + spec.position_prefix) * spec.width
        values += 2 * len(spec.class_names) * (2 * spec.width + 1) + (spec.width + 2) * spec.width
        self.max_bytes = values * 8 + _HEADER_SLACK  # float64 at most

    @staticmethod
    def _layout(spec: _Spec) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        with torch.device("meta"):
            model = _build_timm(spec)
        return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}

    def check(self, declared: Mapping[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
        spec = self._complete(self.spec, declared)
        expected = self._layout(spec)
        meta = {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in declared.items()}
        converted, unknown, repeated = _to_timm(meta, spec)
        if repeated:
            raise CheckpointRejected(
                f"The weights hold '{repeated[0]}' beside another tensor for the same weight; save them again "
                "with save_pretrained."
            )
        missing = [k for k in expected if k not in converted]
        wrong = [k for k in expected if k in converted and tuple(converted[k].shape) != expected[k][0]]
        if unknown or missing or wrong:
            reverse: dict[str, str] = {}
            for hf, (timm, part) in _mapping(spec).items():
                reverse.setdefault(timm, hf.replace(".query.", ".query/key/value.") if part is not None else hf)
            examples = [f"'{unknown[0]}'" if unknown else "", f"'{reverse.get(missing[0], missing[0])}'" if missing else "",
                        f"'{reverse.get(wrong[0], wrong[0])}'" if wrong else ""]
            raise CheckpointRejected(
                f"The weights do not match config.json ({self._summary(spec)}): {len(missing)} missing, "
                f"{len(unknown)} unexpected and {len(wrong)} mis-shaped tensors "
                f"(e.g. {next(e for e in examples if e)}); they were saved from another model."
            )
        wrong_kind = [k for k in expected if converted[k].dtype.is_floating_point != expected[k][1].is_floating_point]
        if wrong_kind:
            raise CheckpointRejected(f"The weights store '{wrong_kind[0]}' as {converted[wrong_kind[0]].dtype}; they are not a model's.")
        self.spec = spec

    def _complete(self, spec: _Spec, declared: Mapping[str, Any]) -> _Spec:
        """``spec`` with what only the weights tell: the head, when config.json names no class, and the pooler."""
        prefix = _BASE_PREFIX[spec.model_type]
        keys = {k[len(prefix):] if k.startswith(prefix) else k for k in declared}
        if not spec.architecture:
            if "cls_classifier.weight" in keys and spec.model_type == "deit":
                name = "DeiTForImageClassificationWithTeacher"
            elif "classifier.weight" in keys:
                name = _CLASSIFIER[spec.model_type]
            else:
                name = _BASE_MODEL[spec.model_type]
            spec = replace(spec, architecture=name, output=SUPPORTED_ARCHITECTURES[name][1])
        if spec.output != "backbone":
            classifier = declared.get(prefix + "classifier.weight", declared.get("classifier.weight")) or declared.get("cls_classifier.weight")
            if not spec.labels_in_config and classifier is not None and len(classifier[0]) == 2:
                spec = replace(spec, class_names=tuple(f"LABEL_{i}" for i in range(min(classifier[0][0], _MAX_CLASSES))))
            # num_labels 0: the classifier is an identity on what it reads (the class token, both
            # tokens' mean, or the class token beside the patch mean): a backbone with that output
            return replace(spec, pooler=None)
        if spec.pooler is not None and "pooler.dense.weight" not in keys:
            spec = replace(spec, pooler=None)  # saved without its pooler (add_pooling_layer=False)
        return replace(spec, class_names=())

    @staticmethod
    def _summary(spec: _Spec) -> str:
        return f"{spec.architecture}, {spec.depth} layers, width {spec.width}, {spec.image_size // spec.patch_size}^2 patches"


def _build_handle(
    spec: _Spec, state: Mapping[str, torch.Tensor], preprocessing: _Preprocessing, label: str, device
) -> ViTHandle:
    model = _build_timm(spec)
    converted, _, _ = _to_timm(state, spec)
    _load_weights(model, converted, f"config.json ({spec.architecture})")
    model.pretrained_cfg = {}
    run = spec.run_size
    mean, std = preprocessing.mean, preprocessing.std
    data_config = {
        "input_size": (spec.channels, run, run),
        "interpolation": preprocessing.resample,
        "mean": mean,
        "std": std,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    # every cached result keys on this: the weights, and what the images go through and are called
    described = hashlib.sha256(f"{_model_digest(model)}|{preprocessing}|{spec.class_names}".encode()).hexdigest()
    key = f"hf-{spec.architecture}-{described[:16]}"
    suffix = "" if run == spec.image_size else f", {run} px"
    return _make_handle(
        model,
        name=f"{label} ({spec.architecture}{suffix})",
        device=device,
        class_names=list(spec.class_names) if spec.output != "backbone" else [],
        key=key,
        refuse=CheckpointRejected,
        data_config=data_config,
        transform=_transform(preprocessing, run),
    )
