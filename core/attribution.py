"""Explanations of one image: which patches the model's answer draws on.

``attention_rollout`` follows Abnar and Zuidema (2020, "Quantifying Attention Flow in
Transformers"): each layer's attention, with the residual connection as an identity,
is multiplied through the layers, so the class token's row says how much of each patch
reaches it. It reads only the post-softmax attention (``core.attention``), so it needs
no gradient and no hook of its own.

``gradient_rollout`` follows Chefer, Gur and Wolf (ICCV 2021, "Generic
Attention-model Explainability"): each layer's attention is weighted by the gradient
of the target logit with respect to it, so only what raises that class counts.

``faithfulness_curves`` says whether a map can be trusted: patches are deleted from the
image (or revealed on a blank one) in the map's order, and the model's answer is
watched as they go, against a random order.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from torch import nn

from core._hooks import attention_forward, check_finite, locked_forward, locked_hooks
from core.errors import InvalidSetting, UnsupportedMetric
from core.model import ViTHandle

__all__ = [
    "FILLS",
    "HEAD_FUSIONS",
    "RANDOM_ORDER",
    "attention_rollout",
    "faithfulness_areas",
    "faithfulness_curves",
    "gradient_rollout",
]

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[HeadFusion, ...] = ("mean", "max", "min")
Fill = Literal["mean", "blur"]
# What a removed patch becomes: the image's mean colour, or the image blurred (sigma = one patch side).
FILLS: tuple[Fill, ...] = ("mean", "blur")
RANDOM_ORDER = "random"  # the order every map is compared with
_FORWARDS_PER_RUN = 64  # masked copies of one image per forward


def attention_rollout(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    *,
    class_token: bool = True,
) -> torch.Tensor:
    """``[B, n_patches]``: how much of each patch flows into the class token through every layer.

    Per layer, the heads are fused (their mean, max or min), then ``0.5 * fused + 0.5 * I``
    with each row renormalised to sum to 1 stands for attention plus the residual
    connection; the layers are multiplied in order, ``R = A_{L-1} ... A_0``, and the class
    token's row of ``R`` is read over the patches (timm puts it first). A model without a
    class token (``class_token=False``, e.g. registers only, or no prefix token at all)
    reads the mean of the patch rows instead.

    ``discard_ratio`` first drops that share of the smallest fused weights of each layer
    and image (set to 0, as vit-explain does), never a weight in the class token's column,
    so the flow that reaches it is kept.

    Args:
        attn: ``[B, L, H, T, T]`` post-softmax attention (``AttentionBatch.attn``).
        num_prefix_tokens: class, distillation and register tokens before the patches.
        head_fusion: how a layer's heads become one map.
        discard_ratio: share of fused weights to drop, in ``[0, 1)``.
        class_token: whether the first prefix token is a class token.

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
    reads_class = class_token and num_prefix_tokens > 0
    fused = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[head_fusion](attn, dim=2)  # [B, L, T, T]
    if discard_ratio > 0:
        fused = _discard(fused, discard_ratio, protected=0 if reads_class else None)
    identity = torch.eye(tokens, dtype=fused.dtype, device=fused.device)
    step = 0.5 * fused + 0.5 * identity
    step = step / step.sum(-1, keepdim=True)
    rollout = identity.expand(batch, tokens, tokens)
    for layer in range(layers):
        rollout = step[:, layer] @ rollout
    p = num_prefix_tokens
    if reads_class:
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
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient_rollout needs gradients: call it outside torch.inference_mode().")
    _check_input(handle, x)
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
        logits = model(x.to(handle.device).detach().clone().requires_grad_(True))
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
    given = torch.as_tensor(target)
    if given.dtype.is_floating_point or given.dtype.is_complex or given.dtype == torch.bool or given.dim() > 1:
        raise InvalidSetting("Give the target as a whole class index, or one per image.")
    wanted = given.to(torch.long).reshape(-1)
    if wanted.numel() == 1:
        wanted = wanted.expand(count)
    if wanted.numel() != count:
        raise InvalidSetting(f"Give one target class per image: {wanted.numel()} for {count} images.")
    if bool((wanted >= classes).any()):
        raise InvalidSetting(f"Target class {int(wanted.max())} does not exist: this model has classes 0 to {classes - 1}.")
    return wanted.clone()


def faithfulness_curves(
    handle: ViTHandle,
    x: torch.Tensor,
    relevance: torch.Tensor,
    *,
    target: int | Sequence[int] | torch.Tensor | None = None,
    steps: int = 10,
    fill: Fill = "mean",
    seed: int = 0,
) -> pd.DataFrame:
    """Deletion and insertion curves of a relevance map and of a random order, per image.

    Patches are taken in order of ``relevance`` (most relevant first; ties by position) or
    in a seeded random order. *Deletion* replaces the first ``k`` of them with the fill
    (``"mean"``: the image's mean value per channel; ``"blur"``: a Gaussian blur of the
    image, sigma one patch side), *insertion* starts from the fill everywhere and puts the
    first ``k`` back, for ``k`` at ``steps + 1`` evenly spaced shares of the patches. The
    score is the target class's probability for a classifier (the label, else the
    unmodified image's top-1), the cosine of the output to the unmodified output for a
    backbone. A faithful map makes deletion fall fast and insertion rise fast.

    Args:
        handle: the model.
        x: ``[B, C, H, W]`` preprocessed images.
        relevance: ``[B, n_patches]`` one map per image (any method).
        target: as ``gradient_rollout``; a backbone takes none.
        steps: how many shares after 0, at least 1.
        fill: what a removed patch becomes (``FILLS``).
        seed: the random order's seed.

    Returns:
        One row per image, order (``"relevance"`` or ``RANDOM_ORDER``), curve
        (``"deletion"`` or ``"insertion"``) and step: columns image, order, curve,
        fraction (of the patches removed or revealed), score.

    Raises:
        InvalidSetting: a map of the wrong shape, a bad step count, fill or target.
        UnsupportedMetric: a target given for a backbone.
    """
    rows, cols = handle.grid
    patches = rows * cols
    _check_input(handle, x)
    relevance = torch.as_tensor(relevance).detach().cpu()
    if relevance.shape != (len(x), patches):
        raise InvalidSetting(f"Give one map of {patches} patches per image: [{len(x)}, {patches}], not {list(relevance.shape)}.")
    if steps < 1:
        raise InvalidSetting("The curves need at least 1 step.")
    if fill not in FILLS:
        raise InvalidSetting(f"Unknown fill {fill!r}: choose one of {', '.join(FILLS)}.")
    if handle.is_backbone and target is not None:
        raise UnsupportedMetric(f"'{handle.name}' is a backbone without classes, so the curves take no target class.")
    wanted = None if handle.is_backbone else _targets(handle, target, len(x))
    generator = torch.Generator().manual_seed(seed)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * patches).astype(int)
    ph, pw = handle.patch_size
    records = []
    for image in range(len(x)):
        one = x[image:image + 1].float().cpu()
        blank = _filled(one, fill, (ph, pw))
        orders = {
            "relevance": torch.sort(-relevance[image].float(), stable=True).indices,
            RANDOM_ORDER: torch.randperm(patches, generator=generator),
        }
        inputs = []
        for order in orders.values():
            for curve in ("deletion", "insertion"):
                for count in counts:
                    chosen = torch.zeros(patches, dtype=torch.bool)
                    chosen[order[:count]] = True
                    mask = chosen.reshape(rows, cols).repeat_interleave(ph, 0).repeat_interleave(pw, 1)  # [H, W]
                    # deletion: the chosen patches become the fill; insertion: only the chosen are the image
                    take_image = ~mask if curve == "deletion" else mask
                    inputs.append(torch.where(take_image, one[0], blank[0]))
        outputs = torch.cat(
            [locked_forward(handle, torch.stack(inputs[i:i + _FORWARDS_PER_RUN])).detach().float().cpu()
             for i in range(0, len(inputs), _FORWARDS_PER_RUN)]
        )
        reference = locked_forward(handle, one).detach().float().cpu()
        if handle.is_backbone:
            scores = torch.nn.functional.cosine_similarity(outputs, reference.expand_as(outputs), dim=-1)
        else:
            cls = int(wanted[image]) if int(wanted[image]) >= 0 else int(reference.argmax(-1))
            scores = outputs.softmax(-1)[:, cls]
        position = 0
        for order in orders:
            for curve in ("deletion", "insertion"):
                for count in counts:  # the share really removed: more steps than patches repeat a count
                    records.append((image, order, curve, float(count / patches), float(scores[position])))
                    position += 1
    return pd.DataFrame(records, columns=["image", "order", "curve", "fraction", "score"])


def faithfulness_areas(curves: pd.DataFrame) -> pd.DataFrame:
    """The area under each curve (trapezoids over the fraction): one row per image, order and curve.

    Columns image, order, curve, area. Lower deletion and higher insertion areas than the
    random order's mean a map that finds what the model uses.
    """

    def area(group: pd.DataFrame) -> float:
        group = group.sort_values("fraction")
        return float(np.trapezoid(group["score"].to_numpy(), group["fraction"].to_numpy()))

    keys = ["image", "order", "curve"]
    if curves.empty:
        return pd.DataFrame(columns=[*keys, "area"])
    return curves.groupby(keys, sort=False)[["fraction", "score"]].apply(area).rename("area").reset_index()


def _check_input(handle: ViTHandle, x: torch.Tensor) -> None:
    """Refuse a batch that is not ``[B, C, H, W]`` at the model's input size, in a sentence."""
    height, width = handle.img_size
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (handle.in_chans, height, width):
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidSetting(
            f"Give the images as the model's preprocessed batch [B, {handle.in_chans}, {height}, {width}] "
            f"(handle.preprocess), not {shape}."
        )


def _filled(x: torch.Tensor, fill: Fill, patch: tuple[int, int]) -> torch.Tensor:
    """``x`` ``[1, C, H, W]`` with every pixel replaced: its per-channel mean, or its blur."""
    if fill == "mean":
        return x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    side = max(patch)
    # four sigmas wide, and narrower than twice the image (the reflected border must fit)
    kernel = min(4 * side + 1, 2 * min(x.shape[-2:]) - 1)
    return TF.gaussian_blur(x, [kernel, kernel], [float(side), float(side)])
