"""AppTest of the compare page: two bundles, the current analysis against a bundle, and bad input on one side."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.errors import NothingToCompare, UnsupportedMapKind
from core.inputs.images import ImageSet
from core.models.handle import wrap_model
from core.study.bundle import load_bundle, save_bundle
from core.study.casestudy import CaseSettings, analyze
from core.study.comparison import compare
from helpers.app import assert_clean, captions, chart_specs, page_texts
from helpers.data import APP, DATA
from helpers.images import labelled_noise
from helpers.models import tiny_vit
from ui import compare as page_state
from ui import patterns
from viz.common import HEAD_SELECTION

TIMEOUT = 300
PAGE = "pages/6_Compare.py"
V4 = DATA / "bundle_v4_demo.zip"
SAME_HEADS_NOTE = "every difference is 0"


@pytest.fixture(scope="module")
def small_bundle(small_study) -> bytes:
    return save_bundle(small_study)


@pytest.fixture(scope="module")
def tiny_bundle() -> bytes:
    """A study of a tiny backbone: 3 layers x 3 heads on a 4x4 grid, where the demo model has 6 x 6 on 6x6."""
    handle = wrap_model(tiny_vit(num_classes=0), device="cpu")
    settings = CaseSettings(top_k=2, hurt_images=2, max_maps=150, n_clusters=3, curve_steps=2)
    noise = labelled_noise(12)
    images = ImageSet.from_images(noise.title, noise.images, label_names=("ant", "bee", "cat"))
    return save_bundle(analyze(handle, images, settings, layout_method="pca"))


@pytest.fixture
def page(monkeypatch) -> AppTest:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)  # the joint patterns laid out with PCA at once
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    at.switch_page(PAGE).run()
    assert_clean(at)
    return at


def _uploader(at: AppTest, side: str):
    return next(u for u in at.get("file_uploader") if u.key == page_state.uploader_key(side))


def _upload(at: AppTest, side: str, name: str, data: bytes | None) -> None:
    _uploader(at, side).set_value(None if data is None else [(name, data, "application/zip")])
    at.run()


def _both_bundles(at: AppTest, a: tuple[str, bytes], b: tuple[str, bytes]) -> None:
    at.radio(key=page_state.source_key("A")).set_value(page_state.BUNDLE).run()
    _upload(at, "A", *a)
    _upload(at, "B", *b)


def _heatmaps(at: AppTest) -> list[dict]:
    """The charts where a click picks a head: the difference heatmaps."""
    return [spec for spec, _ in chart_specs(at) if any(p.get("name") == HEAD_SELECTION for p in _params(spec))]


def _params(spec: dict) -> list[dict]:
    return [*spec.get("params", []), *(p for layer in spec.get("layer", []) for p in layer.get("params", []))]


def _errors_under(at: AppTest, column: int) -> list[str]:
    return [e.value for e in at.main.columns[column].error]


def test_two_bundles_show_what_changed_head_by_head(page: AppTest, small_study, small_bundle) -> None:
    _both_bundles(page, ("v4.zip", V4.read_bytes()), ("small.zip", small_bundle))
    assert_clean(page)
    expected = compare(load_bundle(V4.read_bytes()), small_study)
    texts = page_texts(page)
    assert expected.a.label in texts and expected.b.label in texts
    for sentence in expected.sentences:
        assert sentence in texts
    assert len(_heatmaps(page)) == len(expected.measures)
    assert page.dataframe and "Download the HTML comparison report" in [b.label for b in page.get("download_button")]
    assert "python -m core compare A.zip B.zip --report compare.html" in captions(page)

    page.session_state[page_state.FOCUS_KEY] = (2, 3)  # as a click on L2H3 in a heatmap leaves it
    page.run()
    assert_clean(page)
    assert "Focus head L2H3" in page_texts(page)


@pytest.mark.slow  # the live case study of the demo set
def test_the_current_analysis_against_a_bundle(page: AppTest, small_bundle) -> None:
    assert page.radio(key=page_state.source_key("A")).value == page_state.LIVE
    assert "Give side B a result bundle" in page_texts(page)
    _upload(page, "B", "small.zip", small_bundle)
    assert_clean(page)
    texts = page_texts(page)
    assert "A: demo" in texts and "B: demo" in texts
    assert _heatmaps(page)


def test_a_damaged_bundle_is_refused_under_its_side_only(page: AppTest, small_bundle) -> None:
    _both_bundles(page, ("v4.zip", V4.read_bytes()), ("broken.zip", b"PK\x03\x04 not really a zip"))
    assert not page.exception
    assert len(page.error) == 1 and page.error[0].value.endswith(".")
    assert _errors_under(page, 1) and not _errors_under(page, 0)
    assert "Opened v4.zip" in captions(page)  # side A stays
    assert "Give side B a result bundle" in page_texts(page)

    _upload(page, "B", "small.zip", small_bundle)
    assert_clean(page)
    assert _heatmaps(page)

    _upload(page, "B", "", None)  # removed from its uploader: side B is empty again
    assert_clean(page)
    assert "Give side B a result bundle" in page_texts(page) and not _heatmaps(page)


def test_the_same_bundle_on_both_sides_differs_nowhere(page: AppTest) -> None:
    data = V4.read_bytes()
    _both_bundles(page, ("one.zip", data), ("two.zip", data))
    assert_clean(page)
    assert SAME_HEADS_NOTE in page_texts(page)


def test_heads_of_another_shape_compare_by_depth_and_joint_patterns(page: AppTest, tiny_bundle) -> None:
    _both_bundles(page, ("v4.zip", V4.read_bytes()), ("tiny.zip", tiny_bundle))
    assert_clean(page)
    assert any("heads cannot be matched one to one" in i.value for i in page.info)
    assert not _heatmaps(page)
    charts = len(chart_specs(page))
    assert charts == 2  # the trends and the pruning curves

    page.checkbox(key=page_state.PATTERNS_KEY).check().run()
    assert_clean(page)
    assert len(chart_specs(page)) == charts + 2  # the joint pattern space and its prototypes
    assert "were resampled to" in captions(page)


def test_a_failing_side_or_pair_is_a_sentence(page: AppTest, small_bundle, monkeypatch) -> None:
    from ui import casestudy

    def fail(*_args, **_kwargs):
        raise UnsupportedMapKind("The current model has no CLS token, so CLS maps cannot be drawn.")

    monkeypatch.setattr(casestudy, "live_study", fail)
    _upload(page, "B", "small.zip", small_bundle)  # A is the current analysis, which fails
    assert not page.exception
    assert [e.value for e in page.error] == ["The current model has no CLS token, so CLS maps cannot be drawn."]

    def refuse(*_args, **_kwargs):
        raise NothingToCompare("A and B hold no measure in common.")

    page_state._compared.clear()
    monkeypatch.setattr(page_state, "compare", refuse)
    page.radio(key=page_state.source_key("A")).set_value(page_state.BUNDLE).run()
    _upload(page, "A", "v4.zip", V4.read_bytes())
    assert not page.exception
    assert [e.value for e in page.error] == ["A and B hold no measure in common."]
