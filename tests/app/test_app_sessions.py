"""Two browser sessions on one server share the computed results of a set's analysis, never its controls.

Each ``AppTest`` is a session of its own (its own ``st.session_state``) over the one
process-wide job registry, as two people on one server are. A Start or Stop click only
stores a request in the session (``ui.stages.REQUEST_KEY``) for the page's run to apply;
where a session's page would wait for a run to end, the test stores that request itself.
"""

from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

import ui.results
import ui.stages
from core.inputs.digits import digit_images, digits_split
from core.pipeline.staged import (
    CURVE_STAGE,
    DONE,
    PREVIEW_STAGE,
    STOPPED,
    SWEEP_STAGE,
    WAITING,
    RunSlots,
    StagedAnalysis,
)
from helpers.app import captions, notice_texts, started_app
from helpers.images import encode

IMPORTANCE, STRENGTH = "pages/1_Head_Importance.py", "pages/2_Attention_Strength.py"


@pytest.fixture
def gate(monkeypatch) -> threading.Event:
    """The sweep's batches after the estimate's wait for this event: a run that stays under way while sessions act."""
    opened = threading.Event()
    original = StagedAnalysis._sweep_images

    def gated(self, indices, **kwargs):
        if not kwargs.get("first"):
            assert opened.wait(timeout=300), "the test never let the sweep go on"
        original(self, indices, **kwargs)

    monkeypatch.setattr(StagedAnalysis, "_sweep_images", gated)
    return opened


@pytest.fixture
def registry(monkeypatch):
    """The heavy stages wait for Start, with an empty registry before and after."""
    monkeypatch.setattr(ui.results, "AUTO_START_SECONDS", 0.0)
    ui.results.JOBS.clear()
    yield ui.results.JOBS
    for job in list(ui.results.JOBS.values()):
        job.stop()
        job.wait(timeout=300)
    ui.results.JOBS.clear()


def _session(monkeypatch, page: str = IMPORTANCE) -> AppTest:
    at = started_app(monkeypatch, 600)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def _press(at: AppTest, action: str, cap: int | None = None, page: str = STRENGTH) -> None:
    """What the Start or Stop button's callback does, then a run of ``page`` (one that does not wait for the heavy stages)."""
    at.session_state[ui.stages.REQUEST_KEY] = (at.session_state[ui.stages.SHOWN_JOB_KEY], action, cap)
    at.switch_page(page).run()
    assert not at.exception, at.exception


def _only_job(registry) -> StagedAnalysis:
    assert len(registry) == 1
    return next(iter(registry.values()))


def _owner(at: AppTest) -> str:
    return at.session_state[ui.results.OWNER_KEY]


def test_a_stop_in_one_session_does_not_stop_the_run_another_session_waits_for(monkeypatch, registry, gate) -> None:
    a, b = _session(monkeypatch), _session(monkeypatch)
    job = _only_job(registry)
    _press(a, "start", 360)
    _press(b, "stop", page=IMPORTANCE)  # B follows A's run without a sample of its own, then stops following it
    assert "Stopped: the exact sweep had finished" in notice_texts(b) and b.button(key="analysis_start").label == "Continue"
    gate.set()
    assert job.wait(timeout=600) and job.error is None
    assert job.status(SWEEP_STAGE, _owner(a)).state == DONE and job.status(CURVE_STAGE, _owner(a)).state == DONE
    a.switch_page(IMPORTANCE).run()
    assert "probability" in a.selectbox(key="importance_metric").options and "over the 360 images" in captions(a)


def test_a_smaller_cap_in_one_session_never_lowers_what_another_reads(monkeypatch, registry, gate) -> None:
    a, b = _session(monkeypatch), _session(monkeypatch)
    job = _only_job(registry)
    _press(a, "start", 40)
    _press(b, "stop", page=IMPORTANCE)
    b.slider(key="analysis_cap").set_value(1).run()
    threading.Timer(2.0, gate.set).start()  # B's page waits for its own sample's stages, served first, as A's goes on
    b.button(key="analysis_start").click().run()
    assert not b.exception, b.exception
    assert "over a seeded sample of 1 of the 360 images" in captions(b)
    assert job.wait(timeout=600) and job.error is None
    a.switch_page(IMPORTANCE).run()  # a reload of A's page
    assert "over a seeded sample of 40 of the 360 images" in captions(a) and "sample of 1 " not in captions(a)
    assert job.cap_for(_owner(a)) == 40 and job.cap_for(_owner(b)) == 1
    # a third session, with no sample of its own, reads the largest one started
    c = _session(monkeypatch)
    assert "over a seeded sample of 40 of the 360 images" in captions(c)


def test_a_stop_while_another_sessions_start_is_queued_ends_after_that_start_only(monkeypatch, registry, gate) -> None:
    a, b = _session(monkeypatch), _session(monkeypatch)
    job = _only_job(registry)
    _press(a, "start", 360)  # the worker is in A's first batch, held by the gate
    _press(b, "start", 20)  # queued behind that batch
    _press(a, "stop")
    gate.set()
    assert job.wait(timeout=600) and job.error is None
    a_sweep, b_curve = job.status(SWEEP_STAGE, _owner(a)), job.status(CURVE_STAGE, _owner(b))
    assert b_curve.state == DONE and job.curve(_owner(b)) is not None  # B's start was not lost
    assert a_sweep.state == STOPPED and a_sweep.done < 360  # nor was A's stop: the rest of A's 360 was not swept
    assert job._sweep.swept.sum() <= 4 + 64 + 20  # the estimate's four, A's batch under way, B's sample


def _upload_set(at: AppTest, first: int) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[first:first + 4])
    at.switch_page("streamlit_app.py").run()
    if at.radio(key="image_source").value != "Upload images":
        at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(f"s{first}-{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    at.run()
    assert not at.exception, at.exception


def test_a_job_a_page_shows_is_never_dropped_and_start_reaches_the_job_in_the_registry(monkeypatch, registry) -> None:
    a = _session(monkeypatch)  # shows Start for the sample set
    (key, shown), = registry.items()
    c = started_app(monkeypatch, 600)
    for first in range(0, 20, 4):  # five other sets: more than the registry keeps idle
        _upload_set(c, first)
        c.switch_page(STRENGTH).run()
        assert not c.exception, c.exception
    # the oldest idle job, which would go first, stays while A's page reads it
    assert len(registry) > registry.idle_kept and registry[key] is shown
    # unread for longer than SHOWN_SECONDS (a tab left open elsewhere), the next page run of anyone drops it
    monkeypatch.setattr(registry, "clock", lambda: time.monotonic() + registry.shown_seconds + 1)
    c.run()
    assert key not in registry
    # A's Start, pressed on the page that showed the dropped job, runs the job the registry holds: no orphan
    a.slider(key="analysis_cap").set_value(40).run()
    a.button(key="analysis_start").click().run()
    assert not a.exception, a.exception
    assert registry[key] is not shown and registry[key].curve(_owner(a)) is not None and shown.cap is None
    assert "over a seeded sample of 40 of the 360 images" in captions(a)


def test_analyses_beyond_the_servers_limit_wait_in_line_and_say_so(monkeypatch, registry, gate) -> None:
    monkeypatch.setattr(ui.results, "_slots", RunSlots(1))
    a = _session(monkeypatch)
    job_a = _only_job(registry)
    _press(a, "start", 360)  # A's job holds the only slot, its sweep held by the gate
    assert job_a.working_for(_owner(a))
    b = started_app(monkeypatch, 600)
    seen: dict = {}

    def while_b_waits() -> None:  # B's overview of its upload waits for the set's first pass meanwhile
        for _ in range(600):
            others = [j for j in registry.values() if j is not job_a]
            if others and others[0].place_in_line == 1:
                job_b = seen["job"] = others[0]
                seen["preview"] = job_b.status(PREVIEW_STAGE).state
                seen["note"] = ui.stages._line_note(job_b.view("someone"))
                break
            threading.Event().wait(0.1)
        job_a.view(_owner(a)).stop()  # what A's Stop does: A's batch ends and the slot passes to B
        gate.set()

    threading.Thread(target=while_b_waits, daemon=True).start()
    _upload_set(b, 0)
    b.switch_page(STRENGTH).run()
    assert not b.exception, b.exception
    job_b = seen["job"]
    assert seen["preview"] == WAITING and seen["note"] == (
        "Waiting for a free slot: 1 analysis runs at once on this server, and this one is next in line. "
        "It starts by itself."
    )
    assert job_b.preview is not None and job_b.error is None and job_b.place_in_line is None
    assert "over the 4 images" in captions(b)
