"""Explanations of one image: which patches the model's answer draws on.

``attention_rollout`` follows Abnar and Zuidema (2020, "Quantifying Attention Flow in
Transformers"): each layer's attention, with the residual connection as an identity,
is multiplied through the layers, so the class token's row says how much of each patch
reaches it. It reads only the post-softmax attention (``core.measures.attention``), so it needs
no gradient and no hook of its own.

``gradient_rollout`` follows Chefer, Gur and Wolf (ICCV 2021, "Generic
Attention-model Explainability"): each layer's attention is weighted by the gradient
of the target logit with respect to it, so only what raises that class counts.

Both read the rollout at the token rows the model's answer is made from
(``answer_readout``): the class token for most classifiers, the mean of the class and
distillation tokens for a distilled DeiT, the patch mean for an average-pooled model.

``gradient_relevance`` also splits the gradient rollout's map by head: the rollout adds
one term per layer, and each term is a sum over heads, so each head's share of the map is
exact, not an approximation.

``faithfulness_curves`` says whether a map can be trusted: patches are deleted from the
image (or revealed on a blank one) in the map's order, and the model's answer is
watched as they go, against a random order. ``faithfulness_summary`` turns their areas
into one line per method and curve over a set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.functional as TF
from torch import nn

from core.errors import InvalidSetting, UnsupportedMetric
from core.models.handle import ViTHandle
from core.models.hooks import (
    attention_forward,
    check_finite,
    locked_forward,
    locked_hooks,
)
from core.models.memory import out_of_memory_as_sentence

__all__ = [
    "FILLS",
    "HEAD_FUSIONS",
    "RANDOM_ORDER",
    "METHODS",
    "GradientRelevance",
    "RelevanceMaps",
    "answer_readout",
    "compare_faithfulness",
    "attention_rollout",
    "faithfulness_areas",
    "faithfulness_curves",
    "faithfulness_summary",
    "gradient_relevance",
    "gradient_rollout",
    "last_layer_attention",
    "relevance_maps",
]

HeadFusion = Literal["mean", "max", "min"]
HEAD_FUSIONS: tuple[HeadFusion, ...] = ("mean", "max", "min")
Fill = Literal["mean", "blur"]
# What a removed patch becomes: the image's mean colour, or the image blurred (sigma = one patch side).
FILLS: tuple[Fill, ...] = ("mean", "blur")
RANDOM_ORDER = "random"  # the order every map is compared with
_FORWARDS_PER_RUN = 64  # masked copies of one image per forward
# What a map is made by: the two rollouts and, as the plain baseline, the last layer's attention.
METHODS = ("attention rollout", "gradient rollout", "last-layer attention")
_GRADIENT_BATCH = 8  # images per forward and backward: the graph keeps every layer's activations


def answer_readout(handle: ViTHandle) -> torch.Tensor:
    """``[T]`` float64 weights over the final tokens that the model's output is read from (they sum to 1).

    timm's ``global_pool="token"``: the class token (token 0). A distilled DeiT
    averages its class and distillation heads: half on tokens 0 and 1. Hugging Face's
    ``Dinov2ForImageClassification`` reads the class token beside the patch mean: half on
    token 0, half spread over the patches. Average pooling (``"avg"``, also standing in
    for ``"max"`` and ``"avgmax"``, which have no linear readout) and a model without a
    class token: the patch mean.
    """
    model = handle.model
    tokens, prefix = handle.num_tokens, handle.num_prefix_tokens
    weights = torch.zeros(tokens, dtype=torch.float64)
    patch_mean = torch.zeros(tokens, dtype=torch.float64)
    patch_mean[prefix:] = 1.0 / (tokens - prefix)
    readout = getattr(model, "headscope_readout", None)  # set by core.models.transformers' own timm subclasses
    has_class = prefix > 0 and getattr(model, "cls_token", None) is not None
    if readout == "class_and_patch_mean" and has_class:
        weights[0] = 0.5
        return weights + 0.5 * patch_mean
    if readout != "class" and _averages_two_heads(model) and prefix >= 2:
        weights[:2] = 0.5
        return weights
    if getattr(model, "global_pool", "token") == "token" and has_class:
        weights[0] = 1.0
        return weights
    return patch_mean


def _averages_two_heads(model: nn.Module) -> bool:
    """Whether ``model`` is timm's distilled DeiT with its own head, which averages the class and distillation outputs."""
    from timm.models.deit import VisionTransformerDistilled

    return isinstance(model, VisionTransformerDistilled) and type(model).forward_head is VisionTransformerDistilled.forward_head


def attention_rollout(
    attn: torch.Tensor,
    num_prefix_tokens: int = 1,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    *,
    class_token: bool = True,
    readout: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, n_patches]``: how much of each patch flows into the class token through every layer.

    Per layer, the heads are fused (their mean, max or min), then ``0.5 * fused + 0.5 * I``
    with each row renormalised to sum to 1 stands for attention plus the residual
    connection; the layers are multiplied in order, ``R = A_{L-1} ... A_0``, and the class
    token's row of ``R`` is read over the patches (timm puts it first). A model without a
    class token (``class_token=False``, e.g. registers only, or no prefix token at all)
    reads the mean of the patch rows instead. ``readout`` (``[T]``, e.g.
    ``answer_readout(handle)``) reads that mix of rows instead of either.

    ``discard_ratio`` first drops that share of the smallest fused weights of each layer
    and image (set to 0, as vit-explain does), never a weight in the class token's column
    (with ``readout``: the columns of the prefix tokens it reads), so the flow that
    reaches the answer is kept.

    Args:
        attn: ``[B, L, H, T, T]`` post-softmax attention (``AttentionBatch.attn``).
        num_prefix_tokens: class, distillation and register tokens before the patches.
        head_fusion: how a layer's heads become one map.
        discard_ratio: share of fused weights to drop, in ``[0, 1)``.
        class_token: whether the first prefix token is a class token.
        readout: weights over the ``T`` rows to read, overriding ``class_token``.

    Raises:
        ValueError: a shape, fusion, ratio or readout this cannot use.
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
    if readout is not None and tuple(readout.shape) != (attn.shape[-1],):
        raise ValueError(f"The readout needs one weight per token ({attn.shape[-1]}), not shape {tuple(readout.shape)}.")
    attn = attn.to(torch.promote_types(attn.dtype, torch.float32))
    batch, layers, _, tokens, _ = attn.shape
    reads_class = class_token and num_prefix_tokens > 0
    fused = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[head_fusion](attn, dim=2)  # [B, L, T, T]
    if discard_ratio > 0:
        if readout is not None:  # the columns of the tokens the answer is read from
            protected: list[int] | int | None = [i for i in range(num_prefix_tokens) if float(readout[i]) > 0] or None
        else:
            protected = 0 if reads_class else None
        fused = _discard(fused, discard_ratio, protected=protected)
    identity = torch.eye(tokens, dtype=fused.dtype, device=fused.device)
    step = 0.5 * fused + 0.5 * identity
    step = step / step.sum(-1, keepdim=True)
    rollout = identity.expand(batch, tokens, tokens)
    for layer in range(layers):
        rollout = step[:, layer] @ rollout
    p = num_prefix_tokens
    if readout is not None:
        return torch.einsum("t,bts->bs", readout.to(rollout), rollout)[:, p:]
    if reads_class:
        return rollout[:, 0, p:]
    return rollout[:, p:, p:].mean(1)


def _discard(fused: torch.Tensor, ratio: float, protected: int | list[int] | None) -> torch.Tensor:
    """``fused`` ``[B, L, T, T]`` with the ``ratio`` smallest weights of each map set to 0, columns ``protected`` kept."""
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


@dataclass(frozen=True)
class GradientRelevance:
    """Gradient rollout of a batch, with the part of the map each head adds.

    Attributes:
        maps: ``[B, n_patches]`` the relevance of each patch (``gradient_rollout``).
        heads: ``[B, L, H]`` what each head adds to the map's total: the rollout is
            ``R = I + sum_l Abar_l R_{l-1}`` and ``Abar_l`` is the mean of the heads'
            terms, so the heads' parts add up exactly to ``maps.sum(-1)`` minus the
            readout's own weight on the patches (0 for a class-token readout).
        targets: ``[B]`` the class each map explains.
    """

    maps: torch.Tensor
    heads: torch.Tensor
    targets: torch.Tensor

    @property
    def head_shares(self) -> torch.Tensor:
        """``[B, L, H]`` each head's part of what the layers add to the map (0 where no head adds anything).

        With a class-token readout the layers add the whole map; a readout with weight on
        the patches (a patch mean) also keeps that weight itself, which no head carries.
        """
        total = self.heads.sum(dim=(1, 2), keepdim=True)
        return torch.where(total > 0, self.heads / total.clamp_min(1e-30), torch.zeros_like(self.heads))


def gradient_rollout(
    handle: ViTHandle, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, n_patches]``: the relevance of each patch for the target class, on the CPU.

    ``R = I``; for each block in order, ``R <- R + Abar R``, where ``Abar`` is the mean over
    heads of ``max(0, dy/dA * A)`` (each head's term clamped at 0, then averaged), ``A`` the
    block's post-softmax attention and ``y`` the target logit. ``R`` is read at the
    answer's rows (``answer_readout``: the class token's row for most classifiers) over
    the patches. One forward and one backward per few images, with temporary hooks under
    the model's lock; the gradient is taken with respect to the attention only, so no
    parameter's ``.grad`` is set.

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
    return gradient_relevance(handle, x, target).maps


@out_of_memory_as_sentence
def gradient_relevance(
    handle: ViTHandle, x: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None
) -> GradientRelevance:
    """``gradient_rollout``'s maps with each head's part of them and the classes explained (arguments as there)."""
    if handle.is_backbone:
        raise UnsupportedMetric(
            f"'{handle.name}' is a backbone without classes: gradient rollout needs a class to explain, "
            "so use attention rollout."
        )
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient_rollout needs gradients: call it outside torch.inference_mode().")
    _check_input(handle, x)
    wanted = _targets(handle, target, len(x))
    parts = [
        _gradient_part(handle, x[start:start + _GRADIENT_BATCH], wanted[start:start + _GRADIENT_BATCH])
        for start in range(0, len(x), _GRADIENT_BATCH)
    ]
    return GradientRelevance(*(torch.cat(found) for found in zip(*parts)))


def _gradient_part(handle: ViTHandle, x: torch.Tensor, wanted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps ``[b, P]``, head parts ``[b, L, H]`` and classes ``[b]`` of a few images: one forward and one backward."""
    model = handle.model
    weights: list[torch.Tensor | None] = [None] * handle.num_layers

    def keep(layer: int):
        def store(found: torch.Tensor) -> None:
            weights[layer] = found

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], kwargs: dict, _output: torch.Tensor) -> torch.Tensor:
            _check_plain_call(args, kwargs)
            return attention_forward(module, args[0], on_weights=store)

        return hook

    with locked_hooks(handle, grad=True) as hooks:
        for layer, block in enumerate(model.blocks):
            hooks.forward(block.attn, keep(layer), with_kwargs=True)
        # the input records the graph even when the shared model's weights are frozen
        logits = model(x.to(handle.device).detach().clone().requires_grad_(True))
        check_finite(logits)
        chosen = torch.where(wanted.to(logits.device) >= 0, wanted.to(logits.device), logits.detach().argmax(-1))
        score = logits.gather(1, chosen[:, None]).sum()
        grads = torch.autograd.grad(score, weights)  # type: ignore[arg-type]
    tokens, p = handle.num_tokens, handle.num_prefix_tokens
    readout = answer_readout(handle)
    relevance = torch.eye(tokens, dtype=torch.float64).expand(len(x), tokens, tokens)
    heads = []
    for attn, grad in zip(weights, grads):
        terms = (grad.detach() * attn.detach()).clamp_min(0).double().cpu()  # [b, H, T, T]
        # the readout's row of each head's share of this layer's term, carried through the earlier layers
        added = torch.einsum("t,bhts->bhs", readout, terms) / terms.shape[1] @ relevance  # [b, H, T]
        heads.append(added[..., p:].sum(-1))
        relevance = relevance + terms.mean(1) @ relevance
    maps = torch.einsum("t,bts->bs", readout, relevance)[:, p:]
    return maps.float(), torch.stack(heads, dim=1).float(), chosen.cpu()


def _check_plain_call(args: tuple, kwargs: dict) -> None:
    """Refuse an attention call with a mask: the manual forward that exposes the weights would drop it."""
    if kwargs.get("attn_mask") is not None or kwargs.get("is_causal") or len(args) != 1:
        raise UnsupportedMetric("This model masks its attention, which gradient rollout cannot follow.")


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


def last_layer_attention(attn: torch.Tensor, num_prefix_tokens: int, readout: torch.Tensor) -> torch.Tensor:
    """``[B, n_patches]``: the last layer's attention, mean over heads, read at the answer's rows (``readout``, ``[T]``).

    For a class-token model this is the class token's attention over the patches: what
    most tools show as "where the model looked", and the baseline the rollouts improve on.
    """
    last = attn[:, -1].to(torch.promote_types(attn.dtype, torch.float32)).mean(1)  # [B, T, T]
    return torch.einsum("t,bts->bs", readout.to(last), last)[:, num_prefix_tokens:]


@dataclass(frozen=True)
class RelevanceMaps:
    """Every method's map of a batch of images.

    Attributes:
        maps: method (``METHODS``) to ``[B, n_patches]``; a backbone has no gradient rollout.
        heads: ``[B, L, H]`` each head's share of the gradient rollout (``GradientRelevance.head_shares``),
            ``None`` for a backbone.
        targets: ``[B]`` the class the gradient rollout explains, ``None`` for a backbone.
        predicted: ``[B]`` the model's top-1 class, ``None`` for a backbone.
    """

    maps: dict[str, torch.Tensor]
    heads: torch.Tensor | None
    targets: torch.Tensor | None
    predicted: torch.Tensor | None = None


@out_of_memory_as_sentence
def relevance_maps(
    handle: ViTHandle,
    x: torch.Tensor,
    *,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    target: int | Sequence[int] | torch.Tensor | None = None,
) -> RelevanceMaps:
    """Attention rollout, gradient rollout (classifiers only) and the last layer's attention of ``x``.

    The attention is read a few images at a time (``core.measures.attention.extract_attention``),
    so a large batch never holds every image's ``[L, H, T, T]`` at once.
    """
    from core.measures.attention import extract_attention
    from core.settings import images_per_batch

    _check_input(handle, x)
    readout = answer_readout(handle)
    rollout, last, top = [], [], []
    step = images_per_batch(handle)
    for start in range(0, len(x), step):
        batch = extract_attention(handle, x[start:start + step])
        attn = batch.attn
        top.append(batch.logits.argmax(-1))
        rollout.append(attention_rollout(attn, handle.num_prefix_tokens, head_fusion, discard_ratio, readout=readout).float())
        last.append(last_layer_attention(attn, handle.num_prefix_tokens, readout).float())
        del attn, batch
    maps = {METHODS[0]: torch.cat(rollout), METHODS[2]: torch.cat(last)}
    if handle.is_backbone:
        return RelevanceMaps({name: maps[name] for name in METHODS if name in maps}, None, None)
    found = gradient_relevance(handle, x, target)
    maps[METHODS[1]] = found.maps
    return RelevanceMaps({name: maps[name] for name in METHODS}, found.head_shares, found.targets, torch.cat(top))


def compare_faithfulness(
    handle: ViTHandle,
    x: torch.Tensor,
    maps: dict[str, torch.Tensor],
    *,
    target: int | Sequence[int] | torch.Tensor | None = None,
    steps: int = 10,
    fill: Fill = "mean",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """``faithfulness_curves`` of every method's maps, image by image, with a method column first.

    Each image's random order is the same for every method (one seed per image), so the
    methods are compared on equal terms. ``progress(done, total)`` after each image.
    """
    parts = []
    wanted = None if target is None else _targets(handle, target, len(x))
    for image in range(len(x)):
        one_target = None if wanted is None else wanted[image:image + 1]
        random = None
        for method, relevance in maps.items():
            curves = faithfulness_curves(
                handle, x[image:image + 1], relevance[image:image + 1], target=one_target, steps=steps, fill=fill,
                seed=seed + image, with_random=random is None,
            )
            if random is None:  # the random order is scored once per image, then shared by every method
                random = curves[curves["order"] == RANDOM_ORDER]
            else:
                curves = pd.concat([curves, random], ignore_index=True)
            parts.append(curves.assign(image=image, method=method))
        if progress is not None:
            progress(image + 1, len(x))
    if not parts:
        return pd.DataFrame(columns=["method", "image", "order", "curve", "fraction", "score"])
    curves = pd.concat(parts, ignore_index=True)
    return curves[["method", "image", "order", "curve", "fraction", "score"]]


@out_of_memory_as_sentence
def faithfulness_curves(
    handle: ViTHandle,
    x: torch.Tensor,
    relevance: torch.Tensor,
    *,
    target: int | Sequence[int] | torch.Tensor | None = None,
    steps: int = 10,
    fill: Fill = "mean",
    seed: int = 0,
    with_random: bool = True,
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
        with_random: also score the random order (its rows are drawn either way, so
            leaving it out changes no other number).

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
        if not with_random:
            del orders[RANDOM_ORDER]
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

    Columns image, order, curve, area (and method first, when ``curves`` has one, as
    ``compare_faithfulness`` gives). Lower deletion and higher insertion areas than the
    random order's mean a map that finds what the model uses.
    """

    def area(group: pd.DataFrame) -> float:
        group = group.sort_values("fraction")
        return float(np.trapezoid(group["score"].to_numpy(), group["fraction"].to_numpy()))

    keys = [key for key in ("method", "image", "order", "curve") if key in curves.columns]
    if curves.empty:
        return pd.DataFrame(columns=[*keys, "area"])
    return curves.groupby(keys, sort=False)[["fraction", "score"]].apply(area).rename("area").reset_index()


def faithfulness_summary(areas: pd.DataFrame) -> pd.DataFrame:
    """One row per method (if ``areas`` has a method column) and curve: the map against the random order over the images.

    Columns: method (when given), curve, images, relevance and random (their mean
    areas), gain (how much better the map does on average: random minus map for
    deletion, map minus random for insertion, so above 0 is better than random either
    way) and wins (the share of images on which the map did better than the random order).
    """
    keys = [key for key in ("method", "curve") if key in areas.columns]
    columns = [*keys, "images", "relevance", "random", "gain", "wins"]
    if areas.empty:
        return pd.DataFrame(columns=columns)
    paired = areas.pivot_table(index=[*keys, "image"], columns="order", values="area").reset_index()
    paired = paired.dropna(subset=["relevance", RANDOM_ORDER])
    sign = np.where(paired["curve"] == "deletion", -1.0, 1.0)
    paired = paired.assign(gain=sign * (paired["relevance"] - paired[RANDOM_ORDER]))
    summary = paired.groupby(keys, sort=False).agg(
        images=("image", "size"),
        relevance=("relevance", "mean"),
        random=(RANDOM_ORDER, "mean"),
        gain=("gain", "mean"),
        wins=("gain", lambda gain: float((gain > 0).mean())),
    )
    return summary.reset_index()[columns]


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
