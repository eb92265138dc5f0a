"""The registry of the staged analyses a server's sessions share: one job per key, kept while someone needs it.

A job is a ``core.pipeline.staged.StagedAnalysis`` (anything with ``busy`` and
``interrupted`` does). The registry is shared by every browser session, as a cache is;
it keeps the jobs that compute, the job each session's page shows, and a few idle ones,
and drops the others oldest first. No streamlit here: the clock and the session that
reads (its owner) are given, so the policy is tested on its own (``tests/unit/test_jobs.py``);
``ui.results`` holds the server's registry.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Callable, Generic, Hashable, Iterator, Protocol, TypeVar

__all__ = ["IDLE_KEPT", "MOST_KEPT", "SHOWN_SECONDS", "Job", "JobRegistry"]

IDLE_KEPT = 4  # idle jobs kept that no page read lately; a job that computes, or that a page shows, is not dropped
MOST_KEPT = 16  # jobs kept at all: past this, idle jobs read lately go too, unless a session's page shows them
# a page reads its job on every run and every poll; a read older than this (a closed tab) protects it no more
SHOWN_SECONDS = 30 * 60


class Job(Protocol):
    """What the registry reads of a job to decide whether it may go."""

    @property
    def busy(self) -> bool:
        """Computing, or waiting in line to: dropping it would lose work under way."""

    @property
    def interrupted(self) -> bool:
        """Stopped before its stages finished: partial work, dropped after the jobs that have none."""


J = TypeVar("J", bound=Job)


class JobRegistry(Mapping[Hashable, J], Generic[J]):
    """Jobs by key, newest read last, shared by every session; safe to use from any thread.

    ``read(key, owner, make)`` is how a session's page gets its job: it records that
    ``owner`` shows that job now, and drops what nobody needs. A job is never dropped while
    it is ``busy``, nor while it is the last job a session read, read within ``shown_seconds``
    (the job that session's page shows). Of the others, at most ``idle_kept`` are kept when
    nobody read them within ``shown_seconds``, and at most ``most_kept`` in all; the oldest
    read goes first, an ``interrupted`` one last. A dropped job costs its results, never a
    click: the next read of its key makes a new one.
    """

    def __init__(
        self,
        *,
        idle_kept: int = IDLE_KEPT,
        most_kept: int = MOST_KEPT,
        shown_seconds: float = SHOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.idle_kept, self.most_kept, self.shown_seconds = idle_kept, most_kept, shown_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: OrderedDict[Hashable, J] = OrderedDict()  # oldest read first
        self._read_at: dict[Hashable, float] = {}  # each job's last read, by anyone
        self._shown: dict[Hashable, tuple[Hashable, float]] = {}  # each owner's last read: the job its page shows

    def read(self, key: Hashable, owner: Hashable, make: Callable[[], J]) -> J:
        """The job under ``key``, made by ``make()`` when there is none, as ``owner``'s page shows it now.

        An error in ``make`` leaves the registry as it was.
        """
        with self._lock:
            now = self.clock()
            job = self._jobs.get(key)
            if job is None:
                job = self._jobs[key] = make()
            self._jobs.move_to_end(key)
            self._read_at[key] = now
            self._shown[owner] = (key, now)
            self._evict(now)
            return job

    def forget(self, job: J) -> None:
        """Drop ``job`` (one that failed, so that the next read tries again)."""
        with self._lock:
            for key in [key for key, held in self._jobs.items() if held is job]:
                self._drop(key)

    def clear(self) -> None:
        """Drop every job (their workers go on until they end); for tests."""
        with self._lock:
            self._jobs.clear()
            self._read_at.clear()
            self._shown.clear()

    def __getitem__(self, key: Hashable) -> J:
        with self._lock:
            return self._jobs[key]

    def __iter__(self) -> Iterator[Hashable]:
        with self._lock:
            return iter(list(self._jobs))

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def _evict(self, now: float) -> None:
        """Drop the jobs nobody needs, as the class says. Hold the lock."""
        self._shown = {owner: read for owner, read in self._shown.items() if now - read[1] <= self.shown_seconds}
        shown = {key for key, _ in self._shown.values()}
        idle = [key for key, job in self._jobs.items() if not job.busy and key not in shown]
        unread = [key for key in idle if now - self._read_at[key] > self.shown_seconds]
        for candidates, most in ((unread, self.idle_kept), (idle, self.most_kept)):
            candidates = [key for key in candidates if key in self._jobs]
            while len(self._jobs) > most and candidates:
                first = next((key for key in candidates if not self._jobs[key].interrupted), candidates[0])
                candidates.remove(first)
                self._drop(first)

    def _drop(self, key: Hashable) -> None:
        """Hold the lock."""
        del self._jobs[key]
        del self._read_at[key]
