"""AppTest of the attention patterns page (view D) on the demo model, and the page's cache keys."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pandas as pd
from streamlit.testing.v1 import AppTest

from core.errors import UnsupportedMapKind
from core.measures.projection import wait_for_umap
from helpers.app import captions
from helpers.data import APP
from ui import patterns

TIMEOUT = 300
PAGE = "pages/3_Attention_Patterns.py"
SMALL_SAMPLE = 2_000  # the smallest choice on the page: keeps each training to a few seconds


def _open(monkeypatch, *, umap: str, polls: list[int] | None = None) -> AppTest:
    """The page on the demo samples; ``umap`` is "failed", or "late": ready after a few polls (counted in ``polls``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if umap == "failed":
        monkeypatch.setattr(patterns, "umap_ready", lambda: False)
        monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    else:
        counted = polls if polls is not None else []

        def ready() -> bool:
            counted.append(1)
            return len(counted) > 4

        monkeypatch.setattr(patterns, "umap_ready", ready)
        monkeypatch.setattr(patterns, "umap_failed", lambda: False)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    at.session_state["pattern_max_maps"] = SMALL_SAMPLE
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def _specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]


def test_toggles_switch_maps_and_background_with_the_pca_fallback(monkeypatch) -> None:
    at = _open(monkeypatch, umap="failed")
    text = captions(at)
    assert "D1 · 1,980 patch maps from 36 heads and 360 images, laid out by PCA" in text
    assert "UMAP is unavailable in this server process, so the latent codes are laid out with PCA." in text
    specs = _specs(at)
    assert len(specs) == 5  # D1, the cluster prototypes, D3, D4, D5
    assert specs[0]["layer"][0]["mark"]["type"] == "rect"  # density
    assert specs[1]["spec"]["encoding"]["x"]["title"].startswith("dx")  # centred patch-map prototypes
    assert len(at.dataframe[0].value) == 6  # one row per cluster

    at.toggle(key="pattern_scatter").set_value(True).run()
    assert not at.exception and not at.error
    assert _specs(at)[0]["layer"][0]["mark"]["type"] == "circle"  # points coloured by layer

    at.toggle(key="pattern_cls").set_value(True).run()
    assert not at.exception and not at.error
    assert "D1 · 1,980 CLS maps from 36 heads and 360 images" in captions(at)
    assert _specs(at)[1]["spec"]["encoding"]["x"]["title"] == "col"

    at.slider(key="pattern_clusters").set_value(3).run()
    assert not at.exception and len(at.dataframe[0].value) == 3


def test_focus_head_source_target_and_threshold_drive_d2_to_d5(monkeypatch) -> None:
    at = _open(monkeypatch, umap="failed")
    assert "D2 · p36 (4,4) → p36 (4,4)" in captions(at)  # the centre patch of the 8x8 grid
    at.selectbox(key="pattern_source").set_value(0).run()
    at.selectbox(key="pattern_target").set_value(9).run()
    assert not at.exception and not at.error
    assert "D2 · CLS → p8 (1,0)" in captions(at)
    image_captions = [c for image in at.main.image for c in image.captions]
    assert image_captions == ["What the model sees", "Attention of CLS (orange); source boxed red, target blue"]

    at.slider(key="pattern_threshold").set_value(0.5).run()
    text = captions(at)
    assert "reach the threshold 0.50" in text
    d3, d5 = _specs(at)[2], _specs(at)[4]
    assert d3["title"]["subtitle"].endswith("links with weight ≥ 0.50")
    assert d5["layer"][1]["mark"]["type"] == "rule"

    at.selectbox(key="focus_layer").set_value(4).run()
    at.selectbox(key="focus_head").set_value(1).run()
    assert not at.exception and not at.error
    assert "Focus head L4H1 on the focus image" in [s.value for s in at.subheader]
    assert "focus head L4H1 ringed" in _specs(at)[0]["title"]["subtitle"]


def test_page_waits_for_umap_then_lays_out_with_it(monkeypatch) -> None:
    """The one app test that needs UMAP compiled (about 40 s in a fresh process)."""
    assert wait_for_umap(timeout=600)
    polls: list[int] = []
    at = _open(monkeypatch, umap="late", polls=polls)
    assert len(polls) > 4  # the page kept polling rather than falling back to PCA
    assert "laid out by UMAP of their autoencoder codes" in captions(at)
    assert "PCA" not in captions(at)


def test_a_failing_analysis_explains_itself_and_the_rest_of_the_page_works(monkeypatch) -> None:
    def refuse(*_args, **_kwargs):
        raise UnsupportedMapKind("This model has no CLS token, so it has no CLS maps; use patch maps instead.")

    monkeypatch.setattr(patterns, "sample_maps", refuse)
    patterns._space.clear()
    at = _open(monkeypatch, umap="failed")
    assert [w.value for w in at.warning] == ["This model has no CLS token, so it has no CLS maps; use patch maps instead."]
    assert "D4 · the full token × token attention" in captions(at)


# --- cache keys ------------------------------------------------------------------------


def test_cached_functions_key_on_hashes_and_plain_parameters_only() -> None:
    for fn in (patterns._space, patterns._layout, patterns._clusters, patterns._image_attention):
        params = inspect.signature(fn).parameters
        keyed = {name: p.annotation for name, p in params.items() if not name.startswith("_")}
        assert set(keyed.values()) <= {"str", "int", "MapKind", "Method"}, (fn.__name__, keyed)  # the last two: Literals of str


def test_same_model_set_and_parameters_hit_the_cache(monkeypatch) -> None:
    calls: list[tuple] = []

    def fake_sample(handle, x, **kwargs):
        calls.append(("sample", kwargs["kind"], kwargs["max_maps"]))
        return "sample"

    def fake_train(sample, **kwargs):
        return pd.DataFrame({"trained": [len(calls)]})

    class FakeHandle:
        device = "cpu"

        def __init__(self, marker: float) -> None:
            self.marker = marker

        def preprocess(self, images):
            return np.full((len(images), 1), self.marker)

    class FakeSet:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

        def pil_images(self) -> list:
            return [None] * self.n

    monkeypatch.setattr(patterns, "sample_maps", fake_sample)
    monkeypatch.setattr(patterns, "train_autoencoder", fake_train)
    patterns._space.clear()
    first = patterns._space("model-a", "set-a", "patch", 2000, 0, FakeHandle(1.0), FakeSet(3), None)
    # other objects behind the same hashes (arrays are never part of the key): a hit
    again = patterns._space("model-a", "set-a", "patch", 2000, 0, FakeHandle(2.0), FakeSet(5), None)
    assert len(calls) == 1 and again.equals(first)
    patterns._space("model-a", "set-a", "patch", 5000, 0, FakeHandle(1.0), FakeSet(3), None)
    patterns._space("model-a", "set-a", "cls", 2000, 0, FakeHandle(1.0), FakeSet(3), None)
    patterns._space("model-b", "set-a", "patch", 2000, 0, FakeHandle(1.0), FakeSet(3), None)
    patterns._space("model-a", "set-b", "patch", 2000, 0, FakeHandle(1.0), FakeSet(3), None)
    assert len(calls) == 5
    assert calls[1:3] == [("sample", "patch", 5000), ("sample", "cls", 2000)]
    patterns._space.clear()
