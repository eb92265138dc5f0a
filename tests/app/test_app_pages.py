"""Smoke test of every page, and the selections and images the pages share."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from helpers.app import started_app
from helpers.data import ROOT, VIEW_PAGES
from helpers.images import encode
from ui.navigation import ALONE
from ui.navigation import PAGES as LINKED


@pytest.fixture
def app(monkeypatch) -> AppTest:
    return started_app(monkeypatch, 300)


def _sidebar_text(at: AppTest) -> str:
    return "\n".join(str(c.value) for c in at.sidebar.caption)


def _links(at: AppTest) -> list[tuple[str, str]]:
    return [(link.proto.label, link.proto.page) for link in at.sidebar.get("page_link")]


def test_the_sidebar_names_every_page(app: AppTest) -> None:
    # Streamlit's own list would name the entry file "streamlit app"
    from streamlit.config import get_option

    assert get_option("client.showSidebarNavigation") is False
    assert _links(app) == [
        ("Overview", ""), ("Head importance", "Head_Importance"), ("Attention strength", "Attention_Strength"),
        ("Attention patterns", "Attention_Patterns"), ("Case study", "Case_Study"), ("Explanations", "Explanations"),
        ("Compare", "Compare"), ("Library", "Library"),
    ]
    _assert_every_chart_and_table_exports(app)
    app.switch_page(VIEW_PAGES[1]).run()
    assert [label for label, _ in _links(app)][0] == "Overview"
    assert ALONE not in _sidebar_text(app)


@pytest.mark.parametrize("page", VIEW_PAGES)
def test_a_page_runs_on_its_own(monkeypatch, page: str) -> None:
    # as `streamlit run pages/…` or an AppTest of the one page: no other page can be linked
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(str(ROOT / page), default_timeout=300).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert ALONE in _sidebar_text(at)
    assert _links(at) == []  # not even to itself: it is the only page, and its links are the app's
    assert at.selectbox(key="focus_layer").options == [str(i) for i in range(6)]


def test_every_view_has_a_page() -> None:
    assert [Path(p).stem for p in VIEW_PAGES][:3] == ["1_Head_Importance", "2_Attention_Strength", "3_Attention_Patterns"]
    assert [script for script, _, _ in LINKED] == ["streamlit_app.py", *VIEW_PAGES]  # the sidebar links them all


def _assert_every_chart_and_table_exports(at: AppTest, *, has_charts: bool = True) -> None:
    buttons = at.get("download_button")
    labels = [button.proto.label for button in buttons]
    charts, tables = len(at.get("vega_lite_chart")), len(at.dataframe)
    assert bool(charts) == has_charts and labels.count("PNG") == labels.count("SVG") == charts
    assert labels.count("CSV") == tables
    # each file is made when its button is clicked, and the click does not rerun the page
    exports = [button.proto for button in buttons if button.proto.label in ("PNG", "SVG", "CSV")]
    assert all(proto.deferred_file_id and proto.ignore_rerun for proto in exports)


@pytest.mark.parametrize("page", VIEW_PAGES)
def test_page_opens_on_the_demo_samples(app: AppTest, page: str) -> None:
    app.switch_page(page).run()
    if page.endswith("Compare.py"):  # it draws once both sides are given: the current analysis against itself
        app.radio(key="compare_source_B").set_value("the current analysis").run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    _assert_every_chart_and_table_exports(app, has_charts=not page.endswith("Library.py"))  # a list of studies
    assert "Held-out digits" in _sidebar_text(app) or "360 images" in _sidebar_text(app)
    assert app.selectbox(key="focus_layer").options == [str(i) for i in range(6)]


def test_upload_focus_and_head_follow_the_user_across_pages(app: AppTest) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[20:24])
    app.radio(key="image_source").set_value("Upload images").run()
    app.sidebar.get("file_uploader")[0].set_value([(f"u{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    app.run()
    ids = [image.id for image in app.session_state["uploaded_set"][1].images]

    app.switch_page(VIEW_PAGES[-1]).run()
    assert not app.exception
    assert "Uploaded images (4 images)" in _sidebar_text(app)
    app.selectbox(key="focus_image_pick").set_value(ids[2]).run()
    app.selectbox(key="focus_layer").set_value(3).run()
    app.selectbox(key="focus_head").set_value(5).run()
    focus = app.session_state["focus"]
    assert (focus.image_id, focus.layer, focus.head) == (ids[2], 3, 5)
    assert "L3H5" in _sidebar_text(app)

    app.switch_page(VIEW_PAGES[0]).run()  # another page reads the same selections
    assert not app.exception
    assert app.selectbox(key="focus_layer").value == 3 and app.selectbox(key="focus_head").value == 5
    assert app.selectbox(key="focus_image_pick").value == ids[2]

    app.switch_page("streamlit_app.py").run()  # home keeps the upload and the focus image
    assert not app.exception
    assert "Uploaded images (4 images)" in app.caption[0].value
    assert app.text_input(key="focus_id_input").value == ids[2]


def test_page_settings_survive_a_visit_to_another_page(app: AppTest) -> None:
    images, _ = digit_images(digits_split(0, 0.2).test[30:33])
    app.radio(key="image_source").set_value("Upload images").run()
    app.sidebar.get("file_uploader")[0].set_value([(f"s{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    app.run()
    app.switch_page(VIEW_PAGES[0]).run()
    app.selectbox(key="importance_metric").set_value("taylor").run()
    app.radio(key="importance_scope").set_value(app.radio(key="importance_scope").options[1]).run()
    app.switch_page(VIEW_PAGES[1]).run()
    app.radio(key="strength_scope").set_value("Set mean").run()
    app.switch_page(VIEW_PAGES[0]).run()
    assert not app.exception
    assert app.selectbox(key="importance_metric").value == "taylor"
    assert app.radio(key="importance_scope").value == app.radio(key="importance_scope").options[1]
    app.switch_page(VIEW_PAGES[1]).run()
    assert app.radio(key="strength_scope").value == "Set mean"
