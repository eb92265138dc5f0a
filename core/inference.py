"""Classifying an image set: predictions and final features, streamed in batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core._hooks import capture_head_input, locked_forward
from core._memory import out_of_memory_as_sentence
from core.model import ViTHandle
from core.settings import images_per_batch

__all__ = [
    "Predictions",
    "Progress",
    "predict_images",
    "top_k",
]

Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass(frozen=True)
class Predictions:
    """Per-image outputs of the unmodified model.

    Attributes:
        logits: ``[N, classes]`` classifier outputs.
        features: ``[N, D]`` the classifier's input (final CLS / pooled features).
    """

    logits: np.ndarray
    features: np.ndarray

    @property
    def probs(self) -> np.ndarray:
        """``[N, classes]`` softmax probabilities."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        return e / e.sum(axis=1, keepdims=True)

    @property
    def predicted(self) -> np.ndarray:
        """``[N]`` top-1 class index."""
        return self.logits.argmax(axis=1)


@out_of_memory_as_sentence
def predict_images(
    handle: ViTHandle,
    images: Sequence[Image.Image],
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> Predictions:
    """Run the model over ``images`` in batches, preprocessing each batch just in time.

    ``batch_size`` caps the batch (see ``core.settings.images_per_batch``).
    """
    batch_size = images_per_batch(handle, batch_size)
    logits: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        x = handle.preprocess(images[start:start + batch_size])
        store: dict[str, torch.Tensor] = {}
        out = locked_forward(handle, x, lambda hooks: capture_head_input(hooks, handle.model, store))
        logits.append(out.float().cpu())
        features.append(store["features"].float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    if not logits:
        raise ValueError("predict_images needs at least one image")
    return Predictions(logits=torch.cat(logits).numpy(), features=torch.cat(features).numpy())


def top_k(probs: np.ndarray, class_names: Sequence[str], k: int = 5) -> pd.DataFrame:
    """The ``k`` most probable classes of one probability vector: columns rank, class, probability."""
    order = np.argsort(-probs, kind="stable")[:k]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "class": [class_names[i] for i in order],
            "class_index": order,
            "probability": probs[order].astype(float),
        }
    )
