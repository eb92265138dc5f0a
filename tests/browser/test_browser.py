"""Real-browser tier: ``streamlit run`` on a free localhost port, driven by headless Chromium.

Debian's ``chromium`` package is the browser (``make test`` installs it with apt-get when
it is missing); Playwright's Python package drives it through ``executable_path``, so
nothing is downloaded. The server runs with a small ``server.maxUploadSize`` so that the
server's own upload rule can be exercised with a file of a few megabytes; every other
setting comes from ``.streamlit/config.toml``.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from core.inputs.digits import digit_images, digits_split
from helpers.browser import (
    CHROMIUM_ARGS,
    chromium_path,
    offsite_requests,
    started_server,
)
from helpers.data import ROOT
from helpers.images import encode

PAGES = sorted((ROOT / "pages").glob("[0-9]*_*.py"))
SERVER_UPLOAD_LIMIT_MB = 2
PAGE_TIMEOUT_MS = 300_000
ERROR_SELECTORS = ('[data-testid="stException"]', '[data-testid="stAlertContentError"]')


def _url_path(page: Path) -> str:
    """Streamlit's URL path of a page file: ``1_Head_Importance.py`` -> ``Head_Importance``."""
    return re.sub(r"^\d+_", "", page.stem)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    with started_server(log_path, extra_args=["--server.maxUploadSize", str(SERVER_UPLOAD_LIMIT_MB)]) as url:
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Screenshots land in ``$HEADSCOPE_SCREENSHOTS`` when set (to look at them), else a temp dir."""
    chosen = os.environ.get("HEADSCOPE_SCREENSHOTS")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path



def _digit_files(indices: list[int], names: list[str] | None = None) -> list[dict]:
    test = digits_split(0, 0.2).test
    images, _ = digit_images(np.array([int(test[i]) for i in indices]))
    names = names or [f"digit_{i}.png" for i in indices]
    return [{"name": name, "mimeType": "image/png", "buffer": encode(im)} for name, im in zip(names, images)]


# Upload names a hostile user would pick: Markdown that would render a link and fetch an
# image, and names that vega-tooltip would fetch if a tooltip showed them as <img src=NAME>
HOSTILE_UPLOADS = ["x` [click me](https:host) ![](https:host) `.png", "https:host?1.png", "https:host?2.png"]
_HOVER_GRID = (12, 8)
_TOOLTIP = "document.getElementById('vg-tooltip-element')?.innerHTML ?? ''"


def _hover_every_chart(page) -> set[str]:
    """Move the mouse over a grid across every chart on the page; the tooltips' markup that showed."""
    tooltips: set[str] = set()
    for chart in page.query_selector_all('[data-testid="stVegaLiteChart"]'):
        chart.scroll_into_view_if_needed()
        box = chart.bounding_box()
        if box is None:
            continue
        columns, rows = _HOVER_GRID
        for i in range(columns):
            for j in range(rows):
                page.mouse.move(box["x"] + box["width"] * (i + 0.5) / columns, box["y"] + box["height"] * (j + 0.5) / rows)
                tooltip = page.evaluate(_TOOLTIP)
                if tooltip:
                    tooltips.add(tooltip)
    return tooltips


# --- the synchronous, single-session tests ------------------------------------------


def _settle(page, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    """Wait until the script run ends: Streamlit's status widget ("Running...") is gone for a while."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if page.query_selector('[data-testid="stStatusWidget"]') is None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2.0:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(250)
    raise AssertionError("the page was still running after the timeout")


def _assert_no_error(page, where: str) -> None:
    for selector in ERROR_SELECTORS:
        found = page.query_selector_all(selector)
        assert not found, f"{where}: {[el.inner_text() for el in found]}"
    assert "Traceback" not in page.inner_text("body"), f"{where}: a traceback is shown"


def _page_url(base: str, page_file: Path) -> re.Pattern[str]:
    """The page's URL with whatever query parameters the page writes (the state a link keeps).

    The first sidebar link to a page is the page list's; the Copy link panel may link the Case study page again.
    """
    return re.compile(rf"{re.escape(base)}/{_url_path(page_file)}(\?.*)?$")


def _open_page(page, base: str, page_file: Path) -> None:
    """Follow the sidebar link, as a user does (a fresh URL would start a new session)."""
    page.locator(f'[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"][href$="{_url_path(page_file)}"]').first.click()
    page.wait_for_url(_page_url(base, page_file))
    _settle(page)


def test_pages_exist_for_every_view() -> None:
    assert [_url_path(p) for p in PAGES][:3] == ["Head_Importance", "Attention_Strength", "Attention_Patterns"]


def test_upload_then_visit_every_page(server: str, browser, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    offsite = offsite_requests(page, server)
    page.goto(server)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=PAGE_TIMEOUT_MS)
    _settle(page)
    _assert_no_error(page, "home")

    page.get_by_text("Upload images", exact=True).click()
    page.wait_for_selector('[data-testid="stFileUploaderDropzoneInput"]', state="attached")
    page.set_input_files('[data-testid="stFileUploaderDropzoneInput"]', files=_digit_files([0, 1, 2], HOSTILE_UPLOADS))
    page.wait_for_selector("text=3 images ready", timeout=PAGE_TIMEOUT_MS)
    _settle(page)
    _assert_no_error(page, "home after the upload")
    # the hostile name is shown as the text it is: no link, no image fetched from it
    assert "[click me](https:host) ![](https:host)" in page.inner_text('[data-testid="stMain"]')
    tooltips = _hover_every_chart(page)
    page.screenshot(path=str(shots / "0_home.png"), full_page=True)

    for page_file in PAGES:
        _open_page(page, server, page_file)
        _assert_no_error(page, page_file.name)
        # the upload stays the analysed set on every page
        assert "Uploaded images (3 images)" in page.inner_text('[data-testid="stSidebar"]')
        tooltips |= _hover_every_chart(page)
        page.screenshot(path=str(shots / f"{page_file.stem}.png"), full_page=True)
        live = page.eval_on_selector_all('[data-testid="stMain"] a[href*="host"]:not([href^="#"]), img[src*="host"]', "(els) => els.map((el) => el.outerHTML)")
        assert not live, (page_file.name, live)
    page.wait_for_timeout(500)  # time for any fetch a tooltip started to be requested
    assert offsite == []
    assert tooltips  # the hover reached the marks
    assert not [tip for tip in tooltips if "<img" in tip or "<h2" in tip]

    page.locator('[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"]').first.click()
    _settle(page)
    assert "Uploaded images (3 images)" in page.inner_text('[data-testid="stMain"]')
    _assert_no_error(page, "home after the tour")
    page.close()


def test_server_refuses_an_upload_over_its_limit(server: str, browser) -> None:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.goto(server)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=PAGE_TIMEOUT_MS)
    page.get_by_text("Upload images", exact=True).click()
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise))
    assert len(big) > SERVER_UPLOAD_LIMIT_MB * 2**20  # under the widget's 50 MB, over the server's limit
    page.set_input_files(
        '[data-testid="stFileUploaderDropzoneInput"]',
        files=[{"name": "big.png", "mimeType": "image/png", "buffer": big}],
    )
    page.wait_for_selector('[data-testid="stFileChipIconError"]', timeout=60_000)
    assert "413" in page.inner_text('[data-testid="stFileUploader"]')
    assert "images ready" not in page.inner_text('[data-testid="stSidebar"]')

    # the refused file never reached the app, which keeps working for the next upload
    page.locator('[data-testid="stFileChipDeleteBtn"] button, [data-testid="stFileChipDeleteBtn"]').first.click()
    page.set_input_files('[data-testid="stFileUploaderDropzoneInput"]', files=_digit_files([5]))
    page.wait_for_selector("text=1 images ready", timeout=PAGE_TIMEOUT_MS)
    _settle(page)
    for selector in ERROR_SELECTORS:
        assert not page.query_selector_all(selector)
    page.close()


# --- three sessions at once ------------------------------------------------------------


async def _one_session(browser, base: str, digits: list[int], shots: Path, tag: str) -> list[str]:
    """Upload a session's own digits and visit every page; returns the problems seen."""
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"{tag}: page error {err}"))
    await page.goto(base)
    await page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=PAGE_TIMEOUT_MS)
    await page.get_by_text("Upload images", exact=True).click()
    await page.wait_for_selector('[data-testid="stFileUploaderDropzoneInput"]', state="attached")
    await page.set_input_files('[data-testid="stFileUploaderDropzoneInput"]', files=_digit_files(digits))
    await page.wait_for_selector(f"text={len(digits)} images ready", timeout=PAGE_TIMEOUT_MS)
    for page_file in PAGES:
        await page.locator(f'[data-testid="stSidebar"] a[data-testid="stPageLink-NavLink"][href$="{_url_path(page_file)}"]').first.click()
        await page.wait_for_url(_page_url(base, page_file))
        await _settle_async(page)
        for selector in ERROR_SELECTORS:
            for element in await page.query_selector_all(selector):
                problems.append(f"{tag} {page_file.name}: {await element.inner_text()}")
        sidebar = await page.inner_text('[data-testid="stSidebar"]')
        if f"Uploaded images ({len(digits)} images)" not in sidebar:
            problems.append(f"{tag} {page_file.name}: another session's images are shown")
    await page.screenshot(path=str(shots / f"session_{tag}.png"), full_page=True)
    await context.close()
    return problems


async def _settle_async(page, timeout_ms: int = PAGE_TIMEOUT_MS) -> None:
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        if await page.query_selector('[data-testid="stStatusWidget"]') is None:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2.0:
                return
        else:
            quiet_since = None
        await page.wait_for_timeout(250)
    raise AssertionError("the page was still running after the timeout")


def test_three_sessions_at_once(server: str, shots: Path) -> None:
    from playwright.async_api import async_playwright

    async def run() -> list[str]:
        async with async_playwright() as playwright:
            chromium = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                results = await asyncio.gather(
                    _one_session(chromium, server, [3, 4], shots, "a"),
                    _one_session(chromium, server, [6, 7, 8], shots, "b"),
                    _one_session(chromium, server, [10, 11, 12, 13], shots, "c"),
                )
            finally:
                await chromium.close()
        return [problem for problems in results for problem in problems]

    # the module's synchronous Playwright keeps an event loop on this thread: run on another
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(asyncio.run, run()).result() == []
