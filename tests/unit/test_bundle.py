"""Result bundles: an exact round trip, and every damaged or foreign bundle refused with one sentence."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import struct
import warnings
import zipfile
import zlib
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.study.bundle import (
    MANIFEST,
    BundleLimits,
    load_bundle,
    save_bundle,
    write_bundle,
)
from core.study.casestudy import ARRAYS, BUNDLE_VERSION, TABLE_COLUMNS, TABLES
from helpers.bundles import bundle_members, edited_bundle, refused, zipped_members

# Set when an object in a refused .npy is unpickled: it must never be.
UNPICKLED: list[str] = []


def _record_unpickling(note: str) -> str:
    UNPICKLED.append(note)
    return note


class _NoisyWhenUnpickled:
    def __reduce__(self):
        return _record_unpickling, ("unpickled",)


@pytest.fixture(scope="module")
def bundle(small_study) -> bytes:
    return save_bundle(small_study)


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _refused(data: bytes, match: str, **kwargs) -> str:
    """Open ``data``, assert it is refused with one sentence matching ``match``; return the sentence."""
    return refused(load_bundle, data, match, **kwargs)


# --- round trip --------------------------------------------------------------------------


def test_round_trip_is_exact(small_study, bundle):
    loaded = load_bundle(bundle, model_key=small_study.manifest["model"]["key"])

    assert set(loaded.tables) == set(TABLES)
    for name in TABLES:
        pd.testing.assert_frame_equal(loaded.tables[name], small_study.tables[name], check_dtype=True)
    assert set(loaded.arrays) == set(ARRAYS)
    for name in ARRAYS:
        assert loaded.arrays[name].dtype == small_study.arrays[name].dtype
        assert loaded.arrays[name].shape == small_study.arrays[name].shape
        np.testing.assert_array_equal(loaded.arrays[name], small_study.arrays[name])
    assert small_study.thumbnails
    assert dict(loaded.thumbnails) == dict(small_study.thumbnails)
    assert loaded.manifest == small_study.manifest


def test_bundle_layout_and_checksums(small_study, bundle):
    members = bundle_members(bundle)
    expected = (
        {MANIFEST}
        | {f"tables/{name}.parquet" for name in TABLES}
        | {f"arrays/{name}.npy" for name in ARRAYS}
        | {f"images/{image_id}.png" for image_id in small_study.thumbnails}
    )
    assert set(members) == expected
    files = json.loads(members[MANIFEST])["files"]
    assert set(files) == expected - {MANIFEST}
    for name, entry in files.items():
        assert entry == {"sha256": hashlib.sha256(members[name]).hexdigest(), "size": len(members[name])}


def test_same_study_gives_same_bytes(small_study, bundle):
    assert save_bundle(small_study) == bundle


def test_unsafe_image_id_is_not_saved(small_study):
    with pytest.raises(ValueError, match="cannot name a bundle member"):
        save_bundle(dataclasses.replace(small_study, thumbnails={"../evil": b"\x89PNG\r\n\x1a\n"}))


def test_write_bundle_is_atomic_and_readable(small_study, bundle, tmp_path):
    target = tmp_path / "study.zip"
    target.write_bytes(b"an older file")

    assert write_bundle(small_study, target) == target

    assert target.read_bytes() == bundle
    assert [path.name for path in tmp_path.iterdir()] == ["study.zip"]  # no temporary file left


# --- not a bundle ------------------------------------------------------------------------


def test_empty_bytes_are_refused():
    _refused(b"", "empty")


def test_random_bytes_are_refused():
    _refused(np.random.default_rng(0).bytes(5000), "not a readable ZIP")


@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_bundle_is_refused(bundle, keep):
    _refused(bundle[: int(len(bundle) * keep)], "not a readable ZIP")


def test_missing_manifest_is_refused(bundle):
    members = bundle_members(bundle)
    del members[MANIFEST]
    _refused(zipped_members(members), "no manifest.json")


@pytest.mark.parametrize(
    "text, match",
    [(b"{not json", "not valid JSON"), (b"\xff\xfe\x00garbage", "not valid JSON"), (b"[1, 2, 3]", "not a JSON object")],
)
def test_manifest_that_is_not_a_json_object_is_refused(bundle, text, match):
    _refused(zipped_members({**bundle_members(bundle), MANIFEST: text}), match)


def test_wrong_format_is_refused(bundle):
    data = edited_bundle(bundle, manifest=lambda meta: meta.update(format="someone-else"))
    message = _refused(data, "not a HeadScope result bundle")
    assert "someone-else" in message
    _refused(edited_bundle(bundle, manifest=lambda meta: meta.pop("format")), "names no format")


def test_future_version_is_refused(bundle):
    message = _refused(
        edited_bundle(bundle, manifest=lambda meta: meta.update(format_version=BUNDLE_VERSION + 1)), "update HeadScope"
    )
    assert f"version {BUNDLE_VERSION + 1}" in message


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda meta: meta["model"].pop("num_heads"), "model.num_heads"),
        (lambda meta: meta["model"].update(key=""), "model.key"),
        (lambda meta: meta.update(model=["not", "an", "object"]), "model.name"),
        (lambda meta: meta["settings"].pop("kind"), "settings.kind"),
        (lambda meta: meta["settings"].update(top_k="5"), "settings.top_k"),
        (lambda meta: meta.update(format_version=0), "format_version"),
        (lambda meta: meta["files"].update({"arrays/entropy.npy": {"sha256": "no", "size": 1}}), "sha256 and size"),
    ],
)
def test_incomplete_manifest_is_refused(bundle, edit, path):
    _refused(edited_bundle(bundle, manifest=edit), re.escape(path))


@pytest.mark.parametrize(
    "edit, path",
    [
        (lambda meta: meta["settings"].update(top_k=-3), "settings.top_k"),
        (lambda meta: meta["settings"].update(kind="everything"), "settings.kind"),
        (lambda meta: meta.pop("created"), "created"),
        (lambda meta: meta["model"].pop("num_prefix_tokens"), "model.num_prefix_tokens"),
        (lambda meta: meta["patterns"].update(baseline_mse="low"), "patterns.baseline_mse"),
        (lambda meta: meta.update(versions=["torch"]), "versions"),
        (lambda meta: meta["model"].pop("prefix_names"), "model.prefix_names"),
        (lambda meta: meta["model"].update(prefix_names=["CLS", "register 1"]), "model.prefix_names"),
        (lambda meta: meta["model"].update(prefix_names=[7]), "model.prefix_names"),
    ],
)
def test_manifest_values_the_page_reads_are_checked(bundle, edit, path):
    """Fields the page and the report read later: a bundle missing one is refused now, not a crash then."""
    _refused(edited_bundle(bundle, manifest=edit), re.escape(path))


def _parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "table, change, match",
    [
        ("importance_overall", lambda f: f.assign(value=f["value"].astype(str)), "does not hold numbers"),
        ("pattern_heads", lambda f: f.assign(head=f["head"] + 100), "out of range"),
        ("importance_overall", lambda f: f[f["metric"] != "taylor"], "do not match its manifest"),
        ("partial", lambda f: f.assign(mode="everything"), "unknown pruning mode"),
    ],
)
def test_table_values_the_case_study_cannot_use_are_refused(small_study, bundle, table, change, match):
    """Checksums recomputed: each table is well-formed Parquet whose values would break the findings."""
    _refused(edited_bundle(bundle, replace={f"tables/{table}.parquet": _parquet(change(small_study.tables[table]))}), match)


def test_a_long_string_that_compresses_to_nothing_is_refused(small_study, bundle):
    """A few KB of Parquet that would decode to a string far over the table cap."""
    clusters = small_study.tables["pattern_clusters"].copy()
    clusters.loc[0, "heads"] = "L0H0, " * 400_000  # 2.4 MB of text, a few KB compressed
    data = edited_bundle(bundle, replace={"tables/pattern_clusters.parquet": _parquet(clusters)})
    assert len(data) < len(bundle) + 200_000
    _refused(data, "once uncompressed", limits=BundleLimits(max_table_bytes=2**20))


# --- damaged -----------------------------------------------------------------------------


def test_changed_table_bytes_fail_the_checksum(bundle):
    name = "tables/pruning_curve.parquet"
    content = bytearray(bundle_members(bundle)[name])
    content[len(content) // 2] ^= 0xFF
    message = _refused(edited_bundle(bundle, replace={name: bytes(content)}, rehash=False), "damaged")
    assert name in message


def test_missing_member_is_damage(bundle):
    name = "arrays/entropy.npy"
    message = _refused(edited_bundle(bundle, drop=(name,), rehash=False), "damaged")
    assert name in message and "missing" in message


@pytest.mark.parametrize("member, kind", [("tables/partial.parquet", "table"), ("arrays/hop_strength.npy", "array")])
def test_missing_table_or_array_is_refused(bundle, member, kind):
    message = _refused(
        edited_bundle(bundle, drop=(member,), manifest=lambda meta: meta["files"].pop(member)), f"no {kind}"
    )
    assert member.split("/")[1].split(".")[0] in message


def test_unlisted_member_is_refused(bundle):
    _refused(zipped_members({**bundle_members(bundle), "images/0123abcd.png": b"\x89PNG\r\n\x1a\n"}), "does not list")


def test_table_that_is_not_parquet_is_refused(bundle):
    _refused(edited_bundle(bundle, replace={"tables/images.parquet": b"PAR1 but not really"}), "table 'images'")


def test_thumbnail_that_is_not_a_png_is_refused(small_study, bundle):
    name = f"images/{next(iter(small_study.thumbnails))}.png"
    _refused(edited_bundle(bundle, replace={name: b"<svg onload=alert(1)>"}), "not a small PNG")


def test_thumbnail_that_would_decode_huge_is_refused(small_study, bundle):
    """A PNG header claiming 30,000 x 30,000 pixels: a few bytes that a browser would try to allocate."""
    name = f"images/{next(iter(small_study.thumbnails))}.png"
    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    _refused(edited_bundle(bundle, replace={name: b"\x89PNG\r\n\x1a\n" + chunk}), "not a small PNG")


def test_table_missing_a_column_is_refused(small_study, bundle):
    """Checksums recomputed: only the column check stands between this table and a KeyError later."""
    buffer = io.BytesIO()
    small_study.tables["partial"].drop(columns="drop").to_parquet(buffer, index=False)
    _refused(edited_bundle(bundle, replace={"tables/partial.parquet": buffer.getvalue()}), "does not have the columns")


def test_object_array_is_refused_without_unpickling(bundle):
    evil = np.array([_NoisyWhenUnpickled()], dtype=object)
    data = edited_bundle(bundle, replace={"arrays/entropy.npy": _npy(evil, allow_pickle=True)})

    _refused(data, "never loads Python objects")

    assert UNPICKLED == []


@pytest.mark.parametrize(
    "name, change",
    [
        ("sink", lambda a: np.full_like(a, 10_000)),  # beyond the model's tokens
        ("sink", lambda a: a - 1 - a.max()),  # negative: only a bundle of an older format lacks sinks
        ("top_share", lambda a: a + 2.0),
        ("outliers", lambda a: a.astype(np.float64) + 0.5),  # a count that is not whole
        ("norm_ratio", lambda a: np.full_like(a, np.inf)),
    ],
)
def test_concentration_arrays_out_of_range_are_refused(small_study, bundle, name, change):
    _refused(edited_bundle(bundle, replace={f"arrays/{name}.npy": _npy(change(small_study.arrays[name]))}), name)


def test_a_current_bundle_without_a_concentration_array_is_refused(bundle):
    member = "arrays/top_share.npy"
    message = _refused(edited_bundle(bundle, drop=(member,), manifest=lambda meta: meta["files"].pop(member)), "no array")
    assert "top_share" in message


def test_array_shape_must_match_the_manifest(small_study, bundle):
    entropy = small_study.arrays["entropy"]
    data = edited_bundle(bundle, replace={"arrays/entropy.npy": _npy(entropy[:, :, :-1])})

    message = _refused(data, "has shape")

    assert str(entropy.shape) in message


def test_manifest_describing_other_images_is_refused(bundle):
    # Every array is intact, but the manifest claims one image fewer.
    _refused(edited_bundle(bundle, manifest=lambda meta: meta["image_set"]["images"].pop()), "has shape|do not match its manifest|out of range|rows, more than")


def test_array_with_fewer_values_than_its_header_is_damage(small_study, bundle):
    content = _npy(small_study.arrays["distance"])
    _refused(edited_bundle(bundle, replace={"arrays/distance.npy": content[:-4]}), "as many values")


# --- unsafe or too large -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "tables/../../evil", "C:/evil", "images\\evil.png"])
def test_unsafe_member_name_is_refused(bundle, name):
    _refused(zipped_members({**bundle_members(bundle), name: b"x"}), "does not accept")


def test_duplicate_member_is_refused(bundle):
    members = bundle_members(bundle)
    buffer = io.BytesIO(bundle)
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "a") as archive:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we mean to write
        archive.writestr("arrays/entropy.npy", members["arrays/entropy.npy"])
    _refused(buffer.getvalue(), "two files named")


def test_unbounded_compression_is_refused(bundle):
    _refused(zipped_members(bundle_members(bundle), compress_type=zipfile.ZIP_BZIP2), "compression method")


def _declare_size(data: bytes, name: str, size: int) -> bytes:
    """The bundle with ``name``'s uncompressed size in the ZIP central directory set to ``size``."""
    edited = bytearray(data)
    offset = data.index(b"PK\x01\x02")  # the first central directory entry
    while True:
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, offset + 28)
        if data[offset + 46 : offset + 46 + name_length] == name.encode():
            struct.pack_into("<I", edited, offset + 24, size)
            return bytes(edited)
        offset += 46 + name_length + extra_length + comment_length


def test_member_declaring_a_huge_size_is_refused_before_reading(bundle):
    data = _declare_size(bundle, "arrays/offset_mean.npy", 0xFFFF_FFF0)
    message = _refused(data, "the limit is")
    assert "offset_mean" in message


def test_total_size_cap(bundle):
    total = sum(len(content) for content in bundle_members(bundle).values())
    _refused(bundle, "the limit is", limits=BundleLimits(max_total_bytes=total - 1))
    assert load_bundle(bundle, limits=BundleLimits(max_total_bytes=total)).tables


def test_table_declaring_too_many_values_is_refused(small_study, bundle):
    rows, columns = small_study.tables["importance_per_image"].shape
    message = _refused(bundle, "table 'importance_per_image'", limits=BundleLimits(max_table_values=rows * columns - 1))
    assert f"{rows * columns:,} values" in message


# --- another model -----------------------------------------------------------------------


def test_bundle_of_another_model_is_refused_naming_both(small_study, bundle):
    key = small_study.manifest["model"]["key"]
    name = small_study.manifest["model"]["name"]

    message = _refused(bundle, "load that model", model_key="vit_tiny-0123456789abcdef", model_name="vit_tiny")

    assert f"'{name}'" in message and key.rsplit("-", 1)[-1][:8] in message
    assert "'vit_tiny'" in message and "01234567" in message


def test_bundle_of_another_model_is_refused_without_a_name(small_study, bundle):
    message = _refused(bundle, "load that model", model_key="other")
    assert "'other'" in message and f"'{small_study.manifest['model']['name']}'" in message


# --- hostile sizes: refused before the expensive step ------------------------------------


def _with_zip64_end(data: bytes, entries: int, size: int) -> bytes:
    """The bundle with a zip64 end record declaring ``entries`` and ``size`` before a classic record claiming none."""
    directory_start = data.index(b"PK\x01\x02")
    body = data[: data.rindex(b"PK\x05\x06")]
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, directory_start)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(body), 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    return body + record + locator + classic


@pytest.mark.parametrize("entries, size, match", [(4_000_000, 200_000, "declares 4,000,000 files"), (20, 2**30, "file directory declares")])
def test_end_records_declaring_a_huge_directory_are_refused_before_zipfile_parses_it(bundle, monkeypatch, entries, size, match):
    """4 million entries cost zipfile 23 s and 1.8 GB; only the end records are read here."""
    import core.study.bundle

    data = _with_zip64_end(bundle, entries, size)
    monkeypatch.setattr(core.study.bundle.zipfile, "ZipFile", lambda *a, **k: pytest.fail("zipfile parsed the directory"))
    _refused(data, match)


def test_max_members_fits_a_real_bundle_with_room(small_study, bundle):
    assert len(bundle_members(bundle)) < 64 < BundleLimits().max_members <= 4096


def test_manifest_bound_fits_the_image_cap_and_is_enforced(bundle):
    """A real manifest's size per image, times the image cap, fits; a manifest past the bound is refused unparsed."""
    meta = json.loads(bundle_members(bundle)[MANIFEST])
    per_image = len(json.dumps(meta["image_set"]["images"], indent=2)) / len(meta["image_set"]["images"])
    limits = BundleLimits()
    assert limits.max_images * 2 * per_image < limits.max_manifest_bytes <= 16 * 2**20
    junk = json.dumps(meta)[:-1].encode() + b', "junk": [' + b"{}," * 4_000_000 + b"{}]}"
    _refused(zipped_members({**bundle_members(bundle), MANIFEST: junk}), "manifest.json is larger than")


def test_too_many_images_are_refused(bundle):
    _refused(bundle, "covers 24 images; the limit is 23", limits=BundleLimits(max_images=23))


@pytest.mark.parametrize("where", ["core.study.bundle.json.loads", "core.study.bundle.pq.ParquetFile.read", "core.study.bundle.np.load"])
def test_running_out_of_memory_is_a_sentence(bundle, monkeypatch, where):
    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(where, out_of_memory)
    _refused(bundle, "needs more memory than is free")


def _forbid(monkeypatch, owner, attribute: str, when: Callable[..., bool]) -> None:
    """Make ``owner.attribute`` fail the test when called on what ``when`` picks out (other calls go through)."""
    real = getattr(owner, attribute)

    def guarded(*args, **kwargs):
        if when(*args):
            pytest.fail(f"{attribute} was reached for the hostile member")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, guarded)


def _metric_text(small_study, compression: str = "snappy") -> bytes:
    """importance_per_image with its honest row count, each metric a 512 KiB string: ~2 GB once decoded per row."""
    table = small_study.tables["importance_per_image"].assign(metric="x" * 2**19)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False, compression=compression)
    return buffer.getvalue()


@pytest.mark.slow
def test_a_dictionary_string_repeated_on_every_row_is_refused_before_decoding(small_study, bundle, monkeypatch):
    import core.study.bundle

    content = _metric_text(small_study)
    assert len(content) < 100_000
    rows = len(small_study.tables["importance_per_image"])
    _forbid(monkeypatch, core.study.bundle, "_frame", lambda table, text: table.num_rows == rows)
    _refused(edited_bundle(bundle, replace={"tables/importance_per_image.parquet": content}), "text longer than HeadScope writes")


def test_a_table_codec_without_a_bounded_ratio_is_refused_unread(small_study, bundle, monkeypatch):
    _forbid(monkeypatch, pq.ParquetFile, "read", lambda file: file.metadata.row_group(0).column(0).compression == "ZSTD")
    content = _metric_text(small_study, "zstd")
    _refused(edited_bundle(bundle, replace={"tables/importance_per_image.parquet": content}), "compressed with ZSTD")


def test_a_table_with_more_rows_than_the_manifest_allows_is_refused_unread(small_study, bundle, monkeypatch):
    clusters = pd.concat([small_study.tables["pattern_clusters"]] * 1000, ignore_index=True)
    data = edited_bundle(bundle, replace={"tables/pattern_clusters.parquet": _parquet(clusters)})
    _forbid(monkeypatch, pq.ParquetFile, "read", lambda file: file.metadata.num_rows == len(clusters))
    _refused(data, "rows, more than the 4 its manifest.json allows")


def test_a_member_larger_than_its_kind_is_refused_before_any_member_is_read(small_study, bundle, monkeypatch):
    """A checksummed thumbnail of zeros (1 GiB of them cost 2 GB before): refused from the listed size."""
    import core.study.bundle

    read: list[str] = []
    real = core.study.bundle._read_member
    monkeypatch.setattr(core.study.bundle, "_read_member", lambda archive, info, entry: read.append(info.filename) or real(archive, info, entry))
    name = f"images/{next(iter(small_study.thumbnails))}.png"
    _refused(edited_bundle(bundle, replace={name: bytes(2 * 2**20)}), "more than any thumbnail")
    array = _npy(np.zeros((10**6,), dtype=np.float32))
    _refused(edited_bundle(bundle, replace={"arrays/entropy.npy": array}), "more than any array 'entropy'")
    assert read == []


def test_members_are_read_one_at_a_time_and_a_bad_one_stops_the_rest(small_study, bundle, monkeypatch):
    import core.study.bundle

    read: list[str] = []
    real = core.study.bundle._read_member
    monkeypatch.setattr(core.study.bundle, "_read_member", lambda archive, info, entry: read.append(info.filename) or real(archive, info, entry))
    curve = small_study.tables["pruning_curve"].assign(accuracy=np.nan)
    _refused(edited_bundle(bundle, replace={"tables/pruning_curve.parquet": _parquet(curve)}), "not finite")
    assert read == [f"tables/{name}.parquet" for name in TABLES[: TABLES.index("pruning_curve") + 1]]


# --- every number read from a bundle -----------------------------------------------------


_TEXT_COLUMNS = {
    "images": {"id", "name", "label", "target"}, "importance_overall": {"metric"}, "importance_per_image": {"metric"},
    "pruning_curve": {"order"}, "partial": {"image_id", "mode", "predicted"}, "pattern_heads": {"head_label"},
    "pattern_clusters": {"heads"},
}
_NUMERIC = [(t, c) for t, columns in TABLE_COLUMNS.items() for c in columns if c not in _TEXT_COLUMNS.get(t, ())]
_ABSURD = (np.nan, np.inf, 1e300)


@pytest.mark.parametrize("table, column", _NUMERIC, ids=[f"{t}.{c}" for t, c in _NUMERIC])
def test_a_non_finite_or_absurd_number_in_any_table_column_is_refused(small_study, bundle, table, column):
    frame = small_study.tables[table]
    assert len(frame), f"the study has no rows in {table} to damage"
    for value in _ABSURD:
        damaged = frame.astype({column: float})
        damaged.loc[0, column] = value
        data = edited_bundle(bundle, replace={f"tables/{table}.parquet": _parquet(damaged)})
        _refused(data, f"column '{column}' of table '{table}' holds a number that is not finite, not whole or out of range")


@pytest.mark.parametrize(
    "table, column, value",
    [("pattern_heads", "cluster", 1.5), ("pattern_samples", "cluster", 4), ("images", "probability", 1.5),
     ("importance_unpruned", "target", 10), ("partial", "drop", -1.5), ("pattern_clusters", "maps", -1)],
)
def test_a_fractional_or_out_of_range_number_is_refused(small_study, bundle, table, column, value):
    damaged = small_study.tables[table].astype({column: float})
    damaged.loc[0, column] = value
    _refused(edited_bundle(bundle, replace={f"tables/{table}.parquet": _parquet(damaged)}), "out of range|cluster that table")


@pytest.mark.parametrize("name", ARRAYS)
def test_a_non_finite_or_absurd_number_in_any_array_is_refused(small_study, bundle, name):
    # a backbone's gradient rollout is NaN in the relevance maps: there only NaN is allowed
    allowed_nan = name in ("relevance", "relevance_heads")
    values = (np.inf, -1.0, 1e300 if name == "relevance" else 1.5) if allowed_nan else _ABSURD
    if name == "relevance_images":  # image positions must be integers: absurd ones
        values = (-1, 10**6)
    for value in values:
        array = small_study.arrays[name].astype(np.int64 if name == "relevance_images" else np.float64)
        array.flat[0] = value
        _refused(edited_bundle(bundle, replace={f"arrays/{name}.npy": _npy(array)}), f"array '{name}' holds a number")


@pytest.mark.parametrize(
    "path",
    ["format_version", "settings.top_k", "settings.hurt_images", "settings.max_maps", "settings.n_clusters",
     "settings.curve_steps", "settings.seed", "model.num_layers", "model.num_heads", "model.grid", "model.num_prefix_tokens",
     "model.patch_size", "patterns.reconstruction_mse", "patterns.baseline_mse", "image_set.images"],
)
def test_a_non_finite_or_absurd_number_in_the_manifest_is_refused(bundle, path):
    """JSON parsing accepts NaN and Infinity; a whole number of 300 digits is still an int."""
    def set_to(value):
        def edit(meta):
            *parents, last = path.split(".")
            target = meta
            for part in parents:
                target = target[part]
            if last == "images":
                target[last][0]["label"] = value
            elif isinstance(target[last], list):
                target[last] = [value, value]
            else:
                target[last] = value
        return edit

    whole = not path.startswith("patterns.")  # an error may be fractional; every other field counts or indexes
    for value in (float("nan"), float("inf"), 1e300, 10**300, -(10**300), *([1.5] if whole else [])):
        _refused(edited_bundle(bundle, manifest=set_to(value)), "has no valid|update HeadScope")


def test_edge_values_are_accepted_and_render(small_study, bundle):
    """Values at the ends of their ranges are honest: the bundle opens and the findings and report render."""
    from core.study.casestudy import findings
    from viz.report import render_report

    tables = dict(small_study.tables)
    tables["images"] = tables["images"].assign(probability=1.0)
    tables["importance_unpruned"] = tables["importance_unpruned"].assign(probability=0.0)
    per_image = tables["importance_per_image"]
    tables["importance_per_image"] = per_image.assign(value=np.where(per_image["metric"] == "taylor", -1e9, per_image["value"]))
    tables["pattern_samples"] = tables["pattern_samples"].assign(x=1e9)
    tables["partial"] = tables["partial"].assign(removed_attention=0.0, drop=1.0)
    edited = dataclasses.replace(small_study, tables=tables)

    loaded = load_bundle(save_bundle(edited))

    for name in TABLES:
        pd.testing.assert_frame_equal(loaded.tables[name], edited.tables[name])
    for metric in ("probability", "taylor"):
        assert findings(loaded, metric).heads
        assert "<html" in render_report(loaded, metric)


def test_a_study_in_which_no_head_hurts_any_image_saves_and_reopens(small_study, demo_handle) -> None:
    from types import SimpleNamespace

    from core.study.casestudy import _partial_table, findings
    from viz.report import render_report

    no_heads = SimpleNamespace(unpruned=small_study.tables["importance_unpruned"])
    empty = _partial_table(demo_handle, None, no_heads, [], 3, None)
    study = dataclasses.replace(small_study, tables={**small_study.tables, "partial": empty})
    reopened = load_bundle(save_bundle(study), model_key=demo_handle.key)
    assert reopened.tables["partial"].empty
    assert tuple(reopened.tables["partial"].columns) == TABLE_COLUMNS["partial"]
    assert all("lowers no single image's target probability" in head.mechanism for head in findings(reopened).heads)
    assert "<html" in render_report(reopened, "probability").lower()


def test_a_member_that_inflates_far_beyond_any_bundle_is_refused_from_the_directory(small_study, bundle, monkeypatch):
    """A listed, checksummed array of zeros: about 64 KB that inflate to 64 MB."""
    zeros = bytes(64 * 2**20)
    data = edited_bundle(bundle, replace={"arrays/entropy.npy": zeros})
    del zeros
    assert len(data) < len(bundle) + 2**20
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("a member was inflated"))
    _refused(data, "inflate to 6[45]")


def test_numeric_columns_are_bounded_from_the_footer_before_any_value_is_decoded(small_study, bundle, monkeypatch):
    per_image = small_study.tables["importance_per_image"]
    limit = 8 * len(per_image) * 2  # far below what the table's numbers decode to
    read = pq.ParquetFile.read

    def read_small_tables(self, *args, **kwargs):
        if self.metadata.num_rows == len(per_image):
            pytest.fail("the table was decoded")
        return read(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", read_small_tables)
    _refused(bundle, "importance_per_image' holds more than", limits=BundleLimits(max_table_bytes=limit))


def test_relevance_arrays_that_disagree_or_exceed_the_settings_are_refused(small_study, bundle):
    images = small_study.arrays["relevance_images"]
    assert len(images) >= 2
    fewer = {"arrays/relevance_images.npy": _npy(images[:-1])}  # one map without its image
    _refused(edited_bundle(bundle, replace=fewer), "relevance arrays do not hold the same images")
    twice = {"arrays/relevance_images.npy": _npy(np.concatenate([images[:-1], images[:1]]))}
    _refused(edited_bundle(bundle, replace=twice), "relevance arrays do not hold the same images")
    outside = {"arrays/relevance_images.npy": _npy(np.where(np.arange(len(images)) == 0, 10_000, images).astype(np.int32))}
    _refused(edited_bundle(bundle, replace=outside), "array 'relevance_images' holds a number")
    too_many = np.zeros((25 * 24, *small_study.arrays["relevance"].shape[1:]), dtype=np.float32)  # more than partial can cite
    _refused(edited_bundle(bundle, replace={"arrays/relevance.npy": _npy(too_many)}), "has shape|more than any array")


def test_relevance_positions_must_be_whole_numbers_in_an_integer_array(small_study, bundle):
    images = small_study.arrays["relevance_images"].astype(np.float64)
    _refused(edited_bundle(bundle, replace={"arrays/relevance_images.npy": _npy(images)}), "whole image positions")
