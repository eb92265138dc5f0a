"""Attention rollout against an independent slow implementation, on CLS, register and no-prefix models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.measures.attention import extract_attention
from core.measures.attribution import HEAD_FUSIONS, attention_rollout
from core.models.handle import wrap_model
from helpers.models import tiny_vit


def slow_rollout(attn: np.ndarray, prefix: int, fusion: str, ratio: float, class_token: bool = True) -> np.ndarray:
    """One image's rollout ``[P]`` from its ``[L, H, T, T]`` attention, by plain loops and numpy products."""
    layers, heads, t, _ = attn.shape
    reads = class_token and prefix > 0  # the row of a class token, else the mean of the patch rows
    pick = {"mean": np.mean, "max": np.max, "min": np.min}[fusion]
    rollout = np.eye(t)
    for layer in range(layers):
        fused = np.array([[pick([attn[layer, h, i, j] for h in range(heads)]) for j in range(t)] for i in range(t)])
        if ratio:
            # every weight outside the class token's column may go, smallest first
            eligible = sorted((fused[i, j], i, j) for i in range(t) for j in range(t) if not (reads and j == 0))
            for _, i, j in eligible[: int(t * t * ratio)]:
                fused[i, j] = 0.0
        step = 0.5 * fused + 0.5 * np.eye(t)
        step = step / step.sum(axis=1, keepdims=True)
        rollout = step @ rollout
    if reads:
        return rollout[0, prefix:]
    return rollout[prefix:, prefix:].mean(axis=0)


MODELS = {
    "class token": {},
    "class token and 3 registers": {"reg_tokens": 3},
    "no prefix token": {"class_token": False, "global_pool": "avg"},
    "2 registers, no class token": {"class_token": False, "reg_tokens": 2, "global_pool": "avg"},
}


@pytest.fixture(scope="module", params=list(MODELS), ids=list(MODELS))
def attention(request) -> tuple[torch.Tensor, int, bool]:
    handle = wrap_model(tiny_vit(**MODELS[request.param]), class_names=[f"c{i}" for i in range(5)], device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return extract_attention(handle, x).attn.double(), handle.num_prefix_tokens, handle.model.cls_token is not None


@pytest.mark.parametrize("fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("ratio", [0.0, 0.6])
def test_rollout_matches_a_slow_loop(attention, fusion: str, ratio: float) -> None:
    attn, prefix, cls = attention
    found = attention_rollout(attn, prefix, head_fusion=fusion, discard_ratio=ratio, class_token=cls)
    assert found.shape == (2, 16) and found.dtype == torch.float64
    for b in range(2):
        expected = slow_rollout(attn[b].numpy(), prefix, fusion, ratio, cls)
        np.testing.assert_allclose(found[b].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_discarding_drops_the_smallest_weights_but_never_the_class_tokens_column(attention) -> None:
    from core.measures.attribution import _discard

    attn, prefix, cls = attention
    kept = attention_rollout(attn, prefix, class_token=cls)
    dropped = attention_rollout(attn, prefix, discard_ratio=0.9, class_token=cls)
    assert not torch.allclose(kept, dropped) and bool((dropped >= 0).all())
    fused = attn.mean(2)  # [B, L, T, T]
    t = fused.shape[-1]
    reads = cls and prefix > 0
    thinned = _discard(fused, 0.9, protected=0 if reads else None)
    eligible = t * t - (t if reads else 0)
    assert int((thinned == 0).sum(dim=(-2, -1)).min()) == min(int(t * t * 0.9), eligible)
    if reads:
        assert torch.equal(thinned[..., 0], fused[..., 0])  # every weight on the class token survives


def test_identity_and_uniform_attention() -> None:
    t = 1 + 16
    identity = torch.eye(t).expand(1, 3, 2, t, t)
    assert float(attention_rollout(identity).abs().max()) == 0.0  # CLS only ever looks at itself
    assert torch.allclose(attention_rollout(identity[..., 1:, 1:], 0), torch.full((1, 16), 1 / 16))
    uniform = torch.full((1, 3, 2, t, t), 1 / t, dtype=torch.float64)
    rolled = attention_rollout(uniform)
    assert torch.allclose(rolled, rolled[:, :1].expand_as(rolled))  # every patch alike
    # each step's rows sum to 1, so the class token's whole row does, prefix included
    assert float(rolled.sum()) < 1.0 and float(rolled.sum()) == pytest.approx(16 / t * (1 - 0.5**3), rel=1e-9)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"attn": torch.ones(2, 3, 5, 5)}, "shape"),
        ({"attn": torch.ones(1, 2, 3, 5, 5), "num_prefix_tokens": 5}, "fewer than T prefix tokens"),
        ({"attn": torch.ones(1, 2, 3, 5, 5), "head_fusion": "median"}, "Unknown head fusion"),
        ({"attn": torch.ones(1, 2, 3, 5, 5), "discard_ratio": 1.0}, "discard ratio"),
    ],
)
def test_what_rollout_cannot_use_is_one_sentence(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        attention_rollout(**kwargs)


# --- gradient rollout ----------------------------------------------------------------------


def slow_gradient_rollout(model, x: torch.Tensor, target: list[int], prefix: int, readout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chefer et al.'s rollout with the forward written out by hand: attention as a leaf of the graph, loops for R.

    Returns the maps ``[B, P]`` read with ``readout`` ``[T]``, and each head's part ``[B, L, H]``:
    what its term, read the same way, adds to the map's patches.
    """
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
    maps = []
    for block in model.blocks:
        a = block.attn
        b, t, d = tokens.shape
        q, k, v = a.qkv(block.norm1(tokens)).reshape(b, t, 3, a.num_heads, d // a.num_heads).permute(2, 0, 3, 1, 4)
        weights = ((q * a.scale) @ k.transpose(-2, -1)).softmax(-1)
        weights.retain_grad()
        maps.append(weights)
        out = a.proj((weights @ v).transpose(1, 2).reshape(b, t, d))
        tokens = tokens + block.ls1(out)
        tokens = tokens + block.ls2(block.mlp(block.norm2(tokens)))
    logits = model.forward_head(model.norm(tokens))
    logits[torch.arange(len(x)), torch.tensor(target)].sum().backward()
    results, parts = [], []
    for image in range(len(x)):
        t = tokens.shape[1]
        relevance = np.eye(t)
        by_head = []
        for weights in maps:
            a, g = weights[image].detach().double().numpy(), weights.grad[image].double().numpy()
            heads = a.shape[0]
            terms = [np.array([[max(0.0, g[h, i, j] * a[h, i, j]) for j in range(t)] for i in range(t)]) for h in range(heads)]
            by_head.append([float((readout @ (terms[h] / heads) @ relevance)[prefix:].sum()) for h in range(heads)])
            relevance = relevance + sum(terms) / heads @ relevance
        results.append((readout @ relevance)[prefix:])
        parts.append(by_head)
    model.zero_grad(set_to_none=True)
    return np.stack(results), np.array(parts)


def _readout(t: int, rows: dict[int, float] | None, patch_share: float, prefix: int) -> np.ndarray:
    """Weights over the ``t`` tokens: the given rows, plus ``patch_share`` spread over the patches."""
    weights = np.zeros(t)
    for row, weight in (rows or {}).items():
        weights[row] = weight
    weights[prefix:] += patch_share / (t - prefix)
    return weights


def _distilled(**overrides):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.0)
    return VisionTransformerDistilled(**{**args, **overrides})


def _class_and_patch_mean():
    from core.models.transformers import _timm_subclass

    torch.manual_seed(0)
    return _timm_subclass("class_and_patch_mean")(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=3, num_heads=3)


def _class_token_deit():
    from core.models.transformers import _timm_subclass

    torch.manual_seed(0)
    return _timm_subclass("class_token")(img_size=32, patch_size=8, num_classes=5, embed_dim=24, depth=3, num_heads=3)


# each model, and the rows its output is read from: ({row: weight}, weight spread over the patches)
READOUTS = {
    "class token": (lambda: tiny_vit(), {0: 1.0}, 0.0),
    "class token and 3 registers": (lambda: tiny_vit(reg_tokens=3), {0: 1.0}, 0.0),
    "no prefix token": (lambda: tiny_vit(class_token=False, global_pool="avg"), None, 1.0),
    "2 registers, no class token": (lambda: tiny_vit(class_token=False, reg_tokens=2, global_pool="avg"), None, 1.0),
    "class token, average pooled": (lambda: tiny_vit(global_pool="avg"), None, 1.0),
    "distilled DeiT": (_distilled, {0: 0.5, 1: 0.5}, 0.0),
    "DeiT read at its class token (transformers)": (_class_token_deit, {0: 1.0}, 0.0),
    "class token and patch mean (transformers DINOv2)": (_class_and_patch_mean, {0: 0.5}, 0.5),
}


@pytest.mark.parametrize("name", list(READOUTS))
def test_gradient_rollout_matches_a_hand_written_forward_and_leaves_the_model_clean(name: str) -> None:
    from core.measures.attribution import (
        answer_readout,
        gradient_relevance,
        gradient_rollout,
    )

    build, rows, patch_share = READOUTS[name]
    handle = wrap_model(build(), class_names=[f"c{i}" for i in range(5)], device="cpu")
    readout = _readout(handle.num_tokens, rows, patch_share, handle.num_prefix_tokens)
    np.testing.assert_allclose(answer_readout(handle).numpy(), readout, atol=1e-15)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    top = handle.model(x).argmax(-1).tolist()
    found = gradient_relevance(handle, x, target=torch.tensor([3, -1]))  # a given class, then the top-1
    assert found.maps.shape == (2, 16) and found.heads.shape == (2, 3, 3) and found.targets.tolist() == [3, top[1]]
    model = handle.model
    assert not any(m._forward_hooks for m in model.modules()) and all(p.grad is None for p in model.parameters())
    expected, parts = slow_gradient_rollout(model, x, [3, top[1]], handle.num_prefix_tokens, readout)
    np.testing.assert_allclose(found.maps.numpy(), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(found.heads.numpy(), parts, rtol=1e-4, atol=1e-7)
    # the heads' parts are the whole map: nothing is left over but the readout's own patch weight
    np.testing.assert_allclose(found.heads.sum(dim=(1, 2)).numpy(), expected.sum(-1) - patch_share, rtol=1e-4)
    shares = found.head_shares
    np.testing.assert_allclose(shares.sum(dim=(1, 2)).numpy(), 1.0, rtol=1e-5)
    assert torch.equal(gradient_rollout(handle, x, target=torch.tensor([3, -1])), found.maps)
    assert not torch.allclose(found.maps[0], gradient_rollout(handle, x[:1], target=1)[0])  # another class, another map


@pytest.mark.parametrize("name", list(READOUTS))
def test_attention_rollout_reads_the_rows_the_answer_is_read_from(name: str) -> None:
    from core.measures.attribution import answer_readout

    build, rows, patch_share = READOUTS[name]
    handle = wrap_model(build(), class_names=[f"c{i}" for i in range(5)], device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    attn = extract_attention(handle, x).attn.double()
    readout = _readout(handle.num_tokens, rows, patch_share, handle.num_prefix_tokens)
    found = attention_rollout(attn, handle.num_prefix_tokens, readout=answer_readout(handle))
    p = handle.num_prefix_tokens
    for b in range(2):
        # the slow loop's rollout matrix, read at those rows: its class-token read is the row itself
        full = np.eye(handle.num_tokens)
        for layer in range(attn.shape[1]):
            step = 0.5 * attn[b, layer].mean(0).numpy() + 0.5 * np.eye(handle.num_tokens)
            full = step / step.sum(1, keepdims=True) @ full
        np.testing.assert_allclose(found[b].numpy(), (readout @ full)[p:], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="one weight per token"):
        attention_rollout(attn, p, readout=torch.ones(3))


def test_gradient_rollout_in_chunks_equals_one_image_at_a_time(tiny_handle) -> None:
    from core.measures import attribution

    x = torch.randn(attribution._GRADIENT_BATCH + 3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    together = attribution.gradient_relevance(tiny_handle, x)
    alone = [attribution.gradient_relevance(tiny_handle, x[i:i + 1]) for i in range(len(x))]
    torch.testing.assert_close(together.maps, torch.cat([a.maps for a in alone]), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(together.heads, torch.cat([a.heads for a in alone]), rtol=1e-4, atol=1e-6)


def test_gradient_rollout_refuses_masked_attention(tiny_handle) -> None:
    from core.errors import UnsupportedMetric
    from core.measures.attribution import _check_plain_call

    _check_plain_call((torch.zeros(1),), {"attn_mask": None, "is_causal": False})  # how timm's Block calls it
    with pytest.raises(UnsupportedMetric, match="masks its attention"):
        _check_plain_call((torch.zeros(1),), {"attn_mask": torch.zeros(1)})


def test_gradient_rollout_needs_a_class_and_a_class_the_model_has(tiny_handle) -> None:
    from core.errors import InvalidSetting, UnsupportedMetric
    from core.measures.attribution import gradient_rollout

    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(InvalidSetting, match="classes 0 to 4"):
        gradient_rollout(tiny_handle, x, target=5)
    with pytest.raises(InvalidSetting, match="one target class per image"):
        gradient_rollout(tiny_handle, x, target=[1, 2, 3])
    with pytest.raises(InvalidSetting, match="whole class index"):
        gradient_rollout(tiny_handle, x, target=2.7)
    with pytest.raises(InvalidSetting, match=r"preprocessed batch \[B, 3, 32, 32\]"):
        gradient_rollout(tiny_handle, torch.zeros(2, 3, 48, 48))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="outside torch.inference_mode"):
        gradient_rollout(tiny_handle, x)
    backbone = wrap_model(tiny_vit(num_classes=0), device="cpu")
    with pytest.raises(UnsupportedMetric, match="use attention rollout"):
        gradient_rollout(backbone, x)


# --- faithfulness ----------------------------------------------------------------------------


def slow_curves(handle, x: torch.Tensor, order: list[int], fill: torch.Tensor, fractions, cls: int | None) -> dict:
    """Deletion and insertion scores of one image ``[C, H, W]`` for one patch order, pixel by pixel."""
    rows, cols = handle.grid
    ph, pw = handle.patch_size
    reference = handle.model(x[None]).detach()
    found = {"deletion": [], "insertion": []}
    for curve in found:
        for fraction in fractions:
            chosen = set(order[: round(fraction * rows * cols)])
            image = x.clone() if curve == "deletion" else fill.clone()
            for patch in chosen:
                r, c = divmod(patch, cols)
                source = fill if curve == "deletion" else x
                image[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = source[:, r * ph:(r + 1) * ph, c * pw:(c + 1) * pw]
            out = handle.model(image[None]).detach()
            if cls is None:
                found[curve].append(float(torch.nn.functional.cosine_similarity(out, reference)))
            else:
                found[curve].append(float(out.softmax(-1)[0, cls]))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("fill", ["mean", "blur"])
@pytest.mark.parametrize("backbone", [False, True], ids=["classifier", "backbone"])
def test_curves_match_a_pixel_loop(fill: str, backbone: bool) -> None:
    from core.measures.attribution import (
        _filled,
        faithfulness_areas,
        faithfulness_curves,
    )

    handle = wrap_model(tiny_vit(num_classes=0 if backbone else 5), class_names=[] if backbone else list("abcde"), device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    relevance = torch.rand(2, 16, generator=torch.Generator().manual_seed(5))
    target = None if backbone else torch.tensor([2, -1])
    curves = faithfulness_curves(handle, x, relevance, target=target, steps=4, fill=fill, seed=3)
    assert len(curves) == 2 * 2 * 2 * 5 and list(curves.columns) == ["image", "order", "curve", "fraction", "score"]
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    generator = torch.Generator().manual_seed(3)
    for image in range(2):
        random_order = torch.randperm(16, generator=generator).tolist()  # drawn image by image, as the function does
        cls = None if backbone else (2 if image == 0 else int(handle.model(x[1:2]).argmax()))
        fill_image = _filled(x[image:image + 1], fill, handle.patch_size)[0]
        by_relevance = relevance[image].argsort(descending=True, stable=True).tolist()
        for order_name, order in (("relevance", by_relevance), ("random", random_order)):
            expected = slow_curves(handle, x[image], order, fill_image, fractions, cls)
            for curve, values in expected.items():
                rows = curves[(curves["image"] == image) & (curves["order"] == order_name) & (curves["curve"] == curve)]
                assert rows["fraction"].tolist() == fractions
                np.testing.assert_allclose(rows["score"].to_numpy(), values, rtol=1e-5, atol=1e-6)
    # both curves meet at the fill image, and start or end at the unmodified one
    first = curves[(curves["image"] == 0) & (curves["order"] == "relevance")]
    deletion, insertion = first[first["curve"] == "deletion"], first[first["curve"] == "insertion"]
    assert deletion["score"].iloc[-1] == pytest.approx(insertion["score"].iloc[0], abs=1e-6)
    assert deletion["score"].iloc[0] == pytest.approx(insertion["score"].iloc[-1], abs=1e-6)
    areas = faithfulness_areas(curves)
    assert len(areas) == 8 and set(areas.columns) == {"image", "order", "curve", "area"}
    row = areas[(areas["image"] == 0) & (areas["order"] == "relevance") & (areas["curve"] == "deletion")]
    scores = deletion["score"].to_numpy()
    assert float(row["area"].iloc[0]) == pytest.approx(0.25 * (scores[0] / 2 + scores[1:-1].sum() + scores[-1] / 2))


def test_curves_refuse_what_they_cannot_use(tiny_handle) -> None:
    from core.errors import InvalidSetting, UnsupportedMetric
    from core.measures.attribution import faithfulness_curves

    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(InvalidSetting, match=r"one map of 16 patches per image"):
        faithfulness_curves(tiny_handle, x, torch.zeros(1, 15))
    with pytest.raises(InvalidSetting, match="at least 1 step"):
        faithfulness_curves(tiny_handle, x, torch.zeros(1, 16), steps=0)
    with pytest.raises(InvalidSetting, match="Unknown fill"):
        faithfulness_curves(tiny_handle, x, torch.zeros(1, 16), fill="noise")
    with pytest.raises(InvalidSetting, match="preprocessed batch"):
        faithfulness_curves(tiny_handle, torch.zeros(1, 3, 24, 32), torch.zeros(1, 16))
    many = faithfulness_curves(tiny_handle, x, np.zeros((1, 16)), steps=40)  # more steps than patches
    assert set(many["fraction"]) == {k / 16 for k in range(17)}
    backbone = wrap_model(tiny_vit(num_classes=0), device="cpu")
    with pytest.raises(UnsupportedMetric, match="no target class"):
        faithfulness_curves(backbone, x, torch.zeros(1, 16), target=1)


def test_the_summary_pairs_each_image_with_its_random_order() -> None:
    import pandas as pd

    from core.measures.attribution import faithfulness_summary

    rows = []
    # map: deletion 0.3 and 0.5 against random 0.4 and 0.6 (better on both: swapped pairs would win only one);
    # insertion 0.9 and 0.3 against 0.6 and 0.5
    for image, (d, dr, i, ir) in enumerate([(0.3, 0.4, 0.9, 0.6), (0.5, 0.6, 0.3, 0.5)]):
        rows += [(image, "relevance", "deletion", d), (image, "random", "deletion", dr),
                 (image, "relevance", "insertion", i), (image, "random", "insertion", ir)]
    areas = pd.DataFrame(rows, columns=["image", "order", "curve", "area"])
    summary = faithfulness_summary(areas).set_index("curve")
    assert list(summary.columns) == ["images", "relevance", "random", "gain", "wins"]
    assert summary.loc["deletion", "images"] == 2
    np.testing.assert_allclose(summary.loc["deletion", ["relevance", "random", "gain", "wins"]].astype(float), [0.4, 0.5, 0.1, 1.0])
    np.testing.assert_allclose(summary.loc["insertion", ["relevance", "random", "gain", "wins"]].astype(float), [0.6, 0.55, 0.05, 0.5])
    two = faithfulness_summary(pd.concat([areas.assign(method="a"), areas.assign(method="b", area=areas["area"] * 0)]))
    assert list(two.columns[:2]) == ["method", "curve"] and len(two) == 4
    assert two.set_index(["method", "curve"]).loc[("b", "deletion"), "wins"] == 0.0  # a tie is no win
    assert faithfulness_summary(areas.iloc[:0]).empty


def test_relevance_maps_are_each_method_read_in_small_batches(tiny_handle, monkeypatch) -> None:
    from core.measures import attribution

    monkeypatch.setattr("core.settings.images_per_batch", lambda handle, cap=None: 2)  # 5 images: 3 batches
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    found = attribution.relevance_maps(tiny_handle, x, head_fusion="max", discard_ratio=0.5, target=2)
    assert list(found.maps) == list(attribution.METHODS)
    attn = extract_attention(tiny_handle, x).attn
    torch.testing.assert_close(found.maps["attention rollout"], attention_rollout(attn, 1, "max", 0.5), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(found.maps["gradient rollout"], attribution.gradient_rollout(tiny_handle, x, 2))
    # the class token's last-layer attention over the patches, mean of the heads
    torch.testing.assert_close(found.maps["last-layer attention"], attn[:, -1, :, 0, 1:].mean(1), rtol=1e-5, atol=1e-7)
    assert found.targets.tolist() == [2] * 5 and found.heads.shape == (5, 3, 3)
    backbone = wrap_model(tiny_vit(num_classes=0), device="cpu")
    plain = attribution.relevance_maps(backbone, x)
    assert list(plain.maps) == ["attention rollout", "last-layer attention"] and plain.heads is None


def test_methods_are_compared_on_the_same_random_order(tiny_handle) -> None:
    from core.measures import attribution

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    maps = attribution.relevance_maps(tiny_handle, x).maps
    seen = []
    curves = attribution.compare_faithfulness(tiny_handle, x, maps, steps=4, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)] and list(curves.columns[:2]) == ["method", "image"]
    assert set(curves["method"]) == set(maps) and set(curves["image"]) == {0, 1}
    random = curves[curves["order"] == attribution.RANDOM_ORDER].pivot_table(index=["image", "curve", "fraction"], columns="method", values="score")
    assert np.allclose(random.to_numpy(), random.to_numpy()[:, :1])  # one random order per image, whatever the method
    # the second image's curves are the single-image call's, with its own seed
    alone = attribution.faithfulness_curves(tiny_handle, x[1:], maps["gradient rollout"][1:], steps=4, seed=1)
    mine = curves[(curves["method"] == "gradient rollout") & (curves["image"] == 1)]
    np.testing.assert_allclose(mine["score"].to_numpy(), alone["score"].to_numpy(), rtol=1e-6)


@pytest.mark.parametrize("name", ["distilled DeiT", "2 registers, no class token", "class token, average pooled"])
def test_discarding_keeps_the_columns_of_the_tokens_the_answer_reads(name: str) -> None:
    from core.measures.attribution import _discard, answer_readout

    build, rows, _ = READOUTS[name]
    handle = wrap_model(build(), class_names=[f"c{i}" for i in range(5)], device="cpu")
    attn = extract_attention(handle, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(8))).attn.double()
    p = handle.num_prefix_tokens
    kept = sorted(rows or {})  # the prefix tokens the answer reads: none for a patch mean
    found = attention_rollout(attn, p, discard_ratio=0.9, readout=answer_readout(handle))
    thinned = _discard(attn.mean(2), 0.9, protected=kept or None)
    step = 0.5 * thinned + 0.5 * torch.eye(handle.num_tokens, dtype=torch.float64)
    step = step / step.sum(-1, keepdim=True)
    full = torch.eye(handle.num_tokens, dtype=torch.float64)
    for layer in range(step.shape[1]):
        full = step[0, layer] @ full
    torch.testing.assert_close(found[0], (answer_readout(handle) @ full)[p:])
    if kept:
        assert torch.equal(thinned[..., kept], attn.mean(2)[..., kept])
