"""AppTest of the case-study page: findings on the demo set, links to the views, opening bundles."""

from __future__ import annotations

import dataclasses
import re

import pytest
from streamlit.testing.v1 import AppTest

from core.measures.importance import head_importance, rank_heads
from core.study.bundle import save_bundle
from core.study.casestudy import findings
from helpers.data import APP
from ui import patterns, selection
from ui.casestudy import EVIDENCE
from viz.report import case_charts, mode_chart_key

TIMEOUT = 300
PAGE = "pages/4_Case_Study.py"
HEADING = re.compile(r"#### (\d+)\. (L\d+H\d+)")


@pytest.fixture(scope="module")
def demo_ranking(demo_handle):
    """Global importance of the demo samples from the core API, apart from the page's caches."""
    from core.inputs.images import demo_digits_set
    from core.study.casestudy import set_labels

    split = demo_handle.card["split"]
    images = demo_digits_set(split["seed"], split["test_fraction"])
    return head_importance(demo_handle, images.pil_images(), set_labels(images))


@pytest.fixture
def page(monkeypatch) -> AppTest:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    at.switch_page(PAGE).run()
    _ok(at)
    return at


def _ok(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def _headings(at: AppTest) -> list[str]:
    return [m.group(2) for md in at.markdown if (m := HEADING.match(md.value))]


def _text(at: AppTest) -> str:
    """The page's Markdown as read: the page escapes Markdown's special characters with backslashes."""
    return "\n".join(md.value for md in at.markdown).replace("\\", "")


def _upload(at: AppTest, name: str, data: bytes) -> None:
    at.get("file_uploader")[0].set_value([(name, data, "application/zip")])
    at.run()


def test_findings_rank_the_heads_of_the_chosen_metric(page: AppTest, demo_ranking) -> None:
    for metric in ("probability", "taylor"):
        page.selectbox(key="case_metric").set_value(metric).run()
        _ok(page)
        expected = rank_heads(demo_ranking, metric).head(5)
        assert _headings(page) == [f"L{l}H{h}" for l, h in zip(expected["layer"], expected["head"])]
    assert len(page.get("vega_lite_chart")) == 5 + sum(len(keys) for keys in EVIDENCE.values())
    text = _text(page)
    assert re.search(r"From layer 0 to layer 5, mean hop-profile entropy goes from [\d.]+ to [\d.]+ nats", text)
    assert text.count("of its hop profile lies within one hop") == 5 and text.count("pattern cluster") >= 5
    assert "ranks 1st of 36 heads by taylor" in text

    page.slider(key="case_top_k").set_value(2).run()
    _ok(page)
    assert len(_headings(page)) == 2


@pytest.mark.parametrize("part, title", [("locality", "Attention strength"), ("pattern", "Attention patterns")])
def test_a_finding_opens_its_view_with_that_head_in_focus(page: AppTest, part: str, title: str) -> None:
    first = _headings(page)[0]
    page.button(key=f"case_{part}_{first}").click().run()
    _ok(page)
    assert page.session_state[selection.FOCUS_KEY].head_label == first
    assert any(title in t.value for t in page.title)


def test_the_mechanism_opens_b2_on_the_image_pruning_hurts_most(page: AppTest, demo_ranking, demo_handle) -> None:
    """The link sets the focus image too, so B2 shows the image the sentence is about."""
    from core.inputs.images import demo_digits_set
    from core.measures.importance import head_importance_tables
    from core.study.casestudy import hurt_images, set_labels

    first = _headings(page)[0]
    page.button(key=f"case_mechanism_{first}").click().run()
    _ok(page)
    split = demo_handle.card["split"]
    images = demo_digits_set(split["seed"], split["test_fraction"])
    layer, head = map(int, first[1:].split("H"))
    tables = head_importance_tables(demo_handle, images.pil_images(), set_labels(images), metrics=("probability",))
    most = int(hurt_images(tables, layer, head, 1)["image"].iloc[0])
    focus = page.session_state[selection.FOCUS_KEY]
    assert (focus.head_label, focus.image_id) == (first, images.images[most].id)
    assert any("Head importance" in t.value for t in page.title)


def test_open_a_bundle_then_refuse_a_damaged_one_and_another_models(page: AppTest, small_study, monkeypatch) -> None:
    from ui import casestudy

    reads: list[int] = []
    real = casestudy.load_bundle
    monkeypatch.setattr(casestudy, "load_bundle", lambda *a, **k: reads.append(1) or real(*a, **k))
    expected = findings(small_study, "probability")
    _upload(page, "small.zip", save_bundle(small_study))
    _ok(page)
    assert "Showing the bundle **small.zip**" in "\n".join(i.value for i in page.info).replace("\\", "")
    assert _headings(page) == [f.label for f in expected.heads]  # top_k 3 in the bundle: at most 3 shown
    assert expected.layer_trend in _text(page)

    # a damaged bundle: one sentence, the opened bundle stays
    _upload(page, "broken.zip", b"PK\x03\x04 not really a zip")
    assert not page.exception
    assert len(page.error) == 1 and page.error[0].value.endswith(".")
    assert _headings(page) == [f.label for f in expected.heads]
    before = len(reads)
    page.slider(key="case_top_k").set_value(4).run()  # a rerun with the bad file still there
    assert len(reads) == before and len(page.error) == 1  # refused once, not read again

    other = dataclasses.replace(
        small_study, manifest={**small_study.manifest, "model": {**small_study.manifest["model"], "name": "vit_other", "key": "vit_other-0123456789abcdef"}}
    )
    _upload(page, "other.zip", save_bundle(other))
    assert not page.exception
    assert "vit_other" in page.error[0].value.replace("\\", "") and "demo" in page.error[0].value
    assert _headings(page) == [f.label for f in expected.heads]

    page.button(key="case_close_bundle").click().run()
    _ok(page)
    assert not page.info and len(_headings(page)) == 4  # the live study again (4 heads chosen), the uploader empty


def test_the_page_groups_every_chart_of_the_report_under_one_view(small_study) -> None:
    found = findings(small_study, "probability")
    shown = [key for keys in EVIDENCE.values() for key in keys] + [mode_chart_key(f) for f in found.heads]
    assert sorted(shown) == sorted(case_charts(small_study, found))


def test_names_in_a_bundle_are_shown_as_text_not_markdown(page: AppTest, small_study) -> None:
    """A model name or set title in a bundle could carry Markdown: an image fetched from anywhere, LaTeX, icons."""
    hostile = "![x](https://evil.example/a.png) $x$"
    manifest = {
        **small_study.manifest,
        "model": {**small_study.manifest["model"], "name": hostile},
        "image_set": {**small_study.manifest["image_set"], "title": hostile},
    }
    _upload(page, "hostile.zip", save_bundle(dataclasses.replace(small_study, manifest=manifest)))
    _ok(page)
    shown = page.info[0].value
    # however the shared helper escapes, the image syntax and the LaTeX stay backslash-escaped text
    assert "\\!\\[x\\]" in shown and "\\$x\\$" in shown
    assert "![x](" not in shown


def test_a_bundle_with_absurd_numbers_is_one_sentence_and_an_accepted_one_renders(page: AppTest, small_study) -> None:
    """A NaN cluster id or an infinite map count once crashed the page on every rerun."""
    import numpy as np
    import pandas as pd

    from ui import casestudy
    from viz.report import render_report

    _upload(page, "small.zip", save_bundle(small_study))
    _ok(page)
    expected = _headings(page)
    for table, column, value in (("pattern_heads", "cluster", np.nan), ("pattern_clusters", "maps", np.inf), ("pattern_heads", "cluster", 1e300)):
        frame = small_study.tables[table].astype({column: float})
        frame.loc[0, column] = value
        hostile = dataclasses.replace(small_study, tables={**small_study.tables, table: frame})
        _upload(page, f"{table}.zip", save_bundle(hostile))
        assert not page.exception, page.exception
        assert len(page.error) == 1 and "not finite" in page.error[0].value.replace("\\", "")
        assert _headings(page) == expected  # the opened bundle stays

    samples = small_study.tables["pattern_samples"].assign(x=1e9)
    edge = dataclasses.replace(
        small_study,
        tables={**small_study.tables, "pattern_samples": samples, "images": small_study.tables["images"].assign(probability=1.0)},
    )
    _upload(page, "edge.zip", save_bundle(edge))
    _ok(page)
    opened = page.session_state[casestudy.OPENED_KEY].study
    pd.testing.assert_frame_equal(opened.tables["pattern_samples"], samples)
    assert "<html" in render_report(opened, "probability")


def test_a_version_1_bundle_opens_on_the_page_with_its_own_metrics(page: AppTest) -> None:
    """A bundle saved before output_impact existed: the page offers the metrics it holds, and renders."""
    from helpers.data import V1_BUNDLE, V1_METRICS

    page.selectbox(key="case_metric").set_value("output_impact").run()  # the live study has it
    _ok(page)
    _upload(page, "old.zip", V1_BUNDLE.read_bytes())
    _ok(page)
    assert page.selectbox(key="case_metric").options == [m.replace("_", " ") for m in V1_METRICS]
    assert page.selectbox(key="case_metric").value == "probability"  # the live choice is not in the bundle
    assert len(_headings(page)) == 2 and "target probability" in _text(page)


def test_the_case_study_of_a_backbone(monkeypatch, tmp_path) -> None:
    import timm
    from safetensors.torch import save

    from core.measures.importance import BACKBONE_METRICS, BACKBONE_REASON
    from helpers.markdown import shown

    weights = tmp_path / "backbone.safetensors"
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    weights.write_bytes(save({k: v.contiguous() for k, v in model.state_dict().items()}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEADSCOPE_MODEL", "test_vit")
    monkeypatch.setenv("HEADSCOPE_CHECKPOINT", str(weights))
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    _ok(at)
    at.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    at.switch_page(PAGE).run()
    _ok(at)
    assert at.selectbox(key="case_metric").options == [m.replace("_", " ") for m in BACKBONE_METRICS]
    captions = shown("\n".join(c.value for c in at.caption))
    assert f"is a backbone: {BACKBONE_REASON}." in captions
    assert len(_headings(at)) == 5
    text = _text(at)
    assert "ranks 1st of 12 heads by layer impact" in text
    assert "target probability" not in text and "the output" in text
    at.selectbox(key="case_metric").set_value("output_impact").run()
    _ok(at)
    assert "ranks 1st of 12 heads by output impact" in _text(at)
    labels = [b.label for b in at.get("download_button") if b.label not in ("PNG", "SVG", "CSV")]  # not a chart's own
    assert labels == ["Download the HTML report", "Download the result bundle"]
