"""One streamed analysis of an image set, read by every view, the case study and the command line.

One engine, ``run_pass``, reads the set batch by batch and preprocesses each batch once.
Its ``Capture`` says what the one unpruned forward of a batch gives besides the outputs:

- the importance metrics: the single-head ablations restart from the block inputs the
  forward keeps; the gradients of the Taylor gates ride on the forward (a gate of 1 on
  every head's output changes nothing);
- the attention ``[B, L, H, T, T]``, captured once and reduced on the spot to the strength
  statistics and to the pattern-map sample (drawn before the pass, for both map kinds);
- the predictions (the model's output, its final features, a backbone's probe input).

The batch's attention and block inputs are dropped before the next batch, so memory
is bounded by the batch, not by the set, and per-head results stay ``[N, L, H]`` arrays
(``HeadValues``) until ``preview_of`` turns them into the views' tables. The pruning
curve needs the ranking over the whole set, so it is a second pass; ``set_analysis``
joins the two. ``analyze_set`` (one call), ``core.pipeline.staged`` (the dashboard's
stages) and ``core.study.casestudy`` (the command line, sharded or not) all go this way;
the case study's partial pruning of the hurt images is a third pass, and reuses this
pass's outputs as the unpruned ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import NotEnoughImages
from core.measures.importance import (
    HeadImportance,
    HeadValues,
    check_labels,
    check_metrics,
    class_targets,
    pruning_curve,
    scale_heads,
    sequences_per_run,
    sweep_batch,
)
from core.measures.inference import Predictions
from core.measures.patterns import MapSample, draw_maps, drawn_inputs, map_kinds
from core.measures.strength import (
    StrengthStats,
    per_image_arrays,
    reduce_layer,
    reduce_norms,
    stats_from,
)
from core.models.handle import ViTHandle
from core.models.hooks import (
    capture_head_input,
    capture_patterns,
    check_finite,
    locked_hooks,
)
from core.models.memory import out_of_memory_as_sentence
from core.models.probe import readout_features
from core.pipeline.distributed import combine_importance, combine_strength
from core.settings import CaseSettings, MapKind, images_per_batch

__all__ = [
    "CURVE_STAGE",
    "PASS_STAGE",
    "Capture",
    "PassResult",
    "Preview",
    "SetAnalysis",
    "StageProgress",
    "analyze_set",
    "draw_samples",
    "preview_of",
    "run_pass",
    "samples_from",
    "set_analysis",
]

Progress = Callable[[int, int], None]  # (done, in all)
StageProgress = Callable[[str, int, int], None]  # (stage, done, in all): the case study reports the same way

PASS_STAGE = "reading the set"
CURVE_STAGE = "pruning curve"


@dataclass(frozen=True)
class Capture:
    """What one pass over a set computes besides its unpruned forward: ask only for what a caller reads.

    Attributes:
        metrics: importance metrics (``None``: every metric the model supports; empty: none).
            Those other than ``taylor`` need the single-head sweep, about ``H (L + 1) / 2``
            forwards an image; ``taylor`` is a backward pass through the forward.
        attention_stats: the strength statistics: every layer's attention and the residual
            stream's token norms, reduced batch by batch.
        map_samples: per map kind, the maps to keep (``draw_samples`` over the whole set).
            The attention is captured when these or ``attention_stats`` need it.
        predictions: the unmodified model's outputs, final features and (a backbone's)
            linear-probe input.
    """

    metrics: Sequence[str] | None = None
    attention_stats: bool = True
    map_samples: Mapping[MapKind, pd.DataFrame] = field(default_factory=dict)
    predictions: bool = True

    @property
    def attention(self) -> bool:
        return self.attention_stats or bool(self.map_samples)


@dataclass(frozen=True)
class PassResult:
    """What one pass over (a shard of) a set gives: each part ``None`` or empty unless its ``Capture`` asked.

    Attributes:
        importance: ``[N, L, H]`` per metric computed, and the unpruned model's per-image
            results; images count from 0 within the shard.
        strength: the strength statistics of every image, layer and head.
        maps: per map kind, the sampled maps' autoencoder inputs ``[M, 1, S, S]`` and
            their origin rows (image = index in the whole set), in the order drawn.
        predictions: ``[N, outputs]`` logits (a backbone's pooled features), ``[N, D]`` the
            input of the model's head and a backbone's ``[N, F]`` linear-probe input
            (``core.models.probe.readout_features``).
    """

    importance: HeadValues
    strength: StrengthStats | None
    maps: Mapping[MapKind, tuple[torch.Tensor, pd.DataFrame]]
    predictions: Predictions | None


@dataclass(frozen=True)
class Preview:
    """What one pass over every image gives as a set: everything but the pruning curve.

    Attributes:
        importance: the metrics the pass computed, as tables (the staged preview: only
            Taylor, and a backbone, without a class target, none).
        strength: the strength statistics of every image.
        samples: the pattern-map sample of each map kind.
        predictions: the unmodified model's outputs and final features.
    """

    importance: HeadImportance
    strength: StrengthStats
    samples: Mapping[MapKind, MapSample]
    predictions: Predictions


@dataclass(frozen=True)
class SetAnalysis:
    """The analysis of one set under one model and ``CaseSettings``: every view reads it.

    Attributes:
        settings: what it was computed with.
        importance: head importance (B1).
        curve: the cumulative pruning curve (B1).
        strength: attention-strength statistics (view C).
        samples: the pattern-map sample of each map kind the model has (view D).
        predictions: the unmodified model's outputs and final features (view A).
    """

    settings: CaseSettings
    importance: HeadImportance
    curve: pd.DataFrame
    strength: StrengthStats
    samples: Mapping[MapKind, MapSample]
    predictions: Predictions


def draw_samples(handle: ViTHandle, num_images: int, settings: CaseSettings) -> dict[MapKind, pd.DataFrame]:
    """Which maps the pass keeps, per map kind: columns image, layer, head, source (ordered by image)."""
    grid = handle.grid
    sources = {"patch": grid[0] * grid[1], "cls": 1}
    return {
        kind: draw_maps(num_images, sources[kind], handle.num_layers, handle.num_heads, settings.max_maps, settings.seed)
        for kind in map_kinds(handle)
    }


def analyze_set(
    handle: ViTHandle,
    images: Sequence[Image.Image],
    labels: torch.Tensor | None = None,
    settings: CaseSettings = CaseSettings(),
    *,
    metrics: Sequence[str] | None = None,
    batch_size: int | None = None,
    progress: StageProgress | None = None,
) -> SetAnalysis:
    """The whole set's analysis in one process: the unpruned pass, then the pruning curve.

    Args:
        handle: the model.
        images: the set's images; any sequence whose slices are lists of PIL images
            (a folder read lazily works: only one batch is decoded at a time).
        labels: ``[N]`` class indices, negative where unknown, or ``None``.
        settings: the sample cap, seed and curve steps come from here.
        metrics: importance metrics; default every metric the model supports.
        batch_size: cap on images per batch (see ``core.settings.images_per_batch``).
        progress: ``progress(stage, done, total)`` for the stages ``PASS_STAGE`` and ``CURVE_STAGE``.

    Raises:
        NotEnoughImages: no images.
        InvalidSetting: a sample cap below the model's head count, or a bad batch size.
        UnsupportedMetric: a class-based metric asked of a backbone.
    """
    capture = Capture(
        metrics=None if metrics is None else check_metrics(metrics, handle),
        map_samples=draw_samples(handle, len(images), settings) if len(images) else {},
    )
    preview = preview_of(
        handle, [run_pass(handle, images, labels, capture, batch_size=batch_size, progress=_stage(progress, PASS_STAGE))]
    )
    curve = pruning_curve(
        handle, images, preview.importance.overall, labels, steps=settings.curve_steps, seed=settings.seed,
        batch_size=batch_size, progress=_stage(progress, CURVE_STAGE),
    )
    return set_analysis(settings, preview, curve)


def preview_of(handle: ViTHandle, parts: Sequence[PassResult]) -> Preview:
    """The set's views from the passes over its shards (one pass: the whole set), in image order.

    Each part must have captured the strength statistics and the predictions; the
    importance arrays become tables here, the first point where a view reads them.
    """
    predictions = [part.predictions for part in parts]
    if len(parts) > 1:
        probe = [p.probe_input for p in predictions]
        predictions = [
            Predictions(
                logits=np.concatenate([p.logits for p in predictions]),
                features=np.concatenate([p.features for p in predictions]),
                probe_input=None if probe[0] is None else np.concatenate(probe),
            )
        ]
    return Preview(
        importance=combine_importance([part.importance.tables() for part in parts]),
        strength=combine_strength([part.strength for part in parts]),
        samples=samples_from(handle, {kind: [part.maps[kind] for part in parts] for kind in parts[0].maps}),
        predictions=predictions[0],
    )


def set_analysis(
    settings: CaseSettings, preview: Preview, curve: pd.DataFrame, importance: HeadImportance | None = None
) -> SetAnalysis:
    """The analysis from a set's preview and its pruning curve.

    ``importance``: the metrics over the images the curve ran on (the staged run's sample,
    swept apart from the preview); default the preview's own.
    """
    return SetAnalysis(
        settings=settings,
        importance=preview.importance if importance is None else importance,
        curve=curve,
        strength=preview.strength,
        samples=preview.samples,
        predictions=preview.predictions,
    )


def samples_from(
    handle: ViTHandle, parts: Mapping[MapKind, Sequence[tuple[torch.Tensor, pd.DataFrame]]]
) -> dict[MapKind, MapSample]:
    """``MapSample`` per kind from the maps of one or more shards, in shard order."""
    samples = {}
    for kind, pieces in parts.items():
        inputs = torch.cat([inputs for inputs, _ in pieces])
        origin = pd.concat([origin for _, origin in pieces], ignore_index=True)
        samples[kind] = MapSample(inputs, origin, kind, handle.grid, handle.num_layers, handle.num_heads)
    return samples


@out_of_memory_as_sentence
def run_pass(
    handle: ViTHandle,
    images: Sequence[Image.Image],
    labels: torch.Tensor | None,
    capture: Capture = Capture(),
    *,
    first_image: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> PassResult:
    """The unpruned pass over ``images`` computing what ``capture`` asks: the engine of every set analysis.

    ``images`` are the set's images ``first_image`` onwards (a shard's, or the whole set).
    Every image is preprocessed and run forward once; of the drawn maps
    (``capture.map_samples``), only those of these images are read.

    Raises:
        NotEnoughImages: no images.
        LabelsMismatch: labels that do not fit the images or the model's classes.
        UnsupportedMetric: an unknown metric, or a class-based metric asked of a backbone.
    """
    n = len(images)
    if n == 0:
        raise NotEnoughImages("The analysis needs at least one image.")
    metrics = () if capture.metrics is not None and not len(capture.metrics) else check_metrics(capture.metrics, handle)
    given = check_labels(handle, labels, n)
    step = images_per_batch(handle, batch_size)
    kept = _PassKeeper(handle, n, metrics, capture, first_image)
    for start in range(0, n, step):
        part = slice(start, min(start + step, n))
        x = handle.preprocess(list(images[part])).to(handle.device)
        kept.add(_unpruned(handle, x, given[part], "taylor" in metrics, capture.attention, capture.predictions), part)
        if progress is not None:
            progress(part.stop, n)
    return kept.result(given)


class _PassKeeper:
    """What a pass keeps of each batch: ``[N, ...]`` arrays and running sums, never a batch's activations."""

    def __init__(self, handle: ViTHandle, n: int, metrics: Sequence[str], capture: Capture, first_image: int) -> None:
        self.handle, self.n, self.capture, self.first_image = handle, n, capture, first_image
        num_layers, num_heads, grid = handle.num_layers, handle.num_heads, handle.grid
        self.values = {metric: np.zeros((n, num_layers, num_heads), dtype=np.float64) for metric in metrics}
        self.swept = [metric for metric in metrics if metric != "taylor"]
        self.target = np.zeros(n, dtype=np.int64)
        self.probability = np.full(n, np.nan)
        self.correct = np.zeros(n, dtype=bool)
        self.strength = per_image_arrays(n, num_layers, num_heads, grid) if capture.attention_stats else None
        # float64: the sum over many images must not lose the small offsets' precision
        offsets = (num_layers, num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1)
        self.offset_sum = torch.zeros(offsets, dtype=torch.float64) if capture.attention_stats else None
        self.maps: dict[MapKind, list[torch.Tensor]] = {kind: [] for kind in capture.map_samples}
        self.outputs: dict[str, list[np.ndarray]] = {"logits": [], "features": [], "probe_input": []}

    def add(self, clean: _Unpruned, part: slice) -> None:
        """Keep what ``capture`` asks of one batch's unpruned forward; its attention goes before the ablations."""
        if clean.attention is not None:
            self._reduce_attention(clean, part)
        if self.swept:
            with locked_hooks(self.handle):
                swept = sweep_batch(self.handle, clean.tokens, clean.logits, clean.target, self.swept)
            for metric, values in swept.items():
                self.values[metric][part] = values
        if clean.taylor is not None:
            self.values["taylor"][part] = clean.taylor
        self._keep_unpruned(clean, part)

    def _reduce_attention(self, clean: _Unpruned, part: slice) -> None:
        handle, prefix = self.handle, self.handle.num_prefix_tokens
        attn = clean.attention  # [L, B, H, T, T]
        clean.attention = None  # reduced here: the ablations allocate their activations without it
        if self.strength is not None:
            # the residual stream's norms, from the block inputs the ablations restart from
            norms = torch.stack([tokens.float().norm(dim=-1).cpu() for tokens in clean.tokens], dim=1)  # [B, L + 1, T]
            keys = reduce_norms(self.strength, part, norms, prefix)
            for layer in range(handle.num_layers):
                reduce_layer(self.strength, self.offset_sum, part, layer, attn[layer], handle, keys[:, layer])
        for kind, drawn in self.capture.map_samples.items():
            # image-major view, no copy: only the drawn rows are gathered
            first = self.first_image + part.start
            self.maps[kind].append(drawn_inputs(attn.transpose(0, 1), drawn, first, kind, handle.grid, prefix))

    def _keep_unpruned(self, clean: _Unpruned, part: slice) -> None:
        target = clean.target
        self.target[part] = target.cpu().numpy()
        if not self.handle.is_backbone:
            probs = clean.logits.float().softmax(-1)
            self.probability[part] = probs.gather(-1, target[:, None]).squeeze(-1).cpu().numpy()
            self.correct[part] = (clean.logits.argmax(-1) == target).cpu().numpy()
        if self.capture.predictions:
            self.outputs["logits"].append(clean.logits.float().cpu().numpy())
            self.outputs["features"].append(clean.features.float().cpu().numpy())
            if clean.probe_input is not None:
                self.outputs["probe_input"].append(clean.probe_input.float().cpu().numpy())

    def result(self, given: torch.Tensor) -> PassResult:
        outputs = self.outputs
        return PassResult(
            importance=HeadValues(self.values, self.target, self.probability, self.correct, given.numpy() >= 0),
            strength=None if self.strength is None else stats_from(self.strength, self.offset_sum, self.n, self.handle.grid),
            maps={
                kind: _joined(chunks, self.capture.map_samples[kind], self.first_image, self.n, kind)
                for kind, chunks in self.maps.items()
            },
            predictions=Predictions(
                logits=np.concatenate(outputs["logits"]),
                features=np.concatenate(outputs["features"]),
                probe_input=np.concatenate(outputs["probe_input"]) if outputs["probe_input"] else None,
            ) if self.capture.predictions else None,
        )


@dataclass
class _Unpruned:
    tokens: list[torch.Tensor]  # tokens[l]: [B, T, D] entering block l; tokens[L] leaves the last
    logits: torch.Tensor
    features: torch.Tensor | None  # [B, D] the head's input, when the predictions are captured
    attention: torch.Tensor | None  # [L, B, H, T, T] on the CPU, when captured; dropped once reduced
    target: torch.Tensor
    taylor: np.ndarray | None  # [B, L, H]
    probe_input: torch.Tensor | None = None  # [B, F] a backbone's linear-probe input


def _unpruned(
    handle: ViTHandle, x: torch.Tensor, given: torch.Tensor, taylor: bool, attention: bool, features: bool
) -> _Unpruned:
    """The batch's one unpruned forward, in chunks small enough for the Taylor pass's graph."""
    chunk = sequences_per_run(handle, keep_graph=True) if taylor else len(x)
    pieces = [
        _unpruned_chunk(handle, x[i:i + chunk], given[i:i + chunk], taylor, attention, features)
        for i in range(0, len(x), chunk)
    ]
    if len(pieces) == 1:
        return pieces[0]
    return _Unpruned(
        tokens=[torch.cat(layer) for layer in zip(*(p.tokens for p in pieces))],
        logits=torch.cat([p.logits for p in pieces]),
        features=torch.cat([p.features for p in pieces]) if features else None,
        attention=torch.cat([p.attention for p in pieces], dim=1) if attention else None,
        target=torch.cat([p.target for p in pieces]),
        taylor=np.concatenate([p.taylor for p in pieces if p.taylor is not None]) if taylor else None,
        probe_input=torch.cat([p.probe_input for p in pieces]) if pieces[0].probe_input is not None else None,
    )


def _unpruned_chunk(
    handle: ViTHandle, x: torch.Tensor, given: torch.Tensor, taylor: bool, attention: bool, features: bool
) -> _Unpruned:
    model = handle.model
    t = handle.num_tokens
    patterns = torch.empty(handle.num_layers, len(x), handle.num_heads, t, t, device=handle.device) if attention else None
    tokens: list[torch.Tensor] = []
    store: dict[str, torch.Tensor] = {}

    def block_input(_m: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        tokens.append(inputs[0].detach())

    def last_output(_m: torch.nn.Module, _i: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        tokens.append(output.detach())

    with locked_hooks(handle, grad=taylor) as hooks:
        gates = None
        if taylor:
            # the gates multiply every head's output by 1: the pass stays the unpruned one
            gates = torch.ones(len(x), handle.num_layers, handle.num_heads, device=handle.device, requires_grad=True)
            scale_heads(hooks, model, gates)
        if patterns is not None:
            capture_patterns(hooks, model, patterns)
        if features:
            capture_head_input(hooks, model, store)
        for block in model.blocks:
            hooks.forward_pre(block, block_input)
        hooks.forward(model.blocks[-1], last_output)
        logits = model(x)
        check_finite(logits)
        target = class_targets(given.to(handle.device), logits.detach(), handle.is_backbone)
        grad = None
        if gates is not None:
            loss = F.cross_entropy(logits.float(), target.clone(), reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
        # a backbone's linear-probe input, from the tokens this pass already has (no forward)
        probe_input = readout_features(model, tokens[-1]).detach() if features and handle.is_backbone else None
    return _Unpruned(
        tokens=tokens,
        logits=logits.detach(),
        features=store["features"].detach() if features else None,
        attention=patterns.cpu() if patterns is not None else None,
        target=target,
        taylor=None if grad is None else grad.cpu().numpy(),
        probe_input=probe_input,
    )


def _joined(
    chunks: list[torch.Tensor], drawn: pd.DataFrame, first: int, n: int, kind: MapKind
) -> tuple[torch.Tensor, pd.DataFrame]:
    """A shard's sampled maps as one tensor, with their origin rows (``drawn`` restricted to its images)."""
    lo, hi = np.searchsorted(drawn["image"].to_numpy(), [first, first + n])
    origin = drawn.iloc[lo:hi]
    origin = origin.assign(source=origin["source"] if kind == "patch" else -1)
    return torch.cat(chunks), origin.reset_index(drop=True)


def _stage(progress: StageProgress | None, stage: str) -> Progress | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)
