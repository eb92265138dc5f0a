"""ZIP archives damaged on purpose, member by member, in the ways ``zipfile`` raises for."""

from __future__ import annotations

import io
import struct
import zipfile

DAMAGE = ["corrupt deflate stream", "encrypted", "unsupported compression"]


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
    """``data`` with member ``name`` damaged in one of the ways ``DAMAGE`` names."""
    if kind == "corrupt deflate stream":
        return corrupt_deflate(data, name)
    if kind == "encrypted":
        return patch_member(data, name, flags=0x1)
    return patch_member(data, name, method=99)  # AES in WinZip's numbering: zipfile has no decoder for it
