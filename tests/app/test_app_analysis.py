"""Every page reads one cached analysis of the set: switching pages or a display setting never recomputes it."""

from __future__ import annotations

from collections import Counter

from conftest import ROOT, started_app
from test_images import encode

import ui.patterns
import ui.session
import ui.strength
from core.inputs.digits import digit_images, digits_split

PAGES = [f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("[0-9]*_*.py"))]


def test_pages_and_display_settings_read_one_analysis(monkeypatch) -> None:
    calls: Counter[str] = Counter()

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(ui.session, "StagedAnalysis", counted("analysis", ui.session.StagedAnalysis))
    monkeypatch.setattr(ui.patterns, "sample_maps", counted("map sample", ui.patterns.sample_maps))
    monkeypatch.setattr(ui.strength, "strength_statistics", counted("focus strength", ui.strength.strength_statistics))
    ui.session._jobs.clear()
    at = started_app(monkeypatch, 300)
    images, _ = digit_images(digits_split(0, 0.2).test[40:46])
    at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(f"a{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    at.run()
    assert calls["analysis"] == 0  # the home page's overview needs one forward pass, not the analysis

    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        assert not at.error, (page, [e.value for e in at.error])
    assert calls["analysis"] == 1

    at.switch_page(PAGES[0]).run()
    at.selectbox(key="importance_metric").set_value("layer_impact").run()
    at.radio(key="importance_scope").set_value("Focus image (local)").run()
    at.switch_page(PAGES[2]).run()
    at.toggle(key="pattern_cls").set_value(True).run()  # the pass sampled both map kinds
    assert not at.exception, at.exception
    at.switch_page(PAGES[1]).run()
    at.switch_page("streamlit_app.py").run()  # the overview now reads the analysis' predictions
    assert not at.exception, at.exception
    assert calls["analysis"] == 1
    assert calls["map sample"] == 0
    assert calls["focus strength"] <= 1  # the focus image's own offset map, once
