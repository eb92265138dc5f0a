"""A set's analysis in stages that show as they finish, with an estimate first, a sample cap and a stop.

``analyze_set`` computes a set's analysis in one call; on a large model that is minutes
with nothing to look at. ``StagedAnalysis`` runs the same analysis on a worker thread in
three stages, each usable as soon as it ends:

1. the preview (``PREVIEW_STAGE``): one unpruned pass over every image
   (``core.pipeline.analysis.run_pass`` capturing all but the sweep): the predictions,
   the strength statistics, the pattern-map sample and, for a classifier, the Taylor
   importance of every head (a forward and a backward pass an image);
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

Numbers: the preview is ``run_pass``'s, as ``analyze_set``'s pass. The sweep's per-image values depend on which
images share a batch only through float rounding, so they equal ``analyze_set``'s to
float32 precision, not bit for bit. On a sample, every importance metric (Taylor too)
and the curve are over the sampled images only; the preview's strength, patterns and
predictions always cover every image.

Precision: on a GPU, the probe's images are swept again in bfloat16; the rest of the sweep
runs in it only when, on those images, every value stays within ``REDUCED_TOLERANCE`` of
float32's (``precision`` says which it chose; the page says so). A check on a few images
bounds the others only as far as they resemble them; targets stay the float32 first
pass's whatever the precision. The curve always runs in float32, and a CPU sweeps in it.

Sharing: the browser sessions of a server share one job per model, set and settings, so
each result is computed once; each session is an owner with its own sample and its own
stop (``JobView``). The worker serves every owner that waits, smallest sample first; a
stop withdraws one owner's request, and the worker ends once nobody waits. ``RunSlots``
bounds how many jobs compute at once on a server; the others wait in line.

Thread safety: one worker thread runs the stages; every attribute the pages read is
behind a lock, and ``status`` and the results are snapshots.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.errors import HeadScopeError, InvalidSetting, NotEnoughImages
from core.measures.importance import (
    HeadImportance,
    HeadValues,
    check_labels,
    check_metrics,
    curve_masks,
    curve_sums,
    curve_table,
)
from core.models.handle import ViTHandle
from core.pipeline.analysis import (
    CURVE_STAGE,
    PASS_STAGE,
    Capture,
    Preview,
    SetAnalysis,
    draw_samples,
    preview_of,
    run_pass,
    set_analysis,
)
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
    "JobView",
    "Preview",
    "RunSlots",
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
# samples whose tables and curves a job keeps, and owners whose choice of sample it remembers
_KEPT_SAMPLES = 8
_KEPT_OWNERS = 256


def sample_order(n: int, seed: int) -> np.ndarray:
    """The order in which the heavy stages take the images: a seeded permutation of ``range(n)``.

    A cap of K uses ``sample_order(n, seed)[:K]``, so every sample holds the smaller ones.
    """
    return np.random.default_rng(seed).permutation(n)


class AnalysisFailed(HeadScopeError):
    """The staged analysis met an error that is not one of HeadScope's own (say, out of memory on a GPU)."""


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


class RunSlots:
    """At most ``limit`` analyses compute at once on a server; the others wait in line, first come first served.

    A job holds a slot while its worker computes (the preview, the measurement, the heavy
    stages) and gives it back when the worker has nothing left, so a job waiting for a
    user's Start holds none.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise InvalidSetting("At least one analysis must be allowed to run at once.")
        self.limit = int(limit)
        self._cond = threading.Condition()
        self._running: list[object] = []
        self._line: list[object] = []

    def acquire(self, holder: object) -> None:
        """Wait in line until ``holder`` may compute."""
        with self._cond:
            self._line.append(holder)
            try:
                while self._line[0] is not holder or len(self._running) >= self.limit:
                    self._cond.wait()
            except BaseException:
                self._line = [h for h in self._line if h is not holder]
                self._cond.notify_all()
                raise
            self._line.pop(0)
            self._running.append(holder)
            self._cond.notify_all()

    def release(self, holder: object) -> None:
        """Give back one slot ``holder`` took (a job whose worker restarts may briefly hold two)."""
        with self._cond:
            for i, running in enumerate(self._running):
                if running is holder:
                    del self._running[i]
                    break
            self._cond.notify_all()

    def pass_turn(self, holder: object) -> None:
        """Between two batches: when others wait, give the slot back and queue again behind them."""
        with self._cond:
            if not self._line:
                return
        self.release(holder)
        self.acquire(holder)

    def place(self, holder: object) -> int | None:
        """``holder``'s place in line (1: next), or ``None`` when it is not waiting."""
        with self._cond:
            for place, waiting in enumerate(self._line, start=1):
                if waiting is holder:
                    return place
            return None

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)


class StagedAnalysis:
    """One set's analysis under one model and settings, run in stages on a worker thread.

    ``begin()`` starts the preview and the sweep's first image; when ``estimate`` for all
    images is within ``auto_start`` seconds the heavy stages follow on their own,
    otherwise they wait for ``start(cap)``. ``stop()`` ends the running stage after its
    batch. ``status`` and ``preview``, ``importance``, ``curve``, ``result`` are read at
    any time; an error with a sentence for the user is kept in ``error``.

    Several owners (the browser sessions of a server) may share one job: results are
    shared, controls are not. Each owner's ``start`` chooses its own sample, and what it
    reads is over that sample (an owner that chose none reads the largest one finished,
    else the largest started); the worker sweeps their union, the largest, as the order nests them.
    An owner's ``stop`` withdraws only its own request: the worker ends after its batch
    once no owner waits for more. ``view(owner)`` binds these calls to one owner.
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
        slots: RunSlots | None = None,
    ) -> None:
        if len(images) == 0:
            raise NotEnoughImages("The analysis needs at least one image.")
        self.handle, self.images, self.settings = handle, images, settings
        self.n = len(images)
        self.given = check_labels(handle, labels, self.n)
        self.metrics = check_metrics(None, handle)
        self.swept_metrics = [m for m in self.metrics if m != "taylor"]
        self.order = sample_order(self.n, settings.seed)
        self.batch = images_per_batch(handle, batch_size)
        self.auto_start = auto_start
        self._slots = slots
        self._lock = threading.RLock()
        self._active = self._pending = False  # the worker is at work; a start() waits for it to finish
        self._tables: OrderedDict[tuple[int, ...], HeadImportance] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._reading = _Progress()  # the preview's; the heavy stages' state is each owner's, from its sample
        self._preview: Preview | None = None
        self._preview_values: HeadValues | None = None  # the preview's per-image arrays, which the sample's tables index
        shape = (self.n, handle.num_layers, handle.num_heads)
        self._sweep = _Sweep({m: np.full(shape, np.nan) for m in self.swept_metrics}, np.zeros(self.n, dtype=bool))
        self._curves: OrderedDict[tuple[int, ...], _Curve] = OrderedDict()  # by the sample each ranks and runs on
        self._caps: OrderedDict[Hashable, int] = OrderedDict()  # each owner's sample size, chosen by start()
        self._waiting: set[Hashable] = set()  # owners whose sample's sweep or curve is still to run
        self._stopped: set[Hashable] = set()  # owners who stopped before their sample was done
        self._working: tuple[str, int] | None = None  # the stage and sample size the worker runs now
        self._clock: dict[object, tuple[float, int]] = {}  # when this run of a stage began, and its images done then
        self._begin_owner: Hashable = None
        self._auto_decided = False
        # reduced precision is tried on a GPU only: a CPU's bfloat16 is no faster, and numbers must not move
        self.reduced_precision = handle.device.type == "cuda" if reduced_precision is None else reduced_precision
        self.precision = torch.float32  # what the sweep runs in: REDUCED_PRECISION once the probe allows it
        self.precision_error: float | None = None  # the probe's largest difference, once tried
        self._begun = False
        self._heavy_asked = False  # a begin() wanted more than the preview: measure the sweep, maybe start it
        self.error: HeadScopeError | None = None

    # --- control -------------------------------------------------------------------

    def begin(self, owner: Hashable = None, *, heavy: bool = True) -> None:
        """Start the preview and the sweep's first images; the heavy stages may follow for ``owner``.

        ``heavy=False`` asks for the preview alone (the home page reads only its predictions):
        the sweep is neither measured nor started until a call with ``heavy=True``. The first
        call with ``heavy=True`` measures the sweep, and a short estimate starts every image
        for its owner; later calls do nothing.
        """
        with self._lock:
            wanted = not self._begun or (heavy and not self._heavy_asked)
            self._begun = True
            if heavy and not self._heavy_asked:
                self._heavy_asked, self._begin_owner = True, owner
            if not wanted:
                return
        self._run()

    def start(self, cap: int | None = None, owner: Hashable = None) -> None:
        """Run (or go on with) the sweep and the curve on the first ``cap`` images of the order (``None``: all).

        ``cap`` becomes ``owner``'s sample; other owners' samples and what they read stay as they were.

        Raises:
            InvalidSetting: a cap below 1.
        """
        if cap is not None and cap < 1:
            raise InvalidSetting("The sample needs at least one image.")
        with self._lock:
            if self.error is not None:
                return  # a failed job runs nothing more: its page says why, and a new job retries
            self._choose(owner, self.n if cap is None else min(int(cap), self.n))
            if owner not in self._waiting:
                return  # that sample is done already
        self._run()

    def stop(self, owner: Hashable = None, *, gone: Callable[[Hashable], bool] | None = None) -> None:
        """Withdraw ``owner``'s request: the worker ends after its current batch once nobody waits for more.

        What finished is kept. ``None`` (the owner of a single-user job) stops every request.
        ``gone`` names owners who can no longer stop their own (a closed browser tab): their
        requests are withdrawn too.
        """
        with self._lock:
            owners = set(self._waiting) | {None} if owner is None else {owner}
            if gone is not None:
                owners |= {who for who in self._waiting if gone(who)}
            for who in owners:
                self._waiting.discard(who)
                self._stopped.add(who)
            while len(self._stopped) > _KEPT_OWNERS:  # those who chose no sample are remembered for a while only
                self._stopped.discard(next(iter(self._stopped - set(self._caps)), next(iter(self._stopped))))

    def view(self, owner: Hashable) -> JobView:
        """This job as ``owner`` sees and controls it."""
        return JobView(self, owner)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the worker; ``True`` when it has ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:  # a start() may have begun a new worker since the last look
                thread, active = self._thread, self._active
            if not active:
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            if thread is not None:
                thread.join(0.1 if left is None else min(left, 0.1))

    @property
    def busy(self) -> bool:
        """The worker is at work, or about to be: set by ``begin``/``start``, cleared only when it has nothing left."""
        with self._lock:
            return self._active

    def working_for(self, owner: Hashable = None) -> bool:
        """The worker is running heavy stages that ``owner`` waits for (an owner that chose no sample: any)."""
        with self._lock:
            return self._active and self._follows(owner)

    @property
    def place_in_line(self) -> int | None:
        """Where the worker waits for a free slot (1: next), or ``None`` when it is not waiting."""
        return None if self._slots is None else self._slots.place(self)

    @property
    def slots(self) -> RunSlots | None:
        return self._slots

    @property
    def measured(self) -> bool:
        """The preview and the estimate's measurement have run, and a short estimate has started the heavy stages."""
        with self._lock:
            return self._auto_decided

    @property
    def interrupted(self) -> bool:
        """Some owner stopped before its stages finished: partial work a registry may prefer to keep."""
        with self._lock:
            return bool(self._stopped)

    # --- what the pages read -------------------------------------------------------

    def status(self, stage: str, owner: Hashable = None) -> StageStatus:
        """A snapshot of ``stage`` over ``owner``'s sample."""
        with self._lock:
            if stage == PREVIEW_STAGE:
                p = self._reading
                return StageStatus(stage, p.state, p.done, p.total, self._left(stage, p.state, p.done, p.total))
            cap = self.cap_for(owner)
            if cap is None:
                return StageStatus(stage, FAILED if self.error is not None else WAITING, 0, 0, None)
            sample = self._sample_of(cap)
            if stage == SWEEP_STAGE:
                done = int(self._sweep.swept[sample].sum())
                complete = done == cap
                clock_key: object = SWEEP_STAGE
            else:
                curve = self._curves.get(tuple(sample.tolist()))
                done = 0 if curve is None else int(curve.done.sum())
                complete = curve is not None and curve.table is not None
                clock_key = (CURVE_STAGE, cap)
            state = self._owner_state(owner, stage, cap, complete)
            return StageStatus(stage, state, done, cap, self._left(clock_key, state, done, cap))

    def cap_for(self, owner: Hashable = None) -> int | None:
        """The images ``owner``'s heavy stages use: its own choice, else the largest sample finished (or started)."""
        with self._lock:
            if owner in self._caps:
                return self._caps[owner]
            return self._finished() or max(self._caps.values(), default=None)

    @property
    def cap(self) -> int | None:
        """The images the heavy stages use for the owner ``None``, once ``start`` chose them."""
        return self.cap_for(None)

    def sample_for(self, owner: Hashable = None) -> np.ndarray | None:
        """The set indices (ascending) ``owner``'s heavy stages use; ``None`` before any ``start``."""
        cap = self.cap_for(owner)
        return None if cap is None else self._sample_of(cap)

    @property
    def sample(self) -> np.ndarray | None:
        return self.sample_for(None)

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

    def importance(self, owner: Hashable = None) -> HeadImportance | None:
        """Every metric once the sweep has finished on ``owner``'s sample; before that ``None``."""
        with self._lock:
            cap = self.cap_for(owner)
            if self._preview is None or cap is None:
                return None
            sample = self._sample_of(cap)
            if not self._sweep.swept[sample].all():
                return None
            key = tuple(sample.tolist())
            held = self._tables.get(key)
            if held is None:  # built once per sample (its values are final once it is swept), not on every rerun
                held = self._tables[key] = self._merged(sample)
                while len(self._tables) > _KEPT_SAMPLES:
                    self._tables.popitem(last=False)
            self._tables.move_to_end(key)
            return held

    def curve(self, owner: Hashable = None) -> pd.DataFrame | None:
        """The pruning curve over ``owner``'s sample, once it has finished; before that ``None``."""
        with self._lock:
            cap = self.cap_for(owner)
            if cap is None:
                return None
            curve = self._curves.get(tuple(self._sample_of(cap).tolist()))
            return None if curve is None else curve.table

    def result(self, owner: Hashable = None) -> SetAnalysis | None:
        """The whole analysis over ``owner``'s sample, as ``analyze_set`` returns it, once every stage has finished."""
        with self._lock:  # one snapshot: a start() may change the sample
            importance, curve, preview = self.importance(owner), self.curve(owner), self.preview
        if importance is None or curve is None or preview is None:
            return None
        return set_analysis(self.settings, preview, curve, importance)

    # --- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        with self._lock:
            if self.error is not None:
                return
            if self._active:
                self._pending = True  # the worker looks for work again before it ends
                return
            self._pending, self._active = False, True
            self._thread = threading.Thread(target=self._guarded, name="headscope-analysis", daemon=True)
            self._thread.start()

    def _guarded(self) -> None:
        held = ended = False
        try:
            if self._slots is not None:
                self._slots.acquire(self)
                held = True
            while True:
                try:
                    self._work()
                except Exception as err:  # a sentence for the user; the stages it stopped say failed
                    with self._lock:
                        self.error = err if isinstance(err, HeadScopeError) else AnalysisFailed(
                            f"The analysis stopped on an error it did not expect ({type(err).__name__}: {err}); "
                            "what finished before it is kept, and opening the page again retries."
                        )
                        if self._reading.state == RUNNING:
                            self._reading.state = FAILED
                        self._waiting.clear()
                with self._lock:  # a begin() or start() while this ran: look for work again; else the worker ends
                    self._working = None
                    if self._pending and self.error is None:
                        self._pending = False
                        continue
                    self._pending = self._active = False
                    ended = True
                    return
        finally:
            if not ended:  # left through something no handler takes (the interpreter exiting): nothing runs now
                with self._lock:
                    self._pending = self._active = False
            if held:
                self._slots.release(self)  # type: ignore[union-attr]

    def _work(self) -> None:
        """The preview and the measurement once, then every owner's waiting sample, smallest first."""
        with self._lock:
            read = self._reading.state == DONE
        if not read:
            self._run_preview()
        with self._lock:
            heavy = self._heavy_asked
        if not heavy:
            return  # the preview was all that was asked for (a later begin() runs the worker again)
        if self._sweep.cost is None:
            # one image, two, then one again: a batch's fixed cost apart from an image's, and the
            # first run's one-time costs (allocations at new sizes) out of the fixed cost
            for probe in (self.order[:1], self.order[1:3], self.order[3:4]):
                if len(probe):
                    self._sweep_images(probe, first=True)
            self._measure()
            self._choose_precision(self.order[1:3])
        if not self._auto_decided:
            estimate = self.estimate()
            with self._lock:
                self._auto_decided = True
                owner = self._begin_owner
                if (owner not in self._caps and owner not in self._stopped
                        and estimate is not None and estimate.seconds <= self.auto_start):
                    self._choose(owner, self.n)
        with self._lock:
            self._clock = {SWEEP_STAGE: (time.perf_counter(), int(self._sweep.swept.sum()))}
        while (step := self._next_step()) is not None:
            if self._slots is not None:
                self._slots.pass_turn(self)  # a job in line (say, a new set's first pass) gets its turn between batches
            stage, sample, rows = step
            if stage == SWEEP_STAGE:
                self._sweep_images(sample[rows])
            else:
                self._curve_batch(sample, rows)

    def _next_step(self) -> tuple[str, np.ndarray, np.ndarray] | None:
        """The worker's next batch: a stage, the sample it serves and the rows of that sample; ``None``: nothing waits."""
        with self._lock:
            self._working = None
            for cap in sorted({self._caps[owner] for owner in self._waiting}):
                sample = self._sample_of(cap)
                rows = np.flatnonzero(~self._sweep.swept[sample])
                if len(rows):
                    self._working = (SWEEP_STAGE, cap)
                    return SWEEP_STAGE, sample, rows[: self.batch]
                curve = self._curve_of(sample)
                rows = np.flatnonzero(~curve.done)
                if len(rows):
                    self._working = (CURVE_STAGE, cap)
                    self._clock.setdefault((CURVE_STAGE, cap), (time.perf_counter(), int(curve.done.sum())))
                    return CURVE_STAGE, sample, rows[: self.batch]
                if curve.table is None:
                    curve.table = curve_table(self.handle, curve.points, curve.correct, curve.similarity, len(sample))
                self._waiting -= {owner for owner in self._waiting if self._caps[owner] == cap}
            return None

    def _choose(self, owner: Hashable, cap: int) -> None:
        """``owner``'s sample is the first ``cap`` images of the order; it waits for them unless they are done. Hold the lock."""
        self._caps[owner] = cap
        self._caps.move_to_end(owner)
        self._stopped.discard(owner)
        curve = self._curves.get(tuple(self._sample_of(cap).tolist()))
        if curve is None or curve.table is None:
            self._waiting.add(owner)
        while len(self._caps) > _KEPT_OWNERS:  # the owners that chose longest ago, and wait for nothing, go
            gone = next((o for o in self._caps if o not in self._waiting), None)
            if gone is None:
                break
            del self._caps[gone]
            self._stopped.discard(gone)

    def _owner_state(self, owner: Hashable, stage: str, cap: int, complete: bool) -> str:
        """``owner``'s state of a heavy stage over its sample of ``cap`` images. Hold the lock."""
        if complete:
            return DONE
        if self.error is not None:
            return FAILED
        if not self._follows(owner):
            return STOPPED if owner in self._stopped else WAITING
        working = self._working
        if working is not None and working[0] == stage and (stage == SWEEP_STAGE or working[1] == cap):
            return RUNNING
        return WAITING

    def _follows(self, owner: Hashable) -> bool:
        """``owner`` waits for heavy work: its own sample's or (having chosen none, nor stopped) the sample it reads. Hold the lock."""
        if owner in self._caps:
            return owner in self._waiting
        cap = self.cap_for(owner)
        return owner not in self._stopped and any(self._caps[who] == cap for who in self._waiting)

    def _finished(self) -> int | None:
        """The largest sample whose every stage has finished. Hold the lock."""
        return max((len(key) for key, curve in self._curves.items() if curve.table is not None), default=None)

    def _left(self, key: object, state: str, done: int, total: int) -> float | None:
        """Seconds left at the rate of this run of the stage, once a batch of it has finished. Hold the lock."""
        if state != RUNNING or key not in self._clock:
            return None
        began, done_then = self._clock[key]
        done_now = int(self._sweep.swept.sum()) if key == SWEEP_STAGE else done  # the sweep's rate counts every sample's
        if done_now <= done_then:
            return None
        return (time.perf_counter() - began) / (done_now - done_then) * (total - done)

    def _sample_of(self, cap: int) -> np.ndarray:
        return np.sort(self.order[:cap])

    def _run_preview(self) -> None:
        handle = self.handle
        # Taylor rides on the forward; the other metrics are the sweep's, a stage of their own
        taylor = [metric for metric in self.metrics if metric == "taylor"]
        capture = Capture(metrics=taylor, map_samples=draw_samples(handle, self.n, self.settings))
        with self._lock:
            self._reading = _Progress(RUNNING, 0, self.n)
            self._clock[PREVIEW_STAGE] = (time.perf_counter(), 0)

        def report(done: int, _total: int) -> None:
            with self._lock:
                self._reading.done = done

        part = run_pass(handle, self.images, self.given, capture, progress=report)
        preview = preview_of(handle, [part])
        with self._lock:
            self._preview, self._preview_values = preview, part.importance
            self._reading.state = DONE

    def _swept_values(self, indices: np.ndarray, precision: torch.dtype) -> dict[str, np.ndarray]:
        """Every swept metric of these set images, ``{metric: [B, L, H]}``, run as one batch in ``precision``."""
        reduced = precision != torch.float32
        given = self.given[torch.as_tensor(indices)]
        with self._lock:
            unpruned = self._preview_values
        if unpruned is not None and not self.handle.is_backbone:
            # an image without a label is judged against the first pass's float32 top-1, in any precision
            given = torch.where(given >= 0, given, torch.as_tensor(unpruned.target[indices]))
        capture = Capture(metrics=self.swept_metrics, attention_stats=False, predictions=False)
        with torch.autocast(self.handle.device.type, dtype=precision, enabled=reduced):
            part = run_pass(
                self.handle, [self.images[int(i)] for i in indices], given, capture, batch_size=len(indices)
            )
        return dict(part.importance.per_image)

    def _sweep_images(self, indices: np.ndarray, *, first: bool = False) -> None:
        """Sweep these set images as one batch and keep their per-image values."""
        if not self.swept_metrics:  # nothing to prune: every image is as swept as it gets
            with self._lock:
                self._sweep.swept[indices] = True
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

    def _curve_of(self, sample: np.ndarray) -> _Curve:
        """The curve ranked on ``sample`` and run over it, made (with no image done) when it is new. Hold the lock."""
        key = tuple(sample.tolist())
        curve = self._curves.get(key)
        if curve is None:  # another sample ranks the heads anew
            merged = self._merged(sample)
            points, keep = curve_masks(self.handle, merged.overall, self.settings.curve_steps, self.settings.seed)
            curve = self._curves[key] = _Curve(
                images=key, done=np.zeros(len(sample), dtype=bool),
                correct=np.zeros(len(keep), dtype=np.int64), similarity=np.zeros(len(keep), dtype=np.float64),
                points=points, keep=keep,
            )
            wanted = {tuple(self._sample_of(cap).tolist()) for cap in self._caps.values()}
            for old in [k for k in self._curves if k not in wanted and k != key][: max(0, len(self._curves) - _KEPT_SAMPLES)]:
                del self._curves[old]
        return curve

    def _curve_batch(self, sample: np.ndarray, rows: np.ndarray) -> None:
        """Run the pruning curve of ``sample`` on these of its rows, adding them to its sums."""
        with self._lock:
            curve = self._curve_of(sample)
        indices = sample[rows]
        correct, similarity = curve_sums(
            self.handle, [self.images[int(i)] for i in indices], self.given[torch.as_tensor(indices)],
            curve.keep, batch_size=len(indices),
        )
        with self._lock:
            curve.correct += correct
            curve.similarity += similarity
            curve.done[rows] = True

    # --- helpers ---------------------------------------------------------------------

    def _merged(self, sample: np.ndarray) -> HeadImportance:
        """Every metric's tables over the images of ``sample`` (ascending set indices). Hold the lock.

        Taylor comes from the preview, which has it on every image; on a sample every
        metric (Taylor too) and the unpruned model's table keep only the sample's images,
        so each set value averages the same images. Image columns hold set indices.
        """
        every = self._preview_values
        assert every is not None
        local = {
            metric: every.per_image[metric] if metric == "taylor" else self._sweep.local[metric] for metric in self.metrics
        }
        return replace(every, per_image=local).subset(sample).tables(images=sample)

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



@dataclass(frozen=True)
class JobView:
    """A shared ``StagedAnalysis`` as one owner (a browser session) sees and controls it.

    Reads are over the owner's sample; ``start`` and ``stop`` are the owner's own.
    """

    job: StagedAnalysis
    owner: Hashable

    @property
    def n(self) -> int:
        return self.job.n

    @property
    def handle(self) -> ViTHandle:
        return self.job.handle

    @property
    def error(self) -> HeadScopeError | None:
        return self.job.error

    @property
    def preview(self) -> Preview | None:
        return self.job.preview

    @property
    def precision(self) -> torch.dtype:
        return self.job.precision

    @property
    def precision_error(self) -> float | None:
        return self.job.precision_error

    @property
    def busy(self) -> bool:
        """The shared worker is at work (for anyone)."""
        return self.job.busy

    @property
    def working(self) -> bool:
        """The worker runs heavy stages this owner waits for (a page polls this while it shows their progress)."""
        return self.job.working_for(self.owner)

    @property
    def measured(self) -> bool:
        return self.job.measured

    @property
    def place_in_line(self) -> int | None:
        return self.job.place_in_line

    @property
    def cap(self) -> int | None:
        return self.job.cap_for(self.owner)

    @property
    def sample(self) -> np.ndarray | None:
        return self.job.sample_for(self.owner)

    def status(self, stage: str) -> StageStatus:
        return self.job.status(stage, self.owner)

    def estimate(self, cap: int | None = None) -> Estimate | None:
        return self.job.estimate(cap)

    def importance(self) -> HeadImportance | None:
        return self.job.importance(self.owner)

    def curve(self) -> pd.DataFrame | None:
        return self.job.curve(self.owner)

    def result(self) -> SetAnalysis | None:
        return self.job.result(self.owner)

    def start(self, cap: int | None = None) -> None:
        self.job.start(cap, self.owner)

    def stop(self, gone: Callable[[Hashable], bool] | None = None) -> None:
        self.job.stop(self.owner, gone=gone)
