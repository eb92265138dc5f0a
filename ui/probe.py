"""The linear probe's widgets: the header every page shows, the offer to fit one, its download and upload."""

from __future__ import annotations

import streamlit as st

from core.inputs.images import ImageSet
from core.models.handle import ViTHandle
from core.models.probe import FEATURE_INPUTS, near_chance
from ui import session
from ui.display import plain

__all__ = ["probe_header", "probe_panel", "probe_sidebar", "MAX_PROBE_UPLOAD_MB"]

MAX_PROBE_UPLOAD_MB = 64  # a probe of 1,000 classes x 2,048 features in float64 is 16 MB


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
        right.button("Remove the probe", key="probe_remove", on_click=session.remove_probe)
        return
    if not handle.is_backbone:
        return
    offered, sentence = session.probe_offer(handle, image_set)
    if not offered:
        st.caption(plain(sentence))
        return
    st.caption(plain(sentence))
    if st.button("Classify these classes with a linear probe", key="probe_fit", type="primary"):
        error = session.fit_probe_on_set(handle, image_set)
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
    if handle.probe is not None and session.current_spec().probe_digest == _sha256(data):
        return  # already the active probe
    if st.sidebar.button("Use this probe", key="probe_use"):
        error = session.activate_probe(data)
        if error:
            st.sidebar.error(plain(error))
        else:
            st.rerun()


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
