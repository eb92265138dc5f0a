"""Links that open the same view (``ui.links``), in a real browser: a link copied from one session opens
the same focus head in a fresh one, a link names a library study, and a hostile link is only text.

Each test opens its pages in a new browser context (new cookies, so a new Streamlit session), as a
colleague opening the link would. The demo's analysis runs once per server and every session shares
it; the pages are read as soon as what a test asserts is drawn, while the heavy stages still run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from core.study.library import ENV_LIBRARY, Library
from helpers.browser import (
    offsite_requests,
    started_server,
)
from helpers.data import DATA

PAGE_TIMEOUT_MS = 300_000
STUDY_TITLE = "Shared digits study"
# the heatmap's cell of L2H3, and the red outline the page draws around the focus head (Vega's SVG
# marks carry their encoded fields as aria-labels)
L2H3_CELL = '[data-testid="stVegaLiteChart"] path[aria-label^="head: 3; layer: 2;"]'
L2H3_OUTLINE = '[data-testid="stVegaLiteChart"] path[stroke="#d62728"][aria-label="head: 3; layer: 2"]'
HOSTILE_QUERY = "head=L99H0&model=%2Fetc%2Fpasswd&image=%5Bx%5D(http%3A%2F%2Fevil.example)"
WORD_JOINER = "\u2060"  # ``ui.display.plain`` puts it into a bare link's scheme, so it shows as text


@pytest.fixture(scope="module")
def library_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def shared_study(library_folder: Path) -> str:
    """The id of the one study in the server's library."""
    return Library(library_folder).add((DATA / "bundle_v4_demo.zip").read_bytes(), title=STUDY_TITLE).id


@pytest.fixture(scope="module")
def server(tmp_path_factory, library_folder: Path, shared_study: str) -> Iterator[str]:
    """The app with the library holding ``shared_study`` before it starts."""
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    with started_server(log_path, env={ENV_LIBRARY: str(library_folder)}) as url:
        yield url


def _fresh_page(browser, server: str) -> tuple[Page, list[str]]:
    """A page in a new browser context (a new session) that reaches the server only, and the list of
    every other URL it asks for."""
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    offsite = offsite_requests(context, server)
    return context.new_page(), offsite


def _screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """A full-page screenshot in the test's folder, copied to ``$HEADSCOPE_SCREENSHOTS`` when it is set."""
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    chosen = os.environ.get("HEADSCOPE_SCREENSHOTS")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(chosen) / name)
    return path


def _copied_link(page: Page, holding: str) -> str:
    """The URL in the sidebar's "Copy link" expander, as a person would copy it, once it holds ``holding``."""
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Copy link", exact=True).click()
    code = sidebar.get_by_test_id("stCode")
    expect(code).to_contain_text(holding, timeout=PAGE_TIMEOUT_MS)
    return code.inner_text().strip()


def _main_text(page: Page) -> str:
    return page.get_by_test_id("stMain").inner_text().replace(WORD_JOINER, "")


def test_copied_link_opens_the_same_head_in_a_new_session(browser, server: str, tmp_path: Path) -> None:
    page, offsite = _fresh_page(browser, server)
    page.goto(f"{server}/Head_Importance")
    page.locator(L2H3_CELL).click(timeout=PAGE_TIMEOUT_MS)  # the heatmap: "click to focus"
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Focus head L2H3", timeout=PAGE_TIMEOUT_MS)
    # while the click's rerun draws the page, the last run's radio may still stand beside the new one
    scope = page.get_by_text("Focus image (local)", exact=True)
    expect(scope).to_have_count(1, timeout=PAGE_TIMEOUT_MS)
    scope.click()
    link = _copied_link(page, "scope=image")
    page.context.close()
    assert offsite == []
    assert "head=L2H3" in link
    assert urlsplit(link).path == "/Head_Importance"
    params = parse_qs(urlsplit(link).query)
    assert params["model"] == ["demo"] and params["scope"] == ["image"]

    page, offsite = _fresh_page(browser, server)
    page.goto(link)
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Focus head L2H3", timeout=PAGE_TIMEOUT_MS)
    # the charts show it: the heatmap outlines L2H3, B2 prunes it, and B1 is on the focus image
    page.wait_for_selector(L2H3_OUTLINE, timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_text("B2 · Partial pruning of L2H3")).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    expect(page.get_by_role("radio", name="Focus image (local)")).to_be_checked()
    assert page.locator('[data-testid="stException"]').count() == 0
    _screenshot(page, tmp_path, "link_opened_L2H3.png")
    page.context.close()
    assert offsite == []


def test_link_opens_a_library_study(browser, server: str, shared_study: str) -> None:
    page, offsite = _fresh_page(browser, server)
    page.goto(f"{server}/Case_Study?study={shared_study}")
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("Showing the library study", timeout=PAGE_TIMEOUT_MS)
    expect(main).to_contain_text(STUDY_TITLE)
    assert f"study={shared_study}" in _copied_link(page, "study=")
    page.get_by_test_id("stSidebar").locator('a[data-testid="stPageLink-NavLink"][href$="Library"]').click()
    page.wait_for_url(re.compile(rf"{re.escape(server)}/Library(\?.*)?$"))  # the page writes its state into the URL
    # the picked study's card: a heading the Case study page does not have
    expect(main.get_by_role("heading", name=STUDY_TITLE)).to_be_visible(timeout=PAGE_TIMEOUT_MS)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.context.close()
    assert offsite == []


def test_hostile_link_is_shown_as_text(browser, server: str, tmp_path: Path) -> None:
    page, offsite = _fresh_page(browser, server)
    page.goto(f"{server}/Head_Importance?{HOSTILE_QUERY}")
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text("The link's head L99H0 is not one of", timeout=PAGE_TIMEOUT_MS)
    page.wait_for_selector('[data-testid="stVegaLiteChart"]', timeout=PAGE_TIMEOUT_MS)  # the page still renders
    text = _main_text(page)
    assert "The link names the model '/etc/passwd'" in text
    assert "The link's focus image '[x](http://evil.example)' is not in" in text
    _screenshot(page, tmp_path, "hostile_link.png")
    assert page.locator('a[href*="evil.example"]').count() == 0
    assert page.locator('[data-testid="stException"]').count() == 0
    # the view is the default one, and its link holds nothing the hostile one did
    expect(page.get_by_test_id("stSidebar")).to_contain_text("Focus head L0H0")
    link = _copied_link(page, "head=L0H0")
    assert "evil" not in link and "passwd" not in link and "L99H0" not in link
    page.context.close()
    assert offsite == []
