"""The HTML report moved to ``viz.report``; this module keeps older imports working.

``from core.report import render_report`` (and any other name of ``viz.report``) is
forwarded lazily on first use, so importing ``core`` never imports altair or vl_convert.
"""

from __future__ import annotations

import importlib
from typing import Any

_FORWARDED = ("case_charts", "head_values", "mode_chart_key", "render_report")  # what scripts import from here
__all__ = list(_FORWARDED)


def __getattr__(name: str) -> Any:
    """Forward ``core.report.NAME`` to ``viz.report.NAME``, importing viz only now."""
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("viz.report"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_FORWARDED})
