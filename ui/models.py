"""The model the session analyses: what the user asked for (``ModelSpec``), loaded once per server.

The model lives in ``st.cache_resource`` (shared by all sessions, never mutated), bounded and
keyed by content: a name, a checkpoint's digest, an input size, a linear probe's digest. An
uploaded checkpoint's and probe's bytes stay in the session, which passes them to the cache
as underscore arguments (left out of the key). A new session first tries the server's
start model (``HEADSCOPE_MODEL``); a model that no longer loads falls back to the demo.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from typing import Mapping

import streamlit as st

from core.errors import HeadScopeError, ProbeRejected
from core.models.handle import ViTHandle
from core.models.load import DEMO_NAME, DINOV2_NAME, FASHION_NAME, load_model
from core.models.probe import probe_from_bytes, with_probe
from core.models.transformers import load_transformers
from ui.display import plain
from ui.images import forget_upload, relabel_upload

__all__ = [
    "ENV_CHECKPOINT",
    "ENV_IMG_SIZE",
    "ENV_MODEL",
    "MAX_IMG_SIZE",
    "MODEL_KEY",
    "PROBE_KEY",
    "ModelSpec",
    "activate_probe",
    "builtin_model",
    "current_model",
    "current_spec",
    "probed_model",
    "remove_probe",
    "switch_model",
]

MODEL_KEY = "model_spec"
START_CHECKED_KEY = "start_model_checked"  # the environment's start model was tried in this session
PROBE_KEY = "probe_bytes"  # the active linear probe's file (ModelSpec.probe_digest is its sha256)
CHECKPOINTS_KEY = "checkpoints"  # an uploaded checkpoint's bytes by their sha256 (ModelSpec.checkpoint_digest)

MAX_IMG_SIZE = 1024  # the largest input side a session asks for: 14 px patches at 1,022 px are already 5,330 tokens

# The model a new session starts on (default: the demo model), for a server run on one model:
# a built-in or timm name, a checkpoint file on the server's disk for that timm name, an input size
ENV_MODEL, ENV_CHECKPOINT, ENV_IMG_SIZE = "HEADSCOPE_MODEL", "HEADSCOPE_CHECKPOINT", "HEADSCOPE_IMG_SIZE"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for: a model name, optionally a checkpoint, and an input size.

    Attributes:
        name: a built-in model (``BUILTIN_MODELS``), a timm name, a transformers hub repo id,
            the name of an uploaded transformers ZIP, or (from the environment only) a
            transformers folder or ZIP file on the server.
        checkpoint_digest: sha256 of an uploaded checkpoint's bytes, or path, size and change
            time of ``checkpoint_path``; ``None`` without a checkpoint.
        img_size: input side in pixels; ``None`` for the model's default.
        checkpoint_path: where the checkpoint lies on the server (``HEADSCOPE_CHECKPOINT``);
            ``None`` for an upload, whose bytes the session keeps.
        transformers_zip: the "checkpoint" is an uploaded ZIP of a save_pretrained folder.
        server_paths: ``name`` may be a folder or file on the server; only the environment's
            start model may, never what a visitor types.
        probe_digest: sha256 of the linear probe file that gives this backbone its classes
            (``core.models.probe``); the session keeps its bytes. ``None``: the model as loaded.
    """

    name: str = DEMO_NAME
    checkpoint_digest: str | None = None
    img_size: int | None = None
    checkpoint_path: str | None = None
    transformers_zip: bool = False
    server_paths: bool = False
    probe_digest: str | None = None


@st.cache_resource(max_entries=3, show_spinner="Loading the model…")
def _cached_model(
    name: str,
    checkpoint_digest: str | None,
    img_size: int | None,
    _checkpoint: bytes | str | None,
    transformers_zip: bool = False,
    server_paths: bool = False,
) -> ViTHandle:
    bar = None

    def report(stage: str, fraction: float) -> None:
        # made on the first report only: most loads report nothing, and need no bar
        nonlocal bar
        done, text = min(max(float(fraction), 0.0), 1.0), f"Preparing {name}: {stage}…"
        if bar is None:
            bar = st.progress(done, text=text)
        else:
            bar.progress(done, text=text)

    try:
        if transformers_zip:
            return load_transformers(_checkpoint, label=name, img_size=img_size, progress=report)  # type: ignore[arg-type]
        return load_model(name, checkpoint=_checkpoint, img_size=img_size, progress=report, local_paths=server_paths)
    finally:
        if bar is not None:
            bar.empty()


@st.cache_resource(max_entries=4, show_spinner=False)
def _cached_probed(backbone_key: str, probe_digest: str, _backbone: ViTHandle, _probe: bytes) -> ViTHandle:
    # shares the backbone's parameters: a probed model costs its head and module objects only
    return with_probe(_backbone, probe_from_bytes(_probe, _backbone))


def _load(spec: ModelSpec, checkpoint: bytes | None = None, probe: bytes | None = None) -> ViTHandle:
    handle = _cached_model(
        spec.name, spec.checkpoint_digest, spec.img_size, spec.checkpoint_path or checkpoint,
        spec.transformers_zip, spec.server_paths,
    )
    if spec.probe_digest is None:
        return handle
    if probe is None:
        raise ProbeRejected("The linear probe of this session is no longer held; fit or upload it again.")
    return _cached_probed(handle.key, spec.probe_digest, handle, probe)


def current_spec() -> ModelSpec:
    """What the session analyses; a new session first tries the environment's start model."""
    if not st.session_state.get(START_CHECKED_KEY):
        st.session_state[START_CHECKED_KEY] = True
        error = _start_from_environment(os.environ)
        if error:  # shown once: the session goes on with the demo model
            st.error(plain(f"{error} Starting on the demo model instead."))
    return st.session_state.get(MODEL_KEY, ModelSpec())


def _start_from_environment(environ: Mapping[str, str]) -> str | None:
    """Activate ``HEADSCOPE_MODEL`` (with ``HEADSCOPE_CHECKPOINT``, ``HEADSCOPE_IMG_SIZE``); the reason when it fails."""
    name = environ.get(ENV_MODEL, "").strip()
    path = environ.get(ENV_CHECKPOINT, "").strip() or None
    size_text = environ.get(ENV_IMG_SIZE, "").strip()
    if not name:
        if path:
            return f"{ENV_CHECKPOINT} is set, but {ENV_MODEL} does not name the timm architecture it is for."
        return None
    img_size = None
    if size_text:
        if not size_text.isdecimal():
            return f"{ENV_IMG_SIZE} must be a whole number of pixels, not '{size_text}'."
        img_size = int(size_text)
    digest = None
    if path:
        try:
            # every new session comes here: the file's size and change time tell a replaced checkpoint
            # apart without reading it (the loaded model's own key hashes its weights)
            stat = os.stat(path)
            digest = f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError as err:
            return f"The checkpoint {path} in {ENV_CHECKPOINT} cannot be read ({err.strerror or err})."
    spec = ModelSpec(name, digest, img_size, path, server_paths=True)
    try:
        _load(spec)
    except HeadScopeError as err:
        return f"The start model {name} from {ENV_MODEL} could not be loaded: {err}"
    st.session_state[MODEL_KEY] = spec
    return None


def current_model() -> ViTHandle:
    """The active model; the demo model when nothing else was loaded.

    The cache may have evicted the active model; if reloading it fails now (say the
    machine went offline), the session falls back to the demo model and says why.
    """
    spec = current_spec()
    try:
        return _load(spec, _checkpoint_of(spec), st.session_state.get(PROBE_KEY))
    except HeadScopeError as err:
        if spec == ModelSpec():
            raise
        st.error(plain(f"{err} Switched back to the demo model."))
        st.session_state[MODEL_KEY] = ModelSpec()
        st.session_state.pop(CHECKPOINTS_KEY, None)
        st.session_state.pop(PROBE_KEY, None)
        forget_upload()  # its labels belong to the model that failed
        return _load(ModelSpec())


def switch_model(
    name: str, checkpoint: bytes | None, img_size: int | None = None, *, transformers_zip: bool = False
) -> str | None:
    """Load and activate a model; on failure return the reason and keep the previous model.

    ``img_size`` is the input side in pixels (``None``: the model's default); one that
    does not fit the model's patches fails with its sentence like any other load. With
    ``transformers_zip``, ``checkpoint`` is a ZIP of a save_pretrained folder and ``name``
    the uploaded file's name. A name typed here is never read as a path on the server.
    """
    digest = hashlib.sha256(checkpoint).hexdigest() if checkpoint else None
    spec = ModelSpec(name.strip(), digest, img_size, transformers_zip=transformers_zip)
    try:
        _load(spec, checkpoint)
    except HeadScopeError as err:  # InvalidSetting: an input size that does not fit the patches
        return str(err)
    st.session_state[CHECKPOINTS_KEY] = {digest: checkpoint} if digest and checkpoint else {}
    st.session_state[MODEL_KEY] = spec
    st.session_state.pop(PROBE_KEY, None)
    forget_upload()  # labels of a ZIP depend on the model's classes
    return None


def builtin_model(name: str, img_size: int | None) -> ViTHandle:
    """The built-in model ``name`` at ``img_size`` from the server's cache, without making it the session's model:
    what a study or a link asks for, checked before the session switches to it.

    Raises:
        HeadScopeError: it cannot be loaded (an input size that does not fit it, say), in a sentence.
    """
    return _load(ModelSpec(name, img_size=img_size))


def activate_probe(data: bytes) -> str | None:
    """Put the linear probe in ``data`` on the active backbone; returns the sentence that says why not, or ``None``.

    On an active probed model the new probe replaces its probe. An uploaded ZIP's labels
    (folder names) become the probe's class indices where the names match, so accuracy
    and the class targets read them; nothing changes when the probe is refused.
    """
    handle = current_model()
    backbone = handle.backbone if handle.probe is not None else handle
    if backbone is None or not backbone.is_backbone:
        return f"'{handle.name}' already has classes; a linear probe goes on a backbone."
    try:
        probed = probed_model(data)
    except HeadScopeError as err:
        return str(err)
    st.session_state[MODEL_KEY] = replace(_backbone_spec(), probe_digest=hashlib.sha256(data).hexdigest())
    st.session_state[PROBE_KEY] = data
    relabel_upload(handle.class_names or None, probed.class_names)
    return None


def probed_model(data: bytes) -> ViTHandle:
    """The active backbone with the probe in ``data``, without making it the active model.

    Raises:
        ProbeRejected: the probe does not fit the backbone (or any loading error of the backbone).
    """
    spec = replace(_backbone_spec(), probe_digest=hashlib.sha256(data).hexdigest())
    return _load(spec, _checkpoint_of(spec), data)


def remove_probe() -> None:
    """Back to the bare backbone; an uploaded set's labels name its folders again."""
    handle = current_model()
    if handle.probe is None:
        return
    st.session_state[MODEL_KEY] = _backbone_spec()
    st.session_state.pop(PROBE_KEY, None)
    relabel_upload(handle.class_names, [])


def _backbone_spec() -> ModelSpec:
    """The active model's backbone without a probe (the built-in Fashion-MNIST classifier's is ``dinov2-s``)."""
    spec = current_spec()
    if spec.name == FASHION_NAME:
        return ModelSpec(DINOV2_NAME)
    return replace(spec, probe_digest=None)


def _checkpoint_of(spec: ModelSpec) -> bytes | None:
    return st.session_state.get(CHECKPOINTS_KEY, {}).get(spec.checkpoint_digest or "")

