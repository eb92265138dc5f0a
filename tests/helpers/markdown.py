"""Reading a page's Markdown as shown: ``shown`` gives the text a reader sees, ``live_markup`` what would render as more.

No Markdown parser ships with the app's dependencies, so ``live_markup`` scans a Markdown
source for what Streamlit's renderer (CommonMark, GFM, math, directives) would turn into a
link, an image, HTML, code, LaTeX or an icon: any such character not escaped by a
backslash, and the bare links that Streamlit's GFM finds in the text once escapes are
undone. The page tests render hostile names and assert that none of it is live.
"""

from __future__ import annotations

import re

from ui.display import plain

# one upload name that closes backticks and opens a link and an image, as in the issue
HOSTILE_NAME = "x` [click me](https:host) ![](https:host) `.png"

WORD_JOINER = "\u2060"
_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # CommonMark: a backslash before ASCII punctuation
# Each char that starts a link, an image, HTML, LaTeX or a directive wherever it stands
_LIVE = {"[": "link or image", "]": "link or image", "<": "HTML or autolink", "$": "LaTeX", ":": "directive or icon"}
# Streamlit's GFM (mdast-util-gfm-autolink-literal, in its StreamlitMarkdown bundle) links
# these in text nodes, whatever escapes produced the text
_BARE_URL = re.compile(r"(https?://|www(?=\.))[-.\w]+", re.IGNORECASE)
_BARE_EMAIL = re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+")


def shown(source: str) -> str:
    """The text a reader sees of a Markdown source: escapes undone, word joiners gone."""
    return _ESCAPED.sub(r"\1", source).replace(WORD_JOINER, "")


def live_markup(source: str, allowed: str = "") -> list[str]:
    """What in ``source`` Streamlit would render as more than text (``allowed`` chars excepted).

    Bold (``**``) is the pages' own; backtick code spans are counted, not located, so a
    caller checks user strings with ``plain(name) in source`` as well.
    """
    found = []
    text = _ESCAPED.sub(lambda m: "\0", source)  # escaped characters are inert
    for char, what in _LIVE.items():
        if char in text and char not in allowed:
            found.append(f"unescaped {char!r}: {what}")
    if text.count("`") % 2:
        found.append("an unpaired backtick: a code span swallowing what follows")
    # bare links are found in the text node, where escapes are already undone
    node = _ESCAPED.sub(r"\1", source)
    found += [f"bare link {m.group(0)!r}" for m in _BARE_URL.finditer(node)]
    found += [f"bare email {m.group(0)!r}" for m in _BARE_EMAIL.finditer(node)]
    return found


def assert_text_only(source: str, user_string: str) -> None:
    """``user_string`` appears in ``source`` as escaped text, and nothing in ``source`` is live markup."""
    assert plain(user_string) in source, (user_string, source)
    assert live_markup(source, allowed=":") == [], source  # the pages' own sentences use colons
