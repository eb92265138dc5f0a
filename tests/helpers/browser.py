"""The browser tier's browser and server: Debian's ``chromium``, driven by Playwright through
``executable_path``, and ``streamlit run`` on a free localhost port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import pytest

from helpers.data import APP, ROOT

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


def offsite_requests(target, server: str) -> list[str]:
    """Let ``target`` (a Playwright page or browser context) reach ``server`` only: every other request is
    aborted and its URL added to the returned list, which a test asserts stays empty."""
    offsite: list[str] = []

    def only_the_server(route) -> None:
        if route.request.url.startswith(server):
            route.continue_()
        else:
            offsite.append(route.request.url)
            route.abort()

    target.route("**/*", only_the_server)
    return offsite


@contextlib.contextmanager
def started_server(
    log_path: Path, env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """``streamlit run`` of the app on a free localhost port, offline; yields its base URL once it is healthy.

    ``env`` adds to (or overrides) this process's environment, ``extra_args`` to the command line.
    The server's output goes to ``log_path``; once the server has stopped, a traceback in it fails the test.
    """
    port = _free_port()
    server_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "streamlit", "run", APP,
                "--server.port", str(port),
                "--server.address", "127.0.0.1",
                "--server.headless", "true",
                *extra_args,
            ],
            cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for_health(url, proc)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    server_log = log_path.read_text(errors="replace")
    assert "Traceback" not in server_log, server_log[-4000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_health(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with code {proc.returncode} before serving")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail("streamlit did not answer its health check within two minutes")
