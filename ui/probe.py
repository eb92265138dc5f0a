"""The linear probe on a page: the offer to fit one on a labelled set, the header every page shows, its download and upload.

Loading and activating a probe is the model's business (``ui.models``); fitting one reads the
features of the set's first pass (``ui.results``), so it needs no forward pass of its own.
"""

from __future__ import annotations

import hashlib

import streamlit as st

from core.errors import HeadScopeError
from core.inputs.images import ImageSet
from core.models.handle import ViTHandle
from core.models.probe import (
    FEATURE_INPUTS,
    MAX_FIT_IMAGES,
    check_probe_labels,
    fit_probe,
    near_chance,
)
from ui import models, results
from ui.display import plain

__all__ = [
    "MAX_PROBE_UPLOAD_MB",
    "NO_LABELS_HINT",
    "fit_probe_on_set",
    "probe_header",
    "probe_offer",
    "probe_panel",
    "probe_sidebar",
]

MAX_PROBE_UPLOAD_MB = 64  # a probe of 1,000 classes x 2,048 features in float64 is 16 MB
NO_LABELS_HINT = "Upload a ZIP with one folder per class to ask which heads your classes need."


def probe_offer(handle: ViTHandle, image_set: ImageSet) -> tuple[bool, str]:
    """Whether a linear probe can be fitted on this backbone and set, and the sentence to show with it.

    A backbone with a labelled set (one folder per class) is offered a probe; a set a probe
    cannot be fitted on gets the reason, and a set without labels the way to get them.
    """
    if not handle.is_backbone:
        return False, ""
    if not image_set.label_names:
        return False, NO_LABELS_HINT
    try:
        check_probe_labels(image_set.labels, image_set.label_names)
    except HeadScopeError as err:
        return False, f"{err}"
    classes = len({label for label in image_set.labels if label is not None})
    return True, (
        f"This backbone has no classes, but the set has {classes} labelled folders: fit a linear probe on the "
        "backbone's features to ask which heads your classes need."
    )


def fit_probe_on_set(handle: ViTHandle, image_set: ImageSet) -> str | None:
    """Fit a linear probe on the set's labels and make the backbone plus probe the active model.

    The features come from the set's first pass, which gave the overview (no new forward
    pass). Returns the sentence that says why not, or ``None``; on failure the backbone
    stays active.
    """
    offered, why = probe_offer(handle, image_set)
    if not offered:
        return why or "A linear probe goes on a backbone."
    features = results.preview(handle, image_set, heavy=False).predictions.probe_input
    assert features is not None  # a backbone's first pass reads the probe's input from its last tokens
    labelled = sum(label is not None for label in image_set.labels)
    with st.spinner(f"Fitting a linear probe on {min(labelled, MAX_FIT_IMAGES):,} images (cross-validated)…"):
        try:
            probe = fit_probe(features, image_set.labels, image_set.label_names, backbone=handle)
        except HeadScopeError as err:
            return str(err)
    return models.activate_probe(probe.to_bytes())


def probe_header(handle: ViTHandle) -> None:
    """Say that the classes come from a probe fitted here, with its cross-validated accuracy against chance."""
    if handle.probe is None:
        return
    text = plain(handle.probe.summary())
    if near_chance(handle.probe):
        st.warning(text, icon="⚠️")
    else:
        st.info(text, icon="🧪")


def probe_panel(handle: ViTHandle, image_set: ImageSet) -> None:
    """The overview's probe controls: fit one on a labelled set, or download and remove the active one."""
    if handle.probe is not None:
        probe = handle.probe
        left, right = st.columns(2)
        left.download_button(
            "Download the probe (.safetensors)",
            data=probe.to_bytes(),
            file_name=f"probe-{probe.digest[:12]}.safetensors",
            mime="application/octet-stream",
            key="probe_download",
            help="The head and its card (backbone, feature input, class names, accuracy); upload it again on the "
            "same backbone to share this exact classifier.",
        )
        right.button("Remove the probe", key="probe_remove", on_click=models.remove_probe)
        return
    if not handle.is_backbone:
        return
    offered, sentence = probe_offer(handle, image_set)
    if not offered:
        st.caption(plain(sentence))
        return
    st.caption(plain(sentence))
    if st.button("Classify these classes with a linear probe", key="probe_fit", type="primary"):
        error = fit_probe_on_set(handle, image_set)
        if error:
            st.error(plain(error))
        else:
            st.rerun()


def probe_sidebar(handle: ViTHandle) -> None:
    """Upload a probe file for the active backbone (or to replace the active probe)."""
    if not (handle.is_backbone or handle.probe is not None):
        return
    upload = st.sidebar.file_uploader(
        "Linear probe for this backbone (optional)",
        type=["safetensors"],
        key="probe_upload",
        max_upload_size=MAX_PROBE_UPLOAD_MB,
        help=(
            "A probe downloaded from HeadScope for this backbone at this input size: it gives the backbone "
            f"classes. It reads {FEATURE_INPUTS['class_and_patch_mean']} (or the pooled output when the backbone "
            "has no class token)."
        ),
    )
    if upload is None:
        return
    data = upload.getvalue()
    if handle.probe is not None and models.current_spec().probe_digest == hashlib.sha256(data).hexdigest():
        return  # already the active probe
    if st.sidebar.button("Use this probe", key="probe_use"):
        error = models.activate_probe(data)
        if error:
            st.sidebar.error(plain(error))
        else:
            st.rerun()
