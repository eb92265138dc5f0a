"""The home page's image overview (view A): one dot per image, laid out by its features.

The predictions and features are the set's first pass (``ui.results.preview``), which every
view reads: the overview runs no forward pass of its own. The layout is UMAP once it has
compiled in this process (``core.measures.projection``, read at each call), PCA until then.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.inputs.images import ImageSet
from core.measures import projection
from core.measures.inference import Predictions
from core.models.handle import ViTHandle

__all__ = ["NO_LABEL", "overview_points", "umap_pending"]


def umap_pending() -> bool:
    """UMAP is still compiling: the overview shows PCA for now and refreshes when it is done."""
    return not projection.umap_ready() and not projection.umap_failed()


@st.cache_data(max_entries=16, show_spinner="Laying out the images…")
def _layout(model_key: str, set_key: str, method: str, _features: np.ndarray) -> np.ndarray:
    return projection.layout_2d(_features, method)  # type: ignore[arg-type]


NO_LABEL = "no label"  # a backbone's overview: the colour of images without a label


def overview_points(handle: ViTHandle, image_set: ImageSet, preds: Predictions) -> tuple[pd.DataFrame, str]:
    """The overview's table (one row per image) and the layout method used.

    Columns x, y, id, name, class (what colours the dot), label ("" when unknown) and,
    for a classifier, predicted, probability (of the predicted class) and wrong. A
    classifier's class is the label when known, else the prediction; a backbone
    predicts nothing, so its class is the label, or ``NO_LABEL``.
    """
    method = "umap" if projection.umap_ready() else "pca"
    xy = _layout(handle.key, image_set.key, method, preds.features)
    names = handle.class_names
    if not handle.is_backbone:
        probs, predictions = preds.probs, preds.predicted  # each a pass over the whole set: once
    rows = []
    for i, image in enumerate(image_set.images):
        label = image_set.label_text(image.label, names)
        row = {"x": float(xy[i, 0]), "y": float(xy[i, 1]), "id": image.id, "name": image.name, "label": label}
        if handle.is_backbone:
            row["class"] = label or NO_LABEL
        else:
            predicted = int(predictions[i])
            row |= {
                "class": label or names[predicted],
                "predicted": names[predicted],
                "probability": float(probs[i, predicted]),
                "wrong": image.label is not None and image.label != predicted,
            }
        rows.append(row)
    return pd.DataFrame(rows), method
