"""Image sets and the decoding of untrusted image bytes.

Everything a user uploads passes through :func:`decode_image`, the security boundary
for images: only allow-listed decoders run, the pixel count is checked from the header
before any pixel is decoded, the structures a decoder walks (JPEG scans and segments,
PNG chunks, GIF blocks, TIFF tags and tiles, RLE BMP data) are bounded before it runs, and every failure becomes an :class:`ImageRejected` whose
message names the file. Archives go through :func:`image_set_from_zip`, which never
touches the disk and never trusts the sizes an archive declares.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import unicodedata
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from core.errors import ImageRejected, LabelsMismatch, human_size
from core.inputs._imagecheck import check_exif, check_structure
from core.inputs.archive import ArchiveWording, CheckedArchive, open_archive
from core.inputs.digits import digit_images, digits_split

__all__ = [
    "BIDI_CONTROLS",
    "ALLOWED_FORMATS",
    "DEFAULT_LIMITS",
    "FASHION_SAMPLE",
    "FOLDER_LIMITS",
    "NEUTRAL_GREY",
    "SAMPLE_PHOTOS",
    "FolderImage",
    "ImageSet",
    "SetImage",
    "UploadLimits",
    "decode_image",
    "demo_digits_set",
    "fashion_sample_set",
    "image_id",
    "image_set_from_files",
    "image_set_from_folder",
    "image_set_from_zip",
    "image_set_key",
    "join_folder_shares",
    "match_class_name",
    "sample_photos_set",
    "sanitize_name",
    "share_of",
]

# Truncated files must fail loudly: a half-grey image would silently skew every analysis.
ImageFile.LOAD_TRUNCATED_IMAGES = False


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what an upload may cost to read and decode."""

    max_files: int = 500
    max_total_bytes: int = 200 * 2**20
    max_file_bytes: int = 50 * 2**20
    # Checked from the header before decoding, and below Pillow's own bomb limit
    # (~89 megapixels) so Pillow's check is only a second line of defence.
    max_pixels: int = 40_000_000
    # Larger photos are downscaled as early as possible: a ViT sees 224-384 px, and a
    # session may hold hundreds of decoded images.
    max_side: int = 512
    min_side: int = 8
    max_aspect: float = 12.0


DEFAULT_LIMITS = UploadLimits()

# Pillow format names. Only these decoders are ever tried, so exotic plugins
# (EPS via ghostscript, ICO, PCX, ...) can never run on user bytes. MPO is how Pillow
# names the multi-picture JPEGs that phones write.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF")
_ALLOWED_FOR_USERS = "PNG, JPEG, WebP, BMP, GIF, TIFF"
# What Image.open is given: Pillow has no opener named MPO (its JPEG opener returns MPO
# images), and an unknown name makes open() fail for every file.
_OPEN_FORMATS: tuple[str, ...] = tuple(fmt for fmt in ALLOWED_FORMATS if fmt != "MPO")

NEUTRAL_GREY = (128, 128, 128)  # transparent pixels become this: no class evidence either way
_MAX_NAME_CHARS = 80
_FALLBACK_NAME = "image"
# Bidi overrides/isolates and marks can make "gnp.exe" display as "exe.png".
BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Honest archives spend well under 1 KiB of central directory per entry, and list at most
# a few folders and metadata files (__MACOSX, .DS_Store) per image.
_CENTRAL_DIRECTORY_BYTES_PER_FILE = 1024
_LISTED_ENTRIES_PER_FILE = 4
_LISTED_ENTRIES_SLACK = 64
_MAX_LISTED_FOLDERS = 10


@dataclass(frozen=True)
class SetImage:
    """One decoded image of a set.

    Attributes:
        id: First 16 hex characters of the sha256 of the original file bytes.
        name: Sanitised display name.
        image: Decoded image, mode ``"RGB"``, at most ``max_side`` on its longer side.
        label: Class index, or ``None`` when unknown.
    """

    id: str
    name: str
    image: Image.Image
    label: int | None


@dataclass(frozen=True)
class ImageSet:
    """An ordered set of images; ``key`` identifies its content for every cached result.

    Attributes:
        title: Human-readable title including the image count.
        images: The images, in display order.
        key: sha256 hex over the ordered ``(id, label)`` pairs (and the label names, when any).
        label_names: The set's own label names, which labels index when the model has no
            classes (a backbone): the sorted folder names of an ImageFolder upload. Empty
            when labels are the model's class indices.

    Raises:
        LabelsMismatch: with ``label_names``, an image's label is not one of them.
    """

    title: str
    images: tuple[SetImage | FolderImage, ...]
    key: str
    label_names: tuple[str, ...] = ()
    _by_id: dict[str, SetImage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.label_names:
            for item in self.images:
                if item.label is not None and not 0 <= item.label < len(self.label_names):
                    raise LabelsMismatch(
                        f"{item.name} has label {item.label}, but the set names labels 0 to {len(self.label_names) - 1}."
                    )
        index: dict[str, SetImage] = {}
        for item in self.images:
            index.setdefault(item.id, item)
        object.__setattr__(self, "_by_id", index)

    @classmethod
    def from_images(cls, title: str, images: Iterable[SetImage], label_names: Sequence[str] = ()) -> ImageSet:
        """Build a set, computing its key from the ids and labels in order (and ``label_names``)."""
        items = tuple(images)
        names = tuple(label_names)
        return cls(title=title, images=items, key=image_set_key(items, names), label_names=names)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> list[int | None]:
        """The label of each image, in order."""
        return [item.label for item in self.images]

    def label_text(self, label: int | None, class_names: Sequence[str]) -> str:
        """The name of ``label``: the model's class name when it has classes, else the set's own; "" for none."""
        if label is None:
            return ""
        return class_names[label] if class_names else self.label_names[label]

    def by_id(self, image_id: str) -> SetImage:
        """The image with this id; raises ``KeyError`` if the set has none."""
        return self._by_id[image_id]

    def index_of(self, image_id: str) -> int:
        """Position of the image with this id; raises ``KeyError`` if the set has none."""
        return self.images.index(self._by_id[image_id])

    def pil_images(self, part: slice = slice(None)) -> Sequence[Image.Image]:
        """The decoded RGB images (of ``part`` of the set), in order.

        Items are read on access, so for a lazy set (``FolderImage``) a slice of this
        sequence decodes just its own images and nothing stays in memory.
        """
        return _PilImages(self.images[part])


class _PilImages(Sequence[Image.Image]):
    """The images of a set's items, read from each item on access (``FolderImage`` decodes then)."""

    def __init__(self, items: Sequence[SetImage]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [item.image for item in self._items[index]]
        return self._items[index].image


def image_set_key(images: Sequence[SetImage], label_names: Sequence[str] = ()) -> str:
    """sha256 hex over the ordered ``(id, label)`` pairs, then the label names when there are any.

    Labels are part of the key because accuracy-style results depend on them, and so
    are the names a backbone's labels index (the same indices over other folders are
    another labelling); the title is not, since renaming a set changes no result.
    Without label names the key is the pairs' digest alone, as saved bundles recorded it.
    """
    digest = hashlib.sha256()
    for item in images:
        label = "-" if item.label is None else str(item.label)
        digest.update(f"{item.id}:{label}\n".encode("ascii"))
    if label_names:
        # NUL never occurs in the pair lines, and JSON (ASCII only) delimits every name
        digest.update(b"\0label_names\0" + json.dumps(list(label_names)).encode("ascii"))
    return digest.hexdigest()


def image_id(data: bytes) -> str:
    """Stable id of an image: the first 16 hex characters of sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


def sanitize_name(name: str) -> str:
    """A display name safe to show: base name only, no control or bidi characters."""
    base = re.split(r"[/\\]", name)[-1]
    kept = "".join(
        ch
        for ch in base
        if ch not in BIDI_CONTROLS and unicodedata.category(ch) not in ("Cc", "Cs")
    )
    cleaned = unicodedata.normalize("NFC", kept).strip()
    if len(cleaned) > _MAX_NAME_CHARS:
        stem, dot, ext = cleaned.rpartition(".")
        # Keep a short extension visible so "holiday-...-photo.jpg" still reads as a JPEG.
        if dot and stem and len(ext) <= 8:
            cleaned = stem[: _MAX_NAME_CHARS - len(ext) - 1].rstrip() + "." + ext
        else:
            cleaned = cleaned[:_MAX_NAME_CHARS].rstrip()
    if cleaned in ("", ".", ".."):
        return _FALLBACK_NAME
    return cleaned


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:g} megapixels"


def _check_geometry(name: str, width: int, height: int, limits: UploadLimits) -> None:
    """Refuse sizes that are too large to decode or too small/thin to analyse."""
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"{name} is {width}x{height} pixels; the limit is {_megapixels(limits.max_pixels)}."
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            f"{name} is {width}x{height} pixels; images must be at least "
            f"{limits.min_side} pixels on each side."
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise ImageRejected(
            f"{name} is {width}x{height} pixels, an aspect ratio of {aspect:.1f}:1; "
            f"the limit is {limits.max_aspect:g}:1, so crop it closer to square."
        )


def _fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = max_side / max(width, height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _high_bit_to_8bit(img: Image.Image) -> Image.Image:
    """Map 16-bit, 32-bit integer or float greyscale to 8-bit by range.

    Pillow's own conversion clips at 255, which turns a typical 16-bit scan white.
    """
    values = np.asarray(img, dtype=np.float32)
    if img.mode.startswith("I;16"):
        scaled = values / 257.0
    else:
        finite = values[np.isfinite(values)]
        low = float(finite.min()) if finite.size else 0.0
        high = float(finite.max()) if finite.size else 0.0
        if img.mode == "F" and low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        elif low >= 0.0 and high <= 255.0:
            scaled = values
        elif img.mode == "I" and low >= 0.0 and high <= 65535.0:
            scaled = values / 257.0
        else:
            scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    pixels = np.clip(np.nan_to_num(scaled), 0.0, 255.0)
    return Image.fromarray(np.rint(pixels).astype(np.uint8), mode="L")


def _shrink_early(img: Image.Image, max_side: int) -> Image.Image:
    """Reduce by a whole factor right after decoding, before any per-pixel conversion.

    The conversions below (16-bit rescaling, alpha compositing) allocate several copies;
    doing them on the reduced image keeps a 40-megapixel upload from costing gigabytes.
    """
    factor = max(img.size) // max_side
    if factor < 2:
        return img
    if img.mode.startswith("I;16"):
        # Pillow cannot reduce 16-bit images; subsampling keeps the mode (and its range).
        pixels = np.asarray(img)[::factor, ::factor]
        return Image.fromarray(np.ascontiguousarray(pixels))
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    return img.reduce(factor)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB, compositing transparency on neutral grey."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _high_bit_to_8bit(img)
    has_alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*NEUTRAL_GREY, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes,
    name: str,
    *,
    limits: UploadLimits = DEFAULT_LIMITS,
    label: int | None = None,
) -> SetImage:
    """Decode untrusted image bytes into an RGB :class:`SetImage`.

    Args:
        data: The file's bytes; their content, never the name's extension, decides the format.
        name: The file name as given by the user; only a sanitised base name is kept.
        limits: Size bounds to enforce.
        label: Class index to attach, if known.

    Raises:
        ImageRejected: With one sentence naming the file, for anything not safely usable.
    """
    display = sanitize_name(name)
    if not data:
        raise ImageRejected(f"{display} is empty; choose a file that contains an image.")
    if len(data) > limits.max_file_bytes:
        raise ImageRejected(
            f"{display} is {human_size(len(data))}; the limit per file is "
            f"{human_size(limits.max_file_bytes)}."
        )
    try:
        check_structure(display, data)
        with Image.open(io.BytesIO(data), formats=_OPEN_FORMATS) as img:
            if img.format not in ALLOWED_FORMATS:
                raise UnidentifiedImageError(f"unexpected format {img.format}")
            width, height = img.size
            _check_geometry(display, width, height, limits)
            # Only JPEG implements draft: it decodes at 1/2, 1/4 or 1/8 scale, so a
            # 40-megapixel photo never exists in memory at full size.
            img.draft(img.mode, _fit_size(width, height, limits.max_side))
            img.load()
            check_exif(display, img)
            try:
                upright = ImageOps.exif_transpose(img)
            except (SyntaxError, ValueError, TypeError, KeyError, struct.error):
                # A broken EXIF block should not cost the user a picture that decodes.
                upright = img.copy()
            rgb = _to_rgb(_shrink_early(upright, limits.max_side))
    except ImageRejected:
        raise
    except UnidentifiedImageError as exc:
        raise ImageRejected(
            f"{display} is not an image HeadScope can read (allowed: {_ALLOWED_FOR_USERS})."
        ) from exc
    except Image.DecompressionBombError as exc:
        # Pillow refuses inside open(), before the size reaches us; its message has the count.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        claim = f"is {int(found.group(1)) / 1e6:.0f} megapixels" if found else "has too many pixels"
        raise ImageRejected(
            f"{display} {claim}; the limit is {_megapixels(limits.max_pixels)}."
        ) from exc
    except MemoryError as exc:
        raise ImageRejected(
            f"{display} needs too much memory to decode; use a smaller image."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - decoders are C code; any failure means "damaged"
        raise ImageRejected(
            f"{display} is damaged or truncated and could not be decoded; "
            "export it again and re-upload it."
        ) from exc
    if max(rgb.size) > limits.max_side:
        rgb.thumbnail((limits.max_side, limits.max_side), Image.Resampling.LANCZOS)
    return SetImage(id=image_id(data), name=display, image=rgb, label=label)


def _titled(title: str, count: int) -> str:
    return f"{title} ({count} image{'s' if count != 1 else ''})"


def _decode_all(
    entries: Iterable[tuple[str, bytes, int | None]],
    limits: UploadLimits,
    keep: Callable[[SetImage], SetImage | FolderImage] = lambda item: item,
) -> tuple[list[SetImage | FolderImage], list[str]]:
    """Decode each ``(name, bytes, label)``; keep the good (as ``keep`` makes them), note the bad and the repeated."""
    images: list[SetImage | FolderImage] = []
    notes: list[str] = []
    first_name_by_id: dict[str, str] = {}
    for name, data, label in entries:
        # Hash before decoding so a repeated file costs nothing to skip.
        repeated = first_name_by_id.get(image_id(data))
        if repeated is not None:
            notes.append(
                f"{sanitize_name(name)} has the same content as {repeated}, "
                "so it is included only once."
            )
            continue
        try:
            item = decode_image(data, name, limits=limits, label=label)
        except ImageRejected as err:
            notes.append(str(err))
            continue
        first_name_by_id[item.id] = item.name
        images.append(keep(item))
    return images, notes


def _no_usable_images(count: int, notes: Sequence[str], what: str) -> ImageRejected:
    if not notes:
        return ImageRejected(f"There are no {what}; upload {_ALLOWED_FOR_USERS} images.")
    reason = notes[0].rstrip(".")
    if count == 0:  # every file was skipped before it counted, such as a path pointing outside the archive
        return ImageRejected(f"There are no {what} HeadScope can use ({reason}); upload {_ALLOWED_FOR_USERS} images.")
    return ImageRejected(
        f"None of the {count} {what} could be used (for example, {reason}); "
        f"upload {_ALLOWED_FOR_USERS} images."
    )


def image_set_from_files(
    files: Sequence[tuple[str, bytes]],
    *,
    title: str = "Uploaded images",
    limits: UploadLimits = DEFAULT_LIMITS,
) -> tuple[ImageSet, list[str]]:
    """Build a set from uploaded ``(file name, bytes)`` pairs.

    Args:
        files: The uploads, in the order to show them.
        title: Title of the set; the image count is appended.
        limits: Size bounds to enforce.

    Returns:
        The set of accepted images, and one sentence per rejected or repeated file.

    Raises:
        ImageRejected: Too many files or bytes in total, or no file is usable.
    """
    if not files:
        raise ImageRejected("No files were uploaded; choose at least one image.")
    if len(files) > limits.max_files:
        raise ImageRejected(
            f"{len(files)} files were uploaded; the limit is {limits.max_files} at once."
        )
    total = sum(len(data) for _, data in files)
    if total > limits.max_total_bytes:
        raise ImageRejected(
            f"The upload totals {human_size(total)}; the limit is "
            f"{human_size(limits.max_total_bytes)} at once."
        )
    images, notes = _decode_all(((name, data, None) for name, data in files), limits)
    if not images:
        if len(files) == 1 and notes:
            raise ImageRejected(notes[0])
        raise _no_usable_images(len(files), notes, "uploaded files")
    return ImageSet.from_images(_titled(title, len(images)), images), notes


def _normalise_class_name(text: str) -> str:
    spaced = re.sub(r"[_\-\s]+", " ", unicodedata.normalize("NFKC", text))
    return spaced.strip().casefold()


def _class_lookup(
    class_names: Sequence[str], aliases: Sequence[Sequence[str]] | None
) -> dict[str, int]:
    """Map every normalised name to a class index.

    Full names win over aliases, which win over comma-separated synonyms, and earlier
    classes win ties: ImageNet repeats some synonyms ("crane" is a bird and a machine).
    """
    lookup: dict[str, int] = {}
    for index, full in enumerate(class_names):
        lookup.setdefault(_normalise_class_name(full), index)
    for index, extra in enumerate(aliases or ()):
        for alias in extra:
            lookup.setdefault(_normalise_class_name(alias), index)
    for index, full in enumerate(class_names):
        for synonym in full.split(","):
            if synonym.strip():
                lookup.setdefault(_normalise_class_name(synonym), index)
    return lookup


def _folder_labels(
    folders: Iterable[str], class_names: Sequence[str], aliases: Sequence[Sequence[str]] | None
) -> tuple[Callable[[str], int | None], tuple[str, ...]]:
    """How an image's parent folder becomes its label, and the set's own label names.

    With classes, a folder is matched to a class name (:func:`match_class_name`) and
    the set names no labels of its own. A model without classes (a backbone) has
    nothing to match, so every folder is a label: the sorted distinct display names
    of ``folders``, which the labels index.
    """
    if class_names:
        lookup = _class_lookup(class_names, aliases)
        return (lambda folder: lookup.get(_normalise_class_name(folder))), ()
    names = tuple(sorted({sanitize_name(folder) for folder in folders}))
    index = {name: i for i, name in enumerate(names)}
    return (lambda folder: index[sanitize_name(folder)]), names


def _drop_unused_labels(images: list[SetImage], names: tuple[str, ...]) -> tuple[list[SetImage], tuple[str, ...]]:
    """Only the label names some decoded image carries (a folder of broken files names none), in the same order."""
    used = sorted({item.label for item in images if item.label is not None})
    if not names or len(used) == len(names):  # labels that are class indices name nothing here
        return images, names
    renumber = {old: new for new, old in enumerate(used)}
    relabelled = [item if item.label is None else replace(item, label=renumber[item.label]) for item in images]
    return relabelled, tuple(names[old] for old in used)


def match_class_name(
    folder: str,
    class_names: Sequence[str],
    aliases: Sequence[Sequence[str]] | None = None,
) -> int | None:
    """The class index a folder name refers to, or ``None``.

    Matching ignores case, treats ``_`` and ``-`` as spaces, accepts any of a class
    name's comma-separated synonyms, and any of ``aliases[i]`` for class ``i``.
    """
    return _class_lookup(class_names, aliases).get(_normalise_class_name(folder))


def _member_display(name: str) -> str:
    """A member's file name as a note shows it: its last path part, sanitised."""
    parts = [part for part in name.split("/") if part not in ("", ".")]
    return sanitize_name(parts[-1] if parts else name)


def _archive_wording(limits: UploadLimits) -> ArchiveWording:
    unreadable_member = "{} could not be read from the archive; it may be damaged or encrypted.".format
    return ArchiveWording(
        error=ImageRejected,
        empty="The uploaded archive is empty; choose a ZIP file of images.",
        unreadable="The uploaded file is not a readable ZIP archive; create it again with a standard zip tool.",
        too_many=lambda declared: (
            f"The uploaded archive lists far more entries than the limit of "
            f"{limits.max_files} files; split it into smaller archives."
        ),
        unsafe_name=lambda name: (
            f"{sanitize_name(name)} was skipped because its path in the archive points outside the archive."
        ),
        encrypted=lambda name: unreadable_member(_member_display(name)),
        unsupported_method=lambda name: (
            f"{_member_display(name)} uses a compression method HeadScope does not accept "
            "(only stored or deflate), so it was skipped."
        ),
        damaged=lambda name: unreadable_member(_member_display(name)),
        too_large=_too_large_note,
    )


def _too_large_note(name: str, cap: int) -> str:
    return f"{_member_display(name)} is larger than {human_size(cap)} once uncompressed, so it was skipped."


def _open_image_archive(data: bytes, limits: UploadLimits) -> CheckedArchive:
    """The upload as a checked archive, refused if its end records list far more entries than ``max_files`` allows.

    zipfile builds one record per entry until it has consumed the directory size the end
    record it trusts declares, whatever the entry count says, so the size is what bounds
    the work: at most ``size // MIN_ENTRY_BYTES`` records (about 46,000 for 500 files,
    a fraction of a second).
    """
    allowed = _LISTED_ENTRIES_PER_FILE * limits.max_files + _LISTED_ENTRIES_SLACK
    return open_archive(
        data,
        _archive_wording(limits),
        max_entries=allowed,
        max_directory_bytes=allowed * _CENTRAL_DIRECTORY_BYTES_PER_FILE,
    )


def _ignored_entry(parts: Sequence[str]) -> bool:
    # Finder's resource forks and dotfiles (.DS_Store, ._x.jpg) are never user images.
    return parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts)


def _read_entries(
    archive: CheckedArchive,
    candidates: Sequence[tuple[zipfile.ZipInfo, list[str]]],
    label_of: Callable[[str], int | None],
    limits: UploadLimits,
    notes: list[str],
    unmatched: set[str],
) -> Iterator[tuple[str, bytes, int | None]]:
    """Yield ``(name, bytes, label)`` per entry, reading each with a byte cap.

    Unreadable or oversized entries add a sentence to ``notes``; folders that match
    no class are added to ``unmatched``.

    Raises:
        ImageRejected: The entries hold more than ``max_total_bytes`` once uncompressed.
    """
    total = 0
    for info, parts in candidates:
        remaining = limits.max_total_bytes - total
        try:
            # One byte past the cap tells us the entry is too big.
            content = archive.read_at_most(info, min(limits.max_file_bytes, remaining))
        except ImageRejected as err:  # damaged, encrypted or compressed another way: skipped
            notes.append(str(err))
            continue
        # Skipped entries count too: the total bounds the decompression work, not just
        # what is kept, so an archive of many bombs is still refused.
        total += len(content)
        if len(content) > remaining:
            raise ImageRejected(
                f"The archive holds more than {human_size(limits.max_total_bytes)} once "
                "uncompressed; upload fewer or smaller images."
            )
        if len(content) > limits.max_file_bytes:
            notes.append(_too_large_note(info.filename, limits.max_file_bytes))
            continue
        label: int | None = None
        if len(parts) > 1:
            label = label_of(parts[-2])
            if label is None:
                unmatched.add(sanitize_name(parts[-2]))
        yield parts[-1], content, label


def _image_candidates(
    archive: CheckedArchive, limits: UploadLimits, notes: list[str]
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """The archive's files that may be images, with their path parts; a note for each unsafe path.

    Raises:
        ImageRejected: More than ``max_files`` candidates.
    """
    candidates: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in archive.entries:
        # zipfile's is_dir() raises IndexError on an empty name, which no image has.
        if not info.filename or info.is_dir():
            continue
        try:
            archive.check_name(info)
        except ImageRejected as err:
            notes.append(str(err))
            continue
        parts = [part for part in info.filename.split("/") if part not in ("", ".")]
        if not parts or _ignored_entry(parts):
            continue
        candidates.append((info, parts))
    if len(candidates) > limits.max_files:
        raise ImageRejected(
            f"The archive holds {len(candidates)} files; the limit is {limits.max_files}."
        )
    return candidates


def _unmatched_folders_note(unmatched: set[str]) -> str:
    listed = sorted(unmatched)
    shown = ", ".join(listed[:_MAX_LISTED_FOLDERS])
    hidden = len(listed) - _MAX_LISTED_FOLDERS
    more = f" and {hidden} more" if hidden > 0 else ""
    return f"{_UNMATCHED_FOLDERS}{shown}{more}."


def image_set_from_zip(
    data: bytes,
    class_names: Sequence[str],
    *,
    aliases: Sequence[Sequence[str]] | None = None,
    limits: UploadLimits = DEFAULT_LIMITS,
) -> tuple[ImageSet, list[str]]:
    """Build a labelled set from a ZIP in ImageFolder layout (``class_name/xxx.jpg``).

    Each image's label is its immediate parent folder matched with
    :func:`match_class_name`; files at the archive root, or in folders matching no
    class, get ``None``. For a model without classes (``class_names`` empty) the
    folder names themselves, sorted, become the set's ``label_names``. Nothing is
    extracted to disk, and each entry is read with a byte cap, because the sizes an
    archive declares can lie.

    Args:
        data: The archive's bytes.
        class_names: The model's class names; empty for a backbone.
        aliases: Extra names per class, e.g. ImageNet synset ids.
        limits: Size bounds to enforce.

    Returns:
        The set of accepted images, and one sentence per skipped entry or unmatched folder.

    Raises:
        ImageRejected: Not a readable ZIP, too many files or bytes, or no usable image.
    """
    if len(data) > limits.max_total_bytes:
        raise ImageRejected(
            f"The uploaded archive is {human_size(len(data))}; the limit is "
            f"{human_size(limits.max_total_bytes)}."
        )
    notes: list[str] = []
    with _open_image_archive(data, limits) as archive:
        candidates = _image_candidates(archive, limits, notes)
        unmatched: set[str] = set()
        label_of, label_names = _folder_labels(
            (parts[-2] for _, parts in candidates if len(parts) > 1), class_names, aliases
        )
        # Entries are read lazily while decoding, so at most one entry's bytes are held.
        entries = _read_entries(archive, candidates, label_of, limits, notes, unmatched)
        images, decode_notes = _decode_all(entries, limits)
    notes.extend(decode_notes)
    if unmatched:
        notes.append(_unmatched_folders_note(unmatched))
    if not images:
        raise _no_usable_images(len(candidates), notes, "files in the archive")
    images, label_names = _drop_unused_labels(images, label_names)
    return ImageSet.from_images(_titled("Uploaded archive", len(images)), images, label_names), notes


# A folder on the user's own disk (the command line) may be a batch job of many images:
# the per-file caps stay, the set-wide caps do not.
FOLDER_LIMITS = UploadLimits(max_files=1_000_000, max_total_bytes=2**62)


@dataclass(frozen=True)
class FolderImage:
    """An image of a folder read lazily: ``image`` decodes the file again on every access.

    A set of them holds only names, ids and labels, so a folder of any size can be
    analysed batch by batch (the command line does).
    """

    id: str
    name: str
    label: int | None
    path: Path
    limits: UploadLimits = field(default=FOLDER_LIMITS, repr=False)

    @property
    def image(self) -> Image.Image:
        """The decoded image, as ``decode_image`` gives it when the folder was read."""
        try:
            with self.path.open("rb") as stream:
                data = stream.read(self.limits.max_file_bytes + 1)
        except OSError as err:
            raise ImageRejected(f"{self.name} could not be read again ({err.strerror or err}).") from None
        if image_id(data) != self.id:
            raise ImageRejected(f"{self.name} changed while it was being analysed; run the analysis again.")
        return decode_image(data, self.path.name, limits=self.limits, label=self.label).image


def share_of(n: int, rank: int, size: int) -> slice:
    """Process ``rank``'s contiguous share of ``n`` items among ``size``: sizes differ by at most one."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def image_set_from_folder(
    folder: str | Path,
    class_names: Sequence[str],
    *,
    aliases: Sequence[Sequence[str]] | None = None,
    limits: UploadLimits = FOLDER_LIMITS,
    lazy: bool = False,
    share: tuple[int, int] | None = None,
) -> tuple[ImageSet, list[str]]:
    """Build a set from a folder of images, labelled by ImageFolder layout when present.

    Files are taken in sorted path order from the folder and its subfolders (hidden
    files and folders are skipped); an image's label is its parent folder matched with
    :func:`match_class_name`, and images directly in ``folder`` have none. For a model
    without classes (``class_names`` empty) the folder names, sorted, become the set's
    ``label_names``. Each file is read with the per-file byte cap and decoded as an
    upload would be.

    With ``lazy`` the set keeps no pixels: each image is a ``FolderImage``, decoded again
    whenever it is read. With ``share=(rank, size)`` only that process's contiguous share of
    the files is read (``join_folder_shares`` puts the shares together).

    Returns:
        The set, and one sentence per skipped file or unmatched folder.

    Raises:
        ImageRejected: The folder does not exist or holds no usable image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageRejected(f"{sanitize_name(str(folder))} is not a folder; give a folder of images.")
    paths = _folder_files(root)
    if len(paths) > limits.max_files:
        raise ImageRejected(f"The folder holds {len(paths)} files; the limit is {limits.max_files}.")
    label_of, label_names = _folder_labels(
        (path.parent.name for path in paths if path.parent != root), class_names, aliases
    )
    notes: list[str] = []
    unmatched: set[str] = set()

    path_of: dict[str, Path] = {}
    mine = paths[share_of(len(paths), *share)] if share is not None else paths

    def entries() -> Iterator[tuple[str, bytes, int | None]]:
        for path in mine:
            parts = path.relative_to(root).parts
            try:
                with path.open("rb") as stream:
                    content = stream.read(limits.max_file_bytes + 1)
            except OSError as err:
                notes.append(f"{sanitize_name(path.name)} could not be read ({err.strerror or err}), so it was skipped.")
                continue
            if len(content) > limits.max_file_bytes:
                notes.append(f"{sanitize_name(path.name)} is larger than {human_size(limits.max_file_bytes)}, so it was skipped.")
                continue
            label = None
            if len(parts) > 1:
                label = label_of(parts[-2])
                if label is None:
                    unmatched.add(sanitize_name(parts[-2]))
            path_of.setdefault(image_id(content), path)
            yield path.name, content, label

    def lazily(item: SetImage) -> SetImage | FolderImage:
        return FolderImage(item.id, item.name, item.label, path_of[item.id], limits) if lazy else item

    images, decode_notes = _decode_all(entries(), limits, lazily)
    notes.extend(decode_notes)
    if unmatched:
        notes.append(f"{_UNMATCHED_FOLDERS}{', '.join(sorted(unmatched))}.")
    title = root.name or str(root)
    if share is not None:  # one process's part: the shares are checked and relabelled once joined
        return ImageSet(title=title, images=tuple(images), key="", label_names=label_names), notes
    if not images:
        raise _no_usable_images(len(paths), notes, f"files in {sanitize_name(str(root))}")
    images, label_names = _drop_unused_labels(images, label_names)
    return ImageSet.from_images(_titled(title, len(images)), images, label_names), notes


_UNMATCHED_FOLDERS = "Folders that match no class name, so their images have no label: "


def _folder_files(root: Path) -> list[Path]:
    """Every file below ``root`` that could be an image, in sorted path order (hidden ones skipped)."""
    return sorted(
        path for path in root.rglob("*")
        if path.is_file() and not _ignored_entry(path.relative_to(root).parts)
    )


def join_folder_shares(shares: Sequence[tuple[ImageSet, list[str]]], folder: str | Path) -> tuple[ImageSet, list[str]]:
    """The set of a whole folder from its processes' shares (``image_set_from_folder(share=...)``), in rank order.

    Raises:
        ImageRejected: no share holds a usable image.
    """
    images: list[SetImage | FolderImage] = []
    # each process noted the folders of its own share that match no class: one note for all
    notes = [note for _, share_notes in shares for note in share_notes if not note.startswith(_UNMATCHED_FOLDERS)]
    unmatched = {
        name
        for _, share_notes in shares
        for note in share_notes if note.startswith(_UNMATCHED_FOLDERS)
        for name in note.removeprefix(_UNMATCHED_FOLDERS).removesuffix(".").split(", ")
    }
    if unmatched:
        notes.append(f"{_UNMATCHED_FOLDERS}{', '.join(sorted(unmatched))}.")
    seen: dict[str, str] = {}
    for part, _ in shares:
        for item in part.images:
            if item.id in seen:
                notes.append(f"{item.name} has the same content as {seen[item.id]}, so it is included only once.")
                continue
            seen[item.id] = item.name
            images.append(item)
    if not images:
        raise _no_usable_images(len(_folder_files(Path(folder))), notes, f"files in {sanitize_name(str(folder))}")
    kept, label_names = _drop_unused_labels(images, shares[0][0].label_names)
    return ImageSet.from_images(_titled(shares[0][0].title, len(kept)), kept, label_names), notes


def _png_bytes(img: Image.Image) -> bytes:
    """Lossless, deterministic PNG encoding, so an id hashes real, reproducible bytes."""
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def demo_digits_set(seed: int, test_fraction: float) -> ImageSet:
    """The held-out digits the demo model was tested on, with their true labels.

    Names are ``"digit-0042 (7)"``: the ``load_digits`` index and the label.
    """
    split = digits_split(seed, test_fraction)
    pictures, labels = digit_images(split.test)
    images = [
        decode_image(_png_bytes(picture), f"digit-{int(index):04d} ({label})", label=label)
        for index, picture, label in zip(split.test, pictures, labels, strict=True)
    ]
    return ImageSet.from_images(_titled("Digits, held-out split", len(images)), images)


FASHION_SAMPLE = Path(__file__).resolve().parents[2] / "data" / "fashion_sample"


def fashion_sample_set(class_names: Sequence[str], folder: Path = FASHION_SAMPLE) -> ImageSet:
    """The Fashion-MNIST test images shipped in ``data/fashion_sample`` (one folder per class), labelled.

    Names are ``"t10k-01234 (Coat)"``: the image's index in Fashion-MNIST's test split and its class.

    Raises:
        ImageRejected: the folder is missing or holds no image of these classes.
    """
    images = []
    for label, name in enumerate(class_names):
        for path in sorted((folder / name).glob("*.png")) if (folder / name).is_dir() else ():
            images.append(decode_image(path.read_bytes(), f"{path.stem} ({name})", label=label))
    if not images:
        raise ImageRejected(f"The Fashion-MNIST sample images in {folder.name} are missing; rebuild them with scripts/train_probe.py.")
    return ImageSet.from_images(_titled("Fashion-MNIST test images", len(images)), images)


# Natural photos that ship inside scikit-image, so the ImageNet demo works offline.
SAMPLE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "coins",
    "stereo_motorcycle",
)


def sample_photos_set() -> ImageSet:
    """scikit-image's bundled photos, unlabelled, each encoded as PNG for its id."""
    import skimage.data

    images = []
    for photo in SAMPLE_PHOTOS:
        pixels = getattr(skimage.data, photo)()
        if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
            pixels = pixels[0]
        encoded = _png_bytes(Image.fromarray(np.ascontiguousarray(pixels)))
        images.append(decode_image(encoded, photo))
    return ImageSet.from_images(_titled("Sample photos from scikit-image", len(images)), images)
