"""Image bytes built in memory: plain PNGs, PNGs whose header lies about their size, labelled noise sets."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from core.inputs.images import ImageSet, decode_image


def encode(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def solid(color: tuple[int, int, int], size: tuple[int, int] = (16, 16)) -> Image.Image:
    return Image.new("RGB", size, color)


def png(color: tuple[int, int, int] = (10, 200, 30), size: tuple[int, int] = (16, 16)) -> bytes:
    return encode(solid(color, size))


def with_ihdr_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` while its pixel data stays tiny."""
    assert data[12:16] == b"IHDR"
    body = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:16] + body + crc + data[33:]


def labelled_noise(count: int, side: int = 32, seed: int = 0) -> ImageSet:
    """Noise images whose brightness depends on their label ``i % 3``, so a probe has something to learn."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        pixels = np.clip(rng.normal(60 + 60 * (i % 3), 40, (side, side, 3)), 0, 255).astype(np.uint8)
        images.append(decode_image(encode(Image.fromarray(pixels)), f"noise-{i}", label=i % 3))
    return ImageSet.from_images(f"{count} labelled noise images", images)
