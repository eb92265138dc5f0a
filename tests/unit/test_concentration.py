"""Where attention goes: concentration on single tokens (sinks) and token norms, against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.measures.attention import token_norms
from core.measures.strength import (
    attention_sink,
    key_entropy,
    sink_position,
    top_key_share,
)
from core.models.handle import wrap_model
from helpers.attention import random_attention
from helpers.models import tiny_vit


def slow_concentration(attn: np.ndarray, prefix: int) -> tuple[float, int, float]:
    """Top key share, its token and the key entropy of one head's ``[T, T]`` attention, by loops."""
    t = attn.shape[0]
    received = [sum(attn[i, j] for i in range(prefix, t)) / (t - prefix) for j in range(t)]
    sink = max(range(t), key=lambda j: received[j])
    entropies = [-sum(p * math.log(p) for p in attn[i] if p > 0) for i in range(prefix, t)]
    return received[sink], sink, sum(entropies) / len(entropies)


@pytest.mark.parametrize("prefix", [0, 1, 5])  # no class token, CLS, CLS and four registers
def test_concentration_matches_a_slow_loop(prefix: int) -> None:
    attn = random_attention(2, 3, prefix + 16, prefix + 16, seed=prefix)
    attn[0, 1] = 0.0
    attn[0, 1, :, prefix + 6] = 1.0  # every query looks at patch 6 (row 1, col 2 of 4x4)
    share, sink, entropy = top_key_share(attn, prefix), attention_sink(attn, prefix), key_entropy(attn, prefix)
    assert share.shape == sink.shape == entropy.shape == (2, 3)
    for b in range(2):
        for h in range(3):
            expected = slow_concentration(attn[b, h].double().numpy(), prefix)
            assert float(share[b, h]) == pytest.approx(expected[0], abs=1e-6)
            assert int(sink[b, h]) == expected[1]
            assert float(entropy[b, h]) == pytest.approx(expected[2], abs=1e-5)
    assert float(share[0, 1]) == 1.0 and float(entropy[0, 1]) == 0.0
    assert sink_position(int(sink[0, 1]), (4, 4), prefix) == (1, 2)


def test_uniform_attention_is_one_over_t_and_ln_t() -> None:
    attn = torch.full((1, 17, 17), 1 / 17)
    assert float(top_key_share(attn)) == pytest.approx(1 / 17)
    assert float(key_entropy(attn)) == pytest.approx(math.log(17))


def test_a_prefix_sink_has_no_grid_position_and_bad_shapes_are_refused() -> None:
    assert sink_position(0, (4, 4), 1) is None and sink_position(4, (4, 4), 5) is None
    assert sink_position(5, (4, 4), 5) == (0, 0) and sink_position(20, (4, 4), 5) == (3, 3)
    with pytest.raises(ValueError):
        sink_position(21, (4, 4), 5)
    with pytest.raises(ValueError):
        top_key_share(torch.ones(3, 4, 5))
    with pytest.raises(ValueError):
        key_entropy(torch.ones(4, 4), num_prefix_tokens=4)


@pytest.mark.parametrize("overrides", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}])
def test_token_norms_are_the_block_outputs_norms(overrides: dict) -> None:
    handle = wrap_model(tiny_vit(**overrides), device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    norms = token_norms(handle, x)
    assert norms.shape == (2, handle.num_layers, handle.num_tokens)
    model = handle.model
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for layer, block in enumerate(model.blocks):
            tokens = block(tokens)
            assert torch.allclose(norms[:, layer], tokens.norm(dim=-1), atol=1e-5)
    assert not any(module._forward_hooks for module in model.modules())  # every hook removed


def test_outlier_tokens_and_the_attention_they_receive_match_a_slow_loop() -> None:
    from core.measures.attention import (
        OUTLIER_NORM_RATIO,
        outlier_share,
        outlier_tokens,
    )

    g = torch.Generator().manual_seed(3)
    norms = 10 + torch.rand(2, 3, 1 + 16, generator=g)  # [B, L, T]: CLS then 4x4 patches, all ordinary
    norms[0, 1, 7] = 10 * norms[0, 1, 1:].median()  # an artefact about 10x the others (Darcet et al.)
    norms[1, 2, 0] = 60.0  # a high-norm class token
    outliers = outlier_tokens(norms)
    for b in range(2):
        for layer in range(3):
            median = sorted(norms[b, layer, 1:].tolist())[7]  # torch's median of 16: the lower middle
            for t in range(17):
                assert bool(outliers[b, layer, t]) == (float(norms[b, layer, t]) >= OUTLIER_NORM_RATIO * median)
    assert outliers.sum() == 2 and outliers[0, 1, 7] and outliers[1, 2, 0]
    attn = random_attention(2, 3, 4, 17, 17, seed=4).float()
    share = outlier_share(attn, outliers)
    assert share.shape == (2, 3, 4)
    for b, layer, token in ((0, 1, 7), (1, 2, 0)):
        for h in range(4):
            expected = sum(float(attn[b, layer, h, i, token]) for i in range(1, 17)) / 16
            assert float(share[b, layer, h]) == pytest.approx(expected, abs=1e-6)
    assert float(share[0, 0].abs().max()) == 0.0  # no outlier in that layer: no share


def _slow_stream_summaries(handle, images) -> dict[str, np.ndarray]:
    """The concentration and norm arrays of ``StrengthStats``, by loops over the attention and the residual stream."""
    from core.measures.attention import extract_attention

    x = handle.preprocess(images)
    attn = extract_attention(handle, x).attn.double().numpy()  # [N, L, H, T, T]
    model = handle.model
    with torch.no_grad():  # the residual stream by hand: entering each block, then leaving the last
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        stream = [tokens]
        for block in model.blocks:
            tokens = block(tokens)
            stream.append(tokens)
    norms = torch.stack(stream, 1).double().norm(dim=-1).numpy()  # [N, L + 1, T]
    p, r = handle.num_prefix_tokens, handle.num_registers
    n, layers, heads, t = attn.shape[:4]
    out = {name: np.zeros((n, layers, heads)) for name in ("top_share", "sink", "key_entropy", "register_share", "outlier_share")}
    out |= {"outliers": np.zeros((n, layers)), "norm_ratio": np.zeros((n, layers))}
    for b in range(n):
        for layer in range(layers + 1):
            patches = sorted(norms[b, layer, p:])
            median = patches[(len(patches) - 1) // 2]  # the lower middle of an even count, as torch.median
            ratio = norms[b, layer] / median
            if layer:  # leaving block layer - 1
                out["outliers"][b, layer - 1] = sum(v >= 4.0 for v in ratio)
                out["norm_ratio"][b, layer - 1] = max(ratio)
            if layer == layers:
                continue
            keys = [j for j in range(t) if ratio[j] >= 4.0]  # entering this block: its keys
            for h in range(heads):
                share, sink, entropy = slow_concentration(attn[b, layer, h], p)
                received = attn[b, layer, h, p:].mean(0)
                out["top_share"][b, layer, h], out["sink"][b, layer, h], out["key_entropy"][b, layer, h] = share, sink, entropy
                out["register_share"][b, layer, h] = sum(received[j] for j in range(p - r, p))
                out["outlier_share"][b, layer, h] = sum(received[j] for j in keys)
    return out


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # a class token
        {"reg_tokens": 3},  # CLS and three registers, one of them made an outlier below
        {"class_token": False, "global_pool": "avg", "img_size": 40},  # no prefix token, 5x5 patches
    ],
)
def test_streamed_concentration_and_norms_match_slow_loops(overrides: dict) -> None:
    from core.measures.strength import strength_statistics
    from core.pipeline.analysis import Capture, draw_samples, run_pass
    from core.settings import CaseSettings

    model = tiny_vit(**overrides)
    if "reg_tokens" in overrides:
        with torch.no_grad():
            model.reg_token[0, 1] = 40.0  # register 2 enters every block as a high-norm token
    handle = wrap_model(model, class_names=[f"c{i}" for i in range(5)], device="cpu")
    size = overrides.get("img_size", 32)
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(5)]
    slow = _slow_stream_summaries(handle, images)
    streamed = strength_statistics(handle, images, batch_size=2)
    capture = Capture(map_samples=draw_samples(handle, 5, CaseSettings(max_maps=50)))
    passed = run_pass(handle, images, None, capture, batch_size=3).strength
    for stats in (streamed, passed):
        assert stats.has_concentration
        for name, expected in slow.items():
            found = getattr(stats, name)
            assert found.shape == expected.shape, name
            if name in ("sink", "outliers"):
                np.testing.assert_array_equal(found, expected, err_msg=name)
            else:
                np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    if "reg_tokens" in overrides:
        assert handle.prefix_names == ("CLS", "register 1", "register 2", "register 3")
        assert (streamed.outliers >= 1).all() and streamed.outlier_share.max() > 0
        assert streamed.register_share.min() > 0
    else:
        assert (streamed.register_share == 0).all()
    if handle.num_prefix_tokens == 0:
        assert handle.prefix_names == () and (streamed.prefix_share == 0).all()


def test_prefix_names_and_token_labels() -> None:
    from core.measures.strength import token_label
    from core.models.handle import prefix_names

    assert prefix_names(1) == ("CLS",) and prefix_names(2) == ("CLS", "distillation")
    assert prefix_names(5, 4) == ("CLS", "register 1", "register 2", "register 3", "register 4")
    assert prefix_names(4, 4, class_token=False) == ("register 1", "register 2", "register 3", "register 4")
    assert prefix_names(0) == ()
    names = prefix_names(5, 4)
    assert token_label(0, (16, 16), names) == "CLS" and token_label(3, (16, 16), names) == "register 3"
    assert token_label(5, (16, 16), names) == "patch (row 1, column 1)"
    assert token_label(5 + 16 * 2 + 8, (16, 16), names) == "patch (row 3, column 9)"
    assert token_label(0, (4, 4), ()) == "patch (row 1, column 1)"


def test_a_zero_median_patch_norm_makes_no_outliers() -> None:
    from core.measures.attention import norm_ratios, outlier_tokens

    norms = torch.zeros(1, 2, 1 + 4)
    norms[0, 0, 0] = 3.0  # a class token with some norm over patches of none
    norms[0, 1, 1:] = torch.tensor([1.0, 2.0, 3.0, 40.0])
    ratios = norm_ratios(norms)
    assert torch.equal(ratios[0, 0], torch.ones(5)) and not outlier_tokens(norms)[0, 0].any()
    assert ratios[0, 1].tolist() == [0.0, 0.5, 1.0, 1.5, 20.0]  # median of 4: the lower middle, 2
    assert outlier_tokens(norms)[0, 1].tolist() == [False, False, False, False, True]
