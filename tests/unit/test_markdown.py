"""User strings in Markdown: ``ui.display.plain`` keeps them text, and the scanner of
``helpers.markdown`` (which the page tests use) sees what it is for."""

from __future__ import annotations

import re

import pytest

from helpers.markdown import HOSTILE_NAME, WORD_JOINER, live_markup, shown
from ui.display import plain

HOSTILE_STRINGS = [
    HOSTILE_NAME,
    "![x](https://evil.example/a.png) $x$",
    "<img src=x onerror=alert(1)>.png",
    "https://evil.example/x.png",
    "www.evil.example",
    "mail me@evil.example now",
    "# heading\n- item\n1. item",
    ":red[red] :material/home: :smile:",
    "**bold** _it_ ~~gone~~ `code` \\`",
    "[ref]: https://evil.example\n[ref]",
    "a | b\n--|--\n1 | 2",
]


@pytest.mark.parametrize("hostile", HOSTILE_STRINGS)
def test_plain_leaves_no_markup_and_shows_the_string(hostile: str) -> None:
    source = plain(hostile)
    assert live_markup(source) == []
    assert shown(source) == re.sub(r"\n", " ", hostile)  # line breaks become spaces
    # inside bold, as the pages use it
    assert live_markup(f"**{source}**") == []


def test_plain_leaves_ordinary_names_readable() -> None:
    assert shown(plain("digit_3 (copy).png")) == "digit_3 (copy).png"
    assert WORD_JOINER not in plain("ImageNet val 00001.JPEG")


def test_the_scanner_sees_what_it_is_for() -> None:
    """The checks above mean something: raw hostile strings are flagged."""
    for hostile in HOSTILE_STRINGS[:6]:
        assert live_markup(hostile), hostile
    assert live_markup(f"`{HOSTILE_NAME}`")  # backticks around a name do not hold it
