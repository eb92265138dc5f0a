"""Shared fixtures: tiny real timm ViTs built in-process (no network, random weights)."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from core.model import ViTHandle, wrap_model


def tiny_vit(**overrides) -> VisionTransformer:
    """A few-thousand-parameter ViT; overrides go to ``VisionTransformer``."""
    args = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.0)
    args.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(**args)


@pytest.fixture(scope="session", autouse=True)
def _umap_warmup_ends_before_exit():
    """App tests start UMAP's background compilation; let it finish before the interpreter exits."""
    yield
    from core.projection import join_umap_warmup

    join_umap_warmup(timeout=300)


@pytest.fixture
def tiny_handle() -> ViTHandle:
    return wrap_model(tiny_vit(), class_names=[f"c{i}" for i in range(5)], device="cpu")


@pytest.fixture
def register_handle() -> ViTHandle:
    """Non-square 3x4 grid, a CLS token plus three register tokens."""
    return wrap_model(tiny_vit(img_size=(24, 32), reg_tokens=3), device="cpu")


@pytest.fixture(scope="session")
def demo_handle() -> ViTHandle:
    from core.model import load_model

    return load_model("demo", device="cpu")


SMALL_STUDY_IMAGES = 24


@pytest.fixture(scope="session")
def small_set(demo_handle):
    """The first ``SMALL_STUDY_IMAGES`` held-out digits of the demo model (labelled)."""
    from core.images import ImageSet, demo_digits_set

    split = demo_handle.card["split"]
    full = demo_digits_set(split["seed"], split["test_fraction"])
    return ImageSet.from_images(f"{SMALL_STUDY_IMAGES} digits", full.images[:SMALL_STUDY_IMAGES])


@pytest.fixture(scope="session")
def small_study(demo_handle, small_set):
    """A whole case study of the demo model on a few digits (PCA layout, small map sample): a few seconds."""
    from core.casestudy import CaseSettings, analyze

    settings = CaseSettings(top_k=3, hurt_images=3, max_maps=600, n_clusters=4, curve_steps=4)
    return analyze(demo_handle, small_set, settings, layout_method="pca")
