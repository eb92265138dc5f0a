"""The screenshot script (``scripts/screenshots.py``) as a user runs it: a subprocess that starts the app,
drives Chromium and writes cropped PNGs; here on the demo model and its two cheapest images (the home page).

The script blocks every request that does not go to its server and says how many it blocked on stderr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.browser import chromium_path
from helpers.data import ROOT

SCRIPT = ROOT / "scripts" / "screenshots.py"
MAX_BYTES = 300 * 1024  # what the README's images may weigh
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.slow
def test_demo_home_page_images(tmp_path: Path) -> None:
    done = _run(
        "--model", "demo", "--only", "overview,app", "--out", str(tmp_path),
        env={"HEADSCOPE_CHROMIUM": chromium_path()}, timeout=150,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "off-site requests blocked: 0" in done.stderr, done.stderr[-4000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["app.png", "overview.png"]
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE), path.name
        assert len(data) < MAX_BYTES, (path.name, len(data))
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 400 < image.width <= 1200 and image.height > 300, (path.name, image.size)
            pixels = np.asarray(image.convert("RGB"))
        assert pixels.std() > 0, f"{path.name} is one flat colour"
        assert path.name in done.stdout  # the table of sizes


def test_unknown_image_name_is_refused(tmp_path: Path) -> None:
    done = _run("--only", "overview,heatmap", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "heatmap" in done.stderr and "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())


def test_missing_chromium_is_one_sentence(tmp_path: Path) -> None:
    done = _run("--model", "demo", "--only", "overview", "--out", str(tmp_path), env={"HEADSCOPE_CHROMIUM": str(tmp_path / "none")})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: Chromium is not at {tmp_path / 'none'}: install Debian's chromium (apt-get install chromium) or point "
        "HEADSCOPE_CHROMIUM at a Chromium executable."
    ]
    assert not list(tmp_path.iterdir())
