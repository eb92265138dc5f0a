"""AppTest of memory limits: a model too large for the server's budget is refused at load with a sentence and the
previous model stays; an allocator failure on a page is a sentence, not a traceback."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.settings import MEMORY_ENV
from helpers.app import load_transformers_model, started_app
from helpers.markdown import shown
from helpers.memory import ALLOCATOR_TEXT, BUDGET_MB, transformers_zip

TIMEOUT = 180


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(MEMORY_ENV, str(BUDGET_MB))
    return started_app(monkeypatch, TIMEOUT)


SENTENCE = (
    "The server ran out of memory analysing demo (65 tokens per image in 6 layers x 6 heads); try again when "
    "fewer analyses run, or load the model at a smaller input size or pick a smaller one."
)


def out_of_memory(*_args, **_kwargs):
    raise RuntimeError(ALLOCATOR_TEXT)  # what torch raises when a pass's tensors do not fit


def test_explanations_shows_a_sentence_when_the_allocator_fails(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    import core.measures.attribution

    app.switch_page("pages/5_Explanations.py").run()
    assert not app.exception and not app.error
    monkeypatch.setattr(core.measures.attribution, "_gradient_part", out_of_memory)
    # settings no cached map has: the maps are computed again
    app.radio(key="explain_fusion").set_value("min").run()
    app.select_slider(key="explain_discard").set_value(0.8).run()
    assert not app.exception, app.exception
    assert [shown(e.value) for e in app.error] == [SENTENCE]


def test_attention_strength_shows_a_sentence_when_the_allocator_fails(app: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st

    import core.measures.attention

    st.cache_data.clear()  # the focus image's statistics are computed here, not read from another test's cache
    # the focus image's own attention fails; the set's first pass (another code path) does not
    monkeypatch.setattr(core.measures.attention, "_attention_of_batch", out_of_memory)
    app.switch_page("pages/2_Attention_Strength.py").run()
    assert not app.exception, app.exception
    assert [shown(e.value) for e in app.error] == [SENTENCE]


def test_a_zip_too_large_for_the_budget_is_refused_and_the_demo_stays(app: AppTest) -> None:
    header = shown(app.caption[0].value)
    load_transformers_model(app, archive=("big.zip", transformers_zip(12, 16)))
    error = shown(app.sidebar.error[0].value)
    assert "'big' at 320 px sees 6,401 tokens in each of its 12 layers x 16 heads" in error
    assert "choose a smaller input size or a smaller model" in error
    assert shown(app.caption[0].value) == header  # the demo model is still the active one
