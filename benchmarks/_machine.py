"""Facts about the machine a benchmark ran on, printed beside its figures."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took (wall clock)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the machine was around a measurement."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
