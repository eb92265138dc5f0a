"""The self-contained HTML report: its content, escaping and no external reference (``tests/browser/test_report_browser.py``
opens it in an offline browser)."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re

import numpy as np
import pytest

from core.study.casestudy import findings
from helpers.report import (
    HOSTILE_CLASS,
    HOSTILE_IMAGE,
    HOSTILE_MODEL,
    assert_sections_in_order,
    without_bundle,
)
from viz.report import case_charts, render_report

SECTIONS = [
    ("summary", "Summary"),
    ("findings", "Findings"),
    ("importance", "Head importance"),
    ("strength", "Attention strength"),
    ("patterns", "Attention patterns"),
    ("explanations", "Where the model looked"),
    ("settings", "Settings and versions"),
]


@pytest.fixture(scope="module")
def report(small_study) -> str:
    return render_report(small_study)


# --- content ---------------------------------------------------------------------------


def test_sections_come_in_order_each_with_its_heading(report: str) -> None:
    assert_sections_in_order(report, SECTIONS)


def test_every_top_head_has_its_label_and_four_linked_findings(small_study, report: str) -> None:
    found = findings(small_study)
    assert len(found.heads) == small_study.settings.top_k
    assert html.escape(found.layer_trend) in report
    for finding in found.heads:
        assert f'id="head-{finding.label}"' in report
        for sentence, section in (
            (finding.importance, "importance"),
            (finding.mechanism, "importance"),
            (finding.locality, "strength"),
            (finding.pattern, "patterns"),
            (finding.explanation, "explanations"),
        ):
            assert f'{html.escape(sentence)} <a class="source" href="#{section}">' in report


def test_model_settings_and_every_library_version_are_recorded(small_study, report: str) -> None:
    manifest = small_study.manifest
    assert manifest["model"]["key"] in report
    assert manifest["image_set"]["key"] in report
    assert manifest["created"] in report
    for name, version in manifest["versions"].items():
        assert f"<tr><th>{html.escape(name)}</th><td>{html.escape(version)}</td></tr>" in report
    for name, value in manifest["settings"].items():
        assert f"<tr><th>{name}</th><td>{value}</td></tr>" in report
    for item in manifest["image_set"]["images"]:
        assert f"<td>{item['id']}</td><td>{html.escape(item['name'])}</td>" in report


def test_each_cited_image_is_an_inline_png(small_study, report: str) -> None:
    cards = findings(small_study).heads
    cited = {image_id for finding in cards for image_id in finding.hurt_images}
    assert cited and cited <= set(small_study.thumbnails)
    for image_id in cited:
        encoded = base64.b64encode(small_study.thumbnails[image_id]).decode("ascii")
        assert f'<img src="data:image/png;base64,{encoded}"' in report
    sources = re.findall(r'<img src="([^"]*)"', without_bundle(report))
    assert len(sources) == sum(len(finding.hurt_images) for finding in cards)
    for source in sources:
        assert base64.b64decode(source.removeprefix("data:image/png;base64,")).startswith(b"\x89PNG\r\n\x1a\n")


def test_every_chart_has_a_container(small_study, report: str) -> None:
    charts = case_charts(small_study, findings(small_study))
    assert {f"modes-{finding.label}" for finding in findings(small_study).heads} <= set(charts)
    containers = re.findall(r'<div class="chart" id="chart-([^"]+)"></div>', report)
    assert containers == list(charts)


def test_pattern_density_is_binned_not_one_point_per_map(small_study) -> None:
    spec = case_charts(small_study, findings(small_study))["pattern-space"].to_dict()
    sizes = sorted(len(rows) for rows in spec["datasets"].values())
    assert len(small_study.tables["pattern_samples"]) > 500
    assert sizes[-1] <= 50 * 50  # the density cells, at most 50 x 50 whatever the sample size


def test_another_metric_ranks_the_findings(small_study) -> None:
    page = render_report(small_study, "layer_impact")
    for finding in findings(small_study, "layer_impact").heads:
        assert html.escape(finding.importance) in page
    assert "heads ranked by <b>layer_impact</b>" in page


def test_an_unknown_metric_is_refused(small_study) -> None:
    with pytest.raises(ValueError, match="Unknown metric"):
        render_report(small_study, "loudness")


# --- escaping and self-containment -------------------------------------------------------


def test_hostile_names_are_escaped_everywhere(hostile_report: str) -> None:
    for raw in (HOSTILE_IMAGE, HOSTILE_MODEL, HOSTILE_CLASS, "<script>alert", "<b onmouseover", "<img src=x"):
        assert raw not in hostile_report
    assert html.escape(HOSTILE_IMAGE) in hostile_report  # the card's caption
    assert html.escape(HOSTILE_MODEL) in hostile_report  # title and summary
    assert html.escape(HOSTILE_CLASS) in hostile_report  # the card's target
    # inside the chart specs the name is JSON with <, > as \u escapes: it cannot end the script
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e.png" in hostile_report
    assert hostile_report.count("<script") == hostile_report.count("</script>") == 2


def test_nothing_is_fetched_from_elsewhere(report: str) -> None:
    markup = without_bundle(report)
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup)
    assert references
    for reference in references:
        assert reference.startswith(("data:", "#")), reference
    assert "<link" not in report
    assert "@import" not in report
    assert not re.search(r"url\(\s*['\"]?(?!data:)", markup)
    # no URL of any scheme, nor a protocol-relative one, once the data: URIs' base64 is set aside
    assert not re.search(r"https?:|//[a-z0-9]", re.sub(r"data:[^\"')\s]*", "", markup), re.IGNORECASE)


def test_the_report_stays_small(report: str) -> None:
    # the bundle is about 0.9 MB; specs and thumbnails of a small study add little
    assert len(report.encode("utf-8")) < 2_000_000


def test_a_reopened_bundle_gives_the_same_report(small_study):
    """What the dashboard opens from a bundle renders exactly the report of the study that was saved."""
    from core.study.bundle import load_bundle, save_bundle

    reopened = load_bundle(save_bundle(small_study), model_key=small_study.manifest["model"]["key"])
    assert render_report(reopened, "taylor") == render_report(small_study, "taylor")


def test_a_report_inlines_more_than_altairs_5000_rows_and_leaves_its_limit_in_place(small_study) -> None:
    """DINOv2-S's prototypes (6 clusters of 31x31 offsets) are 5,766 rows: the report must still render."""
    import dataclasses

    import altair as alt
    import pandas as pd

    prototypes = small_study.tables["pattern_prototypes"]
    large = pd.concat([prototypes] * (5001 // len(prototypes) + 1), ignore_index=True)
    study = dataclasses.replace(small_study, tables={**small_study.tables, "pattern_prototypes": large})
    html = render_report(study)
    assert html.count('"value"') > 5000
    with pytest.raises(alt.MaxRowsError):  # the global limit is back for everything else
        alt.Chart(large).mark_point().encode(x="row:O").to_dict()


def test_the_relevance_maps_are_each_top_heads_most_hurt_image_once(small_study) -> None:
    from core.study.casestudy import relevance_of
    from viz.report import relevance_entries

    found = findings(small_study)
    entries = relevance_entries(small_study, found)
    most_hurt = list(dict.fromkeys(finding.hurt_images[0] for finding in found.heads))
    assert len(entries) == len(most_hurt)
    names = {item["id"]: item["name"] for item in small_study.manifest["image_set"]["images"]}
    for (title, maps, thumbnail), image_id in zip(entries, most_hurt):
        heads = [f.label for f in found.heads if f.hurt_images[0] == image_id]
        assert title == f"{', '.join(heads)} · {names[image_id]}"
        assert thumbnail == small_study.thumbnails[image_id]
        assert all(np.array_equal(maps[m], v) for m, v in relevance_of(small_study, image_id).items())
    spec = json.dumps(case_charts(small_study, found)["relevance-maps"].to_dict())
    assert spec.count('"mark": {"type": "rect"') >= 3 * len(entries) and spec.count("data:image/png;base64,") == len(entries)


def test_the_summary_gives_accuracy_on_labelled_images_only(small_study, report: str) -> None:
    unpruned = small_study.tables["importance_unpruned"]
    labelled = unpruned[unpruned["labelled"]]
    assert len(labelled) == len(unpruned)  # the small study's digits all have labels
    row = f"<tr><th>unpruned accuracy on the {len(labelled)} labelled images</th><td>{labelled['correct'].mean():.1%}</td></tr>"
    assert row in report
    # without labels each target is the unpruned top-1, which agrees with itself: no row says so
    unlabelled = unpruned.assign(labelled=False, correct=True)
    study = dataclasses.replace(small_study, tables={**small_study.tables, "importance_unpruned": unlabelled})
    summary = re.search(r'<section id="summary">.*?</section>', render_report(study), re.S).group(0)
    assert "unpruned accuracy" not in summary and "agreement" not in summary and "100.0%" not in summary
