"""Attention tensors made up for the measures' tests."""

from __future__ import annotations

import torch


def random_attention(*shape: int, seed: int = 0) -> torch.Tensor:
    """Row-stochastic float64 attention ``[*shape[:-1], T]`` with sharp, uneven rows."""
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).softmax(-1)
