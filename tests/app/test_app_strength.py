"""AppTest of the attention strength page (view C) on the demo model."""

from __future__ import annotations

import io

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from helpers.app import captions, started_app
from helpers.data import APP

TIMEOUT = 180
PAGE = "pages/2_Attention_Strength.py"


@pytest.fixture
def page(monkeypatch) -> AppTest:
    at = started_app(monkeypatch, TIMEOUT)
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _charts(at: AppTest) -> list:
    return at.get("vega_lite_chart")


def test_page_shows_every_view_c_chart_for_the_focus_image(page: AppTest) -> None:
    assert not page.error
    assert page.title[0].value == "Attention strength"
    charts = _charts(page)
    # C1, C2, C3, offsets, distance, prefix share; top-key share, its spread, key entropy, token norms
    assert len(charts) >= 10
    keys = {chart.key for chart in charts}
    assert {"strength_top_share_chart", "strength_key_entropy_chart"} <= keys
    text = captions(page)
    assert "The sink of **L0H0** on" in text and "of the patches' attention goes to" in text
    assert "coloured dots: the prefix tokens (CLS)" in text
    assert "ln(8) = 2.08" in text
    assert "C1 · entropy of every head on the focus image" in text
    assert "C2 · s_n of **L0H0**" in text and "over the 360 images" in text
    assert "C3 · entropy of **L0H0** over the 360 images" in text
    assert "4×4-pixel patches" in text


# A third of a 1,500 px wide page leaves a chart about 330 px; Streamlit's theme sets a
# title at about 8 px a character and a subtitle line at about 5: longer ones are cut with "…"
THIRD_TITLE_CHARS, THIRD_SUBTITLE_CHARS = 36, 60


def title_lines(spec: dict) -> tuple[str, list[str]]:
    """A spec's title and its subtitle's lines."""
    title = spec.get("title", "")
    if isinstance(title, str):
        return title, []
    text, subtitle = title.get("text", ""), title.get("subtitle", [])
    return " ".join(text) if isinstance(text, list) else text, [subtitle] if isinstance(subtitle, str) else list(subtitle)


def test_every_chart_in_a_third_of_the_page_keeps_its_title_whole(page: AppTest) -> None:
    import json

    # a two-digit layer and head, as on a 12-layer model: the longest labels a title holds
    page.selectbox(key="focus_layer").set_value(5).run()
    page.selectbox(key="focus_head").set_value(5).run()
    specs = [json.loads(chart.proto.spec) for chart in _charts(page)]
    assert len(specs) >= 10
    for spec in specs:  # every chart of this page stands in a third of it
        title, subtitle = title_lines(spec)
        longest = title.replace("L5H5", "L11H11")
        assert title and len(longest) <= THIRD_TITLE_CHARS, title
        assert all(len(line.replace("L5H5", "L11H11")) <= THIRD_SUBTITLE_CHARS for line in subtitle), subtitle


def test_scope_selector_switches_to_the_set_mean(page: AppTest) -> None:
    assert page.radio(key="strength_scope").value == "Focus image"
    page.radio(key="strength_scope").set_value("Set mean").run()
    assert not page.exception and not page.error
    text = captions(page)
    assert "C1 · entropy of every head averaged over the 360 images" in text
    assert "from a patch to the patch dy rows below and dx columns right of it, averaged over the 360 images" in text
    assert "on the focus image" not in text.split("C2")[0]


def test_another_focus_head_moves_every_head_view(page: AppTest) -> None:
    page.selectbox(key="focus_layer").set_value(3).run()
    page.selectbox(key="focus_head").set_value(2).run()
    assert not page.exception and not page.error
    focus = page.session_state["focus"]
    assert (focus.layer, focus.head) == (3, 2)
    text = captions(page)
    assert "C2 · s_n of **L3H2**" in text and "C3 · entropy of **L3H2**" in text
    assert "Mean attention of **L3H2**" in text
    # the C1 chart rings the new focus head
    c1 = _charts(page)[0].proto.spec
    assert "L3H2 ringed" in c1


def test_another_focus_image_changes_its_entropy(page: AppTest) -> None:
    before = captions(page).split("C3")[1]
    options = page.selectbox(key="focus_image_pick").options
    page.selectbox(key="focus_image_pick").select_index(7).run()
    assert not page.exception and not page.error
    after = captions(page).split("C3")[1]
    assert options[7].split(" (")[0] in after and after != before


def test_a_two_image_upload_gives_a_spread_over_two_images(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    images, _ = digit_images(digits_split(0, 0.2).test[:2])
    files = []
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        files.append((f"u{i}.png", buffer.getvalue(), "image/png"))
    at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value(files)
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception and not at.error
    text = captions(at)
    assert "over the 2 images" in text and "on u0.png" in text
    at.radio(key="strength_scope").set_value("Set mean").run()
    assert not at.exception and "averaged over the 2 images" in captions(at)



def test_a_register_model_shows_its_registers_share_and_names_its_prefix_tokens(tmp_path, monkeypatch) -> None:
    from helpers.app import started_app
    from helpers.transformers import hf_model, save

    monkeypatch.setenv("HEADSCOPE_MODEL", str(save(hf_model("Dinov2WithRegistersModel"), tmp_path / "dino-reg")))
    at = started_app(monkeypatch, TIMEOUT)
    at.switch_page(PAGE).run()
    assert not at.exception and not at.error
    assert "strength_register_share_chart" in {chart.key for chart in _charts(at)}
    text = captions(at)
    assert "goes to the 3 register tokens on the focus image" in text
    assert "the prefix tokens (CLS, register 1, register 2, register 3)" in text
    at.radio(key="strength_scope").set_value("Set mean").run()
    assert not at.exception and "goes to the 3 register tokens averaged over the" in captions(at)


def test_the_sink_is_boxed_red_and_high_norm_keys_purple_on_the_focus_image(tiny_handle) -> None:
    import numpy as np
    from PIL import Image

    from ui.strength import sink_overlay
    from viz.common import FOCUS_RED
    from viz.strength import HIGH_NORM_PURPLE

    t = tiny_handle.num_tokens  # CLS and a 4x4 grid
    attn = np.full((t, t), 0.02 / (t - 1))
    attn[:, 1 + 1 * 4 + 2] = 0.98  # every query sends 98% to the patch at row 1, column 2
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    picture, received = sink_overlay(tiny_handle, image, attn, np.array([1 + 3 * 4 + 0]))
    assert int(received.argmax()) == 1 + 4 + 2 and received.max() == pytest.approx(0.98)
    cell = picture.width // 4
    pixels = np.asarray(picture)
    red = tuple(int(FOCUS_RED[i:i + 2], 16) for i in (1, 3, 5))
    purple = tuple(int(HIGH_NORM_PURPLE[i:i + 2], 16) for i in (1, 3, 5))
    assert tuple(pixels[1 * cell + cell // 2, 2 * cell]) == red  # the sink's left edge
    inset = max(2, round(cell / 5))
    assert tuple(pixels[3 * cell + cell // 2, 0 * cell + inset]) == purple  # the outlier's box, inside its cell
    assert tuple(pixels[0, 0]) != red and tuple(pixels[0, 0]) != purple
