"""Inference, 2-D layout and the overview charts (pure functions, no streamlit)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.measures.inference import predict_images, top_k
from core.measures.projection import layout_2d
from ui.display import enlarge_for_display
from viz.overview import OVERVIEW_SELECTION, overview_chart, top5_chart


def test_predictions_match_the_model_and_report_progress(tiny_handle) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    seen: list[tuple[int, int]] = []
    preds = predict_images(tiny_handle, images, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    x = tiny_handle.preprocess(images)
    with torch.no_grad():
        features = tiny_handle.model.forward_head(tiny_handle.model.forward_features(x), pre_logits=True)
        logits = tiny_handle.model(x)
    np.testing.assert_allclose(preds.logits, logits.numpy(), atol=1e-5)
    np.testing.assert_allclose(preds.features, features.numpy(), atol=1e-5)
    np.testing.assert_allclose(preds.probs.sum(axis=1), 1.0, atol=1e-6)
    assert (preds.predicted == logits.argmax(1).numpy()).all()


def test_top_k_is_sorted_and_named() -> None:
    top = top_k(np.array([0.1, 0.5, 0.05, 0.3, 0.05]), ["a", "b", "c", "d", "e"], k=3)
    assert list(top["class"]) == ["b", "d", "a"]
    assert list(top["rank"]) == [1, 2, 3]


def test_layout_handles_tiny_and_degenerate_sets() -> None:
    assert layout_2d(np.zeros((0, 4))).shape == (0, 2)
    assert layout_2d(np.ones((1, 4))).shape == (1, 2)
    same = layout_2d(np.ones((6, 4)), "umap")
    assert len({tuple(p) for p in same}) == 6  # identical features still give distinct, visible points
    two_clusters = np.concatenate([np.zeros((10, 8)), np.full((10, 8), 5.0)]) + np.random.default_rng(0).normal(0, 0.01, (20, 8))
    xy = layout_2d(two_clusters, "pca")
    assert np.sign(xy[:10, 0]).tolist() != np.sign(xy[10:, 0]).tolist()
    assert np.abs(xy[:10, 0].mean() - xy[10:, 0].mean()) > 1.0


def _points() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": [0.0, 1.0, 2.0],
            "y": [0.0, 1.0, 0.5],
            "id": ["a", "b", "c"],
            "name": ["a.png", "b.png", "c.png"],
            "class": ["cat", "dog", "cat"],
            "label": ["cat", "dog", ""],
            "predicted": ["cat", "cat", "cat"],
            "probability": [0.9, 0.4, 0.7],
            "wrong": [False, True, False],
        }
    )


def test_overview_chart_encodes_class_probability_and_focus() -> None:
    spec = overview_chart(_points(), focus_id="b").to_dict()
    dots, ring = spec["layer"]
    assert dots["encoding"]["color"]["field"] == "class"
    assert dots["encoding"]["size"]["field"] == "probability"
    assert dots["encoding"]["opacity"]["field"] == "probability"
    assert {"id", "probability"} <= {t["field"] for t in dots["encoding"]["tooltip"]}
    assert OVERVIEW_SELECTION in [p["name"] for p in spec["params"]]
    ring_rows = spec["datasets"][ring["data"]["name"]]
    assert [row["id"] for row in ring_rows] == ["b"]


def test_overview_scales_fit_the_points_not_zero() -> None:
    """Layout coordinates are arbitrary (UMAP gives e.g. 12 to 16): a domain from zero would squeeze the dots into a corner."""
    dots = overview_chart(_points(), focus_id=None).to_dict()["layer"][0]["encoding"]
    assert dots["x"]["scale"]["zero"] is False and dots["y"]["scale"]["zero"] is False


def test_top5_chart_orders_by_rank() -> None:
    top = top_k(np.array([0.2, 0.7, 0.1]), ["x", "y", "z"], k=3)
    enc = top5_chart(top).to_dict()["encoding"]
    assert enc["x"]["field"] == "probability" and enc["y"]["sort"]["field"] == "rank"


def test_small_images_are_enlarged_with_crisp_pixels() -> None:
    image = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("RGB")
    big = enlarge_for_display(image, min_side=10)
    assert big.size == (10, 10)
    assert set(np.asarray(big)[..., 0].ravel().tolist()) == {0, 255}  # nearest-neighbour: no blur
    photo = Image.new("RGB", (400, 300))
    assert enlarge_for_display(photo) is photo
