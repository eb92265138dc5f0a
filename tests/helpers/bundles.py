"""Result bundles taken apart and put back together with damage, to test what opening one refuses."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from typing import Callable

import pytest

from core.errors import BundleRejected, HeadScopeError
from core.study.bundle import MANIFEST


def bundle_members(data: bytes) -> dict[str, bytes]:
    """Every member of a ZIP by name."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def zipped_members(members: dict[str, bytes], compress_type: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A ZIP of ``members`` (name to content), in their order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content, compress_type=compress_type)
    return buffer.getvalue()


def edited_bundle(
    data: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    manifest: Callable[[dict], None] | None = None,
    rehash: bool = True,
) -> bytes:
    """The bundle with members replaced or dropped and its manifest edited.

    With ``rehash`` the manifest's checksums are recomputed, so the damage reaches the
    check behind the checksum one.
    """
    members = {name: content for name, content in bundle_members(data).items() if name not in drop}
    members.update(replace or {})
    meta = json.loads(members[MANIFEST])
    if rehash:
        for name in meta["files"]:
            if name in members:
                meta["files"][name] = {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}
    if manifest is not None:
        manifest(meta)
    members[MANIFEST] = json.dumps(meta).encode()
    return zipped_members(members)


def refused(read: Callable, data: bytes, match: str, **kwargs) -> str:
    """``read(data)`` is refused with one sentence matching ``match``; the sentence."""
    with pytest.raises(BundleRejected, match=match) as caught:
        read(data, **kwargs)
    message = str(caught.value)
    assert isinstance(caught.value, HeadScopeError)
    assert message.endswith(".") and message[0].isupper()
    assert "\n" not in message and "Traceback" not in message
    return message
