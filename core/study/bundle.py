"""Result bundles: a case study saved as one ZIP file and opened again without recomputing.

Layout of a bundle::

    manifest.json             the study's manifest plus "files": {member: {sha256, size}}
    tables/<name>.parquet     one per name in ``TABLES`` (index dropped)
    arrays/<name>.npy         one per name in ``ARRAYS`` (numeric dtypes only)
    images/<image id>.png     the thumbnails the findings cite
    probe/probe.safetensors   a linear probe's classifier only (format version 5 on): the
                              probe (``core.models.probe``); the manifest's model.probe names its
                              digest, features and the backbone it sits on

Opening a bundle is a security boundary: the file comes from a user. Nothing is
extracted to disk or unpickled; the ZIP end records are checked before the directory is
parsed and sizes are checked from the directory before any member is read. Members are
then read one at a time, each capped at what its kind can honestly be (a table from
the rows its manifest implies, an array from its shape, a thumbnail small), matched to
the sha256 the manifest lists, parsed and checked before the next is read, and every
number in them must be finite, whole where it counts or indexes, and in its range. A
probe is capped at what its manifest's classes and features take, parsed by
``core.models.probe.probe_from_bytes`` (tensors and a JSON card, nothing executed) and must be
the probe the manifest names. Any failure is a :class:`BundleRejected` with one sentence.

A probe's bundle is opened on the backbone it was computed with::

    probe = bundle_probe(data)  # None: the bundle's model has no probe
    probed = with_probe(backbone, probe)  # when probe.backbone_key == backbone.key
    study = load_bundle(data, model_key=probed.key, model_name=probed.name)
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from core.errors import BundleRejected, ProbeRejected, human_size
from core.inputs.archive import (
    MIN_ENTRY_BYTES,
    ArchiveWording,
    CheckedArchive,
    DeclaredDirectory,
    open_archive,
)
from core.measures.attribution import METHODS as ATTRIBUTION_METHODS
from core.measures.importance import BACKBONE_METRICS, METRICS, MODES, RANDOM_ORDER
from core.models.probe import MAX_CLASSES as _MAX_PROBE_CLASSES
from core.models.probe import MIN_CLASSES as _MIN_PROBE_CLASSES
from core.models.probe import LinearProbe, probe_from_bytes
from core.study.casestudy import (
    ARRAYS,
    BUNDLE_FORMAT,
    BUNDLE_VERSION,
    TABLE_COLUMNS,
    TABLES,
    CaseSettings,
    CaseStudy,
)

__all__ = [
    "DEFAULT_BUNDLE_LIMITS",
    "MANIFEST",
    "PROBE_MEMBER",
    "BundleLimits",
    "bundle_probe",
    "load_bundle",
    "save_bundle",
    "write_bundle",
]

MANIFEST = "manifest.json"
PROBE_MEMBER = "probe/probe.safetensors"
# The format version that added the probe (a study of a probed model is saved as it).
_PROBE_VERSION = 5
# A probe's features: the class token beside the patch mean of a ViT-22B (6,144 wide) is 12,288.
_MAX_PROBE_FEATURES = 2**14
# A probe file beyond its float64 weights and bias: the 8-byte length and the JSON header with
# the card, which ``probe_from_bytes`` caps at 1 MiB, plus safetensors' alignment padding.
_PROBE_HEADER_BYTES = 8 + 2**20 + 8
_MAX_KEY_CHARS = 200
# A fixed timestamp makes the same study give the same bytes (1980 is ZIP's epoch).
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_THUMBNAIL_SIDE = 1024  # thumbnails are saved at THUMBNAIL_SIDE (96 px); anything far larger is not one
_IMAGE_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")
_IMAGE_MEMBER = re.compile(r"images/([0-9A-Za-z_-]{1,64})\.png")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# The .npy versions np.save writes for numeric arrays; 3.0 only adds unicode field names.
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
# The manifest's settings: every ``CaseSettings`` field plus the layout method.
_SETTING_TYPES = {**{name: type(value) for name, value in asdict(CaseSettings()).items()}, "layout": str}
_SHOWN_CHARS = 80
# What format version 2 added to version 1's tables: bundles of version 1 lack these
# columns (they open with NaN there) and the output_impact metric.
_ADDED_IN_2 = {"pruning_curve": ("similarity",), "partial": ("output_impact",)}
_METRICS_1 = tuple(metric for metric in METRICS if metric != "output_impact")
# What format version 3 added: the arrays from top_share on (bundles of versions 1 and 2
# open with NaN there, and -1 in the whole-number ones) and the manifest's prefix_names.
_ARRAYS_2 = ARRAYS[:ARRAYS.index("top_share")]
# What format version 4 added: the relevance maps of the cited images (older bundles open
# with none: C = 0). Their first side C is the count of cited images, bounded by the settings.
_ARRAYS_3 = ARRAYS[:ARRAYS.index("relevance_images")]
_CITED_ARRAYS = ("relevance_images", "relevance", "relevance_heads")
_WHOLE_ARRAYS = {"sink", "outliers", "relevance_images"}


def _arrays_of(version: int) -> tuple[str, ...]:
    """The arrays a bundle of this format version holds."""
    return ARRAYS if version >= 4 else _ARRAYS_3 if version == 3 else _ARRAYS_2
_AGAIN = "save the bundle again with HeadScope"
_FEWER = "so compute the case study on fewer images"
# An honest directory entry is the 46-byte header plus a name of at most 75 characters
# (``images/<64>.png``) and no extra fields; the slack covers any ZIP writer's extras.
_DIRECTORY_BYTES_PER_MEMBER = MIN_ENTRY_BYTES + 210
# What a manifest holds besides its images: model facts (up to ~22,000 class names for an
# ImageNet-21k model: ~600 KB), settings, versions and the "files" listing (~140 bytes
# per member). Per image it holds id, name and label: ~85 bytes measured (16-character
# id, short name), ~200 with an 80-character name.
_MANIFEST_BASE_BYTES = 2 * 2**20
_MANIFEST_BYTES_PER_IMAGE = 192
_MAX_IMAGES = 50_000
_NPY_MAX_HEADER = 2**16 + 12  # magic, version and a 2-byte length: version 1.0 and 2.0 headers np.save writes
_MAX_THUMBNAIL_BYTES = 2**16  # a 96 px thumbnail PNG is at most ~28 KB
# Deflate shrinks what a bundle holds (snappy Parquet, float arrays, PNGs) 1-3x; a member of
# zeros shrinks ~1000x, so the ratio over the whole bundle bounds what inflating may cost.
_MAX_INFLATION = 32
_INFLATION_SLACK_BYTES = 16 * 2**20
_TABLE_OVERHEAD_BYTES = 2**20  # footer, schema and the pandas metadata of one table
# Parquet codecs whose output is at most a small multiple of their input (snappy: ~21x);
# gzip, zstd, brotli and lz4 can turn a few KB of a page into gigabytes.
_PARQUET_CODECS = ("UNCOMPRESSED", "SNAPPY")
# Layers, heads, grid sides, prefix tokens and patch sides of any ViT are far below this.
_MAX_MODEL_SIDE = 4096
# Unbounded measures (coordinates, gradients, distances, errors) must stay below this:
# no honest one comes near it, and sums and spans of such values stay finite in charts.
_LARGEST = 1e12
# Float values are checked against their ranges with this slack: float32 softmax and
# cosine rounding can step just outside [0, 1] and [0, 2].
_SLACK = 1e-4


@dataclass(frozen=True)
class BundleLimits:
    """Bounds on what opening a bundle may cost, checked before anything is decompressed.

    Attributes:
        max_members: ZIP entries, as every end record declares them and as the directory
            holds them (a study has one per table and array, plus a thumbnail per image
            its findings cite: a few dozen to a few hundred).
        max_images: images of the study, as its manifest lists them.
        max_member_bytes: uncompressed size of one entry.
        max_total_bytes: uncompressed size of all entries together.
        max_manifest_bytes: size of ``manifest.json``, which is parsed whole: enough for
            ``max_images`` honest images (Python objects parsed from hostile JSON take
            up to ~27x its size, so this bound is also what parsing may cost).
        max_table_values: rows times columns of one table, as its Parquet footer
            declares them: encodings such as run-length make a few compressed bytes
            decode to many values, so the member's size does not bound the table's.
        max_table_bytes: uncompressed bytes of one table, as its footer declares them and
            as the decoded table holds them (one long string compresses to almost nothing).
    """

    max_members: int = 4096
    max_images: int = _MAX_IMAGES
    max_member_bytes: int = 2**30
    max_total_bytes: int = 2 * 2**30
    max_manifest_bytes: int = _MANIFEST_BASE_BYTES + _MAX_IMAGES * _MANIFEST_BYTES_PER_IMAGE
    max_table_values: int = 2**28
    max_table_bytes: int = 512 * 2**20


DEFAULT_BUNDLE_LIMITS = BundleLimits()


# --- saving ------------------------------------------------------------------------------


def save_bundle(study: CaseStudy) -> bytes:
    """The study as a bundle: a ZIP of its manifest, tables, arrays, thumbnails and probe (if any).

    The same study gives the same bytes (with the same library versions).

    Raises:
        ValueError: a thumbnail's image id is not safe as a file name, an array holds
            Python objects, or the study holds a probe its manifest does not name (or the
            other way round).
    """
    members: dict[str, bytes] = {}
    # a study opened from an older bundle is saved in its own format version again: without
    # the columns and arrays that version lacks (they were filled in when it was opened)
    version = int(study.manifest.get("format_version", BUNDLE_VERSION))
    for name in TABLES:
        buffer = io.BytesIO()
        table = study.tables[name]
        if version < 2:
            table = table.drop(columns=list(_ADDED_IN_2.get(name, ())))
        table.to_parquet(buffer, index=False, engine="pyarrow")
        members[f"tables/{name}.parquet"] = buffer.getvalue()
    for name in _arrays_of(version):
        buffer = io.BytesIO()
        np.save(buffer, study.arrays[name], allow_pickle=False)
        members[f"arrays/{name}.npy"] = buffer.getvalue()
    for image_id, png in study.thumbnails.items():
        if not _IMAGE_ID.fullmatch(image_id):
            raise ValueError(f"Image id {image_id!r} cannot name a bundle member.")
        members[f"images/{image_id}.png"] = bytes(png)
    named = isinstance(study.manifest.get("model"), Mapping) and "probe" in study.manifest["model"]
    if named != (study.probe is not None):
        raise ValueError(
            "The study's manifest names a linear probe but the study holds none."
            if named else "The study holds a linear probe that its manifest does not name."
        )
    if study.probe is not None:
        members[PROBE_MEMBER] = bytes(study.probe)
    files = {
        name: {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)} for name, content in members.items()
    }
    manifest = json.dumps({**study.manifest, "files": files}, indent=2).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content in {MANIFEST: manifest, **members}.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_TIME), content, compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def write_bundle(study: CaseStudy, path: str | os.PathLike[str]) -> Path:
    """Save the study's bundle to ``path`` atomically: a reader sees the old file or the whole new one.

    Returns:
        The path written.
    """
    target = Path(path)
    temporary = _synced_temporary(save_bundle(study), target.parent, f".{target.name}.")
    try:
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return target


def _synced_temporary(data: bytes, folder: Path, prefix: str) -> Path:
    """A new ``.tmp`` file in ``folder`` holding ``data``, synced to disk and readable by all: renamed
    into place, it makes a write atomic (``write_bundle``, the study library)."""
    handle, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private to its owner; a bundle is meant to be shared.
        os.chmod(temporary, 0o644)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


# --- opening -----------------------------------------------------------------------------


def load_bundle(
    data: bytes,
    *,
    model_key: str | None = None,
    model_name: str | None = None,
    limits: BundleLimits = DEFAULT_BUNDLE_LIMITS,
) -> CaseStudy:
    """Open a bundle saved by :func:`save_bundle`: the same tables, arrays, thumbnails and manifest.

    Args:
        data: The bundle's bytes (untrusted).
        model_key: Key of the loaded model; a bundle computed with another model is refused.
        model_name: Display name of the loaded model, for that refusal's sentence.
        limits: Size bounds to enforce.

    Returns:
        The case study; its manifest is the one saved, without the ``files`` listing.

    Raises:
        BundleRejected: With one sentence: not a bundle, damaged, unsafe, too large, from
            a newer HeadScope, or computed with a model other than ``model_key``.
    """
    try:
        return _open(data, model_key, model_name, limits)
    except MemoryError:
        pass  # raised below, once this frame's references to what was read are gone
    raise BundleRejected(
        "Opening this bundle needs more memory than is free; close other work and try again, "
        "or compute the case study on fewer images."
    )


def _open(data: bytes, model_key: str | None, model_name: str | None, limits: BundleLimits) -> CaseStudy:
    """:func:`load_bundle` without its memory guard: each member is read, checked and parsed in turn."""
    with _archive(data, limits) as archive:
        directory = _checked_directory(archive, limits)
        manifest = _read_manifest(archive, directory, limits)
        _check_settings(manifest)
        probe = _check_model(manifest, model_key, model_name)
        _check_summary(manifest)
        shape = _study_shape(manifest, limits)
        files = _checked_files(manifest, directory, shape, limits, probe)
        _check_member_sizes(files, shape, limits, probe)

        def read(member: str) -> bytes:
            return _read_member(archive, directory[member], files[member])

        probe_file = None
        if probe is not None:  # first: a small member, and a bundle for another probe stops here
            probe_file = read(PROBE_MEMBER)
            _parsed_probe(probe_file, probe)
        tables = {name: _table(name, read(f"tables/{name}.parquet"), shape, limits) for name in TABLES}
        arrays = {name: _array(name, read(f"arrays/{name}.npy"), shape) for name in shape.array_names}
        for name in ARRAYS:  # added after the bundle's format version
            if name not in arrays:
                # the per-image arrays filled as unknown; no image has relevance maps (C = 0)
                size = (0, *shape.arrays[name][1:]) if name in _CITED_ARRAYS else shape.arrays[name]
                arrays[name] = np.full(size, -1 if name in _WHOLE_ARRAYS else np.nan,
                                       dtype=np.int32 if name in _WHOLE_ARRAYS else np.float32)
        _check_cited(arrays)
        thumbnails = {
            image.group(1): _thumbnail(member, read(member))
            for member in files
            if (image := _IMAGE_MEMBER.fullmatch(member))
        }
    _check_tables(tables, shape)
    return CaseStudy(
        manifest={key: value for key, value in manifest.items() if key != "files"},
        tables=tables,
        arrays=arrays,
        thumbnails=thumbnails,
        probe=probe_file,
    )


def bundle_probe(data: bytes, *, limits: BundleLimits = DEFAULT_BUNDLE_LIMITS) -> LinearProbe | None:
    """The linear probe of a bundle computed with a probe's classifier, or ``None`` when its model has none.

    Reads only the manifest and the probe member, with the checks :func:`load_bundle`
    makes of them (end records, directory, sizes, the sha256 the manifest lists, the
    digest and class names the manifest names). The probe is not checked against a
    backbone: build ``core.models.probe.with_probe(backbone, probe)`` on the backbone whose key is
    ``probe.backbone_key``, then open the bundle with ``load_bundle(data,
    model_key=probed.key)``, which reads and checks everything else.

    Raises:
        BundleRejected: with one sentence: not a bundle, damaged, unsafe, too large, from a
            newer HeadScope, or its probe missing, damaged or not the one its manifest names.
    """
    try:
        return _open_probe(data, limits)
    except MemoryError:
        pass  # raised below, once this frame's references to what was read are gone
    raise BundleRejected(
        "Reading this bundle's linear probe needs more memory than is free; close other work and try again."
    )


def _open_probe(data: bytes, limits: BundleLimits) -> LinearProbe | None:
    """:func:`bundle_probe` without its memory guard."""
    with _archive(data, limits) as archive:
        directory = _checked_directory(archive, limits)
        manifest = _read_manifest(archive, directory, limits)
        probe = _check_model(manifest, None, None)
        files = _listed_files(manifest, limits)
        if probe is None:
            if PROBE_MEMBER in files or PROBE_MEMBER in directory:
                raise _unknown_member(PROBE_MEMBER)
            return None
        entry = _probe_entry(files, directory)
        _check_probe_size(entry, probe, limits)
        return _parsed_probe(_read_member(archive, directory[PROBE_MEMBER], entry), probe)


def _archive(data: bytes, limits: BundleLimits) -> CheckedArchive:
    """The bundle's ZIP archive, once its end records show a directory a bundle can have.

    ``zipfile.ZipFile`` builds an object per declared entry, reading up to the declared
    directory size, before anything can be counted: millions of entries cost gigabytes.
    """
    return open_archive(
        data,
        _archive_wording(limits),
        max_entries=limits.max_members,
        max_directory_bytes=limits.max_members * _DIRECTORY_BYTES_PER_MEMBER,
        refuse_name=_unsafe_name,
    )


def _archive_wording(limits: BundleLimits) -> ArchiveWording:
    def too_many(declared: DeclaredDirectory) -> str:
        if declared.entries > limits.max_members:
            return f"The bundle declares {declared.entries:,} files; the limit is {limits.max_members:,}, {_FEWER}."
        most = limits.max_members * _DIRECTORY_BYTES_PER_MEMBER
        return (
            f"The bundle's file directory declares {human_size(declared.size)}; {limits.max_members:,} files "
            f"need at most {human_size(most)}, so it was not written by HeadScope; {_AGAIN}."
        )

    return ArchiveWording(
        error=BundleRejected,
        empty="The bundle file is empty; choose a .zip file saved by HeadScope.",
        unreadable=(
            "This file is not a readable ZIP archive, so it is not a HeadScope bundle (it may be truncated); "
            "download or save it again."
        ),
        too_many=too_many,
        unsafe_name=lambda name: (
            f"The bundle holds a file named '{_shown(name)}', a path HeadScope does not accept in a bundle; {_AGAIN}."
        ),
        duplicate=lambda name: f"The bundle holds two files named '{_shown(name)}'; {_AGAIN}.",
        encrypted=lambda name: f"The bundle's file '{_shown(name)}' is encrypted; {_AGAIN} without a password.",
        unsupported_method=lambda name: (
            f"The bundle's file '{_shown(name)}' uses a compression method HeadScope does not accept "
            f"(only stored or deflate); {_AGAIN}."
        ),
        damaged=lambda name: str(_damaged(f"'{_shown(name)}' cannot be read")),
        too_large=lambda name, cap: (
            f"The bundle's file '{_shown(name)}' is larger than {human_size(cap)} once uncompressed; {_AGAIN}."
        ),
    )


def _thumbnail(name: str, content: bytes) -> bytes:
    """A thumbnail's bytes once its header shows a PNG of at most ``_MAX_THUMBNAIL_SIDE`` pixels a side.

    Only the header is read: the page and the report hand the bytes to a browser, so a
    small file that would decode to a huge image must not get that far.
    """
    refused = BundleRejected(f"The bundle's thumbnail '{_shown(name)}' is not a small PNG image; {_AGAIN}.")
    if not content.startswith(_PNG_SIGNATURE):
        raise refused
    try:
        with Image.open(io.BytesIO(content), formats=["PNG"]) as image:
            width, height = image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise refused from exc
    if max(width, height) > _MAX_THUMBNAIL_SIDE:
        raise refused
    return content


def _shown(text: Any, limit: int = _SHOWN_CHARS) -> str:
    """Untrusted text fit for a one-line message: printable characters only, shortened to ``limit``."""
    printable = "".join(ch for ch in str(text) if ch.isprintable())
    return printable if len(printable) <= limit else printable[: limit - 1] + "…"


def _damaged(what: str) -> BundleRejected:
    return BundleRejected(f"The bundle is damaged ({what}); download or {_AGAIN}.")


def _unsafe_name(name: str) -> bool:
    parts = name.split("/")
    return (
        name.startswith("/")
        or "\\" in name
        or bool(re.match(r"^[A-Za-z]:", name))
        or any(part in ("", ".", "..") for part in parts)
        or not name.isprintable()
    )


def _checked_directory(archive: CheckedArchive, limits: BundleLimits) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name, refused before any is read if unsafe or too large."""
    infos = archive.entries
    if len(infos) > limits.max_members:
        raise BundleRejected(f"The bundle holds {len(infos)} files; the limit is {limits.max_members}, {_FEWER}.")
    directory = archive.check_all()
    for info in infos:
        if info.file_size > limits.max_member_bytes:
            raise BundleRejected(
                f"The bundle's file '{_shown(info.filename)}' is {human_size(info.file_size)} once uncompressed; "
                f"the limit is {human_size(limits.max_member_bytes)} per file, {_FEWER}."
            )
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise BundleRejected(
            f"The bundle holds {human_size(total)} once uncompressed; the limit is "
            f"{human_size(limits.max_total_bytes)}, {_FEWER}."
        )
    if total > _MAX_INFLATION * sum(info.compress_size for info in infos) + _INFLATION_SLACK_BYTES:
        raise BundleRejected(
            f"The bundle's files inflate to {human_size(total)}, far more than a HeadScope bundle of its size "
            f"holds, so it was not written by HeadScope; {_AGAIN}."
        )
    return directory


def _read_manifest(
    archive: CheckedArchive, directory: dict[str, zipfile.ZipInfo], limits: BundleLimits
) -> dict[str, Any]:
    """The manifest as a JSON object of this format, of a version this code reads."""
    if MANIFEST not in directory:
        raise BundleRejected(
            f"This ZIP file has no {MANIFEST}, so it is not a HeadScope bundle; choose a bundle saved by HeadScope."
        )
    text = archive.read_at_most(directory[MANIFEST], limits.max_manifest_bytes)
    if len(text) > limits.max_manifest_bytes:
        raise BundleRejected(
            f"The bundle's {MANIFEST} is larger than {human_size(limits.max_manifest_bytes)}; {_AGAIN}."
        )
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleRejected(f"The bundle's {MANIFEST} is not valid JSON; {_AGAIN}.") from exc
    if not isinstance(manifest, dict):
        raise BundleRejected(f"The bundle's {MANIFEST} is not a JSON object; {_AGAIN}.")
    found = manifest.get("format")
    if found != BUNDLE_FORMAT:
        claimed = "names no format" if found is None else f"names the format '{_shown(found)}'"
        raise BundleRejected(
            f"This file is not a HeadScope result bundle (its {MANIFEST} {claimed}, not '{BUNDLE_FORMAT}'); "
            "choose a bundle saved by HeadScope."
        )
    version = _field(manifest, "format_version", _is_count)
    if version > BUNDLE_VERSION:
        raise BundleRejected(
            f"This bundle has format version {version}, but this HeadScope reads up to version "
            f"{BUNDLE_VERSION}; update HeadScope to open it."
        )
    return manifest


def _is_count(value: Any, most: int = 2**31 - 1) -> bool:
    """A whole number from 1 to ``most`` (JSON's ``true`` is not one)."""
    return type(value) is int and 0 < value <= most


def _is_measure(value: Any) -> bool:
    """A finite non-negative number of a sane size (JSON parsing accepts ``NaN`` and ``Infinity``)."""
    return type(value) in (int, float) and 0 <= value <= _LARGEST


def _field(manifest: dict[str, Any], path: str, valid: Callable[[Any], bool]) -> Any:
    """The manifest's value at a dotted ``path``, refused unless ``valid``."""
    value: Any = manifest
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or not valid(value):
        raise BundleRejected(f"The bundle's {MANIFEST} has no valid '{path}' entry; {_AGAIN}.")
    return value


def _weights_tag(key: str) -> str:
    """The short weights hash a model key ends with (``demo-aeaab9aa54e457a7`` -> ``aeaab9aa``)."""
    return key.rsplit("-", 1)[-1][:8]


def _check_settings(manifest: dict[str, Any]) -> None:
    """Refuse a manifest whose settings are missing, of another type or out of range.

    With ``_check_model`` and ``_check_summary``, everything the case-study page and the
    report read from the manifest is checked, so an opened bundle never fails later.
    """
    for name, kind in _SETTING_TYPES.items():
        _field(manifest, f"settings.{name}", lambda value, kind=kind: type(value) is kind)
    for name in ("top_k", "hurt_images", "max_maps", "n_clusters", "curve_steps"):
        _field(manifest, f"settings.{name}", _is_count)
    _field(manifest, "settings.seed", lambda value: -(2**63) <= value < 2**64)  # what numpy and torch accept
    _field(manifest, "settings.kind", lambda value: value in ("patch", "cls"))
    _field(manifest, "settings.layout", lambda value: value in ("umap", "pca"))


def _check_summary(manifest: dict[str, Any]) -> None:
    """Refuse a manifest lacking the model facts and summaries the page and the report show."""
    for path in ("created", "image_set.key", "image_set.title"):
        _field(manifest, path, lambda value: isinstance(value, str))
    _field(manifest, "model.num_prefix_tokens", lambda value: type(value) is int and 0 <= value <= _MAX_MODEL_SIDE)
    _field(
        manifest,
        "model.patch_size",
        lambda value: isinstance(value, list) and len(value) == 2 and all(_is_count(v, _MAX_MODEL_SIDE) for v in value),
    )
    # no class names: a backbone (format version 2 on)
    _field(
        manifest,
        "model.class_names",
        lambda value: isinstance(value, list) and (bool(value) or manifest["format_version"] >= 2)
        and all(isinstance(v, str) for v in value),
    )
    if manifest["format_version"] >= 3:
        prefix = manifest["model"]["num_prefix_tokens"]
        _field(
            manifest,
            "model.prefix_names",
            lambda value: isinstance(value, list) and len(value) == prefix
            and all(isinstance(v, str) and 0 < len(v) <= 32 for v in value),
        )
    for path in ("patterns.reconstruction_mse", "patterns.baseline_mse"):
        _field(manifest, path, _is_measure)
    _field(manifest, "versions", lambda value: isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))


def _check_model(
    manifest: dict[str, Any], model_key: str | None, model_name: str | None
) -> _ProbeFacts | None:
    """Refuse a manifest without a model name and key, or whose key is not ``model_key`` (when given).

    Returns:
        What the manifest says of the model's linear probe, ``None`` when it has none.
    """
    name = _field(manifest, "model.name", lambda value: isinstance(value, str))
    key = _field(manifest, "model.key", lambda value: isinstance(value, str) and bool(value))
    probe = _probe_facts(manifest)
    if model_key is None or key == model_key:
        return probe
    if model_name:
        loaded = f"'{_shown(model_name)}' (weights {_shown(_weights_tag(model_key))})"
    else:
        loaded = f"key '{_shown(model_key)}'"
    if probe is None:
        saved = f"'{_shown(name)}' (weights {_shown(_weights_tag(key))})"
        raise BundleRejected(
            f"This bundle was computed with model {saved}; the dashboard has model {loaded} loaded: "
            "load that model on the home page to open it."
        )
    backbone = f"'{_shown(probe.backbone_name)}' (weights {_shown(_weights_tag(probe.backbone_key))})"
    if model_key == probe.backbone_key or model_key.startswith(f"{probe.backbone_key}-probe-"):
        # the right backbone, alone or with another probe: the bundle's own probe restores its model
        alone = "the backbone alone" if model_key == probe.backbone_key else f"the loaded probe {_weights_tag(model_key)}"
        raise BundleRejected(
            f"This bundle was computed with a linear probe of {probe.classes} classes (probe {probe.digest[:8]}) "
            f"on the loaded backbone {backbone}, not with {alone}: open it with its own probe on that backbone."
        )
    raise BundleRejected(
        f"This bundle was computed with a linear probe of {probe.classes} classes (probe {probe.digest[:8]}) on "
        f"{backbone}; the dashboard has model {loaded} loaded: load that backbone on the home page to open it."
    )


@dataclass(frozen=True)
class _ProbeFacts:
    """What a manifest's ``model.probe`` says of the model's linear probe (each fact checked)."""

    digest: str
    features: int
    backbone_key: str
    backbone_name: str
    class_names: tuple[str, ...]

    @property
    def classes(self) -> int:
        return len(self.class_names)

    @property
    def most_bytes(self) -> int:
        """The largest honest probe file: float64 weights ``[C, F]`` and bias ``[C]``, and its header."""
        return _PROBE_HEADER_BYTES + 8 * self.classes * (self.features + 1)


def _probe_facts(manifest: dict[str, Any]) -> _ProbeFacts | None:
    """The manifest's ``model.probe``, each fact checked; ``None`` when the model has no probe."""
    model = manifest["model"]  # a JSON object: checked by _check_model
    if "probe" not in model:
        return None
    version = manifest["format_version"]  # checked by _read_manifest
    if version < _PROBE_VERSION:
        raise BundleRejected(
            f"The bundle's {MANIFEST} names a linear probe, which a bundle of format version {version} cannot "
            f"hold; {_AGAIN}."
        )
    digest = _field(manifest, "model.probe.digest", lambda value: isinstance(value, str) and bool(_SHA256.fullmatch(value)))
    features = _field(manifest, "model.probe.features", lambda value: _is_count(value, _MAX_PROBE_FEATURES))
    backbone_key = _field(
        manifest, "model.probe.backbone_key",
        lambda value: isinstance(value, str) and 0 < len(value) <= _MAX_KEY_CHARS,
    )
    backbone_name = _field(manifest, "model.probe.backbone_name", lambda value: isinstance(value, str))
    names = _field(
        manifest, "model.class_names",
        lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value),
    )
    if not _MIN_PROBE_CLASSES <= len(names) <= _MAX_PROBE_CLASSES:
        raise BundleRejected(
            f"The bundle's {MANIFEST} names a linear probe but {len(names):,} class name{'' if len(names) == 1 else 's'}; "
            f"a probe has {_MIN_PROBE_CLASSES} to {_MAX_PROBE_CLASSES:,} classes, so {_AGAIN}."
        )
    if model["key"] != f"{backbone_key}-probe-{digest[:16]}":
        raise _damaged(f"its model key is not the key of the probe and backbone its {MANIFEST} names")
    return _ProbeFacts(
        digest=digest, features=features, backbone_key=backbone_key, backbone_name=backbone_name,
        class_names=tuple(names),
    )


def _parsed_probe(content: bytes, facts: _ProbeFacts) -> LinearProbe:
    """The probe of the bundle's probe member, refused unless it is the probe the manifest names."""
    try:
        probe = probe_from_bytes(content)
    except ProbeRejected as exc:
        detail = _shown(str(exc).rstrip("."), 4 * _SHOWN_CHARS)  # it may quote the file's card
        raise BundleRejected(
            f"The bundle's linear probe cannot be used: {detail[:1].lower() + detail[1:]}; {_AGAIN}."
        ) from exc
    if probe.digest != facts.digest:
        raise BundleRejected(
            f"The bundle's linear probe is not the one its {MANIFEST} names (probe {probe.digest[:8]}, not "
            f"{facts.digest[:8]}); {_AGAIN}."
        )
    if probe.class_names != facts.class_names or probe.num_features != facts.features:
        # a digest covers the card, so only a manifest edited after saving gets here
        raise _damaged(f"its linear probe's classes or features are not the ones its {MANIFEST} names")
    return probe


def _probe_entry(files: dict[str, dict[str, Any]], directory: dict[str, zipfile.ZipInfo]) -> dict[str, Any]:
    """The ``files`` entry of the probe member of a bundle whose manifest names a probe."""
    if PROBE_MEMBER not in files:
        raise BundleRejected(
            f"The bundle's {MANIFEST} names a linear probe, but the bundle lists no probe file, so its classifier "
            f"cannot be restored; {_AGAIN}."
        )
    if PROBE_MEMBER not in directory:
        raise _damaged(f"'{PROBE_MEMBER}' is missing")
    return files[PROBE_MEMBER]


def _check_probe_size(entry: dict[str, Any], facts: _ProbeFacts, limits: BundleLimits) -> None:
    most = min(facts.most_bytes, limits.max_member_bytes)
    if entry["size"] > most:
        raise BundleRejected(
            f"The bundle's file '{PROBE_MEMBER}' is {human_size(entry['size'])}, more than a linear probe of "
            f"{facts.classes:,} classes and {facts.features:,} features can be ({human_size(most)}); {_AGAIN}."
        )


def _unknown_member(name: str) -> BundleRejected:
    return BundleRejected(
        f"The bundle's {MANIFEST} lists '{_shown(name)}', which is not part of a HeadScope bundle; {_AGAIN}."
    )


def _listed_files(manifest: dict[str, Any], limits: BundleLimits) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` listing, each entry a valid sha256 and size."""
    files = _field(manifest, "files", lambda value: isinstance(value, dict))
    for name, entry in files.items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and _SHA256.fullmatch(entry["sha256"])
            and isinstance(entry.get("size"), int)
            and 0 <= entry["size"] <= limits.max_member_bytes
        ):
            raise BundleRejected(
                f"The bundle's {MANIFEST} lists '{_shown(name)}' without a valid sha256 and size; {_AGAIN}."
            )
    return files


def _checked_files(
    manifest: dict[str, Any],
    directory: dict[str, zipfile.ZipInfo],
    shape: _StudyShape,
    limits: BundleLimits,
    probe: _ProbeFacts | None = None,
) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` listing, refused unless it lists exactly the archive's other entries."""
    files = _listed_files(manifest, limits)
    for kind, names, suffix in (("table", TABLES, "parquet"), ("array", shape.array_names, "npy")):
        for name in names:
            if f"{kind}s/{name}.{suffix}" not in files:
                raise BundleRejected(
                    f"The bundle has no {kind} '{name}', so it cannot be opened as a case study; {_AGAIN}."
                )
    expected = {f"tables/{name}.parquet" for name in TABLES} | {f"arrays/{name}.npy" for name in shape.array_names}
    if probe is not None:
        _probe_entry(files, directory)
        expected.add(PROBE_MEMBER)
    for name in files:
        if name not in expected and not _IMAGE_MEMBER.fullmatch(name):
            raise _unknown_member(name)
        if name not in directory:
            raise _damaged(f"'{_shown(name)}' is missing")
    for name in directory:
        if name != MANIFEST and name not in files:
            raise BundleRejected(f"The bundle holds '{_shown(name)}', which its {MANIFEST} does not list; {_AGAIN}.")
    return files


def _read_member(archive: CheckedArchive, info: zipfile.ZipInfo, entry: dict[str, Any]) -> bytes:
    content = archive.read_at_most(info, entry["size"])
    if len(content) != entry["size"] or hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise _damaged(f"'{_shown(info.filename)}' does not match its checksum")
    return content


@dataclass(frozen=True)
class _Range:
    """The values a numeric column or array may hold: finite (or NaN if ``missing``), within ``[low, high]``, whole if ``whole``."""

    low: float
    high: float
    whole: bool = False
    missing: bool = False


_SHARE = _Range(0.0, 1.0)
_NO_SHARE = _Range(0.0, 1.0, missing=True)  # a backbone's probability and accuracy: NaN, it has no classes
_ANY = _Range(-_LARGEST, _LARGEST)
# ``value`` of the importance tables, by metric: probabilities and top-1 shares, 1 - cosine,
# and the signed gate gradient (its absolute mean over the set).
_METRIC_VALUES = {
    "probability": _SHARE,
    "accuracy": _SHARE,
    "layer_impact": _Range(0.0, 2.0),
    "output_impact": _Range(0.0, 2.0),
    "taylor": _ANY,
}
# Columns that hold text, by table; every other column must hold numbers (or booleans).
_TEXT_COLUMNS = {
    "images": {"id", "name", "label", "target"},
    "importance_overall": {"metric"},
    "importance_per_image": {"metric"},
    "pruning_curve": {"order"},
    "partial": {"image_id", "mode", "predicted"},
    "pattern_heads": {"head_label"},
    "pattern_clusters": {"heads"},
}
_NAME_BYTES = max(len(name) for name in (*METRICS, *MODES, RANDOM_ORDER))


@dataclass(frozen=True)
class _StudyShape:
    """What a bundle's manifest says its tables and arrays hold, so each member can be bounded before it is read.

    Attributes:
        images, layers, heads, rows, cols: images of the study and the model's geometry.
        classes: the model's class count (0: a backbone).
        labels: how many names the labels index: the classes, or a backbone set's own names.
        name_bytes: UTF-8 bytes of the longest image name.
        class_bytes: UTF-8 bytes of the longest class or label name.
        settings: the manifest's settings (checked).
        version: the bundle's format version.
    """

    images: int
    layers: int
    heads: int
    rows: int
    cols: int
    classes: int
    labels: int
    name_bytes: int
    class_bytes: int
    settings: dict[str, Any]
    version: int = BUNDLE_VERSION
    prefix: int = 1

    @property
    def backbone(self) -> bool:
        return self.classes == 0

    @property
    def metrics(self) -> tuple[str, ...]:
        """The importance metrics the study must hold."""
        if self.backbone:
            return BACKBONE_METRICS
        return METRICS if self.version >= 2 else _METRICS_1

    def columns(self, table: str) -> tuple[str, ...]:
        """The columns ``table`` has in this format version."""
        added = () if self.version >= 2 else _ADDED_IN_2.get(table, ())
        return tuple(column for column in TABLE_COLUMNS[table] if column not in added)

    @property
    def array_names(self) -> tuple[str, ...]:
        """The arrays a bundle of this format version holds."""
        return _arrays_of(self.version)

    @property
    def tokens(self) -> int:
        return self.prefix + self.rows * self.cols

    @property
    def arrays(self) -> dict[str, tuple[int, ...]]:
        """The shape of each of ``ARRAYS`` (the ``StrengthStats`` fields)."""
        per_head = (self.images, self.layers, self.heads)
        return {
            "hop_strength": (*per_head, max(self.rows, self.cols)),
            "entropy": per_head,
            "distance": per_head,
            "prefix_share": per_head,
            "offset_mean": (self.layers, self.heads, 2 * self.rows - 1, 2 * self.cols - 1),
            **{name: per_head for name in ("top_share", "key_entropy", "sink", "register_share", "outlier_share")},
            "outliers": (self.images, self.layers),
            "norm_ratio": (self.images, self.layers),
            # the most cited images: C of them, as the manifest cannot say how many
            "relevance_images": (self.cited,),
            "relevance": (self.cited, len(ATTRIBUTION_METHODS), self.rows * self.cols),
            "relevance_heads": (self.cited, self.layers, self.heads),
        }

    @property
    def cited(self) -> int:
        """The most images partial pruning (and so the relevance maps) can cover: each studied head's hurt images."""
        studied = min(self.layers * self.heads, self.settings["top_k"] * len(METRICS))
        return min(self.images, studied * min(self.settings["hurt_images"], self.images))

    @property
    def table_rows(self) -> dict[str, int]:
        """The most rows each table can have for these images, this model and these settings."""
        heads = self.layers * self.heads
        settings = self.settings
        studied = min(heads, settings["top_k"] * len(METRICS))
        clusters = settings["n_clusters"]
        window = (2 * self.rows - 1) * (2 * self.cols - 1) if settings["kind"] == "patch" else self.rows * self.cols
        return {
            "images": self.images,
            "importance_overall": heads * len(METRICS),
            "importance_per_image": self.images * heads * len(METRICS),
            "importance_unpruned": self.images,
            "pruning_curve": (len(METRICS) + 1) * (settings["curve_steps"] + 1),  # each metric's order and a random one
            "partial": studied * min(settings["hurt_images"], self.images) * len(MODES),
            "pattern_heads": heads,
            "pattern_clusters": clusters,
            "pattern_prototypes": clusters * window,
            "pattern_samples": settings["max_maps"],
        }

    def text_bytes(self, table: str) -> dict[str, int]:
        """The longest value, in UTF-8 bytes, of each text column of ``table``."""
        label = len(f"L{self.layers - 1}H{self.heads - 1}")
        longest = {
            "id": 64, "image_id": 64, "name": self.name_bytes, "label": self.class_bytes, "target": self.class_bytes,
            "predicted": self.class_bytes, "metric": _NAME_BYTES, "mode": _NAME_BYTES, "order": _NAME_BYTES,
            "head_label": label, "heads": self.layers * self.heads * (label + 2),
        }
        return {column: longest[column] for column in _TEXT_COLUMNS.get(table, ())}

    def table_bytes(self, table: str) -> int:
        """The largest honest Parquet file of ``table``: plain-encoded values plus its footer."""
        text = self.text_bytes(table)
        per_row = sum(4 + text[column] if column in text else 9 for column in self.columns(table))
        return _TABLE_OVERHEAD_BYTES + self.table_rows[table] * per_row

    def numbers(self, table: str) -> dict[str, _Range | dict[str, _Range]]:
        """The range of each numeric column of ``table`` (``value`` by the row's metric)."""
        image, layer, head = (_Range(0, count - 1, whole=True) for count in (self.images, self.layers, self.heads))
        settings = self.settings
        cluster = _Range(0, settings["n_clusters"] - 1, whole=True)
        maps = _Range(0, settings["max_maps"], whole=True)
        if settings["kind"] == "patch":  # prototype rows and columns are offsets from the source patch
            row, col = (_Range(1 - side, side - 1, whole=True) for side in (self.rows, self.cols))
        else:
            row, col = (_Range(0, side - 1, whole=True) for side in (self.rows, self.cols))
        share = _NO_SHARE if self.backbone else _SHARE
        # a classifier's target is a class; a backbone's is the image's label, -1 when unknown
        target = _Range(-1 if self.backbone else 0, max(self.labels, 1) - 1, whole=True)
        return {
            "images": {"position": image, "probability": share},
            "importance_overall": {"layer": layer, "head": head, "value": _METRIC_VALUES},
            "importance_per_image": {"image": image, "layer": layer, "head": head, "value": _METRIC_VALUES},
            "importance_unpruned": {
                "image": image, "target": target, "probability": share,
                "correct": _Range(0, 1, whole=True), "labelled": _Range(0, 1, whole=True),
            },
            "pruning_curve": {
                "pruned": _Range(0, self.layers * self.heads, whole=True), "fraction": _SHARE, "accuracy": share,
                **({"similarity": _Range(-1.0, 1.0)} if self.version >= 2 else {}),
            },
            "partial": {
                # a classifier's drop is a difference of probabilities, a backbone's its output_impact (1 - cosine)
                "layer": layer, "head": head, "image": image,
                "drop": _Range(0.0, 2.0) if self.backbone else _Range(-1.0, 1.0), "probability": share,
                "removed_attention": _SHARE, **({"output_impact": _Range(0.0, 2.0)} if self.version >= 2 else {}),
            },
            "pattern_heads": {
                "layer": layer, "head": head, "cluster": cluster, "share": _SHARE, "x": _ANY, "y": _ANY, "maps": maps,
            },
            "pattern_clusters": {
                "cluster": cluster, "maps": maps, "share": _SHARE,
                "head_count": _Range(0, self.layers * self.heads, whole=True),
            },
            "pattern_prototypes": {"cluster": cluster, "row": row, "col": col, "value": _ANY},
            "pattern_samples": {
                "image": image, "layer": layer, "head": head, "source": _Range(-1, self.rows * self.cols - 1, whole=True),
                "x": _ANY, "y": _ANY, "cluster": cluster,
            },
        }[table]

    @property
    def array_values(self) -> dict[str, _Range]:
        """The range of each array's values: attention means and shares, entropy of a hop profile, pixels."""
        hops = max(self.rows, self.cols)
        return {
            "hop_strength": _SHARE,
            "entropy": _Range(0.0, float(np.log(hops))),
            "distance": _Range(0.0, _LARGEST),
            "prefix_share": _SHARE,
            "offset_mean": _SHARE,
            "top_share": _SHARE,
            "key_entropy": _Range(0.0, float(np.log(self.tokens))),
            "sink": _Range(0, self.tokens - 1, whole=True),
            "register_share": _SHARE,
            "outlier_share": _SHARE,
            "outliers": _Range(0, self.tokens, whole=True),
            "norm_ratio": _Range(0.0, _LARGEST),
            "relevance_images": _Range(0, self.images - 1, whole=True),
            # NaN for a backbone's gradient rollout, which is a sum of non-negative terms, unbounded above
            "relevance": _Range(0.0, _LARGEST, missing=True),
            "relevance_heads": _Range(0.0, 1.0, missing=True),
        }


def _study_shape(manifest: dict[str, Any], limits: BundleLimits) -> _StudyShape:
    """The manifest's images, model geometry and settings, each checked."""
    layers = _field(manifest, "model.num_layers", lambda value: _is_count(value, _MAX_MODEL_SIDE))
    heads = _field(manifest, "model.num_heads", lambda value: _is_count(value, _MAX_MODEL_SIDE))
    rows, cols = _field(
        manifest,
        "model.grid",
        lambda value: isinstance(value, list) and len(value) == 2 and all(_is_count(v, _MAX_MODEL_SIDE) for v in value),
    )
    classes = manifest["model"]["class_names"]  # checked by _check_summary
    version = manifest["format_version"]  # checked by _read_manifest
    # a backbone has no classes: its labels index the set's own names
    names = classes
    if not classes:
        names = _field(
            manifest, "image_set.label_names",
            lambda value: isinstance(value, list) and all(isinstance(v, str) for v in value),
        )
    images = _field(
        manifest,
        "image_set.images",
        lambda value: isinstance(value, list) and bool(value)
        and all(
            isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("name"), str)
            and (item.get("label") is None or (type(item["label"]) is int and 0 <= item["label"] < len(names)))
            for item in value
        ),
    )
    if len(images) > limits.max_images:
        raise BundleRejected(
            f"The bundle's case study covers {len(images):,} images; the limit is {limits.max_images:,}, {_FEWER}."
        )
    return _StudyShape(
        images=len(images), layers=layers, heads=heads, rows=rows, cols=cols, classes=len(classes), labels=len(names),
        name_bytes=max(len(item["name"].encode("utf-8", "surrogatepass")) for item in images),
        class_bytes=max((len(name.encode("utf-8", "surrogatepass")) for name in names), default=0),
        settings=manifest["settings"], version=version, prefix=manifest["model"]["num_prefix_tokens"],
    )


def _check_member_sizes(
    files: dict[str, dict[str, Any]], shape: _StudyShape, limits: BundleLimits, probe: _ProbeFacts | None = None
) -> None:
    """Refuse, before any is read, a member larger than its kind can be for this study."""
    for member, entry in files.items():
        if member == PROBE_MEMBER and probe is not None:  # listed only when the manifest names a probe
            _check_probe_size(entry, probe, limits)
            continue
        kind, name = member.split("/", 1)
        name = name.rsplit(".", 1)[0]
        if kind == "tables":
            most, what = shape.table_bytes(name), f"table '{name}'"
        elif kind == "arrays":
            most, what = _NPY_MAX_HEADER + 8 * int(np.prod(shape.arrays[name])), f"array '{name}'"
        else:
            most, what = _MAX_THUMBNAIL_BYTES, "thumbnail"
        if entry["size"] > min(most, limits.max_member_bytes):
            raise BundleRejected(
                f"The bundle's file '{_shown(member)}' is {human_size(entry['size'])}, more than any {what} of "
                f"this study can be ({human_size(min(most, limits.max_member_bytes))}); {_AGAIN}."
            )


def _table(name: str, content: bytes, shape: _StudyShape, limits: BundleLimits) -> pd.DataFrame:
    """The table of a Parquet member, bounded from its footer before any value is decoded.

    Text columns are read as dictionaries, so a long value repeated on every row is held
    once and its decoded size counted before a string is built per row.
    """
    columns = shape.columns(name)
    text = shape.text_bytes(name)
    parquet = _damaged_unless_read(name, lambda: pq.ParquetFile(io.BytesIO(content), read_dictionary=list(text)))
    fixed_width = _check_footer(name, parquet, shape, limits)
    frame = _decoded_frame(name, parquet, text, fixed_width, limits)
    if tuple(frame.columns) != columns:
        raise _damaged(f"table '{name}' does not have the columns {', '.join(columns)}")
    _check_numbers(name, frame, shape.numbers(name))
    for column in TABLE_COLUMNS[name]:
        if column not in frame.columns:  # added after the bundle's format version
            frame[column] = np.nan
    return frame[list(TABLE_COLUMNS[name])]


def _damaged_unless_read(name: str, read: Callable[[], Any]) -> Any:
    """What ``read`` returns from table ``name``; any failure but running out of memory means "damaged"."""
    try:
        return read()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow's reader is C++; any failure means "damaged"
        raise _damaged(f"table '{name}' is not a readable Parquet table") from exc


def _table_too_big(name: str, limits: BundleLimits) -> BundleRejected:
    return BundleRejected(
        f"The bundle's table '{name}' holds more than {human_size(limits.max_table_bytes)} once uncompressed, {_FEWER}."
    )


def _check_footer(name: str, parquet: pq.ParquetFile, shape: _StudyShape, limits: BundleLimits) -> int:
    """Refuse a table whose footer declares other columns, more values, rows or bytes than the study allows,
    or a codec that is not accepted; the bytes its numbers and dictionary indices decode to."""
    columns = shape.columns(name)
    text = shape.text_bytes(name)

    def footer() -> tuple[Any, pa.Schema, list[Any]]:
        meta = parquet.metadata
        groups = (meta.row_group(group) for group in range(meta.num_row_groups))
        chunks = [group.column(column) for group in groups for column in range(meta.num_columns)]
        return meta, parquet.schema_arrow, chunks

    meta, schema, chunks = _damaged_unless_read(name, footer)
    values = meta.num_rows * meta.num_columns
    if tuple(schema.names) != columns:
        raise _damaged(f"table '{name}' does not have the columns {', '.join(columns)}")
    if values > limits.max_table_values:
        raise BundleRejected(
            f"The bundle's table '{name}' holds {values:,} values; the limit is {limits.max_table_values:,}, "
            f"{_FEWER}."
        )
    if meta.num_rows > shape.table_rows[name]:
        raise BundleRejected(
            f"The bundle's table '{name}' has {meta.num_rows:,} rows, more than the {shape.table_rows[name]:,} its "
            f"{MANIFEST} allows; {_AGAIN}."
        )
    codecs = {chunk.compression for chunk in chunks} - set(_PARQUET_CODECS)
    if codecs:
        raise BundleRejected(
            f"The bundle's table '{name}' is compressed with {_shown(', '.join(sorted(codecs)))}, which HeadScope "
            f"does not accept (only snappy or none); {_AGAIN}."
        )
    if sum(chunk.total_uncompressed_size for chunk in chunks) > limits.max_table_bytes:
        raise _table_too_big(name, limits)
    for field in schema:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        textual = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        if not (textual if field.name in text else numeric) and not (pa.types.is_null(kind) and meta.num_rows == 0):
            raise _damaged(
                f"column '{field.name}' of table '{name}' does not hold {'text' if field.name in text else 'numbers'}"
            )
    # numbers and dictionary indices decode to fixed widths: bounded from the footer, before
    # run-length pages of a few KB can decode to gigabytes
    fixed_width = 8 * meta.num_rows * (len(columns) - len(text))
    if fixed_width + 4 * meta.num_rows * len(text) > limits.max_table_bytes:
        raise _table_too_big(name, limits)
    return fixed_width


def _decoded_frame(
    name: str, parquet: pq.ParquetFile, text: dict[str, int], decoded: int, limits: BundleLimits
) -> pd.DataFrame:
    """The table decoded, its text counted against ``max_table_bytes`` (with the ``decoded`` bytes of its
    numbers) before a string is built per row, and the frame's own size checked."""
    table = _damaged_unless_read(name, parquet.read)
    for column in text:
        longest, total = _text_sizes(table.column(column))
        if longest > text[column]:
            raise _damaged(f"column '{column}' of table '{name}' holds a text longer than HeadScope writes there")
        decoded += total
    if decoded > limits.max_table_bytes:
        raise _table_too_big(name, limits)
    frame = _damaged_unless_read(name, functools.partial(_frame, table, text))
    del table
    if int(frame.memory_usage(deep=True).sum()) > 2 * limits.max_table_bytes:  # pandas' own overhead per string
        raise _table_too_big(name, limits)
    return frame


def _text_sizes(column: pa.ChunkedArray) -> tuple[int, int]:
    """The longest value and the total UTF-8 bytes of a text column read as a dictionary, without decoding it."""
    longest = total = 0
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):  # an empty column of nulls
            continue
        lengths = pc.binary_length(chunk.dictionary).fill_null(0)
        if len(lengths):
            longest = max(longest, pc.max(lengths).as_py())
            total += pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0
    return longest, total


def _frame(table: pa.Table, text: dict[str, int]) -> pd.DataFrame:
    """The table as pandas, its dictionary columns decoded back to the strings :func:`save_bundle` wrote."""
    for column in text:
        index = table.schema.get_field_index(column)
        field = table.schema.field(index)
        if pa.types.is_dictionary(field.type):
            table = table.set_column(index, field.with_type(field.type.value_type), table.column(index).cast(field.type.value_type))
    return table.to_pandas()


def _check_values(values: np.ndarray, valid: _Range) -> bool:
    """Whether every value is finite, whole where it must be, and within its range (with float slack)."""
    slack = 0.0 if valid.whole else _SLACK
    values = values.astype(np.float64, copy=False)
    if valid.missing:
        values = values[~np.isnan(values)]
    return bool(
        np.isfinite(values).all()
        and (values >= valid.low - slack).all()
        and (values <= valid.high + slack).all()
        and (not valid.whole or (values == np.round(values)).all())
    )


def _check_numbers(name: str, frame: pd.DataFrame, ranges: dict[str, _Range | dict[str, _Range]]) -> None:
    """Refuse a table with a number that is not finite, not whole where it counts or indexes, or out of range."""
    if not len(frame):
        return
    for column, valid in ranges.items():
        values = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        if isinstance(valid, dict):  # by the row's metric
            metric = frame["metric"].to_numpy()
            ok = all(_check_values(values[metric == key], rule) for key, rule in valid.items())
        else:
            ok = _check_values(values, valid)
        if not ok:
            raise _damaged(
                f"column '{column}' of table '{name}' holds a number that is not finite, not whole or out of range"
            )


def _check_tables(tables: dict[str, pd.DataFrame], shape: _StudyShape) -> None:
    """Refuse tables that disagree with the manifest or with each other."""
    if len(tables["images"]) != shape.images or set(tables["importance_overall"]["metric"]) != set(shape.metrics):
        raise _damaged("its image or importance tables do not match its manifest")
    for name in ("importance_overall", "importance_per_image"):
        if not set(tables[name]["metric"]) <= set(METRICS):
            raise _damaged(f"table '{name}' names an unknown importance metric")
    if len(tables["importance_per_image"]) and set(tables["importance_per_image"]["metric"]) != set(shape.metrics):
        raise _damaged("its per-image importance does not hold the metrics of its model")
    if not set(tables["partial"]["mode"]) <= set(MODES):
        raise _damaged("table 'partial' names an unknown pruning mode")
    clusters = len(tables["pattern_clusters"])
    for name in ("pattern_heads", "pattern_prototypes", "pattern_samples"):
        if len(tables[name]) and tables[name]["cluster"].max() >= clusters:
            raise _damaged(f"table '{name}' names a pattern cluster that table 'pattern_clusters' lacks")


def _check_cited(arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse relevance arrays that disagree on how many images they hold, or that name an image twice."""
    images = arrays["relevance_images"]
    if {len(arrays[name]) for name in _CITED_ARRAYS} != {len(images)} or len(np.unique(images)) != len(images):
        raise _damaged("its relevance arrays do not hold the same images once each")


def _array(name: str, content: bytes, shape: _StudyShape) -> np.ndarray:
    """The array of a ``.npy`` member, its header checked before any data is allocated and its values after."""
    expected = shape.arrays[name]
    stream = io.BytesIO(content)
    try:
        version = np.lib.format.read_magic(stream)
        found, _, dtype = _NPY_HEADER_READERS[version](stream)
    except (ValueError, KeyError, SyntaxError, TypeError) as exc:
        raise _damaged(f"array '{name}' is not a readable .npy file") from exc
    if dtype.kind not in "biuf":
        raise BundleRejected(
            f"The bundle's array '{name}' holds {_shown(dtype)} values, not numbers; "
            "HeadScope never loads Python objects from a bundle."
        )
    if name == "relevance_images" and dtype.kind not in "iu":
        raise _damaged("array 'relevance_images' does not hold whole image positions")
    cited = name in _CITED_ARRAYS and len(found) == len(expected) and found[1:] == expected[1:]
    if cited and 0 <= found[0] <= expected[0]:
        expected = found  # any count of cited images up to the most the settings allow
    if found != expected:
        raise BundleRejected(
            f"The bundle's array '{name}' has shape {found}, but the images, layers and heads "
            f"its {MANIFEST} describes need {expected}; {_AGAIN}."
        )
    if stream.tell() + int(np.prod(found)) * dtype.itemsize != len(content):
        raise _damaged(f"array '{name}' does not hold as many values as its shape says")
    try:
        array = np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(f"array '{name}' is not a readable .npy file") from exc
    if not _check_values(array.ravel(), shape.array_values[name]):
        raise _damaged(f"array '{name}' holds a number that is not finite or out of range")
    return array
