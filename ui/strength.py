"""Attention strength page (view C): cached statistics, pure chart builders, head picking.

The chart builders are pure (a tidy DataFrame from ``core.strength.StrengthStats`` in,
an ``alt.Chart`` out); the cached wrappers key on the model's and the image set's
content hashes only, and show a progress bar while the set is streamed.
"""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.images import ImageSet
from core.model import ViTHandle
from core.strength import SPREAD_QUANTILES, StrengthStats, strength_statistics
from ui import session
from core.charts import FOCUS_RED, layer_dots, tooltip_field
from ui.charts import HEAD_SELECTION

__all__ = [
    "entropy_distribution_chart",
    "heads_by_layer_chart",
    "hop_profile_chart",
    "image_statistics",
    "offset_heatmap",
    "set_statistics",
]

_CHART_HEIGHT = 300


# --- cached statistics -----------------------------------------------------------------


@st.cache_data(max_entries=8, show_spinner=False)
def _set_statistics(model_key: str, set_key: str, _handle: ViTHandle, _images: ImageSet) -> StrengthStats:
    with session.progress_bar(
        f"Measuring attention strength on {len(_images)} images…", "Attention strength: {done} of {total} images…"
    ) as progress:
        return strength_statistics(_handle, _images.pil_images(), progress=progress)


def set_statistics(handle: ViTHandle, image_set: ImageSet) -> StrengthStats:
    """Strength summaries of every image of the set (cached per model and set)."""
    return _set_statistics(handle.key, image_set.key, handle, image_set)


@st.cache_data(max_entries=32, show_spinner=False)
def _image_statistics(model_key: str, image_id: str, _handle: ViTHandle, _images: ImageSet) -> StrengthStats:
    return strength_statistics(_handle, [_images.by_id(image_id).image])


def image_statistics(handle: ViTHandle, image_set: ImageSet, image_id: str) -> StrengthStats:
    """Strength of one image alone: its ``offset_mean`` is that image's own offset map.

    Keyed by the image id (a hash of its bytes), so moving the focus never reruns the set.
    """
    return _image_statistics(handle.key, image_id, handle, image_set)


# --- charts ----------------------------------------------------------------------------


def heads_by_layer_chart(
    heads: pd.DataFrame, value: str, title: str, axis_title: str, focus: tuple[int, int], value_format: str = ".3f"
) -> alt.LayerChart:
    """A dot per head, by layer (heads side by side within a layer), the focus head ringed.

    ``heads`` columns: layer, head, head_label and ``value`` (e.g. ``StrengthStats.heads()``).
    A click selects ``(layer, head)`` under the selection ``HEAD_SELECTION``.
    """
    pick = alt.selection_point(name=HEAD_SELECTION, fields=["layer", "head"], on="click", clear=False)
    dots, where = layer_dots(heads, value, axis_title, value_format)
    layer, head = focus
    ring = (
        alt.Chart(heads[(heads["layer"] == layer) & (heads["head"] == head)])
        .mark_point(shape="circle", size=260, strokeWidth=2.5, color=FOCUS_RED, filled=False)
        .encode(**where)
    )
    return alt.layer(dots.add_params(pick), ring).properties(
        title=alt.TitleParams(title, subtitle=f"focus head L{layer}H{head} ringed in red"), height=_CHART_HEIGHT
    )


def hop_profile_chart(profile: pd.DataFrame, head_label: str) -> alt.LayerChart:
    """C2: ``s_n`` of one head on the focus image (bars), the set's spread (line) and mean (tick).

    ``profile`` columns: hop, strength, mean, low, high (``StrengthStats.hop_profile``).
    """
    low, high = (f"{q:.0%}" for q in SPREAD_QUANTILES)
    x = alt.X("hop:O", title="n-hop neighbours", axis=alt.Axis(labelAngle=0))
    tooltip = [
        tooltip_field("hop:O", "hop"),
        tooltip_field("strength:Q", "focus image", format=".4f"),
        tooltip_field("mean:Q", "set mean", format=".4f"),
        tooltip_field("low:Q", f"set {low}", format=".4f"),
        tooltip_field("high:Q", f"set {high}", format=".4f"),
    ]
    base = alt.Chart(profile).encode(x=x, tooltip=tooltip)
    bars = base.mark_bar(color="#9ecae1", width=alt.RelativeBandSize(0.7)).encode(y=alt.Y("strength:Q", title="strength s_n"))
    band = base.mark_rule(color="#333333", strokeWidth=2).encode(y="low:Q", y2="high:Q")
    mean = base.mark_tick(color="#333333", thickness=2, size=14).encode(y="mean:Q")
    return alt.layer(bars, band, mean).properties(
        title=alt.TitleParams(
            f"Attention strength across neighbours · {head_label}",
            subtitle=f"bars: focus image · line: {low}-{high} of the images · tick: set mean",
        ),
        height=_CHART_HEIGHT,
    )


def entropy_distribution_chart(entropies: pd.DataFrame, focus_value: float, head_label: str) -> alt.LayerChart:
    """C3: histogram of one head's entropy over the images, the focus image as a red rule.

    ``entropies`` columns: image, entropy (``StrengthStats.entropy_over_images``).
    """
    bars = (
        alt.Chart(entropies)
        .mark_bar(color="#9ecae1")
        .encode(
            x=alt.X("entropy:Q", bin=alt.Bin(maxbins=30), title="entropy (nats)"),
            y=alt.Y("count():Q", title="images"),
            tooltip=[tooltip_field("entropy:Q", "entropy", bin=alt.Bin(maxbins=30)), tooltip_field("count():Q", "images")],
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"entropy": [focus_value]}))
        .mark_rule(color=FOCUS_RED, strokeWidth=2)
        .encode(x="entropy:Q", tooltip=[tooltip_field("entropy:Q", "focus image", format=".3f")])
    )
    return alt.layer(bars, rule).properties(
        title=alt.TitleParams(f"Head entropy over all images · {head_label}", subtitle="red: the focus image"),
        height=_CHART_HEIGHT,
    )


def offset_heatmap(offsets: pd.DataFrame, subtitle: str) -> alt.Chart:
    """Mean attention at each 2-D offset from the source patch; up is up, left is left.

    ``offsets`` columns: dy, dx, attention (``StrengthStats.offsets``). The centre cell is
    a patch's attention to itself.
    """
    # square cells, the whole map about 240 px wide so it fits a third of a wide page
    step = max(6, min(18, 240 // offsets["dx"].nunique()))
    return (
        alt.Chart(offsets)
        .mark_rect()
        .encode(
            x=alt.X("dx:O", title="dx (patches right of the source)", axis=alt.Axis(labelAngle=0)),
            # ascending: negative dy (rows above the source) on top, as on the image
            y=alt.Y("dy:O", title="dy (patches below the source)", sort="ascending"),
            color=alt.Color("attention:Q", title="attention", scale=alt.Scale(scheme="oranges")),
            tooltip=[
                tooltip_field("dy:O", "dy"),
                tooltip_field("dx:O", "dx"),
                tooltip_field("attention:Q", "mean attention", format=".4f"),
            ],
        )
        .properties(
            title=alt.TitleParams("Attention by 2-D offset", subtitle=subtitle),
            width=alt.Step(step),
            height=alt.Step(step),
        )
    )
