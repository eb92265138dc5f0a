"""View C, attention strength: how far on the patch grid each head looks, on the focus image and the set."""

from __future__ import annotations

import math

import streamlit as st

from ui import session, strength
from ui.display import plain
from viz.strength import (
    entropy_distribution_chart,
    heads_by_layer_chart,
    hop_profile_chart,
    offset_heatmap,
)

st.set_page_config(page_title="Attention strength · HeadScope", page_icon="🔭", layout="wide")
ctx = session.page_context()
handle, focus = ctx.handle, ctx.focus
name = plain(ctx.image_set.by_id(ctx.focus_id).name)  # shown in Markdown only

st.title("Attention strength")
n_hops = max(handle.grid)
st.caption(
    f"Hop distance = Chebyshev distance on the {handle.grid[0]}×{handle.grid[1]} patch grid (n = 0…{n_hops - 1}). "
    "s_n = mean post-softmax attention from a patch to its n-hop neighbours (prefix tokens not renormalised away). "
    f"Entropy of the profile: 0 = a head that looks only at its own patch, ln({n_hops}) = {math.log(n_hops):.2f} = uniform."
)

FOCUS_IMAGE, SET_MEAN = "Focus image", "Set mean"
scope = st.radio("Show per-head values for", [FOCUS_IMAGE, SET_MEAN], key="strength_scope", horizontal=True, persist_state="session")

stats = strength.set_statistics(handle, ctx.image_set)
image = ctx.image_set.index_of(ctx.focus_id)
on_image = scope == FOCUS_IMAGE
heads = stats.heads(image if on_image else None)
where = f"on the focus image {name}" if on_image else f"averaged over the {stats.num_images} images"
head_at = (focus.layer, focus.head)

c1, c2, c3 = st.columns(3, gap="medium")
with c1:
    session.show_head_chart(
        heads_by_layer_chart(heads, "entropy", "Head entropy across layers", "entropy (nats)", head_at),
        key="strength_entropy_chart",
    )
    st.caption(f"C1 · entropy of every head {where}. Click a dot to make it the focus head.")
with c2:
    st.altair_chart(hop_profile_chart(stats.hop_profile(*head_at, image), focus.head_label), width="stretch")
    st.caption(f"C2 · s_n of **{focus.head_label}** on {name}, with the spread over the {stats.num_images} images.")
with c3:
    entropies = stats.entropy_over_images(*head_at)
    st.altair_chart(
        entropy_distribution_chart(entropies, float(entropies["entropy"][image]), focus.head_label),
        width="stretch",
    )
    st.caption(
        f"C3 · entropy of **{focus.head_label}** over the {stats.num_images} images; "
        f"{name}: {entropies['entropy'][image]:.3f} nats."
    )

st.subheader("Beyond the paper")
d1, d2, d3 = st.columns(3, gap="medium")
with d1:
    offsets = strength.image_statistics(handle, ctx.image_set, ctx.focus_id) if on_image else stats
    st.altair_chart(
        offset_heatmap(offsets.offsets(*head_at), f"{focus.head_label} · {'focus image' if on_image else 'set mean'}"),
        width="content",
    )
    st.caption(
        f"Mean attention of **{focus.head_label}** from a patch to the patch dy rows below and dx columns right of it, "
        f"{where}; the centre is the patch itself."
    )
with d2:
    patch_h, patch_w = handle.patch_size
    session.show_head_chart(
        heads_by_layer_chart(
            heads, "distance", "Mean attention distance", "distance (input pixels)", head_at, value_format=".1f"
        ),
        key="strength_distance_chart",
    )
    st.caption(
        f"Attention-weighted distance between patch centres ({patch_h}×{patch_w}-pixel patches) {where}, "
        "among patches only (Dosovitskiy et al.). Click a dot to make it the focus head."
    )
with d3:
    if handle.num_prefix_tokens:
        session.show_head_chart(
            heads_by_layer_chart(heads, "prefix_share", "Attention to prefix tokens", "share of attention", head_at),
            key="strength_prefix_chart",
        )
        st.caption(
            f"Share of the patches' attention that goes to the {handle.num_prefix_tokens} prefix token(s) "
            f"(CLS, registers) {where}, from patch queries only."
        )
    else:
        st.info("This model has no prefix tokens (no CLS or registers), so all attention stays on the patches.")
