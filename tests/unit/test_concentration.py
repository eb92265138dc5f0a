"""Where attention goes: concentration on single tokens (sinks) and token norms, against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import tiny_vit
from test_strength import random_attention

from core.attention import token_norms
from core.model import wrap_model
from core.strength import attention_sink, key_entropy, sink_position, top_key_share


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
    from core.attention import OUTLIER_NORM_RATIO, outlier_share, outlier_tokens

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
