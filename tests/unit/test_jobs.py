"""The job registry's policy, without Streamlit: a job a session shows or that computes is never dropped; idle ones go.

The jobs are stand-ins with the two properties the registry reads (``busy``, ``interrupted``),
and the clock is a number the test moves, so every case is exact and instant.
"""

from __future__ import annotations

import random
import subprocess
import sys
from dataclasses import dataclass

import pytest

from helpers.data import ROOT
from ui.jobs import IDLE_KEPT, MOST_KEPT, SHOWN_SECONDS, JobRegistry


@dataclass
class FakeJob:
    name: str
    busy: bool = False
    interrupted: bool = False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry(clock: Clock) -> JobRegistry[FakeJob]:
    return JobRegistry(clock=clock)


def _read(registry: JobRegistry[FakeJob], key: str, owner: str = "someone", **state) -> FakeJob:
    return registry.read(key, owner, lambda: FakeJob(key, **state))


def test_the_defaults_are_the_servers_policy() -> None:
    registry = JobRegistry()
    assert (registry.idle_kept, registry.most_kept, registry.shown_seconds) == (IDLE_KEPT, MOST_KEPT, SHOWN_SECONDS)
    assert (IDLE_KEPT, MOST_KEPT, SHOWN_SECONDS) == (4, 16, 1800)


def test_a_read_makes_a_job_once_and_gives_it_back_after(registry) -> None:
    first = _read(registry, "a", "one")
    assert _read(registry, "a", "two") is first and list(registry) == ["a"] and registry["a"] is first


def test_idle_jobs_nobody_reads_any_more_go_oldest_first(registry, clock) -> None:
    for key in "abcdef":  # one session goes through six sets, a minute apart
        _read(registry, key, "one")
        clock.now += 60
    assert list(registry) == list("abcdef")  # each was read within SHOWN_SECONDS: all kept
    clock.now += SHOWN_SECONDS
    _read(registry, "f", "one")  # the session's page runs again, half an hour later
    assert list(registry) == ["c", "d", "e", "f"]  # IDLE_KEPT jobs: the two read longest ago went


def test_an_interrupted_job_goes_after_the_other_idle_ones(registry, clock) -> None:
    _read(registry, "stopped", interrupted=True)
    for key in "bcde":
        _read(registry, key)
    clock.now += SHOWN_SECONDS + 1
    _read(registry, "f")
    assert "stopped" in registry and "b" not in registry and len(registry) == IDLE_KEPT


def test_a_job_that_computes_is_never_dropped(registry, clock) -> None:
    running = _read(registry, "running", "gone", busy=True)
    for i in range(3 * MOST_KEPT):  # many sets, long after anyone read the running job
        clock.now += SHOWN_SECONDS + 1
        _read(registry, f"set {i}", "other")
    assert registry["running"] is running
    running.busy = False  # it has finished, and nobody shows it: the next read drops it
    _read(registry, "one more", "other")
    assert "running" not in registry


def test_the_job_a_session_shows_is_never_dropped_whatever_the_others_do(registry, clock) -> None:
    shown = _read(registry, "shown", "alice")
    for i in range(3 * MOST_KEPT):  # another session reads many sets within the half hour
        clock.now += 1
        _read(registry, f"set {i}", "bob")
    assert registry["shown"] is shown
    assert len(registry) == MOST_KEPT  # the jobs read lately, up to MOST_KEPT, and Alice's on top
    assert list(registry)[1:] == [f"set {i}" for i in range(2 * MOST_KEPT + 1, 3 * MOST_KEPT)]


def test_a_job_is_shown_no_more_once_its_session_moved_on_or_left(registry, clock) -> None:
    _read(registry, "first", "alice")
    _read(registry, "second", "alice")  # Alice's page now shows another set
    for i in range(MOST_KEPT):
        _read(registry, f"set {i}", "bob")
    assert "first" not in registry and "second" in registry
    clock.now += SHOWN_SECONDS + 1  # Alice closed her tab: her page reads nothing any more
    for i in range(IDLE_KEPT):
        _read(registry, f"later {i}", "bob")
    assert "second" not in registry


def test_an_error_while_making_a_job_leaves_the_registry_as_it_was(registry) -> None:
    kept = _read(registry, "a")

    def fails() -> FakeJob:
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError):
        registry.read("b", "someone", fails)
    assert list(registry) == ["a"] and registry["a"] is kept


def test_a_forgotten_job_is_made_anew_on_the_next_read(registry) -> None:
    failed = _read(registry, "a")
    registry.forget(failed)
    assert "a" not in registry and _read(registry, "a") is not failed


@pytest.mark.parametrize("seed", range(5))
def test_a_random_day_on_a_server_keeps_every_shown_and_running_job(seed: int, clock) -> None:
    """Sessions come and go over many sets while jobs start and end; after every read the policy holds."""
    rng = random.Random(seed)
    registry: JobRegistry[FakeJob] = JobRegistry(clock=clock)
    shown_by: dict[str, tuple[str, float]] = {}  # each session's last read
    read_at: dict[str, float] = {}  # each set's last read
    for _ in range(2000):
        clock.now += rng.choice([0.5, 5, 60, 600, SHOWN_SECONDS / 2])
        owner, key = f"session {rng.randrange(12)}", f"set {rng.randrange(40)}"
        running = {name for name, held_job in registry.items() if held_job.busy}
        job = _read(registry, key, owner)
        shown_by[owner], read_at[key] = (key, clock.now), clock.now
        held = dict(registry.items())
        shown = {name for name, at in shown_by.values() if clock.now - at <= SHOWN_SECONDS}
        assert running <= held.keys() and shown <= held.keys()
        idle = [name for name, held_job in held.items() if not held_job.busy and name not in shown]
        unread = [name for name in idle if clock.now - read_at[name] > SHOWN_SECONDS]
        assert not unread or len(held) <= IDLE_KEPT
        assert not idle or len(held) <= MOST_KEPT
        for held_job in held.values():  # between two page runs, workers end; the job just read may start one
            held_job.busy = held_job.busy and rng.random() < 0.8
        job.busy = job.busy or rng.random() < 0.1
        job.interrupted = job.interrupted or rng.random() < 0.05


def test_the_registry_module_needs_no_streamlit() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, ui.jobs; print(sorted({m.split('.')[0] for m in sys.modules} & {'streamlit', 'torch', 'core'}))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True,
    )
    assert done.stdout.strip() == "[]"
