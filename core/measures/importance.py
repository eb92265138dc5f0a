"""Head importance by pruning: which attention heads the predictions depend on (view B).

Pruning a head sets all its attention weights to zero, so the head adds nothing to
the residual stream. That equals zeroing the head's slice of the concatenated head
outputs where timm's ``Attention`` hands them to ``attn.norm`` (an ``Identity`` in
most ViTs), which happens after ``scaled_dot_product_attention``: whole-head sweeps
therefore run on the fused attention path and never build an attention matrix.

A sweep runs the model's parts by hand (as ``VisionTransformer.forward_features``
and ``forward_head`` do): the unpruned pass keeps the input of every block, and the
ablations of layer ``l`` restart from block ``l``'s cached input, all heads of the
layer at once as chunks of one batch. Everything streams over the image set in
batches, so memory is bounded by the batch, plus ``[N, L, H]`` summaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.errors import (
    InvalidSetting,
    LabelsMismatch,
    NotEnoughImages,
    UnsupportedMetric,
)
from core.measures.inference import Progress
from core.models.handle import ViTHandle
from core.models.hooks import (
    HookSet,
    attention_forward,
    locked_forward,
    locked_hooks,
    temporary_hooks,
)
from core.models.memory import out_of_memory_as_sentence
from core.settings import HELD_BUDGET, images_per_batch

__all__ = [
    "BACKBONE_METRICS",
    "BACKBONE_REASON",
    "CLASS_METRICS",
    "HIGHER_MEANS_LESS_IMPORTANT",
    "METRICS",
    "METRIC_HELP",
    "MODES",
    "MODE_BLOCKS",
    "MODE_REMOVES",
    "RANDOM_ORDER",
    "RANKED_BY_MAGNITUDE",
    "HeadImportance",
    "HeadValues",
    "ImageBatch",
    "check_labels",
    "check_metrics",
    "class_targets",
    "curve_masks",
    "curve_sums",
    "curve_table",
    "head_importance",
    "head_importance_tables",
    "metrics_for",
    "partial_pruning",
    "pruning_curve",
    "rank_heads",
    "scale_heads",
    "sequences_per_run",
    "sweep_batch",
    "target_measure",
]

METRICS: tuple[str, ...] = ("probability", "accuracy", "layer_impact", "output_impact", "taylor")
# The metrics that need a class target (a label or the top-1 class): a backbone has none.
CLASS_METRICS: frozenset[str] = frozenset({"probability", "accuracy", "taylor"})
BACKBONE_METRICS: tuple[str, ...] = tuple(m for m in METRICS if m not in CLASS_METRICS)
BACKBONE_REASON = (
    "probability, accuracy and taylor need a class target, and a backbone has no classifier: "
    "its heads are ranked by how much pruning them changes its features"
)
# Whether a HIGHER value means the head matters LESS: with a head pruned, a high
# remaining probability or accuracy means the model did not need it.
HIGHER_MEANS_LESS_IMPORTANT: dict[str, bool] = {
    "probability": True,
    "accuracy": True,
    "layer_impact": False,
    "output_impact": False,
    "taylor": False,
}
# Metrics whose sign carries no importance: a head whose gate gradient is strongly
# negative matters as much as one whose gradient is strongly positive.
RANKED_BY_MAGNITUDE: frozenset[str] = frozenset({"taylor"})
METRIC_HELP: dict[str, str] = {
    "probability": "softmax probability of the target class with the head pruned (lower = more important)",
    "accuracy": "share of images whose top-1 still equals the target with the head pruned (lower = more important)",
    "layer_impact": "1 - cosine similarity of the block's output tokens with vs. without the head (higher = more important)",
    "output_impact": (
        "1 - cosine similarity of the model's output (logits, or a backbone's pooled features) with vs. "
        "without the head (higher = more important)"
    ),
    "taylor": (
        "gradient of the cross-entropy w.r.t. a gate on the head's output; the set value is |mean| "
        "(higher = more important)"
    ),
}

MODES: tuple[str, ...] = ("none", "head", "cls", "patch", "cls_patch", "cls_cls")
MODE_REMOVES: dict[str, str] = {
    "none": "nothing (unpruned)",
    "head": "the whole head",
    "cls": "every row and column of a prefix token",
    "patch": "patch → patch attention",
    "cls_patch": "prefix → patch and patch → prefix attention",
    "cls_cls": "prefix → prefix attention",
}
# Which (query, key) blocks of the attention matrix each mode zeroes: (prefix, prefix),
# (prefix, patch), (patch, prefix), (patch, patch).
MODE_BLOCKS: dict[str, tuple[bool, bool, bool, bool]] = {
    "none": (False, False, False, False),
    "head": (True, True, True, True),
    "cls": (True, True, True, False),
    "patch": (False, False, False, True),
    "cls_patch": (False, True, True, False),
    "cls_cls": (True, False, False, False),
}
RANDOM_ORDER = "random"

# Floats (64 MB in float32) that the widest activation of one batched run may hold:
# ablations of many heads run in chunks of about this size, which on a 2-core CPU ran
# faster than both much smaller chunks (thread overhead) and much larger ones (cache).
_RUN_BUDGET = 2**24

ImageBatch = torch.Tensor | Sequence[Image.Image]


def metrics_for(handle: ViTHandle) -> tuple[str, ...]:
    """The importance metrics ``handle`` supports, in ``METRICS`` order: all of them, or a backbone's two."""
    return BACKBONE_METRICS if handle.is_backbone else METRICS


@dataclass(frozen=True)
class HeadImportance:
    """Head importance of an image set, per image (local) and over the set (global).

    Attributes:
        overall: one row per (layer, head, metric), columns layer, head, metric, value:
            the set-level values: the mean of the per-image values over the set (for
            taylor its absolute value).
        per_image: the local values, columns image (index into the input), layer, head,
            metric, value.
        unpruned: one row per image, columns image, target (class index), probability
            (of the target, unpruned), correct (unpruned top-1 equals the target),
            labelled (the target is the image's label rather than the model's top-1).
            For a backbone, target is the label (-1 when unknown), probability NaN and
            correct False: it has no classes to predict.
    """

    overall: pd.DataFrame
    per_image: pd.DataFrame
    unpruned: pd.DataFrame


@dataclass(frozen=True)
class HeadValues:
    """Head importance of an image set as arrays: what a pass computes, before any table.

    ``tables`` turns it into the ``HeadImportance`` a chart or a file reads; until then the
    values stay ``[N, L, H]`` per metric, so a subset or a merge of passes is an index, not a query.

    Attributes:
        per_image: metric -> ``[N, L, H]`` float64 local values, in the order the metrics were computed.
        target: ``[N]`` the class each image is judged against (a backbone: its label, -1 unknown).
        probability: ``[N]`` the unpruned model's probability of the target (NaN for a backbone).
        correct: ``[N]`` the unpruned top-1 equals the target.
        labelled: ``[N]`` the target is the image's label rather than the model's top-1.
    """

    per_image: Mapping[str, np.ndarray]
    target: np.ndarray
    probability: np.ndarray
    correct: np.ndarray
    labelled: np.ndarray

    def overall(self) -> dict[str, np.ndarray]:
        """Metric -> ``[L, H]`` set values: the mean over the images (for taylor its absolute value)."""
        return {
            metric: np.abs(values.mean(axis=0)) if metric == "taylor" else values.mean(axis=0)
            for metric, values in self.per_image.items()
        }

    def subset(self, rows: np.ndarray) -> HeadValues:
        """The values of these images only, in the order of ``rows``."""
        return HeadValues(
            per_image={metric: values[rows] for metric, values in self.per_image.items()},
            target=self.target[rows], probability=self.probability[rows], correct=self.correct[rows],
            labelled=self.labelled[rows],
        )

    def tables(self, images: np.ndarray | None = None) -> HeadImportance:
        """The long tables; ``images``: the set index of each row (default 0 to N - 1)."""
        per_image = _tidy(self.per_image)
        if images is not None:
            per_image["image"] = images[per_image["image"].to_numpy()]  # _tidy numbers the rows from 0
        unpruned = pd.DataFrame(
            {
                "image": np.arange(len(self.target)) if images is None else images,
                "target": self.target,
                "probability": self.probability,
                "correct": self.correct,
                "labelled": self.labelled,
            }
        )
        return HeadImportance(overall=_tidy(self.overall()), per_image=per_image, unpruned=unpruned)


def head_importance(
    handle: ViTHandle,
    x: ImageBatch,
    labels: torch.Tensor | None = None,
    metrics: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Set-level importance of every head: columns layer, head, metric, value.

    See ``head_importance_tables`` for the metrics and arguments; this is its
    ``overall`` table.
    """
    return head_importance_tables(handle, x, labels, metrics, batch_size=batch_size, progress=progress).overall


@out_of_memory_as_sentence
def head_importance_tables(
    handle: ViTHandle,
    x: ImageBatch,
    labels: torch.Tensor | None = None,
    metrics: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> HeadImportance:
    """Importance of every head under each metric, per image and over the set.

    The target of an image is its label when known, else the unpruned model's top-1.

    - ``probability``: the target's softmax probability with the head pruned; global =
      mean. It keeps the model's confidence, so it ranks heads even where no
      prediction flips.
    - ``accuracy``: 1 if the pruned top-1 is the target, else 0; global = mean. It is
      what a user of the model sees; without labels it is agreement with the
      unpruned model.
    - ``layer_impact``: 1 - cosine similarity of the pruned block's output tokens
      (flattened) with the unpruned ones; global = mean. It measures the head's own
      contribution where it is made, before later layers can repair or amplify it.
    - ``output_impact``: 1 - cosine similarity of the model's output vector (what
      ``model(x)`` returns: logits, or a backbone's pooled features) with the head
      pruned and without; global = mean. The head's effect on what the model gives
      its user, for any model.
    - ``taylor``: d(cross-entropy to the target)/d(gate), a gate = 1 multiplying the
      head's output; global = |mean over images| (Michel et al. 2019). A first-order
      estimate of what pruning costs, from one forward and backward pass.

    Args:
        handle: the model.
        x: ``[N, C, H, W]`` preprocessed images, or PIL images (preprocessed batch by
            batch, so the set never exists as one tensor).
        labels: ``[N]`` class indices, negative where an image's label is unknown; or
            ``None`` when no image has one.
        metrics: a subset of ``metrics_for(handle)``; default all of them (a backbone
            has only ``layer_impact`` and ``output_impact``).
        batch_size: cap on images per batch (see ``core.settings.images_per_batch``);
            memory is bounded by the batch.
        progress: called as ``progress(images done, images in all)``.

    Raises:
        NotEnoughImages: no images.
        InvalidSetting: a batch size below 1.
        LabelsMismatch: labels that do not fit the images or the model's classes.
        UnsupportedMetric: an unknown metric, or a class-based metric asked of a backbone.
    """
    metrics = check_metrics(metrics, handle)
    n = len(x)
    given = check_labels(handle, labels, n)
    shape = (n, handle.num_layers, handle.num_heads)
    local = {metric: np.zeros(shape, dtype=np.float64) for metric in metrics}
    targets = np.zeros(n, dtype=np.int64)
    unpruned_prob = np.zeros(n, dtype=np.float64)
    unpruned_correct = np.zeros(n, dtype=bool)
    swept = [m for m in metrics if m != "taylor"]
    for start, xb in _batches(handle, x, batch_size):
        part = slice(start, start + len(xb))
        with locked_hooks(handle):
            tokens, clean_logits = _clean_pass(handle.model, xb)
            target = class_targets(given[part].to(handle.device), clean_logits, handle.is_backbone)
            for metric, values in sweep_batch(handle, tokens, clean_logits, target, swept).items():
                local[metric][part] = values
        if "taylor" in metrics:
            local["taylor"][part] = _taylor(handle, xb, target)
        targets[part] = target.cpu().numpy()
        if handle.is_backbone:
            unpruned_prob[part] = np.nan
        else:
            clean_probs = clean_logits.float().softmax(-1)
            unpruned_prob[part] = clean_probs.gather(-1, target[:, None]).squeeze(-1).cpu().numpy()
            unpruned_correct[part] = (clean_logits.argmax(-1) == target).cpu().numpy()
        if progress is not None:
            progress(part.stop, n)
    return HeadValues(local, targets, unpruned_prob, unpruned_correct, given.numpy() >= 0).tables()


def sweep_batch(
    handle: ViTHandle, tokens: list[torch.Tensor], clean_logits: torch.Tensor, target: torch.Tensor, metrics: Sequence[str]
) -> dict[str, np.ndarray]:
    """``{metric: [B, L, H]}``: each swept metric with every head pruned on its own, for one batch.

    Must run inside ``locked_hooks``. ``tokens``: the unpruned pass's block inputs (each
    ablation restarts from its layer's); ``metrics``: swept metrics (not ``taylor``), none: nothing runs.
    """
    if not metrics:
        return {}
    impact, logits, output = _run_configs(
        handle, tokens, clean_logits, _single_head_masks(handle),
        want_logits=bool({"probability", "accuracy", "output_impact"} & set(metrics)),
    )
    per_head = _config_metrics(impact, logits, output, target, classes=not handle.is_backbone)
    shape = (len(clean_logits), handle.num_layers, handle.num_heads)
    return {metric: per_head[metric].reshape(shape) for metric in metrics}


def target_measure(labelled: Sequence[bool]) -> str:
    """What 'accuracy' means for a set whose images are ``labelled`` or not: against labels, the unpruned model, or both."""
    known = sum(bool(flag) for flag in labelled)
    if known == len(labelled):
        return "accuracy"
    if known == 0:
        return "agreement with the unpruned model"
    return "accuracy (agreement where there is no label)"


def rank_heads(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of ``metric`` in ``table``, most important head first, with a ``rank`` column (1 = most important).

    ``table`` has columns layer, head, metric, value (the overall table, or one image's
    slice of the per-image table). Taylor values rank by magnitude. Ties keep the
    model's order (layer, then head).
    """
    check_metrics((metric,), None)
    rows = table[table["metric"] == metric].sort_values(["layer", "head"])
    score = rows["value"].abs() if metric in RANKED_BY_MAGNITUDE else rows["value"]
    if HIGHER_MEANS_LESS_IMPORTANT[metric]:
        score = -score
    # a stable sort keeps the (layer, head) order among ties
    ordered = rows.iloc[np.argsort(-score.to_numpy(), kind="stable")]
    return ordered.assign(rank=np.arange(1, len(ordered) + 1)).reset_index(drop=True)


def pruning_curve(
    handle: ViTHandle,
    x: ImageBatch,
    importance: pd.DataFrame,
    labels: torch.Tensor | None = None,
    *,
    steps: int = 10,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> pd.DataFrame:
    """Accuracy and output similarity as more and more heads are pruned, in each metric's order and in a random order.

    Heads are removed least important first (as Michel et al. 2019 do), so a metric
    that ranks well keeps the curve up the longest; the random order is the baseline a
    useful metric must beat. Accuracy is against the target (the label when known, else
    the unpruned top-1: agreement with the unpruned model); a backbone has none, and its
    curve is the similarity of its output to the unpruned one. Each point prunes a set
    of heads at once through an ``[L, H]`` mask; all points of a batch run together,
    each from the first layer its mask changes.

    Args:
        handle: the model.
        x: the images, as for ``head_importance_tables``.
        importance: the overall table (columns layer, head, metric, value); one curve
            per metric in it.
        labels: as for ``head_importance_tables``.
        steps: number of intervals between 0 and all heads pruned (points = steps + 1).
        seed: seed of the random order.
        batch_size: cap on images per batch.
        progress: called as ``progress(images done, images in all)``.

    Returns:
        Columns order (a metric or ``"random"``), pruned (heads removed), fraction (of
        all heads), accuracy (NaN for a backbone), similarity (mean over images of the
        cosine similarity of the model's output with the unpruned output).

    Raises:
        InvalidSetting: ``steps`` below 1 (and the errors of ``head_importance_tables``).
    """
    n = len(x)
    given = check_labels(handle, labels, n)
    points, keep_all = curve_masks(handle, importance, steps, seed)
    correct, similarity = curve_sums(handle, x, given, keep_all, batch_size, progress)
    return curve_table(handle, points, correct, similarity, n)


def curve_masks(
    handle: ViTHandle, importance: pd.DataFrame, steps: int, seed: int
) -> tuple[list[tuple[str, int, int]], torch.Tensor]:
    """The curve's points ``(order, heads pruned, mask index)`` and its distinct masks ``[M, L, H]``."""
    if steps < 1:
        raise InvalidSetting("The pruning curve needs at least one step.")
    num_heads = handle.num_layers * handle.num_heads
    orders = {
        metric: [
            int(layer) * handle.num_heads + int(head)
            for layer, head in rank_heads(importance, metric)[["layer", "head"]].values[::-1]
        ]
        for metric in METRICS
        if metric in set(importance["metric"])
    }
    orders[RANDOM_ORDER] = np.random.default_rng(seed).permutation(num_heads).tolist()
    counts = np.unique(np.linspace(0, num_heads, steps + 1).round().astype(int))
    points: list[tuple[str, int, int]] = []  # (order, heads pruned, index of its mask)
    masks: dict[bytes, int] = {}
    keeps: list[torch.Tensor] = []
    for name, order in orders.items():
        for count in counts:
            keep = torch.ones(num_heads)
            keep[order[:count]] = 0
            # every order shares the masks of 0 and of all heads: evaluate each mask once
            index = masks.setdefault(keep.numpy().tobytes(), len(keeps))
            if index == len(keeps):
                keeps.append(keep)
            points.append((name, int(count), index))
    return points, torch.stack(keeps).reshape(-1, handle.num_layers, handle.num_heads)


@out_of_memory_as_sentence
def curve_sums(
    handle: ViTHandle,
    x: ImageBatch,
    given: torch.Tensor,
    keep_all: torch.Tensor,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per mask, over the images: how many keep their target, and the sum of output similarities."""
    n = len(x)
    correct = np.zeros(len(keep_all), dtype=np.int64)
    similarity = np.zeros(len(keep_all), dtype=np.float64)
    for start, xb in _batches(handle, x, batch_size):
        with locked_hooks(handle):
            tokens, clean_logits = _clean_pass(handle.model, xb)
            target = class_targets(given[start:start + len(xb)].to(handle.device), clean_logits, handle.is_backbone)
            _, logits, output = _run_configs(handle, tokens, clean_logits, keep_all, want_logits=True)
        correct += (logits.argmax(-1) == target).sum(-1).cpu().numpy()
        similarity += (1 - output).sum(-1).cpu().numpy()
        if progress is not None:
            progress(start + len(xb), n)
    return correct, similarity


def curve_table(
    handle: ViTHandle, points: list[tuple[str, int, int]], correct: np.ndarray, similarity: np.ndarray, n: int
) -> pd.DataFrame:
    num_heads = handle.num_layers * handle.num_heads
    return pd.DataFrame(
        {
            "order": [name for name, _, _ in points],
            "pruned": [count for _, count, _ in points],
            "fraction": [count / num_heads for _, count, _ in points],
            "accuracy": [np.nan if handle.is_backbone else correct[index] / n for _, _, index in points],
            "similarity": [similarity[index] / n for _, _, index in points],
        }
    )


@out_of_memory_as_sentence
def partial_pruning(
    handle: ViTHandle,
    x: torch.Tensor,
    layer: int,
    head: int,
    target: int | None = None,
    *,
    unpruned: torch.Tensor | None = None,
) -> pd.DataFrame:
    """What the model outputs when parts of one head's attention are removed, in six modes.

    The head's post-softmax attention ``[T, T]`` is multiplied by a 0/1 mask without
    renormalising, so a removed block takes its share of attention with it instead of
    handing it to the remaining tokens; mode ``head`` therefore equals pruning the whole
    head, and ``none`` the unpruned model. Prefix tokens are the CLS, distillation and
    register tokens. Comparing the modes shows which kind of information flow the
    prediction needs: global context through the prefix tokens, or patch-to-patch mixing.

    Args:
        handle: the model.
        x: ``[1, C, H, W]`` one preprocessed image.
        layer: the head's layer.
        head: the head's index within the layer.
        target: class index; default the unpruned model's top-1. A backbone has none.
        unpruned: ``[outputs]`` the unmodified model's output for this image, when the
            caller holds it (a set's analysis does): mode ``none`` is then not run again.

    Returns:
        Six rows in the order of ``MODES``: columns mode, removes (what the mask removes),
        removed_attention (share of the head's attention mass the mask removes, mean over
        query tokens), output_impact (1 - cosine similarity of the model's output with
        the unpruned one: 0 for ``none``), and for a classifier probability (of the
        target), predicted (top-1 class name) and top5 (list of (class name, probability)).

    Raises:
        InvalidSetting: a layer, head or target out of range.
        ValueError: ``x`` is not exactly one image (a programming error).
        UnsupportedMetric: a target class given for a backbone.
    """
    _check_head(handle, layer, head)
    if x.ndim != 4 or len(x) != 1:
        raise ValueError(f"partial_pruning takes one image as a batch of shape [1, C, H, W], not {list(x.shape)}.")
    if target is not None and handle.is_backbone:
        raise UnsupportedMetric(f"'{handle.name}' is a backbone without classes, so partial pruning has no target class.")
    if target is not None and not 0 <= target < len(handle.class_names):
        raise InvalidSetting(f"Target class {target} does not exist: this model has classes 0 to {len(handle.class_names) - 1}.")
    masks = _mode_masks(handle.num_tokens, handle.num_prefix_tokens)
    if unpruned is not None:
        masks = masks[1:]  # mode "none" (no mask) is the output the caller gave
    keep = torch.ones(len(masks), handle.num_heads, handle.num_tokens, handle.num_tokens, device=handle.device)
    keep[:, head] = masks.to(handle.device)
    removed: dict[str, torch.Tensor] = {}
    attn = handle.model.blocks[layer].attn

    def masked(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
        return _masked_attention(module, inputs[0], keep, head, removed)

    logits = locked_forward(handle, x.expand(len(masks), -1, -1, -1), lambda hooks: hooks.forward(attn, masked))
    share = removed["share"]
    if unpruned is not None:
        logits = torch.cat([torch.as_tensor(unpruned).to(logits)[None], logits])
        share = torch.cat([share.new_zeros(1), share])
    outputs = logits.double()
    # mode "none" is the unpruned model: exactly 0, and every other mode is measured against it
    # rounding can put 1 - cos a hair below 0 for a mode that changes nothing
    impact = (1 - F.cosine_similarity(outputs, outputs[:1], dim=-1)).clamp_min(0).cpu().numpy()
    impact[0] = 0.0
    table = pd.DataFrame(
        {
            "mode": list(MODES),
            "removes": [MODE_REMOVES[mode] for mode in MODES],
            "removed_attention": share.cpu().numpy().astype(float),
            "output_impact": impact.astype(float),
        }
    )
    if handle.is_backbone:
        return table
    probs = logits.float().softmax(-1).cpu()
    chosen = int(probs[0].argmax()) if target is None else target
    names = handle.class_names
    top = probs.topk(min(5, probs.shape[-1]), dim=-1)
    return table.assign(
        probability=probs[:, chosen].numpy().astype(float),
        predicted=[names[int(i)] for i in probs.argmax(-1)],
        top5=[
            [(names[int(i)], float(p)) for p, i in zip(values, indices)]
            for values, indices in zip(top.values, top.indices)
        ],
    )


# --- running the model's parts ---------------------------------------------------------


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens ``[B, T, D]`` entering block 0, as ``VisionTransformer.forward_features`` makes them."""
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def _classify(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, classes]`` from the last block's output tokens ``[B, T, D]``."""
    return model.forward_head(model.norm(tokens))


def _clean_pass(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The unpruned pass: ``tokens[l]`` ``[B, T, D]`` enters block ``l`` (``tokens[L]`` leaves the last), and the logits."""
    tokens = [_embed(model, x)]
    for block in model.blocks:
        tokens.append(block(tokens[-1]))
    return tokens, _classify(model, tokens[-1])


def scale_heads(hooks: HookSet, model: nn.Module, scale: torch.Tensor) -> None:
    """Multiply head ``h``'s output in layer ``l`` by ``scale[c, l, h]`` in chunk ``c`` of the batch.

    ``scale``: ``[C, L, H]``; the batch is ``C`` equal chunks. The heads' outputs are
    scaled where they enter ``attn.norm``: a factor 0 is exactly the output of all-zero
    attention weights, even when ``norm`` is a real normalisation (``scale_norm``).
    """
    for layer, block in enumerate(model.blocks):
        factors = scale[:, layer]
        if not factors.requires_grad and bool((factors == 1).all()):
            continue  # multiplying by one changes nothing: skip the memory traffic
        attn = block.attn

        def pre(_m: nn.Module, inputs: tuple[torch.Tensor, ...], factors=factors, attn=attn) -> tuple[torch.Tensor]:
            (heads_out,) = inputs  # [C * B, T, H * head_dim]
            rows, tokens, width = heads_out.shape
            split = heads_out.reshape(len(factors), rows // len(factors), tokens, attn.num_heads, attn.head_dim)
            return ((split * factors[:, None, None, :, None].to(split.dtype)).reshape(rows, tokens, width),)

        hooks.forward_pre(attn.norm, pre)


def _run_configs(
    handle: ViTHandle,
    tokens: list[torch.Tensor],
    clean_logits: torch.Tensor,
    keep: torch.Tensor,
    *,
    want_logits: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one batch under ``C`` head masks, each from the first layer its mask changes.

    Must run inside ``locked_hooks``. ``keep``: ``[C, L, H]``, 0 = pruned. Returns
    ``impact`` ``[C, B]`` (1 - cosine similarity of the first changed block's output
    tokens with the unpruned ones; 0 for an all-ones mask), ``logits`` ``[C, B, outputs]``
    (the model's output: a backbone's pooled features) and ``output_impact`` ``[C, B]``
    (1 - cosine similarity of those outputs with the unpruned ones); the last two are
    undefined when not ``want_logits``.
    """
    model = handle.model
    batch = len(clean_logits)
    num_layers = handle.num_layers
    changed = (keep != 1).any(-1)  # [C, L]
    first = torch.where(changed.any(-1), changed.float().argmax(-1), num_layers)
    impact = torch.zeros(len(keep), batch, dtype=torch.float64, device=clean_logits.device)
    output = torch.zeros(len(keep), batch, dtype=torch.float64, device=clean_logits.device)
    logits = clean_logits.expand(len(keep), -1, -1).clone()
    clean_output = clean_logits.double()[None]
    per_run = max(1, sequences_per_run(handle) // batch)
    for start in first.unique().tolist():
        if start == num_layers:
            continue
        for chunk in (first == start).nonzero().flatten().split(per_run):
            count = len(chunk)
            x = tokens[start].repeat(count, 1, 1)  # chunk c = the whole batch under mask c
            with temporary_hooks() as hooks:
                scale_heads(hooks, model, keep[chunk].to(x.device))
                x = model.blocks[start](x)
                out = x.reshape(count, batch, -1)
                # in float64: for a head that barely matters, 1 - cos is below float32's resolution
                clean = tokens[start + 1].reshape(1, batch, -1).double()
                impact[chunk] = (1 - F.cosine_similarity(out.double(), clean, dim=-1)).to(impact.dtype)
                if want_logits:
                    for block in model.blocks[start + 1:]:
                        x = block(x)
                    pruned = _classify(model, x).reshape(count, batch, -1)
                    logits[chunk] = pruned.to(logits.dtype)
                    change = 1 - F.cosine_similarity(pruned.double(), clean_output, dim=-1)
                    output[chunk] = change.clamp_min(0).to(output.dtype)  # rounding can dip a hair below 0
    return impact, logits, output


def _taylor(handle: ViTHandle, x: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """``[B, L, H]`` d(cross-entropy of image b to its target)/d(gate on head (l, h)) at gate = 1.

    One gate per image and head, and the summed loss: images do not interact in a ViT
    in eval mode, so one backward pass gives every image's own gradient.
    """
    out = np.zeros((len(x), handle.num_layers, handle.num_heads))
    per_run = sequences_per_run(handle, keep_graph=True)
    for start in range(0, len(x), per_run):
        xb, tb = x[start:start + per_run], target[start:start + per_run].clone()
        with locked_hooks(handle, grad=True) as hooks:
            gates = torch.ones(len(xb), handle.num_layers, handle.num_heads, device=handle.device, requires_grad=True)
            scale_heads(hooks, handle.model, gates)
            loss = F.cross_entropy(handle.model(xb).float(), tb, reduction="sum")
            (grad,) = torch.autograd.grad(loss, gates)
        out[start:start + len(xb)] = grad.cpu().numpy()
    return out


def sequences_per_run(handle: ViTHandle, *, keep_graph: bool = False) -> int:
    """How many token sequences one batched run may hold within its budget.

    The widest activation per token is the MLP's hidden layer (or, on the manual
    attention path, a row of attention over all tokens); a backward pass keeps roughly
    four such activations of every block, within ``HELD_BUDGET``.
    """
    model = handle.model
    dim = int(model.embed_dim)
    hidden = int(getattr(getattr(model.blocks[0].mlp, "fc1", None), "out_features", 4 * dim))
    per_sequence = handle.num_tokens * max(dim, hidden, handle.num_heads * handle.num_tokens)
    if keep_graph:
        return max(1, HELD_BUDGET // (per_sequence * 4 * handle.num_layers))
    return max(1, _RUN_BUDGET // per_sequence)


def _masked_attention(
    attn: nn.Module, x: torch.Tensor, keep: torch.Tensor, head: int, removed: dict[str, torch.Tensor]
) -> torch.Tensor:
    """timm ``Attention.forward`` with the post-softmax weights multiplied by ``keep`` (``core.models.hooks.attention_forward``).

    Records in ``removed['share']`` ``[B]`` the share of ``head``'s attention mass the mask
    removes (mean over query tokens).
    """

    def record(weights: torch.Tensor) -> None:
        removed["share"] = (weights[:, head] * (1 - keep[:, head])).sum(-1).mean(-1)

    return attention_forward(attn, x, keep, record)


def _mode_masks(tokens: int, prefix: int) -> torch.Tensor:
    """``[len(MODES), T, T]`` 0/1 masks: 0 on the (query, key) blocks each mode removes."""
    is_prefix = torch.arange(tokens) < prefix
    masks = torch.ones(len(MODES), tokens, tokens)
    for i, mode in enumerate(MODES):
        blocks = zip(MODE_BLOCKS[mode], ((True, True), (True, False), (False, True), (False, False)))
        for removes, (query_prefix, key_prefix) in blocks:
            if removes:
                rows = is_prefix if query_prefix else ~is_prefix
                cols = is_prefix if key_prefix else ~is_prefix
                masks[i][rows[:, None] & cols[None, :]] = 0
    return masks


# --- inputs and outputs ----------------------------------------------------------------


def _batches(handle: ViTHandle, x: ImageBatch, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, [b, C, H, W] on the model's device)``; PIL images are preprocessed batch by batch."""
    if len(x) == 0:
        raise NotEnoughImages("Head importance needs at least one image.")
    step = images_per_batch(handle, batch_size)
    for start in range(0, len(x), step):
        part = x[start:start + step]
        batch = part if isinstance(part, torch.Tensor) else handle.preprocess(part)
        # outside inference_mode: the Taylor pass needs tensors autograd may save
        yield start, batch.to(handle.device)


def _single_head_masks(handle: ViTHandle) -> torch.Tensor:
    """``[L * H, L, H]`` masks; mask ``l * H + h`` prunes head ``h`` of layer ``l`` only."""
    count = handle.num_layers * handle.num_heads
    return (1 - torch.eye(count)).reshape(count, handle.num_layers, handle.num_heads)


def _config_metrics(
    impact: torch.Tensor, logits: torch.Tensor, output: torch.Tensor, target: torch.Tensor, *, classes: bool
) -> dict[str, np.ndarray]:
    """``[B, C]`` per-image values of the swept metrics, from ``[C, B]`` impacts and ``[C, B, outputs]`` logits.

    ``classes``: the model is a classifier, so the class-based metrics exist too.
    """
    values = {"layer_impact": impact.T.cpu().numpy(), "output_impact": output.T.cpu().numpy()}
    if classes:
        probs = logits.float().softmax(-1)
        index = target[None, :, None].expand(len(logits), -1, 1)
        values["probability"] = probs.gather(-1, index).squeeze(-1).T.cpu().numpy()
        values["accuracy"] = (logits.argmax(-1) == target).T.float().cpu().numpy()
    return values


def class_targets(given: torch.Tensor, clean_logits: torch.Tensor, backbone: bool = False) -> torch.Tensor:
    """``[B]`` target classes: the label when known (>= 0), else the unpruned top-1; a backbone's labels as they are."""
    if backbone:
        return given
    return torch.where(given >= 0, given, clean_logits.argmax(-1))


def check_metrics(metrics: Sequence[str] | None, handle: ViTHandle | None) -> tuple[str, ...]:
    """The metrics asked for, each once; ``None`` = every metric ``handle`` supports."""
    if metrics is None:
        metrics = metrics_for(handle) if handle is not None else METRICS
    if isinstance(metrics, str):
        metrics = (metrics,)
    if not metrics:
        raise UnsupportedMetric(f"Pick at least one head-importance metric from {', '.join(METRICS)}.")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UnsupportedMetric(f"'{unknown[0]}' is not a head-importance metric; choose from {', '.join(METRICS)}.")
    if handle is not None and handle.is_backbone:
        refused = [m for m in metrics if m in CLASS_METRICS]
        if refused:
            raise UnsupportedMetric(
                f"'{refused[0]}' is not available for '{handle.name}': {BACKBONE_REASON}; "
                f"use {' or '.join(BACKBONE_METRICS)}."
            )
    return tuple(dict.fromkeys(metrics))


def check_labels(handle: ViTHandle, labels: torch.Tensor | None, n: int) -> torch.Tensor:
    """``[N]`` int64 labels on the CPU, -1 where unknown."""
    if labels is None:
        return torch.full((n,), -1, dtype=torch.long)
    labels = torch.as_tensor(labels).long().cpu()
    if labels.shape != (n,):
        raise LabelsMismatch(f"Got {labels.numel()} labels for {n} images; give one label per image (negative = unknown).")
    if not handle.is_backbone and bool((labels >= len(handle.class_names)).any()):
        raise LabelsMismatch(f"A label is {int(labels.max())}, but this model has classes 0 to {len(handle.class_names) - 1}.")
    return labels


def _check_head(handle: ViTHandle, layer: int, head: int) -> None:
    if not 0 <= layer < handle.num_layers:
        raise InvalidSetting(f"Layer {layer} does not exist: this model has layers 0 to {handle.num_layers - 1}.")
    if not 0 <= head < handle.num_heads:
        raise InvalidSetting(f"Head {head} does not exist: this model has heads 0 to {handle.num_heads - 1} in each layer.")


def _tidy(values: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table from ``{metric: [..., L, H]}``: an ``image`` column when there is a leading image axis."""
    frames = []
    for metric, array in values.items():
        index = np.indices(array.shape).reshape(array.ndim, -1)
        columns: dict[str, object] = {"image": index[0]} if array.ndim == 3 else {}
        columns.update(layer=index[-2], head=index[-1], metric=metric, value=array.reshape(-1).astype(float))
        frames.append(pd.DataFrame(columns))
    if not frames:  # a pass that computed no metric (a backbone's preview has no Taylor)
        return pd.DataFrame({"image": [], "layer": [], "head": [], "metric": [], "value": []}).astype(
            {"image": np.int64, "layer": np.int64, "head": np.int64, "metric": object, "value": float}
        )
    return pd.concat(frames, ignore_index=True)
