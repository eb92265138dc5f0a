"""The comparison's charts (``viz.compare``): what each draws, read from its Vega-Lite spec."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from core.study.bundle import load_bundle
from core.study.comparison import MEASURE_TITLES, TREND_MEASURES, compare
from helpers.data import DATA
from viz.common import FOCUS_RED, HEAD_SELECTION
from viz.compare import (
    PATTERN_SELECTION,
    SIDE_COLOURS,
    comparison_charts,
    curves_chart,
    difference_heatmap,
    joint_patterns_chart,
    prototypes_chart,
    rank_chart,
    trends_chart,
)
from viz.export import inline_spec

GRID_COLUMNS = ["measure", "layer", "head", "head_label", "a", "b", "difference"]


@pytest.fixture(scope="module")
def v4_study():
    return load_bundle((DATA / "bundle_v4_demo.zip").read_bytes())


@pytest.fixture(scope="module")
def joint(v4_study, small_study):
    """The demo model on 8 digits (A) and on 24 others (B): the same heads, different values, and one pattern space."""
    return compare(v4_study, small_study, patterns=True, layout="pca")


def _rows(spec: dict, view: dict) -> pd.DataFrame:
    """The rows a view draws: its own data, else the chart's (Altair lifts a layer's data shared by all)."""
    return pd.DataFrame(spec["datasets"][view.get("data", spec.get("data"))["name"]])


def _marked(spec: dict, mark: str) -> list[dict]:
    """The layers drawn with ``mark``."""
    return [view for view in spec["layer"] if view["mark"]["type"] == mark]


# --- difference heatmaps ----------------------------------------------------------------------


def test_heatmap_colours_b_minus_a_on_a_domain_symmetric_around_zero(joint):
    largest = {}
    for measure in joint.measures:
        spec = inline_spec(difference_heatmap(joint, measure))
        cells = spec["layer"][0]
        assert cells["encoding"]["color"]["field"] == "difference"
        low, high = cells["encoding"]["color"]["scale"]["domain"]
        grid = joint.difference_grid(measure)
        largest[measure] = float(grid["difference"].abs().max())
        assert low == -high and high == pytest.approx(largest[measure])
        pd.testing.assert_frame_equal(_rows(spec, cells)[GRID_COLUMNS], grid[GRID_COLUMNS], check_dtype=False)
        assert np.allclose(grid["difference"], grid["b"] - grid["a"])
    assert all(value > 0 for value in largest.values())  # two image sets: every measure differs somewhere


def test_heatmap_of_two_equal_studies_still_draws_and_says_so(v4_study):
    same = compare(v4_study, v4_study, layout="pca")
    spec = inline_spec(difference_heatmap(same, "distance"))
    low, high = spec["layer"][0]["encoding"]["color"]["scale"]["domain"]
    assert 0 < high < 1e-6 and low == -high
    assert spec["title"]["subtitle"][-1].startswith("A and B are equal on every head")


def test_heatmap_title_names_each_side_and_long_labels_wrap_whole(joint):
    long_set = "a held-out set of handwritten digits photographed under very uneven light " * 3
    long = dataclasses.replace(joint, a=dataclasses.replace(joint.a, image_set=long_set.strip()))
    title = inline_spec(difference_heatmap(long, "distance"))["title"]
    assert title["text"] == f"B − A: {MEASURE_TITLES['distance']}"
    lines = title["subtitle"]
    b_line = next(i for i, line in enumerate(lines) if line.startswith("B: "))
    assert lines[0].startswith("A: ") and b_line > 1  # A's label takes several lines
    assert max(len(line) for line in lines) <= 80
    assert " ".join(line.strip() for line in lines[:b_line]) == long.a.label  # every word kept
    assert lines[b_line] == long.b.label


def test_heatmap_click_selects_a_head_and_the_focus_is_outlined(joint):
    spec = inline_spec(difference_heatmap(joint, "entropy", focus=(2, 3)))
    (param,) = spec["params"]
    assert param["name"] == HEAD_SELECTION and param["select"]["fields"] == ["layer", "head"]
    ring = spec["layer"][1]
    assert ring["mark"]["stroke"] == FOCUS_RED
    assert _rows(spec, ring)[["layer", "head"]].values.tolist() == [[2, 3]]
    assert "params" not in inline_spec(difference_heatmap(joint, "entropy", for_report=True))


def test_heatmap_refuses_heads_that_do_not_match_and_measures_not_shared(joint):
    unmatched = dataclasses.replace(joint, same_heads=False, why_not="A has 12 layers and B has 6.")
    with pytest.raises(ValueError, match="A has 12 layers"):
        difference_heatmap(unmatched, "entropy")
    with pytest.raises(ValueError, match="do not both hold"):
        difference_heatmap(joint, "no_such_measure")


# --- ranks, curves, trends --------------------------------------------------------------------


def test_rank_chart_places_every_head_and_names_those_that_moved_most(joint):
    spec = inline_spec(rank_chart(joint, joint.metric))
    moves = joint.moves[joint.moves["metric"] == joint.metric]
    (dots,) = _marked(spec, "circle")
    assert len(_rows(spec, dots)) == len(moves) == 36
    expected = moves[moves["move"] != 0].head(5)
    assert len(expected)
    named = set().union(*(set(_rows(spec, view).get("head_label", [])) for view in _marked(spec, "text")))
    assert named == set(expected["head_label"])
    with pytest.raises(ValueError):
        rank_chart(joint, "no_such_metric")


def test_curves_hold_both_sides_by_the_metric_and_at_random(joint):
    spec = inline_spec(curves_chart(joint))
    rows = _rows(spec, spec)
    metric = joint.metric
    assert set(zip(rows["side"], rows["order"])) == {("A", metric), ("A", "random"), ("B", metric), ("B", "random")}
    wanted = joint.curves[joint.curves["order"].isin([metric, "random"])]
    assert len(rows) == len(wanted)
    colour = spec["encoding"]["color"]
    assert colour["scale"]["domain"] == [joint.a.label, joint.b.label]
    assert colour["scale"]["range"] == [SIDE_COLOURS["A"], SIDE_COLOURS["B"]]
    assert spec["encoding"]["strokeDash"]["field"] == "random"
    assert spec["encoding"]["y"]["title"] == joint.curves["quantity"].iloc[0]


def test_curves_of_a_side_without_the_order_show_its_own_metric(joint):
    curves = joint.curves[~((joint.curves["side"] == "A") & (joint.curves["order"] == "taylor"))]
    spec = inline_spec(curves_chart(dataclasses.replace(joint, curves=curves), "taylor"))
    orders = _rows(spec, spec).groupby("side")["order"].agg(set)
    assert orders["A"] == {joint.top["A"].metric, "random"} and orders["B"] == {"taylor", "random"}
    assert "taylor in B" in spec["title"]["subtitle"][-1]
    assert spec["title"]["subtitle"][0].startswith("A: ")  # which side is which, in the title


def test_trends_are_four_panels_against_depth_from_0_to_1(joint):
    spec = inline_spec(trends_chart(joint))
    rows = _rows(spec, spec)
    assert spec["spec"]["layer"][0]["encoding"]["x"]["field"] == "depth"
    assert rows["depth"].between(0, 1).all()
    for side in ("A", "B"):
        depths = rows.loc[rows["side"] == side, "depth"]
        assert depths.min() == 0 and depths.max() == 1
    assert spec["facet"]["sort"] == [MEASURE_TITLES[m] for m in TREND_MEASURES]
    assert set(rows["title"]) == {MEASURE_TITLES[m] for m in TREND_MEASURES}


# --- patterns across both ---------------------------------------------------------------------


def test_pattern_charts_need_the_joint_pattern_space(joint):
    bare = dataclasses.replace(joint, patterns=None)
    for chart in (joint_patterns_chart, prototypes_chart):
        with pytest.raises(ValueError, match="patterns=True"):
            chart(bare)


def test_joint_chart_shapes_the_sides_and_rings_the_focus_and_its_nearest_heads(joint):
    spec = inline_spec(joint_patterns_chart(joint, focus=("A", 1, 4)))
    dots = spec["layer"][0]
    assert len(_rows(spec, dots)) == len(joint.patterns.heads) == 72
    shape = dots["encoding"]["shape"]["scale"]
    assert shape == {"domain": [joint.a.label, joint.b.label], "range": ["circle", "triangle-up"]}
    (param,) = spec["params"]
    assert param["name"] == PATTERN_SELECTION and param["select"]["fields"] == ["side", "layer", "head"]
    ring, dashed = (view for view in spec["layer"][1:3])
    assert _rows(spec, ring)[["side", "layer", "head"]].values.tolist() == [["A", 1, 4]]
    table = joint.patterns.neighbours
    near = table[(table["side"] == "A") & (table["layer"] == 1) & (table["head"] == 4)]
    ringed = _rows(spec, dashed)
    assert set(ringed["side"]) == {"B"}
    assert set(zip(ringed["layer"], ringed["head"])) == set(zip(near["other_layer"], near["other_head"]))


def test_prototypes_are_each_clusters_map_titled_with_each_sides_heads(joint):
    spec = inline_spec(prototypes_chart(joint))
    expression = spec["facet"]["header"]["labelExpr"]
    titles = json.loads(expression.removesuffix("[datum.value]"))
    clusters = joint.patterns.clusters
    assert set(titles) == {str(k) for k in clusters["cluster"]}
    for row in clusters.itertuples():
        head, counts = titles[str(row.cluster)]
        assert head.startswith(f"C{row.cluster}") and counts == f"A: {row.heads_a} · B: {row.heads_b} heads"
    drawn = _rows(spec, spec).merge(joint.patterns.prototypes, on=["cluster", "row", "col"], suffixes=("", "_decoded"))
    assert len(drawn) == len(joint.patterns.prototypes)
    assert np.allclose(drawn["value"], drawn["value_decoded"], rtol=1e-3)


# --- the report's charts ----------------------------------------------------------------------


def test_the_report_gets_the_charts_that_apply(joint):
    keys = list(comparison_charts(joint))
    assert keys == ["trends", "curves", *(f"difference-{m}" for m in joint.measures), "ranks", "patterns", "prototypes"]
    unmatched = dataclasses.replace(joint, same_heads=False, patterns=None)
    assert list(comparison_charts(unmatched)) == ["trends", "curves"]
