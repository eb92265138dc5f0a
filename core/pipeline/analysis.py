"""One streamed analysis of an image set, read by every view, the case study and the command line.

The set is read batch by batch, and each batch is preprocessed once. One unpruned pass
over it gives everything the views need from the unmodified model at once:

- the predictions (the model's output and its final features),
- the input of every block, from which each single-head ablation restarts,
- the gradients of the Taylor gates (a gate of 1 on every head's output changes nothing),
- the attention ``[B, L, H, T, T]``, captured once and reduced on the spot to the strength
  statistics and to the pattern-map sample (drawn before the pass, for both map kinds).

The batch's attention and block inputs are dropped before the next batch, so memory
is bounded by the batch, not by the set. The pruning curve needs the ranking over the
whole set, so it is a second pass; the case study's partial pruning of the hurt images
is a third (``core.study.casestudy``), and reuses this pass's output as the unpruned one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from core.models.hooks import capture_head_input, capture_patterns, check_finite, locked_hooks
from core.models.memory import out_of_memory_as_sentence
from core.errors import NotEnoughImages
from core.measures.importance import (
    HeadImportance,
    _check_labels,
    _check_metrics,
    _config_metrics,
    _importance,
    _run_configs,
    _scale_heads,
    _sequences_per_run,
    _single_head_masks,
    _targets,
    pruning_curve,
)
from core.measures.inference import Predictions
from core.models.handle import ViTHandle
from core.models.probe import readout_features
from core.measures.patterns import MapSample, _draw, drawn_inputs, map_kinds
from core.settings import CaseSettings, MapKind, images_per_batch
from core.measures.strength import StrengthStats, per_image_arrays, reduce_layer, reduce_norms, stats_from

__all__ = [
    "CURVE_STAGE",
    "PASS_STAGE",
    "PassResult",
    "SetAnalysis",
    "StageProgress",
    "analyze_set",
    "draw_samples",
    "first_pass",
    "samples_from",
]

Progress = Callable[[int, int], None]  # (done, in all)
StageProgress = Callable[[str, int, int], None]  # (stage, done, in all): the case study reports the same way

PASS_STAGE = "reading the set"
CURVE_STAGE = "pruning curve"


@dataclass(frozen=True)
class PassResult:
    """What one unpruned pass over (a shard of) a set gives.

    Attributes:
        importance: single-head importance of every head, per image and over the images.
        strength: the strength statistics of every image, layer and head (``None`` from a pass that only sweeps).
        maps: per map kind, the sampled maps' autoencoder inputs ``[M, 1, S, S]`` and
            their origin rows (image = index in the whole set), in the order drawn.
        logits: ``[N, outputs]`` the unmodified model's output (a backbone's pooled features).
        features: ``[N, D]`` the input of the model's head (final CLS / pooled features).
        probe_input: ``[N, F]`` a backbone's linear-probe input (``core.models.probe.readout_features``),
            read from the same pass; ``None`` for a classifier.
    """

    importance: HeadImportance
    strength: StrengthStats | None
    maps: Mapping[MapKind, tuple[torch.Tensor, pd.DataFrame]]
    logits: np.ndarray
    features: np.ndarray
    probe_input: np.ndarray | None = None


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
        kind: _draw(num_images, sources[kind], handle.num_layers, handle.num_heads, settings.max_maps, settings.seed)
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
    picks = draw_samples(handle, len(images), settings) if len(images) else {}
    part = first_pass(
        handle, images, labels, picks, metrics=metrics, batch_size=batch_size, progress=_stage(progress, PASS_STAGE)
    )
    curve = pruning_curve(
        handle, images, part.importance.overall, labels, steps=settings.curve_steps, seed=settings.seed,
        batch_size=batch_size, progress=_stage(progress, CURVE_STAGE),
    )
    return SetAnalysis(
        settings=settings,
        importance=part.importance,
        curve=curve,
        strength=part.strength,
        samples=samples_from(handle, {kind: [part.maps[kind]] for kind in part.maps}),
        predictions=Predictions(logits=part.logits, features=part.features, probe_input=part.probe_input),
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
def first_pass(
    handle: ViTHandle,
    images: Sequence[Image.Image],
    labels: torch.Tensor | None,
    picks: Mapping[MapKind, pd.DataFrame],
    *,
    metrics: Sequence[str] | None = None,
    first_image: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
    sweep: bool = True,
    reduce: bool = True,
) -> PassResult:
    """The unpruned pass over ``images`` (the set's images ``first_image`` onwards, for a shard).

    ``picks``: per map kind, the maps to keep (``draw_samples`` over the whole set);
    only those of these images are read. Returns this shard's results; image indices in
    the importance tables count from 0 within the shard, map origins within the set.

    ``sweep=False`` leaves out the single-head ablations (their metrics are then absent:
    only ``taylor`` is computed, a classifier's quick preview); ``reduce=False`` leaves out
    the attention and what it gives (``strength`` is then ``None`` and ``maps`` empty),
    for a pass that only sweeps. ``core.pipeline.staged`` runs the two apart.

    Raises:
        NotEnoughImages: no images.
    """
    n = len(images)
    if n == 0:
        raise NotEnoughImages("The analysis needs at least one image.")
    metrics = _check_metrics(metrics, handle)
    given = _check_labels(handle, labels, n)
    step = images_per_batch(handle, batch_size)
    num_layers, num_heads, grid, prefix = handle.num_layers, handle.num_heads, handle.grid, handle.num_prefix_tokens
    per_image = (n, num_layers, num_heads)
    local = {metric: np.zeros(per_image, dtype=np.float64) for metric in metrics}
    targets = np.zeros(n, dtype=np.int64)
    unpruned_prob = np.full(n, np.nan)
    unpruned_correct = np.zeros(n, dtype=bool)
    swept = [m for m in metrics if m != "taylor"] if sweep else []
    computed = [m for m in metrics if m in swept or m == "taylor"]
    local = {metric: local[metric] for metric in computed}
    keep = _single_head_masks(handle)
    strength = per_image_arrays(*per_image, grid)
    # float64: the sum over many images must not lose the small offsets' precision
    offset_sum = torch.zeros(num_layers, num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1, dtype=torch.float64)
    maps: dict[MapKind, list[torch.Tensor]] = {kind: [] for kind in picks}
    logits_out: list[np.ndarray] = []
    features_out: list[np.ndarray] = []
    probe_out: list[np.ndarray] = []
    for start in range(0, n, step):
        part = slice(start, min(start + step, n))
        x = handle.preprocess(list(images[part])).to(handle.device)
        clean = _unpruned(handle, x, given[part], taylor="taylor" in computed, capture=reduce)
        target = clean.target
        if reduce:
            attn = clean.attention  # [L, B, H, T, T]
            # the residual stream's norms, from the block inputs the ablations restart from
            norms = torch.stack([tokens.float().norm(dim=-1).cpu() for tokens in clean.tokens], dim=1)  # [B, L + 1, T]
            keys = reduce_norms(strength, part, norms, prefix)
            for layer in range(num_layers):
                reduce_layer(strength, offset_sum, part, layer, attn[layer], handle, keys[:, layer])
            for kind, drawn in picks.items():
                # image-major view, no copy: only the drawn rows are gathered
                maps[kind].append(drawn_inputs(attn.transpose(0, 1), drawn, first_image + part.start, kind, grid, prefix))
            # reduced: the attention goes before the ablations allocate their activations
            clean.attention = None
            del attn
        if swept:
            with locked_hooks(handle):
                impact, logits, output = _run_configs(
                    handle, clean.tokens, clean.logits, keep,
                    want_logits=bool({"probability", "accuracy", "output_impact"} & set(swept)),
                )
            per_head = _config_metrics(impact, logits, output, target, classes=not handle.is_backbone)
            for metric in swept:
                local[metric][part] = per_head[metric].reshape(part.stop - part.start, num_layers, num_heads)
            del impact, logits, output
        if clean.taylor is not None:
            local["taylor"][part] = clean.taylor
        targets[part] = target.cpu().numpy()
        if not handle.is_backbone:
            probs = clean.logits.float().softmax(-1)
            unpruned_prob[part] = probs.gather(-1, target[:, None]).squeeze(-1).cpu().numpy()
            unpruned_correct[part] = (clean.logits.argmax(-1) == target).cpu().numpy()
        logits_out.append(clean.logits.float().cpu().numpy())
        features_out.append(clean.features.float().cpu().numpy())
        if clean.probe_input is not None:
            probe_out.append(clean.probe_input.float().cpu().numpy())
        # the batch's attention and block inputs go before the next batch allocates its own
        del clean
        if progress is not None:
            progress(part.stop, n)
    return PassResult(
        importance=_importance(local, targets, unpruned_prob, unpruned_correct, given),
        strength=stats_from(strength, offset_sum, n, grid) if reduce else None,
        maps={kind: _joined(chunks, picks[kind], first_image, n, kind) for kind, chunks in maps.items()} if reduce else {},
        logits=np.concatenate(logits_out),
        features=np.concatenate(features_out),
        probe_input=np.concatenate(probe_out) if probe_out else None,
    )


@dataclass
class _Unpruned:
    tokens: list[torch.Tensor]  # tokens[l]: [B, T, D] entering block l; tokens[L] leaves the last
    logits: torch.Tensor
    features: torch.Tensor
    attention: torch.Tensor | None  # [L, B, H, T, T] on the CPU, dropped once reduced
    target: torch.Tensor
    taylor: np.ndarray | None  # [B, L, H]
    probe_input: torch.Tensor | None = None  # [B, F] a backbone's linear-probe input


def _unpruned(handle: ViTHandle, x: torch.Tensor, given: torch.Tensor, *, taylor: bool, capture: bool = True) -> _Unpruned:
    """The batch's one unpruned forward, in chunks small enough for the Taylor pass's graph.

    ``capture=False`` keeps no attention (``attention`` is ``None``).
    """
    chunk = _sequences_per_run(handle, keep_graph=True) if taylor else len(x)
    pieces = [
        _unpruned_chunk(handle, x[i:i + chunk], given[i:i + chunk], taylor, capture) for i in range(0, len(x), chunk)
    ]
    if len(pieces) == 1:
        return pieces[0]
    return _Unpruned(
        tokens=[torch.cat(layer) for layer in zip(*(p.tokens for p in pieces))],
        logits=torch.cat([p.logits for p in pieces]),
        features=torch.cat([p.features for p in pieces]),
        attention=torch.cat([p.attention for p in pieces], dim=1) if capture else None,
        target=torch.cat([p.target for p in pieces]),
        taylor=np.concatenate([p.taylor for p in pieces if p.taylor is not None]) if taylor else None,
        probe_input=torch.cat([p.probe_input for p in pieces]) if pieces[0].probe_input is not None else None,
    )


def _unpruned_chunk(handle: ViTHandle, x: torch.Tensor, given: torch.Tensor, taylor: bool, capture: bool) -> _Unpruned:
    model = handle.model
    t = handle.num_tokens
    attention = torch.empty(handle.num_layers, len(x), handle.num_heads, t, t, device=handle.device) if capture else None
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
            _scale_heads(hooks, model, gates)
        if attention is not None:
            capture_patterns(hooks, model, attention)
        capture_head_input(hooks, model, store)
        for block in model.blocks:
            hooks.forward_pre(block, block_input)
        hooks.forward(model.blocks[-1], last_output)
        logits = model(x)
        check_finite(logits)
        target = _targets(given.to(handle.device), logits.detach(), handle.is_backbone)
        grad = None
        if gates is not None:
            loss = F.cross_entropy(logits.float(), target.clone(), reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
        # a backbone's linear-probe input, from the tokens this pass already has (no forward)
        probe_input = readout_features(model, tokens[-1]).detach() if handle.is_backbone else None
    return _Unpruned(
        tokens=tokens,
        logits=logits.detach(),
        features=store["features"].detach(),
        attention=attention.cpu() if attention is not None else None,
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
