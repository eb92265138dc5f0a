"""The browser of the browser tier: Debian's ``chromium``, driven by Playwright through ``executable_path``."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # this machine's network is closed: without these Chromium keeps dialling out
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    """The path of the Chromium executable (``HEADSCOPE_CHROMIUM`` overrides); fails the test when there is none."""
    path = os.environ.get("HEADSCOPE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: `make test` installs it (apt-get install chromium).")
    return path
