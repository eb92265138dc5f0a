"""Result bundles: a case study saved as one ZIP file and opened again without recomputing.

Layout of a bundle::

    manifest.json             the study's manifest plus "files": {member: {sha256, size}}
    tables/<name>.parquet     one per name in ``TABLES`` (index dropped)
    arrays/<name>.npy         one per name in ``ARRAYS`` (numeric dtypes only)
    images/<image id>.png     the thumbnails the findings cite

Opening a bundle is a security boundary: the file comes from a user. Nothing is
extracted to disk or unpickled; sizes are checked from the ZIP directory before any
member is read, every read is capped, and every member must match the sha256 the
manifest lists for it. Any failure is a :class:`BundleRejected` with one sentence.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from core.casestudy import ARRAYS, BUNDLE_FORMAT, BUNDLE_VERSION, TABLE_COLUMNS, TABLES, CaseSettings, CaseStudy
from core.errors import BundleRejected
from core.importance import METRICS, MODES
from core.images import _human_size

MANIFEST = "manifest.json"
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
_AGAIN = "save the bundle again with HeadScope"
_FEWER = "so compute the case study on fewer images"


@dataclass(frozen=True)
class BundleLimits:
    """Bounds on what opening a bundle may cost, checked before anything is decompressed.

    Attributes:
        max_members: ZIP entries (a study has one per table, array and thumbnail).
        max_member_bytes: uncompressed size of one entry.
        max_total_bytes: uncompressed size of all entries together.
        max_manifest_bytes: size of ``manifest.json``, which is parsed whole.
        max_table_values: rows times columns of one table, as its Parquet footer
            declares them: encodings such as run-length make a few compressed bytes
            decode to many values, so the member's size does not bound the table's.
        max_table_bytes: uncompressed bytes of one table, as its footer declares them and
            as the decoded table holds them (one long string compresses to almost nothing).
    """

    max_members: int = 100_000
    max_member_bytes: int = 2**30
    max_total_bytes: int = 2 * 2**30
    max_manifest_bytes: int = 64 * 2**20
    max_table_values: int = 2**28
    max_table_bytes: int = 512 * 2**20


DEFAULT_BUNDLE_LIMITS = BundleLimits()


# --- saving ------------------------------------------------------------------------------


def save_bundle(study: CaseStudy) -> bytes:
    """The study as a bundle: a ZIP of its manifest, tables, arrays and thumbnails.

    The same study gives the same bytes (with the same library versions).

    Raises:
        ValueError: a thumbnail's image id is not safe as a file name, or an array holds
            Python objects.
    """
    members: dict[str, bytes] = {}
    for name in TABLES:
        buffer = io.BytesIO()
        study.tables[name].to_parquet(buffer, index=False, engine="pyarrow")
        members[f"tables/{name}.parquet"] = buffer.getvalue()
    for name in ARRAYS:
        buffer = io.BytesIO()
        np.save(buffer, study.arrays[name], allow_pickle=False)
        members[f"arrays/{name}.npy"] = buffer.getvalue()
    for image_id, png in study.thumbnails.items():
        if not _IMAGE_ID.fullmatch(image_id):
            raise ValueError(f"Image id {image_id!r} cannot name a bundle member.")
        members[f"images/{image_id}.png"] = bytes(png)
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
    data = save_bundle(study)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private to its owner; a bundle is meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


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
    if not data:
        raise BundleRejected("The bundle file is empty; choose a .zip file saved by HeadScope.")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise BundleRejected(
            "This file is not a readable ZIP archive, so it is not a HeadScope bundle (it may be truncated); "
            "download or save it again."
        ) from exc
    with archive:
        directory = _checked_directory(archive, limits)
        manifest = _read_manifest(archive, directory, limits)
        _check_settings(manifest)
        _check_model(manifest, model_key, model_name)
        _check_summary(manifest)
        shapes = _array_shapes(manifest)
        files = _checked_files(manifest, directory, limits)
        contents = {name: _read_member(archive, directory[name], entry) for name, entry in files.items()}
    tables = {name: _table(name, contents[f"tables/{name}.parquet"], limits) for name in TABLES}
    _check_tables(tables, shapes["entropy"])
    arrays = {name: _array(name, contents[f"arrays/{name}.npy"], expected) for name, expected in shapes.items()}
    thumbnails: dict[str, bytes] = {}
    for name, content in contents.items():
        image = _IMAGE_MEMBER.fullmatch(name)
        if image:
            thumbnails[image.group(1)] = _thumbnail(name, content)
    return CaseStudy(
        manifest={key: value for key, value in manifest.items() if key != "files"},
        tables=tables,
        arrays=arrays,
        thumbnails=thumbnails,
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


def _shown(text: Any) -> str:
    """Untrusted text fit for a one-line message: printable characters only, shortened."""
    printable = "".join(ch for ch in str(text) if ch.isprintable())
    return printable if len(printable) <= _SHOWN_CHARS else printable[: _SHOWN_CHARS - 1] + "…"


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


def _checked_directory(archive: zipfile.ZipFile, limits: BundleLimits) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by name, refused before any is read if unsafe or too large."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise BundleRejected(f"The bundle holds {len(infos)} files; the limit is {limits.max_members}, {_FEWER}.")
    directory: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        shown = _shown(info.filename)
        if _unsafe_name(info.filename):
            raise BundleRejected(
                f"The bundle holds a file named '{shown}', a path HeadScope does not accept in a bundle; {_AGAIN}."
            )
        if info.filename in directory:
            raise BundleRejected(f"The bundle holds two files named '{shown}'; {_AGAIN}.")
        if info.flag_bits & 0x1:
            raise BundleRejected(f"The bundle's file '{shown}' is encrypted; {_AGAIN} without a password.")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # zipfile decompresses bzip2 and LZMA without a size bound on the output.
            raise BundleRejected(
                f"The bundle's file '{shown}' uses a compression method HeadScope does not accept "
                f"(only stored or deflate); {_AGAIN}."
            )
        if info.file_size > limits.max_member_bytes:
            raise BundleRejected(
                f"The bundle's file '{shown}' is {_human_size(info.file_size)} once uncompressed; "
                f"the limit is {_human_size(limits.max_member_bytes)} per file, {_FEWER}."
            )
        directory[info.filename] = info
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise BundleRejected(
            f"The bundle holds {_human_size(total)} once uncompressed; the limit is "
            f"{_human_size(limits.max_total_bytes)}, {_FEWER}."
        )
    return directory


def _read_capped(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """At most ``cap + 1`` bytes of the entry: one byte past the cap shows a header lied."""
    try:
        with archive.open(info) as stream:
            return stream.read(cap + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise _damaged(f"'{_shown(info.filename)}' cannot be read") from exc


def _read_manifest(
    archive: zipfile.ZipFile, directory: dict[str, zipfile.ZipInfo], limits: BundleLimits
) -> dict[str, Any]:
    """The manifest as a JSON object of this format, of a version this code reads."""
    if MANIFEST not in directory:
        raise BundleRejected(
            f"This ZIP file has no {MANIFEST}, so it is not a HeadScope bundle; choose a bundle saved by HeadScope."
        )
    text = _read_capped(archive, directory[MANIFEST], limits.max_manifest_bytes)
    if len(text) > limits.max_manifest_bytes:
        raise BundleRejected(
            f"The bundle's {MANIFEST} is larger than {_human_size(limits.max_manifest_bytes)}; {_AGAIN}."
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


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
    _field(manifest, "settings.kind", lambda value: value in ("patch", "cls"))
    _field(manifest, "settings.layout", lambda value: value in ("umap", "pca"))


def _check_summary(manifest: dict[str, Any]) -> None:
    """Refuse a manifest lacking the model facts and summaries the page and the report show."""
    for path in ("created", "image_set.key", "image_set.title"):
        _field(manifest, path, lambda value: isinstance(value, str))
    _field(manifest, "model.num_prefix_tokens", lambda value: type(value) is int and value >= 0)
    _field(manifest, "model.patch_size", lambda value: isinstance(value, list) and len(value) == 2 and all(map(_is_count, value)))
    _field(manifest, "model.class_names", lambda value: isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))
    for path in ("patterns.reconstruction_mse", "patterns.baseline_mse"):
        _field(manifest, path, lambda value: type(value) in (int, float) and value >= 0)
    _field(manifest, "versions", lambda value: isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))


def _check_model(manifest: dict[str, Any], model_key: str | None, model_name: str | None) -> None:
    """Refuse a manifest without a model name and key, or whose key is not ``model_key`` (when given)."""
    name = _field(manifest, "model.name", lambda value: isinstance(value, str))
    key = _field(manifest, "model.key", lambda value: isinstance(value, str) and bool(value))
    if model_key is None or key == model_key:
        return
    saved = f"'{_shown(name)}' (weights {_shown(_weights_tag(key))})"
    if model_name:
        loaded = f"'{_shown(model_name)}' (weights {_shown(_weights_tag(model_key))})"
    else:
        loaded = f"key '{_shown(model_key)}'"
    raise BundleRejected(
        f"This bundle was computed with model {saved}; the dashboard has model {loaded} loaded: "
        "load that model on the home page to open it."
    )


def _checked_files(
    manifest: dict[str, Any], directory: dict[str, zipfile.ZipInfo], limits: BundleLimits
) -> dict[str, dict[str, Any]]:
    """The manifest's ``files`` listing, refused unless it lists exactly the archive's other entries."""
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
    for kind, names, suffix in (("table", TABLES, "parquet"), ("array", ARRAYS, "npy")):
        for name in names:
            if f"{kind}s/{name}.{suffix}" not in files:
                raise BundleRejected(
                    f"The bundle has no {kind} '{name}', so it cannot be opened as a case study; {_AGAIN}."
                )
    expected = {f"tables/{name}.parquet" for name in TABLES} | {f"arrays/{name}.npy" for name in ARRAYS}
    for name in files:
        if name not in expected and not _IMAGE_MEMBER.fullmatch(name):
            raise BundleRejected(
                f"The bundle's {MANIFEST} lists '{_shown(name)}', which is not part of a HeadScope bundle; {_AGAIN}."
            )
        if name not in directory:
            raise _damaged(f"'{_shown(name)}' is missing")
    for name in directory:
        if name != MANIFEST and name not in files:
            raise BundleRejected(f"The bundle holds '{_shown(name)}', which its {MANIFEST} does not list; {_AGAIN}.")
    return files


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, entry: dict[str, Any]) -> bytes:
    content = _read_capped(archive, info, entry["size"])
    if len(content) != entry["size"] or hashlib.sha256(content).hexdigest() != entry["sha256"]:
        raise _damaged(f"'{_shown(info.filename)}' does not match its checksum")
    return content


def _table(name: str, content: bytes, limits: BundleLimits) -> pd.DataFrame:
    damaged = _damaged(f"table '{name}' is not a readable Parquet table")
    try:
        parquet = pq.ParquetFile(io.BytesIO(content))
        values = parquet.metadata.num_rows * parquet.metadata.num_columns
    except Exception as exc:  # noqa: BLE001 - pyarrow's reader is C++; any failure means "damaged"
        raise damaged from exc
    if values > limits.max_table_values:
        raise BundleRejected(
            f"The bundle's table '{name}' holds {values:,} values; the limit is {limits.max_table_values:,}, "
            f"{_FEWER}."
        )
    meta = parquet.metadata
    declared = sum(
        meta.row_group(group).column(column).total_uncompressed_size
        for group in range(meta.num_row_groups)
        for column in range(meta.num_columns)
    )
    too_big = BundleRejected(
        f"The bundle's table '{name}' holds more than {_human_size(limits.max_table_bytes)} once uncompressed; {_FEWER}."
    )
    if declared > limits.max_table_bytes:
        raise too_big
    try:
        frame = parquet.read().to_pandas()
    except Exception as exc:  # noqa: BLE001 - as above
        raise damaged from exc
    if int(frame.memory_usage(deep=True).sum()) > 2 * limits.max_table_bytes:  # a footer that lied
        raise too_big
    if tuple(frame.columns) != TABLE_COLUMNS[name]:
        raise _damaged(f"table '{name}' does not have the columns {', '.join(TABLE_COLUMNS[name])}")
    return frame


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


def _check_tables(tables: dict[str, pd.DataFrame], per_head: tuple[int, ...]) -> None:
    """Refuse tables whose values the case study cannot use: wrong kinds, unknown names, indices out of range."""
    images, layers, heads = per_head
    bounds = {"image": images, "layer": layers, "head": heads, "position": images}
    for name, frame in tables.items():
        for column in frame.columns:
            text = column in _TEXT_COLUMNS.get(name, ())
            if text != (pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column])):
                raise _damaged(f"column '{column}' of table '{name}' does not hold {'text' if text else 'numbers'}")
            if column in bounds and len(frame) and not frame[column].between(0, bounds[column] - 1).all():
                raise _damaged(f"column '{column}' of table '{name}' points outside the model or the images")
    if len(tables["images"]) != images or set(tables["importance_overall"]["metric"]) != set(METRICS):
        raise _damaged("its image or importance tables do not match its manifest")
    if not set(tables["partial"]["mode"]) <= set(MODES):
        raise _damaged("table 'partial' names an unknown pruning mode")


def _array_shapes(manifest: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shape of each of ``ARRAYS`` (the ``StrengthStats`` fields) for the manifest's model and images."""
    images = _field(
        manifest,
        "image_set.images",
        lambda value: isinstance(value, list) and bool(value)
        and all(isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("name"), str) for item in value),
    )
    layers = _field(manifest, "model.num_layers", _is_count)
    heads = _field(manifest, "model.num_heads", _is_count)
    rows, cols = _field(
        manifest, "model.grid", lambda value: isinstance(value, list) and len(value) == 2 and all(map(_is_count, value))
    )
    per_head = (len(images), layers, heads)
    return {
        "hop_strength": (*per_head, max(rows, cols)),
        "entropy": per_head,
        "distance": per_head,
        "prefix_share": per_head,
        "offset_mean": (layers, heads, 2 * rows - 1, 2 * cols - 1),
    }


def _array(name: str, content: bytes, expected: tuple[int, ...]) -> np.ndarray:
    """The array of a ``.npy`` member, its header checked before any data is allocated."""
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
    if found != expected:
        raise BundleRejected(
            f"The bundle's array '{name}' has shape {found}, but the images, layers and heads "
            f"its {MANIFEST} describes need {expected}; {_AGAIN}."
        )
    if stream.tell() + int(np.prod(found)) * dtype.itemsize != len(content):
        raise _damaged(f"array '{name}' does not hold as many values as its shape says")
    try:
        return np.load(io.BytesIO(content), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _damaged(f"array '{name}' is not a readable .npy file") from exc
