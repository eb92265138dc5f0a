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

:func:`open_archive` is the one way HeadScope opens a ZIP (image uploads, bundles, PyTorch
checkpoints, transformers folders, the DINOv2 wheel): it checks the end records against the
caller's limits, refuses unsafe names, encryption and any method but stored or deflate, reads
every member with a byte cap, and turns every error of :data:`ARCHIVE_ERRORS` into the
caller's own sentence (:class:`ArchiveWording`). What a member may be, and how many bytes
it may hold, stays with the caller.
"""

from __future__ import annotations

import io
import mmap
import re
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from core.errors import HeadScopeError

__all__ = [
    "ARCHIVE_ERRORS", "ArchiveWording", "CheckedArchive", "open_archive", "DeclaredDirectory", "declared_directory", "unsafe_entry_path", "MIN_ENTRY_BYTES",
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


_ENCRYPTED = 0x1  # general-purpose flag bit 0
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # zipfile inflates bzip2 and LZMA without a bound on the output


@dataclass(frozen=True)
class ArchiveWording:
    """How one caller refuses an archive: the error class it raises and the sentence for each fault.

    Sentences about a member are functions of its name as the archive stores it, so each
    caller shortens or sanitises the name as its users know it.

    Attributes:
        error: The caller's error class (``ImageRejected``, ``BundleRejected``, ...).
        unreadable: The data is not a ZIP, is truncated, or its directory is damaged.
        too_many: The end records declare more entries or directory bytes than the caller allows.
        unsafe_name: A member's path escapes the folder it would be read into, or breaks the caller's rule.
        encrypted: A member is encrypted.
        unsupported_method: A member is compressed with a method other than stored or deflate.
        damaged: A member's bytes cannot be read (a corrupt or truncated stream, a wrong CRC).
        too_large: A member inflates beyond the cap it is read with (name, cap in bytes).
        empty: The data is empty; ``None`` says ``unreadable``.
        duplicate: Two members share a name; ``None`` lets an archive repeat one (each entry is read on its own).
    """

    error: type[HeadScopeError]
    unreadable: str
    too_many: Callable[[DeclaredDirectory], str]
    unsafe_name: Callable[[str], str]
    encrypted: Callable[[str], str]
    unsupported_method: Callable[[str], str]
    damaged: Callable[[str], str]
    too_large: Callable[[str, int], str]
    empty: str | None = None
    duplicate: Callable[[str], str] | None = None

    @classmethod
    def one_sentence(
        cls, error: type[HeadScopeError], sentence: str, *, too_many: Callable[[DeclaredDirectory], str] | None = None
    ) -> ArchiveWording:
        """The same ``sentence`` for every fault (``too_many`` aside), a repeated name among them: for an
        archive that only one program writes, where any fault means it was not that program's."""

        def same(*_: object) -> str:
            return sentence

        return cls(
            error=error, unreadable=sentence, too_many=too_many or same, unsafe_name=same, encrypted=same,
            unsupported_method=same, damaged=same, too_large=same, duplicate=same,
        )


class CheckedArchive:
    """A ZIP archive whose end records fit the caller's limits; its members are checked before each is read.

    Made by :func:`open_archive`. Every refusal is ``wording.error`` with the caller's sentence.
    """

    def __init__(self, archive: zipfile.ZipFile, wording: ArchiveWording, refuse_name: Callable[[str], bool]) -> None:
        self._archive = archive
        self._wording = wording
        self._refuse_name = refuse_name
        self.entries: tuple[zipfile.ZipInfo, ...] = tuple(archive.infolist())

    def __enter__(self) -> CheckedArchive:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._archive.close()

    def _refused(self, sentence: str) -> HeadScopeError:
        return self._wording.error(sentence)

    def check_name(self, info: zipfile.ZipInfo) -> None:
        """Refuse a member whose path escapes the folder it is read into, or that the caller's rule refuses."""
        name = info.filename
        if unsafe_entry_path(name) or "\x00" in name or self._refuse_name(name):
            raise self._refused(self._wording.unsafe_name(name))

    def check(self, info: zipfile.ZipInfo) -> None:
        """Refuse a member with an unsafe name, encrypted, or compressed other than stored or deflate."""
        self.check_name(info)
        if info.flag_bits & _ENCRYPTED:
            raise self._refused(self._wording.encrypted(info.filename))
        if info.compress_type not in _METHODS:
            raise self._refused(self._wording.unsupported_method(info.filename))

    def check_all(self) -> dict[str, zipfile.ZipInfo]:
        """Every member checked (and, when the wording has a sentence for it, no name twice), by name."""
        members: dict[str, zipfile.ZipInfo] = {}
        for info in self.entries:
            self.check(info)
            if self._wording.duplicate is not None and info.filename in members:
                raise self._refused(self._wording.duplicate(info.filename))
            members[info.filename] = info
        return members

    def read_at_most(self, info: zipfile.ZipInfo, cap: int) -> bytes:
        """At most ``cap + 1`` bytes of a checked member: one byte past the cap shows that it inflates beyond it.

        The sizes a member's headers declare are never consulted, since a ZIP bomb lies about them.
        """
        self.check(info)
        try:
            with self._archive.open(info) as stream:
                return stream.read(cap + 1)
        except ARCHIVE_ERRORS as err:
            raise self._refused(self._wording.damaged(info.filename)) from err

    def read(self, info: zipfile.ZipInfo, cap: int) -> bytes:
        """The whole of a checked member, refused if it inflates beyond ``cap`` bytes."""
        content = self.read_at_most(info, cap)
        if len(content) > cap:
            raise self._refused(self._wording.too_large(info.filename, cap))
        return content


def _no_rule(name: str) -> bool:
    return False


def open_archive(
    source: bytes | Path,
    wording: ArchiveWording,
    *,
    max_entries: int,
    max_directory_bytes: int,
    refuse_name: Callable[[str], bool] = _no_rule,
) -> CheckedArchive:
    """The archive in ``source`` (its bytes, or a file on this machine), once its end records fit the limits.

    Every end record is read before :mod:`zipfile` builds an entry (:func:`declared_directory`),
    so a small file declaring millions of entries costs nothing. Nothing is extracted to disk.

    Args:
        source: The archive's bytes, or the path of a ZIP file (mapped, not read whole).
        wording: The caller's error class and sentences.
        max_entries: Most entries any end record may declare.
        max_directory_bytes: Most central-directory bytes any end record may declare.
        refuse_name: The caller's own rule for member names, on top of the one every archive obeys.

    Raises:
        wording.error: Empty, not a readable ZIP, or declaring a larger directory than allowed.
    """
    if not isinstance(source, Path) and not source:
        raise wording.error(wording.empty or wording.unreadable)
    try:
        declared = _declared_directory_of(source)
    except ARCHIVE_ERRORS as err:
        raise wording.error(wording.unreadable) from err
    if declared is not None and (declared.entries > max_entries or declared.size > max_directory_bytes):
        raise wording.error(wording.too_many(declared))
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except ARCHIVE_ERRORS as err:
        raise wording.error(wording.unreadable) from err
    return CheckedArchive(archive, wording, refuse_name)


def _declared_directory_of(source: bytes | Path) -> DeclaredDirectory | None:
    """:func:`declared_directory` of bytes, or of a file mapped into memory rather than read whole."""
    if not isinstance(source, Path):
        return declared_directory(source)
    with source.open("rb") as file:
        if file.seek(0, io.SEEK_END) == 0:
            return None  # nothing to map: zipfile refuses the empty file itself
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return declared_directory(mapped)  # type: ignore[arg-type]  # a map slices and searches like bytes
