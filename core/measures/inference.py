"""Classifying an image set: predictions and final features, streamed in batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.models.handle import ViTHandle
from core.models.hooks import HookSet, capture_head_input, locked_forward
from core.models.memory import out_of_memory_as_sentence
from core.models.probe import readout_features
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
        probe_input: ``[N, F]`` a backbone's linear-probe input (``core.models.probe.readout_features``),
            when the pass that made these predictions read it; else ``None``.
    """

    logits: np.ndarray
    features: np.ndarray
    probe_input: np.ndarray | None = None

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
    model = handle.model
    logits: list[torch.Tensor] = []
    features: list[torch.Tensor] = []
    probe_input: list[torch.Tensor] = []

    def install(store: dict[str, torch.Tensor]) -> Callable[[HookSet], None]:
        def keep_probe_input(_m: torch.nn.Module, _i: object, output: torch.Tensor) -> None:
            # read in the hook, under the model's lock as every use of its modules is; returns None,
            # which leaves the block's output as it is
            store.setdefault("probe", readout_features(model, output))

        def hooks_for(hooks: HookSet) -> None:
            capture_head_input(hooks, model, store)
            if handle.is_backbone:  # the last block's tokens give the linear probe's input
                hooks.forward(model.blocks[-1], keep_probe_input)

        return hooks_for

    for start in range(0, len(images), batch_size):
        x = handle.preprocess(images[start:start + batch_size])
        store: dict[str, torch.Tensor] = {}
        out = locked_forward(handle, x, install(store))
        logits.append(out.float().cpu())
        features.append(store["features"].float().cpu())
        if "probe" in store:
            probe_input.append(store["probe"].float().cpu())
        if progress is not None:
            progress(min(start + batch_size, len(images)), len(images))
    if not logits:
        raise ValueError("predict_images needs at least one image")
    return Predictions(
        logits=torch.cat(logits).numpy(),
        features=torch.cat(features).numpy(),
        probe_input=torch.cat(probe_input).numpy() if probe_input else None,
    )


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
