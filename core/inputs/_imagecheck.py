"""Bounds on the structures an image decoder walks, checked on the raw bytes before it runs.

Pillow walks JPEG header segments, PNG chunks, GIF extension blocks, TIFF tags and RLE
BMP codes in Python, and libjpeg re-reads the whole coefficient buffer once per
progressive scan, so a small file can cost minutes of a core or gigabytes of memory
while its pixel count stays under the cap. Each check here raises an
:class:`ImageRejected` naming the file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator

from PIL import Image

from core.errors import ImageRejected, human_size

__all__ = ["check_structure", "check_exif"]

# Each unbounded path was measured at 1-10 s per few MB here. Every bound below is far
# above what an encoder writes and keeps the worst case under a second.

# libjpeg re-reads every block once per scan, so decoding time is scans x pixels
# (1.2 ms per scan at 16 megapixels here). Encoders write 6-20 scans per picture and
# libtiff refuses JPEG streams of over 100; the count here is of every SOS marker in the
# file, thumbnails and the extra pictures of an MPO included, hence the headroom.
_MAX_JPEG_SCANS = 256
# Segments before the first scan are parsed by Pillow in Python (about 4 us each);
# camera files carry a few dozen, and multi-megabyte extended XMP a few hundred.
_MAX_JPEG_HEADER_SEGMENTS = 4096
# Fill and junk bytes between header segments are skipped by Pillow one at a time.
_MAX_JPEG_PADDING_BYTES = 2**20
# Pillow reads each chunk in Python; encoders write 8-64 KiB of pixel data per chunk.
_MAX_PNG_CHUNKS = 100_000
# Extension sub-blocks (and stray bytes) before the first GIF frame are read in Python.
_MAX_GIF_HEADER_BLOCKS = 100_000
# Pillow decodes RLE BMPs in Python, one code per loop, about 0.35 s per MiB here.
_MAX_BMP_RLE_BYTES = 2 * 2**20
_BMP_RLE_COMPRESSIONS = (1, 2)
# Any non-byte TIFF tag may be unpacked value by value in Python (rotating a picture
# re-encodes every tag); the largest honest one, a 16-bit colour map, has 196,608.
_MAX_TIFF_TAG_VALUES = 2**18
# libtiff allocates one whole tile or strip before decoding it, whatever the image size.
# A tile may overhang a small image (256x256 tiles for a 64x64 picture are normal), so
# tiles up to this many pixels pass whatever the image size; larger ones must not be
# larger than the image itself.
_MIN_TILE_BUDGET_PIXELS = 2**20
# Camera EXIF fits in one 64 KiB JPEG segment; PNG and WebP can carry any size, and
# applying the orientation re-encodes every tag in Python.
_MAX_EXIF_BYTES = 2**20
_MAX_TIFF_SAMPLES = 8
_TIFF_OFFSET_TAGS = {273: 279, 324: 325}  # strip/tile offsets and their byte counts
_TIFF_BYTE_TYPES = frozenset({1, 2, 6, 7})  # BYTE, ASCII, SBYTE, UNDEFINED stay bytes
_TIFF_INT_FORMATS = {3: "H", 4: "L", 8: "h", 9: "l", 16: "Q", 17: "q"}
_JPEG_STANDALONE_MARKERS = frozenset({0x00, 0x01, *range(0xD0, 0xDA)})
_FILL_BYTES = re.compile(rb"\xff+")
_GIF_JUNK = re.compile(rb"[^!,;]+")


def _too_complex(display: str, what: str, limit: int) -> ImageRejected:
    return ImageRejected(
        f"{display} {what}; the limit is {limit:,}, so save it again with a standard "
        "image editor."
    )


def _check_jpeg(display: str, data: bytes) -> None:
    """Bound the scans libjpeg will decode and the header segments Pillow will walk."""
    # Entropy-coded data stuffs every 0xFF with 0x00, so each real SOS marker appears
    # in this count: it can over-count (bytes inside metadata) but never under-count.
    scans = data.count(b"\xff\xda")
    if scans > _MAX_JPEG_SCANS:
        raise _too_complex(display, f"is a JPEG with {scans:,} scans", _MAX_JPEG_SCANS)
    # Mirrors Pillow's header loop up to the first scan, which it walks in Python.
    pos, segments, padding = 2, 0, 0
    while pos + 1 < len(data):
        if data[pos] != 0xFF:
            following = data.find(b"\xff", pos)
            following = len(data) if following < 0 else following
            padding += following - pos
            pos = following
        else:
            last_fill = _FILL_BYTES.match(data, pos).end() - 1  # type: ignore[union-attr]
            padding += last_fill - pos
            pos = last_fill
            if pos + 1 >= len(data):
                break
            marker = data[pos + 1]
            segments += 1
            if marker == 0xDA:
                break
            if marker in _JPEG_STANDALONE_MARKERS:
                pos += 2
            else:
                # Pillow reads lengths below 2 as empty segments.
                pos += 2 + max(int.from_bytes(data[pos + 2 : pos + 4], "big"), 2)
        if segments > _MAX_JPEG_HEADER_SEGMENTS:
            raise _too_complex(
                display, "is a JPEG with too many header segments", _MAX_JPEG_HEADER_SEGMENTS
            )
        if padding > _MAX_JPEG_PADDING_BYTES:
            raise ImageRejected(
                f"{display} is a JPEG with more than {human_size(_MAX_JPEG_PADDING_BYTES)} "
                "of padding between its segments; save it again with a standard image editor."
            )


def _check_png(display: str, data: bytes) -> None:
    """Bound the chunks Pillow will read, pixel data and metadata alike."""
    pos, chunks = 8, 0
    while pos + 8 <= len(data):
        chunks += 1
        if chunks > _MAX_PNG_CHUNKS:
            raise _too_complex(display, "is a PNG made of too many chunks", _MAX_PNG_CHUNKS)
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + int.from_bytes(data[pos : pos + 4], "big")


def _check_gif(display: str, data: bytes) -> None:
    """Bound the blocks and stray bytes Pillow walks before the first frame."""
    if len(data) < 13:
        return
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while pos < len(data) and data[pos] not in b",;":
        if data[pos] == ord("!"):
            pos += 2  # introducer and label, then sub-blocks until an empty one
            while pos < len(data):
                size = data[pos]
                blocks += 1
                pos += 1 + size
                if size == 0 or blocks > _MAX_GIF_HEADER_BLOCKS:
                    break
        else:
            junk = _GIF_JUNK.match(data, pos).end()  # type: ignore[union-attr]
            blocks += junk - pos
            pos = junk
        if blocks > _MAX_GIF_HEADER_BLOCKS:
            raise _too_complex(
                display, "is a GIF with too many blocks before its first frame",
                _MAX_GIF_HEADER_BLOCKS,
            )


def _check_bmp(display: str, data: bytes) -> None:
    """Bound the run-length data Pillow's Python decoder would loop over."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return
    compression = int.from_bytes(data[30:34], "little")
    payload = len(data) - int.from_bytes(data[10:14], "little")
    if compression in _BMP_RLE_COMPRESSIONS and payload > _MAX_BMP_RLE_BYTES:
        raise ImageRejected(
            f"{display} is a run-length compressed BMP with {human_size(payload)} of "
            f"pixel data; the limit is {human_size(_MAX_BMP_RLE_BYTES)}, so save it as PNG."
        )


def _tiff_entries(data: bytes) -> Iterator[tuple[int, int, int, int | None]]:
    """``(tag, type, count, first value)`` of each entry of the first IFD, as Pillow reads it.

    The first value is ``None`` for non-integer types and values outside the file.
    """
    endian = ">" if data[:2] == b"MM" else "<"
    (version,) = struct.unpack_from(endian + "H", data, 2)
    bigtiff = version == 43  # the version number is in the file's byte order too
    head, entry, inline = ("Q", "HHQ8s", 8) if bigtiff else ("H", "HHL4s", 4)
    (ifd,) = struct.unpack_from(endian + ("Q" if bigtiff else "L"), data, 8 if bigtiff else 4)
    (count,) = struct.unpack_from(endian + head, data, ifd)
    first_entry = ifd + struct.calcsize(endian + head)
    entry_size = struct.calcsize(endian + entry)
    for index in range(min(count, (len(data) - first_entry) // entry_size)):
        tag, typ, values, field = struct.unpack_from(endian + entry, data, first_entry + index * entry_size)
        first: int | None = None
        fmt = _TIFF_INT_FORMATS.get(typ)
        if fmt is not None and values:
            size = struct.calcsize(endian + fmt)
            if size * values <= inline:
                first = struct.unpack_from(endian + fmt, field)[0]
            else:
                (where,) = struct.unpack(endian + ("Q" if bigtiff else "L"), field)
                if where + size <= len(data):
                    first = struct.unpack_from(endian + fmt, data, where)[0]
        yield tag, typ, values, first


def _check_tiff(display: str, data: bytes) -> None:
    """Bound the first IFD's tag sizes, strip and tile counts, and tile size.

    Only the first frame is ever decoded, and Pillow reads only its IFD to open it.
    """
    try:
        entries = list(_tiff_entries(data))
    except struct.error:
        return  # Pillow refuses a header or IFD that does not fit in the file
    counts = {tag: values for tag, _, values, _ in entries}
    first = {tag: value for tag, _, _, value in entries if value is not None}
    for tag, typ, values, _ in entries:
        if typ not in _TIFF_BYTE_TYPES and tag not in (*_TIFF_OFFSET_TAGS, *_TIFF_OFFSET_TAGS.values()):
            if values > _MAX_TIFF_TAG_VALUES:
                raise _too_complex(
                    display, f"has a TIFF tag of {values:,} values", _MAX_TIFF_TAG_VALUES
                )
    width, height = first.get(256), first.get(257)
    if not width or not height or width < 0 or height < 0:
        return  # Pillow refuses a TIFF without a size
    # Pillow has no mode for more samples than this, so it refuses such files anyway.
    samples = min(max(first.get(277, 1), 1), _MAX_TIFF_SAMPLES)
    if 322 in counts or 323 in counts:
        tile_width, tile_height = max(first.get(322, 1), 1), max(first.get(323, 1), 1)
        if tile_width * tile_height > max(width * height, _MIN_TILE_BUDGET_PIXELS):
            raise ImageRejected(
                f"{display} is {width}x{height} pixels but stores them in tiles of "
                f"{tile_width}x{tile_height}; save it again with a standard image editor."
            )
        units = -(-width // tile_width) * -(-height // tile_height) * samples
    else:
        # A strip never holds more rows than the image: readers clamp RowsPerStrip to the
        # height (writers often store 2**32 - 1), so its buffer is at most the image's.
        rows = min(max(first.get(278, height), 1), height)
        units = -(-height // rows) * samples
    for offsets, byte_counts in _TIFF_OFFSET_TAGS.items():
        declared = max(counts.get(offsets, 0), counts.get(byte_counts, 0))
        if declared > units:
            raise ImageRejected(
                f"{display} lists {declared:,} strips or tiles where its size allows "
                f"{units:,}; save it again with a standard image editor."
            )


def check_structure(display: str, data: bytes) -> None:
    """Refuse files whose structure would cost far more to parse than their size suggests.

    Dispatches on the same magic bytes Pillow's openers accept, so no file reaches a
    decoder without its check.
    """
    if data.startswith(b"\xff\xd8\xff"):
        _check_jpeg(display, data)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png(display, data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif(display, data)
    elif data.startswith(b"BM"):
        _check_bmp(display, data)
    elif data.startswith((b"MM\x00\x2a", b"II\x2a\x00", b"MM\x2a\x00", b"II\x00\x2a",
                          b"MM\x00\x2b", b"II\x2b\x00")):
        _check_tiff(display, data)


def check_exif(display: str, img: Image.Image) -> None:
    """Refuse EXIF blocks too large to re-encode when the orientation is applied."""
    exif = img.info.get("exif")
    if isinstance(exif, bytes) and len(exif) > _MAX_EXIF_BYTES:
        raise ImageRejected(
            f"{display} carries {human_size(len(exif))} of EXIF metadata; the limit is "
            f"{human_size(_MAX_EXIF_BYTES)}, so save it again without the metadata."
        )
