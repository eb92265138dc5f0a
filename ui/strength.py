"""Attention strength page (view C): cached statistics.

The cached wrappers key on the model's and the image set's content hashes only, and
show a progress bar while the set is streamed. The page's charts are in ``viz.strength``.
"""

from __future__ import annotations

import streamlit as st

from core.images import ImageSet
from core.model import ViTHandle
from core.strength import StrengthStats, strength_statistics
from ui import session

__all__ = [
    "image_statistics",
    "set_statistics",
]


# --- cached statistics -----------------------------------------------------------------


def set_statistics(handle: ViTHandle, image_set: ImageSet) -> StrengthStats:
    """Strength summaries of every image of the set, from the set's analysis (``session.analysis``)."""
    return session.analysis(handle, image_set).strength


@st.cache_data(max_entries=32, show_spinner=False)
def _image_statistics(model_key: str, image_id: str, _handle: ViTHandle, _images: ImageSet) -> StrengthStats:
    return strength_statistics(_handle, [_images.by_id(image_id).image])


def image_statistics(handle: ViTHandle, image_set: ImageSet, image_id: str) -> StrengthStats:
    """Strength of one image alone: its ``offset_mean`` is that image's own offset map.

    Keyed by the image id (a hash of its bytes), so moving the focus never reruns the set.
    """
    return _image_statistics(handle.key, image_id, handle, image_set)
