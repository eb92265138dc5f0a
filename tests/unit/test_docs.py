"""The README and docs/*.md: every link and picture points at a file (and heading) that exists, pictures are small PNGs,
the README stays a short front door, and every page is reachable from it or from the docs index."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from helpers.data import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOCS_INDEX = DOCS / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
IMAGES = DOCS / "images"

README_MAX_LINES = 200
IMAGE_MAX_BYTES = 300 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

FENCED_BLOCK = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"``[^\n]*?``|`[^`\n]*`")
# [text](target) and ![alt](target), with an optional <...> around the target and an optional "title"
MARKDOWN_LINK = re.compile(r"(!?)\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\b[^>]*?\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:: not a file here


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where brackets and ``#`` lines are code, not Markdown."""
    return CODE_SPAN.sub("", FENCED_BLOCK.sub("", text))


def _targets(page: Path) -> list[tuple[bool, str]]:
    """``(is_picture, target)`` of every link, Markdown picture and ``<img src>`` of ``page``, external ones left out."""
    prose = _prose(page.read_text(encoding="utf-8"))
    found = [(bang == "!", target) for bang, target in MARKDOWN_LINK.findall(prose)]
    found += [(True, target) for target in HTML_IMAGE.findall(prose)]
    return [(picture, target) for picture, target in found if not SCHEME.match(target)]


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation but hyphens dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``; a repeated heading gets ``-1``, ``-2``, ... as on GitHub."""
    anchors: set[str] = set()
    for heading in HEADING.findall(FENCED_BLOCK.sub("", page.read_text(encoding="utf-8"))):
        slug, count = _slug(heading), 0
        while (slug if count == 0 else f"{slug}-{count}") in anchors:
            count += 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken(page: Path, target: str) -> str | None:
    """Why ``target``, written in ``page``, does not resolve on GitHub; ``None`` when it does."""
    path, _, anchor = target.partition("#")
    file = (page.parent / unquote(path)).resolve() if path else page
    if not file.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not file.exists():
        return f"{target}: no such file"
    if anchor and file.suffix == ".md" and unquote(anchor) not in _anchors(file):
        return f"{target}: no heading '#{anchor}' in {file.relative_to(ROOT)}"
    return None


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_the_pages_are_found() -> None:
    names = {page.name for page in PAGES}
    assert {"README.md", "views.md", "core-api.md", "architecture.md"} <= names
    assert README in PAGES and DOCS_INDEX in PAGES


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_link_points_at_a_file_and_heading_that_exist(page: Path) -> None:
    broken = [why for picture, target in _targets(page) if not picture and (why := _broken(page, target))]
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_picture_points_at_a_file_that_exists(page: Path) -> None:
    broken = [why for picture, target in _targets(page) if picture and (why := _broken(page, target))]
    assert not broken, broken


def test_every_picture_under_docs_images_is_a_png_under_300_kb() -> None:
    """Only the files that exist: the screenshot script writes them, and the picture test above asks for them."""
    files = sorted(p for p in IMAGES.rglob("*") if p.is_file()) if IMAGES.is_dir() else []
    wrong = []
    for file in files:
        with file.open("rb") as stream:
            if stream.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                wrong.append(f"{file.relative_to(ROOT)}: not a PNG")
        if file.stat().st_size > IMAGE_MAX_BYTES:
            wrong.append(f"{file.relative_to(ROOT)}: {file.stat().st_size:,} bytes, over {IMAGE_MAX_BYTES:,}")
    assert not wrong, wrong


def test_the_readme_is_at_most_200_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines: move the detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_every_page_starts_with_a_title_and_a_line_on_its_purpose(page: Path) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# "), f"{_page_id(page)} starts with {lines[0]!r}, not a '# Title'"
    assert len(lines) > 2 and not lines[1].strip() and lines[2].strip(), f"{_page_id(page)}: a line on its purpose follows the title"


def test_every_docs_page_is_linked_from_the_readme_or_the_docs_index() -> None:
    linked = {
        (index.parent / unquote(target.partition("#")[0])).resolve()
        for index in (README, DOCS_INDEX)
        for _, target in _targets(index)
        if target.partition("#")[0]
    }
    unlinked = [_page_id(page) for page in PAGES if page != README and page.resolve() not in linked]
    assert not unlinked, f"link these from README.md or docs/README.md: {unlinked}"


@pytest.mark.parametrize(
    "heading, anchor",
    [
        ("Attention strength and where attention goes", "attention-strength-and-where-attention-goes"),
        ("Big models: stages, an estimate, a sample cap, Stop", "big-models-stages-an-estimate-a-sample-cap-stop"),
        ("`bench_stages.py`", "bench_stagespy"),
        ("Linear probes: your classes on a backbone", "linear-probes-your-classes-on-a-backbone"),
        ("A demo: DINOv2-S at 224 px against 448 px", "a-demo-dinov2-s-at-224-px-against-448-px"),
    ],
)
def test_heading_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert _slug(heading) == anchor
