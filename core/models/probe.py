"""Linear probes: a backbone becomes a classifier for the user's own classes.

A backbone (DINOv2, DINO, MAE, a CLIP image tower) has no classes, so the questions
that need one (which heads the class probability depends on, which pruning mode kills
the prediction, gradient rollout for a class) cannot be asked of it. Teams use such a
backbone with a linear head trained on their labels; a labelled image set is exactly
the data for one. :func:`fit_probe` fits a multinomial logistic regression on the
backbone's features of a labelled set (scikit-learn, L2, its strength chosen by
cross-validation, deterministic) and :func:`with_probe` folds it into a copy of the
model as a real linear layer, so every forward, ablation and gradient goes through it.

What the probe reads (:func:`probe_input_kind`):

- ``class_and_patch_mean``: the class token beside the mean of the patch tokens, both
  after the final norm: DINOv2's own linear evaluation, for any backbone with a class
  token. Registers and a distillation token are left out of the mean.
- ``pooled``: the backbone's own pooled output (``forward_head(pre_logits=True)``), for a
  backbone without a class token (average pooling, as MAE and CLIP towers with an
  ``fc_norm``), or one that already reads the class token beside the patch mean.

A probe is saved as one safetensors file (``weight`` ``[C, F]`` and ``bias`` ``[C]`` in
float64) whose metadata holds its card: the backbone's key, the feature input, the
class names and the cross-validated accuracy. The card is checked against the weights
and the backbone when the file is read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import unicodedata
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import InvalidSetting, LabelsMismatch, ProbeRejected
from core.inputs.images import BIDI_CONTROLS

if TYPE_CHECKING:
    from core.models.handle import ViTHandle

__all__ = [
    "CLASS_AND_PATCH_MEAN",
    "C_GRID",
    "MAX_FOLDS",
    "NEAR_CHANCE_MARGIN",
    "FEATURE_INPUTS",
    "MAX_CLASSES",
    "MAX_FILE_BYTES",
    "MAX_FIT_IMAGES",
    "MIN_CLASSES",
    "MIN_PER_CLASS",
    "POOLED",
    "LinearProbe",
    "ProbeHead",
    "check_probe_fits",
    "check_probe_labels",
    "fit_probe",
    "near_chance",
    "probe_features",
    "probe_from_bytes",
    "probe_input_kind",
    "readout_features",
    "with_probe",
]

CLASS_AND_PATCH_MEAN = "class_and_patch_mean"
POOLED = "pooled"
# What each feature input is, in words (the header, the docs and the card say it this way).
FEATURE_INPUTS: dict[str, str] = {
    CLASS_AND_PATCH_MEAN: "the class token beside the mean of the patch tokens, after the final norm (DINOv2's linear evaluation)",
    POOLED: "the backbone's pooled output features",
}
MIN_CLASSES = 2
MIN_PER_CLASS = 5
MAX_CLASSES = 1000
# Past this many labelled images the fit takes a seeded, stratified sample: the
# cross-validated fit of 2,000 images of 768 features takes seconds on two cores.
MAX_FIT_IMAGES = 2000
# The regularisation strengths tried (inverse L2 weight on standardised features).
C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
MAX_FOLDS = 5
# Cross-validated accuracy within this much of chance (the largest class's share) is "near chance".
NEAR_CHANCE_MARGIN = 0.1
_MAX_ITER = 2000
_METADATA_KEY = "headscope_probe"
_FIT_LOCK = threading.Lock()
_FORMAT = 1
MAX_FILE_BYTES = 64 * 2**20  # 1,000 classes x 2,048 features in float64 is 16 MB
_MAX_NAME_CHARS = 200


@dataclass(frozen=True, eq=False)
class LinearProbe:
    """A linear classifier on a backbone's features, in the units of the raw features.

    The standardisation the fit used is folded into ``weight`` and ``bias``: the logits
    of features ``x`` are ``x @ weight.T + bias``.

    Attributes:
        weight: ``[C, F]`` float64.
        bias: ``[C]`` float64.
        class_names: one name per class, in label order (the folder names, sorted).
        feature_input: ``CLASS_AND_PATCH_MEAN`` or ``POOLED`` (see the module docstring).
        backbone_key: the key of the backbone it was fitted on (``ViTHandle.key``).
        backbone_name: that backbone's display name, for messages.
        accuracy: mean cross-validated accuracy on the fitted images.
        chance: accuracy of always answering the largest class.
        images: how many labelled images it was fitted on.
        labelled: how many labelled images the set had (more than ``images`` when sampled).
        strength: the inverse L2 strength ``C`` the cross-validation chose.
        folds: cross-validation folds.
        backbone_weights_sha256: sha256 of the backbone's weights file, when it was fitted
            on a built-in backbone (checked when the built-in classifier loads).
        source: what it was fitted and tested on, in words, when not on the set in view
            (a shipped probe); empty for a probe fitted in the app.
    """

    weight: np.ndarray
    bias: np.ndarray
    class_names: tuple[str, ...]
    feature_input: str
    backbone_key: str
    backbone_name: str = ""
    accuracy: float = math.nan
    chance: float = math.nan
    images: int = 0
    labelled: int = 0
    strength: float = math.nan
    folds: int = 0
    backbone_weights_sha256: str | None = None
    source: str = ""
    _digest: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        weight = np.ascontiguousarray(self.weight, dtype=np.float64)
        bias = np.ascontiguousarray(self.bias, dtype=np.float64)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        digest = hashlib.sha256(json.dumps(self.card(), sort_keys=True).encode())
        digest.update(weight.tobytes())
        digest.update(bias.tobytes())
        object.__setattr__(self, "_digest", digest.hexdigest())

    @property
    def digest(self) -> str:
        """sha256 over the card and the weights: two probes with the same digest classify alike."""
        return self._digest

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def sampled(self) -> bool:
        """Fitted on a seeded sample of a larger labelled set."""
        return self.images < self.labelled

    def card(self) -> dict[str, Any]:
        """The JSON card saved with the weights."""
        return {
            "format": _FORMAT,
            "backbone_key": self.backbone_key,
            "backbone_name": self.backbone_name,
            "backbone_weights_sha256": self.backbone_weights_sha256,
            "feature_input": self.feature_input,
            "features": int(self.weight.shape[1]),
            "class_names": list(self.class_names),
            "accuracy": _finite_or_none(self.accuracy),
            "chance": _finite_or_none(self.chance),
            "images": int(self.images),
            "labelled": int(self.labelled),
            "strength": _finite_or_none(self.strength),
            "folds": int(self.folds),
            "source": self.source,
        }

    def to_bytes(self) -> bytes:
        """The probe as one safetensors file, its card in the metadata."""
        from safetensors.torch import save

        tensors = {"weight": torch.from_numpy(self.weight.copy()), "bias": torch.from_numpy(self.bias.copy())}
        return save(tensors, metadata={_METADATA_KEY: json.dumps(self.card(), sort_keys=True)})

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``[N, C]`` logits of ``[N, F]`` features (float64)."""
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias

    def summary(self) -> str:
        """One sentence: the cross-validated accuracy against chance, and where the classes come from."""
        sample = f", a seeded sample of {self.labelled:,}" if self.sampled else ""
        where = f"on {self.source}" if self.source else "here"
        text = (
            f"Linear probe on {len(self.class_names)} classes: {self.accuracy:.0%} cross-validated accuracy on "
            f"{self.images:,} images{sample} ({self.folds}-fold; chance {self.chance:.0%}). The attention is the "
            f"backbone's own; the classes come from a linear head fitted {where}, reading "
            f"{FEATURE_INPUTS.get(self.feature_input, self.feature_input)}."
        )
        if near_chance(self):
            text += (
                " This is near chance: a linear probe cannot tell these classes apart on these features, so the "
                "class-based views show a head that mostly guesses."
            )
        return text


def near_chance(probe: LinearProbe) -> bool:
    """The cross-validated accuracy is within ``NEAR_CHANCE_MARGIN`` of always answering the largest class."""
    return not probe.accuracy >= probe.chance + NEAR_CHANCE_MARGIN


# --- what the probe reads ----------------------------------------------------------------


def probe_input_kind(model: nn.Module) -> str:
    """``CLASS_AND_PATCH_MEAN`` for a backbone with a class token that reads it alone, else ``POOLED``."""
    if getattr(model, "headscope_readout", None) == CLASS_AND_PATCH_MEAN:
        return POOLED  # its pooled output already is the class token beside the patch mean
    has_class = getattr(model, "cls_token", None) is not None and int(getattr(model, "num_prefix_tokens", 0)) > 0
    return CLASS_AND_PATCH_MEAN if has_class else POOLED


def readout_features(model: nn.Module, last_tokens: torch.Tensor, kind: str | None = None) -> torch.Tensor:
    """``[B, F]`` the probe's input from the last block's output tokens ``[B, T, D]`` (no forward pass).

    ``kind`` defaults to :func:`probe_input_kind`. This is what a probed model's head reads.
    """
    kind = kind or probe_input_kind(model)
    tokens = model.norm(last_tokens)
    if kind == CLASS_AND_PATCH_MEAN:
        return torch.cat([tokens[:, 0], tokens[:, int(model.num_prefix_tokens):].mean(dim=1)], dim=-1)
    return _base_forward_head(model, tokens)


def probe_features(
    handle: ViTHandle, images: Sequence[Any], *, batch_size: int | None = None, progress: Any = None
) -> np.ndarray:
    """``[N, F]`` float32 probe input of PIL ``images`` on a backbone, in batches (one plain forward each).

    The app reads these from the analysis's first pass instead; this is for a set with no
    analysis (the command line, ``scripts/train_probe.py``).
    """
    from core.models.hooks import check_finite, locked_hooks
    from core.settings import images_per_batch

    step = images_per_batch(handle, batch_size)
    model = handle.model
    out: list[np.ndarray] = []
    for start in range(0, len(images), step):
        x = handle.preprocess(list(images[start:start + step])).to(handle.device)
        kept: list[torch.Tensor] = []
        with locked_hooks(handle) as hooks:
            hooks.forward(model.blocks[-1], lambda _m, _i, output: kept.append(output))
            check_finite(model(x))
            out.append(readout_features(model, kept[0]).float().cpu().numpy())
        if progress is not None:
            progress(min(start + step, len(images)), len(images))
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _base_forward_head(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The model's own pooled features of normed tokens (its class's ``forward_head``, skipping a probe's)."""
    cls = type(model)
    base = cls.__mro__[2] if issubclass(cls, _ProbedMixin) else cls
    return base.forward_head(model, tokens, pre_logits=True)


# --- fitting ------------------------------------------------------------------------------


def check_probe_labels(labels: Sequence[int | None], class_names: Sequence[str]) -> np.ndarray:
    """``[N]`` bool: the labelled images; refuses labels a probe cannot be fitted on, with a sentence.

    Raises:
        LabelsMismatch: fewer than 2 classes, more than 1,000, a class with fewer than 5
            images, or a label outside ``class_names``.
    """
    names = list(class_names)
    if len(names) > MAX_CLASSES:
        raise LabelsMismatch(
            f"The set has {len(names):,} classes; a linear probe here takes at most {MAX_CLASSES:,}."
        )
    known = np.array([label is not None and label >= 0 for label in labels], dtype=bool)
    values = np.array([label if ok else -1 for label, ok in zip(labels, known)], dtype=np.int64)
    if known.any() and (values[known] >= len(names)).any():
        raise LabelsMismatch(f"A label is {int(values.max())}, but the set names classes 0 to {len(names) - 1}.")
    counts = np.bincount(values[known], minlength=len(names)) if known.any() else np.zeros(len(names), dtype=int)
    present = int((counts > 0).sum())
    if present < MIN_CLASSES:
        raise LabelsMismatch(
            f"A linear probe needs at least {MIN_CLASSES} classes with images, and this set has {present}: "
            "upload a ZIP with one folder per class."
        )
    few = [(names[i], int(c)) for i, c in enumerate(counts) if 0 < c < MIN_PER_CLASS]
    if few:
        name, count = few[0]
        more = f" (and {len(few) - 1} more)" if len(few) > 1 else ""
        raise LabelsMismatch(
            f"The class '{_short(name)}' has {count} image{'s' if count != 1 else ''}{more}; a linear probe needs at "
            f"least {MIN_PER_CLASS} images of every class to cross-validate."
        )
    return known


def fit_probe(
    features: np.ndarray,
    labels: Sequence[int | None],
    class_names: Sequence[str],
    *,
    backbone: ViTHandle,
    seed: int = 0,
    max_images: int = MAX_FIT_IMAGES,
    grid: Sequence[float] = C_GRID,
) -> LinearProbe:
    """Fit a multinomial logistic regression on ``[N, F]`` features of a labelled set.

    Features are standardised; the L2 strength is chosen from ``grid`` by stratified
    ``k``-fold cross-validation (``k`` = 5, or fewer when the smallest class has fewer
    images), accuracy scored, and the model is refitted on all the images. Everything
    is seeded: fitting the same features twice gives the same probe. A class without
    images is kept as a class (its bias makes it never predicted) so that the class
    names stay the set's.

    Args:
        features: ``[N, F]`` the backbone's probe input (``readout_features``) per image.
        labels: class index per image, ``None`` (or negative) where unknown.
        class_names: the names the labels index.
        backbone: the backbone the features come from; its key and feature input go on the card.
        seed: seeds the sample of a large set and the folds.
        max_images: fit on a seeded, stratified sample of this many labelled images at most.

    Raises:
        LabelsMismatch: see ``check_probe_labels``; features that are not one ``[F]`` row per label.
        InvalidSetting: features that are not finite.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(labels):
        raise LabelsMismatch(f"Got {len(labels)} labels for {len(x)} feature rows; give one label per image.")
    if not np.isfinite(x).all():
        raise InvalidSetting("The backbone's features have NaN or infinite values; no probe can be fitted on them.")
    known = check_probe_labels(labels, class_names)
    y = np.array([label for label, ok in zip(labels, known) if ok], dtype=np.int64)
    x = x[known]
    labelled = len(y)
    if labelled > max_images:
        keep = _stratified_sample(y, max_images, seed)
        x, y = x[keep], y[keep]
    present = np.unique(y)
    folds = int(min(MAX_FOLDS, np.bincount(y).max(initial=0), np.bincount(y)[present].min()))
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=_MAX_ITER)),
        {"logisticregression__C": list(grid)},
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        scoring="accuracy",
        refit=True,
    )
    # one BLAS thread: on a busy machine (two analyses may run at once) two threads made the
    # fit 10-20 times slower (a 300 x 768 fit took 43-57 s instead of 2-3 s)
    # the limit is the process's: fits take turns, so none restores another's limit out of order
    with _FIT_LOCK, warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x, y)
    scaler, regression = search.best_estimator_[0], search.best_estimator_[1]
    weight, bias = _folded(scaler, regression, present, len(class_names))
    counts = np.bincount(y, minlength=len(class_names))
    return LinearProbe(
        weight=weight,
        bias=bias,
        class_names=tuple(class_names),
        feature_input=probe_input_kind(backbone.model),
        backbone_key=backbone.key,
        backbone_name=backbone.name,
        accuracy=float(search.best_score_),
        chance=float(counts.max() / counts.sum()),
        images=int(len(y)),
        labelled=int(labelled),
        strength=float(search.best_params_["logisticregression__C"]),
        folds=folds,
    )


def _stratified_sample(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of about ``size`` labels, each class in its share and at least
    ``MIN_PER_CLASS`` of it (all of a smaller class), so cross-validation still sees every class."""
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        share = int(round(len(members) * size / len(y)))
        take = min(len(members), max(MIN_PER_CLASS, share))
        keep.append(rng.permutation(members)[:take])
    return np.sort(np.concatenate(keep))


def _folded(scaler: Any, regression: Any, present: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``weight [C, F]`` and ``bias [C]`` in raw-feature units, the scaler folded in, every class a row.

    A binary fit has one row (the score of the second class); it becomes ``[0, w]`` so the
    softmax of the two logits is scikit-learn's ``predict_proba``. A class without images
    gets zero weights and a bias far below the others'.
    """
    coef = np.asarray(regression.coef_, dtype=np.float64)
    intercept = np.asarray(regression.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        coef = np.vstack([np.zeros_like(coef), coef])
        intercept = np.concatenate([[0.0], intercept])
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    folded = coef / scale
    shift = intercept - folded @ mean
    weight = np.zeros((num_classes, coef.shape[1]))
    bias = np.full(num_classes, shift.min() - 1e4)  # absent classes: exp(-1e4) is 0 in float32 and float64
    weight[present] = folded
    bias[present] = shift
    return weight, bias


# --- the probed model -------------------------------------------------------------------


class ProbeHead(nn.Linear):
    """The probe as a linear layer in float64 (features are cast to it and logits back).

    float64 keeps the logits equal to scikit-learn's ``decision_function`` to rounding.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


class _ProbedMixin:
    """A backbone's ``forward_head`` replaced by the probe's input and head."""

    headscope_probe_input: str

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.headscope_probe_input == CLASS_AND_PATCH_MEAN:
            x = torch.cat([x[:, 0], x[:, self.num_prefix_tokens:].mean(dim=1)], dim=-1)  # type: ignore[attr-defined]
        else:
            x = super().forward_head(x, pre_logits=True)  # type: ignore[misc]
        return x if pre_logits else self.head(x)  # type: ignore[attr-defined]


_PROBED_CLASSES: dict[type, type] = {}


def _probed_class(base: type) -> type:
    if base not in _PROBED_CLASSES:
        _PROBED_CLASSES[base] = type(f"Probed{base.__name__}", (_ProbedMixin, base), {})
    return _PROBED_CLASSES[base]


def with_probe(
    backbone: ViTHandle, probe: LinearProbe, *, name: str | None = None, check_key: bool = True
) -> ViTHandle:
    """A classifier handle: the backbone with ``probe`` as its head, class names the probe's.

    The backbone's model is not changed: the classifier is a copy of its modules that
    shares its parameters and buffers (no weight is copied), with its own head and
    hooks. Its key is the backbone's key plus the probe's digest. ``name`` replaces the
    display name; ``check_key=False`` skips the backbone key check (a built-in checks the
    backbone's weights file instead).

    Raises:
        ProbeRejected: the probe was fitted on another backbone or feature input, has
            another feature size, or non-finite weights.
    """
    from core.models.handle import _make_handle

    check_probe_fits(backbone, probe, check_key=check_key)
    model = backbone.model
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    with backbone.lock:  # no hook of a running analysis is copied along
        probed = copy.deepcopy(model, memo=shared)
    probed.__class__ = _probed_class(type(model))
    probed.headscope_probe_input = probe.feature_input
    if probe.feature_input == CLASS_AND_PATCH_MEAN:
        probed.headscope_readout = CLASS_AND_PATCH_MEAN  # what gradient rollout reads the answer from
    # float64 keeps the logits equal to scikit-learn's; MPS has no float64, so there it is float32
    precision = torch.float32 if backbone.device.type == "mps" else torch.float64
    head = ProbeHead(probe.num_features, len(probe.class_names), dtype=precision, device=backbone.device)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(probe.weight).to(precision))
        head.bias.copy_(torch.from_numpy(probe.bias).to(precision))
    head.requires_grad_(False)
    probed.head = head
    probed.num_classes = len(probe.class_names)
    return _make_handle(
        probed,
        name=name or f"{backbone.name} + probe ({len(probe.class_names)} classes)",
        device=backbone.device,
        class_names=list(probe.class_names),
        key=f"{backbone.key}-probe-{probe.digest[:16]}",
        card=backbone.card,
        refuse=ProbeRejected,
        data_config=backbone.data_config,
        transform=backbone._transform,
        probe=probe,
        backbone=backbone,
    )


def check_probe_fits(backbone: ViTHandle, probe: LinearProbe, *, check_key: bool = True) -> None:
    """Refuse, with a sentence, a probe that cannot sit on ``backbone``.

    Raises:
        ProbeRejected: not a backbone, another backbone (by key), another feature input
            or size, or non-finite weights.
    """
    if not backbone.is_backbone:
        raise ProbeRejected(f"'{_short(backbone.name)}' already has classes; a linear probe goes on a backbone.")
    if check_key and probe.backbone_key != backbone.key:
        raise ProbeRejected(
            f"This probe was fitted on '{_short(probe.backbone_name)}' ({probe.backbone_key[-8:]}), not on the "
            f"active model '{_short(backbone.name)}' ({backbone.key[-8:]}); load that backbone, at the same input "
            "size, to use it."
        )
    kind = probe_input_kind(backbone.model)
    if probe.feature_input != kind:
        raise ProbeRejected(
            f"This probe reads {FEATURE_INPUTS.get(probe.feature_input, 'other features')}, but on "
            f"'{_short(backbone.name)}' a probe reads {FEATURE_INPUTS[kind]}."
        )
    width = _feature_width(backbone, kind)
    if probe.num_features != width:
        raise ProbeRejected(
            f"This probe reads {probe.num_features:,} features, but '{_short(backbone.name)}' gives {width:,}."
        )
    if not (np.isfinite(probe.weight).all() and np.isfinite(probe.bias).all()):
        raise ProbeRejected("The probe has NaN or infinite weights; it cannot classify anything.")


def _feature_width(backbone: ViTHandle, kind: str) -> int:
    model = backbone.model
    if kind == CLASS_AND_PATCH_MEAN:
        return 2 * int(model.embed_dim)
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


# --- reading a probe file -------------------------------------------------------------------


def probe_from_bytes(data: bytes, backbone: ViTHandle | None = None, *, check_key: bool = True) -> LinearProbe:
    """Read a probe file written by ``LinearProbe.to_bytes``; checked against ``backbone`` when given.

    Nothing in the file is executed: safetensors holds only tensors, and the card is JSON
    checked field by field against the tensors it describes.

    Raises:
        ProbeRejected: not a probe file, a card that does not describe its tensors, or
            (with ``backbone``) a probe that does not fit it (see ``check_probe_fits``).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    damaged = ProbeRejected("This file is not a HeadScope probe (a safetensors file with a probe card).")
    if not isinstance(data, (bytes, bytearray)) or len(data) < 10:
        raise damaged
    if len(data) > MAX_FILE_BYTES:
        raise ProbeRejected(
            f"The probe file is {len(data) / 2**20:.0f} MB; a probe of {MAX_CLASSES:,} classes is at most "
            f"{MAX_FILE_BYTES // 2**20} MB."
        )
    header_len = int.from_bytes(data[:8], "little")
    if not 2 <= header_len <= min(len(data) - 8, 2**20) or data[8:9] != b"{":
        raise damaged
    try:
        header = json.loads(data[8:8 + header_len])
        card = json.loads(header.get("__metadata__", {}).get(_METADATA_KEY, ""))
        tensors = load(bytes(data))
    except (ValueError, TypeError, AttributeError, RecursionError, SafetensorError) as err:
        raise damaged from err
    probe = _probe_from_card(card, tensors)
    if backbone is not None:
        check_probe_fits(backbone, probe, check_key=check_key)
    return probe


def _probe_from_card(card: Any, tensors: Mapping[str, torch.Tensor]) -> LinearProbe:
    """A ``LinearProbe`` from a card and its tensors, each field checked; a card that lies is refused."""
    from core.inputs.images import sanitize_name

    def lie(detail: str) -> ProbeRejected:
        return ProbeRejected(f"The probe's card does not match its weights: {detail}.")

    if not isinstance(card, dict) or card.get("format") != _FORMAT:
        raise ProbeRejected("This file is not a HeadScope probe (a safetensors file with a probe card).")
    if set(tensors) != {"weight", "bias"}:
        raise lie("it must hold exactly a 'weight' and a 'bias'")
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.dtype != torch.float64 or bias.dtype != torch.float64 or weight.ndim != 2 or bias.ndim != 1:
        raise lie("the weight must be a float64 matrix and the bias a float64 vector")
    names = card.get("class_names")
    if not isinstance(names, list) or not all(isinstance(n, str) and n and sanitize_name(n) == n for n in names):
        raise lie("its class names are not a list of plain names (at most 80 characters, no control characters)")
    if len(names) > MAX_CLASSES:
        raise ProbeRejected(f"The probe has {len(names):,} classes; HeadScope takes at most {MAX_CLASSES:,}.")
    if len(names) < MIN_CLASSES or len(set(names)) != len(names):
        raise lie(f"it needs at least {MIN_CLASSES} distinct class names")
    if weight.shape[0] != len(names) or bias.shape[0] != len(names):
        raise lie(f"it names {len(names)} classes but the weights have {weight.shape[0]} rows")
    if card.get("features") != weight.shape[1]:
        raise lie(f"it says {_short(repr(card.get('features')), 20)} features but the weights read {weight.shape[1]}")
    if card.get("feature_input") not in FEATURE_INPUTS:
        raise lie("its feature input is not one HeadScope knows")
    key, sha = card.get("backbone_key"), card.get("backbone_weights_sha256")
    if not isinstance(key, str) or not key or len(key) > _MAX_NAME_CHARS:
        raise lie("it names no backbone")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise lie("its backbone weights hash is not a sha256")
    numbers = {}
    for name in ("accuracy", "chance"):
        value = card.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise lie(f"its {name} is not a fraction")
        numbers[name] = math.nan if value is None else float(value)
    counts = {}
    for name in ("images", "labelled", "folds"):
        value = card.get(name)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise lie(f"its {name} is not a count")
        counts[name] = value
    source = card.get("source", "")
    if not isinstance(source, str) or len(source) > _MAX_NAME_CHARS or _plain(source) != source:
        raise lie("its source is not a short plain text")
    strength = card.get("strength")
    if strength is not None and not (isinstance(strength, (int, float)) and strength > 0):
        raise lie("its strength is not a positive number")
    probe = LinearProbe(
        weight=weight.numpy(),
        bias=bias.numpy(),
        class_names=tuple(names),
        feature_input=card["feature_input"],
        backbone_key=key,
        backbone_name=_plain(str(card.get("backbone_name") or ""))[:_MAX_NAME_CHARS],
        accuracy=numbers["accuracy"],
        chance=numbers["chance"],
        images=counts["images"],
        labelled=counts["labelled"],
        strength=math.nan if strength is None else float(strength),
        folds=counts["folds"],
        backbone_weights_sha256=sha,
        source=source,
    )
    if not (np.isfinite(probe.weight).all() and np.isfinite(probe.bias).all()):
        raise ProbeRejected("The probe has NaN or infinite weights; it cannot classify anything.")
    return probe


def _plain(text: str) -> str:
    """``text`` without control or bidi characters (a name read from a file is shown as it is)."""
    return "".join(ch for ch in text if ch not in BIDI_CONTROLS and unicodedata.category(ch) not in ("Cc", "Cs"))


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
