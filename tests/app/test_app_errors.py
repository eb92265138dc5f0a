"""A bug is a bug in the app too: a plain ValueError from core reaches Streamlit's exception box,
not a notice worded as if the user had made a mistake."""

from __future__ import annotations

from helpers.app import started_app
from ui import patterns

TIMEOUT = 180
PAGE = "pages/3_Attention_Patterns.py"


def test_a_plain_value_error_from_core_is_shown_as_an_exception(monkeypatch) -> None:
    def broken(*_args, **_kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(patterns, "sample_maps", broken)
    patterns._space.clear()
    at = started_app(monkeypatch, TIMEOUT)
    # a sample size other than the analysis' own: the page draws it with sample_maps
    at.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    at.switch_page(PAGE).run()
    assert len(at.exception) == 1  # its message is redacted by the app's showErrorDetails setting
    assert not at.warning and not at.error  # not worded as the user's mistake
    patterns._space.clear()
