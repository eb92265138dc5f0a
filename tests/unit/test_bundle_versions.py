"""Bundles saved by earlier HeadScope versions keep opening, with the numbers they were saved with.

``data/bundle_v1_demo.zip`` was saved by format version 1 (before backbones and the
output_impact metric): the demo model on the first 8 held-out digits, settings below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.inputs.images import ImageSet, demo_digits_set
from core.measures.importance import head_importance_tables, pruning_curve
from core.study.bundle import load_bundle
from core.study.casestudy import CaseSettings, findings, set_labels
from helpers.data import ACROSS_CPUS, DATA, V1_BUNDLE, V1_METRICS
from viz.report import render_report

V1_SETTINGS = CaseSettings(top_k=2, hurt_images=2, max_maps=200, n_clusters=3, curve_steps=3)


@pytest.fixture(scope="module")
def v1_study(demo_handle):
    return load_bundle(V1_BUNDLE.read_bytes(), model_key=demo_handle.key, model_name=demo_handle.name)


@pytest.fixture(scope="module")
def v1_images(demo_handle) -> ImageSet:
    split = demo_handle.card["split"]
    return ImageSet.from_images("8 digits", demo_digits_set(split["seed"], split["test_fraction"]).images[:8])


def test_a_version_1_bundle_opens_with_its_metrics_and_empty_new_columns(v1_study, v1_images) -> None:
    assert v1_study.manifest["format_version"] == 1
    assert v1_study.manifest["image_set"]["key"] == v1_images.key
    assert v1_study.metrics == V1_METRICS
    assert not v1_study.is_backbone
    assert v1_study.tables["pruning_curve"]["similarity"].isna().all()
    assert v1_study.tables["partial"]["output_impact"].isna().all()
    assert len(v1_study.tables["partial"]) > 0


@pytest.mark.slow
def test_the_numbers_of_a_version_1_bundle_are_what_this_version_computes(v1_study, v1_images, demo_handle) -> None:
    """What this change should not touch stays the same: importance and the accuracy curve of a classifier."""
    images, labels = v1_images.pil_images(), set_labels(v1_images)
    tables = head_importance_tables(demo_handle, images, labels, V1_METRICS)
    saved = v1_study.tables["importance_overall"].set_index(["metric", "layer", "head"])["value"].sort_index()
    now = tables.overall.set_index(["metric", "layer", "head"])["value"].sort_index()
    np.testing.assert_allclose(now.to_numpy(), saved.to_numpy(), **ACROSS_CPUS)
    np.testing.assert_allclose(
        tables.unpruned["probability"].to_numpy(), v1_study.tables["importance_unpruned"]["probability"].to_numpy(), **ACROSS_CPUS
    )
    curve = pruning_curve(demo_handle, images, tables.overall, labels, steps=V1_SETTINGS.curve_steps)
    np.testing.assert_array_equal(curve["accuracy"].to_numpy(), v1_study.tables["pruning_curve"]["accuracy"].to_numpy())


def test_findings_and_the_report_of_a_version_1_bundle(v1_study) -> None:
    found = findings(v1_study)
    assert found.metric == "probability" and len(found.heads) == V1_SETTINGS.top_k
    for finding in found.heads:
        assert "target probability" in finding.mechanism or "lowers no single image" in finding.mechanism
    html = render_report(v1_study, "layer_impact")
    assert "layer_impact" in html and "Cumulative pruning" in html
    with pytest.raises(ValueError, match="no 'output_impact' importance"):
        findings(v1_study, "output_impact")


# ``data/bundle_v2_demo.zip`` was saved by format version 2 (before the concentration and
# token-norm arrays): the same 8 digits and settings, laid out with PCA.
V2_BUNDLE = DATA / "bundle_v2_demo.zip"
V2_ADDED = ("top_share", "key_entropy", "sink", "register_share", "outlier_share", "outliers", "norm_ratio")


@pytest.fixture(scope="module")
def v2_study(demo_handle):
    return load_bundle(V2_BUNDLE.read_bytes(), model_key=demo_handle.key, model_name=demo_handle.name)


def test_a_version_2_bundle_opens_without_the_concentration_numbers(v2_study, v1_images) -> None:
    assert v2_study.manifest["format_version"] == 2
    assert v2_study.manifest["image_set"]["key"] == v1_images.key
    assert "prefix_names" not in v2_study.manifest["model"] and v2_study.prefix_names == ("CLS",)
    stats = v2_study.strength
    assert not stats.has_concentration
    for name in V2_ADDED:
        values = getattr(stats, name)
        assert values.shape[0] == 8
        assert (values == -1).all() if name in ("sink", "outliers") else np.isnan(values).all(), name


def test_the_strength_numbers_of_a_version_2_bundle_are_what_this_version_computes(v2_study, v1_images, demo_handle) -> None:
    """Adding the concentration arrays changed none of the strength numbers a version-2 bundle holds."""
    from core.measures.strength import strength_statistics

    now = strength_statistics(demo_handle, v1_images.pil_images())
    for name in ("hop_strength", "entropy", "distance", "prefix_share", "offset_mean"):
        np.testing.assert_allclose(getattr(now, name), v2_study.arrays[name], **ACROSS_CPUS, err_msg=name)
    assert now.has_concentration


def test_findings_and_the_report_of_a_version_2_bundle(v2_study) -> None:
    found = findings(v2_study)
    assert len(found.heads) == 2 and found.concentration == ""
    for finding in found.heads:
        assert "sink" not in finding.locality
    html = render_report(v2_study, "probability")
    assert "Cumulative pruning" in html and "saved before HeadScope measured" in html


# ``data/bundle_v3_demo.zip`` was saved by format version 3 (commit 5ed7bcc, before the
# relevance maps): the same 8 digits and settings, laid out with PCA.
V3_BUNDLE = DATA / "bundle_v3_demo.zip"


@pytest.fixture(scope="module")
def v3_study(demo_handle):
    return load_bundle(V3_BUNDLE.read_bytes(), model_key=demo_handle.key, model_name=demo_handle.name)


def test_a_version_3_bundle_opens_without_relevance_maps(v3_study, v1_images) -> None:
    from core.study.casestudy import relevance_of

    assert v3_study.manifest["format_version"] == 3
    assert v3_study.manifest["image_set"]["key"] == v1_images.key
    assert v3_study.arrays["relevance"].shape == (0, 3, 64) and v3_study.arrays["relevance_heads"].shape == (0, 6, 6)
    assert v3_study.arrays["relevance_images"].shape == (0,)
    assert all(relevance_of(v3_study, image.id) == {} for image in v1_images.images)
    assert v3_study.strength.has_concentration


def test_the_numbers_of_a_version_3_bundle_are_what_this_version_computes(v3_study, v1_images, demo_handle) -> None:
    """Adding the relevance maps changed none of the numbers a version-3 bundle holds."""
    from core.measures.strength import strength_statistics
    from core.study.casestudy import STRENGTH_ARRAYS

    now = strength_statistics(demo_handle, v1_images.pil_images())
    for name in STRENGTH_ARRAYS:
        np.testing.assert_allclose(getattr(now, name), v3_study.arrays[name], **ACROSS_CPUS, err_msg=name)
    tables = head_importance_tables(demo_handle, v1_images.pil_images(), set_labels(v1_images))
    saved = v3_study.tables["importance_overall"].set_index(["metric", "layer", "head"])["value"].sort_index()
    computed = tables.overall.set_index(["metric", "layer", "head"])["value"].sort_index()
    np.testing.assert_allclose(computed.to_numpy(), saved.to_numpy(), **ACROSS_CPUS)


def test_findings_and_the_report_of_a_version_3_bundle(v3_study) -> None:
    found = findings(v3_study)
    assert len(found.heads) == 2
    html = render_report(v3_study, "probability")
    assert "Cumulative pruning" in html and "saved before HeadScope kept relevance maps" in html


# ``data/bundle_v4_demo.zip`` was saved by format version 4 (commit c8f2dc3, the last before
# core was split into subpackages): the same 8 digits and settings, laid out with PCA,
# with every part a study holds. A rearrangement of the code must leave all of it as it was.
V4_BUNDLE = DATA / "bundle_v4_demo.zip"


@pytest.mark.parametrize("bundle", [V1_BUNDLE, V2_BUNDLE, V3_BUNDLE, V4_BUNDLE], ids=["version 1", "version 2", "version 3", "version 4"])
def test_an_older_bundle_saved_again_opens_again_with_the_same_numbers(bundle, demo_handle) -> None:
    """The case-study page offers a download of whatever it shows, an opened older bundle too."""
    from core.study.bundle import save_bundle

    first = load_bundle(bundle.read_bytes(), model_key=demo_handle.key)
    again = load_bundle(save_bundle(first), model_key=demo_handle.key)
    assert again.manifest == first.manifest
    for name, table in first.tables.items():
        pd.testing.assert_frame_equal(again.tables[name], table, check_dtype=False)
    for name, array in first.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], array)



@pytest.mark.slow
def test_a_version_4_bundle_is_exactly_what_this_version_computes(demo_handle, v1_images) -> None:
    """Every table and array of a study on the demo, computed again now, equals the saved one."""
    from core.study.casestudy import analyze

    saved = load_bundle(V4_BUNDLE.read_bytes(), model_key=demo_handle.key, model_name=demo_handle.name)
    assert saved.manifest["format_version"] == 4
    now = analyze(demo_handle, v1_images, V1_SETTINGS, layout_method="pca")
    assert now.metrics == saved.metrics and now.settings == saved.settings
    assert sorted(now.tables) == sorted(saved.tables) and sorted(now.arrays) == sorted(saved.arrays)
    for name, table in saved.tables.items():
        pd.testing.assert_frame_equal(now.tables[name], table, check_dtype=False, check_exact=False, **ACROSS_CPUS, obj=name)
    for name, array in saved.arrays.items():
        np.testing.assert_allclose(now.arrays[name], array, **ACROSS_CPUS, err_msg=name)
