"""Bad inputs through the app (docs/images-and-limits.md): each bad input gets a sentence, nothing is kept from it,
and the app goes on working for the next input.

The decoding rules themselves are unit-tested in ``test_images.py`` and the checkpoint
reader in ``test_model.py``; here the same files go through the home page's uploaders.
"""

from __future__ import annotations

import io
import math
import zipfile

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from helpers.app import notice_texts, started_app
from helpers.images import encode, png, solid, with_ihdr_size
from helpers.markdown import HOSTILE_NAME, assert_text_only, live_markup, shown
from ui.display import plain

TIMEOUT = 180
GOOD = ("good.png", png((200, 30, 30), (32, 32)))


@pytest.fixture
def app(monkeypatch) -> AppTest:
    return started_app(monkeypatch, TIMEOUT)


def _upload(at: AppTest, files: list[tuple[str, bytes]]) -> None:
    if at.radio(key="image_source").value != "Upload images":
        at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(name, data, "application/octet-stream") for name, data in files])
    at.run()
    assert not at.exception, at.exception


def _uploaded_ids(at: AppTest) -> list[str]:
    kept = at.session_state["uploaded_set"] if "uploaded_set" in at.session_state else None
    return [image.id for image in kept[1].images] if kept else []


def _truncated() -> bytes:
    data = encode(solid((1, 2, 3), (64, 64)), "JPEG")
    return data[: len(data) // 2]


def _corrupted() -> bytes:
    data = bytearray(encode(Image.radial_gradient("L").convert("RGB")))
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    return bytes(data)


BAD_IMAGES = {
    "empty file": ("empty.png", b"", "empty"),
    "text named .png": ("notes.png", b"just some text, not pixels" * 10, "not an image"),
    "truncated JPEG": ("cut.jpg", _truncated(), "cut.jpg"),
    "corrupted PNG": ("broken.png", _corrupted(), "broken.png"),
    "decompression bomb": ("bomb.png", with_ihdr_size(png(), 30_000, 30_000), "megapixel"),
    "tiny image": ("tiny.png", png(size=(4, 4)), "4x4"),
    "extreme aspect ratio": ("strip.png", png(size=(600, 8)), "600x8"),
    # the uploader only takes allowed extensions, so an ICO file arrives under an allowed name
    "format outside the allow-list": ("icon.png", encode(solid((9, 9, 9), (32, 32)), "ICO"), "allowed: PNG"),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_image_gets_a_sentence_and_the_app_keeps_going(app: AppTest, case: str) -> None:
    name, data, reason = BAD_IMAGES[case]
    _upload(app, [GOOD, (name, data)])
    text = notice_texts(app)
    assert "1 images ready" in text
    assert name in text and reason in text
    assert "Traceback" not in text
    good_ids = _uploaded_ids(app)
    assert len(good_ids) == 1  # the bad file left nothing behind

    _upload(app, [(name, data)])  # the bad file alone: refused, the previous upload stays
    assert app.error and name in shown(app.error[0].value)
    assert "Still showing Uploaded images (1 image)" in shown(app.error[0].value)
    assert _uploaded_ids(app) == good_ids
    assert "Uploaded images (1 image)" in app.caption[0].value

    second = ("next.png", png((10, 10, 250), (40, 40)))
    _upload(app, [second])  # and the next good input works
    assert not app.error
    assert _uploaded_ids(app) != good_ids and len(_uploaded_ids(app)) == 1


def test_odd_but_legitimate_images_are_all_accepted(app: AppTest) -> None:
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    cmyk = Image.new("CMYK", (40, 40), (0, 255, 255, 0))
    sixteen = Image.new("I;16", (40, 40), 40_000)
    palette = solid((0, 200, 0), (40, 40)).convert("P")
    rotated = solid((0, 0, 200), (60, 30))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    frames = [solid((c, c, c), (40, 40)) for c in (0, 120, 240)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    huge = Image.effect_noise((4000, 3000), 60).convert("RGB")
    files = [
        ("alpha.png", encode(rgba)),
        ("cmyk.jpg", encode(cmyk, "JPEG")),
        ("deep.png", encode(sixteen)),
        ("palette.png", encode(palette)),
        ("exif.jpg", encode(rotated, "JPEG", exif=exif)),
        ("animated.gif", animated.getvalue()),
        ("huge.jpg", encode(huge, "JPEG", quality=70)),
        ("../../etc/passwd.png", png((5, 5, 5), (32, 32))),
    ]
    _upload(app, files)
    assert "8 images ready" in notice_texts(app)
    kept = app.session_state["uploaded_set"][1]
    assert all(image.image.mode == "RGB" for image in kept.images)
    assert max(max(image.image.size) for image in kept.images) <= 512  # the 12 MP photo was reduced
    by_name = {image.name: image for image in kept.images}
    assert by_name["exif.jpg"].image.size == (30, 60)  # EXIF rotation applied
    assert not any("/" in name or ".." in name for name in by_name)  # hostile path stripped


def test_too_many_files_are_refused_at_once(app: AppTest) -> None:
    files = [(f"f{i}.png", png((i % 256, 0, 0), (16, 16))) for i in range(501)]
    _upload(app, files)
    assert "501 files were uploaded; the limit is 500" in shown(app.error[0].value)
    assert _uploaded_ids(app) == []
    assert "360 images" in app.caption[0].value  # the samples stay


# --- checkpoints -------------------------------------------------------------------------


def _state_bytes(model: torch.nn.Module) -> bytes:
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


def _nan_weights() -> bytes:
    model = timm.create_model("test_vit", pretrained=False)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    state["blocks.0.attn.qkv.weight"][0, 0] = math.nan
    return save(state)


def _legit_pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), buffer)
    return buffer.getvalue()


BAD_CHECKPOINTS = {
    "zero bytes": (b"", "empty"),
    "truncated safetensors": (_state_bytes(timm.create_model("test_vit", pretrained=False))[:5000], "truncated"),
    "wrong architecture": (_state_bytes(timm.create_model("test_vit2", pretrained=False)), "does not fit"),
    "NaN weights": (_nan_weights(), "NaN"),
}


def _load_checkpoint(at: AppTest, name: str, data: bytes, file_name: str = "weights.safetensors") -> None:
    if at.radio(key="model_source").value != "timm model":
        at.radio(key="model_source").set_value("timm model").run()
    at.text_input(key="timm_name").set_value(name).run()
    at.sidebar.get("file_uploader")[0].set_value((file_name, data, "application/octet-stream"))
    at.run()
    at.button(key="load_model").click().run()
    assert not at.exception, at.exception


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_keeps_the_demo_model(app: AppTest, case: str) -> None:
    data, reason = BAD_CHECKPOINTS[case]
    _load_checkpoint(app, "test_vit", data)
    assert app.error and reason in shown(app.error[0].value), (case, [e.value for e in app.error])
    assert app.caption[0].value.startswith("**demo**")
    assert "model_spec" not in app.session_state  # nothing of the failed load was kept
    _load_checkpoint(app, "test_vit", _state_bytes(timm.create_model("test_vit", pretrained=False)))
    assert shown(app.caption[0].value).startswith("**test_vit (checkpoint")  # the next good one loads


def test_plain_pickle_named_safetensors_is_read_by_content_and_safely(app: AppTest) -> None:
    _load_checkpoint(app, "test_vit", _legit_pickle(), "renamed.safetensors")
    assert not app.error
    assert shown(app.caption[0].value).startswith("**test_vit (checkpoint")


# --- user strings rendered as Markdown ----------------------------------------------------

HOSTILE_URL_NAME = "https:host?1.png"
HOSTILE_FOLDER = "[f](https:host) ![](https:host) $x$"


def _markdown_sources(at: AppTest) -> list[str]:
    """Every element Streamlit renders as Markdown, main area and sidebar."""
    kinds = ("markdown", "caption", "subheader", "header", "title", "error", "warning", "info", "success")
    return [str(element.value) for kind in kinds for element in getattr(at, kind)]


def _holding(at: AppTest, user_string: str) -> list[str]:
    """The Markdown sources that show ``user_string``; each must hold it as text, with nothing else live."""
    found = [source for source in _markdown_sources(at) if plain(user_string) in source]
    for source in found:
        assert_text_only(source, user_string)
    for source in _markdown_sources(at):
        assert live_markup(source, allowed=":") == [], source
    return found


def test_upload_names_stay_text_in_the_focus_line_and_the_notes(app: AppTest) -> None:
    _upload(app, [(HOSTILE_NAME, GOOD[1]), (HOSTILE_URL_NAME, b"not an image")])
    assert not app.exception, app.exception
    focus_line = _holding(app, HOSTILE_NAME)
    assert any("predicted" in source for source in focus_line)  # the home page's focus line
    assert [w for w in _holding(app, HOSTILE_URL_NAME) if w in [n.value for n in app.sidebar.warning]]

    _upload(app, [(HOSTILE_URL_NAME, b"not an image")])  # refused alone: the sidebar's error quotes it
    assert app.error and plain(HOSTILE_URL_NAME) in app.error[0].value
    _holding(app, HOSTILE_URL_NAME)


def test_zip_folder_and_file_names_stay_text(app: AppTest) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{HOSTILE_FOLDER}/{HOSTILE_NAME}", GOOD[1])
    app.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    app.sidebar.get("file_uploader")[0].set_value(("set.zip", buffer.getvalue(), "application/zip"))
    app.run()
    assert not app.exception, app.exception
    assert _holding(app, HOSTILE_FOLDER)  # the note on folders that match no class
    assert _holding(app, HOSTILE_NAME)  # the focus line


def test_a_typed_image_id_and_model_name_stay_text(app: AppTest) -> None:
    app.text_input(key="focus_id_input").set_value(HOSTILE_NAME).run()
    assert _holding(app, HOSTILE_NAME)  # "No image in this set has the id …"
    typed = "vit` [a](https:host) ![](https:host) `"
    app.radio(key="model_source").set_value("timm model").run()
    app.text_input(key="timm_name").set_value(typed).run()
    app.button(key="load_model").click().run()
    assert not app.exception, app.exception
    assert app.error and _holding(app, typed.strip())


@pytest.mark.parametrize("page", ["pages/1_Head_Importance.py", "pages/2_Attention_Strength.py"])
def test_the_focus_image_name_stays_text_on_the_view_pages(app: AppTest, page: str) -> None:
    _upload(app, [(HOSTILE_NAME, GOOD[1])])
    app.switch_page(page).run()
    if page.endswith("Head_Importance.py"):
        app.radio(key="importance_scope").set_value(app.radio(key="importance_scope").options[1]).run()
    assert not app.exception, app.exception
    shown_in = _holding(app, HOSTILE_NAME)
    expected = 2 if page.endswith("Head_Importance.py") else 5  # B1's caption and B2's heading; C1 to D3
    assert len(shown_in) >= expected, shown_in
