"""What a model and one image's analysis cost in memory, and the allocator's failures as sentences.

A small upload can declare a model whose analysis needs tens of gigabytes for a single
image: attention grows with layers x heads x tokens², and a batch never holds less than
one image. ``check_fits`` refuses such a model from its shape alone, built on the meta
device before its weights are read, against ``core.settings.memory_budget``.
``out_of_memory_as_sentence`` marks the core functions the pages call: an allocator
failure that still happens (the server is short of memory for other reasons) leaves
them as ``OutOfMemory``, with a sentence, instead of torch's ``RuntimeError``. On Linux a
large allocation can also succeed and the kernel end the process later, which no handler
sees: the check at load is the guard, the sentence the fallback.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import torch
from torch import nn

from core.errors import ModelTooLarge, OutOfMemory, human_size
from core.settings import MEMORY_ENV, memory_budget

__all__ = [
    "ModelShape",
    "check_fits",
    "out_of_memory_as_sentence",
    "shape_of",
]

# One image's passes, calibrated on the peak resident growth of each pass over one image (a
# fresh process, the kernel's peak counter reset just before it; timm ViTs with 4 px patches,
# 1 to 8 heads, 2 to 6 layers, T = 1,025 to 4,097 tokens, D = 32 and 768). With A the
# attention of every layer (L x H x T² float32) and S one layer's (H x T² float32):
# - the first pass (attention captured, Taylor gradients) grew by at most 1.05 A + 6 S and
#   gradient rollout, which keeps the attention and its gradient, by 2.05 A + 6 S (the 6 S
#   are float64 per-layer products): 2,488 MiB for 2 layers x 4 heads at T = 4,097;
# - partial pruning, which masks six copies of one layer's attention, by 20 S: 5,092 MiB there;
# - what grows with the width (block inputs, the backward graph, the copies' MLPs) reached
#   23 x (L + 1) x T x D float32, and 28 leaves a margin: widening D from 32 to 768 at L = 4,
#   T = 1,025 added 79 to 232 MiB, and DINOv2-S at 518 px with a 10-class head (L = 12, H = 6,
#   T = 1,370, D = 384) grew by 1,932 MiB in gradient rollout, 1,309 in the first pass and 974
#   in partial pruning (this bound: 2,071).
# The larger of the two attention terms plus the activations bounded every measurement above
# 200 MB (below that the interpreter's own growth dominates).
_ATTENTION_FACTOR = 2.1
_LAYER_FACTOR = 6
_MASKED_COPIES_FACTOR = 20
_ACTIVATION_FACTOR = 28
# Loading holds the file's tensors, their renamed copies and the built model at once: peak
# growth 3.0 x the float32 weights from a float32 transformers ZIP, 2.6 x from a float16 one
# (a ViT-S of 22M weights).
_LOAD_FACTOR = 3
# Words of torch's allocator failures: "DefaultCPUAllocator: can't allocate memory: you tried
# to allocate ... (Cannot allocate memory)", c10's "Out of Memory", CUDA's "out of memory".
_ALLOCATOR_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ModelShape:
    """What a ViT's memory depends on.

    Attributes:
        layers: blocks ``L``.
        heads: attention heads per block ``H``.
        tokens: sequence length ``T`` at the input size (prefix tokens and patches).
        width: embedding width ``D``.
        side: input side in pixels.
        parameters: values of every weight and buffer, held as float32 once loaded.
    """

    layers: int
    heads: int
    tokens: int
    width: int
    side: int
    parameters: int

    @property
    def weight_bytes(self) -> int:
        return self.parameters * 4

    @property
    def load_bytes(self) -> int:
        """The peak while the weights are read, renamed and loaded into the model."""
        return _LOAD_FACTOR * self.weight_bytes

    @property
    def image_bytes(self) -> int:
        """The peak of the costliest pass HeadScope runs on one image (see the calibration above)."""
        layer = self.heads * self.tokens**2 * 4
        attention = self.layers * layer
        activations = _ACTIVATION_FACTOR * (self.layers + 1) * self.tokens * self.width * 4
        passes = max(_ATTENTION_FACTOR * attention + _LAYER_FACTOR * layer, _MASKED_COPIES_FACTOR * layer)
        return int(passes) + activations


def shape_of(model: nn.Module) -> ModelShape:
    """The shape of a timm ``VisionTransformer`` (on any device, the meta device included)."""
    grid = model.patch_embed.grid_size
    return ModelShape(
        layers=len(model.blocks),
        heads=int(model.blocks[0].attn.num_heads),
        tokens=int(model.num_prefix_tokens) + int(grid[0]) * int(grid[1]),
        width=int(model.embed_dim),
        side=int(max(model.patch_embed.img_size)),
        parameters=sum(tensor.numel() for tensor in model.state_dict().values()),
    )


def check_fits(build: Callable[[], nn.Module], label: str) -> ModelShape:
    """Refuse the model ``build()`` makes unless loading it, and one image's analysis with it, fit the budget.

    ``build`` runs on the meta device: no weight is allocated, so a refusal costs
    milliseconds whatever the model declares.

    Raises:
        ModelTooLarge: its weights, or one image's analysis at its input size, need more
            than ``core.settings.memory_budget()``.
        InvalidSetting: the budget's environment variable is malformed.
    """
    budget = memory_budget()
    with torch.device("meta"):
        shape = shape_of(build())
    name = label if len(label) <= 80 else label[:77] + "..."
    limit = f"more than this server's memory budget of {_size(budget)} ({MEMORY_ENV})"
    if shape.load_bytes > budget:
        raise ModelTooLarge(
            f"The model '{name}' declares {shape.parameters:,} weights ({_size(shape.weight_bytes)} as float32), "
            f"and loading them needs about {_size(shape.load_bytes)}, {limit}; choose a smaller model."
        )
    running = shape.weight_bytes + shape.image_bytes
    if running > budget:
        raise ModelTooLarge(
            f"The model '{name}' at {shape.side} px sees {shape.tokens:,} tokens in each of its {shape.layers} layers "
            f"x {shape.heads} heads, so analysing one image needs about {_size(running)}, {limit}; "
            "choose a smaller input size or a smaller model."
        )
    return shape


def _is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the memory allocator's failure (torch's, CUDA's or Python's)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and any(word in str(error).lower() for word in _ALLOCATOR_WORDS)


def out_of_memory_as_sentence(function: F) -> F:
    """``function`` (or generator function) with an allocator failure raised as ``OutOfMemory``.

    The sentence names the model's size when a ``ViTHandle`` is among the positional
    arguments. A failure already turned into ``OutOfMemory`` by an inner call passes as it is.
    """
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with _as_sentence(args):
                yield from function(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _as_sentence(args):
            return function(*args, **kwargs)

    return call  # type: ignore[return-value]


@contextmanager
def _as_sentence(args: tuple[Any, ...]) -> Iterator[None]:
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not _is_out_of_memory(err):
            raise
        # the failed frames hold the tensors they were computing: dropped, so the memory comes back
        raise OutOfMemory(_sentence(args)) from err.with_traceback(None)


_HANDLE_FIELDS = ("name", "num_tokens", "num_layers", "num_heads")


def _sentence(args: tuple[Any, ...]) -> str:
    # the model's handle, known by what it describes (the handle module imports this one, not the reverse)
    handle = next((arg for arg in args if all(hasattr(arg, a) for a in _HANDLE_FIELDS)), None)
    advice = "try again when fewer analyses run, or load the model at a smaller input size or pick a smaller one"
    if handle is None:
        return f"The server ran out of memory during the analysis; {advice}."
    return (
        f"The server ran out of memory analysing {handle.name} ({handle.num_tokens:,} tokens per image in "
        f"{handle.num_layers} layers x {handle.num_heads} heads); {advice}."
    )


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GB" if num_bytes >= 2**30 else human_size(num_bytes)
