"""Shared fixtures and helpers of every test tier.

Tiers (folders, each with its marker, registered in pytest.ini): ``unit`` (core and
chart functions, no app), ``app`` (pages driven in-process by Streamlit's AppTest),
``browser`` (a real server and headless Chromium). ``make test`` runs all three;
``pytest -m unit`` runs one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest
from timm.models.vision_transformer import VisionTransformer

from core.models.handle import ViTHandle, wrap_model

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
DATA = Path(__file__).resolve().parent / "data"
TIERS = ("unit", "app", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier its folder names."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


# float32 kernels differ between CPUs (their vector widths block the sums differently): the
# same computation agrees to about 1e-7 across machines, and a changed one moves far more
ACROSS_CPUS = dict(rtol=1e-4, atol=1e-6)


def started_app(monkeypatch: pytest.MonkeyPatch, timeout: float) -> AppTest:
    """The home page run once offline, without an exception."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.run()
    assert not at.exception, at.exception
    return at


def notice_texts(at: AppTest) -> str:
    """Markdown, captions and notices of a run page, as a reader sees them (names unescaped)."""
    from test_markdown import shown

    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in ("error", "warning", "success", "info"):
        parts += [e.value for e in getattr(at, kind)]
    return shown("\n".join(str(p) for p in parts))


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def chart_specs(at: AppTest) -> list[tuple[dict, dict[str, pd.DataFrame]]]:
    """Each rendered chart's Vega-Lite spec and its datasets by name."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    return [
        (json.loads(c.proto.spec), {d.name: convert_arrow_bytes_to_pandas_df(d.data.data) for d in c.proto.datasets})
        for c in at.get("vega_lite_chart")
    ]


def tiny_vit(**overrides) -> VisionTransformer:
    """A few-thousand-parameter ViT; overrides go to ``VisionTransformer``."""
    args = dict(img_size=32, patch_size=8, in_chans=3, num_classes=5, embed_dim=24, depth=3, num_heads=3, mlp_ratio=2.0)
    args.update(overrides)
    torch.manual_seed(0)
    return VisionTransformer(**args)


@pytest.fixture(autouse=True)
def _heavy_stages_start_on_their_own(monkeypatch):
    """Pages analyse at once whatever the machine's speed: on a loaded CI machine the demo's
    360 images can be estimated above the one-minute auto-start budget, and every page would
    wait for Start. The tests of that wait (``test_app_stages.py``) set the budget themselves."""
    import ui.session

    monkeypatch.setattr(ui.session, "AUTO_START_SECONDS", float("inf"))


@pytest.fixture(scope="session", autouse=True)
def _umap_warmup_ends_before_exit():
    """App tests start UMAP's background compilation; let it finish before the interpreter exits."""
    yield
    from core.measures.projection import join_umap_warmup

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
    from core.models.load import load_model

    return load_model("demo", device="cpu")


SMALL_STUDY_IMAGES = 24


@pytest.fixture(scope="session")
def small_set(demo_handle):
    """The first ``SMALL_STUDY_IMAGES`` held-out digits of the demo model (labelled)."""
    from core.inputs.images import ImageSet, demo_digits_set

    split = demo_handle.card["split"]
    full = demo_digits_set(split["seed"], split["test_fraction"])
    return ImageSet.from_images(f"{SMALL_STUDY_IMAGES} digits", full.images[:SMALL_STUDY_IMAGES])


@pytest.fixture(scope="session")
def small_study(demo_handle, small_set):
    """A whole case study of the demo model on a few digits (PCA layout, small map sample): a few seconds."""
    from core.study.casestudy import CaseSettings, analyze

    settings = CaseSettings(top_k=3, hurt_images=3, max_maps=600, n_clusters=4, curve_steps=4)
    return analyze(demo_handle, small_set, settings, layout_method="pca")
