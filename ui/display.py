"""How images are shown: small inputs (8x8 digits at 32x32) are enlarged with crisp pixels."""

from __future__ import annotations

from PIL import Image


def enlarge_for_display(image: Image.Image, min_side: int = 224) -> Image.Image:
    """Scale up by a whole factor with nearest-neighbour, so each input pixel stays a visible square."""
    factor = -(-min_side // max(1, min(image.size)))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
