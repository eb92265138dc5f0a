"""Several sessions on one cached model: importance, strength and capture at once.

The model behind a handle is shared by every browser session. Four threads each run
the three hooked analyses on the same handle at the same time; every result must
equal a serial run, and afterwards the model must have exactly the hooks, flags and
weights it had before.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from core.inputs.digits import digit_images, digits_split
from core.measures.attention import extract_attention
from core.measures.importance import head_importance
from core.measures.strength import strength_statistics
from core.models.handle import ViTHandle


def _model_state(handle: ViTHandle) -> dict:
    model = handle.model
    hooks = {
        name: (
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            len(getattr(module, "_backward_pre_hooks", {})),
        )
        for name, module in model.named_modules()
    }
    flags = {name: (module.training, getattr(module, "fused_attn", None)) for name, module in model.named_modules()}
    weights = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        weights.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    params = {name: (p.requires_grad, p.grad is None) for name, p in model.named_parameters()}
    return {"hooks": hooks, "flags": flags, "weights": weights.hexdigest(), "params": params}


def _analyses(handle: ViTHandle, images, labels: torch.Tensor) -> dict:
    x = handle.preprocess(images)
    importance = head_importance(handle, x, labels, batch_size=4)
    strength = strength_statistics(handle, images, batch_size=3)
    attention = extract_attention(handle, x, batch_size=5)
    return {
        "importance": importance.sort_values(["metric", "layer", "head"])["value"].to_numpy(),
        "entropy": strength.entropy,
        "hops": strength.hop_strength,
        "attn": attention.attn.numpy(),
        "logits": attention.logits.numpy(),
    }


def test_four_threads_match_a_serial_run_and_leave_the_model_as_it_was(demo_handle: ViTHandle) -> None:
    split = digits_split(0, 0.2)
    images, labels = digit_images(split.test[:10])
    labels = torch.tensor(labels)
    before = _model_state(demo_handle)

    serial = _analyses(demo_handle, images, labels)
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda _: _analyses(demo_handle, images, labels), range(4)))

    for result in parallel:
        for key, expected in serial.items():
            np.testing.assert_allclose(result[key], expected, rtol=0, atol=1e-5, err_msg=key)
    assert _model_state(demo_handle) == before
