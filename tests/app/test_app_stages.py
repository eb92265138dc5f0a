"""A slow analysis on the pages: the preview at once, the estimate and a sample cap before the heavy stages, stop and continue."""

from __future__ import annotations

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui.results
from core.pipeline.staged import StagedAnalysis
from helpers.app import captions, notice_texts, started_app
from helpers.images import encode

IMPORTANCE, STRENGTH, CASE = "pages/1_Head_Importance.py", "pages/2_Attention_Strength.py", "pages/4_Case_Study.py"


@pytest.fixture
def slow(monkeypatch) -> AppTest:
    """The demo app as if its heavy stages took longer than the auto-start budget."""
    monkeypatch.setattr(ui.results, "AUTO_START_SECONDS", 0.0)
    ui.results.JOBS.clear()
    at = started_app(monkeypatch, 600)
    at.switch_page(IMPORTANCE).run()
    assert not at.exception, at.exception
    yield at
    ui.results.JOBS.clear()


def test_the_heavy_stages_wait_with_an_estimate_and_run_on_a_seeded_sample(slow: AppTest) -> None:
    # the Taylor preview is there at once; the exact metrics wait for Start
    assert slow.selectbox(key="importance_metric").options == ["taylor"]
    shown = notice_texts(slow)
    assert "Taylor preview" in shown
    assert "**Estimate** on this CPU for 360 images: about" in shown and "measured on the first images" in shown
    cap = slow.slider(key="analysis_cap")
    assert (cap.min, cap.max) == (1, 360)
    cap.set_value(40).run()
    assert "**Estimate** on this CPU for 40 images" in notice_texts(slow)
    slow.button(key="analysis_start").click().run()
    assert not slow.exception, slow.exception
    assert "probability" in slow.selectbox(key="importance_metric").options  # the sweep has finished
    text = captions(slow)
    assert "over a seeded sample of 40 of the 360 images" in text  # B1 and the pruning curve say so
    assert text.count("a seeded sample of 40 of the 360 images") >= 2
    # strength reads the first pass, which covers every image
    slow.switch_page(STRENGTH).run()
    assert "over the 360 images" in captions(slow) and "sample" not in captions(slow)
    # the case study uses every image: it offers to go on with the rest, then shows its findings
    slow.switch_page(CASE).run()
    assert "The case study uses every image; the exact sweep and the curve ran on a seeded sample of 40" in notice_texts(slow)
    assert not any(s.key == "analysis_cap" for s in slow.slider)  # every image, no choice
    slow.button(key="analysis_start").click().run()
    assert not slow.exception, slow.exception
    assert "The 5 most important heads" in "\n".join(h.value for h in slow.subheader)


def test_a_stopped_sweep_keeps_its_images_and_continues(slow: AppTest, monkeypatch) -> None:
    original = StagedAnalysis._sweep_images

    def stop_after_one_batch(self, indices, **kwargs):
        original(self, indices, **kwargs)
        if not kwargs.get("first"):
            self.stop()

    monkeypatch.setattr(StagedAnalysis, "_sweep_images", stop_after_one_batch)
    slow.slider(key="analysis_cap").set_value(360).run()
    slow.button(key="analysis_start").click().run()
    assert not slow.exception, slow.exception
    shown = notice_texts(slow)
    assert "Stopped: the exact sweep had finished 68 of 360 images" in shown  # the estimate's 4 images and a batch of 64
    assert slow.button(key="analysis_start").label == "Continue"
    assert slow.selectbox(key="importance_metric").options == ["taylor"]  # the preview stays
    monkeypatch.setattr(StagedAnalysis, "_sweep_images", original)
    slow.button(key="analysis_start").click().run()
    assert not slow.exception, slow.exception
    assert "probability" in slow.selectbox(key="importance_metric").options
    assert "over the 360 images" in captions(slow)


def test_heavy_stages_that_finish_while_the_page_waits_for_the_estimate_show_their_results(monkeypatch) -> None:
    """A small set's sweep and curve can end between two looks of the page: it shows them, not a Start button."""
    import ui.stages

    monkeypatch.setattr(ui.stages, "POLL_SECONDS", 3.0)  # the worker measures, sweeps and curves 3 images meanwhile
    ui.results.JOBS.clear()
    at = started_app(monkeypatch, 600)
    at.radio(key="image_source").set_value("Upload images").run()
    photos = [(f"p{i}.png", encode(Image.new("RGB", (32, 32), (40 * i, 90, 20))), "image/png") for i in range(3)]
    at.file_uploader(key="image_upload").set_value(photos)
    at.run()
    at.switch_page(IMPORTANCE).run()
    assert not at.exception, at.exception
    assert "taylor" in at.selectbox(key="importance_metric").options and len(at.selectbox(key="importance_metric").options) > 1
    assert not [b for b in at.button if b.key == "analysis_start"]
    ui.results.JOBS.clear()
