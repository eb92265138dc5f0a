"""The set's analysis as a page reads it: one staged job per model, set and settings, shared by every page and session.

The job (``core.pipeline.staged``) starts on a page's first read. Its first pass gives the
overview's predictions and features, strength, the pattern-map sample and the Taylor
preview; the heavy stages follow on their own when their estimate is short, else they wait
for the user's Start (``ui.stages.heavy_panel``). The jobs live in the server's
``JobRegistry`` (``ui.jobs``), which each session reads as an owner of its own.
"""

from __future__ import annotations

import atexit
import time
import uuid
import weakref

import pandas as pd
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core.inputs.images import ImageSet
from core.measures.importance import HeadImportance
from core.models.handle import ViTHandle
from core.pipeline.analysis import SetAnalysis
from core.pipeline.staged import (
    AUTO_START_SECONDS,
    JobView,
    Preview,
    RunSlots,
    StagedAnalysis,
)
from core.settings import RUNNING_ANALYSES, CaseSettings
from core.study.casestudy import set_labels
from ui import stages
from ui.display import plain, sentence_on_error
from ui.jobs import JobRegistry

__all__ = [
    "ANALYSIS_SETTINGS",
    "JOBS",
    "OWNER_KEY",
    "analysis",
    "analysis_job",
    "importance_so_far",
    "preview",
]

# What the views' analysis of a set is computed with: the defaults of ``CaseSettings``.
# A page's display choices never change it; a pattern sample of another size is drawn
# on its own (``ui.patterns``).
ANALYSIS_SETTINGS = CaseSettings()
OWNER_KEY = "analysis_owner"
# the staged analyses of the sets analysed last, by (model key, set key, settings): shared by
# every session, as a cache is, and run on their own worker threads, at most RUNNING_ANALYSES
# at once (the others wait in line)
JOBS: JobRegistry[StagedAnalysis] = JobRegistry()
_slots = RunSlots(RUNNING_ANALYSES)
_started: weakref.WeakSet[StagedAnalysis] = weakref.WeakSet()  # every job of this process, while alive (a worker holds its job)
_EXIT_WAIT_SECONDS = 60


def _owner() -> str:
    """This browser session's name as an owner of shared jobs: its Stop and its sample cap are its own.

    It starts with Streamlit's session id, which ``ui.stages`` asks the runtime about, and ends
    in a token of its own (a test harness gives every session one id).
    """
    if OWNER_KEY not in st.session_state:
        ctx = get_script_run_ctx()
        st.session_state[OWNER_KEY] = f"{ctx.session_id if ctx is not None else ''} {uuid.uuid4().hex}"
    return st.session_state[OWNER_KEY]


def analysis_job(handle: ViTHandle, image_set: ImageSet, *, heavy: bool = True) -> JobView:
    """The set's staged analysis as this session sees it, started on first use and shared by every page.

    The preview (one pass) starts at once and, unless ``heavy`` is ``False`` (a page that reads
    only the preview), the exact sweep's first images are measured.
    A Start or Stop the user pressed is applied here, to the job the registry holds now. A
    job that failed is forgotten once its sentence is shown, so the next visit tries again.
    """
    key = (handle.key, image_set.key, repr(ANALYSIS_SETTINGS))
    owner = _owner()

    def make() -> StagedAnalysis:
        with sentence_on_error():
            job = StagedAnalysis(
                handle, image_set.pil_images(), set_labels(image_set), ANALYSIS_SETTINGS,
                auto_start=AUTO_START_SECONDS, slots=_slots,
            )
        _started.add(job)
        return job

    job = JOBS.read(key, owner, make)
    view = job.view(owner)
    job.begin(owner, heavy=heavy)  # no-op once the preview (and, if heavy, the measurement) has begun
    stages.apply_request(view, "/".join(key))
    return view


@atexit.register
def _stop_workers() -> None:
    """At exit, every worker stops after its batch: one still inside torch when the interpreter finalizes aborts the process.

    The stop is repeated: a worker that was measuring the estimate may start its heavy stages after it. The wait is bounded.
    """
    jobs, deadline = list(_started), time.monotonic() + _EXIT_WAIT_SECONDS
    while jobs and time.monotonic() < deadline:
        for job in jobs:
            job.stop()
        jobs = [job for job in jobs if not job.wait(timeout=0.5)]


def _failed(view: JobView) -> None:
    """Stop the page with the job's sentence, and forget the job."""
    if view.error is None:
        return
    JOBS.forget(view.job)
    st.error(plain(str(view.error)))
    st.stop()


def _first_pass_done(handle: ViTHandle, image_set: ImageSet, *, heavy: bool = True) -> JobView:
    """The set's job once its first pass has finished (waiting with a progress bar); an error stops the page."""
    job = analysis_job(handle, image_set, heavy=heavy)
    stages.wait_for_preview(job)
    _failed(job)
    return job


def preview(handle: ViTHandle, image_set: ImageSet, *, heavy: bool = True) -> Preview:
    """The set's first pass: predictions and features, strength, the map sample, the Taylor preview (waits for it).

    ``heavy=False`` (the home page) asks the job for this pass alone: the sweep waits for a view to ask.
    """
    result = _first_pass_done(handle, image_set, heavy=heavy).preview
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
