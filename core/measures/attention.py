"""Exact post-softmax attention of every layer and head, for any supported timm ViT."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from core.models.handle import ViTHandle
from core.models.hooks import (
    capture_head_input,
    capture_norms,
    capture_patterns,
    locked_forward,
)
from core.models.memory import out_of_memory_as_sentence
from core.settings import images_per_batch

__all__ = [
    "AttentionBatch",
    "AttentionCapture",
    "extract_attention",
    "iter_attention",
    "norm_ratios",
    "OUTLIER_NORM_RATIO",
    "outlier_share",
    "outlier_tokens",
    "stream_norms",
    "token_norms",
]

# A token is a high-norm outlier when its norm is at least this many times the median patch
# norm of its image and layer. Darcet et al. (2024, "Vision Transformers Need Registers")
# find artefact tokens at about 10 times the others' norm; ordinary patches stay within 2
# times the median (measured on DINOv2-S: at most 1.9 over 12 layers and 3 photos). 4 sits
# well clear of both, near their geometric middle (4.4).
OUTLIER_NORM_RATIO = 4.0


@dataclass(frozen=True)
class AttentionCapture:
    """What a capture records besides the attention and the logits.

    Capture what is asked for, nothing more: the norms' hook runs on every block and the
    features are copied off the device, which took a plain capture of ViT-S/16 (batch 4,
    CPU) from about 1.16 to 1.22-1.29 times a fused forward.

    Attributes:
        features: the classifier's input (``AttentionBatch.features``).
        norms: every token's norm entering each block and leaving the last (``AttentionBatch.norms``).
    """

    features: bool = False
    norms: bool = False


@dataclass(frozen=True)
class AttentionBatch:
    """Attention and outputs of one batch, on the CPU.

    Attributes:
        attn: ``[B, L, H, T, T]`` post-softmax attention; row ``i`` of ``attn[b, l, h]``
            is how query token ``i`` spreads its attention over the ``T`` keys (sums to 1).
        logits: ``[B, classes]`` classifier outputs of the unmodified model.
        features: ``[B, D]`` the classifier's input (final CLS / pooled features); ``None``
            unless ``AttentionCapture.features`` asked for it.
        norms: ``[B, L + 1, T]`` the L2 norm of every token entering each block
            (``norms[:, 0]``: the embeddings) and, last, leaving the final block; ``None``
            unless ``AttentionCapture.norms`` asked for it.
    """

    attn: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None
    norms: torch.Tensor | None


@out_of_memory_as_sentence
def iter_attention(
    handle: ViTHandle, x: torch.Tensor, *, batch_size: int | None = None, capture: AttentionCapture = AttentionCapture()
) -> Iterator[AttentionBatch]:
    """Yield ``AttentionBatch`` chunks of ``x`` (``[N, C, H, W]``), so callers can stream statistics."""
    for part in _layer_major_batches(handle, x, batch_size, capture):
        yield _as_batch(*part)


@out_of_memory_as_sentence
def extract_attention(
    handle: ViTHandle, x: torch.Tensor, *, batch_size: int | None = None, capture: AttentionCapture = AttentionCapture()
) -> AttentionBatch:
    """Attention ``[N, L, H, T, T]`` and logits for the whole batch ``x`` (and what ``capture`` adds).

    Holds ``N * L * H * T * T`` floats: for set-level statistics use ``iter_attention``.
    """
    parts = list(_layer_major_batches(handle, x, batch_size, capture))
    if not parts:
        raise ValueError("extract_attention needs at least one image")
    if len(parts) == 1:
        return _as_batch(*parts[0])
    patterns, logits, features, norms = zip(*parts)
    # joined in the layer-major layout: contiguous slabs, no strided copy
    return _as_batch(torch.cat(patterns, dim=1), torch.cat(logits), _joined(features), _joined(norms))


_LayerMajor = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"]


def _layer_major_batches(
    handle: ViTHandle, x: torch.Tensor, batch_size: int | None, capture: AttentionCapture
) -> Iterator[_LayerMajor]:
    batch_size = images_per_batch(handle, batch_size)
    for start in range(0, len(x), batch_size):
        yield _attention_of_batch(handle, x[start:start + batch_size], capture)


def _joined(parts: tuple[torch.Tensor | None, ...]) -> torch.Tensor | None:
    return None if parts[0] is None else torch.cat(parts)  # type: ignore[arg-type]


def _as_batch(
    patterns: torch.Tensor, logits: torch.Tensor, features: torch.Tensor | None, norms: torch.Tensor | None
) -> AttentionBatch:
    return AttentionBatch(attn=patterns.permute(1, 0, 2, 3, 4), logits=logits, features=features, norms=norms)


def _attention_of_batch(handle: ViTHandle, x: torch.Tensor, capture: AttentionCapture) -> _LayerMajor:
    """Layer-major attention ``[L, B, H, T, T]`` and logits of one batch, on the CPU, with what ``capture`` adds."""
    model = handle.model
    t = handle.num_tokens
    # one contiguous slab per layer, written in place by the hooks
    patterns = torch.empty(handle.num_layers, len(x), handle.num_heads, t, t, device=handle.device)
    norms = torch.empty(len(x), handle.num_layers + 1, t) if capture.norms else None
    store: dict[str, torch.Tensor] = {}
    installers = [lambda hooks: capture_patterns(hooks, model, patterns)]
    if capture.features:
        installers.append(lambda hooks: capture_head_input(hooks, model, store))
    if norms is not None:
        installers.append(lambda hooks: capture_norms(hooks, model, norms))
    logits = locked_forward(handle, x, *installers)
    features = store["features"].float().cpu() if capture.features else None
    return patterns.cpu(), logits.float().cpu(), features, norms


def token_norms(handle: ViTHandle, x: torch.Tensor) -> torch.Tensor:
    """``[B, L, T]``: the L2 norm of every token in the output of every block, on the CPU.

    High-norm outlier tokens (Darcet et al. 2024: about 10x the others' norm, about 2% of
    the tokens of large DINOv2 and CLIP models) are where attention sinks form. One
    unpruned forward with a temporary hook on each block, under the model's lock.
    """
    return stream_norms(handle, x)[:, 1:]


@out_of_memory_as_sentence
def stream_norms(handle: ViTHandle, x: torch.Tensor) -> torch.Tensor:
    """``[B, L + 1, T]``: the norm of every token entering each block (index 0: the embeddings), then leaving the last.

    Entry ``l`` holds the keys block ``l`` attends to; ``token_norms`` is entries 1 to L.
    """
    norms = torch.empty(len(x), handle.num_layers + 1, handle.num_tokens)
    locked_forward(handle, x, lambda hooks: capture_norms(hooks, handle.model, norms))
    return norms


def norm_ratios(norms: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """Each token's norm over the median patch norm of its image and layer, same shape as ``norms`` ``[..., T]``.

    The median of an even number of patches is the lower of the two middle ones (as
    ``torch.median``). Where that median is 0 (a degenerate model), every ratio is 1:
    nothing can stand out against it.
    """
    median = norms[..., num_prefix_tokens:].median(dim=-1, keepdim=True).values
    ratio = norms / median.clamp_min(torch.finfo(norms.dtype).tiny)
    return torch.where(median > 0, ratio, torch.ones_like(ratio))


def outlier_tokens(norms: torch.Tensor, num_prefix_tokens: int = 1, ratio: float = OUTLIER_NORM_RATIO) -> torch.Tensor:
    """``[B, L, T]`` bool: tokens whose norm is at least ``ratio`` times the median patch norm
    of their image and layer (prefix tokens are judged too, against the patches' median; see :func:`norm_ratios`)."""
    return norm_ratios(norms, num_prefix_tokens) >= ratio


def outlier_share(attn: torch.Tensor, outliers: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """``[B, L, H]``: the share of the patch queries' attention that outlier tokens receive.

    Block ``l`` attends to the tokens entering it, so for the statistics HeadScope keeps the
    mask is ``outlier_tokens(stream_norms(handle, x)[:, :-1])``; the mask of ``token_norms``
    (tokens leaving each block) pairs each layer with the next layer's keys instead.

    ``attn`` is ``[B, L, H, T, T]``, ``outliers`` the ``[B, L, T]`` mask of :func:`outlier_tokens`.
    """
    received = attn[..., num_prefix_tokens:, :].to(torch.promote_types(attn.dtype, torch.float32)).mean(dim=-2)
    return (received * outliers[:, :, None, :].to(received.dtype)).sum(dim=-1)
