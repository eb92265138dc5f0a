"""What a ZIP archive's end records declare, read before :mod:`zipfile` parses anything.

``zipfile.ZipFile`` builds one ``ZipInfo`` per central-directory entry as soon as it
opens an archive, reading as many directory bytes as the end record declares. A small
upload can declare millions of entries, and ``zipfile`` trusts a zip64 end record over
the classic one, so a guard that reads only the classic record is bypassed by an archive
whose classic record claims an empty directory. This module reads every end record an
archive carries (each classic record in the comment window, the zip64 record before its
locator and the one the locator points to) and reports the largest claims, so callers
can refuse before any entry is built; and it names, once, every error reading an archive
can raise, so that no reader of one lets a damaged member through as a crash.
"""

from __future__ import annotations

import re
import struct
import zipfile
import zlib
from dataclasses import dataclass

__all__ = [
    "ARCHIVE_ERRORS", "DeclaredDirectory", "declared_directory", "unsafe_entry_path", "MIN_ENTRY_BYTES",
    "EOCD", "EOCD_FORMAT", "EOCD_SIZE", "LOCATOR", "LOCATOR_SIZE", "ZIP64", "ZIP64_FORMAT", "ZIP64_SIZE",
]

EOCD = b"PK\x05\x06"
EOCD_FORMAT = "<4s4H2LH"  # signature, disk, disk of directory, entries here, entries, size, offset, comment
EOCD_SIZE = struct.calcsize(EOCD_FORMAT)
LOCATOR = b"PK\x06\x07"
_LOCATOR_FORMAT = "<4sLQL"  # signature, disk of the zip64 record, its offset, disks
LOCATOR_SIZE = struct.calcsize(_LOCATOR_FORMAT)
ZIP64 = b"PK\x06\x06"
ZIP64_FORMAT = "<4sQ2H2L4Q"  # signature, size, versions, disks, entries here, entries, size, offset
ZIP64_SIZE = struct.calcsize(ZIP64_FORMAT)
# zipfile searches the last 64 KiB plus one record: one byte more than the longest
# comment, so a record starting that one byte earlier is still found and used by it.
_SEARCH_WINDOW = 1 << 16
# A central-directory entry is a 46-byte fixed header plus its name: the fewest bytes
# that can describe one entry, so ``size // MIN_ENTRY_BYTES`` bounds the entry count.
MIN_ENTRY_BYTES = 46
# What zipfile raises on a damaged or hostile archive, opening it or reading a member: its own
# BadZipFile and LargeZipFile, zlib.error for a corrupt deflate stream, EOFError for a truncated
# one, NotImplementedError for a compression it lacks, RuntimeError for an encrypted member,
# OverflowError, ValueError (UnicodeDecodeError of a name among them) and struct.error for
# fields out of range or cut short, OSError for a seek past the data.
ARCHIVE_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
    OverflowError, ValueError, struct.error, OSError,
)


@dataclass(frozen=True)
class DeclaredDirectory:
    """The largest central directory any end record of an archive declares.

    Attributes:
        entries: Entry count (the larger of "on this disk" and "in total").
        size: Central-directory size in bytes.
    """

    entries: int
    size: int


def _zip64_claims(data: bytes, eocd_start: int) -> list[tuple[int, int]]:
    locator_start = eocd_start - LOCATOR_SIZE
    if locator_start < 0 or data[locator_start : locator_start + 4] != LOCATOR:
        return []
    _, _, record_offset, _ = struct.unpack_from(_LOCATOR_FORMAT, data, locator_start)
    claims = []
    # zipfile reads the record just before the locator; other readers follow the offset.
    for start in {locator_start - ZIP64_SIZE, record_offset}:
        if 0 <= start <= len(data) - ZIP64_SIZE and data[start : start + 4] == ZIP64:
            fields = struct.unpack_from(ZIP64_FORMAT, data, start)
            claims.append((max(fields[6], fields[7]), fields[8]))
    return claims


def declared_directory(data: bytes) -> DeclaredDirectory | None:
    """The largest entry count and directory size the archive's end records declare.

    Every classic end record in the window zipfile searches (64 KiB plus one record) is
    read, with the zip64 records each one leads to, so no record zipfile might use is
    missed. ``None`` when the data has no end record at all (zipfile refuses it anyway).
    """
    window_start = max(0, len(data) - EOCD_SIZE - _SEARCH_WINDOW)
    claims: list[tuple[int, int]] = []
    start = data.find(EOCD, window_start)
    while 0 <= start <= len(data) - EOCD_SIZE:
        fields = struct.unpack_from(EOCD_FORMAT, data, start)
        claims.append((max(fields[3], fields[4]), fields[5]))
        claims.extend(_zip64_claims(data, start))
        start = data.find(EOCD, start + 1)
    if not claims:
        return None
    return DeclaredDirectory(entries=max(c[0] for c in claims), size=max(c[1] for c in claims))


def unsafe_entry_path(path: str) -> bool:
    """An entry name that would escape the folder it is read into: absolute, a drive, or a ``..`` part."""
    parts = re.split(r"[/\\]", path)
    absolute = path.startswith(("/", "\\")) or bool(re.match(r"^[A-Za-z]:", path))
    return absolute or ".." in parts
