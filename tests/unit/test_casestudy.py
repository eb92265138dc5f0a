"""Case-study findings: which mode kills a prediction, the hurt images, and sentences that match the tables."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.inputs.images import ImageSet, SetImage
from core.measures.importance import rank_heads
from core.models.handle import wrap_model
from core.study.casestudy import (
    NEGLIGIBLE_DROP,
    CaseSettings,
    analyze,
    findings,
)
from core.study.narrative import _killer_mode
from helpers.models import tiny_vit

TINY = CaseSettings(top_k=3, hurt_images=2, max_maps=200, n_clusters=2, curve_steps=2)
ALL_REMOVE = {"cls": 0.3, "patch": 0.6, "cls_patch": 0.2, "cls_cls": 0.1}


def _modes(none: float, head: float, **partial: float) -> dict[str, float]:
    return {"none": none, "head": head, **partial}


@pytest.mark.parametrize(
    "modes, removed, expected",
    [
        # the patch block alone does 80% of the head's damage
        (_modes(0.9, 0.1, cls=0.85, patch=0.26, cls_patch=0.86, cls_cls=0.9), ALL_REMOVE, "patch"),
        # cls does it, and so does its part cls_patch nearly as well: the smaller mode is the answer
        (_modes(0.9, 0.1, cls=0.20, patch=0.8, cls_patch=0.22, cls_cls=0.9), ALL_REMOVE, "cls_patch"),
        # no part does half of the damage
        (_modes(0.9, 0.1, cls=0.6, patch=0.6, cls_patch=0.6, cls_cls=0.9), ALL_REMOVE, None),
        # every partial mode raises the probability
        (_modes(0.5, 0.3, cls=0.51, patch=0.52, cls_patch=0.51, cls_cls=0.5), ALL_REMOVE, None),
        # no prefix tokens: the prefix modes remove nothing and cannot be the answer
        (_modes(0.5, 0.3, cls=0.5, patch=0.3, cls_patch=0.5, cls_cls=0.5), {"patch": 1.0}, "patch"),
        (_modes(0.5, 0.3, cls=0.4, patch=0.6, cls_patch=0.4, cls_cls=0.4), {"patch": 1.0}, None),
    ],
)
def test_killer_mode(modes, removed, expected):
    damage = {mode: modes["none"] - value for mode, value in modes.items()}  # probability taken away
    assert _killer_mode(damage, removed) == expected


def _set(count: int) -> ImageSet:
    rng = np.random.default_rng(0)
    images = [
        SetImage(f"{i:016x}", f"img{i}.png", Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)), None)
        for i in range(count)
    ]
    return ImageSet.from_images(f"{count} noise images", images)


@pytest.fixture(scope="module")
def no_prefix_study():
    """A model without CLS or any prefix token (average pooling), on unlabelled noise."""
    model = tiny_vit(class_token=False, global_pool="avg")
    handle = wrap_model(model, class_names=[f"c{i}" for i in range(5)], device="cpu")
    return analyze(handle, _set(6), TINY, layout_method="pca")


@pytest.mark.slow
def test_no_prefix_model_never_blames_prefix_attention(no_prefix_study):
    for metric in ("probability", "accuracy", "layer_impact", "taylor"):
        for finding in findings(no_prefix_study, metric).heads:
            assert finding.killer_mode in (None, "patch")
            assert "prefix" not in finding.mechanism


@pytest.mark.slow
def test_hurt_images_are_the_most_hurt_and_really_hurt(no_prefix_study):
    study = no_prefix_study
    local = study.tables["importance_per_image"]
    unpruned = study.tables["importance_unpruned"].set_index("image")["probability"]
    partial = study.tables["partial"]
    for (layer, head), rows in partial.groupby(["layer", "head"]):
        pruned = local[(local["metric"] == "probability") & (local["layer"] == layer) & (local["head"] == head)]
        drops = sorted(
            ((float(unpruned[i] - v), int(i)) for i, v in zip(pruned["image"], pruned["value"])), reverse=True
        )
        expected = [i for drop, i in drops[: TINY.hurt_images] if drop >= NEGLIGIBLE_DROP]
        assert list(dict.fromkeys(rows["image"])) == expected
        assert (rows["drop"] >= NEGLIGIBLE_DROP).all()


def test_sentences_carry_the_tables_numbers(small_study):
    found = findings(small_study, "probability")
    ranked = rank_heads(small_study.tables["importance_overall"], "probability")
    assert [f.label for f in found.heads] == [f"L{l}H{h}" for l, h in zip(ranked["layer"], ranked["head"])][:3]
    base = small_study.tables["importance_unpruned"]["probability"].mean()
    distance = small_study.arrays["distance"].mean(axis=0)
    profile = small_study.arrays["hop_strength"].mean(axis=0)
    for finding, row in zip(found.heads, ranked.itertuples()):
        assert f"from {base:.3f} to {row.value:.3f}" in finding.importance
        assert f"({distance[finding.layer, finding.head]:.1f} px" in finding.locality
        near = profile[finding.layer, finding.head, :2].sum() / profile[finding.layer, finding.head].sum()
        assert f"{near:.0%} of its hop profile lies within one hop" in finding.locality
        rows = small_study.tables["partial"].query("layer == @finding.layer and head == @finding.head")
        if len(rows):
            none = rows[rows["mode"] == "none"]["probability"].mean()
            head = rows[rows["mode"] == "head"]["probability"].mean()
            assert f"from {none:.3f} to {head:.3f}" in finding.mechanism
    layer_means = small_study.arrays["entropy"].mean(axis=(0, 2))
    assert f"goes from {layer_means[0]:.2f} to {layer_means[-1]:.2f} nats" in found.layer_trend


@pytest.mark.slow
def test_one_image_reads_in_the_singular(demo_handle, small_set):
    one = ImageSet.from_images("one digit", small_set.images[:1])
    study = analyze(demo_handle, one, CaseSettings(top_k=2, hurt_images=3, max_maps=100, n_clusters=2, curve_steps=1), layout_method="pca")
    for finding in findings(study, "probability").heads:
        assert "images where" not in finding.mechanism
        assert len(finding.hurt_images) <= 1


# --- relevance maps of the cited images ------------------------------------------------------


def test_the_study_explains_exactly_the_images_partial_pruning_ran_on(demo_handle, small_set, small_study):
    from core.measures.attribution import METHODS, relevance_maps
    from core.study.casestudy import relevance_of

    cited = list(dict.fromkeys(small_study.tables["partial"]["image_id"]))
    ids = [item["id"] for item in small_study.manifest["image_set"]["images"]]
    positions = small_study.arrays["relevance_images"]
    stored, heads = small_study.arrays["relevance"], small_study.arrays["relevance_heads"]
    # only the cited images are kept, in the order they are first cited
    assert [ids[p] for p in positions] == cited and len(cited) < len(ids)
    assert stored.shape == (len(cited), len(METHODS), 64) and heads.shape == (len(cited), 6, 6)
    assert not np.isnan(stored).any()
    for image_id in ids:
        assert set(relevance_of(small_study, image_id)) == (set(METHODS) if image_id in cited else set())
    # the maps are those of the image's target class, computed on their own
    row = len(cited) - 1
    image_id = cited[row]
    target = int(small_study.tables["importance_unpruned"].set_index("image").loc[ids.index(image_id), "target"])
    alone = relevance_maps(demo_handle, demo_handle.preprocess([small_set.by_id(image_id).image]), target=target)
    for m, method in enumerate(METHODS):
        np.testing.assert_allclose(stored[row, m], alone.maps[method][0].numpy(), rtol=1e-4, atol=1e-7)
        np.testing.assert_array_equal(relevance_of(small_study, image_id)[method].reshape(-1), stored[row, m])
    np.testing.assert_allclose(heads[row], alone.heads[0].numpy(), rtol=1e-4, atol=1e-7)
    assert np.isclose(heads[row].sum(), 1.0, atol=1e-5)


@pytest.mark.slow
def test_a_backbone_study_has_no_gradient_rollout(no_prefix_study):
    backbone = wrap_model(tiny_vit(num_classes=0), device="cpu")
    study = analyze(backbone, _set(4), TINY, layout_method="pca")
    from core.study.casestudy import relevance_of

    cited = list(dict.fromkeys(study.tables["partial"]["image_id"]))
    assert cited
    assert set(relevance_of(study, cited[0])) == {"attention rollout", "last-layer attention"}
    assert np.isnan(study.arrays["relevance_heads"]).all()


def test_the_explanation_names_ties_and_leaves_out_a_share_no_head_has(small_study):
    import dataclasses

    from core.study.casestudy import findings

    found = findings(small_study)
    assert all("of what the layers add to the gradient rollout" in f.explanation for f in found.heads)
    first = found.heads[0]
    heads = small_study.arrays["relevance_heads"].copy()
    row = int(np.flatnonzero(small_study.arrays["relevance_images"] == [i["id"] for i in small_study.manifest["image_set"]["images"]].index(first.hurt_images[0]))[0])
    heads[row] = 1.0 / heads[row].size  # every head alike: all tied
    tied = findings(dataclasses.replace(small_study, arrays={**small_study.arrays, "relevance_heads": heads})).heads[0]
    assert "tied at rank 1 of 36" in tied.explanation
    heads[row] = 0.0  # no head adds anything: no share to name
    none = findings(dataclasses.replace(small_study, arrays={**small_study.arrays, "relevance_heads": heads})).heads[0]
    assert "carries" not in none.explanation and "puts the most relevance" in none.explanation
    assert np.isnan(none.relevance_share)
