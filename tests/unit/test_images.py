"""Unit tests of core/inputs/images.py: image decoding as a security boundary, and image sets.

Every hostile input is built here, small, in memory: bombs are small PNGs whose header
claims a huge size, so nothing large is ever allocated.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import io
import random
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.errors import HeadScopeError, ImageRejected
from core.inputs.digits import digit_images, digits_split
from core.inputs.images import (
    ALLOWED_FORMATS,
    DEFAULT_LIMITS,
    ImageSet,
    SetImage,
    UploadLimits,
    decode_image,
    demo_digits_set,
    image_set_from_files,
    image_set_from_zip,
    match_class_name,
    sample_photos_set,
    sanitize_name,
)
from helpers.data import ROOT
from helpers.images import encode, png, solid, with_ihdr_size

GREY = (128, 128, 128)


# ---------------------------------------------------------------- builders


def make_zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, content in entries.items():
            archive.writestr(zipfile.ZipInfo(name), content, compress_type=compression)
    return buffer.getvalue()


def rejection(data: bytes, name: str, **kwargs: object) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, name, **kwargs)
    return str(caught.value)


# ---------------------------------------------------------------- limits and basics


def test_default_limits_are_the_documented_ones() -> None:
    assert DEFAULT_LIMITS == UploadLimits(
        max_files=500,
        max_total_bytes=200 * 2**20,
        max_file_bytes=50 * 2**20,
        max_pixels=40_000_000,
        max_side=512,
        min_side=8,
        max_aspect=12.0,
    )
    # Our pixel cap must bite before Pillow's own bomb check does.
    assert DEFAULT_LIMITS.max_pixels < Image.MAX_IMAGE_PIXELS
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF"}


def test_core_images_never_imports_streamlit() -> None:
    source = ROOT / "core" / "inputs" / "images.py"
    tree = ast.parse(source.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name.split(".")[0] == "streamlit" for name in imported)


def test_decode_png_gives_rgb_image_with_hash_id_and_label() -> None:
    data = png((10, 200, 30), (20, 12))
    item = decode_image(data, "leaf.png", label=3)
    assert isinstance(item, SetImage)
    assert item.id == hashlib.sha256(data).hexdigest()[:16]
    assert item.name == "leaf.png"
    assert item.label == 3
    assert item.image.mode == "RGB"
    assert item.image.size == (20, 12)
    assert item.image.getpixel((5, 5)) == (10, 200, 30)


def test_ids_are_stable_and_depend_only_on_bytes() -> None:
    data = png((1, 2, 3))
    first = decode_image(data, "a.png")
    again = decode_image(data, "renamed.png", label=7)
    other = decode_image(png((1, 2, 4)), "a.png")
    assert first.id == again.id == hashlib.sha256(data).hexdigest()[:16]
    assert len(first.id) == 16
    assert other.id != first.id


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("GIF", {}),
        ("TIFF", {}),
    ],
)
def test_every_allowed_format_decodes(fmt: str, params: dict[str, object]) -> None:
    item = decode_image(encode(solid((200, 40, 40), (24, 16)), fmt, **params), f"x.{fmt.lower()}")
    assert item.image.mode == "RGB"
    assert item.image.size == (24, 16)
    red, green, _ = item.image.getpixel((12, 8))
    assert red > 180 and green < 70


def test_extension_is_irrelevant_content_decides() -> None:
    jpeg_named_png = decode_image(encode(solid((0, 0, 250)), "JPEG"), "really-a-jpeg.png")
    assert jpeg_named_png.image.getpixel((8, 8))[2] > 200
    message = rejection(b"GIF89a? no, just text pretending", "pic.gif")
    assert message.startswith("pic.gif is not an image")


# ---------------------------------------------------------------- bad bytes


def test_empty_file_is_rejected_by_name() -> None:
    message = rejection(b"", "empty.png")
    assert message.startswith("empty.png is empty")


def test_non_image_with_image_extension_is_rejected() -> None:
    message = rejection(b"name,score\nalice,3\n" * 10, "photo.png")
    assert message == (
        "photo.png is not an image HeadScope can read (allowed: PNG, JPEG, WebP, BMP, GIF, TIFF)."
    )


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
def test_truncated_file_is_rejected_not_half_decoded(fmt: str) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = encode(Image.effect_noise((64, 64), 60).convert("RGB"), fmt)
    message = rejection(data[: len(data) * 2 // 3], f"cut.{fmt.lower()}")
    assert message.startswith(f"cut.{fmt.lower()} ")
    assert "could not be decoded" in message or "not an image" in message


def test_corrupted_png_data_is_rejected() -> None:
    data = bytearray(encode(Image.effect_noise((32, 32), 60).convert("RGB")))
    idat = data.index(b"IDAT")
    data[idat + 20 : idat + 40] = b"\xff" * 20
    assert "damaged or truncated" in rejection(bytes(data), "broken.png")


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the mangled TIFF tags
def test_mutated_files_never_raise_anything_but_image_rejected() -> None:
    rng = random.Random(1234)
    seeds = [
        png((90, 60, 30), (24, 24)),
        encode(solid((90, 60, 30), (24, 24)), "JPEG"),
        encode(solid((90, 60, 30), (24, 24)), "GIF"),
        encode(solid((90, 60, 30), (24, 24)), "TIFF"),
        encode(solid((90, 60, 30), (24, 24)), "BMP"),
    ]
    outcomes = {"decoded": 0, "rejected": 0}
    for seed in seeds:
        for _ in range(30):
            mutated = bytearray(seed)
            for _ in range(rng.randint(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            try:
                item = decode_image(bytes(mutated), "fuzz.bin")
            except ImageRejected as err:
                assert str(err).startswith("fuzz.bin ")
                outcomes["rejected"] += 1
            else:
                assert item.image.mode == "RGB"
                outcomes["decoded"] += 1
    assert outcomes["rejected"] > 0


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "EPS", "PPM", "TGA"])
def test_formats_outside_the_allow_list_are_rejected(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import EpsImagePlugin

    def no_ghostscript(*args: object, **kwargs: object) -> None:
        raise AssertionError("ghostscript must never run on user bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", no_ghostscript)
    data = encode(solid((5, 5, 5), (32, 32)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # Pillow itself would read it
    assert "is not an image HeadScope can read" in rejection(data, "sneaky.png")


def test_per_file_byte_cap() -> None:
    data = png()
    message = rejection(data, "heavy.png", limits=UploadLimits(max_file_bytes=len(data) - 1))
    assert message.startswith("heavy.png is ") and "limit per file" in message
    assert decode_image(data, "ok.png", limits=UploadLimits(max_file_bytes=len(data))).id


# ---------------------------------------------------------------- sizes


def test_bomb_over_our_cap_is_refused_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_decode(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", must_not_decode)
    bomb = with_ihdr_size(png(), 7000, 7000)  # 49 MP: below Pillow's limit, above ours
    assert rejection(bomb, "big.png") == "big.png is 7000x7000 pixels; the limit is 40 megapixels."


def test_bomb_over_pillows_own_limit_is_rejected_with_a_sentence() -> None:
    bomb = with_ihdr_size(png(), 30000, 30000)
    message = rejection(bomb, "big.png")
    assert message == "big.png is 900 megapixels; the limit is 40 megapixels."


def test_pixel_cap_follows_the_limits() -> None:
    data = png(size=(20, 20))
    assert "20x20 pixels" in rejection(data, "a.png", limits=UploadLimits(max_pixels=399))
    assert decode_image(data, "a.png", limits=UploadLimits(max_pixels=400)).image.size == (20, 20)


def test_large_jpeg_is_downscaled_early_with_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import JpegImagePlugin

    requested: list[object] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        result = original_draft(self, mode, size)
        requested.append((size, self.size))
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = encode(solid((30, 120, 220), (800, 400)), "JPEG")
    item = decode_image(data, "wide.jpg", limits=UploadLimits(max_side=64))
    assert item.image.size == (64, 32)
    assert requested, "draft was not used for a JPEG"
    _, decoded_size = requested[0]
    assert decoded_size == (100, 50)  # libjpeg decoded at 1/8 scale, never at full size


def test_large_png_is_downscaled_to_max_side() -> None:
    item = decode_image(png(size=(300, 200)), "big.png", limits=UploadLimits(max_side=90))
    assert item.image.size == (90, 60)
    assert item.image.mode == "RGB"


def test_default_max_side_bounds_a_real_photo() -> None:
    item = decode_image(encode(solid((1, 2, 3), (2048, 1536)), "JPEG"), "photo.jpg")
    assert item.image.size == (512, 384)


@pytest.mark.parametrize("size", [(4, 4), (100, 7)])
def test_tiny_images_are_rejected_with_their_size(size: tuple[int, int]) -> None:
    message = rejection(png(size=size), "tiny.png")
    assert message.startswith(f"tiny.png is {size[0]}x{size[1]} pixels")
    assert "at least 8 pixels" in message


def test_extreme_aspect_ratio_is_rejected_with_its_size() -> None:
    message = rejection(png(size=(260, 20)), "strip.png")
    assert message.startswith("strip.png is 260x20 pixels")
    assert "13.0:1" in message and "12:1" in message
    assert decode_image(png(size=(240, 20)), "ok.png").image.size == (240, 20)  # exactly 12:1


# ---------------------------------------------------------------- modes


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    red, green, blue = decode_image(data, "print.jpg").image.getpixel((8, 8))
    assert red > 200 and green < 60 and blue < 60


def test_16_bit_png_is_rescaled_not_clipped() -> None:
    ramp = np.tile(np.array([0, 32768, 65535], dtype=np.uint16).repeat(8), (8, 1))
    data = encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = decode_image(data, "scan.png").image
    assert image.getpixel((2, 2)) == (0, 0, 0)
    assert image.getpixel((10, 2)) == (128, 128, 128)
    assert image.getpixel((20, 2)) == (255, 255, 255)


def test_32_bit_integer_tiff_is_stretched_to_8_bits() -> None:
    values = np.tile(np.array([-100_000, 0, 100_000], dtype=np.int32).repeat(8), (8, 1))
    image = decode_image(encode(Image.fromarray(values, mode="I"), "TIFF"), "depth.tif").image
    assert image.getpixel((2, 2)) == (0, 0, 0)
    assert image.getpixel((10, 2)) == (128, 128, 128)
    assert image.getpixel((20, 2)) == (255, 255, 255)


def test_float_tiff_in_unit_range_is_scaled() -> None:
    values = np.tile(np.array([0.0, 0.5, 1.0], dtype=np.float32).repeat(8), (8, 1))
    image = decode_image(encode(Image.fromarray(values, mode="F"), "TIFF"), "float.tif").image
    assert [image.getpixel((x, 0))[0] for x in (2, 10, 20)] == [0, 128, 255]


def test_one_bit_image_becomes_black_and_white_rgb() -> None:
    bits = Image.new("1", (16, 16), 0)
    bits.paste(1, (8, 0, 16, 16))
    image = decode_image(encode(bits), "bits.png").image
    assert image.getpixel((2, 2)) == (0, 0, 0)
    assert image.getpixel((12, 2)) == (255, 255, 255)


def test_palette_transparency_is_composited_on_grey() -> None:
    palette_image = Image.new("P", (16, 16), 1)
    palette_image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    palette_image.putpixel((0, 0), 0)  # index 0 is red but fully transparent
    data = encode(palette_image, transparency=0)
    image = decode_image(data, "sprite.png").image
    assert image.getpixel((0, 0)) == GREY
    assert image.getpixel((5, 5)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("mode", "clear", "half", "expected_half"),
    [
        ("RGBA", (255, 0, 0, 0), (255, 0, 0, 128), (192, 64, 64)),
        ("LA", (255, 0), (255, 128), (192, 192, 192)),
    ],
)
def test_alpha_is_composited_on_grey(
    mode: str, clear: tuple[int, ...], half: tuple[int, ...], expected_half: tuple[int, int, int]
) -> None:
    img = Image.new(mode, (16, 16), half)
    img.putpixel((0, 0), clear)
    image = decode_image(encode(img), "alpha.png").image
    assert image.getpixel((0, 0)) == GREY
    assert all(abs(a - b) <= 1 for a, b in zip(image.getpixel((8, 8)), expected_half))


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    image = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95), "phone.jpg").image
    assert image.size == (20, 40)
    top_red, _, _ = image.getpixel((10, 5))
    _, _, bottom_blue = image.getpixel((10, 35))
    assert top_red > 200 and bottom_blue > 200


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(fmt: str) -> None:
    frames = [solid((255, 0, 0)), solid((0, 0, 255)), solid((0, 255, 0))]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:], "duration": 100}
    if fmt == "WEBP":
        params["lossless"] = True
    data = encode(frames[0], fmt, **params)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert decode_image(data, f"anim.{fmt.lower()}").image.getpixel((8, 8)) == (255, 0, 0)


def test_multi_picture_phone_jpeg_gives_first_picture() -> None:
    data = encode(solid((255, 0, 0)), "MPO", save_all=True, append_images=[solid((0, 0, 255))])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    red, _, blue = decode_image(data, "stereo.jpg").image.getpixel((8, 8))
    assert red > 200 and blue < 60


# ---------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("../../etc/\u202epasswd.png", "passwd.png"),
        ("C:\\Users\\eve\\evil.png", "evil.png"),
        ("a\x00b\x1b[31mc\n.png", "ab[31mc.png"),
        ("\u2066cat\u2069\u200f.jpg", "cat.jpg"),
        ("cafe\u0301.png", "caf\u00e9.png"),
        ("", "image"),
        ("uploads/", "image"),
        ("..", "image"),
        ("\u202e\u202e", "image"),
    ],
)
def test_hostile_names_are_sanitised(given: str, expected: str) -> None:
    assert sanitize_name(given) == expected


def test_long_names_are_capped_and_keep_their_extension() -> None:
    name = sanitize_name("x" * 300 + ".jpeg")
    assert len(name) == 80 and name.endswith(".jpeg")
    assert len(sanitize_name("y" * 300)) == 80


def test_decoded_images_and_messages_carry_only_the_sanitised_name() -> None:
    hostile = "../../etc/\u202epasswd.png"
    assert decode_image(png(), hostile).name == "passwd.png"
    message = rejection(b"not an image", hostile)
    assert message.startswith("passwd.png ") and "\u202e" not in message and ".." not in message


# ---------------------------------------------------------------- sets from files


def test_image_set_keeps_good_files_and_reports_the_bad() -> None:
    files = [
        ("good.png", png((200, 0, 0))),
        ("empty.png", b""),
        ("notes.png", b"just some text"),
        ("also-good.jpg", encode(solid((0, 200, 0)), "JPEG")),
        ("tiny.png", png(size=(3, 3))),
    ]
    image_set, notes = image_set_from_files(files)
    assert [item.name for item in image_set.images] == ["good.png", "also-good.jpg"]
    assert len(notes) == 3
    assert notes[0].startswith("empty.png") and notes[1].startswith("notes.png")
    assert notes[2].startswith("tiny.png is 3x3 pixels")
    assert image_set.title == "Uploaded images (2 images)"
    assert image_set.labels == [None, None]


def test_duplicate_bytes_are_kept_once_with_a_note() -> None:
    data = png((1, 1, 1))
    files = [("a.png", data), ("b.png", png((2, 2, 2))), ("copy.png", data)]
    image_set, notes = image_set_from_files(files)
    assert [item.name for item in image_set.images] == ["a.png", "b.png"]
    assert notes == ["copy.png has the same content as a.png, so it is included only once."]


def test_too_many_files_is_refused() -> None:
    files = [(f"{i}.png", png((i, i, i))) for i in range(4)]
    with pytest.raises(ImageRejected, match="4 files were uploaded; the limit is 3"):
        image_set_from_files(files, limits=UploadLimits(max_files=3))
    assert len(image_set_from_files(files[:3], limits=UploadLimits(max_files=3))[0]) == 3


def test_too_many_bytes_in_total_is_refused() -> None:
    files = [("a.png", png((1, 0, 0))), ("b.png", png((0, 1, 0)))]
    total = sum(len(data) for _, data in files)
    with pytest.raises(ImageRejected, match="The upload totals"):
        image_set_from_files(files, limits=UploadLimits(max_total_bytes=total - 1))
    assert len(image_set_from_files(files, limits=UploadLimits(max_total_bytes=total))[0]) == 2


def test_no_usable_file_is_refused_with_a_reason() -> None:
    with pytest.raises(ImageRejected) as caught:
        image_set_from_files([("a.txt", b"hello"), ("b.png", b"")])
    message = str(caught.value)
    assert message.startswith("None of the 2 uploaded files could be used")
    assert "a.txt is not an image" in message
    with pytest.raises(ImageRejected, match="^only.png is empty"):
        image_set_from_files([("only.png", b"")])
    with pytest.raises(ImageRejected, match="No files were uploaded"):
        image_set_from_files([])


def test_image_rejected_is_a_headscope_error() -> None:
    assert issubclass(ImageRejected, HeadScopeError)


# ---------------------------------------------------------------- ImageSet


def _item(color: int, label: int | None) -> SetImage:
    return decode_image(png((color, color, color)), f"{color}.png", label=label)


def test_image_set_accessors() -> None:
    items = [_item(1, 0), _item(2, None)]
    image_set = ImageSet.from_images("Two (2 images)", items)
    assert len(image_set) == 2
    assert image_set.labels == [0, None]
    assert image_set.by_id(items[1].id) is items[1]
    assert list(image_set.pil_images()) == [items[0].image, items[1].image]
    with pytest.raises(KeyError):
        image_set.by_id("0" * 16)


def test_set_key_covers_ids_labels_and_order_but_not_title() -> None:
    a, b = _item(1, 0), _item(2, 1)
    key = ImageSet.from_images("x", [a, b]).key
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert ImageSet.from_images("renamed", [a, b]).key == key
    relabelled = SetImage(id=b.id, name=b.name, image=b.image, label=2)
    assert ImageSet.from_images("x", [a, relabelled]).key != key
    unlabelled = SetImage(id=b.id, name=b.name, image=b.image, label=None)
    assert ImageSet.from_images("x", [a, unlabelled]).key != key
    assert ImageSet.from_images("x", [b, a]).key != key
    assert ImageSet.from_images("x", [a]).key != key


def test_set_key_without_label_names_is_the_old_digest_of_the_pairs() -> None:
    # saved bundles and every cache entry hold keys made this way: it must never change
    items = [
        SetImage(id="00aa11bb22cc33dd", name="a.png", image=solid(GREY), label=3),
        SetImage(id="ffee00dd11cc22bb", name="b.png", image=solid(GREY), label=None),
    ]
    expected = hashlib.sha256(b"00aa11bb22cc33dd:3\nffee00dd11cc22bb:-\n").hexdigest()
    assert ImageSet.from_images("old", items).key == expected
    named = ImageSet.from_images("new", items, label_names=["a", "b", "c", "d"])
    assert named.key != expected
    assert ImageSet.from_images("new", items, label_names=["a", "b", "c", "e"]).key != named.key
    # names that run together the same way are still different labellings
    other = [SetImage(id=items[0].id, name="a.png", image=solid(GREY), label=0)]
    assert ImageSet.from_images("x", other, ["a,b"]).key != ImageSet.from_images("x", other, ["a", "b"]).key


def test_label_text_names_a_class_or_the_sets_own_label() -> None:
    items = [_item(1, 1), _item(2, None)]
    own = ImageSet.from_images("x", items, label_names=["cats", "dogs"])
    assert own.label_text(1, []) == "dogs" and own.label_text(None, []) == ""
    classes = ImageSet.from_images("x", items)
    assert classes.label_text(1, ["c0", "c1"]) == "c1" and classes.label_names == ()
    with pytest.raises(ValueError, match="label 1"):
        ImageSet.from_images("x", items, label_names=["only"])


def test_zip_for_a_model_without_classes_labels_by_its_own_folders() -> None:
    data = make_zip(
        {
            "set/zebra/a.png": png((1, 0, 0)),
            "set/okapi/b.png": png((2, 0, 0)),
            "set/zebra/c.png": png((3, 0, 0)),
            "broken/d.png": b"not an image",  # its folder names no decoded image
            "root.png": png((4, 0, 0)),
        }
    )
    image_set, notes = image_set_from_zip(data, [])
    assert image_set.label_names == ("okapi", "zebra")
    assert {item.name: item.label for item in image_set.images} == {"a.png": 1, "b.png": 0, "c.png": 1, "root.png": None}
    assert [image_set.label_text(item.label, []) for item in image_set.images] == ["zebra", "okapi", "zebra", ""]
    assert len(notes) == 1 and "d.png" in notes[0]  # no "match no class name" note: every folder is a label
    classified, _ = image_set_from_zip(data, CLASSES)
    assert classified.label_names == () and classified.key != image_set.key


def test_folder_for_a_model_without_classes_labels_by_its_own_folders(tmp_path: Path) -> None:
    from core.inputs.images import image_set_from_folder

    for folder, color in (("b_dogs", 1), ("a_cats", 2), ("a_cats", 3)):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{color}.png").write_bytes(png((color, 0, 0)))
    (tmp_path / "loose.png").write_bytes(png((9, 0, 0)))
    image_set, notes = image_set_from_folder(tmp_path, [])
    assert notes == []
    assert image_set.label_names == ("a_cats", "b_dogs")
    assert {item.name: image_set.label_text(item.label, []) for item in image_set.images} == {
        "2.png": "a_cats", "3.png": "a_cats", "1.png": "b_dogs", "loose.png": "",
    }


# ---------------------------------------------------------------- class names


def test_match_class_name_rules() -> None:
    names = ["tabby, tabby cat", "golden retriever", "crane", "crane", "Egyptian cat"]
    aliases = [["n02123045"], ["n02099601"], ["n02012849"], ["n03126707"], []]
    assert match_class_name("Tabby_Cat", names) == 0
    assert match_class_name("tabby", names) == 0
    assert match_class_name("TABBY, TABBY CAT", names) == 0
    assert match_class_name("golden-retriever", names) == 1
    assert match_class_name("  egyptian   cat ", names) == 4
    assert match_class_name("n02099601", names, aliases) == 1
    assert match_class_name("n03126707", names, aliases) == 3  # synset ids disambiguate
    assert match_class_name("crane", names) == 2  # otherwise the first class wins
    assert match_class_name("n02099601", names) is None
    assert match_class_name("zebra", names, aliases) is None
    assert match_class_name("7", [str(d) for d in range(10)]) == 7


# ---------------------------------------------------------------- ZIP archives

CLASSES = ["tabby, tabby cat", "golden retriever", "7"]
ALIASES = [["n02123045"], ["n02099601"], []]


def test_zip_labels_come_from_the_immediate_parent_folder() -> None:
    data = make_zip(
        {
            "dataset/Tabby_Cat/a.png": png((1, 0, 0)),
            "dataset/n02099601/b.jpg": encode(solid((0, 1, 0)), "JPEG"),
            "golden-retriever/c.png": png((0, 0, 1)),
            "7/d.png": png((7, 7, 7)),
            "root.png": png((9, 9, 9)),
        }
    )
    image_set, notes = image_set_from_zip(data, CLASSES, aliases=ALIASES)
    assert {item.name: item.label for item in image_set.images} == {
        "a.png": 0,
        "b.jpg": 1,
        "c.png": 1,
        "d.png": 2,
        "root.png": None,
    }
    assert notes == []
    assert image_set.title == "Uploaded archive (5 images)"


def test_zip_unmatched_folders_get_no_label_and_one_note() -> None:
    data = make_zip(
        {
            "zebra/a.png": png((1, 0, 0)),
            "zebra/b.png": png((2, 0, 0)),
            "okapi/c.png": png((3, 0, 0)),
            "tabby/d.png": png((4, 0, 0)),
        }
    )
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert image_set.labels == [None, None, None, 0]
    assert notes == [
        "Folders that match no class name, so their images have no label: okapi, zebra."
    ]


def test_zip_slip_entries_are_skipped_with_a_note() -> None:
    data = make_zip(
        {
            "../evil.png": png((1, 0, 0)),
            "/etc/abs.png": png((2, 0, 0)),
            "tabby/../../up.png": png((3, 0, 0)),
            "tabby\\..\\..\\win.png": png((4, 0, 0)),
            "tabby/fine.png": png((5, 0, 0)),
        }
    )
    assert "../evil.png" in zipfile.ZipFile(io.BytesIO(data)).namelist()
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert [item.name for item in image_set.images] == ["fine.png"]
    assert len(notes) == 4
    assert all("outside the archive" in note for note in notes)
    assert notes[0].startswith("evil.png")


def test_zip_ignores_macos_metadata_and_dotfiles() -> None:
    data = make_zip(
        {
            "__MACOSX/tabby/._a.png": png((1, 0, 0)),
            ".DS_Store": b"\x00\x00\x00\x01Bud1",
            "tabby/.hidden.png": png((2, 0, 0)),
            ".git/x.png": png((3, 0, 0)),
            "tabby/a.png": png((4, 0, 0)),
        }
    )
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert [item.name for item in image_set.images] == ["a.png"]
    assert notes == []


def test_zip_non_image_entries_are_skipped_with_a_note() -> None:
    data = make_zip({"tabby/README.txt": b"cats!", "tabby/a.png": png()})
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert len(image_set) == 1
    assert len(notes) == 1 and notes[0].startswith("README.txt is not an image")


def test_zip_duplicates_are_kept_once() -> None:
    data = make_zip({"tabby/a.png": png(), "golden retriever/b.png": png()})
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert image_set.labels == [0]
    assert notes == ["b.png has the same content as a.png, so it is included only once."]


@pytest.mark.parametrize(
    "data",
    [
        b"definitely not a zip",
        b"PK\x03\x04" + b"\x00" * 40,
        make_zip({"tabby/a.png": png()})[:-30],
    ],
)
def test_corrupt_zip_is_rejected(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="not a readable ZIP archive"):
        image_set_from_zip(data, CLASSES)


def test_empty_zip_upload_and_zip_without_images_are_rejected() -> None:
    with pytest.raises(ImageRejected, match="archive is empty"):
        image_set_from_zip(b"", CLASSES)
    with pytest.raises(ImageRejected, match="None of the 1 files in the archive could be used"):
        image_set_from_zip(make_zip({"notes.txt": b"hi"}), CLASSES)
    only_metadata = make_zip({"__MACOSX/._a.png": png(), "tabby/": b""})
    with pytest.raises(ImageRejected, match="There are no files in the archive"):
        image_set_from_zip(only_metadata, CLASSES)


def test_zip_entry_decompressing_beyond_the_cap_is_skipped() -> None:
    limits = UploadLimits(max_file_bytes=64 * 2**10)
    bomb = make_zip({"tabby/bomb.png": b"\x00" * (8 * 2**20), "tabby/ok.png": png()})
    assert len(bomb) < 64 * 2**10  # the archive itself is small
    image_set, notes = image_set_from_zip(bomb, CLASSES, limits=limits)
    assert [item.name for item in image_set.images] == ["ok.png"]
    assert notes == ["bomb.png is larger than 64 KB once uncompressed, so it was skipped."]


def test_zip_entries_are_read_with_a_byte_cap_whatever_the_header_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    requested: list[int | None] = []
    real_read = zipfile.ZipExtFile.read

    def spy(self: zipfile.ZipExtFile, n: int | None = -1) -> bytes:
        requested.append(n)
        return real_read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    data = bytearray(make_zip({"tabby/bomb.png": b"\x00" * (2 * 2**20), "tabby/ok.png": png()}))
    # Both headers of the bomb now claim 10 bytes: a size check on the header would pass.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.index(signature)
        data[start + offset : start + offset + 4] = struct.pack("<I", 10)
    limits = UploadLimits(max_file_bytes=2**10)
    image_set, notes = image_set_from_zip(bytes(data), CLASSES, limits=limits)
    assert [item.name for item in image_set.images] == ["ok.png"]
    assert len(notes) == 1 and notes[0].startswith("bomb.png ")
    assert requested and all(n == 2**10 + 1 for n in requested)


def test_many_entries_over_the_cap_count_toward_the_total() -> None:
    entries = {f"tabby/bomb{i}.png": b"\x00" * (2 * 2**20) for i in range(4)}
    limits = UploadLimits(max_file_bytes=2**20, max_total_bytes=3 * 2**20)
    with pytest.raises(ImageRejected, match="more than 3 MB once uncompressed"):
        image_set_from_zip(make_zip(entries), CLASSES, limits=limits)


def test_zip_total_uncompressed_bytes_are_capped() -> None:
    entries = {f"tabby/{i}.png": png((i, 0, 0)) + b"\x00" * 4000 for i in range(5)}
    limits = UploadLimits(max_total_bytes=10_000, max_file_bytes=8_000)
    data = make_zip(entries)
    assert len(data) < 10_000
    with pytest.raises(ImageRejected, match="more than .* once uncompressed"):
        image_set_from_zip(data, CLASSES, limits=limits)


def test_zip_max_files_is_enforced() -> None:
    data = make_zip({f"tabby/{i}.png": png((i, 0, 0)) for i in range(4)})
    with pytest.raises(ImageRejected, match="holds 4 files; the limit is 3"):
        image_set_from_zip(data, CLASSES, limits=UploadLimits(max_files=3))
    assert len(image_set_from_zip(data, CLASSES, limits=UploadLimits(max_files=4))[0]) == 4


def test_zip_with_a_huge_central_directory_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = make_zip({f"d/{'n' * 200}{i}.txt": b"" for i in range(400)}, zipfile.ZIP_STORED)

    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("central directory parsed")

    monkeypatch.setattr(zipfile, "ZipFile", must_not_parse)
    with pytest.raises(ImageRejected, match="far more entries"):
        image_set_from_zip(data, CLASSES, limits=UploadLimits(max_files=1))


def test_zip_is_never_extracted_to_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def read_only_open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        if any(flag in mode for flag in "wax+"):
            raise AssertionError(f"wrote to disk: {file!r}")
        return real_open(file, mode, *args, **kwargs)

    data = make_zip({"tabby/a.png": png(), "b.png": png((3, 3, 3))})
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda *a, **k: pytest.fail("extract"))
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: pytest.fail("extractall"))
    image_set, _ = image_set_from_zip(data, CLASSES)
    assert len(image_set) == 2


# ---------------------------------------------------------------- bundled sets


def test_demo_digits_set_is_the_held_out_split() -> None:
    image_set = demo_digits_set(seed=0, test_fraction=0.2)
    assert len(image_set) == 360
    assert "360" in image_set.title
    ids = [item.id for item in image_set.images]
    assert len(set(ids)) == 360
    split = digits_split(0, 0.2)
    pictures, labels = digit_images(split.test[:3])
    assert image_set.labels[:3] == labels
    assert all(label in range(10) for label in image_set.labels)
    first = image_set.images[0]
    assert first.name == f"digit-{int(split.test[0]):04d} ({labels[0]})"
    assert re.fullmatch(r"digit-\d{4} \(\d\)", image_set.images[-1].name)
    assert first.id == hashlib.sha256(encode(pictures[0])).hexdigest()[:16]
    assert first.image.mode == "RGB" and first.image.size == (32, 32)
    assert np.array_equal(np.asarray(first.image)[..., 0], np.asarray(pictures[0]))
    assert demo_digits_set(seed=0, test_fraction=0.2).key == image_set.key


def test_sample_photos_load_offline_as_rgb() -> None:
    image_set = sample_photos_set()
    assert len(image_set) == 9
    assert "9 images" in image_set.title
    assert image_set.labels == [None] * 9
    assert len({item.id for item in image_set.images}) == 9
    for item in image_set.images:
        assert item.image.mode == "RGB"
        assert max(item.image.size) <= DEFAULT_LIMITS.max_side
    assert image_set.images[0].name == "astronaut"
    assert image_set.images[6].image.size == (512, 512)  # camera: greyscale made RGB


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_entries_with_unbounded_decompressors_are_never_decompressed(method: int, monkeypatch) -> None:
    # ~100 MB of zeros compresses to a few hundred bytes with bzip2/LZMA, and zipfile
    # would inflate it all at once whatever byte cap is asked for.
    bomb = make_zip({"3/bomb.png": bytes(100 * 2**20)}, method)
    assert len(bomb) < 100_000
    good = png(size=(16, 16))
    archive = io.BytesIO(bomb)
    with zipfile.ZipFile(archive, "a") as z:
        z.writestr("3/ok.png", good)
    opened: list[str] = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info, *a, **k: opened.append(getattr(info, "filename", info)) or real_open(self, info, *a, **k))
    image_set, notes = image_set_from_zip(archive.getvalue(), [str(d) for d in range(10)])
    assert len(image_set) == 1 and image_set.images[0].label == 3
    assert "3/bomb.png" not in opened
    assert any("bomb.png" in n and "compression method" in n for n in notes)


def test_huge_16bit_image_is_reduced_before_conversion() -> None:
    pixels = (np.arange(2400 * 1600, dtype=np.uint32) % 65536).astype(np.uint16).reshape(1600, 2400)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    item = decode_image(buffer.getvalue(), "scan.png")
    assert max(item.image.size) == DEFAULT_LIMITS.max_side
    assert item.image.mode == "RGB"
    assert np.asarray(item.image).std() > 10  # range-mapped, not clipped to white


# ---------------------------------------------------------------- hostile structure


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("reached the expensive step")


def test_zip64_record_declaring_millions_of_entries_is_refused_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the end records: a classic one claiming an empty directory, and the zip64 one
    # zipfile trusts instead, declaring 4 million 47-byte entries.
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 4_000_000, 4_000_000, 188_000_000, 0)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, 0, 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0, 0, 0, 0, 0)
    monkeypatch.setattr(zipfile, "ZipFile", _never_called)
    with pytest.raises(ImageRejected, match="lists far more entries than the limit of 500 files"):
        image_set_from_zip(zip64 + locator + classic, CLASSES)


def test_honest_zip64_archive_still_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    # zipfile writes zip64 end records only past 65,535 entries; lowering the limit makes
    # it write them for three.
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 1)
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(3):
            with archive.open(f"tabby/{index}.png", "w", force_zip64=True) as entry:
                entry.write(png((index, 9, 9)))
    monkeypatch.undo()
    data = buffer.getvalue()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data
    image_set, notes = image_set_from_zip(data, CLASSES)
    assert len(image_set) == 3 and set(image_set.labels) == {0}
    assert notes == []


def test_zip_entry_with_an_empty_name_is_not_a_crash() -> None:
    data = make_zip({"": b"x", "tabby/a.png": png()})
    image_set, _ = image_set_from_zip(data, CLASSES)
    assert len(image_set) == 1


def progressive(size: tuple[int, int] = (64, 48)) -> bytes:
    return encode(solid((90, 140, 200), size), "JPEG", progressive=True, quality=90)


def with_repeated_scan(data: bytes, times: int) -> bytes:
    """The JPEG with its smallest scan (SOS header and entropy data) repeated before EOI."""
    starts = [m.start() for m in re.finditer(rb"\xff\xda", data)]
    ends = [re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, start + 2).start() for start in starts]
    start, end = min(zip(starts, ends), key=lambda pair: pair[1] - pair[0])
    eoi = data.rindex(b"\xff\xd9")
    return data[:eoi] + data[start:end] * times + data[eoi:]


def test_honest_progressive_jpeg_decodes() -> None:
    data = progressive()
    assert data.count(b"\xff\xda") >= 6
    image = decode_image(data, "prog.jpg").image
    assert image.size == (64, 48)
    assert max(abs(a - b) for a, b in zip(image.getpixel((30, 20)), (90, 140, 200))) < 8


def test_jpeg_with_thousands_of_scans_is_refused_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = with_repeated_scan(progressive(), 5000)
    assert len(data) < 200_000
    monkeypatch.setattr(Image, "open", _never_called)
    message = rejection(data, "scans.jpg")
    assert message.startswith("scans.jpg is a JPEG with 5,0") and "scans; the limit is 256" in message


def test_jpeg_header_segments_and_padding_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(solid((1, 2, 3)), "JPEG")
    comments = data[:2] + b"\xff\xfe\x00\x02" * 5000 + data[2:]
    padded = data[:2] + b"\xff" * (2**20 + 10) + data[2:]
    monkeypatch.setattr(Image, "open", _never_called)
    assert "too many header segments; the limit is 4,096" in rejection(comments, "c.jpg")
    assert "more than 1 MB of padding" in rejection(padded, "p.jpg")


def test_multi_picture_jpeg_with_thumbnails_still_decodes() -> None:
    thumb = encode(solid((0, 0, 255)), "JPEG", progressive=True)
    exif = Image.Exif()
    exif[0x010E] = "x"
    data = encode(solid((255, 0, 0)), "MPO", save_all=True, append_images=[solid((0, 0, 255))],
                  progressive=True, exif=exif.tobytes() + thumb)
    assert data.count(b"\xff\xda") >= 10
    red, _, _ = decode_image(data, "phone.jpg").image.getpixel((8, 8))
    assert red > 200


def any_tiff(tags: list[tuple[int, int, int, int]], body: bytes, endian: str, big: bool) -> bytes:
    """A TIFF or BigTIFF of one IFD in either byte order; a value of -1 is the body's offset."""
    mark = b"II" if endian == "<" else b"MM"
    if not big:
        start = 8 + 2 + 12 * len(tags) + 4
        head = mark + struct.pack(endian + "HL", 42, 8) + struct.pack(endian + "H", len(tags))
        entry, field, tail = endian + "HHL", 4, b"\0" * 4
    else:
        start = 16 + 8 + 20 * len(tags) + 8
        head = mark + struct.pack(endian + "HHHQ", 43, 8, 0, 16) + struct.pack(endian + "Q", len(tags))
        entry, field, tail = endian + "HHQ", 8, b"\0" * 8
    entries = b""
    for tag, typ, count, value in sorted(tags):
        # an inline value sits at the start of its field, in the value's own size
        inline = struct.pack(endian + ("L" if value == -1 else {3: "H", 4: "L"}[typ]), start if value == -1 else value)
        entries += struct.pack(entry, tag, typ, count) + inline.ljust(field, b"\0")
    return head + entries + tail + body


@pytest.mark.parametrize(("endian", "big"), [("<", False), (">", False), ("<", True), (">", True)])
def test_tile_bombs_are_refused_in_every_tiff_byte_order_and_size(
    endian: str, big: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = zlib.compress(bytes(46336 * 16))
    data = any_tiff(
        [(256, 4, 1, 64), (257, 4, 1, 64), (258, 3, 1, 8), (259, 3, 1, 8), (262, 3, 1, 1),
         (277, 3, 1, 1), (322, 4, 1, 46336), (323, 4, 1, 46336), (324, 4, 1, -1),
         (325, 4, 1, len(body))],
        body, endian, big,
    )
    monkeypatch.setattr(Image, "open", _never_called)
    assert rejection(data, "tile.tif") == (
        "tile.tif is 64x64 pixels but stores them in tiles of 46336x46336; "
        "save it again with a standard image editor."
    )


def test_tiff_listing_more_strips_than_its_height_allows_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 10_000
    offsets = struct.pack(f"<{count}L", *([0] * count))
    data = any_tiff(
        [(256, 4, 1, 64), (257, 4, 1, 64), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
         (277, 3, 1, 1), (278, 4, 1, 1), (273, 4, count, -1), (279, 4, count, -1)],
        offsets, "<", False,
    )
    monkeypatch.setattr(Image, "open", _never_called)
    assert "lists 10,000 strips or tiles where its size allows 64" in rejection(data, "s.tif")


def test_tiff_tag_with_a_huge_value_count_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    count = 2**18 + 1
    data = any_tiff(
        [(256, 4, 1, 8), (257, 4, 1, 8), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
         (273, 4, 1, 0), (277, 3, 1, 1), (279, 4, 1, 64), (0xC000, 3, count, -1)],
        bytes(2 * count), "<", False,
    )
    monkeypatch.setattr(Image, "open", _never_called)
    assert "has a TIFF tag of 262,145 values; the limit is 262,144" in rejection(data, "t.tif")


@pytest.mark.parametrize(
    ("shape", "tile", "compression"),
    [((48, 64, 3), (16, 16), None), ((40, 24, 3), (256, 256), "zlib"), ((64, 80), (32, 48), "zlib")],
)
def test_honest_tiled_tiffs_still_load(
    shape: tuple[int, ...], tile: tuple[int, int], compression: str | None
) -> None:
    import tifffile  # a dependency of scikit-image
    pixels = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, tile=tile, compression=compression)
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        assert img.tag_v2[322] == tile[1] and img.tag_v2[323] == tile[0]
    image = decode_image(buffer.getvalue(), "tiled.tif").image
    assert image.size == (shape[1], shape[0])
    expected = pixels if pixels.ndim == 3 else np.repeat(pixels[..., None], 3, axis=2)
    assert np.array_equal(np.asarray(image), expected)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_png_of_too_many_chunks_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = png()
    idat = data.index(b"IDAT") - 4
    hostile = data[:idat] + png_chunk(b"abCd", b"") * 100_001 + data[idat:]
    monkeypatch.setattr(Image, "open", _never_called)
    assert "is a PNG made of too many chunks; the limit is 100,000" in rejection(hostile, "c.png")


def test_png_with_megabytes_of_exif_is_refused() -> None:
    data = png()
    idat = data.index(b"IDAT") - 4
    hostile = data[:idat] + png_chunk(b"eXIf", b"II*\x00" + bytes(2**20 + 10)) + data[idat:]
    assert rejection(hostile, "e.png") == (
        "e.png carries 1 MB of EXIF metadata; the limit is 1 MB, so save it again without the metadata."
    )


def test_gif_with_too_many_blocks_before_its_frame_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(Image.new("P", (16, 16), 3), "GIF")
    frame = data.index(b",")
    hostile = data[:frame] + b"!\x99" + b"\x01x" * 100_001 + b"\x00" + data[frame:]
    monkeypatch.setattr(Image, "open", _never_called)
    assert "is a GIF with too many blocks before its first frame" in rejection(hostile, "g.gif")


def test_large_rle_bmp_is_refused_and_a_small_one_decodes(monkeypatch: pytest.MonkeyPatch) -> None:
    def rle_bmp(codes: bytes) -> bytes:
        palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
        offset = 14 + 40 + len(palette)
        info = struct.pack("<IiiHHIIiiII", 40, 16, 16, 1, 8, 1, len(codes), 2835, 2835, 256, 0)
        return b"BM" + struct.pack("<IHHI", offset + len(codes), 0, 0, offset) + info + palette + codes

    honest = rle_bmp(b"\x10\x80\x00\x00" * 16 + b"\x00\x01")
    assert decode_image(honest, "ok.bmp").image.getpixel((3, 3)) == (128, 128, 128)
    monkeypatch.setattr(Image, "open", _never_called)
    assert "run-length compressed BMP with 2 MB of pixel data; the limit is 2 MB" in rejection(
        rle_bmp(b"\x00\x00" * 2**20 + b"\x00\x00\x00\x01"), "r.bmp"
    )


def test_hostile_files_are_dropped_and_good_ones_kept() -> None:
    hostile = with_repeated_scan(progressive(), 400)
    image_set, notes = image_set_from_files([("good.png", png()), ("bomb.jpg", hostile), ("b.png", png((1, 1, 1)))])
    assert [item.name for item in image_set.images] == ["good.png", "b.png"]
    assert len(notes) == 1 and notes[0].startswith("bomb.jpg is a JPEG with")
