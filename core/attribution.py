"""Explanations of one image: which patches the model's answer draws on.

``attention_rollout`` follows Abnar and Zuidema (2020, "Quantifying Attention Flow in
Transformers"): each layer's attention, with the residual connection as an identity,
is multiplied through the layers, so the class token's row says how much of each patch
reaches it. It reads only the post-softmax attention (``core.attention``), so it needs
no gradient and no hook of its own.

``gradient_rollout`` follows Chefer, Gur and Wolf (ICCV 2021, "Generic
Attention-model Explainability"): each layer's attention is weighted by the gradient
of the target logit with respect to it, so only what raises that class counts.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from core._hooks import attention_forward, check_finite, locked_hooks
from core.errors import InvalidSetting, UnsupportedMetric
from core.model import ViTHandle

__all__ = [
    "HEAD_FUSIONS",
    "attention_rollout",
    "gradient_rollout",
]

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[HeadFusion, ...] = ("mean", "max", "min")


def attention_rollout(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
) -> torch.Tensor:
    """``[B, n_patches]``: how much of each patch flows into the class token through every layer.

    Per layer, the heads are fused (their mean, max or min), then ``0.5 * fused + 0.5 * I``
    with each row renormalised to sum to 1 stands for attention plus the residual
    connection; the layers are multiplied in order, ``R = A_{L-1} ... A_0``, and the class
    token's row of ``R`` is read over the patches. A model without a class token
    (``num_prefix_tokens == 0``) reads the mean of the patch rows instead. With prefix
    tokens, the first one is taken for the class token (timm's order).

    ``discard_ratio`` first drops that share of the smallest fused weights of each layer
    and image (set to 0, as vit-explain does), never a weight in the class token's column,
    so the flow that reaches it is kept.

    Args:
        attn: ``[B, L, H, T, T]`` post-softmax attention (``AttentionBatch.attn``).
        num_prefix_tokens: class, distillation and register tokens before the patches.
        head_fusion: how a layer's heads become one map.
        discard_ratio: share of fused weights to drop, in ``[0, 1)``.

    Raises:
        ValueError: a shape, fusion or ratio this cannot use.
    """
    if attn.dim() != 5 or attn.shape[-1] != attn.shape[-2] or not 0 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(
            f"Rollout needs attention of shape [B, L, H, T, T] with fewer than T prefix tokens, not {tuple(attn.shape)} "
            f"with {num_prefix_tokens}."
        )
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"Unknown head fusion {head_fusion!r}: choose one of {', '.join(HEAD_FUSIONS)}.")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"The discard ratio must be at least 0 and below 1, not {discard_ratio}.")
    attn = attn.to(torch.promote_types(attn.dtype, torch.float32))
    batch, layers, _, tokens, _ = attn.shape
    fused = {"mean": attn.mean(2), "max": attn.amax(2), "min": attn.amin(2)}[head_fusion]  # [B, L, T, T]
    if discard_ratio > 0:
        fused = _discard(fused, discard_ratio, protected=0 if num_prefix_tokens else None)
    identity = torch.eye(tokens, dtype=fused.dtype)
    step = 0.5 * fused + 0.5 * identity
    step = step / step.sum(-1, keepdim=True)
    rollout = identity.expand(batch, tokens, tokens)
    for layer in range(layers):
        rollout = step[:, layer] @ rollout
    p = num_prefix_tokens
    if p:
        return rollout[:, 0, p:]
    return rollout[:, p:, p:].mean(1)


def _discard(fused: torch.Tensor, ratio: float, protected: int | None) -> torch.Tensor:
    """``fused`` ``[B, L, T, T]`` with the ``ratio`` smallest weights of each map set to 0, column ``protected`` kept."""
    batch, layers, tokens, _ = fused.shape
    flat = fused.reshape(batch, layers, tokens * tokens).clone()
    ranked = flat.clone()
    if protected is not None:
        ranked.view(batch, layers, tokens, tokens)[..., protected] = torch.inf  # never among the smallest
    count = int(tokens * tokens * ratio)
    if count:
        smallest = ranked.topk(count, dim=-1, largest=False).indices
        keep = torch.isfinite(ranked.gather(-1, smallest))  # a protected weight is never dropped
        flat.scatter_(-1, smallest, torch.where(keep, 0.0, flat.gather(-1, smallest)))
    return flat.view(batch, layers, tokens, tokens)


def gradient_rollout(
    handle: ViTHandle, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, n_patches]``: the relevance of each patch for the target class, on the CPU.

    ``R = I``; for each block in order, ``R <- R + Abar R``, where ``Abar`` is the mean over
    heads of ``max(0, dy/dA * A)`` (each head's term clamped at 0, then averaged), ``A`` the
    block's post-softmax attention and ``y`` the target logit. The class token's row of
    ``R`` is read over the patches (a model without a class token: the mean of the patch
    rows). One forward and one backward, with temporary hooks under the model's lock; the
    gradient is taken with respect to the attention only, so no parameter's ``.grad`` is set.

    Args:
        handle: a classifier.
        x: ``[B, C, H, W]`` preprocessed images.
        target: a class per image (negative: unknown), one class for all, or ``None``: the
            model's top-1 wherever no class is given.

    Raises:
        UnsupportedMetric: the model is a backbone, which has no class to explain.
        InvalidSetting: a target class the model does not have, or one per image of the wrong count.
        NonFiniteOutputs: the model's outputs are not finite.
    """
    if handle.is_backbone:
        raise UnsupportedMetric(
            f"'{handle.name}' is a backbone without classes: gradient rollout needs a class to explain, "
            "so use attention rollout."
        )
    wanted = _targets(handle, target, len(x))
    model = handle.model
    weights: list[torch.Tensor | None] = [None] * handle.num_layers

    def keep(layer: int):
        def store(found: torch.Tensor) -> None:
            weights[layer] = found

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
            return attention_forward(module, inputs[0], on_weights=store)

        return hook

    with locked_hooks(handle, grad=True) as hooks:
        for layer, block in enumerate(model.blocks):
            hooks.forward(block.attn, keep(layer))
        # the input records the graph even when the shared model's weights are frozen
        logits = model(x.to(handle.device).detach().requires_grad_(True))
        check_finite(logits)
        chosen = torch.where(wanted.to(logits.device) >= 0, wanted.to(logits.device), logits.detach().argmax(-1))
        score = logits.gather(1, chosen[:, None]).sum()
        grads = torch.autograd.grad(score, weights)  # type: ignore[arg-type]
    tokens = handle.num_tokens
    relevance = torch.eye(tokens, dtype=torch.float64).expand(len(x), tokens, tokens)
    for attn, grad in zip(weights, grads):
        weighted = (grad.detach() * attn.detach()).clamp_min(0).mean(1).double().cpu()  # [B, T, T]
        relevance = relevance + weighted @ relevance
    p = handle.num_prefix_tokens
    if p and getattr(model, "cls_token", None) is not None:
        return relevance[:, 0, p:].float()
    return relevance[:, p:, p:].mean(1).float()


def _targets(handle: ViTHandle, target: int | Sequence[int] | torch.Tensor | None, count: int) -> torch.Tensor:
    """``[count]`` class per image, -1 where the top-1 is to be used."""
    classes = len(handle.class_names)
    if target is None:
        return torch.full((count,), -1, dtype=torch.long)
    wanted = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if wanted.numel() == 1:
        wanted = wanted.expand(count)
    if wanted.numel() != count:
        raise InvalidSetting(f"Give one target class per image: {wanted.numel()} for {count} images.")
    if bool((wanted >= classes).any()):
        raise InvalidSetting(f"Target class {int(wanted.max())} does not exist: this model has classes 0 to {classes - 1}.")
    return wanted.clone()
