"""Every page reads one cached analysis of the set: switching pages or a display setting never recomputes it."""

from __future__ import annotations

from collections import Counter

import ui.patterns
import ui.results
import ui.strength
from core.inputs.digits import digit_images, digits_split
from helpers.app import started_app
from helpers.data import VIEW_PAGES
from helpers.images import encode


def test_pages_and_display_settings_read_one_analysis(monkeypatch) -> None:
    calls: Counter[str] = Counter()

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ui.results, "StagedAnalysis", counted("analysis", ui.results.StagedAnalysis))
    monkeypatch.setattr(ui.patterns, "sample_maps", counted("map sample", ui.patterns.sample_maps))
    monkeypatch.setattr(ui.strength, "strength_statistics", counted("focus strength", ui.strength.strength_statistics))
    ui.results.JOBS.clear()
    at = started_app(monkeypatch, 300)
    images, _ = digit_images(digits_split(0, 0.2).test[40:46])
    at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(f"a{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    at.run()
    # the overview of the samples, then of the upload: each reads its set's first pass, and runs no pass of its own
    assert calls["analysis"] == 2

    for page in VIEW_PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    assert calls["analysis"] == 2

    at.switch_page(VIEW_PAGES[0]).run()
    at.selectbox(key="importance_metric").set_value("layer_impact").run()
    at.radio(key="importance_scope").set_value("Focus image (local)").run()
    at.switch_page(VIEW_PAGES[2]).run()
    at.toggle(key="pattern_cls").set_value(True).run()  # the pass sampled both map kinds
    assert not at.exception, at.exception
    at.switch_page(VIEW_PAGES[1]).run()
    at.switch_page("streamlit_app.py").run()  # the overview now reads the analysis' predictions
    assert not at.exception, at.exception
    assert calls["analysis"] == 2
    assert calls["map sample"] == 0
    assert calls["focus strength"] <= 1  # the focus image's own offset map, once
