"""Tests for core.inputs.archive: every end record an archive carries is read."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from core.inputs.archive import ARCHIVE_ERRORS, MIN_ENTRY_BYTES, DeclaredDirectory, declared_directory


def eocd(entries: int, size: int, offset: int = 0, comment: bytes = b"") -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries, size, offset, len(comment)) + comment


def zip64_record(entries: int, size: int) -> bytes:
    return struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, 0)


def locator(offset: int) -> bytes:
    return struct.pack("<4sLQL", b"PK\x06\x07", 0, offset, 1)


def honest_zip(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            archive.writestr(f"tabby/{index}.png", b"x")
    return buffer.getvalue()


def test_honest_archive_reports_what_zipfile_reads() -> None:
    data = honest_zip(3)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert len(archive.infolist()) == 3
    declared = declared_directory(data)
    assert declared is not None and declared.entries == 3
    # Each entry is a 46-byte header plus its 11-character name.
    assert declared.size == 3 * (MIN_ENTRY_BYTES + len("tabby/0.png"))


def test_zip64_record_wins_over_an_empty_classic_record() -> None:
    data = zip64_record(4_000_000, 4_000_000 * MIN_ENTRY_BYTES) + locator(0) + eocd(0, 0)
    assert declared_directory(data) == DeclaredDirectory(4_000_000, 4_000_000 * MIN_ENTRY_BYTES)


def test_zip64_record_the_locator_points_to_is_read_too() -> None:
    far = zip64_record(7_000_000, 10**9)
    data = far + b"\x00" * 100 + locator(0) + eocd(0, 0)
    assert declared_directory(data) == DeclaredDirectory(7_000_000, 10**9)


def test_the_largest_claim_of_several_classic_records_is_reported() -> None:
    data = honest_zip(2)
    hidden = eocd(60_000, 9_000_000)
    # A second record inside the comment: zipfile would use the last one, another reader the first.
    with_comment = data[:-2] + struct.pack("<H", len(hidden)) + hidden
    declared = declared_directory(with_comment)
    assert declared is not None
    assert declared.entries == 60_000 and declared.size == 9_000_000


def test_a_record_at_the_far_edge_of_zipfiles_window_is_found() -> None:
    # zipfile searches the last 64 KiB + 22 bytes, one byte more than the longest comment.
    data = eocd(50_000, 5_000_000) + b"\x00" * (1 << 16)
    found = zipfile._EndRecData(io.BytesIO(data))  # type: ignore[attr-defined]
    assert found is not None and found[5] == 5_000_000
    assert declared_directory(data) == DeclaredDirectory(50_000, 5_000_000)
    assert declared_directory(data + b"\x00") is None  # one byte further is out of both reaches
    assert zipfile._EndRecData(io.BytesIO(data + b"\x00")) is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("data", [b"", b"not a zip at all", b"PK\x05\x06" + b"\x00" * 10])
def test_no_complete_end_record_gives_none(data: bytes) -> None:
    assert declared_directory(data) is None


# --- damaged members: what zipfile raises, and that every reader says it in a sentence -------


def _local_header(data: bytes, name: str) -> int:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.getinfo(name).header_offset


def corrupt_deflate(data: bytes, name: str) -> bytes:
    """``data`` with the first byte of member ``name``'s deflate stream set to 0xFF: block type 3,
    which no deflate stream uses (zlib: "invalid block type")."""
    start = _local_header(data, name)
    name_length, extra_length = struct.unpack_from("<2H", data, start + 26)
    first = start + 30 + name_length + extra_length
    return data[:first] + b"\xff" + data[first + 1:]


def patch_member(data: bytes, name: str, *, flags: int | None = None, method: int | None = None) -> bytes:
    """``data`` with member ``name``'s flag bits or compression method rewritten in its local
    header and its central-directory entry alike."""
    patched = bytearray(data)
    encoded = name.encode()
    starts = [(_local_header(data, name), 6)]  # the local header: flags at 6, method at 8
    at = data.find(b"PK\x01\x02")
    while at >= 0:  # central-directory entries: flags at 8, method at 10, name at 46
        name_length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + name_length] == encoded:
            starts.append((at, 8))
        at = data.find(b"PK\x01\x02", at + 1)
    for start, field in starts:
        if flags is not None:
            struct.pack_into("<H", patched, start + field, flags)
        if method is not None:
            struct.pack_into("<H", patched, start + field + 2, method)
    return bytes(patched)


def damage(kind: str, data: bytes, name: str) -> bytes:
    if kind == "corrupt deflate stream":
        return corrupt_deflate(data, name)
    if kind == "encrypted":
        return patch_member(data, name, flags=0x1)
    return patch_member(data, name, method=99)  # AES in WinZip's numbering: zipfile has no decoder for it


DAMAGE = ["corrupt deflate stream", "encrypted", "unsupported compression"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_what_zipfile_raises_for_a_damaged_member_is_an_archive_error(kind: str) -> None:
    data = damage(kind, honest_zip(2), "tabby/1.png")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("tabby/0.png") == b"x"  # only the one member is damaged
        with pytest.raises(Exception) as caught:
            archive.read("tabby/1.png")
    assert isinstance(caught.value, ARCHIVE_ERRORS), type(caught.value)


@pytest.mark.parametrize("kind", DAMAGE)
def test_every_reader_of_archives_refuses_a_damaged_member_in_a_sentence(kind: str) -> None:
    from core.study.bundle import MANIFEST, load_bundle
    from core.errors import BundleRejected, ImageRejected
    from core.inputs.images import image_set_from_zip

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("cats/a.png", b"\x89PNG" + bytes(range(256)) * 4)
    with pytest.raises(ImageRejected) as caught:
        image_set_from_zip(damage(kind, buffer.getvalue(), "cats/a.png"), [])
    assert "a.png" in str(caught.value) and "\n" not in str(caught.value) and str(caught.value).endswith(".")

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, '{"format": "headscope-bundle"}' + " " * 512)
    with pytest.raises(BundleRejected) as caught:
        load_bundle(damage(kind, buffer.getvalue(), MANIFEST))
    assert MANIFEST in str(caught.value) and "\n" not in str(caught.value) and str(caught.value).endswith(".")
