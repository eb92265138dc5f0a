"""Temporary hooks on a shared model: registered per call, always removed.

The model a handle holds is shared by every session, so nothing here changes a flag
or a weight; hooks live only inside the ``with`` block that registered them and the
``finally`` clause removes them even when the forward pass fails.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from core.errors import NonFiniteOutputs

if TYPE_CHECKING:
    from core.models.handle import ViTHandle

__all__ = [
    "HookSet",
    "attention_forward",
    "capture_head_input",
    "capture_norms",
    "capture_patterns",
    "check_finite",
    "locked_forward",
    "locked_hooks",
    "temporary_hooks",
]


_NON_FINITE = (
    "The model outputs NaN or infinite values for these images (its weights overflow on them), "
    "so they cannot be analysed; load another checkpoint or use other images."
)


class HookSet:
    """Registers hooks and remembers their handles so they can all be removed."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def forward(self, module: nn.Module, fn: Callable[..., Any], *, with_kwargs: bool = False) -> None:
        """``fn(module, args, output)``, or ``fn(module, args, kwargs, output)`` ``with_kwargs``."""
        self._handles.append(module.register_forward_hook(fn, with_kwargs=with_kwargs))

    def forward_pre(self, module: nn.Module, fn: Callable[[nn.Module, Any], Any]) -> None:
        self._handles.append(module.register_forward_pre_hook(fn))

    def remove_all(self) -> None:
        while self._handles:
            self._handles.pop().remove()


@contextmanager
def temporary_hooks() -> Iterator[HookSet]:
    """Yield a ``HookSet``; every hook registered through it is removed on exit."""
    hooks = HookSet()
    try:
        yield hooks
    finally:
        hooks.remove_all()


def capture_patterns(hooks: HookSet, model: nn.Module, patterns: torch.Tensor) -> None:
    """Write each block's post-softmax attention into ``patterns[layer]``.

    ``patterns``: ``[layer, batch, head, query, key]``, preallocated by the caller
    (``blocks.{l}.attn.pattern`` is ``patterns[l]``). The hooks read q and k where
    timm's ``Attention`` hands them to ``q_norm``/``k_norm`` (called on both the fused
    and the manual path) and compute ``softmax(q @ k^T * scale)`` as the manual path
    does, so the model's ``fused_attn`` flag is never touched. Writing in place into
    one buffer avoids a fresh allocation per layer, which costs more than the matmul.
    """
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        queries: dict[str, torch.Tensor] = {}

        def keep_q(_m: nn.Module, _i: Any, q: torch.Tensor, queries=queries) -> None:
            queries["q"] = q.detach()  # read, never differentiated: the Taylor pass runs with these hooks

        def make_pattern(_m: nn.Module, _i: Any, k: torch.Tensor, queries=queries, attn=attn, layer=layer) -> None:
            scores = patterns[layer]
            torch.matmul(queries.pop("q").to(scores.dtype), k.detach().to(scores.dtype).transpose(-2, -1), out=scores)
            scores.mul_(attn.scale)
            torch.softmax(scores, dim=-1, out=scores)
            # softmax gives values in [0, 1] or NaN, so one sum finds a NaN without a mask as large as the maps
            if not torch.isfinite(scores.sum(dtype=torch.float32)):
                raise NonFiniteOutputs(_NON_FINITE)

        hooks.forward(attn.q_norm, keep_q)
        hooks.forward(attn.k_norm, make_pattern)


def capture_norms(hooks: HookSet, model: nn.Module, norms: torch.Tensor) -> None:
    """Write the L2 norm of every token of the residual stream into ``norms`` ``[batch, layer + 1, token]``.

    ``norms[:, l]`` is the tokens entering block ``l`` (``norms[:, 0]``: the embedded
    patches and prefix tokens), ``norms[:, L]`` the tokens leaving the last block.
    """

    def entering(layer: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            norms[:, layer] = inputs[0].detach().float().norm(dim=-1).to(norms.device)

        return hook

    def leaving(_m: nn.Module, _i: Any, output: torch.Tensor) -> None:
        norms[:, len(model.blocks)] = output.detach().float().norm(dim=-1).to(norms.device)

    for layer, block in enumerate(model.blocks):
        hooks.forward_pre(block, entering(layer))
    hooks.forward(model.blocks[-1], leaving)


def attention_forward(
    attn: nn.Module,
    x: torch.Tensor,
    keep: torch.Tensor | None = None,
    on_weights: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """timm ``Attention.forward`` on its manual path, with the post-softmax weights in reach.

    For a forward hook on ``block.attn`` that returns this as the module's output: the
    model's ``fused_attn`` flag is never touched. ``x``: ``[B, T, D]`` the block's
    normalised input; ``on_weights`` sees the ``[B, H, T, T]`` weights (in the autograd
    graph when gradients are recorded); ``keep`` (``[B, H, T, T]``, 0/1, not
    renormalised) multiplies them before they weigh the values.
    """
    batch, tokens, _ = x.shape
    gate_layer = getattr(attn, "gate", None)
    gate = gate_layer(x).sigmoid() if gate_layer is not None else None
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
    if on_weights is not None:
        on_weights(weights)
    out = ((weights if keep is None else weights * keep) @ v).transpose(1, 2).reshape(batch, tokens, attn.attn_dim)
    out = attn.norm(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))


def capture_head_input(hooks: HookSet, model: nn.Module, store: dict[str, torch.Tensor]) -> None:
    """Record the classifier's input (the final pooled CLS features) as ``store['features']``."""

    def keep(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store.setdefault("features", inputs[0])

    hooks.forward_pre(model.head, keep)


def locked_forward(handle: ViTHandle, x: torch.Tensor, *installers: Callable[[HookSet], None]) -> torch.Tensor:
    """Logits of ``x`` from the shared model, with temporary hooks, under the model's lock.

    Every forward of a shared model goes through here, hooked or not: hooks live on
    modules, so another thread's forward would fire them (and feed them its batch)
    unless all forwards are serialised.

    Raises:
        NonFiniteOutputs: a logit (or, with ``capture_patterns``, an attention weight) is NaN or infinite.
    """
    with locked_hooks(handle) as hooks:
        for install in installers:
            install(hooks)
        logits = handle.model(x.to(handle.device))
    check_finite(logits)
    return logits


def check_finite(logits: torch.Tensor) -> None:
    """Raise ``NonFiniteOutputs`` when an output is NaN or infinite.

    NaN logits (and the features before them) would otherwise reach scikit-learn, which
    fails with its own error text.
    """
    if not torch.isfinite(logits.detach()).all():
        raise NonFiniteOutputs(_NON_FINITE)


@contextmanager
def locked_hooks(handle: ViTHandle, *, grad: bool = False) -> Iterator[HookSet]:
    """Hold the model's lock and yield a ``HookSet``, for running the model's parts by hand.

    Without ``grad`` everything inside runs under ``inference_mode``. With ``grad``
    autograd records the pass, so gradients can be taken with ``torch.autograd.grad``
    with respect to tensors the caller created (nothing lands in a parameter's
    ``.grad``); the lock is held either way because any hook lives on shared modules.
    """
    mode = torch.enable_grad() if grad else torch.inference_mode()
    with handle.lock, mode, temporary_hooks() as hooks:
        yield hooks
