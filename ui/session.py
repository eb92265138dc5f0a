"""Session-wide state and cached work shared by every page.

The model lives in ``st.cache_resource`` (shared by all sessions, never mutated) and
results in ``st.cache_data``, both bounded and keyed by content hashes: the model's
``key`` and the image set's ``key``. Raw arrays and PIL images are passed as
underscore arguments, which Streamlit leaves out of the cache key.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.pipeline.analysis import SetAnalysis
from core.study.casestudy import set_labels
from core.errors import HeadScopeError, ProbeRejected
from core.inputs.images import (
    ImageSet, demo_digits_set, fashion_sample_set, image_set_from_files, image_set_from_zip, match_class_name,
    sample_photos_set,
)
from core.measures.inference import Predictions, Progress, predict_images
from core.models.transformers import load_transformers
from core.models.load import DEMO_NAME, DINOV2_NAME, FASHION_NAME, load_model
from core.models.handle import ViTHandle, imagenet_synsets
from core.models.probe import MAX_FIT_IMAGES, check_probe_labels, fit_probe, probe_features, probe_from_bytes, with_probe
from core.measures.projection import layout_2d, umap_failed, umap_ready
from core.settings import RUNNING_ANALYSES, CaseSettings
from core.pipeline.staged import AUTO_START_SECONDS, JobView, Preview, RunSlots, StagedAnalysis
from core.measures.importance import HeadImportance
from ui import export, navigation, stages
from ui.display import enlarge_for_display, plain, sentence_on_error
from viz.common import HEAD_SELECTION

__all__ = [
    "ANALYSIS_SETTINGS",
    "ENV_CHECKPOINT",
    "ENV_IMG_SIZE",
    "ENV_MODEL",
    "FOCUS_KEY",
    "MODEL_KEY",
    "NO_LABEL",
    "OWNER_KEY",
    "SAMPLES",
    "SHOWN_SECONDS",
    "SOURCE_CHOICE_KEY",
    "SOURCE_KEY",
    "START_CHECKED_KEY",
    "UPLOAD",
    "UPLOADED_KEY",
    "UPLOAD_ORIGIN_KEY",
    "ZIP",
    "NO_LABELS_HINT",
    "PROBE_KEY",
    "FocusSelection",
    "ModelSpec",
    "PageContext",
    "activate_probe",
    "active_image_set",
    "analysis",
    "analysis_job",
    "current_model",
    "current_spec",
    "focus",
    "fit_probe_on_set",
    "focus_image_id",
    "forget_upload",
    "overview_points",
    "page_context",
    "pick_head",
    "predictions",
    "probe_offer",
    "probed_model",
    "remove_probe",
    "preview",
    "importance_so_far",
    "progress_bar",
    "sample_set",
    "set_focus_head",
    "set_focus_image",
    "show_head_chart",
    "switch_model",
    "umap_pending",
    "upload_images",
]

MODEL_KEY = "model_spec"
SOURCE_KEY = "image_source"  # the home page's radio; Streamlit drops it on other pages
SOURCE_CHOICE_KEY = "image_source_choice"  # the same choice, kept while other pages run
UPLOADED_KEY = "uploaded_set"
FOCUS_KEY = "focus"
START_CHECKED_KEY = "start_model_checked"  # the environment's start model was tried in this session
UPLOAD_ORIGIN_KEY = "uploaded_set_origin"  # (content digest, the ZIP's set decoded for a backbone: folder labels)
PROBE_KEY = "probe_bytes"  # the active linear probe's file (ModelSpec.probe_digest is its sha256)
NO_LABELS_HINT = "Upload a ZIP with one folder per class to ask which heads your classes need."

# The model a new session starts on (default: the demo model), for a server run on one model:
# a built-in or timm name, a checkpoint file on the server's disk for that timm name, an input size
ENV_MODEL, ENV_CHECKPOINT, ENV_IMG_SIZE = "HEADSCOPE_MODEL", "HEADSCOPE_CHECKPOINT", "HEADSCOPE_IMG_SIZE"

SAMPLES, UPLOAD, ZIP = "Sample images", "Upload images", "Upload a ZIP (ImageFolder)"


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


@dataclass(frozen=True)
class FocusSelection:
    """The focus image and focus head that every page reads and may change."""

    image_id: str | None = None
    layer: int = 0
    head: int = 0

    @property
    def head_label(self) -> str:
        return f"L{self.layer}H{self.head}"


# --- progress --------------------------------------------------------------------------


@contextmanager
def progress_bar(start: str, step: str) -> Iterator[Progress]:
    """A progress bar fed by a core ``progress(done, total)`` callback, removed when the work ends.

    ``step`` is formatted with ``done`` and ``total``. Used inside ``st.cache_data``
    functions, so a cache hit replays the bar instead of recomputing.
    """
    bar = st.progress(0.0, text=start)
    try:
        yield lambda done, total: bar.progress(done / total, text=step.format(done=done, total=total))
    finally:
        bar.empty()


# --- model -----------------------------------------------------------------------------


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


def umap_pending() -> bool:
    """UMAP is still compiling: the overview shows PCA for now and refreshes when it is done."""
    return not umap_ready() and not umap_failed()


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
    checkpoints: dict[str, bytes] = st.session_state.get("checkpoints", {})
    try:
        return _load(spec, checkpoints.get(spec.checkpoint_digest or ""), st.session_state.get(PROBE_KEY))
    except HeadScopeError as err:
        if spec == ModelSpec():
            raise
        st.error(plain(f"{err} Switched back to the demo model."))
        st.session_state[MODEL_KEY] = ModelSpec()
        st.session_state.pop("checkpoints", None)
        st.session_state.pop(PROBE_KEY, None)
        st.session_state.pop(UPLOADED_KEY, None)  # its labels belong to the model that failed
        st.session_state.pop(UPLOAD_ORIGIN_KEY, None)
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
    st.session_state["checkpoints"] = {digest: checkpoint} if digest and checkpoint else {}
    st.session_state[MODEL_KEY] = spec
    st.session_state.pop(PROBE_KEY, None)
    st.session_state.pop(UPLOADED_KEY, None)  # labels of a ZIP depend on the model's classes
    st.session_state.pop(UPLOAD_ORIGIN_KEY, None)
    return None


# --- linear probes ---------------------------------------------------------------------


def probe_offer(handle: ViTHandle, image_set: ImageSet) -> tuple[bool, str]:
    """Whether a linear probe can be fitted on this backbone and set, and the sentence to show with it.

    A backbone with a labelled set (one folder per class) is offered a probe; a set a probe
    cannot be fitted on gets the reason, and a set without labels the way to get them.
    """
    if not handle.is_backbone:
        return False, ""
    if not image_set.label_names:
        return False, NO_LABELS_HINT
    try:
        check_probe_labels(image_set.labels, image_set.label_names)
    except HeadScopeError as err:
        return False, f"{err}"
    classes = len({label for label in image_set.labels if label is not None})
    return True, (
        f"This backbone has no classes, but the set has {classes} labelled folders: fit a linear probe on the "
        "backbone's features to ask which heads your classes need."
    )


def fit_probe_on_set(handle: ViTHandle, image_set: ImageSet) -> str | None:
    """Fit a linear probe on the set's labels and make the backbone plus probe the active model.

    The features come from the pass that already gave the overview (no new forward
    pass). Returns the sentence that says why not, or ``None``; on failure the backbone
    stays active.
    """
    offered, why = probe_offer(handle, image_set)
    if not offered:
        return why or "A linear probe goes on a backbone."
    features = predictions(handle, image_set).probe_input
    if features is None:  # predictions read before probes existed in this process: one pass again
        features = _probe_features(handle.key, image_set.key, handle, image_set)
    labelled = sum(label is not None for label in image_set.labels)
    with st.spinner(f"Fitting a linear probe on {min(labelled, MAX_FIT_IMAGES):,} images (cross-validated)…"):
        try:
            probe = fit_probe(features, image_set.labels, image_set.label_names, backbone=handle)
        except HeadScopeError as err:
            return str(err)
    return activate_probe(probe.to_bytes())


@st.cache_data(max_entries=4, show_spinner=False)
def _probe_features(model_key: str, set_key: str, _handle: ViTHandle, _images: ImageSet) -> np.ndarray:
    with progress_bar(f"Reading the features of {len(_images)} images…", "Read {done} of {total} images…") as progress:
        return probe_features(_handle, _images.pil_images(), progress=progress)


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
    _relabel_upload(handle.class_names or None, probed.class_names)
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
    _relabel_upload(handle.class_names, [])


def _backbone_spec() -> ModelSpec:
    """The active model's backbone without a probe (the built-in Fashion-MNIST classifier's is ``dinov2-s``)."""
    spec = current_spec()
    if spec.name == FASHION_NAME:
        return ModelSpec(DINOV2_NAME)
    return replace(spec, probe_digest=None)


def _checkpoint_of(spec: ModelSpec) -> bytes | None:
    return st.session_state.get("checkpoints", {}).get(spec.checkpoint_digest or "")


def _relabel_upload(old_classes: Sequence[str] | None, new_classes: Sequence[str]) -> None:
    """The uploaded set with labels that index ``new_classes`` (``[]``: the set's own folder names, for a backbone).

    Labels are derived from the set as decoded for the backbone (its folder names, kept in
    ``UPLOAD_ORIGIN_KEY``) when there is one, else from ``old_classes`` (``None``: the set's
    own label names); folder names are matched to classes as an ImageFolder upload matches
    them (``match_class_name``), and a folder that is no class gets no label.
    """
    kept = st.session_state.get(UPLOADED_KEY)
    if kept is None:
        return
    key, image_set, notes = kept
    origin = st.session_state.get(UPLOAD_ORIGIN_KEY)
    if origin is not None:
        image_set, names = origin[1], list(origin[1].label_names)
    else:
        names = list(old_classes) if old_classes is not None else list(image_set.label_names)
    if not names:
        return  # no labels to carry over
    if not new_classes:
        relabelled = image_set if origin is not None else ImageSet.from_images(image_set.title, image_set.images, names)
    else:
        images = [
            replace(item, label=None if item.label is None else match_class_name(names[item.label], new_classes))
            for item in image_set.images
        ]
        relabelled = ImageSet.from_images(image_set.title, images)
    st.session_state[UPLOADED_KEY] = (f"{key}:{relabelled.key}", relabelled, notes)


# --- images ----------------------------------------------------------------------------


@st.cache_data(max_entries=4, show_spinner="Preparing the sample images…")
def _sample_set(model_name: str, seed: int | None, test_fraction: float | None, classes: tuple[str, ...] = ()) -> ImageSet:
    if seed is not None and test_fraction is not None:
        return demo_digits_set(seed, test_fraction)
    if model_name == FASHION_NAME:
        return fashion_sample_set(classes)
    return sample_photos_set()


def sample_set(handle: ViTHandle) -> ImageSet:
    """The model's own samples: the held-out digits for the demo model, Fashion-MNIST test images for
    the Fashion-MNIST classifier, else scikit-image photos."""
    if handle.name == FASHION_NAME:
        with sentence_on_error():
            return _sample_set(FASHION_NAME, None, None, tuple(handle.class_names))
    split = (handle.card or {}).get("split", {})
    return _sample_set(handle.name if handle.card else "photos", split.get("seed"), split.get("test_fraction"))


def upload_images(files: list[tuple[str, bytes]], handle: ViTHandle, as_zip: bool) -> tuple[ImageSet | None, list[str], str | None]:
    """Decode uploads once per distinct content; returns (set, notes, error sentence).

    A ZIP decoded for a backbone is also kept as ``UPLOAD_ORIGIN_KEY``: its folder names are
    what a linear probe's classes are matched with, whatever probe comes and goes.
    """
    content = hashlib.sha256(str(as_zip).encode())
    for name, data in files:
        content.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    key = hashlib.sha256(handle.key.encode() + content.digest()).hexdigest()
    cached = st.session_state.get(UPLOADED_KEY)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2], None
    try:
        if as_zip:
            aliases = [[s] for s in imagenet_synsets()] if len(handle.class_names) == 1000 else None
            image_set, notes = image_set_from_zip(files[0][1], handle.class_names, aliases=aliases)
        else:
            image_set, notes = image_set_from_files(files)
    except HeadScopeError as err:
        return None, [], str(err)
    origin = st.session_state.get(UPLOAD_ORIGIN_KEY)
    if image_set.label_names:
        st.session_state[UPLOAD_ORIGIN_KEY] = (content.hexdigest(), image_set)
    elif origin is not None and origin[0] != content.hexdigest():
        st.session_state.pop(UPLOAD_ORIGIN_KEY, None)  # another upload: its folders are not those
    st.session_state[UPLOADED_KEY] = (key, image_set, notes)
    return image_set, notes, None


# --- results ---------------------------------------------------------------------------

# What the views' analysis of a set is computed with: the defaults of ``CaseSettings``.
# A page's display choices never change it; a pattern sample of another size is drawn
# on its own (``ui.patterns``).
ANALYSIS_SETTINGS = CaseSettings()
_ANALYSIS_ENTRIES = 4  # idle jobs kept; a job that computes, waits in line or a page read lately is not dropped
_MOST_ENTRIES = 16  # jobs kept at all: past this the oldest idle ones go even if read lately (a click makes one anew)
# a page reads its job on every run and every poll; a job unread for this long (a closed tab) is protected no more
SHOWN_SECONDS = 30 * 60
OWNER_KEY = "analysis_owner"
# the staged analyses of the sets analysed last, by (model key, set key, settings), newest
# last: shared by every session, as a cache is, and run on their own worker threads, at
# most RUNNING_ANALYSES at once (the others wait in line)
_jobs: OrderedDict[tuple[str, str, str], StagedAnalysis] = OrderedDict()
_slots = RunSlots(RUNNING_ANALYSES)
_jobs_lock = threading.Lock()


def _owner() -> str:
    """This browser session's name as an owner of shared jobs: its Stop and its sample cap are its own.

    It starts with Streamlit's session id, which ``ui.stages`` asks the runtime about, and ends
    in a token of its own (a test harness gives every session one id).
    """
    if OWNER_KEY not in st.session_state:
        ctx = get_script_run_ctx()
        st.session_state[OWNER_KEY] = f"{ctx.session_id if ctx is not None else ''} {uuid.uuid4().hex}"
    return st.session_state[OWNER_KEY]


def analysis_job(handle: ViTHandle, image_set: ImageSet) -> JobView:
    """The set's staged analysis (``core.pipeline.staged``) as this session sees it, started on first use and shared by every page.

    The preview (one pass) starts at once and the exact sweep's first image is measured;
    the heavy stages follow on their own when their estimate is short, else they wait for
    the user's Start (``ui.stages.heavy_panel``). A Start or Stop the user pressed is
    applied here, to the job the registry holds now. A job that failed is forgotten once
    its sentence is shown, so the next visit tries again.
    """
    key = (handle.key, image_set.key, repr(ANALYSIS_SETTINGS))
    owner = _owner()
    with _jobs_lock:
        job = _jobs.get(key)
        if job is None:
            with sentence_on_error():
                job = StagedAnalysis(
                    handle, image_set.pil_images(), set_labels(image_set), ANALYSIS_SETTINGS,
                    auto_start=AUTO_START_SECONDS, slots=_slots,
                )
            _jobs[key] = job
        _jobs.move_to_end(key)
        view = job.view(owner)  # marks the job as read now
        _evict(time.monotonic())
    job.begin(owner)  # no-op once the preview and the measurement have run
    stages.apply_request(view, "/".join(key))
    return view


def _evict(now: float) -> None:
    """Keep at most ``_ANALYSIS_ENTRIES`` jobs that nobody needs: the oldest idle one goes, a stopped one last.

    A job that computes or waits in line is never dropped, nor, up to ``_MOST_ENTRIES`` jobs,
    one that a page read within ``SHOWN_SECONDS``. A dropped job costs its results, never a
    click: Start and Stop reach the job the registry holds when the page runs. Hold ``_jobs_lock``.
    """
    idle = [key for key, job in _jobs.items() if not job.busy]
    unread = [key for key in idle if now - _jobs[key].seen_at > SHOWN_SECONDS]
    for candidates, most in ((unread, _ANALYSIS_ENTRIES), (idle, _MOST_ENTRIES)):
        candidates = [key for key in candidates if key in _jobs]
        while len(_jobs) > most and candidates:
            first = next((key for key in candidates if not _jobs[key].interrupted), candidates[0])
            candidates.remove(first)
            del _jobs[first]


def _failed(view: JobView) -> None:
    """Stop the page with the job's sentence, and forget the job."""
    if view.error is None:
        return
    with _jobs_lock:
        for key, held in list(_jobs.items()):
            if held is view.job:
                del _jobs[key]
    st.error(plain(str(view.error)))
    st.stop()


def _first_pass_done(handle: ViTHandle, image_set: ImageSet) -> JobView:
    """The set's job once its first pass has finished (waiting with a progress bar); an error stops the page."""
    job = analysis_job(handle, image_set)
    stages.wait_for_preview(job)
    _failed(job)
    return job


def preview(handle: ViTHandle, image_set: ImageSet) -> Preview:
    """The set's first pass: predictions, strength, the map sample, the Taylor preview (waits for it)."""
    result = _first_pass_done(handle, image_set).preview
    assert result is not None
    return result


def importance_so_far(handle: ViTHandle, image_set: ImageSet) -> tuple[JobView, HeadImportance | None, pd.DataFrame | None]:
    """The job and, once they have finished, the exact importance and the pruning curve (else ``None``), without waiting.

    Their images are the job's sample (``stages.sample_note``).
    """
    job = _first_pass_done(handle, image_set)
    return job, job.importance(), job.curve()


def analysis(handle: ViTHandle, image_set: ImageSet, *, why: str = "") -> SetAnalysis:
    """The set's whole analysis on every image: waits for it, or offers to start it, with its estimate.

    A page that needs it (the case study) shows the heavy stages' panel until it is done.
    A model whose outputs are not finite on these images (or any other error with a
    sentence for the user) stops the page with that sentence.
    """
    job = _first_pass_done(handle, image_set)
    stages.heavy_panel(job, need_every_image=True, why=why)
    _failed(job)
    result = job.result()
    assert result is not None  # the panel returns only once every stage has finished on every image
    return result


@st.cache_data(max_entries=16, show_spinner=False)
def _predictions(model_key: str, set_key: str, _handle: ViTHandle, _images: ImageSet) -> Predictions:
    with progress_bar(f"Running the model over {len(_images)} images…", "Classified {done} of {total} images…") as progress:
        return predict_images(_handle, _images.pil_images(), progress=progress)


def predictions(handle: ViTHandle, image_set: ImageSet) -> Predictions:
    """The set's predictions; a model whose outputs are not finite on these images stops the page with its sentence.

    They come from the set's analysis once a view has computed it; before that (the home
    page is the first one opened) a forward pass alone gives them, so the overview does
    not wait for every head to be pruned.
    """
    with _jobs_lock:
        job = _jobs.get((handle.key, image_set.key, repr(ANALYSIS_SETTINGS)))
    done = job.preview if job is not None else None
    if done is not None:
        return done.predictions
    with sentence_on_error():
        return _predictions(handle.key, image_set.key, handle, image_set)


@st.cache_data(max_entries=16, show_spinner="Laying out the images…")
def _layout(model_key: str, set_key: str, method: str, _features: np.ndarray) -> np.ndarray:
    return layout_2d(_features, method)  # type: ignore[arg-type]


NO_LABEL = "no label"  # a backbone's overview: the colour of images without a label


def overview_points(handle: ViTHandle, image_set: ImageSet, preds: Predictions) -> tuple[pd.DataFrame, str]:
    """The overview's table (one row per image) and the layout method used.

    Columns x, y, id, name, class (what colours the dot), label ("" when unknown) and,
    for a classifier, predicted, probability (of the predicted class) and wrong. A
    classifier's class is the label when known, else the prediction; a backbone
    predicts nothing, so its class is the label, or ``NO_LABEL``.
    """
    method = "umap" if umap_ready() else "pca"
    xy = _layout(handle.key, image_set.key, method, preds.features)
    names = handle.class_names
    if not handle.is_backbone:
        probs, predictions = preds.probs, preds.predicted  # each a pass over the whole set: once
    rows = []
    for i, image in enumerate(image_set.images):
        label = image_set.label_text(image.label, names)
        row = {"x": float(xy[i, 0]), "y": float(xy[i, 1]), "id": image.id, "name": image.name, "label": label}
        if handle.is_backbone:
            row["class"] = label or NO_LABEL
        else:
            predicted = int(predictions[i])
            row |= {
                "class": label or names[predicted],
                "predicted": names[predicted],
                "probability": float(probs[i, predicted]),
                "wrong": image.label is not None and image.label != predicted,
            }
        rows.append(row)
    return pd.DataFrame(rows), method


# --- focus -----------------------------------------------------------------------------


def focus() -> FocusSelection:
    return st.session_state.get(FOCUS_KEY, FocusSelection())


def set_focus_image(image_id: str) -> None:
    st.session_state[FOCUS_KEY] = FocusSelection(image_id, focus().layer, focus().head)


def set_focus_head(layer: int, head: int) -> None:
    st.session_state[FOCUS_KEY] = FocusSelection(focus().image_id, layer, head)


def pick_head(chart_key: str) -> None:
    """``on_select`` of a head chart: the clicked ``(layer, head)`` becomes the focus head."""
    selected = st.session_state[chart_key].selection.get(HEAD_SELECTION) or []
    if selected and {"layer", "head"} <= selected[0].keys():
        set_focus_head(int(selected[0]["layer"]), int(selected[0]["head"]))


def show_head_chart(chart, key: str) -> None:
    """Render a chart built with ``HEAD_SELECTION`` with its downloads; clicking a head makes it the focus head."""
    export.chart(chart, key, key=key, on_select=lambda: pick_head(key), selection_mode=HEAD_SELECTION, width="stretch")


def focus_image_id(image_set: ImageSet) -> str:
    """The focus image if it belongs to ``image_set``, else the set's first image (made the focus)."""
    current = focus().image_id
    try:
        image_set.by_id(current or "")
    except KeyError:
        current = image_set.images[0].id
        set_focus_image(current)
    return current


def forget_upload() -> None:
    st.session_state.pop(UPLOADED_KEY, None)
    st.session_state.pop(UPLOAD_ORIGIN_KEY, None)


def active_image_set(handle: ViTHandle) -> ImageSet:
    """The set every page analyses: the user's upload when one is chosen and usable, else the samples."""
    if st.session_state.get(SOURCE_CHOICE_KEY, SAMPLES) != SAMPLES:
        uploaded = st.session_state.get(UPLOADED_KEY)
        if uploaded is not None:
            return uploaded[1]
    return sample_set(handle)


# --- pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PageContext:
    """What every analysis page starts from: the active model, image set and selections."""

    handle: ViTHandle
    image_set: ImageSet
    focus_id: str
    focus: FocusSelection


def page_context() -> PageContext:
    """Resolve the active model, set and focus, and draw the sidebar every view page shares.

    The sidebar shows what is being analysed, lets the user change the focus image and the
    focus head from any page, and links to every page (the Overview page picks the model and images).
    """
    from ui.probe import probe_header  # ui.probe builds on this module

    navigation.sidebar_links()
    handle = current_model()
    image_set = active_image_set(handle)
    focus_id = focus_image_id(image_set)
    _clamp_focus_head(handle)
    _focus_sidebar(handle, image_set, focus_id)
    probe_header(handle)
    # the set's analysis is read where a view needs it: an opened bundle needs none
    return PageContext(handle, image_set, focus_id, focus())


def _clamp_focus_head(handle: ViTHandle) -> None:
    """A head picked on a larger model may not exist in the current one: fall back to L0H0."""
    current = focus()
    if current.layer >= handle.num_layers or current.head >= handle.num_heads:
        set_focus_head(0, 0)


def _focus_sidebar(handle: ViTHandle, image_set: ImageSet, focus_id: str) -> None:
    sidebar = st.sidebar
    sidebar.caption(f"**{plain(handle.name)}** · {plain(image_set.title)} · the Overview page changes them")

    # keyed widgets ignore their default after the first run, and a page switch makes them
    # new widgets: set their state from the focus on every run
    current = focus()
    for key, value in (("focus_image_pick", focus_id), ("focus_layer", current.layer), ("focus_head", current.head)):
        st.session_state[key] = value

    sidebar.header("Focus")
    names = {image.id: image.name for image in image_set.images}
    sidebar.selectbox(
        "Focus image",
        list(names),
        format_func=lambda image_id: f"{names[image_id]} ({image_id[:8]})",
        key="focus_image_pick",
        on_change=lambda: set_focus_image(st.session_state["focus_image_pick"]),
    )
    image = image_set.by_id(focus_id)
    sidebar.image(enlarge_for_display(image.image, min_side=120), width=120)
    left, right = sidebar.columns(2)
    left.selectbox(
        "Focus layer", list(range(handle.num_layers)), key="focus_layer",
        on_change=lambda: set_focus_head(st.session_state["focus_layer"], focus().head),
    )
    right.selectbox(
        "Focus head", list(range(handle.num_heads)), key="focus_head",
        on_change=lambda: set_focus_head(focus().layer, st.session_state["focus_head"]),
    )
    sidebar.caption(f"Focus head **{focus().head_label}**; click a head in a chart to change it.")
