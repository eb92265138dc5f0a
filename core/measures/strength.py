"""Attention strength (view C): how far, on the patch grid, each head's attention reaches.

Every metric here reads the post-softmax attention ``[..., T, T]`` (query rows, key
columns; ``T`` = prefix tokens + ``rows * cols`` patches in row-major order) and
reduces the patch-to-patch block with a precomputed index per grid (hop distance, or
2-D offset) and a segment sum, so no Python loop ever runs over tokens. Set-level
statistics stream over ``core.measures.attention.iter_attention`` batches and keep only
per-image summaries, never the ``N x L x H x T x T`` attention of a whole set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.errors import NotEnoughImages
from core.measures.attention import (
    OUTLIER_NORM_RATIO,
    AttentionCapture,
    iter_attention,
    norm_ratios,
)
from core.measures.inference import Progress
from core.models.handle import ViTHandle
from core.models.memory import out_of_memory_as_sentence
from core.settings import images_per_batch

__all__ = [
    "PER_IMAGE",
    "SPREAD_QUANTILES",
    "StrengthStats",
    "attention_distance",
    "attention_sink",
    "hop_entropy",
    "hop_strength",
    "key_entropy",
    "offset_strength",
    "per_image_arrays",
    "prefix_share",
    "reduce_layer",
    "reduce_norms",
    "register_share",
    "sink_position",
    "stats_from",
    "strength_statistics",
    "token_label",
    "top_key_share",
]

SPREAD_QUANTILES = (0.1, 0.9)  # the band C2 draws around the set mean


# --- grid geometry -----------------------------------------------------------------


@dataclass(frozen=True)
class _Segments:
    """A partition of the flattened patch block ``[P * P]`` (source-major) into segments.

    Attributes:
        index: ``[P * P]`` segment of each (source, target) pair.
        weight: ``[P * P]`` factor that turns the segment sum into the segment's metric.
        count: number of segments.
    """

    index: torch.Tensor
    weight: torch.Tensor
    count: int


def _grid_coords(grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column ``[P]`` of each patch, in token order."""
    rows, cols = grid
    return torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)


@lru_cache(maxsize=32)
def _hop_segments(grid: tuple[int, int]) -> _Segments:
    r, c = _grid_coords(grid)
    hop = torch.maximum((r[:, None] - r[None, :]).abs(), (c[:, None] - c[None, :]).abs())  # [P, P]
    n_hops = max(grid)
    # neighbours[i, n]: how many hop-n targets source i has
    neighbours = torch.zeros(len(r), n_hops, dtype=torch.float64).scatter_add_(1, hop, torch.ones_like(hop, dtype=torch.float64))
    sources = (neighbours > 0).sum(0)  # [n_hops] sources that have any hop-n neighbour
    # mean over a source's hop-n targets, then mean over the sources that have some:
    # each pair is weighted 1 / (its source's hop-n count * number of such sources)
    weight = 1.0 / (neighbours.gather(1, hop) * sources[hop])
    return _Segments(index=hop.reshape(-1), weight=weight.reshape(-1), count=n_hops)


@lru_cache(maxsize=32)
def _offset_segments(grid: tuple[int, int]) -> _Segments:
    rows, cols = grid
    r, c = _grid_coords(grid)
    dy = r[None, :] - r[:, None]  # target minus source: positive = below the source
    dx = c[None, :] - c[:, None]
    # every source with a target at (dy, dx) contributes once: (rows - |dy|) (cols - |dx|) pairs
    pairs = ((rows - dy.abs()) * (cols - dx.abs())).to(torch.float64)
    index = (dy + rows - 1) * (2 * cols - 1) + (dx + cols - 1)
    return _Segments(index=index.reshape(-1), weight=(1.0 / pairs).reshape(-1), count=(2 * rows - 1) * (2 * cols - 1))


@lru_cache(maxsize=32)
def _patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """``[P, P]`` Euclidean distance in input pixels between patch centres."""
    r, c = _grid_coords(grid)
    dy = (r[:, None] - r[None, :]).double() * patch_size[0]
    dx = (c[:, None] - c[None, :]).double() * patch_size[1]
    return torch.hypot(dy, dx)


def _patch_block(
    attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Validate ``attn`` ``[..., T, T]``; its patch-to-patch block ``[..., P, P]`` as float, and the grid as ints.

    The grid comes back as a tuple of ints so the per-grid caches get hashable keys.
    """
    rows, cols = int(grid[0]), int(grid[1])
    if rows < 1 or cols < 1 or num_prefix_tokens < 0:
        raise ValueError(
            f"The patch grid must be at least 1x1 and the prefix count non-negative; got grid {grid} "
            f"with {num_prefix_tokens} prefix tokens."
        )
    expected = num_prefix_tokens + rows * cols
    if attn.ndim < 2 or attn.shape[-1] != attn.shape[-2] or attn.shape[-1] != expected:
        raise ValueError(
            f"Attention of shape {tuple(attn.shape)} does not fit a {rows}x{cols} grid with {num_prefix_tokens} "
            f"prefix tokens: the last two dimensions must both be {expected} tokens."
        )
    # float64 stays float64 (exact tests); lower precisions are summed in float32
    dtype = torch.promote_types(attn.dtype, torch.float32)
    return attn[..., num_prefix_tokens:, num_prefix_tokens:].to(dtype), (rows, cols)


def _segment_reduce(block: torch.Tensor, segments: _Segments) -> torch.Tensor:
    """``[..., segments]`` weighted sums of the flattened ``[..., P, P]`` block per segment."""
    lead, side = block.shape[:-2], block.shape[-1]
    # one temporary: the product takes the block's layout, so the reshape is a view unless leading dims are permuted
    weighted = (block * segments.weight.to(block).view(side, side)).reshape(-1, side * side)
    out = weighted.new_zeros(weighted.shape[0], segments.count)
    out.index_add_(1, segments.index.to(block.device), weighted)
    return out.reshape(*lead, segments.count)


# --- metrics -----------------------------------------------------------------------


def hop_strength(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Attention strength ``s_n`` at each hop distance: ``[..., n_hops]``, ``n_hops = max(rows, cols)``.

    Hop distance between two patches is their Chebyshev distance on the grid, so the
    hop-``n`` neighbours of a patch form the square ring ``n`` patches away. For each
    source patch, the mean post-softmax attention to its hop-``n`` neighbours; ``s_n``
    is the mean of that over the source patches that have any hop-``n`` neighbour. Means
    (not sums) make rings of different sizes comparable, so ``s`` is flat for uniform
    attention and a peak at ``n = 0`` means a head that looks at its own patch. The
    patch block is not renormalised: attention spent on prefix tokens lowers every
    ``s_n``, exactly as the paper's view C reads it.

    Args:
        attn: ``[..., T, T]`` post-softmax attention, any leading batch shape.
        grid: patch grid ``(rows, cols)``.
        num_prefix_tokens: CLS, distillation and register tokens before the patches.

    Raises:
        ValueError: ``T`` is not ``num_prefix_tokens + rows * cols``.
    """
    block, grid = _patch_block(attn, grid, num_prefix_tokens)
    return _segment_reduce(block, _hop_segments(grid))


def hop_entropy(strength: torch.Tensor) -> torch.Tensor:
    """Entropy ``H = -sum_n p_n ln p_n`` of the hop profile ``[..., n_hops]``; shape ``[...]``.

    ``p = s / sum(s)`` turns the profile into a distribution over hop distances, so
    ``H`` measures how spread out a head's reach is regardless of how much attention
    it spends on prefix tokens: 0 for a head that attends only to its own patch (or any
    single ring), ``ln(n_hops)`` for attention spread uniformly over the patches.
    ``0 ln 0 = 0``; a profile with no mass at all has no spread and gets 0 too.
    """
    total = strength.sum(-1, keepdim=True)
    p = strength / total.clamp_min(torch.finfo(strength.dtype).tiny)
    # entr(1) is -0.0: abs keeps a self-only head from showing as "-0.000"
    return torch.special.entr(p).sum(-1).abs()


def offset_strength(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean attention at each 2-D offset: ``[..., 2 * rows - 1, 2 * cols - 1]``.

    Entry ``[dy + rows - 1, dx + cols - 1]`` is the attention from a source patch to the
    patch ``dy`` rows below and ``dx`` columns right of it, averaged over the sources
    that have a patch at that offset. Hop strength folds these rings together; the
    offset map keeps direction, so heads that look left, up or along a diagonal stand
    out. Same patch block as ``hop_strength``, not renormalised.
    """
    block, grid = _patch_block(attn, grid, num_prefix_tokens)
    flat = _segment_reduce(block, _offset_segments(grid))
    return flat.reshape(*flat.shape[:-1], 2 * grid[0] - 1, 2 * grid[1] - 1)


def attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_size: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Mean attention distance in input pixels, ``[...]`` (Dosovitskiy et al. 2021, fig. 7).

    For each source patch, the attention-weighted Euclidean distance between its centre
    and the other patch centres, averaged over the source patches. Unlike the strength
    metrics, each source's patch row is renormalised to sum to 1 first: the distance
    should say where a head looks *among the patches*, so a head that parks most of its
    attention on CLS does not look local just because little is left for the patches
    (``prefix_share`` reports that part separately).

    Args:
        attn: ``[..., T, T]`` post-softmax attention.
        grid: patch grid ``(rows, cols)``.
        patch_size: patch ``(height, width)`` in input pixels.
        num_prefix_tokens: prefix tokens before the patches.
    """
    block, grid = _patch_block(attn, grid, num_prefix_tokens)
    distances = _patch_distances(grid, (int(patch_size[0]), int(patch_size[1]))).to(block)
    # renormalising after the weighted sum gives the same value with one [..., P, P] temporary
    per_source = (block * distances).sum(-1) / block.sum(-1).clamp_min(torch.finfo(block.dtype).tiny)
    return per_source.mean(-1)


def prefix_share(attn: torch.Tensor, grid: tuple[int, int], num_prefix_tokens: int = 1) -> torch.Tensor:
    """Share of the patch queries' attention that goes to prefix tokens, ``[...]``.

    Mean over patch queries (rows) of the attention they give to all prefix tokens
    together. Only patch queries count: the CLS row is the classifier's read-out and
    behaves differently, while many heads use CLS or registers as a "no-op" sink for
    patches; this share is how much of the patches' attention those sinks absorb.
    """
    _patch_block(attn, grid, num_prefix_tokens)  # validates the shape
    dtype = torch.promote_types(attn.dtype, torch.float32)
    return attn[..., num_prefix_tokens:, :num_prefix_tokens].to(dtype).sum(-1).mean(-1)


# --- where attention goes: concentration on single tokens --------------------------
# Hop entropy and mean distance describe how attention spreads over distances; a head whose
# patches all look at one token (a "sink", Darcet et al. 2024, "Vision Transformers Need
# Registers") spreads over distances like a global head. These say how concentrated it is.


def _patch_rows(attn: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The patch queries' rows ``[..., P, T]`` in float32 or wider."""
    if attn.dim() < 2 or attn.shape[-1] != attn.shape[-2] or not 0 <= num_prefix_tokens < attn.shape[-1]:
        raise ValueError(f"attention must be [..., T, T] with fewer than T prefix tokens, not {tuple(attn.shape)}")
    return attn[..., num_prefix_tokens:, :].to(torch.promote_types(attn.dtype, torch.float32))


def top_key_share(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The largest share of the patches' attention that any one token receives, ``[...]``.

    The max over keys ``j`` (prefix tokens included) of the mean over patch queries ``i``
    of ``A[i, j]``: 1 when every patch looks at the same token, ``1 / T`` when attention
    is uniform.
    """
    return _patch_rows(attn, num_prefix_tokens).mean(-2).amax(-1)


def attention_sink(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """The token that receives the patches' largest share (the argmax of :func:`top_key_share`), ``[...]`` int64.

    Indices below ``num_prefix_tokens`` are prefix tokens (CLS, registers); the others are
    patch ``index - num_prefix_tokens`` in row-major order (see :func:`sink_position`).
    """
    return _patch_rows(attn, num_prefix_tokens).mean(-2).argmax(-1)


def sink_position(index: int, grid: tuple[int, int], num_prefix_tokens: int = 1) -> tuple[int, int] | None:
    """Row and column of token ``index`` on the patch grid, or ``None`` for a prefix token."""
    if index < num_prefix_tokens:
        return None
    patch = index - num_prefix_tokens
    if patch >= grid[0] * grid[1]:
        raise ValueError(f"token {index} is beyond the {grid[0]}x{grid[1]} grid")
    return patch // grid[1], patch % grid[1]


def key_entropy(attn: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Mean over patch queries of the entropy (nats) of each query's attention row, ``[...]``.

    0 when each patch looks at a single token (not necessarily the same one), ``ln T``
    when every row is uniform over the ``T`` tokens.
    """
    rows = _patch_rows(attn, num_prefix_tokens)
    return -torch.special.xlogy(rows, rows).sum(-1).mean(-1)


def register_share(attn: torch.Tensor, num_prefix_tokens: int, num_registers: int) -> torch.Tensor:
    """Share of the patch queries' attention that goes to the register tokens, ``[...]``.

    Registers are the last ``num_registers`` prefix tokens (timm's order); 0 for a model without them.
    """
    rows = _patch_rows(attn, num_prefix_tokens)
    return rows[..., num_prefix_tokens - num_registers:num_prefix_tokens].sum(-1).mean(-1)


def token_label(index: int, grid: tuple[int, int], prefix_names: Sequence[str]) -> str:
    """A token as a reader names it: ``"CLS"``, ``"register 2"`` or ``"patch (row 3, column 9)"`` (counted from 1)."""
    position = sink_position(index, grid, len(prefix_names))
    if position is None:
        return prefix_names[index]
    return f"patch (row {position[0] + 1}, column {position[1] + 1})"


# --- set-level statistics ----------------------------------------------------------

# The per-image arrays of ``StrengthStats``, with what each holds per image.
PER_IMAGE = {
    "hop_strength": "[L, H, n_hops] s_n",
    "entropy": "[L, H] hop entropy",
    "distance": "[L, H] mean attention distance",
    "prefix_share": "[L, H] attention on prefix tokens",
    "top_share": "[L, H] top-key share",
    "key_entropy": "[L, H] key entropy",
    "sink": "[L, H] token index of the sink",
    "register_share": "[L, H] attention on registers",
    "outlier_share": "[L, H] attention on high-norm tokens",
    "outliers": "[L] high-norm tokens leaving each block",
    "norm_ratio": "[L] largest token norm / median patch norm",
}


def per_image_arrays(n: int, layers: int, heads: int, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """The per-image arrays, allocated once and filled in place batch by batch.

    Small per-batch results kept alive between batches would sit between the freed
    attention buffers and fragment the heap (RSS grew ~1.4 MB/image).
    """
    per_head = (n, layers, heads)
    out = {name: np.empty(per_head, dtype=np.float32) for name in PER_IMAGE}
    out["hop_strength"] = np.empty((*per_head, max(grid)), dtype=np.float32)
    out["sink"] = np.empty(per_head, dtype=np.int32)
    out["outliers"] = np.empty((n, layers), dtype=np.int32)
    out["norm_ratio"] = np.empty((n, layers), dtype=np.float32)
    return out


@dataclass(frozen=True)
class StrengthStats:
    """Per-image strength and concentration summaries of an image set, streamed batch by batch.

    Attributes:
        hop_strength: ``[N, L, H, n_hops]`` ``s_n`` per image, layer and head.
        entropy: ``[N, L, H]`` entropy of each hop profile (nats).
        distance: ``[N, L, H]`` mean attention distance in input pixels.
        prefix_share: ``[N, L, H]`` share of patch queries' attention on prefix tokens.
        offset_mean: ``[L, H, 2 * rows - 1, 2 * cols - 1]`` offset strength averaged over
            the images (a running sum while streaming, never one map per image).
        grid: patch grid ``(rows, cols)``.
        top_share: ``[N, L, H]`` :func:`top_key_share`, the share of the patches' attention on the one most attended token.
        key_entropy: ``[N, L, H]`` :func:`key_entropy` (nats).
        sink: ``[N, L, H]`` that token's index (:func:`attention_sink`); -1 where unknown.
        register_share: ``[N, L, H]`` :func:`register_share` (0 without registers).
        outlier_share: ``[N, L, H]`` share of the patches' attention on the high-norm tokens
            among the layer's keys (the tokens entering the block).
        outliers: ``[N, L]`` how many tokens leaving each block have a high norm
            (``core.measures.attention.outlier_tokens``); -1 where unknown.
        norm_ratio: ``[N, L]`` the largest norm of a token leaving each block over the median patch norm.

    Results saved before the concentration arrays existed open with NaN in the float
    arrays and -1 in ``sink`` and ``outliers``; ``has_concentration`` says which.
    """

    hop_strength: np.ndarray
    entropy: np.ndarray
    distance: np.ndarray
    prefix_share: np.ndarray
    offset_mean: np.ndarray
    grid: tuple[int, int]
    top_share: np.ndarray
    key_entropy: np.ndarray
    sink: np.ndarray
    register_share: np.ndarray
    outlier_share: np.ndarray
    outliers: np.ndarray
    norm_ratio: np.ndarray

    @property
    def num_images(self) -> int:
        return int(self.entropy.shape[0])

    @property
    def has_concentration(self) -> bool:
        """Whether the concentration and norm arrays hold values (not a result saved before them)."""
        return bool(self.sink.size) and bool((self.sink >= 0).all())

    def heads(self, image: int | None = None) -> pd.DataFrame:
        """One row per head: layer, head, head_label, entropy, distance, prefix_share, top_share,
        key_entropy, register_share, outlier_share.

        Values of image ``image`` (its position in the set), or the mean over the set's
        images when ``None`` (the mean of per-image entropies, not the entropy of a mean
        profile, so it reads as "how spread is this head on a typical image").
        """
        pick = (lambda a: a.mean(axis=0)) if image is None else (lambda a: a[image])
        layers, heads = self.entropy.shape[1:]
        layer, head = np.divmod(np.arange(layers * heads), heads)
        values = ("entropy", "distance", "prefix_share", "top_share", "key_entropy", "register_share", "outlier_share")
        return pd.DataFrame(
            {
                "layer": layer,
                "head": head,
                "head_label": [f"L{l}H{h}" for l, h in zip(layer, head)],
                **{name: pick(getattr(self, name)).reshape(-1).astype(float) for name in values},
            }
        )

    def hop_profile(self, layer: int, head: int, image: int) -> pd.DataFrame:
        """One row per hop: hop, strength (of ``image``), mean, low, high over the set.

        ``low``/``high`` are the ``SPREAD_QUANTILES`` of ``s_n`` over the images.
        """
        profiles = self.hop_strength[:, layer, head]  # [N, n_hops]
        low, high = np.quantile(profiles, SPREAD_QUANTILES, axis=0)
        return pd.DataFrame(
            {
                "hop": np.arange(profiles.shape[1]),
                "strength": profiles[image].astype(float),
                "mean": profiles.mean(axis=0).astype(float),
                "low": low.astype(float),
                "high": high.astype(float),
            }
        )

    def entropy_over_images(self, layer: int, head: int) -> pd.DataFrame:
        """One row per image: image (position in the set), entropy of the given head."""
        return self.over_images("entropy", layer, head)

    def over_images(self, name: str, layer: int, head: int) -> pd.DataFrame:
        """One row per image: image (position in the set) and the per-head array ``name`` of the given head."""
        values = getattr(self, name)[:, layer, head]
        return pd.DataFrame({"image": np.arange(len(values)), name: values.astype(float)})

    def sinks(self, layer: int, head: int, prefix_names: Sequence[str]) -> pd.DataFrame:
        """One row per image: image, sink (token index), token (its name, see :func:`token_label`),
        row and col (-1 for a prefix token), top_share."""
        sink = self.sink[:, layer, head].astype(int)
        positions = [sink_position(int(i), self.grid, len(prefix_names)) if i >= 0 else None for i in sink]
        return pd.DataFrame(
            {
                "image": np.arange(len(sink)),
                "sink": sink,
                "token": [token_label(int(i), self.grid, prefix_names) if i >= 0 else "unknown" for i in sink],
                "row": [p[0] if p else -1 for p in positions],
                "col": [p[1] if p else -1 for p in positions],
                "top_share": self.top_share[:, layer, head].astype(float),
            }
        )

    def layer_norms(self) -> pd.DataFrame:
        """One row per layer: layer, norm_ratio (mean, max over the images), images with an outlier token,
        outliers (mean count per image)."""
        outlying = self.outliers > 0
        return pd.DataFrame(
            {
                "layer": np.arange(self.norm_ratio.shape[1]),
                "norm_ratio": self.norm_ratio.mean(axis=0).astype(float),
                "norm_ratio_max": self.norm_ratio.max(axis=0).astype(float),
                "images_with_outliers": outlying.sum(axis=0).astype(int),
                "outliers": np.where(self.outliers >= 0, self.outliers, 0).mean(axis=0).astype(float),
            }
        )

    def offsets(self, layer: int, head: int) -> pd.DataFrame:
        """One row per offset: dy, dx, attention (``offset_mean`` of the given head)."""
        rows, cols = self.grid
        dy, dx = np.meshgrid(np.arange(-rows + 1, rows), np.arange(-cols + 1, cols), indexing="ij")
        return pd.DataFrame(
            {"dy": dy.reshape(-1), "dx": dx.reshape(-1), "attention": self.offset_mean[layer, head].reshape(-1).astype(float)}
        )


def reduce_layer(
    out: dict[str, np.ndarray],
    offset_sum: torch.Tensor,
    rows: slice,
    layer: int,
    attn: torch.Tensor,
    handle: ViTHandle,
    key_outliers: torch.Tensor,
) -> None:
    """Write one layer's strength and concentration summaries of a batch's images into ``out[...][rows, layer]``.

    ``attn``: ``[B, H, T, T]`` that layer's attention; its offset maps are added to
    ``offset_sum[layer]``. ``key_outliers``: ``[B, T]`` the high-norm tokens among the
    tokens entering the block (its keys). A layer at a time: the temporaries stay at 1/L
    of the batch's attention.
    """
    grid, prefix = handle.grid, handle.num_prefix_tokens
    strength = hop_strength(attn, grid, prefix)
    out["hop_strength"][rows, layer] = strength.numpy()
    out["entropy"][rows, layer] = hop_entropy(strength).numpy()
    out["distance"][rows, layer] = attention_distance(attn, grid, handle.patch_size, prefix).numpy()
    out["prefix_share"][rows, layer] = prefix_share(attn, grid, prefix).numpy()
    received = _patch_rows(attn, prefix).mean(-2)  # [B, H, T]: what each token gets from the patches
    top = received.max(-1)
    out["top_share"][rows, layer] = top.values.numpy()
    out["sink"][rows, layer] = top.indices.numpy()
    out["key_entropy"][rows, layer] = key_entropy(attn, prefix).numpy()
    out["register_share"][rows, layer] = register_share(attn, prefix, handle.num_registers).numpy()
    # as core.measures.attention.outlier_share, from the same column means
    out["outlier_share"][rows, layer] = (received * key_outliers[:, None, :].to(received.dtype)).sum(-1).numpy()
    offset_sum[layer] += offset_strength(attn, grid, prefix).sum(0)


def reduce_norms(out: dict[str, np.ndarray], rows: slice, norms: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Write a batch's token-norm summaries into ``out["outliers"]`` and ``out["norm_ratio"]``.

    ``norms``: ``[B, L + 1, T]`` as ``core.measures.attention.AttentionBatch.norms`` (entering each
    block, then leaving the last). A token is a high-norm outlier at
    ``core.measures.attention.OUTLIER_NORM_RATIO`` times its image and layer's median patch norm
    (``core.measures.attention.norm_ratios``).

    Returns:
        ``[B, L, T]`` which tokens entering each block are outliers: the keys
        :func:`reduce_layer` measures the attention to.
    """
    ratio = norm_ratios(norms, num_prefix_tokens)  # [B, L + 1, T]
    outlying = ratio >= OUTLIER_NORM_RATIO
    out["outliers"][rows] = outlying[:, 1:].sum(-1).numpy()
    out["norm_ratio"][rows] = ratio[:, 1:].amax(-1).numpy()
    return outlying[:, :-1]


@out_of_memory_as_sentence
def strength_statistics(
    handle: ViTHandle,
    images: Sequence[Image.Image],
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> StrengthStats:
    """Strength summaries of every image, layer and head, holding one batch of attention at a time.

    Images are preprocessed per batch, so neither the attention nor the input tensor
    of the whole set is ever held. ``batch_size`` caps the batch (see ``core.settings.images_per_batch``).

    Raises:
        NotEnoughImages: ``images`` is empty.
    """
    if not images:
        raise NotEnoughImages("Strength statistics need at least one image.")
    batch_size = images_per_batch(handle, batch_size)
    grid = handle.grid
    n = len(images)
    out = per_image_arrays(n, handle.num_layers, handle.num_heads, grid)
    # float64: the sum over hundreds of images must not lose the small offsets' precision
    offset_sum = torch.zeros(handle.num_layers, handle.num_heads, 2 * grid[0] - 1, 2 * grid[1] - 1, dtype=torch.float64)
    done = 0
    for start in range(0, n, batch_size):
        x = handle.preprocess(images[start:start + batch_size])
        for batch in iter_attention(handle, x, batch_size=batch_size, capture=AttentionCapture(norms=True)):
            rows = slice(done, done + len(batch.attn))
            keys = reduce_norms(out, rows, batch.norms, handle.num_prefix_tokens)
            for layer in range(handle.num_layers):
                reduce_layer(out, offset_sum, rows, layer, batch.attn[:, layer], handle, keys[:, layer])
            done += len(batch.attn)
        # let go of this batch's attention before the next forward allocates its own
        del batch
        if progress is not None:
            progress(done, n)
    return stats_from(out, offset_sum, n, grid)


def stats_from(out: dict[str, np.ndarray], offset_sum: torch.Tensor, n: int, grid: tuple[int, int]) -> StrengthStats:
    """The statistics from the filled per-image arrays and the offset maps' running sum over ``n`` images."""
    return StrengthStats(**out, offset_mean=(offset_sum / n).float().numpy(), grid=grid)
