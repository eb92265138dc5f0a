"""core.measures.importance: head pruning metrics, partial pruning and the pruning curve.

References are computed independently of the code under test: pruned heads by
zeroing their columns of the output projection in a copy of the model, gradients
by central finite differences in float64, masked attention by timm's own manual
attention path with a mask spliced in where it applies ``attn_drop``.
"""

from __future__ import annotations

import copy
import threading

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.measures.importance import (
    METRICS,
    MODES,
    head_importance,
    head_importance_tables,
    partial_pruning,
    pruning_curve,
    rank_heads,
)
from core.models.handle import ViTHandle, wrap_model
from helpers.models import tiny_vit

PLANTED = (1, 2)


# --- independent references ------------------------------------------------------------


def _images(handle: ViTHandle, n: int, seed: int = 0) -> torch.Tensor:
    c, h, w = handle.data_config["input_size"]
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _forward_with_block_outputs(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The real ``model(x)``, with every block's output recorded by hooks on this (test-only) model."""
    outs: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_hook(lambda _m, _i, o, i=i: outs.__setitem__(i, o)) for i, block in enumerate(model.blocks)
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return [outs[i] for i in range(len(model.blocks))], logits


def _scaled_copy(model: nn.Module, factors: dict[tuple[int, int], float]) -> nn.Module:
    """A copy whose output projection scales head (l, h) by ``factors[(l, h)]`` (0 = pruned)."""
    pruned = copy.deepcopy(model)
    head_dim = model.blocks[0].attn.head_dim
    with torch.no_grad():
        for (layer, head), factor in factors.items():
            pruned.blocks[layer].attn.proj.weight[:, head * head_dim:(head + 1) * head_dim] *= factor
    return pruned


def _naive_metrics(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """``{metric: [N, L, H]}`` with one full forward of a pruned copy per head."""
    clean, _ = _forward_with_block_outputs(model, x)
    num_layers, num_heads = len(model.blocks), model.blocks[0].attn.num_heads
    out = {m: np.zeros((len(x), num_layers, num_heads)) for m in ("probability", "accuracy", "layer_impact")}
    for layer in range(num_layers):
        for head in range(num_heads):
            outs, logits = _forward_with_block_outputs(_scaled_copy(model, {(layer, head): 0.0}), x)
            out["probability"][:, layer, head] = logits.softmax(-1)[torch.arange(len(x)), target].numpy()
            out["accuracy"][:, layer, head] = (logits.argmax(-1) == target).numpy()
            cos = F.cosine_similarity(outs[layer].flatten(1), clean[layer].flatten(1), dim=-1)
            out["layer_impact"][:, layer, head] = (1 - cos).numpy()
    return out


def _finite_difference_taylor(model: nn.Module, x: torch.Tensor, target: torch.Tensor, eps: float = 1e-4) -> np.ndarray:
    """``[N, L, H]`` d(cross-entropy)/d(head gate) at 1, by central differences in float64."""
    model64 = copy.deepcopy(model).double()
    num_layers, num_heads = len(model.blocks), model.blocks[0].attn.num_heads
    out = np.zeros((len(x), num_layers, num_heads))
    for layer in range(num_layers):
        for head in range(num_heads):
            losses = []
            for factor in (1 + eps, 1 - eps):
                with torch.no_grad():
                    logits = _scaled_copy(model64, {(layer, head): factor})(x.double())
                losses.append(F.cross_entropy(logits, target, reduction="none"))
            out[:, layer, head] = ((losses[0] - losses[1]) / (2 * eps)).numpy()
    return out


class _MaskWeights(nn.Module):
    """Stands in for ``attn_drop`` (identity in eval) on timm's manual path: multiplies the weights by a mask."""

    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.keep = keep

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return weights * self.keep


def _reference_mode_mask(mode: str, tokens: int, prefix: int) -> torch.Tensor:
    """``[T, T]`` 0/1 mask of a partial-pruning mode, written out from the mode table in docs/views.md."""
    keep = torch.ones(tokens, tokens)
    p = prefix
    if mode == "head":
        keep[:] = 0
    elif mode == "cls":
        keep[:p, :] = 0
        keep[:, :p] = 0
    elif mode == "patch":
        keep[p:, p:] = 0
    elif mode == "cls_patch":
        keep[:p, p:] = 0
        keep[p:, :p] = 0
    elif mode == "cls_cls":
        keep[:p, :p] = 0
    return keep


def _masked_reference_probs(handle: ViTHandle, x: torch.Tensor, layer: int, head: int, mode: str) -> torch.Tensor:
    """Softmax outputs of a copy whose head's post-softmax attention is masked on timm's manual path."""
    model = copy.deepcopy(handle.model)
    attn = model.blocks[layer].attn
    attn.fused_attn = False  # a test-only copy: timm's own manual path applies attn_drop to the weights
    keep = torch.ones(handle.num_heads, handle.num_tokens, handle.num_tokens)
    keep[head] = _reference_mode_mask(mode, handle.num_tokens, handle.num_prefix_tokens)
    attn.attn_drop = _MaskWeights(keep)
    with torch.no_grad():
        return model(x).softmax(-1)


def _planted_handle() -> ViTHandle:
    """Only head PLANTED writes into the residual stream: every other head's projection columns and every MLP are zero."""
    model = tiny_vit()
    head_dim = model.blocks[0].attn.head_dim
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            block.mlp.fc2.weight.zero_()
            block.mlp.fc2.bias.zero_()
            for head in range(block.attn.num_heads):
                cols = block.attn.proj.weight[:, head * head_dim:(head + 1) * head_dim]
                cols.mul_(30.0 if (layer, head) == PLANTED else 0.0)  # a loud planted head flips predictions
    return wrap_model(model, class_names=[f"c{i}" for i in range(5)], device="cpu")


def _per_image(tables, metric: str, shape: tuple[int, int, int]) -> np.ndarray:
    rows = tables.per_image[tables.per_image["metric"] == metric].sort_values(["image", "layer", "head"])
    return rows["value"].to_numpy().reshape(shape)


def _model_state(model: nn.Module) -> dict[str, object]:
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "fused": [b.attn.fused_attn for b in model.blocks],
        "training": [m.training for m in model.modules()],
    }


def _assert_unchanged(model: nn.Module, before: dict[str, object]) -> None:
    after = _model_state(model)
    assert all(torch.equal(before["weights"][k], v) for k, v in after["weights"].items())
    assert after["requires_grad"] == before["requires_grad"]
    assert after["fused"] == before["fused"] and after["training"] == before["training"]
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


# --- whole-head sweep ------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_handle", "register_handle"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_sweep_equals_the_naive_loop(request, fixture: str, with_labels: bool) -> None:
    handle: ViTHandle = request.getfixturevalue(fixture)
    x = _images(handle, 5)
    with torch.no_grad():
        top1 = handle.model(x).argmax(-1)
    labels = torch.tensor([0, 1, 2, 3, 4]) % len(handle.class_names) if with_labels else None
    target = labels if with_labels else top1
    tables = head_importance_tables(handle, x, labels, batch_size=2)
    shape = (5, handle.num_layers, handle.num_heads)
    expected = _naive_metrics(handle.model, x, target)
    for metric, values in expected.items():
        np.testing.assert_allclose(_per_image(tables, metric, shape), values, atol=1e-5, rtol=0, err_msg=metric)
    np.testing.assert_allclose(
        _per_image(tables, "taylor", shape), _finite_difference_taylor(handle.model, x, target), atol=1e-5, rtol=1e-3
    )
    assert list(tables.unpruned["target"]) == target.tolist()
    assert tables.unpruned["labelled"].tolist() == [with_labels] * 5


def test_overall_is_the_mean_and_taylor_the_absolute_mean(tiny_handle) -> None:
    x = _images(tiny_handle, 6)
    tables = head_importance_tables(tiny_handle, x)
    overall = tables.overall.set_index(["metric", "layer", "head"])["value"]
    by_head = tables.per_image.groupby(["metric", "layer", "head"])["value"]
    for metric in ("probability", "accuracy", "layer_impact"):
        np.testing.assert_allclose(overall[metric].to_numpy(), by_head.mean()[metric].to_numpy(), atol=1e-12)
    np.testing.assert_allclose(overall["taylor"].to_numpy(), np.abs(by_head.mean()["taylor"].to_numpy()), atol=1e-12)
    assert list(tables.overall.columns) == ["layer", "head", "metric", "value"]
    assert len(tables.overall) == len(METRICS) * 9 and set(tables.overall["metric"]) == set(METRICS)


def test_head_importance_returns_the_overall_table_for_chosen_metrics(tiny_handle) -> None:
    x = _images(tiny_handle, 3)
    table = head_importance(tiny_handle, x, metrics=("layer_impact", "taylor"))
    full = head_importance_tables(tiny_handle, x).overall
    assert set(table["metric"]) == {"layer_impact", "taylor"}
    chosen = full[full["metric"].isin(["layer_impact", "taylor"])]
    pd.testing.assert_frame_equal(table.reset_index(drop=True), chosen.reset_index(drop=True))


def test_planted_head_alone_matters_under_every_metric() -> None:
    handle = _planted_handle()
    x = _images(handle, 16, seed=1)
    tables = head_importance_tables(handle, x, batch_size=5)
    per = tables.per_image
    others = per[(per["layer"] != PLANTED[0]) | (per["head"] != PLANTED[1])].merge(tables.unpruned, on="image")
    planted = per[(per["layer"] == PLANTED[0]) & (per["head"] == PLANTED[1])].merge(tables.unpruned, on="image")
    for metric, unpruned in (("probability", "probability"), ("accuracy", "correct")):
        rows = others[others["metric"] == metric]
        np.testing.assert_allclose(rows["value"], rows[unpruned].astype(float), atol=1e-6, err_msg=metric)
    for metric in ("layer_impact", "taylor"):
        np.testing.assert_allclose(others[others["metric"] == metric]["value"], 0.0, atol=1e-7, err_msg=metric)
    changed = planted[planted["metric"] == "probability"]
    assert (changed["value"] - changed["probability"]).abs().max() > 1e-3
    assert planted[planted["metric"] == "accuracy"]["value"].min() == 0.0  # it flips some predictions
    assert (planted[planted["metric"] == "layer_impact"]["value"] > 1e-4).all()
    for metric in METRICS:
        top = rank_heads(tables.overall, metric).iloc[0]
        assert (top["layer"], top["head"], top["rank"]) == (*PLANTED, 1), metric


def test_without_labels_accuracy_is_agreement_with_the_unpruned_model(tiny_handle) -> None:
    x = _images(tiny_handle, 6)
    with torch.no_grad():
        top1 = tiny_handle.model(x).argmax(-1)
    unlabelled = head_importance_tables(tiny_handle, x)
    as_labels = head_importance_tables(tiny_handle, x, top1)
    assert unlabelled.unpruned["correct"].all() and not unlabelled.unpruned["labelled"].any()
    pd.testing.assert_frame_equal(unlabelled.overall, as_labels.overall)

    wrong = (top1 + 1) % 5
    mislabelled = head_importance_tables(tiny_handle, x, wrong, metrics=("accuracy",))
    assert not mislabelled.unpruned["correct"].any()
    agreement = unlabelled.overall.query("metric == 'accuracy'")["value"].to_numpy()
    accuracy = mislabelled.overall["value"].to_numpy()
    assert accuracy.max() < agreement.min()

    mixed = torch.where(torch.arange(6) < 3, wrong, torch.full((6,), -1))  # labels known for half the images
    tables = head_importance_tables(tiny_handle, x, mixed, metrics=("accuracy",))
    assert tables.unpruned["target"].tolist() == wrong[:3].tolist() + top1[3:].tolist()
    assert tables.unpruned["labelled"].tolist() == [True] * 3 + [False] * 3


def test_pil_images_are_preprocessed_batch_by_batch_with_the_same_result(tiny_handle) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(5)]
    from_pil = head_importance(tiny_handle, images, batch_size=2)
    from_tensor = head_importance(tiny_handle, tiny_handle.preprocess(images), batch_size=5)
    np.testing.assert_allclose(from_pil["value"], from_tensor["value"], atol=1e-6)


def test_progress_reports_every_batch(tiny_handle) -> None:
    calls: list[tuple[int, int]] = []
    head_importance_tables(tiny_handle, _images(tiny_handle, 5), batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_rank_heads_orders_by_importance_with_ties_in_model_order() -> None:
    table = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1],
            "head": [0, 1, 0, 1],
            "metric": ["probability"] * 4,
            "value": [0.5, 0.2, 0.5, 0.9],
        }
    )
    ranked = rank_heads(table, "probability")
    assert list(zip(ranked["layer"], ranked["head"])) == [(0, 1), (0, 0), (1, 0), (1, 1)]
    taylor = table.assign(metric="taylor", value=[0.1, -0.7, 0.3, -0.2])
    ranked = rank_heads(taylor, "taylor")  # by magnitude: the sign is only a direction
    assert list(zip(ranked["layer"], ranked["head"])) == [(0, 1), (1, 0), (1, 1), (0, 0)]
    assert ranked["rank"].tolist() == [1, 2, 3, 4]


def test_variant_attention_scale_norm_qk_norm_layer_scale() -> None:
    """Pruning at attn.norm's input equals zero attention weights even with a real scale norm."""
    model = tiny_vit(scale_attn_norm=True, qk_norm=True, init_values=0.5)
    handle = wrap_model(model, class_names=[f"c{i}" for i in range(5)], device="cpu")
    x = _images(handle, 2)
    tables = head_importance_tables(handle, x, metrics=("probability",))
    for layer, head in ((0, 0), (2, 1)):
        probs = _masked_reference_probs(handle, x, layer, head, "head")
        target = torch.tensor(tables.unpruned["target"].tolist())
        got = tables.per_image.query("layer == @layer and head == @head").sort_values("image")["value"].to_numpy()
        np.testing.assert_allclose(got, probs[torch.arange(2), target].numpy(), atol=1e-5)


# --- partial pruning -------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_handle", "register_handle"])
def test_partial_pruning_modes_match_masked_manual_attention(request, fixture: str) -> None:
    handle: ViTHandle = request.getfixturevalue(fixture)
    x = _images(handle, 1)
    layer, head = 1, 2
    table = partial_pruning(handle, x, layer, head)
    assert table["mode"].tolist() == list(MODES)
    with torch.no_grad():
        unpruned = handle.model(x).softmax(-1)[0]
    target = int(unpruned.argmax())
    for mode, probability, top5 in zip(table["mode"], table["probability"], table["top5"]):
        reference = _masked_reference_probs(handle, x, layer, head, mode)[0]
        assert probability == pytest.approx(float(reference[target]), abs=1e-5), mode
        assert [name for name, _ in top5] == [handle.class_names[i] for i in reference.topk(5).indices]
    assert table.loc[0, "probability"] == pytest.approx(float(unpruned[target]), abs=1e-6)


def test_partial_pruning_identities_with_the_sweep(register_handle) -> None:
    x = _images(register_handle, 3)
    tables = head_importance_tables(register_handle, x, metrics=("probability",))
    for layer, head in ((0, 1), (2, 0)):
        for image in range(3):
            target = int(tables.unpruned.loc[image, "target"])
            table = partial_pruning(register_handle, x[image:image + 1], layer, head, target=target).set_index("mode")
            whole = tables.per_image.query("image == @image and layer == @layer and head == @head")["value"].item()
            assert table.loc["head", "probability"] == pytest.approx(whole, abs=1e-5)
            assert table.loc["none", "probability"] == pytest.approx(tables.unpruned.loc[image, "probability"], abs=1e-5)
            removed = table["removed_attention"]
            assert removed["none"] == 0 and removed["head"] == pytest.approx(1.0, abs=1e-6)
            # cls covers prefix rows and columns, patch the rest; the three blocks also partition the matrix
            assert removed["cls"] + removed["patch"] == pytest.approx(1.0, abs=1e-5)
            assert removed["cls_cls"] + removed["cls_patch"] + removed["patch"] == pytest.approx(1.0, abs=1e-5)


def test_partial_pruning_of_the_planted_head_and_an_inert_one() -> None:
    handle = _planted_handle()
    x = _images(handle, 1, seed=3)
    inert = partial_pruning(handle, x, 0, 0)
    np.testing.assert_allclose(inert["probability"], inert.loc[0, "probability"], atol=1e-6)
    planted = partial_pruning(handle, x, *PLANTED).set_index("mode")
    assert abs(planted.loc["head", "probability"] - planted.loc["none", "probability"]) > 1e-3


# --- pruning curve ---------------------------------------------------------------------


def test_pruning_curve_points_equal_pruned_copies(tiny_handle) -> None:
    x = _images(tiny_handle, 6)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    overall = head_importance(tiny_handle, x, labels)
    curve = pruning_curve(tiny_handle, x, overall, labels, steps=3, batch_size=4)
    assert set(curve["order"]) == set(METRICS) | {"random"}
    assert sorted(set(curve["pruned"])) == [0, 3, 6, 9]
    for metric in ("probability", "taylor"):
        least_first = rank_heads(overall, metric).iloc[::-1]
        for count in (3, 6):
            heads = list(zip(least_first["layer"][:count], least_first["head"][:count]))
            with torch.no_grad():
                logits = _scaled_copy(tiny_handle.model, {head: 0.0 for head in heads})(x)
            expected = float((logits.argmax(-1) == labels).float().mean())
            got = curve.query("order == @metric and pruned == @count")["accuracy"].item()
            assert got == pytest.approx(expected), (metric, count)
    with torch.no_grad():
        unpruned = (tiny_handle.model(x).argmax(-1) == labels).sum().item() / len(x)
    assert curve.query("pruned == 0")["accuracy"].tolist() == [pytest.approx(unpruned)] * (len(METRICS) + 1)
    assert curve.query("pruned == 9")["accuracy"].nunique() == 1


def test_pruning_curve_keeps_the_planted_head_to_the_end() -> None:
    handle = _planted_handle()
    x = _images(handle, 16, seed=1)
    overall = head_importance(handle, x)
    curve = pruning_curve(handle, x, overall, steps=9)
    total = handle.num_layers * handle.num_heads  # noqa: F841  (read by the query strings)
    for metric in METRICS:
        kept = curve.query("order == @metric and pruned < @total")["accuracy"]
        assert (kept == 1.0).all(), metric  # agreement stays perfect while only inert heads go
    assert curve.query("pruned == @total")["accuracy"].iloc[0] < 1.0


# --- the shared model stays as it was -------------------------------------------------


def test_model_unchanged_after_every_call(register_handle) -> None:
    model = register_handle.model
    before = _model_state(model)
    x = _images(register_handle, 3)
    overall = head_importance(register_handle, x, torch.tensor([0, 1, -1]))
    pruning_curve(register_handle, x, overall, steps=2)
    partial_pruning(register_handle, x[:1], 2, 1)
    _assert_unchanged(model, before)


def test_hooks_removed_when_a_call_fails(tiny_handle) -> None:
    before = _model_state(tiny_handle.model)
    for call in (
        lambda: head_importance(tiny_handle, torch.randn(2, 3, 40, 40)),
        lambda: partial_pruning(tiny_handle, torch.randn(1, 3, 40, 40), 0, 0),
    ):
        with pytest.raises(Exception):
            call()
        _assert_unchanged(tiny_handle.model, before)


def test_concurrent_sweeps_match_serial(tiny_handle) -> None:
    inputs = [_images(tiny_handle, 2, seed=i) for i in range(3)]
    serial = [head_importance(tiny_handle, x) for x in inputs]
    results: dict[int, pd.DataFrame] = {}
    start = threading.Barrier(3)

    def run(i: int) -> None:
        start.wait()
        results[i] = head_importance(tiny_handle, inputs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        pd.testing.assert_frame_equal(results[i], serial[i])


# --- bad arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, head, message",
    [
        (3, 0, "Layer 3 does not exist: this model has layers 0 to 2."),
        (-1, 0, "Layer -1 does not exist"),
        (0, 3, "Head 3 does not exist"),
    ],
)
def test_partial_pruning_rejects_heads_out_of_range(tiny_handle, layer: int, head: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        partial_pruning(tiny_handle, _images(tiny_handle, 1), layer, head)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h, x: partial_pruning(h, x, 0, 0), r"takes one image"),
        (lambda h, x: partial_pruning(h, x[:1], 0, 0, target=9), r"Target class 9 does not exist"),
        (lambda h, x: head_importance(h, x, metrics=("entropy",)), r"'entropy' is not a head-importance metric"),
        (lambda h, x: head_importance(h, x, metrics=()), r"at least one head-importance metric"),
        (lambda h, x: head_importance(h, x, torch.tensor([0])), r"Got 1 labels for 2 images"),
        (lambda h, x: head_importance(h, x, torch.tensor([0, 7])), r"A label is 7, but this model has classes 0 to 4"),
        (lambda h, x: head_importance(h, x[:0]), r"needs at least one image"),
        (lambda h, x: head_importance(h, x, batch_size=0), r"batch size must be at least 1"),
        (lambda h, x: pruning_curve(h, x, head_importance(h, x), steps=0), r"at least one step"),
    ],
)
def test_bad_arguments_get_one_sentence(tiny_handle, call, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        call(tiny_handle, _images(tiny_handle, 2))
    assert str(err.value).endswith(".")
