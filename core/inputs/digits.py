"""scikit-learn's handwritten digits, rendered exactly as the demo model sees them.

The training script and the app's demo image set both go through these functions,
so the held-out images the dashboard shows are the pixels the model was tested on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "CLASS_NAMES",
    "DIGIT_SIZE",
    "DigitsSplit",
    "digit_images",
    "digits_split",
    "render_digit",
]

DIGIT_SIZE = 32  # rendered side in pixels: 8x8 digits upscaled 4x, so 4-pixel patches give an 8x8 grid
CLASS_NAMES = [str(d) for d in range(10)]


@dataclass(frozen=True)
class DigitsSplit:
    """Indices into ``load_digits()`` for the train and held-out parts."""

    train: np.ndarray
    test: np.ndarray


def render_digit(values: np.ndarray) -> Image.Image:
    """Render one 8x8 digit (ink 0..16) as a 32x32 greyscale image, white ink on black."""
    pixels = np.clip(np.rint(np.asarray(values, dtype=np.float64) * (255.0 / 16.0)), 0, 255)
    small = Image.fromarray(pixels.astype(np.uint8), mode="L")
    return small.resize((DIGIT_SIZE, DIGIT_SIZE), Image.Resampling.BILINEAR)


def digits_split(seed: int, test_fraction: float) -> DigitsSplit:
    """Stratified train/held-out split of the 1,797 digits, fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=seed, stratify=labels
    )
    return DigitsSplit(train=np.sort(train), test=np.sort(test))


def digit_images(indices: np.ndarray) -> tuple[list[Image.Image], list[int]]:
    """The rendered images and labels of the given digit indices, in that order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [render_digit(digits.images[i]) for i in indices]
    labels = [int(digits.target[i]) for i in indices]
    return images, labels
