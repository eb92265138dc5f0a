"""Driving the app in-process with Streamlit's AppTest, and reading a run page as a reader sees it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from helpers.data import APP
from helpers.markdown import shown


def started_app(monkeypatch: pytest.MonkeyPatch, timeout: float) -> AppTest:
    """The home page run once offline, without an exception."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def new_session(page: str, query: dict[str, str] | None = None, timeout: float = 300) -> AppTest:
    """A link opened in a new browser: a new session whose first run is on ``page``, with the link's ``query``."""
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.query_params.update(query or {})
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def assert_clean(at: AppTest) -> None:
    """The run raised nothing and shows no error."""
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def notice_texts(at: AppTest) -> str:
    """Markdown, captions and notices of a run page, as a reader sees them (names unescaped)."""
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("error", "warning", "success", "info"):
        parts += [e.value for e in getattr(at, kind)]
    return shown("\n".join(str(p) for p in parts))


def page_texts(at: AppTest) -> str:
    """Titles, subheaders, Markdown, captions and notices of a run page, as a reader sees them."""
    parts = [*at.title, *at.subheader, *at.markdown, *at.caption, *at.info, *at.warning, *at.error]
    return shown("\n".join(str(p.value) for p in parts))


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def chart_specs(at: AppTest) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Each rendered chart's Vega-Lite spec and its datasets by name."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    return [
        (json.loads(c.proto.spec), {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in c.proto.datasets})
        for c in at.get("vega_lite_chart")
    ]


def load_transformers_model(app: AppTest, *, repo: str | None = None, archive: tuple[str, bytes] | None = None) -> None:
    """Load a transformers model from the sidebar: a repo id from the local cache, or an uploaded ``(name, ZIP)``."""
    app.radio(key="model_source").set_value("transformers model").run()
    if repo is not None:
        app.text_input(key="hf_repo").set_value(repo).run()
    if archive is not None:
        app.sidebar.get("file_uploader")[0].set_value((archive[0], archive[1], "application/zip"))
        app.run()
    app.button(key="load_model").click().run()
    assert not app.exception, app.exception
