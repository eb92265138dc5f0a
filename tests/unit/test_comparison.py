"""Comparing two case studies: every number checked against the two studies' own numbers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from core.errors import HeadScopeError, NothingToCompare, UnsupportedMetric
from core.inputs.images import ImageSet
from core.models.handle import wrap_model
from core.models.probe import fit_probe, probe_features, with_probe
from core.study.bundle import load_bundle, save_bundle
from core.study.casestudy import CaseSettings, analyze
from core.study.comparison import (
    OVERLAP_KS,
    STRENGTH_MEASURES,
    TREND_MEASURES,
    Side,
    compare,
    joint_patterns,
)
from helpers.data import DATA
from helpers.images import labelled_noise
from helpers.models import tiny_vit

TINY = CaseSettings(top_k=2, hurt_images=2, max_maps=150, n_clusters=3, curve_steps=2)
VERSIONS = (1, 2, 3, 4)


def _bundle(version: int):
    return load_bundle((DATA / f"bundle_v{version}_demo.zip").read_bytes())


@pytest.fixture(scope="module")
def v4():
    return _bundle(4)


@pytest.fixture(scope="module")
def reopened(small_study):
    """The small study through a bundle, as the page and the command line get it."""
    return load_bundle(save_bundle(small_study))


@pytest.fixture(scope="module")
def noise():
    labelled = labelled_noise(15)
    return ImageSet.from_images(labelled.title, labelled.images, label_names=("ant", "bee", "cat"))


@pytest.fixture(scope="module")
def tiny_studies(noise):
    """Three studies of tiny backbones: 3x3 heads on a 4x4 grid, the same at 8x8, and 2x4 heads."""
    settings = TINY
    small = wrap_model(tiny_vit(num_classes=0), device="cpu")
    large = wrap_model(tiny_vit(num_classes=0, img_size=64), device="cpu")
    other = wrap_model(tiny_vit(num_classes=0, depth=2, num_heads=4), device="cpu")
    return tuple(analyze(handle, noise, settings, layout_method="pca") for handle in (small, large, other))


def test_every_difference_is_b_minus_a_of_the_two_bundles_own_numbers(v4, reopened):
    c = compare(v4, reopened)
    assert c.same_heads and not c.why_not
    for measure in STRENGTH_MEASURES:
        rows = c.difference_grid(measure)
        want_a = v4.arrays[measure].mean(axis=0).reshape(-1).astype(float)
        want_b = reopened.arrays[measure].mean(axis=0).reshape(-1).astype(float)
        assert rows["a"].tolist() == want_a.tolist() and rows["b"].tolist() == want_b.tolist()
        assert rows["difference"].tolist() == (want_b - want_a).tolist()
    for metric in v4.metrics:
        rows = c.difference_grid(metric)
        for study, column in ((v4, "a"), (reopened, "b")):
            table = study.tables["importance_overall"]
            want = table[table["metric"] == metric].sort_values(["layer", "head"])["value"].astype(float)
            assert rows[column].tolist() == want.tolist()
        assert (rows["difference"] == rows["b"] - rows["a"]).all()
    assert set(c.measures) == {*v4.metrics, *STRENGTH_MEASURES}


def _importance(study, metric: str) -> pd.Series:
    """Each head's importance under ``metric``, higher = more important, in model order: probability and
    accuracy with the head pruned are lower for an important head, taylor counts by magnitude."""
    table = study.tables["importance_overall"]
    values = table[table["metric"] == metric].sort_values(["layer", "head"])["value"].astype(float).reset_index(drop=True)
    return -values if metric in ("probability", "accuracy") else values.abs() if metric == "taylor" else values


def test_rank_agreement_matches_scipy_on_the_scores_and_the_top_k_sets(v4, reopened):
    c = compare(v4, reopened)
    for metric in v4.metrics:
        score_a, score_b = _importance(v4, metric), _importance(reopened, metric)
        row = c.agreement.set_index("metric").loc[metric]
        assert row["spearman"] == pytest.approx(stats.spearmanr(score_a, score_b).statistic, abs=1e-12)
        assert row["kendall"] == pytest.approx(stats.kendalltau(score_a, score_b).statistic, abs=1e-12)
        rank_a, rank_b = score_a.rank(ascending=False, method="min"), score_b.rank(ascending=False, method="min")
        for k in OVERLAP_KS:
            assert row[f"top_{k}"] == ((rank_a <= k) & (rank_b <= k)).sum()
        moves = c.moves[c.moves["metric"] == metric].sort_values(["layer", "head"])
        assert moves["rank_a"].tolist() == rank_a.astype(int).tolist()
        assert moves["rank_b"].tolist() == rank_b.astype(int).tolist()
        assert (moves["move"] == moves["rank_a"] - moves["rank_b"]).all()
    by_moved = c.moves[c.moves["metric"] == "probability"]["move"].abs()
    assert by_moved.is_monotonic_decreasing  # most moved first


def test_tied_heads_are_not_ranked_by_their_place_in_the_model(v4):
    """The demo's accuracy importance takes two values over 36 heads: reversing the values must not agree better
    than the tie-aware statistics say."""
    table = v4.tables["importance_overall"]
    values = table[table["metric"] == "accuracy"]["value"].to_numpy()
    assert len(np.unique(values)) < 5
    reversed_table = table.copy()
    reversed_table.loc[table["metric"] == "accuracy", "value"] = values[::-1]
    other = dataclasses.replace(v4, tables={**v4.tables, "importance_overall": reversed_table})
    c = compare(v4, other, metric="accuracy")
    row = c.agreement.set_index("metric").loc["accuracy"]
    score_a, score_b = -pd.Series(values), -pd.Series(values[::-1])
    assert row["spearman"] == pytest.approx(stats.spearmanr(score_a, score_b).statistic)
    assert row["kendall"] == pytest.approx(stats.kendalltau(score_a, score_b).statistic)
    flat = table.copy()
    flat.loc[table["metric"] == "accuracy", "value"] = 1.0
    tied = compare(v4, dataclasses.replace(v4, tables={**v4.tables, "importance_overall": flat}), metric="accuracy")
    assert np.isnan(tied.agreement.set_index("metric").loc["accuracy", "spearman"])
    assert any("every head ties on one side" in sentence for sentence in tied.sentences)
    assert not any("nan" in sentence for sentence in tied.sentences)


def test_a_small_change_in_one_measure_is_not_called_noise(v4):
    """Each measure is judged against its own scale: a 10% change of importance (values near 0.5) is a change
    even beside a distance in pixels."""
    table = v4.tables["importance_overall"].copy()
    scaled = table["metric"] == "layer_impact"
    table.loc[scaled, "value"] = table.loc[scaled, "value"] * np.linspace(0.9, 1.1, scaled.sum())
    c = compare(v4, dataclasses.replace(v4, tables={**v4.tables, "importance_overall": table}), metric="layer_impact")
    assert not any("the noise of computing" in sentence for sentence in c.sentences)
    assert not any("every difference is 0" in sentence for sentence in c.sentences)


def test_a_study_compared_with_itself_differs_by_exactly_nothing(reopened):
    c = compare(reopened, reopened, patterns=True, layout="pca")
    assert (c.differences["difference"] == 0).all() and len(c.differences) == 36 * len(c.measures)
    assert (c.agreement["spearman"] == 1).all() and (c.agreement["kendall"] == 1).all()
    for metric, row in c.agreement.set_index("metric").iterrows():  # every head of a top k is in the other's
        ranks = c.moves[c.moves["metric"] == metric]["rank_a"]
        assert [row[f"top_{k}"] for k in OVERLAP_KS] == [(ranks <= k).sum() for k in OVERLAP_KS]
    assert (c.moves["move"] == 0).all()
    assert set(c.sinks["status"]) <= {"on both"} and set(c.norms["status"]) <= {"on both", "neither"}
    assert any("every difference is 0" in sentence for sentence in c.sentences)
    # identical maps give identical codes: each head's nearest head on the other side is itself
    nearest = c.patterns.neighbours[c.patterns.neighbours["rank"] == 1]
    assert (nearest["head_label"] == nearest["other_label"]).all() and (nearest["distance"] == 0).all()
    assert c.patterns.clusters["shared"].all() and c.patterns.resampled == ""


def test_the_sentences_cite_the_numbers_of_the_tables(v4, reopened):
    c = compare(v4, reopened, metric="probability")
    row = c.agreement.set_index("metric").loc["probability"]
    first = c.moves[(c.moves["metric"] == "probability") & (c.moves["rank_a"] == 1)].iloc[0]
    text = " ".join(c.sentences)
    assert f"A's top head {first['head_label']}" in text and f"rank {int(first['rank_b'])}" in text
    assert f"Spearman {row['spearman']:.2f}" in text
    assert f"{int(row['top_10'])} of A's top 10 heads are in B's top 10" in text


@pytest.mark.parametrize("version", VERSIONS)
def test_bundles_of_every_format_version_compare_with_the_newest(version, v4, reopened):
    old = _bundle(version)
    c = compare(old, reopened)
    assert c.same_heads and {"entropy", "distance", "prefix_share"} <= set(c.measures)
    if version < 3:  # saved before concentration was measured: those measures and the sink table are left out
        assert "top_share" not in c.measures and c.sinks.empty and c.norms.empty
        assert any("format version" in note and "top-key share" in note for note in c.missing)
        assert any("A's bundle was saved before HeadScope measured sink heads" in note for note in c.missing)
    else:
        assert "top_share" in c.measures and len(c.norms) == 6
    if version == 1:  # no output_impact metric and no similarity column yet
        assert "output_impact" not in c.measures
    assert np.isfinite(c.differences["difference"]).all()


def test_a_probed_backbones_bundle_compares_with_its_plain_backbone(noise, tiny_studies):
    backbone = wrap_model(tiny_vit(num_classes=0), device="cpu")
    probe = fit_probe(probe_features(backbone, noise.pil_images()), noise.labels, ("ant", "bee", "cat"), backbone=backbone)
    probed = load_bundle(save_bundle(analyze(with_probe(backbone, probe), noise, TINY, layout_method="pca")))
    assert probed.manifest["format_version"] == 5
    c = compare(probed, tiny_studies[0])
    # the probed study holds the class metrics too; only the ones both hold are compared
    assert set(c.agreement["metric"]) == {"layer_impact", "output_impact"}
    assert c.curves["quantity"].eq("similarity").all()
    # the same backbone: its strength numbers are the backbone's on both sides
    assert (c.difference_grid("entropy")["difference"].abs() < 1e-6).all()


def test_different_sizes_compare_per_layer_and_by_pattern_and_say_why(tiny_studies, v4):
    small, _, other = tiny_studies
    c = compare(small, other, patterns=True, layout="pca")
    assert not c.same_heads and "3 layers x 3 heads" in c.why_not and "2 layers x 4 heads" in c.why_not
    assert c.differences.empty and c.agreement.empty and c.moves.empty and c.sinks.empty
    for side, layers in (("A", 3), ("B", 2)):
        trend = c.trends[(c.trends["side"] == side) & (c.trends["measure"] == "entropy")]
        assert trend["depth"].tolist() == pytest.approx(np.linspace(0, 1, layers).tolist())
        want = small if side == "A" else other
        means = want.arrays["entropy"].mean(axis=0).mean(axis=1)
        assert trend["value"].to_numpy() == pytest.approx(means, rel=1e-6)
    assert set(c.trends["measure"]) == set(TREND_MEASURES)
    heads = c.patterns.heads
    assert (heads["side"] == "A").sum() == 9 and (heads["side"] == "B").sum() == 8
    neighbours = c.patterns.neighbours
    assert len(neighbours) == (9 + 8) * 3
    assert (neighbours.groupby(["side", "layer", "head"])["distance"].apply(lambda d: d.is_monotonic_increasing)).all()
    mixed = compare(v4, small)
    assert not mixed.same_heads and mixed.curves["quantity"].eq("similarity").all()


def test_the_joint_space_resamples_the_larger_grid_and_says_which(tiny_studies):
    small, large, _ = tiny_studies
    joint = joint_patterns(large, small, method="pca")
    assert joint.window == (7, 7)
    assert joint.resampled.startswith("A's offset maps (15x15, grid 8x8) were resampled to B's 7x7")
    assert len(joint.heads) == 18 and set(joint.heads["cluster"]) == set(joint.clusters["cluster"])
    assert (joint.clusters["heads_a"] + joint.clusters["heads_b"]).sum() == 18
    c = compare(small, large)
    assert c.same_heads  # same heads, other input size: per-head differences still hold
    assert c.a.size == "32 px" and c.b.size == "64 px"
    # distance as a share of each input's side: in pixels the larger input's would be about twice as large
    rows = c.difference_grid("distance")
    assert c.distance_share and "share of the image side" in c.measure_title("distance")
    assert rows["a"].tolist() == pytest.approx((small.arrays["distance"].mean(axis=0).reshape(-1) / 32).tolist())
    assert rows["b"].tolist() == pytest.approx((large.arrays["distance"].mean(axis=0).reshape(-1) / 64).tolist())
    assert not compare(small, small).distance_share


def test_two_studies_with_nothing_in_common_are_refused_in_a_sentence(v4, tiny_studies):
    def stripped(study, keep_metric):
        tables = dict(study.tables)
        overall = tables["importance_overall"]
        tables["importance_overall"] = overall[overall["metric"] == keep_metric]
        arrays = {name: np.full_like(value, np.nan, dtype=float) if name in STRENGTH_MEASURES else value
                  for name, value in study.arrays.items()}
        return dataclasses.replace(study, tables=tables, arrays=arrays)

    with pytest.raises(NothingToCompare) as refused:
        compare(stripped(v4, "probability"), stripped(tiny_studies[0], "output_impact"))
    message = str(refused.value)
    assert "A has probability" in message and "B has output impact" in message
    assert isinstance(refused.value, HeadScopeError)


def test_a_metric_neither_side_holds_is_a_sentence(v4, tiny_studies):
    with pytest.raises(UnsupportedMetric, match="Neither study holds"):
        compare(tiny_studies[0], tiny_studies[2], metric="probability")
    c = compare(v4, tiny_studies[0], metric="probability")  # only A holds it: B's heads ranked by its own first
    assert c.top["A"].metric == "probability" and c.top["B"].metric == "layer_impact"


def test_the_curves_are_the_bundles_own(v4, reopened):
    c = compare(v4, reopened)
    for side, study in (("A", v4), ("B", reopened)):
        rows = c.curves[c.curves["side"] == side]
        assert rows["value"].tolist() == study.tables["pruning_curve"]["accuracy"].astype(float).tolist()
        assert rows["fraction"].tolist() == study.tables["pruning_curve"]["fraction"].astype(float).tolist()
    assert isinstance(c.curves, pd.DataFrame) and set(c.curves["quantity"]) == {"accuracy"}


@pytest.mark.parametrize(
    "model, size, label",
    [
        ("dinov2-s", (224, 224), "B: dinov2-s at 224 px on photos"),
        ("dinov2-s (448 px)", (448, 448), "B: dinov2-s at 448 px on photos"),  # the name a 448 px load gives
        ("vit (a) (224x320 px)", (224, 320), "B: vit (a) at 224x320 px on photos"),
    ],
)
def test_both_sides_name_their_input_size_the_same_way(model, size, label):
    side = Side(name="B", model=model, layers=12, heads=6, grid=(16, 16), img_size=size, image_set="photos",
                images=9, backbone=True, format_version=5)
    assert side.label == label
