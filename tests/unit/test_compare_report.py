"""The comparison report (``viz.compare_report``): one offline HTML document, every user string escaped."""

from __future__ import annotations

import dataclasses
import html
import json
import re

import pytest

from core.study.bundle import load_bundle, save_bundle
from core.study.comparison import compare
from helpers.bundles import edited_bundle
from helpers.data import DATA
from helpers.report import assert_sections_in_order, without_bundle
from viz.compare import comparison_charts
from viz.compare_report import render_comparison
from viz.export import inline_spec

HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_SET = "digits </script><script>alert(2)</script>"
SECTIONS = [
    ("summary", "Summary"),
    ("heads", "Per-head differences"),
    ("concentration", "Sink heads and high-norm tokens"),
    ("trends", "Trends with depth"),
    ("curves", "Pruning curves"),
    ("top", "Top heads side by side"),
    ("patterns", "Patterns across both"),
]


@pytest.fixture(scope="module")
def comparison(small_study):
    """A bundle of the demo model whose model name and image-set title are scripts (A), and the small study's bundle (B)."""

    def hostile(manifest: dict) -> None:
        manifest["model"]["name"] = HOSTILE_MODEL
        manifest["image_set"]["title"] = HOSTILE_SET

    study_a = load_bundle(edited_bundle((DATA / "bundle_v4_demo.zip").read_bytes(), manifest=hostile))
    study_b = load_bundle(save_bundle(small_study))
    return compare(study_a, study_b, patterns=True, layout="pca")


@pytest.fixture(scope="module")
def report(comparison) -> str:
    return render_comparison(comparison)


def _specs(document: str) -> dict:
    return json.loads(re.search(r"const specs = (\{.*?\});\n", document, re.DOTALL).group(1))


def test_one_document_with_one_vega_bundle(report: str) -> None:
    import vl_convert

    assert report.startswith("<!DOCTYPE html>") and report.count("<!DOCTYPE html>") == 1
    assert without_bundle(report).count("</html>") == 1
    assert report.count(vl_convert.javascript_bundle()[:200]) == 1
    assert report.count("<script") == report.count("</script>") == 2  # the bundle, then the specs


def test_sections_come_in_order_each_with_its_heading(report: str) -> None:
    assert_sections_in_order(report, SECTIONS)


def test_nothing_is_fetched_from_elsewhere(report: str) -> None:
    markup = without_bundle(report)
    references = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", markup)
    assert references  # the section links
    for reference in references:
        assert reference.startswith("#"), reference
    assert "<link" not in report and "@import" not in report
    assert not re.search(r"https?:|//[a-z0-9]", markup, re.IGNORECASE)


def test_hostile_names_are_escaped_everywhere(comparison, report: str) -> None:
    for raw in (HOSTILE_MODEL, HOSTILE_SET, "<script>alert"):
        assert raw not in report
    assert html.escape(HOSTILE_MODEL) in report  # title and summary
    assert html.escape(HOSTILE_SET) in report  # summary and the top heads' heading
    # in the specs (legends name each side) the label is JSON with <, > as \u escapes: it cannot end the script
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(2)" in report
    curves = _specs(report)["curves"]
    (study,) = {row["study"] for row in curves["datasets"][curves["data"]["name"]] if row["side"] == "A"}
    assert " ".join(line.strip() for line in study.split("\n")) == comparison.a.label  # the legend's lines


def test_the_charts_are_the_ones_comparison_charts_builds(comparison, report: str) -> None:
    built = {key: json.loads(json.dumps(inline_spec(chart))) for key, chart in comparison_charts(comparison).items()}
    shown = _specs(report)
    assert shown == built
    for key in built:
        assert f'<div class="chart" id="chart-{key}"></div>' in report


def test_the_summary_lists_the_sentences_and_the_notes(comparison, report: str) -> None:
    notes = (comparison.why_not, *comparison.missing)
    for sentence in comparison.sentences:
        if sentence in notes:
            assert f'<p class="note">{html.escape(sentence)}</p>' in report
        else:
            assert f"<li>{html.escape(sentence)}</li>" in report
    moved = comparison.moves[(comparison.moves["metric"] == comparison.metric) & (comparison.moves["move"] != 0)]
    for label in moved["head_label"].head(10):
        assert f"<tr><td>{label}</td>" in report


def test_sections_that_do_not_apply_say_why(comparison) -> None:
    why = "A has 12 layers x 6 heads and B has 6 layers x 6 heads: heads cannot be matched one to one."
    unmatched = dataclasses.replace(comparison, same_heads=False, why_not=why, patterns=None)
    document = render_comparison(unmatched)
    heads = re.search(r'<section id="heads">(.*?)</section>', document, re.DOTALL).group(1)
    assert f'<p class="note">{html.escape(why)}</p>' in heads and "chart-difference" not in heads
    concentration = re.search(r'<section id="concentration">(.*?)</section>', document, re.DOTALL).group(1)
    assert "cannot be matched head by head" in concentration
    patterns = re.search(r'<section id="patterns">(.*?)</section>', document, re.DOTALL).group(1)
    assert "was not computed" in patterns and "chart-patterns" not in patterns


def test_a_side_without_a_curve_is_named(comparison) -> None:
    """A bundle saved before the output similarity was kept has none to compare with a backbone's."""
    curves = comparison.curves.assign(value=comparison.curves["value"].where(comparison.curves["side"] == "B"))
    document = render_comparison(dataclasses.replace(comparison, curves=curves))
    section = re.search(r'<section id="curves">(.*?)</section>', document, re.DOTALL).group(1)
    assert "A&#x27;s bundle (format version 4) holds no accuracy curve, so only the other side&#x27;s is drawn." in section


def test_the_report_stays_small(report: str) -> None:
    # the Vega bundle is about 0.9 MB; the prototypes' thousands of cells are sent with 4 digits each
    assert len(report.encode("utf-8")) < 1_300_000
