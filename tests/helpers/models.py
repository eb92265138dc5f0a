"""Tiny real timm models: a test builds the model it needs in milliseconds, with no weights to fetch."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer


def tiny_vit(**overrides) -> VisionTransformer:
    """A few-thousand-parameter ViT; overrides go to ``VisionTransformer``."""
    args = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.0)
    args.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(**args)
