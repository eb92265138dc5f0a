"""Image bytes built in memory: plain PNGs and PNGs whose header lies about their size."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


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
