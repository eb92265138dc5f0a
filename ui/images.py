"""The image set every page analyses: the model's own samples, or the user's upload kept in the session.

An upload is decoded once per distinct content and kept as ``UPLOADED_KEY``; a ZIP decoded
for a backbone is also kept as ``UPLOAD_ORIGIN_KEY``, whose folder names a linear probe's
classes are matched with (``relabel_upload``). The samples are a bounded ``st.cache_data``.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Sequence

import streamlit as st

from core.errors import HeadScopeError
from core.inputs.images import (
    ImageSet,
    image_set_from_files,
    image_set_from_zip,
    match_class_name,
)
from core.models.handle import ViTHandle, imagenet_synsets
from core.models.load import sample_set as model_sample_set
from core.models.load import sample_source
from ui.display import sentence_on_error

__all__ = [
    "SAMPLES",
    "SOURCE_CHOICE_KEY",
    "SOURCE_KEY",
    "UPLOAD",
    "UPLOADED_KEY",
    "UPLOAD_ORIGIN_KEY",
    "ZIP",
    "active_image_set",
    "forget_upload",
    "relabel_upload",
    "sample_set",
    "upload_images",
    "uses_upload",
]

SOURCE_KEY = "image_source"  # the home page's radio; Streamlit drops it on other pages
SOURCE_CHOICE_KEY = "image_source_choice"  # the same choice, kept while other pages run
UPLOADED_KEY = "uploaded_set"  # (key, the set, the notes on its files)
UPLOAD_ORIGIN_KEY = "uploaded_set_origin"  # (content digest, the ZIP's set decoded for a backbone: folder labels)

SAMPLES, UPLOAD, ZIP = "Sample images", "Upload images", "Upload a ZIP (ImageFolder)"


def active_image_set(handle: ViTHandle) -> ImageSet:
    """The set every page analyses: the user's upload when one is chosen and usable, else the samples."""
    return st.session_state[UPLOADED_KEY][1] if uses_upload() else sample_set(handle)


def uses_upload() -> bool:
    """The pages analyse the user's upload, which only this session holds (``active_image_set``)."""
    return st.session_state.get(SOURCE_CHOICE_KEY, SAMPLES) != SAMPLES and st.session_state.get(UPLOADED_KEY) is not None


@st.cache_data(max_entries=4, show_spinner="Preparing the sample images…")
def _sample_set(source: tuple, _handle: ViTHandle) -> ImageSet:
    return model_sample_set(_handle)  # a function of ``source`` alone: the cache's key


def sample_set(handle: ViTHandle) -> ImageSet:
    """The model's own samples (``core.models.load.sample_set``), decoded once per set."""
    with sentence_on_error():
        return _sample_set(sample_source(handle), handle)


def upload_images(files: list[tuple[str, bytes]], handle: ViTHandle, as_zip: bool) -> tuple[ImageSet | None, list[str], str | None]:
    """Decode uploads once per distinct content; returns (set, notes, error sentence).

    A ZIP decoded for a backbone is also kept as ``UPLOAD_ORIGIN_KEY``: its folder names are
    what a linear probe's classes are matched with, whatever probe comes and goes.
    """
    content = hashlib.sha256(str(as_zip).encode())
    for name, data in files:
        content.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    key = hashlib.sha256(handle.key.encode() + content.digest()).hexdigest()
    cached = st.session_state.get(UPLOADED_KEY)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2], None
    try:
        image_set, notes = _decode(files, handle, as_zip)
    except HeadScopeError as err:
        return None, [], str(err)
    origin = st.session_state.get(UPLOAD_ORIGIN_KEY)
    if image_set.label_names:
        st.session_state[UPLOAD_ORIGIN_KEY] = (content.hexdigest(), image_set)
    elif origin is not None and origin[0] != content.hexdigest():
        st.session_state.pop(UPLOAD_ORIGIN_KEY, None)  # another upload: its folders are not those
    st.session_state[UPLOADED_KEY] = (key, image_set, notes)
    return image_set, notes, None


def _decode(files: list[tuple[str, bytes]], handle: ViTHandle, as_zip: bool) -> tuple[ImageSet, list[str]]:
    """The uploaded files as a set: a ZIP's folders labelled with the model's classes (ImageNet's by synset too)."""
    if as_zip:
        aliases = [[s] for s in imagenet_synsets()] if len(handle.class_names) == 1000 else None
        return image_set_from_zip(files[0][1], handle.class_names, aliases=aliases)
    return image_set_from_files(files)


def forget_upload() -> None:
    """Drop the uploaded set (the sample images are shown again); its labels may belong to another model."""
    st.session_state.pop(UPLOADED_KEY, None)
    st.session_state.pop(UPLOAD_ORIGIN_KEY, None)


def relabel_upload(old_classes: Sequence[str] | None, new_classes: Sequence[str]) -> None:
    """The uploaded set with labels that index ``new_classes`` (``[]``: the set's own folder names, for a backbone).

    Labels are derived from the set as decoded for the backbone (its folder names, kept in
    ``UPLOAD_ORIGIN_KEY``) when there is one, else from ``old_classes`` (``None``: the set's
    own label names); folder names are matched to classes as an ImageFolder upload matches
    them (``match_class_name``), and a folder that is no class gets no label.
    """
    kept = st.session_state.get(UPLOADED_KEY)
    if kept is None:
        return
    key, image_set, notes = kept
    origin = st.session_state.get(UPLOAD_ORIGIN_KEY)
    if origin is not None:
        image_set, names = origin[1], list(origin[1].label_names)
    else:
        names = list(old_classes) if old_classes is not None else list(image_set.label_names)
    if not names:
        return  # no labels to carry over
    if not new_classes:
        relabelled = image_set if origin is not None else ImageSet.from_images(image_set.title, image_set.images, names)
    else:
        images = [
            replace(item, label=None if item.label is None else match_class_name(names[item.label], new_classes))
            for item in image_set.images
        ]
        relabelled = ImageSet.from_images(image_set.title, images)
    st.session_state[UPLOADED_KEY] = (f"{key}:{relabelled.key}", relabelled, notes)
