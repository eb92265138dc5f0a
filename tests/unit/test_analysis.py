"""The streamed analysis of a set: its budget of passes, and the numbers it must keep."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import core.measures.attention
import core.pipeline.analysis
from core.errors import HeadScopeError, InvalidSetting, NotEnoughImages
from core.inputs.images import ImageSet, demo_digits_set
from core.measures.importance import head_importance_tables, pruning_curve
from core.measures.patterns import sample_maps
from core.measures.strength import strength_statistics
from core.pipeline.analysis import Capture, analyze_set, draw_samples, run_pass
from core.settings import images_per_batch
from core.study.casestudy import CaseSettings, set_labels, study_from
from helpers.data import ACROSS_CPUS, DATA
from helpers.models import tiny_vit

RELEASE_13 = DATA / "release13_demo_24.npz"  # written by the previous release (ebfcb39) on the same 24 digits
STRENGTH_FIELDS = ("hop_strength", "entropy", "distance", "prefix_share", "offset_mean")


@pytest.fixture(scope="module")
def set_24(demo_handle) -> ImageSet:
    split = demo_handle.card["split"]
    full = demo_digits_set(split["seed"], split["test_fraction"])
    return ImageSet.from_images("24 digits", full.images[:24])


class _Budget:
    """Counts, per image, preprocessing, full forwards (patch embedding) and attention captures."""

    def __init__(self, handle, monkeypatch) -> None:
        self.preprocessed: Counter[int] = Counter()
        self.forwards = 0
        self.captured = 0
        original = type(handle).preprocess

        def preprocess(this, images):
            self.preprocessed.update(id(image) for image in images)
            return original(this, images)

        monkeypatch.setattr(type(handle), "preprocess", preprocess)
        for module in (core.pipeline.analysis, core.measures.attention):
            capture = module.capture_patterns

            def counted(hooks, model, patterns, capture=capture):
                self.captured += patterns.shape[1]  # [L, B, H, T, T]
                return capture(hooks, model, patterns)

            monkeypatch.setattr(module, "capture_patterns", counted)
        self._hook = handle.model.patch_embed.register_forward_hook(self._count)

    def _count(self, _module, inputs, _output) -> None:
        self.forwards += len(inputs[0])

    def remove(self) -> None:
        self._hook.remove()


@pytest.mark.slow
def test_one_pass_preprocesses_runs_and_captures_each_image_once(demo_handle, set_24, monkeypatch) -> None:
    images = set_24.pil_images()
    settings = CaseSettings(max_maps=600, curve_steps=3)
    budget = _Budget(demo_handle, monkeypatch)
    try:
        picks = draw_samples(demo_handle, len(images), settings)
        run_pass(demo_handle, images, set_labels(set_24), Capture(map_samples=picks))
        assert set(budget.preprocessed.values()) == {1} and len(budget.preprocessed) == 24
        assert budget.forwards == 24  # the Taylor gates ride on the one unpruned forward
        assert budget.captured == 24
        budget.preprocessed.clear()
        budget.forwards = budget.captured = 0
        analysis = analyze_set(demo_handle, images, set_labels(set_24), settings)
    finally:
        budget.remove()
    # the pass and the pruning curve: each image twice at most, its attention once
    assert max(budget.preprocessed.values()) <= 2 and len(budget.preprocessed) == 24
    assert budget.forwards <= 2 * 24
    assert budget.captured == 24
    assert set(analysis.samples) == {"patch", "cls"}
    assert len(analysis.predictions.logits) == 24


@pytest.mark.slow
def test_partial_pruning_reuses_the_unpruned_output(demo_handle, set_24, monkeypatch) -> None:
    settings = CaseSettings(top_k=1, hurt_images=2, max_maps=600, n_clusters=3, curve_steps=2)
    analysis = analyze_set(demo_handle, set_24.pil_images(), set_labels(set_24), settings)
    budget = _Budget(demo_handle, monkeypatch)
    try:
        study = study_from(demo_handle, set_24, analysis, layout_method="pca")
    finally:
        budget.remove()
    runs = study.tables["partial"][["layer", "head", "image"]].drop_duplicates()
    assert len(runs) > 0
    cited = study.tables["partial"]["image"].nunique()
    assert len(study.arrays["relevance_images"]) == cited
    # five masked modes per image ("none" comes from the pass); then each cited image's
    # relevance maps: one attention capture and one forward and backward for the gradient rollout
    assert budget.forwards == 5 * len(runs) + 2 * cited
    assert budget.captured == cited
    none = study.tables["partial"].query("mode == 'none'")
    probs = torch.from_numpy(analysis.predictions.logits).softmax(-1).numpy()
    targets = analysis.importance.unpruned["target"].to_numpy()
    expected = probs[none["image"].to_numpy(), targets[none["image"].to_numpy()]]
    np.testing.assert_allclose(none["probability"].to_numpy(), expected, rtol=1e-6)


@pytest.mark.slow
def test_the_pass_gives_what_the_separate_analyses_give(demo_handle, set_24) -> None:
    images, labels = set_24.pil_images(), set_labels(set_24)
    settings = CaseSettings(max_maps=600, curve_steps=3, seed=2)
    analysis = analyze_set(demo_handle, images, labels, settings)
    alone = head_importance_tables(demo_handle, images, labels)
    for name in ("overall", "per_image", "unpruned"):
        pd.testing.assert_frame_equal(getattr(analysis.importance, name), getattr(alone, name), check_exact=True)
    curve = pruning_curve(demo_handle, images, alone.overall, labels, steps=3, seed=2)
    pd.testing.assert_frame_equal(analysis.curve, curve, check_exact=True)
    stats = strength_statistics(demo_handle, images)
    for name in STRENGTH_FIELDS:
        np.testing.assert_allclose(getattr(analysis.strength, name), getattr(stats, name), rtol=1e-6, atol=1e-9)
    for kind in ("patch", "cls"):
        sample = sample_maps(demo_handle, images, kind=kind, max_maps=600, seed=2)
        pd.testing.assert_frame_equal(analysis.samples[kind].origin, sample.origin)
        torch.testing.assert_close(analysis.samples[kind].inputs, sample.inputs, rtol=0, atol=0)


def test_a_backbone_pass_matches_its_separate_analyses() -> None:
    from core.models.handle import wrap_model

    handle = wrap_model(tiny_vit(num_classes=0, reg_tokens=2), device="cpu")
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    analysis = analyze_set(handle, images, None, CaseSettings(max_maps=90, curve_steps=2), batch_size=2)
    alone = head_importance_tables(handle, images, None, batch_size=2)  # float rounding follows the batch
    assert set(analysis.importance.overall["metric"]) == {"layer_impact", "output_impact"}
    pd.testing.assert_frame_equal(analysis.importance.per_image, alone.per_image, check_exact=True)
    assert analysis.predictions.logits.shape == (5, handle.model.embed_dim)


@pytest.mark.slow
def test_numbers_equal_the_previous_release(demo_handle, set_24) -> None:
    """Importance, curve and strength of the 24 digits as the previous release computed them."""
    release = np.load(RELEASE_13)
    assert str(release["set_key"]) == set_24.key
    analysis = analyze_set(demo_handle, set_24.pil_images(), set_labels(set_24), CaseSettings(curve_steps=4))
    tables = {
        "importance_overall": analysis.importance.overall,
        "importance_per_image": analysis.importance.per_image,
        "importance_unpruned": analysis.importance.unpruned,
        "curve": analysis.curve,
    }
    checked = 0
    for stored in release.files:
        table, _, column = stored.partition(".")
        if table in tables:
            ours = tables[table][column].to_numpy()
            if ours.dtype.kind in "fc":
                np.testing.assert_allclose(ours, release[stored], **ACROSS_CPUS, err_msg=stored)
            else:
                np.testing.assert_array_equal(ours.astype(release[stored].dtype), release[stored], err_msg=stored)
            checked += 1
        elif table == "strength":
            np.testing.assert_allclose(getattr(analysis.strength, column), release[stored], **ACROSS_CPUS)
            checked += 1
    assert checked == 4 + 5 + 5 + 5 + len(STRENGTH_FIELDS)  # every column of every table, every array


def test_batches_follow_one_rule_and_bad_settings_are_sentences(demo_handle, tiny_handle) -> None:
    assert images_per_batch(tiny_handle) == 64
    assert images_per_batch(tiny_handle, 5) == 5
    with pytest.raises(InvalidSetting, match="at least 1"):
        images_per_batch(tiny_handle, 0)
    with pytest.raises(NotEnoughImages):
        analyze_set(tiny_handle, [], None)
    with pytest.raises(InvalidSetting, match="map kind"):
        CaseSettings(kind="rows")  # type: ignore[arg-type]
    with pytest.raises(HeadScopeError, match="below the model's 9 heads"):
        analyze_set(tiny_handle, [Image.new("RGB", (32, 32))], None, CaseSettings(max_maps=4))


def test_a_user_error_on_another_process_is_raised_on_this_one(demo_handle, set_24, monkeypatch) -> None:
    """Under torchrun a process whose share fails must not leave the others waiting: all raise its sentence."""
    import core.pipeline.distributed
    from core.errors import ImageRejected
    from core.pipeline.distributed import Shards
    from core.study.casestudy import analyze

    other = ImageRejected("digit-0007 changed while it was being analysed; run the analysis again.")
    gathered: list = []

    def gather(value, shards):
        gathered.append(value)
        return [value, other]  # rank 1's share failed

    monkeypatch.setattr(core.pipeline.distributed, "current", lambda: Shards(rank=0, size=2))
    monkeypatch.setattr(core.pipeline.distributed, "gather", gather)
    with pytest.raises(ImageRejected, match="changed while it was being analysed"):
        analyze(demo_handle, set_24, CaseSettings(max_maps=600, curve_steps=1), layout_method="pca")
    assert len(gathered) == 1 and not isinstance(gathered[0], HeadScopeError)  # this rank's pass did run
