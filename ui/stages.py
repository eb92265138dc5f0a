"""The set's staged analysis on a page: progress with the time left, the estimate and sample cap, stop.

The analysis runs on a worker thread (``core.pipeline.staged``), so it goes on while the user
moves between pages; a page that needs a stage which has not finished waits for it
here, drawing its progress, and reruns itself when it ends. Waiting is a loop of short
sleeps that Streamlit interrupts on any click, so the page never locks up.
"""

from __future__ import annotations

import time

import streamlit as st
import torch
from streamlit.runtime import Runtime

from core.pipeline.staged import (
    CURVE_STAGE,
    DONE,
    FAILED,
    PREVIEW_STAGE,
    RUNNING,
    STOPPED,
    SWEEP_STAGE,
    JobView,
)

__all__ = [
    "CAP_KEY", "POLL_SECONDS", "REQUEST_KEY", "apply_request", "duration", "heavy_panel", "sample_note", "wait_for_preview",
]

POLL_SECONDS = 0.3
CAP_KEY = "analysis_cap"
# a Start or Stop click, kept until the page's run applies it to the job the registry holds then:
# a job object held by a button's callback could have been dropped from the registry meanwhile
REQUEST_KEY = "analysis_request"
SHOWN_JOB_KEY = "analysis_shown_job"
_WHAT = {
    SWEEP_STAGE: "Exact sweep (each head pruned alone)",
    CURVE_STAGE: "Pruning curve",
}


def duration(seconds: float) -> str:
    """``seconds`` as a reader says it: "12 s", "3 min 20 s", "1 h 5 min"."""
    seconds = max(0.0, float(seconds))
    if seconds < 1:
        return "under 1 s"
    if seconds < 60:
        return f"{round(seconds)} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _request(job_key: str, action: str, cap: int | None = None) -> None:
    st.session_state[REQUEST_KEY] = (job_key, action, cap)


def apply_request(view: JobView, job_key: str) -> None:
    """Apply this session's pending Start or Stop to ``view``, if it was pressed on this job's page."""
    st.session_state[SHOWN_JOB_KEY] = job_key
    request = st.session_state.pop(REQUEST_KEY, None)
    if request is None or request[0] != job_key:
        return  # a click on another set's page: that set is no longer shown
    _, action, cap = request
    if action == "start":
        view.start(cap)
    else:
        view.stop(gone=_session_gone)


def _session_gone(owner: object) -> bool:
    """Whether the browser session ``owner`` names has closed, so that it can no longer stop its own run."""
    session_id = str(owner).split(" ")[0]  # ui.results names an owner by its session id and a token
    return bool(session_id) and Runtime.exists() and not Runtime.instance().is_active_session(session_id)


def _line_note(view: JobView) -> str:
    """"" when the job computes; else where it waits for a free slot on the server."""
    place = view.place_in_line
    if place is None:
        return ""
    slots = view.job.slots
    limit = slots.limit if slots is not None else 1
    running = "analysis runs" if limit == 1 else "analyses run"
    return (
        f"Waiting for a free slot: {limit} {running} at once on this server, and this one is "
        f"{_ordinal(place)} in line. It starts by itself."
    )


def _ordinal(place: int) -> str:
    return {1: "next", 2: "second", 3: "third"}.get(place, f"number {place}")


def sample_note(job: JobView) -> str:
    """What the heavy stages ran on: "" for every image, else the seeded sample, for a chart's caption."""
    cap = job.cap
    if cap is None or cap >= job.n:
        return ""
    return f"a seeded sample of {cap} of the {job.n} images"


def wait_for_preview(job: JobView) -> None:
    """Block, with a progress bar and the time left (or the place in line), until the preview has finished."""
    status = job.status(PREVIEW_STAGE)
    if status.state == DONE:
        return
    bar = st.progress(0.0, text=f"Reading the {job.n} images: one pass of the model…")
    while job.status(PREVIEW_STAGE).state not in (DONE, FAILED) and job.busy:
        status = job.status(PREVIEW_STAGE)
        left = f", about {duration(status.seconds_left)} left" if status.seconds_left is not None else ""
        waiting = _line_note(job)
        bar.progress(status.fraction, text=waiting or f"Reading the set: {status.done} of {status.total} images{left}…")
        time.sleep(POLL_SECONDS)
    bar.empty()


def heavy_panel(job: JobView, *, need_every_image: bool = False, why: str = "") -> None:
    """The heavy stages' state where a page needs their results; returns only when they are done.

    Not started: the estimate for the chosen model, device and images, a cap on the
    images (a seeded sample) and a Start button, then the page stops there. Running:
    each stage's progress with the time left and a Stop button, until they end.
    Stopped: what finished, and Continue. ``need_every_image``: a capped sample is not
    enough for this page (the case study); it offers to go on with every image. The
    sample, Start and Stop are this session's own: another session's never change them.
    """
    if job.error is not None:
        return  # the caller says it
    cap = job.cap
    if job.curve() is not None and (not need_every_image or cap == job.n):
        return
    if job.working and cap is not None:
        _running(job)
        st.rerun()
    if job.busy and not job.measured:  # the sweep's first images are being measured for the estimate
        with st.spinner("Measuring the exact sweep on its first images for an estimate…"):
            # until the worker has decided: the heavy stages wait for Start, or it goes on with them itself
            while job.busy and not job.measured and job.error is None:
                time.sleep(POLL_SECONDS)
        if job.error is not None:
            return  # the caller says it
        if job.working or job.curve() is not None:  # it went on by itself (the estimate was short), or even finished
            st.rerun()
    _not_running(job, need_every_image=need_every_image, why=why)
    st.stop()


def _running(job: JobView) -> None:
    note = sample_note(job)
    st.button("Stop", key="analysis_stop", on_click=_request, args=(_shown_job(), "stop"), icon=":material/stop_circle:",
              help="Stops after the current batch what only you wait for; what has finished is kept, and Continue "
                   "goes on from there. Another session waiting for the same images keeps its run.")
    line = st.empty()
    bars = {stage: st.progress(0.0, text=_WHAT[stage]) for stage in (SWEEP_STAGE, CURVE_STAGE)}
    precision = (
        f" The sweep runs in bfloat16: on its first images every value stayed within {job.precision_error:.1g} of float32."
        if job.precision != torch.float32 else ""
    )
    st.caption(
        f"Running on {note or f'all {job.n} images'} ({job.handle.device.type}). The other views, which need only "
        f"the first pass, work meanwhile; this page fills in when it ends.{precision}"
    )
    while job.working:
        line.caption(_line_note(job))
        for stage, bar in bars.items():
            status = job.status(stage)
            left = f" · about {duration(status.seconds_left)} left" if status.seconds_left is not None else ""
            state = {DONE: " · done", STOPPED: " · stopping", RUNNING: ""}.get(status.state, " · waiting")
            bar.progress(status.fraction, text=f"{_WHAT[stage]}: {status.done} of {status.total} images{left}{state}")
        time.sleep(POLL_SECONDS)


def _not_running(job: JobView, *, need_every_image: bool, why: str) -> None:
    n, cap = job.n, job.cap
    sweep, curve = job.status(SWEEP_STAGE), job.status(CURVE_STAGE)
    if sweep.state == STOPPED or curve.state == STOPPED:
        stage = sweep if sweep.state == STOPPED else curve
        st.info(
            f"Stopped: the {_WHAT[stage.stage].split(' (')[0].lower()} had finished {stage.done} of {stage.total} images. "
            "What finished is kept; Continue goes on from there."
        )
    elif need_every_image and cap is not None and cap < n:
        st.info(f"{why or 'This page'} uses every image; the exact sweep and the curve ran on {sample_note(job)}.")
    images = n if need_every_image else st.slider(
        "Images for the exact sweep and the pruning curve", min_value=1, max_value=n, value=cap or n, key=CAP_KEY,
        help=(
            "A seeded sample: the first K images of one fixed shuffle of the set, so a larger sample keeps every "
            "image of a smaller one. Strength, patterns and the overview always use every image."
        ),
    )
    estimate = job.estimate(images)
    if estimate is not None:
        many = "image" if estimate.images == 1 else "images"
        st.markdown(
            f"**Estimate** on this {estimate.device.upper()} for {estimate.images} {many}: about "
            f"**{duration(estimate.seconds)}** (the exact sweep {duration(estimate.sweep_seconds)}, the pruning curve "
            f"{duration(estimate.curve_seconds)}), measured on the first images: each adds {estimate.per_image:.2g} s "
            f"to a batch of the sweep, which costs {estimate.per_batch:.2g} s itself."
        )
    label = "Continue" if sweep.state == STOPPED or curve.state == STOPPED else "Start"
    st.button(label, key="analysis_start", type="primary", on_click=_request, args=(_shown_job(), "start", images),
              icon=":material/play_arrow:")


def _shown_job() -> str:
    """The registry's name of the job this session's page shows, as ``apply_request`` compares it."""
    return st.session_state.get(SHOWN_JOB_KEY, "")

