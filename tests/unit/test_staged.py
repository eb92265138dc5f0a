"""The staged analysis: the same numbers as the one-call analysis, a seeded sample cap, an estimate, stop and resume."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.errors import HeadScopeError
from core.inputs.images import ImageSet, demo_digits_set
from core.measures.importance import head_importance_tables, pruning_curve
from core.models.handle import wrap_model
from core.pipeline.analysis import analyze_set
from core.pipeline.staged import (
    CURVE_STAGE,
    DONE,
    FAILED,
    PREVIEW_STAGE,
    STOPPED,
    SWEEP_STAGE,
    WAITING,
    StagedAnalysis,
    sample_order,
)
from core.settings import CaseSettings
from core.study.casestudy import set_labels
from helpers.models import tiny_vit

SETTINGS = CaseSettings(curve_steps=4, max_maps=600)
# the sweep's values depend on which images share a batch only through float32 rounding
BATCHED = dict(rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def set_24(demo_handle) -> ImageSet:
    split = demo_handle.card["split"]
    return ImageSet.from_images("24 digits", demo_digits_set(split["seed"], split["test_fraction"]).images[:24])


def _done(job: StagedAnalysis) -> StagedAnalysis:
    assert job.wait(timeout=600) and job.error is None, job.error
    return job


def _begun(job: StagedAnalysis) -> StagedAnalysis:
    job.begin()
    return _done(job)


def _counting(job: StagedAnalysis, stop_after: int | None = None) -> list[int]:
    """Record how many images each sweep batch holds; stop the job after ``stop_after`` batches (the first image counts)."""
    seen: list[int] = []
    original = job._sweep_images

    def counted(indices, **kwargs):
        original(indices, **kwargs)
        seen.append(len(indices))
        if stop_after is not None and len(seen) == stop_after:
            job.stop()

    job._sweep_images = counted  # type: ignore[method-assign]
    return seen


def test_every_stage_equals_the_one_call_analysis(demo_handle, set_24) -> None:
    images, labels = set_24.pil_images(), set_labels(set_24)
    whole = analyze_set(demo_handle, images, labels, SETTINGS)
    job = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS))  # short: the heavy stages start on their own
    assert [job.status(stage).state for stage in (PREVIEW_STAGE, SWEEP_STAGE, CURVE_STAGE)] == [DONE] * 3
    staged = job.result()
    assert staged is not None and job.cap == 24 and np.array_equal(job.sample, np.arange(24))
    # the preview is the same pass: equal to the bit
    np.testing.assert_array_equal(staged.predictions.logits, whole.predictions.logits)
    np.testing.assert_array_equal(staged.strength.entropy, whole.strength.entropy)
    for kind in whole.samples:
        torch.testing.assert_close(staged.samples[kind].inputs, whole.samples[kind].inputs, rtol=0, atol=0)
    pd.testing.assert_frame_equal(staged.importance.unpruned, whole.importance.unpruned)
    for name in ("overall", "per_image"):
        ours, theirs = getattr(staged.importance, name), getattr(whole.importance, name)
        pd.testing.assert_frame_equal(ours.drop(columns="value"), theirs.drop(columns="value"))
        np.testing.assert_allclose(ours["value"], theirs["value"], **BATCHED)
    pd.testing.assert_frame_equal(staged.curve.drop(columns="similarity"), whole.curve.drop(columns="similarity"))
    np.testing.assert_allclose(staged.curve["similarity"], whole.curve["similarity"], **BATCHED)


def test_a_capped_sample_is_seeded_nested_and_what_every_metric_averages(demo_handle, set_24) -> None:
    images, labels = set_24.pil_images(), set_labels(set_24)
    job = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS, auto_start=0))
    assert job.cap is None and job.status(SWEEP_STAGE).state == WAITING  # waits for start(): nothing ran but one image
    job.start(8)
    _done(job)
    order = sample_order(24, SETTINGS.seed)
    sample = np.sort(order[:8])
    assert np.array_equal(job.sample, sample) and not np.array_equal(sample, np.arange(8))  # seeded, not the first 8
    tables = job.importance()
    assert set(tables.per_image["image"]) == set(sample.tolist()) and tables.unpruned["image"].tolist() == sample.tolist()
    alone = head_importance_tables(demo_handle, [images[i] for i in sample], labels[sample])
    np.testing.assert_allclose(tables.overall["value"], alone.overall["value"], **BATCHED)
    curve = pruning_curve(demo_handle, [images[i] for i in sample], tables.overall, labels[sample], steps=4, seed=SETTINGS.seed)
    pd.testing.assert_frame_equal(job.curve().drop(columns="similarity"), curve.drop(columns="similarity"))
    # a larger cap holds the smaller sample: its images are not swept again
    seen = _counting(job)
    job.start(12)
    _done(job)
    assert set(np.sort(order[:12])) >= set(sample.tolist()) and sum(seen) == 4
    assert len(job.curve()) == len(curve)  # the curve is ranked and run anew on the 12 images


def test_the_estimate_is_measured_on_the_first_images_and_scales_with_the_cap(demo_handle, set_24) -> None:
    job = _begun(StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS, auto_start=0))
    few, many = job.estimate(6), job.estimate(24)
    assert few.per_image > 0 and few.per_batch >= 0 and few.device == "cpu" and (few.images, many.images) == (6, 24)
    # the first four images of the order are swept already (batches of one, two and one): in every sample, and free
    a, c = few.per_batch, few.per_image
    assert few.sweep_seconds == pytest.approx(a + 2 * c) and many.sweep_seconds == pytest.approx(a + 20 * c)
    assert job.estimate(4).sweep_seconds == 0 and job.estimate(1000).images == job.estimate(None).images == 24
    ratio = job._curve_per_sweep()
    assert many.curve_seconds == pytest.approx(a + 24 * c * ratio) and ratio > 0


def test_a_stop_keeps_what_finished_and_start_goes_on_from_there(demo_handle, set_24) -> None:
    images, labels = set_24.pil_images(), set_labels(set_24)
    job = StagedAnalysis(demo_handle, images, labels, SETTINGS, batch_size=4, auto_start=0)
    seen = _counting(job, stop_after=5)  # batches of one, two and one (the estimate), then two of four
    job.begin()
    _done(job)
    job.start(None)
    _done(job)
    status = job.status(SWEEP_STAGE)
    assert status.state == STOPPED and status.done == 12 and status.total == 24
    assert job.preview is not None and job.importance() is None and job.curve() is None  # the preview is kept
    job._sweep_images = type(job)._sweep_images.__get__(job)  # stop no more
    job.start(None)
    _done(job)
    assert job.status(CURVE_STAGE).state == DONE and sum(seen) == 12  # 12 before the stop, the rest after
    whole = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS)).result()
    np.testing.assert_allclose(job.result().importance.overall["value"], whole.importance.overall["value"], **BATCHED)


def test_a_backbone_previews_without_metrics_and_sweeps_its_impacts() -> None:
    handle = wrap_model(tiny_vit(num_classes=0), device="cpu")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    job = _begun(StagedAnalysis(handle, images, None, CaseSettings(max_maps=90, curve_steps=2)))
    assert job.preview.importance.overall.empty  # no Taylor without a class target
    assert set(job.result().importance.overall["metric"]) == {"layer_impact", "output_impact"}


def test_a_failure_is_a_sentence_and_marks_its_stage() -> None:
    handle = wrap_model(tiny_vit(), class_names=[f"c{i}" for i in range(5)], device="cpu")

    def overflow_if_bright(_m, inputs, output):  # finite on the load probe, not on a white image
        is_bright = inputs[0].mean(dim=(1, 2, 3)) > 1.0
        return torch.where(is_bright[:, None, None], output * float("inf"), output)

    hook = handle.model.patch_embed.register_forward_hook(overflow_if_bright)
    try:
        images = [Image.new("RGB", (32, 32), "black"), Image.new("RGB", (32, 32), "white")]
        job = StagedAnalysis(handle, images, None, CaseSettings(max_maps=90, curve_steps=2))
        job.begin()
        assert job.wait(timeout=120)
    finally:
        hook.remove()
    assert isinstance(job.error, HeadScopeError) and "NaN or infinite" in str(job.error)
    assert job.status(PREVIEW_STAGE).state == FAILED and job.preview is None and job.result() is None


def test_a_cpu_sweeps_in_full_precision(demo_handle, set_24) -> None:
    job = _begun(StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS))
    assert job.precision == torch.float32 and job.precision_error is None  # not even tried


@pytest.mark.parametrize("tolerance", [0.0, float("inf")])
def test_reduced_precision_is_used_only_within_the_stated_tolerance(demo_handle, set_24, monkeypatch, tolerance) -> None:
    import core.pipeline.staged

    images, labels = set_24.pil_images(), set_labels(set_24)
    full = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS)).result().importance.overall["value"]
    monkeypatch.setattr(core.pipeline.staged, "REDUCED_TOLERANCE", tolerance)
    # a GPU's choice, tried here on the CPU's own bfloat16
    job = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS, reduced_precision=True))
    assert job.precision_error > 0  # the probe's images were swept again in bfloat16, and differ
    values = job.result().importance.overall["value"]
    if tolerance == 0.0:  # out of tolerance: float32, and the probe's bfloat16 values were not kept
        assert job.precision == torch.float32
        np.testing.assert_allclose(values, full, **BATCHED)
    else:
        assert job.precision == core.pipeline.staged.REDUCED_PRECISION
        assert not np.allclose(values, full, **BATCHED) and np.allclose(values, full, atol=0.2)


def test_an_unexpected_error_ends_the_job_with_a_sentence(demo_handle, set_24, monkeypatch) -> None:
    import core.pipeline.staged

    def out_of_memory(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(core.pipeline.staged, "run_pass", out_of_memory)
    job = StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS)
    job.begin()
    assert job.wait(timeout=60) and not job.busy
    assert isinstance(job.error, core.pipeline.staged.AnalysisFailed) and "(RuntimeError: CUDA out of memory)" in str(job.error)
    assert job.status(PREVIEW_STAGE).state == FAILED


def test_a_start_while_the_worker_runs_is_not_lost(demo_handle, set_24) -> None:
    job = _begun(StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS, batch_size=2, auto_start=0))
    job.start(None)
    job.stop()  # Stop, then Continue before the batch has ended
    job.start(None)
    assert job.wait(timeout=600) and job.error is None
    assert job.status(CURVE_STAGE).state == DONE and job.result() is not None


def test_run_slots_let_a_limited_number_compute_and_the_rest_wait_first_come_first_served() -> None:
    import threading

    from core.errors import InvalidSetting
    from core.pipeline.staged import RunSlots

    slots = RunSlots(2)
    first, second, third, fourth = object(), object(), object(), object()
    slots.acquire(first)
    slots.acquire(second)
    got: list[object] = []
    waiters = [threading.Thread(target=lambda h=h: (slots.acquire(h), got.append(h))) for h in (third, fourth)]
    waiters[0].start()
    while slots.place(third) is None:
        threading.Event().wait(0.01)
    waiters[1].start()
    while slots.place(fourth) is None:
        threading.Event().wait(0.01)
    assert (slots.running, slots.place(third), slots.place(fourth), got) == (2, 1, 2, [])
    slots.release(first)
    waiters[0].join(timeout=10)
    assert got == [third] and slots.place(fourth) == 1  # the one in front goes first
    slots.release(second)
    waiters[1].join(timeout=10)
    assert got == [third, fourth] and slots.running == 2
    with pytest.raises(InvalidSetting):
        RunSlots(0)


def test_each_owner_reads_its_own_sample_and_its_stop_leaves_the_others(demo_handle, set_24) -> None:
    job = _begun(StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS, auto_start=0))
    job.start(6, owner="a")
    job.start(12, owner="b")
    _done(job)
    assert (job.cap_for("a"), job.cap_for("b"), job.cap_for("nobody")) == (6, 12, 12)
    assert len(job.importance("a").unpruned) == 6 and len(job.importance("b").unpruned) == 12
    assert job.curve("a") is not None and job.curve("b") is not None
    job.stop("a")  # a stop after the work is done changes nothing anyone reads
    assert job.status(SWEEP_STAGE, "a").state == DONE and job.result("b") is not None


def test_a_job_that_holds_a_slot_twice_gives_back_one_at_a_time_and_passes_its_turn_to_one_in_line() -> None:
    import threading

    from core.pipeline.staged import RunSlots

    slots, job, other = RunSlots(2), object(), object()
    slots.acquire(job)
    slots.acquire(job)  # a worker that restarts before the last one has given its slot back
    slots.release(job)
    assert slots.running == 1
    slots.pass_turn(job)  # nobody in line: keeps going (and holds its slot)
    assert slots.running == 1
    slots.release(job)
    assert slots.running == 0
    one = RunSlots(1)
    one.acquire(job)
    order: list[object] = []
    waiter = threading.Thread(target=lambda: (one.acquire(other), order.append(other), one.release(other)))
    waiter.start()
    while one.place(other) is None:
        threading.Event().wait(0.01)
    one.pass_turn(job)  # gives the slot to the one in line, and waits behind it
    order.append(job)
    waiter.join(timeout=10)
    assert order == [other, job]


def test_followers_read_the_largest_finished_sample_and_only_their_own_stop(demo_handle, set_24) -> None:
    job = _begun(StagedAnalysis(demo_handle, set_24.pil_images(), set_labels(set_24), SETTINGS, auto_start=0))
    job.start(10, owner="a")
    _done(job)
    seen = _counting(job, stop_after=1)  # b's larger sample is stopped after its first batch
    job.start(20, owner="b")
    _done(job)
    assert job.status(CURVE_STAGE, "b").state == STOPPED and job.cap_for("b") == 20
    # a follower keeps reading the finished 10 (not b's unfinished 20) and was stopped by nobody
    assert job.cap_for("follower") == 10 and job.curve("follower") is not None
    assert job.status(SWEEP_STAGE, "follower").state == DONE and len(seen) == 1
    # a start on a sample that is done already queues no worker
    job.start(10, owner="c")
    assert not job.busy and job.status(CURVE_STAGE, "c").state == DONE


def test_a_stop_withdraws_the_requests_of_owners_who_are_gone_and_a_failed_job_starts_nothing(demo_handle, set_24) -> None:
    images, labels = set_24.pil_images(), set_labels(set_24)
    job = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS, batch_size=4, auto_start=0))
    gate = __import__("threading").Event()
    original = job._sweep_images

    def held(indices, **kwargs):
        assert gate.wait(timeout=120)
        original(indices, **kwargs)

    job._sweep_images = held  # type: ignore[method-assign]
    job.start(None, owner="closed tab")
    job.stop("follower", gone=lambda owner: owner == "closed tab")
    gate.set()
    _done(job)
    assert job.status(SWEEP_STAGE, "closed tab").state == STOPPED and job._sweep.swept.sum() <= 4 + 4
    job.error = HeadScopeError("It failed.")
    job.start(None, owner="late")
    assert not job.busy and "late" not in job._caps  # nothing runs on a failed job, and nothing is recorded


def test_a_preview_alone_sweeps_nothing_until_a_view_asks_for_more(demo_handle, set_24) -> None:
    """The home page reads the first pass only: no head is pruned for it, and a view's begin() still measures and starts."""
    images, labels = set_24.pil_images(), set_labels(set_24)
    job = StagedAnalysis(demo_handle, images, labels, SETTINGS)  # short: a view's begin starts every image
    seen = _counting(job)
    job.begin("home", heavy=False)
    _done(job)
    assert job.preview is not None and job.status(PREVIEW_STAGE).state == DONE
    assert seen == [] and not job.measured and job.estimate() is None and job.importance("home") is None
    job.begin("home", heavy=False)  # again: still nothing more
    _done(job)
    assert seen == []
    job.begin("view")
    _done(job)
    assert seen[:3] == [1, 2, 1] and job.measured  # the measurement's batches, then the sweep of every image
    whole = _begun(StagedAnalysis(demo_handle, images, labels, SETTINGS)).result()
    pd.testing.assert_frame_equal(job.result("view").importance.overall, whole.importance.overall)
