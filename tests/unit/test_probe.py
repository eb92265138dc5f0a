"""core.models.probe: linear probes that give a backbone classes.

References are independent of the code under test: the folded probe is compared with
scikit-learn's own pipeline fitted here (``decision_function``, ``predict_proba``,
``cross_val_score``), the probe's input with ``model.forward_features`` sliced by hand,
and a pruned head with a deep copy whose output projection gets that head's slice of
its input zeroed by a hook (what all-zero attention weights give).
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from core.errors import HeadScopeError, InvalidSetting, LabelsMismatch, ProbeRejected
from core.measures.importance import (
    HIGHER_MEANS_LESS_IMPORTANT,
    METRIC_HELP,
    head_importance_tables,
)
from core.models.handle import ViTHandle, wrap_model
from core.models.probe import (
    C_GRID,
    CLASS_AND_PATCH_MEAN,
    MAX_CLASSES,
    POOLED,
    LinearProbe,
    ProbeHead,
    fit_probe,
    near_chance,
    probe_features,
    probe_from_bytes,
    probe_input_kind,
    readout_features,
    with_probe,
)
from core.pipeline.analysis import Capture, draw_samples, run_pass
from core.settings import CaseSettings
from helpers.models import tiny_vit

SEED_IMAGES = 7


# --- helpers --------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Tens of images of 48 features: two BLAS threads only spin on a shared 2-core machine (10x slower)."""
    with threadpool_limits(1, user_api="blas"):
        yield


def _backbone(**overrides) -> ViTHandle:
    """A tiny timm ViT without a classifier (class token, 4x4 grid of 8 px patches, 24 wide)."""
    return wrap_model(tiny_vit(num_classes=0, **overrides), device="cpu")


def _coloured(classes: int, per_class: int | list[int], *, seed: int = SEED_IMAGES, size: int = 32):
    """Noisy images of one colour per class (separable on a random ViT's features), and their labels."""
    counts = [per_class] * classes if isinstance(per_class, int) else list(per_class)
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 226, (len(counts), 3))
    images, labels = [], []
    for label, count in enumerate(counts):
        for _ in range(count):
            pixels = np.clip(palette[label] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    return images, labels


def _reference(features: np.ndarray, labels, strength: float):
    """scikit-learn's own standardised logistic regression at the probe's strength."""
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=2000))
    return pipeline.fit(np.asarray(features, dtype=np.float64), np.asarray(labels))


def _logits(handle: ViTHandle, images) -> np.ndarray:
    with torch.no_grad():
        return handle.model(handle.preprocess(images)).double().numpy()


def _sentence(caught: pytest.ExceptionInfo, kind: type[HeadScopeError]) -> str:
    """The error is exactly ``kind`` and its message one sentence a user can read."""
    error = caught.value
    assert type(error) is kind, type(error)
    message = str(error)
    assert (message[0].isupper() or message[0] == "'") and message.endswith("."), message  # or a quoted name first
    assert "\n" not in message and ". " not in message and "Traceback" not in message, message
    return message


def _hooks_left(model: nn.Module) -> list[str]:
    return [
        name
        for name, module in model.named_modules()
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    ]


def _no_fit(monkeypatch) -> None:
    """A refused input never reaches scikit-learn."""

    def fail(*_args, **_kwargs):
        raise AssertionError("scikit-learn was asked to fit a refused input")

    monkeypatch.setattr(GridSearchCV, "fit", fail)


@pytest.fixture(scope="module")
def colour_set():
    """A tiny backbone (a class token and 2 registers), 30 images of 3 colour classes, their probe
    features and a probe fitted on them."""
    backbone = _backbone(reg_tokens=2)
    images, labels = _coloured(3, 10)
    features = probe_features(backbone, images)
    probe = fit_probe(features, labels, ["red", "green", "blue"], backbone=backbone)
    return backbone, images, labels, features, probe


# --- the folded probe is scikit-learn's classifier --------------------------------------


def test_three_class_logits_equal_scikit_learns_decision_function(colour_set) -> None:
    backbone, images, labels, features, probe = colour_set
    assert probe.strength in C_GRID and probe.images == probe.labelled == 30
    reference = _reference(features, labels, probe.strength)
    probed = with_probe(backbone, probe)

    logits = _logits(probed, images)

    assert logits.shape == (30, 3)
    np.testing.assert_allclose(logits, reference.decision_function(features.astype(np.float64)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(probe.logits(features), reference.decision_function(features.astype(np.float64)), atol=1e-9)
    np.testing.assert_allclose(
        torch.from_numpy(logits).softmax(-1).numpy(), reference.predict_proba(features.astype(np.float64)), atol=1e-5
    )
    assert isinstance(probed.model.head, ProbeHead) and probed.model.head.weight.dtype == torch.float64
    assert probed.class_names == ["red", "green", "blue"] and not probed.is_backbone
    assert probed.probe is probe and probed.backbone is backbone


def test_two_class_logit_difference_is_the_decision_function_and_softmax_predict_proba() -> None:
    backbone = _backbone()
    images, labels = _coloured(2, 12, seed=3)
    features = probe_features(backbone, images).astype(np.float64)
    probe = fit_probe(features, labels, ["cat", "dog"], backbone=backbone)
    reference = _reference(features, labels, probe.strength)

    logits = _logits(with_probe(backbone, probe), images)

    assert logits.shape == (24, 2)
    decision = reference.decision_function(features)
    assert decision.shape == (24,)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], decision, rtol=0, atol=1e-5)
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(-1).numpy(), reference.predict_proba(features), atol=1e-5)


def test_a_class_without_images_keeps_its_row_and_is_never_predicted() -> None:
    backbone = _backbone()
    images, labels = _coloured(2, 8, seed=5)
    labels = [0 if label == 0 else 2 for label in labels]  # class 1 has no image
    features = probe_features(backbone, images).astype(np.float64)
    probe = fit_probe(features, labels, ["a", "b", "c"], backbone=backbone)
    reference = _reference(features, labels, probe.strength)

    logits = _logits(with_probe(backbone, probe), images)

    assert logits.shape == (16, 3) and probe.class_names == ("a", "b", "c")
    np.testing.assert_allclose(logits[:, 2] - logits[:, 0], reference.decision_function(features), atol=1e-5)
    assert (torch.from_numpy(logits).softmax(-1).numpy()[:, 1] < 1e-12).all()
    assert set(logits.argmax(-1)) <= {0, 2}


# --- what the probe reads ---------------------------------------------------------------


def test_readout_is_class_token_beside_patch_mean_without_registers() -> None:
    handle = _backbone(reg_tokens=2)
    model = handle.model
    assert model.num_prefix_tokens == 3 and probe_input_kind(model) == CLASS_AND_PATCH_MEAN
    images, _ = _coloured(2, 3)
    x = handle.preprocess(images)
    kept: list[torch.Tensor] = []
    hook = model.blocks[-1].register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        with torch.no_grad():
            tokens = model.forward_features(x)  # after the final norm: [B, 1 + 2 + 16, D]
    finally:
        hook.remove()
    assert tokens.shape[1] == 1 + 2 + 16
    expected = torch.cat([tokens[:, 0], tokens[:, 3:].mean(dim=1)], dim=-1).numpy()

    with torch.no_grad():
        read = readout_features(model, kept[0]).numpy()

    assert read.shape == (6, 48)
    np.testing.assert_allclose(read, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(probe_features(handle, images), expected, rtol=0, atol=1e-6)
    # the registers are really left out: a mean over them too differs
    assert not np.allclose(read[:, 24:], tokens[:, 1:].mean(dim=1).numpy(), atol=1e-4)


def test_a_backbone_without_class_token_reads_its_pooled_output() -> None:
    handle = _backbone(class_token=False, global_pool="avg", reg_tokens=2)
    assert probe_input_kind(handle.model) == POOLED
    images, _ = _coloured(2, 3)
    x = handle.preprocess(images)
    with torch.no_grad():
        pooled = handle.model(x).numpy()  # a backbone's output is its pooled features

    np.testing.assert_allclose(probe_features(handle, images), pooled, rtol=0, atol=1e-6)


def test_first_pass_probe_input_equals_probe_features() -> None:
    handle = _backbone(reg_tokens=2)
    images, labels = _coloured(3, 4)
    picks = draw_samples(handle, len(images), CaseSettings())

    part = run_pass(handle, images, torch.tensor(labels), Capture(metrics=(), map_samples=picks)).predictions

    assert part.probe_input is not None and part.probe_input.shape == (12, 48)
    np.testing.assert_allclose(part.probe_input, probe_features(handle, images), rtol=0, atol=1e-6)


def test_a_classifier_first_pass_has_no_probe_input(colour_set) -> None:
    backbone, images, labels, _, probe = colour_set
    capture = Capture(metrics=("taylor",), attention_stats=False)
    part = run_pass(with_probe(backbone, probe), images[:4], torch.tensor(labels[:4]), capture)
    assert part.predictions.probe_input is None


# --- head importance goes through the probe --------------------------------------------


def _pruned_probability(model: nn.Module, x: torch.Tensor, layer: int, head: int, target: list[int]) -> np.ndarray:
    """The target's softmax probability from a deep copy with head (layer, head)'s output zeroed."""
    pruned = copy.deepcopy(model)
    attn = pruned.blocks[layer].attn
    width = attn.head_dim

    def zero(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
        heads = inputs[0].clone()
        heads[..., head * width:(head + 1) * width] = 0
        return (heads,)

    attn.proj.register_forward_pre_hook(zero)
    with torch.no_grad():
        probs = pruned(x).double().softmax(-1)
    return probs[torch.arange(len(x)), torch.tensor(target)].numpy()


def test_probability_importance_of_a_probed_backbone_is_a_pruned_copy(colour_set) -> None:
    backbone, images, labels, _, probe = colour_set
    probed = with_probe(backbone, probe)
    chosen = [0, 4, 8, 14, 24]
    subset = [images[i] for i in chosen]
    target = [labels[i] for i in chosen]
    x = probed.preprocess(subset)
    # the table holds the target's probability with the head pruned (lower = more important), not a drop
    assert HIGHER_MEANS_LESS_IMPORTANT["probability"] and "with the head pruned" in METRIC_HELP["probability"]

    tables = head_importance_tables(probed, x, torch.tensor(target), metrics=["probability"])
    part = run_pass(probed, subset, torch.tensor(target), Capture(metrics=["probability"], attention_stats=False)).importance.tables()

    for layer, head in [(0, 0), (1, 2), (2, 1)]:
        expected = _pruned_probability(probed.model, x, layer, head, target)
        for table in (tables.per_image, part.per_image):
            rows = table[(table["layer"] == layer) & (table["head"] == head) & (table["metric"] == "probability")]
            np.testing.assert_allclose(rows.sort_values("image")["value"].to_numpy(), expected, rtol=0, atol=1e-5)
        overall = tables.overall
        value = overall[(overall["layer"] == layer) & (overall["head"] == head)]["value"].item()
        assert value == pytest.approx(expected.mean(), abs=1e-5)
    with torch.no_grad():
        clean = probed.model(x).double().softmax(-1)[torch.arange(5), torch.tensor(target)].numpy()
    np.testing.assert_allclose(tables.unpruned["probability"].to_numpy(), clean, atol=1e-5)


# --- determinism ------------------------------------------------------------------------


def _overlapping(n_per_class: int = 20, seed: int = 4) -> tuple[np.ndarray, list[int]]:
    """48 features of 3 classes that overlap: the cross-validated accuracy depends on the folds."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    features = rng.normal(0, 0.2, (3, 48))[labels] + rng.normal(size=(len(labels), 48))
    return features, labels.tolist()


def test_fitting_twice_gives_the_same_probe_and_another_seed_a_valid_one(colour_set) -> None:
    backbone, _, colour_labels, colour_features, colour_probe = colour_set
    again = fit_probe(colour_features, colour_labels, ["red", "green", "blue"], backbone=backbone)
    assert again.digest == colour_probe.digest and again.to_bytes() == colour_probe.to_bytes()
    assert not near_chance(colour_probe) and "near chance" not in colour_probe.summary()

    x, labels = _overlapping()
    y = np.asarray(labels)
    probe = fit_probe(x, labels, ["a", "b", "c"], backbone=backbone)
    twice = fit_probe(x, labels, ["a", "b", "c"], backbone=backbone)
    other = fit_probe(x, labels, ["a", "b", "c"], backbone=backbone, seed=1)

    assert twice.digest == probe.digest and twice.to_bytes() == probe.to_bytes()
    np.testing.assert_array_equal(twice.weight, probe.weight)
    split = StratifiedKFold(n_splits=5, shuffle=True, random_state=0).split(x, y)
    split_other = StratifiedKFold(n_splits=5, shuffle=True, random_state=1).split(x, y)
    assert [list(test) for _, test in split] != [list(test) for _, test in split_other]
    accuracies = []
    for fitted, seed in ((probe, 0), (other, 1)):
        assert fitted.folds == 5 and fitted.strength in C_GRID and fitted.images == 60
        assert np.isfinite(fitted.weight).all() and np.isfinite(fitted.bias).all()
        # the accuracy is the best cross-validated one over the grid, on that seed's folds
        cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        scores = {
            c: cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000)), x, y, cv=cv).mean()
            for c in C_GRID
        }
        assert fitted.accuracy == pytest.approx(max(scores.values()), abs=1e-12)
        assert fitted.accuracy == pytest.approx(scores[fitted.strength], abs=1e-12)
        assert 0.4 < fitted.accuracy < 0.95 and fitted.chance == pytest.approx(1 / 3)
        np.testing.assert_allclose(fitted.logits(x), _reference(x, y, fitted.strength).decision_function(x), atol=1e-9)
        accuracies.append(fitted.accuracy)
    assert accuracies[0] != accuracies[1] and other.digest != probe.digest  # the folds differ


# --- the cached backbone is never changed ----------------------------------------------


def test_with_probe_and_an_analysis_leave_the_backbone_as_it_was(colour_set) -> None:
    backbone, images, labels, _, probe = colour_set
    model = backbone.model
    x = backbone.preprocess(images[:6])
    with torch.no_grad():
        before = model(x).clone()
    params = {name: p for name, p in model.named_parameters()}
    grads = {name: p.requires_grad for name, p in params.items()}

    probed = with_probe(backbone, probe)
    run_pass(probed, images[:6], torch.tensor(labels[:6]), Capture(map_samples=draw_samples(probed, 6, CaseSettings())))
    head_importance_tables(probed, probed.preprocess(images[:3]), torch.tensor(labels[:3]))
    run_pass(backbone, images[:6], torch.tensor(labels[:6]), Capture(map_samples=draw_samples(backbone, 6, CaseSettings())))

    assert type(model) is VisionTransformer and isinstance(model.head, nn.Identity)
    assert model.num_classes == 0 and backbone.is_backbone and backbone.class_names == []
    assert not hasattr(model, "headscope_probe_input") and not hasattr(model, "headscope_readout")
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert probed.model is not model and type(probed.model) is not VisionTransformer
    assert isinstance(probed.model, VisionTransformer)
    shared = dict(probed.model.named_parameters())
    for name, param in params.items():
        assert shared[name] is param, name
        assert param.requires_grad == grads[name] and param.grad is None, name
    assert set(shared) - set(params) == {"head.weight", "head.bias"}
    assert all(probed.model.get_buffer(name) is b for name, b in model.named_buffers())
    assert _hooks_left(model) == [] and _hooks_left(probed.model) == []
    assert probed.key != backbone.key


# --- saving and reading -----------------------------------------------------------------


def test_round_trip_keeps_the_digest_and_keys_follow_the_probe(colour_set) -> None:
    backbone, _, labels, features, probe = colour_set
    read = probe_from_bytes(probe.to_bytes(), backbone)

    assert read.digest == probe.digest and read.to_bytes() == probe.to_bytes()
    np.testing.assert_array_equal(read.weight, probe.weight)
    np.testing.assert_array_equal(read.bias, probe.bias)
    assert read.class_names == probe.class_names and read.strength == probe.strength and read.folds == probe.folds
    assert read.accuracy == probe.accuracy and read.backbone_key == backbone.key

    key = with_probe(backbone, probe).key
    assert with_probe(backbone, read).key == key and key.startswith(backbone.key)
    relabelled = replace(probe, class_names=("rouge", "vert", "bleu"))
    moved = replace(probe, bias=probe.bias + np.array([0.0, 1e-9, 0.0]))
    keys = {key, with_probe(backbone, relabelled).key, with_probe(backbone, moved).key}
    assert len(keys) == 3 and relabelled.digest != probe.digest != moved.digest


# --- bad labels and features: one sentence, no fit --------------------------------------


@pytest.mark.parametrize(
    "labels, names, match",
    [
        ([0] * 12, ["a", "b"], "at least 2 classes"),
        ([0] * 12, ["a"], "at least 2 classes"),
        ([0] * 8 + [1] * 4, ["a", "b"], "'b' has 4 images"),
        ([0] * 6 + [1] * 5 + [2], ["a", "b"], "A label is 2"),
        ([0] * 6 + [1] * 5, ["a", "b"], "11 labels for 12 feature rows"),
        ([i % 2 for i in range(12)], [f"class {i}" for i in range(MAX_CLASSES + 1)], "1,001 classes"),
    ],
    ids=["one-class", "one-name", "four-images", "label-outside", "label-count", "1001-classes"],
)
def test_bad_labels_are_one_sentence_and_nothing_is_fitted(monkeypatch, labels, names, match) -> None:
    backbone = _backbone()
    features = np.random.default_rng(0).normal(size=(12, 48)).astype(np.float32)
    _no_fit(monkeypatch)
    with pytest.raises(LabelsMismatch, match=match) as caught:
        fit_probe(features, labels, names, backbone=backbone)
    _sentence(caught, LabelsMismatch)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_are_one_sentence(monkeypatch, bad) -> None:
    features = np.random.default_rng(0).normal(size=(12, 48))
    features[3, 7] = bad
    _no_fit(monkeypatch)
    with pytest.raises(InvalidSetting, match="NaN or infinite") as caught:
        fit_probe(features, [i % 2 for i in range(12)], ["a", "b"], backbone=_backbone())
    _sentence(caught, InvalidSetting)


def test_labels_a_linear_probe_cannot_separate_are_fitted_near_chance() -> None:
    backbone = _backbone()
    rng = np.random.default_rng(0)
    features = rng.normal(size=(90, 48))
    labels = rng.permutation(np.arange(90) % 3).tolist()

    probe = fit_probe(features, labels, ["a", "b", "c"], backbone=backbone)

    assert probe.chance == pytest.approx(1 / 3) and probe.accuracy < probe.chance + 0.1
    assert near_chance(probe) and "near chance" in probe.summary()
    assert np.isfinite(probe.weight).all()


def test_shuffled_labels_of_real_features_are_near_chance(colour_set) -> None:
    backbone = colour_set[0]
    images, labels = _coloured(3, 20, seed=11)
    features = probe_features(backbone, images)
    shuffled = np.random.default_rng(1).permutation(labels).tolist()

    probe = fit_probe(features, shuffled, ["a", "b", "c"], backbone=backbone)

    assert near_chance(probe) and "near chance" in probe.summary()


def test_unlabelled_images_are_left_out_of_the_fit(colour_set) -> None:
    backbone, _, labels, features, probe = colour_set
    rng = np.random.default_rng(3)
    extra = rng.normal(size=(4, features.shape[1])).astype(np.float32) * 50  # far off: they would move the fit
    with_unknown = fit_probe(
        np.concatenate([features, extra]), labels + [None, -1, None, -1], ["red", "green", "blue"], backbone=backbone
    )
    assert with_unknown.digest == probe.digest and with_unknown.images == with_unknown.labelled == 30


def test_a_set_above_max_images_is_fitted_on_a_seeded_stratified_sample() -> None:
    backbone = _backbone()
    rng = np.random.default_rng(2)
    counts = [40, 25, 15]
    labels = np.repeat(np.arange(3), counts)
    centres = rng.normal(0, 3, (3, 48))
    features = centres[labels] + rng.normal(size=(80, 48))

    probe = fit_probe(features, labels.tolist(), ["a", "b", "c"], backbone=backbone, max_images=30)
    again = fit_probe(features, labels.tolist(), ["a", "b", "c"], backbone=backbone, max_images=30)

    assert probe.sampled and probe.images == 30 and probe.labelled == 80
    assert again.digest == probe.digest
    # every class kept: a class left out of the sample would get zero weights and a bias 1e4 below the rest
    assert (np.abs(probe.weight).sum(axis=1) > 0).all() and probe.bias.max() - probe.bias.min() < 100
    assert probe.chance == pytest.approx(15 / 30)  # 40:25:15 stratified to 15:9:6 (or 15:10:5)
    assert "a seeded sample of 80" in probe.summary() and "on 30 images" in probe.summary()
    full = fit_probe(features, labels.tolist(), ["a", "b", "c"], backbone=backbone)
    assert not full.sampled and full.images == full.labelled == 80 and "sample" not in full.summary()


# --- bad probes and bad files: one sentence, no classifier built ------------------------


def _card(probe: LinearProbe) -> dict:
    return json.loads(json.dumps(probe.card()))


def _file(card, weight: torch.Tensor, bias: torch.Tensor, *, raw: str | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(card)
    return save({"weight": weight, "bias": bias}, metadata={"headscope_probe": text})


def _tensors(probe: LinearProbe) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(probe.weight.copy()), torch.from_numpy(probe.bias.copy())


def _refused_file(data: bytes, backbone: ViTHandle | None, match: str, **kwargs) -> str:
    with pytest.raises(ProbeRejected, match=match) as caught:
        probe_from_bytes(data, backbone, **kwargs)
    return _sentence(caught, ProbeRejected)


def test_a_probe_for_another_backbone_is_refused(colour_set, monkeypatch) -> None:
    backbone, _, _, _, probe = colour_set
    other = _backbone(depth=2)  # the same width, another model
    assert other.key != backbone.key
    _refused_file(probe.to_bytes(), other, "fitted on")
    before = _hooks_left(other.model), type(other.model), type(other.model.head)

    def no_copy(*_args, **_kwargs):
        raise AssertionError("a refused probe must not copy the model")

    monkeypatch.setattr(copy, "deepcopy", no_copy)
    with pytest.raises(ProbeRejected) as caught:
        with_probe(other, probe)
    _sentence(caught, ProbeRejected)
    assert (_hooks_left(other.model), type(other.model), type(other.model.head)) == before


def test_a_probe_of_another_feature_size_is_refused(colour_set) -> None:
    _, _, _, _, probe = colour_set
    wide = _backbone(embed_dim=36)
    message = _refused_file(probe.to_bytes(), wide, "48 features", check_key=False)
    assert "72" in message
    with pytest.raises(ProbeRejected, match="48 features") as caught:
        with_probe(wide, probe, check_key=False)
    _sentence(caught, ProbeRejected)


def test_a_probe_of_another_feature_input_is_refused(colour_set) -> None:
    _, _, _, _, probe = colour_set
    pooled = _backbone(class_token=False, global_pool="avg")
    _refused_file(probe.to_bytes(), pooled, "reads the class token", check_key=False)


def test_nan_weights_are_refused(colour_set) -> None:
    backbone, _, _, _, probe = colour_set
    weight, bias = _tensors(probe)
    weight[1, 3] = float("nan")
    _refused_file(_file(_card(probe), weight, bias), None, "NaN or infinite weights")
    weight, bias = _tensors(probe)
    bias[0] = float("inf")
    _refused_file(_file(_card(probe), weight, bias), backbone, "NaN or infinite weights")

    broken = LinearProbe(
        weight=np.where(np.arange(probe.weight.size).reshape(probe.weight.shape) == 5, np.nan, probe.weight),
        bias=probe.bias,
        class_names=probe.class_names,
        feature_input=probe.feature_input,
        backbone_key=probe.backbone_key,
    )
    with pytest.raises(ProbeRejected, match="NaN or infinite weights") as caught:
        with_probe(backbone, broken)
    _sentence(caught, ProbeRejected)


def _lying_cards():
    def set_(field, value):
        def change(card):
            card[field] = value

        return change

    def drop(field):
        return lambda card: card.pop(field)

    return {
        "more-classes-than-rows": (set_("class_names", ["red", "green", "blue", "pink"]), "names 4 classes"),
        "fewer-classes-than-rows": (set_("class_names", ["red", "green"]), "names 2 classes"),
        "features-not-columns": (set_("features", 99), "99 features"),
        "accuracy-1.5": (set_("accuracy", 1.5), "accuracy is not a fraction"),
        "negative-chance": (set_("chance", -0.1), "chance is not a fraction"),
        "images-not-count": (set_("images", "thirty"), "images is not a count"),
        "no-images": (drop("images"), "images is not a count"),
        "no-class-names": (drop("class_names"), "class names"),
        "no-backbone": (drop("backbone_key"), "names no backbone"),
        "no-feature-input": (drop("feature_input"), "feature input"),
        "no-format": (drop("format"), "not a HeadScope probe"),
        "duplicate-names": (set_("class_names", ["red", "red", "blue"]), "distinct class names"),
        "bad-sha": (set_("backbone_weights_sha256", "abc"), "sha256"),
        "zero-strength": (set_("strength", 0), "strength"),
        "card-is-a-list": (lambda card: card.clear(), "not a HeadScope probe"),
    }


@pytest.mark.parametrize("name", list(_lying_cards()))
def test_a_card_that_lies_is_refused(colour_set, name) -> None:
    backbone, _, _, _, probe = colour_set
    change, match = _lying_cards()[name]
    card = _card(probe)
    change(card)
    if name == "card-is-a-list":
        card = [1, 2]
    _refused_file(_file(card, *_tensors(probe)), backbone, match)


def test_tensors_that_are_not_a_probe_are_refused(colour_set) -> None:
    _, _, _, _, probe = colour_set
    card = _card(probe)
    weight, bias = _tensors(probe)
    _refused_file(_file(card, weight.float(), bias.float()), None, "float64")
    _refused_file(save({"weight": weight, "bias": bias, "extra": bias.clone()}, metadata={"headscope_probe": json.dumps(card)}), None, "exactly")
    _refused_file(_file(card, weight, bias[None]), None, "float64 vector")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 5,
        b"PK\x03\x04" + b"\x00" * 60,  # a ZIP
        b"# a python file\nimport os\n" * 4,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 100,
    ],
    ids=["empty", "tiny", "zip", "text", "png"],
)
def test_a_file_that_is_not_safetensors_is_refused(data) -> None:
    _refused_file(data, _backbone(), "not a HeadScope probe")


def test_a_safetensors_file_without_a_card_is_refused(colour_set) -> None:
    _, _, _, _, probe = colour_set
    weight, bias = _tensors(probe)
    _refused_file(save({"weight": weight, "bias": bias}), None, "not a HeadScope probe")
    _refused_file(_file(None, weight, bias, raw="not json {"), None, "not a HeadScope probe")
    _refused_file(_file(None, weight, bias, raw="[" * 100_000 + "]" * 100_000), None, "not a HeadScope probe")


def test_a_huge_header_is_refused_before_any_tensor_is_read(colour_set, monkeypatch) -> None:
    _, _, _, _, probe = colour_set
    import safetensors.torch

    def no_load(*_args, **_kwargs):
        raise AssertionError("a huge header must be refused before the tensors are read")

    monkeypatch.setattr(safetensors.torch, "load", no_load)
    claimed = struct.pack("<Q", 2**40) + b'{"__metadata__": {}}' + b" " * 100
    _refused_file(claimed, None, "not a HeadScope probe")
    header = json.dumps({"__metadata__": {"headscope_probe": json.dumps(probe.card()), "pad": "x" * (2**20 + 10)}}).encode()
    real = struct.pack("<Q", len(header)) + header
    _refused_file(real, None, "not a HeadScope probe")
    oversized = probe.to_bytes() + b"\x00" * (64 * 2**20 + 1)
    _refused_file(oversized, None, "MB")


# --- a classifier takes no probe ---------------------------------------------------------


def test_with_probe_on_a_classifier_is_refused(colour_set, tiny_handle, demo_handle) -> None:
    backbone, _, _, _, probe = colour_set
    probed = with_probe(backbone, probe)
    for classifier in (tiny_handle, demo_handle, probed):
        head = classifier.model.head
        with pytest.raises(ProbeRejected, match="already has classes") as caught:
            with_probe(classifier, probe, check_key=False)
        _sentence(caught, ProbeRejected)
        assert classifier.model.head is head and _hooks_left(classifier.model) == []
