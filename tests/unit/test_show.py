"""viz.show, viz.chart and viz.chart_names: one chart of a study or a comparison by name, for a notebook."""

from __future__ import annotations

import sys

import altair as alt
import pytest

import viz
from core.errors import InvalidSetting, UnsupportedMetric
from core.study.bundle import load_bundle
from core.study.comparison import compare
from helpers.data import DATA

STUDY_CHARTS = [
    "importance-line", "importance-heatmap", "pruning-curve", "entropy-by-layer", "hop-profiles",
    "distance-by-layer", "concentration-by-layer", "pattern-space", "pattern-prototypes", "pattern-mse", "relevance-maps",
]


def _line_values(chart: alt.TopLevelMixin) -> dict[str, float]:
    """``{head_label: value}`` of the importance line's data."""
    data = chart.to_dict()["datasets"]
    rows = next(rows for rows in data.values() if rows and "head_label" in rows[0] and "value" in rows[0])
    return {row["head_label"]: row["value"] for row in rows}


def test_a_study_names_the_reports_charts_with_one_partial_pruning_chart_per_top_head(small_study) -> None:
    names = viz.chart_names(small_study)
    assert names[-len(STUDY_CHARTS):] == STUDY_CHARTS
    assert len([name for name in names if name.startswith("modes-L")]) == 3  # the small study's top_k
    assert len([name for name in viz.chart_names(small_study, top_k=2) if name.startswith("modes-L")]) == 2
    with pytest.raises(InvalidSetting, match="at least 1, not 0"):
        viz.chart_names(small_study, top_k=0)


def test_a_chart_is_drawn_under_the_metric_asked_for(small_study) -> None:
    by_probability = _line_values(viz.chart(small_study, "importance-line"))
    by_impact = _line_values(viz.chart(small_study, "importance-line", metric="output_impact"))
    assert len(by_probability) == len(by_impact) == 36  # the demo model: 6 layers x 6 heads
    assert by_probability != by_impact
    assert all(0 <= value <= 1 for value in by_probability.values())  # a probability per pruned head


def test_a_name_the_result_lacks_is_one_sentence_that_lists_the_names(small_study) -> None:
    with pytest.raises(InvalidSetting, match="no chart 'importance'.*importance-line, importance-heatmap"):
        viz.chart(small_study, "importance")
    with pytest.raises(UnsupportedMetric):
        viz.chart(small_study, "importance-line", metric="no such metric")
    with pytest.raises(InvalidSetting, match="not a dict"):
        viz.chart({}, "importance-line")


def test_a_comparison_draws_its_reports_charts_and_takes_its_metric_when_made(small_study) -> None:
    comparison = compare(small_study, small_study)
    names = viz.chart_names(comparison)
    assert names[:2] == ["trends", "curves"] and "ranks" in names
    assert "difference-entropy" in names
    assert isinstance(viz.chart(comparison, "trends"), alt.TopLevelMixin)
    with pytest.raises(InvalidSetting, match="core.compare"):
        viz.chart(comparison, "trends", metric="probability")


def test_show_displays_the_chart_in_a_notebook(small_study, monkeypatch) -> None:
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert viz.show(small_study, "pruning-curve") is None
    assert len(shown) == 1 and shown[0].to_dict() == viz.chart(small_study, "pruning-curve").to_dict()


def test_show_without_a_notebook_says_how_to_save_the_chart(small_study, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "IPython.display", None)  # as if IPython were not installed
    with pytest.raises(InvalidSetting, match=r"viz.chart\(...\).save"):
        viz.show(small_study, "pruning-curve")


@pytest.mark.parametrize("version, has", [(2, set()), (3, {"concentration-by-layer"}), (4, {"concentration-by-layer", "relevance-maps"})])
def test_a_bundle_saved_by_an_older_version_draws_the_charts_it_holds(demo_handle, version, has) -> None:
    study = load_bundle((DATA / f"bundle_v{version}_demo.zip").read_bytes(), model_key=demo_handle.key)
    names = set(viz.chart_names(study))
    assert {"importance-line", "pattern-space", "pattern-mse"} <= names
    assert names & {"concentration-by-layer", "relevance-maps"} == has
    for name in names:
        assert isinstance(viz.chart(study, name).to_dict(), dict)  # every listed chart draws
