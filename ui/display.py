"""How things are shown: small inputs enlarged with crisp pixels, user strings kept as text in Markdown,
a user's error as its sentence, a core computation's progress as a bar."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import streamlit as st
from PIL import Image

from core.errors import HeadScopeError
from core.measures.inference import Progress

__all__ = [
    "enlarge_for_display",
    "plain",
    "progress_bar",
    "sentence_on_error",
]

# What starts a code span, emphasis, a link or an image, HTML, an entity, LaTeX, an icon or
# a directive (``:red[…]``), or ends a heading, wherever it stands; each gets a backslash
_INLINE = re.compile(r"([\\`*_~\[\]<>&$:!#])")
# What starts a block only at the start of a line (a list item, a quote, a table row)
_BLOCK_START = re.compile(r"^(\s*)(?:([-+=|])|(\d+)([.)]))")
# Streamlit's GFM finds bare links in the text after escapes are undone (``https\://x.y`` is
# still ``https://x.y`` to it): a word joiner (U+2060, invisible) where ``://``, ``www.``
# and ``@`` would start one keeps them text
_BARE_LINK = re.compile(r"(?<=:)(?=//)|(?<=www)(?=\.)|(?=@)", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n\v\f\u2028\u2029]+")
_WORD_JOINER = "\u2060"


def enlarge_for_display(image: Image.Image, min_side: int = 224) -> Image.Image:
    """Scale up by a whole factor with nearest-neighbour, so each input pixel stays a visible square."""
    factor = -(-min_side // max(1, min(image.size)))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def plain(text: object) -> str:
    """``text`` as Markdown that renders as exactly that text: for every user string on a page.

    File, folder, image, class and model names from uploads, ZIPs, bundles and the sidebar
    would otherwise become links, images fetched from anywhere (``![](https://…)``), LaTeX
    (``$…$``), icons (``:name:``) or headings. Inline code cannot hold them either: a
    backtick in the name ends the span, so they are escaped as text instead. Line breaks
    become spaces, so a name cannot start a block of its own.
    """
    escaped = _INLINE.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(text)))
    escaped = _BLOCK_START.sub(_escape_block_start, escaped, count=1)
    return _BARE_LINK.sub(_WORD_JOINER, escaped)


def _escape_block_start(match: re.Match[str]) -> str:
    indent, bullet, number, number_end = match.groups()
    return f"{indent}\\{bullet}" if bullet else f"{indent}{number}\\{number_end}"


@contextmanager
def sentence_on_error() -> Iterator[None]:
    """Around a page's core call: a ``HeadScopeError`` (the server out of memory, say) shows as its
    sentence and stops the page, instead of a traceback."""
    try:
        yield
    except HeadScopeError as err:
        st.error(plain(str(err)))
        st.stop()


@contextmanager
def progress_bar(start: str, step: str) -> Iterator[Progress]:
    """A progress bar fed by a core ``progress(done, total)`` callback, removed when the work ends.

    ``step`` is formatted with ``done`` and ``total``. Used inside ``st.cache_data``
    functions, so a cache hit replays the bar instead of recomputing.
    """
    bar = st.progress(0.0, text=start)
    try:
        yield lambda done, total: bar.progress(done / total, text=step.format(done=done, total=total))
    finally:
        bar.empty()
