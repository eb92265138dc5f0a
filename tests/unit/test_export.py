"""Charts as PNG and SVG files, the names of exported files, and the names under thumbnails."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest

from ui.export import file_stem
from viz.export import PNG_SCALE, chart_png, chart_svg
from viz.importance import importance_heatmap


@pytest.fixture(scope="module")
def heatmap() -> alt.Chart:
    values = pd.DataFrame([(layer, head, 0.1 * layer + 0.01 * head) for layer in range(3) for head in range(4)],
                          columns=["layer", "head", "value"])
    return importance_heatmap(values, "probability", "probability", (1, 2), False)


def test_a_chart_becomes_a_png_at_twice_its_size(heatmap) -> None:
    from io import BytesIO

    from PIL import Image

    png = chart_png(heatmap)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    once = Image.open(BytesIO(chart_png(heatmap, scale=1)))
    twice = Image.open(BytesIO(png))
    assert PNG_SCALE == 2 and twice.width == 2 * once.width and twice.height == 2 * once.height
    assert np.asarray(twice.convert("L")).std() > 10  # drawn, not blank


def test_a_chart_becomes_a_standalone_svg_with_its_title(heatmap) -> None:
    svg = chart_svg(heatmap)
    assert svg.lstrip().startswith("<svg") and "</svg>" in svg
    assert "<text" in svg and "probability" in svg  # its words are text, not pixels


def test_a_chart_over_altairs_row_limit_exports_and_the_limit_stays() -> None:
    rows = pd.DataFrame({"x": np.arange(6000) % 100, "y": np.arange(6000) // 100})
    chart = alt.Chart(rows).mark_rect().encode(x="x:O", y="y:O")
    with pytest.raises(alt.MaxRowsError):
        chart.to_dict()
    assert "<svg" in chart_svg(chart)
    with pytest.raises(alt.MaxRowsError):  # the global limit is back in place
        chart.to_dict()


# class names a model could carry: markup for an SVG viewer, formulas for a spreadsheet
HOSTILE_NAMES = [
    "<script>alert(1)</script>", 'a & <b onload="x()">', "+cmd|' /C calc'!A0", "@SUM(1+1)",
    '=HYPERLINK("http://127.0.0.1:9/x","y")',
]


def test_names_in_an_svg_are_escaped_text_and_a_png_carries_none() -> None:
    from io import BytesIO
    from xml.etree import ElementTree

    from PIL import Image

    from viz.overview import top5_chart

    top = pd.DataFrame({"rank": range(1, 6), "class": HOSTILE_NAMES, "probability": [0.4, 0.3, 0.1, 0.1, 0.05]})
    svg = chart_svg(top5_chart(top))
    assert "<script" not in svg and "<b " not in svg and "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    root = ElementTree.fromstring(svg)  # well-formed: no name broke out of its element
    assert not [e.tag for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("script", "b", "foreignObject")]
    assert set(HOSTILE_NAMES) <= {e.text for e in root.iter() if e.tag.endswith("text")}  # each one read back whole

    png = chart_png(top5_chart(top))
    Image.open(BytesIO(png)).verify()
    assert not [name for name in HOSTILE_NAMES if name.encode() in png]  # drawn as pixels, no text chunk


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("B2 partial pruning L0H3", "headscope-b2-partial-pruning-l0h3"),
        ("../../etc/passwd", "headscope-etc-passwd"),
        ("   ", "headscope-chart"),
        ("B1 ranked heads accuracy (agreement where there is no label)", "headscope-b1-ranked-heads-accuracy-agreement-where-there-is-no-label"),
    ],
)
def test_file_names_are_plain_slugs(name: str, stem: str) -> None:
    assert file_stem(name) == stem


ZWSP = "\u200b"  # where a caption's line may break inside a word, after its "_" or "-"


@pytest.mark.parametrize(
    ("name", "target", "caption"),
    [
        ("digit-0413 (7)", "7", f"digit-{ZWSP}0413 (7) · 7"),  # wraps between its words
        ("hubble_deep_field", "", f"hubble_{ZWSP}deep_{ZWSP}field"),  # "hubble_" / "deep_field", whole
        ("stereo_motorcycle", "", f"stereo_{ZWSP}motorcycle"),
        ("immunohistochemistry", "", "immuno…"),  # one word wider than a line
        ("mmmmmmmmmmmm", "", "mmmm…"),  # wide letters: fewer of them fit
        ("a very long_name_indeed", "tabby, tabby cat", f"a very long_{ZWSP}name_{ZWSP}indeed · tabby, tabby cat"),
        ("astronaut", "", "astronaut"),
        ("", "cat", "cat"),  # no name: the target alone, without a dangling "·"
    ],
)
def test_thumbnail_captions_never_break_inside_a_word(name: str, target: str, caption: str) -> None:
    """The browser breaks a caption mid-word where a word is wider than its line ("hubble_de" / "e…"):
    every run between two places a line may break fits a line."""
    from ui.casestudy import CAPTION_LINE, caption_px, thumbnail_caption

    shown = thumbnail_caption(name, target)
    assert shown == caption
    runs = shown.replace(ZWSP, " ").split(" ")
    assert all(caption_px(run) <= CAPTION_LINE for run in runs), runs
    assert caption_px("hubble_dee…") > CAPTION_LINE and caption_px("immunoh…") > CAPTION_LINE  # cuts that broke


def test_caption_widths_are_those_of_the_captions_font() -> None:
    """Source Sans at 14 px, as Chromium measures it: "immunohis" (9 letters) fills a line of a 72 px thumbnail."""
    from ui.casestudy import CAPTION_LINE, THUMBNAIL_WIDTH, caption_px

    assert CAPTION_LINE == THUMBNAIL_WIDTH - 4  # the caption's padding
    assert 66.4 <= caption_px("immunohis") <= CAPTION_LINE  # Chromium: 66.4 px
    assert caption_px("m") > caption_px("n") > caption_px("i")
    assert caption_px("木") >= 14  # a character not in the table counts as a whole em
