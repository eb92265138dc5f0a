"""core.measures.attention: exact post-softmax attention without touching the shared model."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from core.measures.attention import extract_attention, iter_attention
from core.models.handle import wrap_model
from helpers.models import tiny_vit


def reference_attention(model, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) recomputed from each block's qkv weights, independently of the hooks."""
    patterns = []
    with torch.no_grad():
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))
        for block in model.blocks:
            attn = block.attn
            y = block.norm1(tokens)
            qkv = F.linear(y, attn.qkv.weight, attn.qkv.bias)
            b, n, _ = qkv.shape
            q, k, _v = qkv.reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(q), attn.k_norm(k)
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / attn.head_dim**0.5
            patterns.append(scores.softmax(-1))
            tokens = block(tokens)
    return torch.stack(patterns, dim=1)


@pytest.mark.parametrize("fused", [True, False])
def test_attention_equals_independent_softmax_qk(fused: bool) -> None:
    model = tiny_vit(img_size=(24, 32), reg_tokens=2)
    for block in model.blocks:
        block.attn.fused_attn = fused  # our own test model: both timm paths must give the same capture
    handle = wrap_model(model, device="cpu")
    x = torch.randn(3, 3, 24, 32)
    batch = extract_attention(handle, x)
    assert batch.attn.shape == (3, handle.num_layers, handle.num_heads, handle.num_tokens, handle.num_tokens)
    assert handle.num_tokens == 3 + 3 * 4
    torch.testing.assert_close(batch.attn, reference_attention(model, x), atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.attn.sum(-1), torch.ones(3, handle.num_layers, handle.num_heads, handle.num_tokens))
    with torch.no_grad():
        torch.testing.assert_close(batch.logits, model(x), atol=1e-5, rtol=0)


def test_attention_with_qk_norm_is_read_after_the_norm() -> None:
    model = tiny_vit(qk_norm=True)
    for block in model.blocks:  # non-trivial norm weights, so reading q before q_norm would differ
        torch.nn.init.normal_(block.attn.q_norm.weight, 1.0, 0.5)
    handle = wrap_model(model, device="cpu")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(extract_attention(handle, x).attn, reference_attention(model, x), atol=1e-5, rtol=0)


def test_capture_leaves_model_exactly_as_it_was(tiny_handle) -> None:
    model = tiny_handle.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [b.attn.fused_attn for b in model.blocks]
    extract_attention(tiny_handle, torch.randn(2, 3, 32, 32))
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_hooks_removed_when_the_forward_fails(tiny_handle) -> None:
    with pytest.raises(Exception):
        extract_attention(tiny_handle, torch.randn(1, 3, 40, 40))  # wrong input size
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_handle.model.modules())


def test_user_hooks_survive_a_capture(tiny_handle) -> None:
    calls = []
    handle = tiny_handle.model.blocks[0].attn.q_norm.register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_attention(tiny_handle, torch.randn(1, 3, 32, 32))
        assert calls == [1]
        assert len(tiny_handle.model.blocks[0].attn.q_norm._forward_hooks) == 1
    finally:
        handle.remove()


def test_batching_does_not_change_results(register_handle) -> None:
    x = torch.randn(5, 3, 24, 32)
    whole = extract_attention(register_handle, x, batch_size=5)
    chunks = list(iter_attention(register_handle, x, batch_size=2))
    assert [len(c.attn) for c in chunks] == [2, 2, 1]
    torch.testing.assert_close(torch.cat([c.attn for c in chunks]), whole.attn, atol=1e-6, rtol=0)


def test_concurrent_captures_match_serial(tiny_handle) -> None:
    """Four threads start together on one shared model; hooks must never see another thread's batch."""
    inputs = [torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    serial = [extract_attention(tiny_handle, x, batch_size=1).attn for x in inputs]
    results: dict[int, torch.Tensor] = {}
    start = threading.Barrier(4)

    def run(i: int) -> None:
        start.wait()
        for _ in range(5):
            results[i] = extract_attention(tiny_handle, inputs[i], batch_size=1).attn

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        torch.testing.assert_close(results[i], serial[i], atol=0, rtol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_handle.model.modules())
