"""A set's analysis in stages that show as they finish, with an estimate first, a sample cap and a stop.

``analyze_set`` computes a set's analysis in one call; on a large model that is minutes
with nothing to look at. ``StagedAnalysis`` runs the same analysis on a worker thread in
three stages, each usable as soon as it ends:

1. the preview (``PREVIEW_STAGE``): one unpruned pass over every image, as
   ``first_pass`` without the sweep: the predictions, the strength statistics, the
   pattern-map sample and, for a classifier, the Taylor importance of every head (a
   forward and a backward pass an image);
2. the exact sweep (``SWEEP_STAGE``): every head pruned on its own, for the other
   importance metrics (about ``H (L + 1) / 2`` forward passes an image);
3. the pruning curve (``CURVE_STAGE``), in each metric's ranking.

The sweep and the curve run on the images of a seeded sample (``sample_order``): a cap
of K takes the first K images of one permutation of the set, so a larger cap holds
every image of a smaller one. The first image of that order is swept alone before the
rest, then the next two together, then one more alone: the timings split the sweep's cost
into what a batch costs and what an image adds, on this model and device, and ``estimate`` scales
them to any cap before the heavy stages start. Both stages run batch by batch and check
for a stop between batches: a stop keeps every finished batch (and every finished
stage), and starting again goes on from there, with the same or a larger cap.

Numbers: the preview is ``first_pass``'s. The sweep's per-image values depend on which
images share a batch only through float rounding, so they equal ``analyze_set``'s to
float32 precision, not bit for bit. On a sample, every importance metric (Taylor too)
and the curve are over the sampled images only; the preview's strength, patterns and
predictions always cover every image.

Precision: on a GPU, the probe's images are swept again in bfloat16; the rest of the sweep
runs in it only when, on those images, every value stays within ``REDUCED_TOLERANCE`` of
float32's (``precision`` says which it chose; the page says so). A check on a few images
bounds the others only as far as they resemble them; targets stay the float32 first
pass's whatever the precision. The curve always runs in float32, and a CPU sweeps in it.

Thread safety: one worker thread runs the stages; every attribute the pages read is
behind a lock, and ``status`` and the results are snapshots.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.analysis import CURVE_STAGE, PASS_STAGE, SetAnalysis, draw_samples, first_pass, samples_from
from core.errors import HeadScopeError, InvalidSetting, NotEnoughImages


class AnalysisFailed(HeadScopeError):
    """The staged analysis met an error that is not one of HeadScope's own (say, out of memory on a GPU)."""
from core.importance import (
    HeadImportance,
    _check_labels,
    _check_metrics,
    _curve_masks,
    _curve_sums,
    _curve_table,
    _tidy,
)
from core.inference import Predictions
from core.model import ViTHandle
from core.settings import CaseSettings, images_per_batch

__all__ = [
    "AUTO_START_SECONDS",
    "AnalysisFailed",
    "CURVE_STAGE",
    "REDUCED_PRECISION",
    "REDUCED_TOLERANCE",
    "DONE",
    "FAILED",
    "RUNNING",
    "STOPPED",
    "WAITING",
    "PREVIEW_STAGE",
    "STAGES",
    "SWEEP_STAGE",
    "Estimate",
    "Preview",
    "StageStatus",
    "StagedAnalysis",
    "sample_order",
]

PREVIEW_STAGE = PASS_STAGE  # "reading the set"
SWEEP_STAGE = "exact sweep"
STAGES = (PREVIEW_STAGE, SWEEP_STAGE, CURVE_STAGE)
# the heavy stages start on their own when the estimate for every image is at most this;
# otherwise they wait for ``start``, so the user sees the cost and may cap the images first
AUTO_START_SECONDS = 60.0
# On a GPU the sweep may run in bfloat16 (about twice as fast): only when, on the estimate's
# probe images, every swept value (probabilities, 0/1 accuracies, impacts) is within this
# of float32's. A top-1 that flips on one of them moves an accuracy by 1: float32 stays.
REDUCED_PRECISION = torch.bfloat16
REDUCED_TOLERANCE = 1e-3

WAITING, RUNNING, STOPPED, DONE, FAILED = "waiting", "running", "stopped", "done", "failed"


def sample_order(n: int, seed: int) -> np.ndarray:
    """The order in which the heavy stages take the images: a seeded permutation of ``range(n)``.

    A cap of K uses ``sample_order(n, seed)[:K]``, so every sample holds the smaller ones.
    """
    return np.random.default_rng(seed).permutation(n)


@dataclass(frozen=True)
class Preview:
    """What the preview stage gives: everything but the exact sweep and the curve.

    Attributes:
        importance: the Taylor importance of every head on every image (a classifier);
            a backbone has no class target, so its preview holds no metric.
        strength: the strength statistics of every image.
        samples: the pattern-map sample of each map kind.
        predictions: the unmodified model's outputs and final features.
    """

    importance: HeadImportance
    strength: object
    samples: dict
    predictions: Predictions


@dataclass(frozen=True)
class Estimate:
    """How long the heavy stages take for ``images`` images, measured on the sweep's first images.

    Attributes:
        images: images the heavy stages would use.
        sweep_seconds: the exact sweep of those images (what remains of it).
        curve_seconds: the pruning curve on them, scaled from the sweep's cost by the
            blocks each runs (its masks against the sweep's single-head masks).
        per_image: what an image adds to a batch's sweep, in seconds, as measured.
        per_batch: what a batch of the sweep costs whatever its size, as measured.
        device: where the model runs.
    """

    images: int
    sweep_seconds: float
    curve_seconds: float
    per_image: float
    per_batch: float
    device: str

    @property
    def seconds(self) -> float:
        return self.sweep_seconds + self.curve_seconds


@dataclass(frozen=True)
class StageStatus:
    """A snapshot of one stage: ``state`` is waiting, running, stopped, done or failed."""

    stage: str
    state: str
    done: int
    total: int
    seconds_left: float | None  # measured on the batches done; None before the first

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass
class _Progress:
    state: str = WAITING
    done: int = 0
    total: int = 0
    started: float = 0.0
    done_at_start: int = 0  # images done before this run of the stage (a resume)


@dataclass
class _Sweep:
    local: dict[str, np.ndarray]  # metric -> [N, L, H], NaN where not swept
    swept: np.ndarray  # [N] bool
    probe: list[tuple[int, float]] = field(default_factory=list)  # (images, seconds) of the first batches
    cost: tuple[float, float] | None = None  # (a batch, an image) in seconds, from the probe


@dataclass
class _Curve:
    images: tuple[int, ...] = ()  # the sample it ranks on and runs over
    done: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    correct: np.ndarray | None = None
    similarity: np.ndarray | None = None
    points: list = field(default_factory=list)
    keep: torch.Tensor | None = None
    table: pd.DataFrame | None = None


class StagedAnalysis:
    """One set's analysis under one model and settings, run in stages on a worker thread.

    ``begin()`` starts the preview and the sweep's first image; when ``estimate`` for all
    images is within ``auto_start`` seconds the heavy stages follow on their own,
    otherwise they wait for ``start(cap)``. ``stop()`` ends the running stage after its
    batch. ``status`` and ``preview``, ``importance``, ``curve``, ``result`` are read at
    any time; an error with a sentence for the user is kept in ``error``.
    """

    def __init__(
        self,
        handle: ViTHandle,
        images: Sequence[Image.Image],
        labels: torch.Tensor | None = None,
        settings: CaseSettings = CaseSettings(),
        *,
        batch_size: int | None = None,
        auto_start: float = AUTO_START_SECONDS,
        reduced_precision: bool | None = None,
    ) -> None:
        if len(images) == 0:
            raise NotEnoughImages("The analysis needs at least one image.")
        self.handle, self.images, self.settings = handle, images, settings
        self.n = len(images)
        self.given = _check_labels(handle, labels, self.n)
        self.metrics = _check_metrics(None, handle)
        self.swept_metrics = [m for m in self.metrics if m != "taylor"]
        self.order = sample_order(self.n, settings.seed)
        self.batch = images_per_batch(handle, batch_size)
        self.auto_start = auto_start
        self._lock = threading.RLock()
        self._active = self._pending = False  # the worker is at work; a start() waits for it to finish
        self._tables: tuple[tuple, HeadImportance] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = {stage: _Progress() for stage in STAGES}
        self._preview: Preview | None = None
        shape = (self.n, handle.num_layers, handle.num_heads)
        self._sweep = _Sweep({m: np.full(shape, np.nan) for m in self.swept_metrics}, np.zeros(self.n, dtype=bool))
        self._curve = _Curve()
        self._cap: int | None = None  # chosen by start(); None until then
        # reduced precision is tried on a GPU only: a CPU's bfloat16 is no faster, and numbers must not move
        self.reduced_precision = handle.device.type == "cuda" if reduced_precision is None else reduced_precision
        self.precision = torch.float32  # what the sweep runs in: REDUCED_PRECISION once the probe allows it
        self.precision_error: float | None = None  # the probe's largest difference, once tried
        self._begun = False
        self.error: HeadScopeError | None = None

    # --- control -------------------------------------------------------------------

    def begin(self) -> None:
        """Start the preview and the sweep's first images; the heavy stages may follow. Only the first call does anything."""
        with self._lock:
            if self._begun:
                return
            self._begun = True
        self._run(self._begin)

    def start(self, cap: int | None = None) -> None:
        """Run (or go on with) the sweep and the curve on the first ``cap`` images of the order (``None``: all).

        Raises:
            InvalidSetting: a cap below 1.
        """
        if cap is not None and cap < 1:
            raise InvalidSetting("The sample needs at least one image.")
        with self._lock:
            self._cap = self.n if cap is None else min(int(cap), self.n)
            # at once, not when the worker gets to it: a page reading the state now must not see the last run's
            sample = np.sort(self.order[: self._cap])
            if not self._sweep.swept[sample].all():
                self._progress[SWEEP_STAGE].state = WAITING
            if self._curve.images != tuple(sample.tolist()) or self._progress[CURVE_STAGE].state != DONE:
                self._progress[CURVE_STAGE].state = WAITING
        self._run(self._heavy)

    def stop(self) -> None:
        """End the running stage after its current batch; what finished is kept."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker; ``True`` when it has ended."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.busy

    @property
    def busy(self) -> bool:
        """The worker is at work, or about to be: set by ``begin``/``start``, cleared only when it has nothing left."""
        with self._lock:
            return self._active

    # --- what the pages read -------------------------------------------------------

    def status(self, stage: str) -> StageStatus:
        with self._lock:
            p = self._progress[stage]
            left = None
            if p.state == RUNNING and p.done > p.done_at_start:
                rate = (time.perf_counter() - p.started) / (p.done - p.done_at_start)
                left = rate * (p.total - p.done)
            return StageStatus(stage, p.state, p.done, p.total, left)

    @property
    def cap(self) -> int | None:
        """The images the heavy stages use, once ``start`` chose them."""
        with self._lock:
            return self._cap

    @property
    def sample(self) -> np.ndarray | None:
        """The set indices (ascending) the heavy stages use; ``None`` before ``start``."""
        cap = self.cap
        return None if cap is None else np.sort(self.order[:cap])

    @property
    def preview(self) -> Preview | None:
        with self._lock:
            return self._preview

    def estimate(self, cap: int | None = None) -> Estimate | None:
        """The heavy stages' cost for ``cap`` images (``None``: all), once the sweep's first batches are measured."""
        with self._lock:
            cost = self._sweep.cost
            swept = self._sweep.swept.copy()
        if cost is None:
            return None
        per_batch, per_image = cost
        k = self.n if cap is None else max(1, min(int(cap), self.n))
        remaining = int((~swept[self.order[:k]]).sum())
        batches = -(-remaining // self.batch)
        return Estimate(
            images=k,
            sweep_seconds=batches * per_batch + remaining * per_image,
            curve_seconds=-(-k // self.batch) * per_batch + k * per_image * self._curve_per_sweep(),
            per_image=per_image,
            per_batch=per_batch,
            device=self.handle.device.type,
        )

    def importance(self) -> HeadImportance | None:
        """Every metric once the sweep has finished on the sample; before that ``None``."""
        with self._lock:
            if self._progress[SWEEP_STAGE].state != DONE or self._preview is None or self._cap is None:
                return None
            sample = np.sort(self.order[: self._cap])
            if not self._sweep.swept[sample].all():
                return None
            key = (tuple(sample.tolist()), int(self._sweep.swept.sum()))
            if self._tables is None or self._tables[0] != key:  # built once per sample, not on every rerun
                self._tables = (key, self._merged(sample))
            return self._tables[1]

    def curve(self) -> pd.DataFrame | None:
        with self._lock:
            if self._progress[CURVE_STAGE].state != DONE or self._cap is None:
                return None
            current = tuple(np.sort(self.order[: self._cap]).tolist())
            return self._curve.table if self._curve.images == current else None

    def result(self) -> SetAnalysis | None:
        """The whole analysis, as ``analyze_set`` returns it, once every stage has finished."""
        with self._lock:  # one snapshot: another session's start() may change the sample
            importance, curve, preview = self.importance(), self.curve(), self.preview
        if importance is None or curve is None or preview is None:
            return None
        return SetAnalysis(
            settings=self.settings,
            importance=importance,
            curve=curve,
            strength=preview.strength,
            samples=preview.samples,
            predictions=preview.predictions,
        )

    # --- the worker ----------------------------------------------------------------

    def _run(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._active:
                if work == self._heavy:
                    self._pending = True  # the worker goes on with the heavy stages when it is done
                return
            self._stop.clear()
            self._pending, self._active = False, True
            self._thread = threading.Thread(target=self._guarded, args=(work,), name="headscope-analysis", daemon=True)
            self._thread.start()

    def _guarded(self, work: Callable[[], None]) -> None:
        while True:
            try:
                work()
            except Exception as err:  # a sentence for the user; the stages it stopped say failed
                with self._lock:
                    self.error = err if isinstance(err, HeadScopeError) else AnalysisFailed(
                        f"The analysis stopped on an error it did not expect ({type(err).__name__}: {err}); "
                        "what finished before it is kept, and opening the page again retries."
                    )
                    for p in self._progress.values():
                        if p.state == RUNNING:
                            p.state = FAILED
            with self._lock:  # a start() while this ran: go on, with its cap; else the worker ends
                if self._pending and self.error is None:
                    self._pending = False
                    self._stop.clear()
                    work = self._heavy
                    continue
                self._pending = self._active = False
                return

    def _begin(self) -> None:
        if self._state(PREVIEW_STAGE) != DONE:
            self._run_preview()
        if self._sweep.cost is None:
            # one image, two, then one again: a batch's fixed cost apart from an image's, and the
            # first run's one-time costs (allocations at new sizes) out of the fixed cost
            for probe in (self.order[:1], self.order[1:3], self.order[3:4]):
                if len(probe):
                    self._sweep_images(probe, first=True)
            self._measure()
            self._choose_precision(self.order[1:3])
        estimate = self.estimate()
        with self._lock:
            go = not self._pending and estimate is not None and estimate.seconds <= self.auto_start
            if go and self._cap is None:
                self._cap = self.n
        if go and not self._stop.is_set():
            self._heavy()

    def _heavy(self) -> None:
        if self._state(PREVIEW_STAGE) != DONE:
            self._begin()
            return
        with self._lock:
            sample = np.sort(self.order[: self._cap])
            todo = sample[~self._sweep.swept[sample]]
            sweep = self._progress[SWEEP_STAGE]
            sweep.state, sweep.total, sweep.done = RUNNING if len(todo) else DONE, len(sample), len(sample) - len(todo)
            sweep.started, sweep.done_at_start = time.perf_counter(), sweep.done
        for start in range(0, len(todo), self.batch):
            if self._stop.is_set():
                self._set_state(SWEEP_STAGE, STOPPED)
                return
            self._sweep_images(todo[start:start + self.batch])
        self._set_state(SWEEP_STAGE, DONE)
        self._run_curve(sample)

    def _run_preview(self) -> None:
        handle = self.handle
        picks = draw_samples(handle, self.n, self.settings)
        self._set_progress(PREVIEW_STAGE, state=RUNNING, done=0, total=self.n, started=time.perf_counter())

        def report(done: int, _total: int) -> None:
            self._set_progress(PREVIEW_STAGE, done=done)

        part = first_pass(handle, self.images, self.given, picks, metrics=self.metrics, sweep=False, progress=report)
        preview = Preview(
            importance=part.importance,
            strength=part.strength,
            samples=samples_from(handle, {kind: [part.maps[kind]] for kind in part.maps}),
            predictions=Predictions(logits=part.logits, features=part.features),
        )
        with self._lock:
            self._preview = preview
            self._progress[PREVIEW_STAGE].state = DONE

    def _swept_values(self, indices: np.ndarray, precision: torch.dtype) -> dict[str, np.ndarray]:
        """Every swept metric of these set images, ``{metric: [B, L, H]}``, run as one batch in ``precision``."""
        reduced = precision != torch.float32
        given = self.given[torch.as_tensor(indices)]
        preview = self.preview
        if preview is not None and not self.handle.is_backbone:
            # an image without a label is judged against the first pass's float32 top-1, in any precision
            top1 = torch.as_tensor(preview.importance.unpruned["target"].to_numpy()[indices])
            given = torch.where(given >= 0, given, top1)
        with torch.autocast(self.handle.device.type, dtype=precision, enabled=reduced):
            part = first_pass(
                self.handle, [self.images[int(i)] for i in indices], given, {},
                metrics=self.swept_metrics, batch_size=len(indices), reduce=False,
            )
        table = part.importance.per_image
        shape = (len(indices), self.handle.num_layers, self.handle.num_heads)
        return {
            metric: table[table["metric"] == metric].sort_values(["image", "layer", "head"], kind="stable")["value"]
            .to_numpy().reshape(shape)
            for metric in self.swept_metrics
        }

    def _sweep_images(self, indices: np.ndarray, *, first: bool = False) -> None:
        """Sweep these set images as one batch and keep their per-image values."""
        if not self.swept_metrics:
            return
        began = time.perf_counter()
        values = self._swept_values(indices, self.precision)
        seconds = time.perf_counter() - began
        with self._lock:
            for metric in self.swept_metrics:
                self._sweep.local[metric][indices] = values[metric]
            self._sweep.swept[indices] = True
            if first:
                self._sweep.probe.append((len(indices), seconds))
            else:
                self._progress[SWEEP_STAGE].done += len(indices)

    def _run_curve(self, sample: np.ndarray) -> None:
        with self._lock:
            curve = self._curve
            if curve.images == tuple(sample.tolist()) and curve.table is not None:
                self._progress[CURVE_STAGE].state = DONE  # this sample's curve is there already
                return
            merged = self._merged(sample)
            if curve.images != tuple(sample.tolist()):  # another sample ranks the heads anew
                points, keep = _curve_masks(self.handle, merged.overall, self.settings.curve_steps, self.settings.seed)
                self._curve = curve = _Curve(
                    images=tuple(sample.tolist()), done=np.zeros(len(sample), dtype=bool),
                    correct=np.zeros(len(keep), dtype=np.int64), similarity=np.zeros(len(keep), dtype=np.float64),
                    points=points, keep=keep,
                )
            todo = np.flatnonzero(~curve.done)
            p = self._progress[CURVE_STAGE]
            p.state, p.total, p.done = RUNNING, len(sample), len(sample) - len(todo)
            p.started, p.done_at_start = time.perf_counter(), p.done
        for start in range(0, len(todo), self.batch):
            if self._stop.is_set():
                self._set_state(CURVE_STAGE, STOPPED)
                return
            rows = todo[start:start + self.batch]
            indices = sample[rows]
            correct, similarity = _curve_sums(
                self.handle, [self.images[int(i)] for i in indices], self.given[torch.as_tensor(indices)],
                curve.keep, batch_size=len(indices),
            )
            with self._lock:
                curve.correct += correct
                curve.similarity += similarity
                curve.done[rows] = True
                self._progress[CURVE_STAGE].done += len(rows)
        with self._lock:
            curve.table = _curve_table(self.handle, curve.points, curve.correct, curve.similarity, len(sample))
            self._progress[CURVE_STAGE].state = DONE

    # --- helpers ---------------------------------------------------------------------

    def _merged(self, sample: np.ndarray) -> HeadImportance:
        """Every metric's tables over the images of ``sample`` (ascending set indices). Hold the lock.

        Taylor comes from the preview, which has it on every image; on a sample every
        metric (Taylor too) and the unpruned model's table keep only the sample's images,
        so each set value averages the same images. Image columns hold set indices.
        """
        preview = self._preview
        assert preview is not None
        taylor = preview.importance.per_image
        local: dict[str, np.ndarray] = {}
        for metric in self.metrics:
            if metric == "taylor":
                values = taylor[taylor["metric"] == "taylor"].sort_values(["image", "layer", "head"], kind="stable")
                every = values["value"].to_numpy().reshape(self.n, self.handle.num_layers, self.handle.num_heads)
                local[metric] = every[sample]
            else:
                local[metric] = self._sweep.local[metric][sample]
        overall = {
            metric: np.abs(values.mean(axis=0)) if metric == "taylor" else values.mean(axis=0)
            for metric, values in local.items()
        }
        per_image = _tidy(local)
        per_image["image"] = sample[per_image["image"].to_numpy()]  # _tidy numbers the images from 0
        unpruned = preview.importance.unpruned
        unpruned = unpruned.iloc[sample].reset_index(drop=True) if len(sample) < self.n else unpruned
        return HeadImportance(overall=_tidy(overall), per_image=per_image, unpruned=unpruned)

    def _choose_precision(self, probe: np.ndarray) -> None:
        """Sweep the rest in ``REDUCED_PRECISION`` when the device allows it and, on the probe's images, every
        swept value stays within ``REDUCED_TOLERANCE`` of full precision; otherwise in float32."""
        if not self.reduced_precision or not len(probe) or not self.swept_metrics:
            return
        with self._lock:
            full = {metric: self._sweep.local[metric][probe] for metric in self.swept_metrics}
        reduced = self._swept_values(probe, REDUCED_PRECISION)
        worst = max(float(np.max(np.abs(reduced[m] - full[m]))) for m in self.swept_metrics)
        with self._lock:
            self.precision_error = worst
            if worst <= REDUCED_TOLERANCE:
                self.precision = REDUCED_PRECISION

    def _measure(self) -> None:
        """The sweep's cost from the probe: ``t = batch + images * image``, from a batch of one and one of two."""
        with self._lock:
            probe = self._sweep.probe
            if not probe:
                self._sweep.cost = (0.0, 0.0)  # a model with nothing to sweep
                return
            (one, t1), *rest = probe
            if len(rest) == 2 and rest[1][0] == 1:
                t1 = min(t1, rest[1][1])
            if rest and rest[0][0] == 2:
                per_image = max(rest[0][1] - t1, 0.05 * t1)  # timing noise must not make an image free
                self._sweep.cost = (max(t1 - per_image, 0.0), per_image)
            else:  # too few images to tell them apart
                self._sweep.cost = (0.0, sum(t for _, t in probe) / sum(i for i, _ in probe))

    def _curve_per_sweep(self) -> float:
        """The curve's cost over the sweep's, in blocks run: every mask from (about) the first block."""
        layers, heads = self.handle.num_layers, self.handle.num_heads
        masks = (len(self.metrics) + 1) * (self.settings.curve_steps + 1)
        return (masks + 1) * layers / (heads * layers * (layers + 1) / 2)

    def _state(self, stage: str) -> str:
        with self._lock:
            return self._progress[stage].state

    def _set_state(self, stage: str, state: str) -> None:
        self._set_progress(stage, state=state)

    def _set_progress(self, stage: str, **values: object) -> None:
        with self._lock:
            for name, value in values.items():
                setattr(self._progress[stage], name, value)
