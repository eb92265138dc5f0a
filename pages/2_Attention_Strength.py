"""View C, attention strength: how far on the patch grid each head looks, on the focus image and the set."""

from __future__ import annotations

import math

import streamlit as st

from core.measures.attention import OUTLIER_NORM_RATIO
from core.measures.strength import token_label
from core.study.casestudy import SINK_SHARE
from ui import export, patterns, selection, sidebar, strength
from ui.display import plain
from ui.strength import FOCUS_IMAGE, SET_MEAN
from viz.strength import (
    distribution_chart,
    entropy_distribution_chart,
    heads_by_layer_chart,
    hop_profile_chart,
    offset_heatmap,
    token_norms_chart,
)

st.set_page_config(page_title="Attention strength · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("strength")
handle, focus = ctx.handle, ctx.focus
name = plain(ctx.image_set.by_id(ctx.focus_id).name)  # shown in Markdown only

st.title("Attention strength")
n_hops = max(handle.grid)
st.caption(
    f"Hop distance = Chebyshev distance on the {handle.grid[0]}×{handle.grid[1]} patch grid (n = 0…{n_hops - 1}). "
    "s_n = mean post-softmax attention from a patch to its n-hop neighbours (prefix tokens not renormalised away). "
    f"Entropy of the profile: 0 = a head that looks only at its own patch, ln({n_hops}) = {math.log(n_hops):.2f} = uniform."
)

scope = st.radio("Show per-head values for", [FOCUS_IMAGE, SET_MEAN], key="strength_scope", horizontal=True, persist_state="session")

stats = strength.set_statistics(handle, ctx.image_set)
image = ctx.image_set.index_of(ctx.focus_id)
on_image = scope == FOCUS_IMAGE
heads = stats.heads(image if on_image else None)
where = f"on the focus image {name}" if on_image else f"averaged over the {stats.num_images} images"
head_at = (focus.layer, focus.head)

c1, c2, c3 = st.columns(3, gap="medium")
with c1:
    selection.show_head_chart(
        heads_by_layer_chart(heads, "entropy", "Head entropy across layers", "entropy (nats)", head_at),
        key="strength_entropy_chart",
    )
    st.caption(f"C1 · entropy of every head {where}. Click a dot to make it the focus head.")
with c2:
    export.chart(hop_profile_chart(stats.hop_profile(*head_at, image), focus.head_label), "C2 strength by hop", width="stretch")
    st.caption(f"C2 · s_n of **{focus.head_label}** on {name}, with the spread over the {stats.num_images} images.")
with c3:
    entropies = stats.entropy_over_images(*head_at)
    export.chart(
        entropy_distribution_chart(entropies, float(entropies["entropy"][image]), focus.head_label), "C3 entropy over images",
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
    export.chart(
        offset_heatmap(offsets.offsets(*head_at), f"{focus.head_label} · {'focus image' if on_image else 'set mean'}"),
        "C attention by offset",
        width="content",
    )
    st.caption(
        f"Mean attention of **{focus.head_label}** from a patch to the patch dy rows below and dx columns right of it, "
        f"{where}; the centre is the patch itself."
    )
with d2:
    patch_h, patch_w = handle.patch_size
    selection.show_head_chart(
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
        selection.show_head_chart(
            heads_by_layer_chart(heads, "prefix_share", "Attention to prefix tokens", "share of attention", head_at),
            key="strength_prefix_chart",
        )
        st.caption(
            f"Share of the patches' attention that goes to the {handle.num_prefix_tokens} prefix token(s) "
            f"(CLS, registers) {where}, from patch queries only."
        )
    else:
        st.info("This model has no prefix tokens (no CLS or registers), so all attention stays on the patches.")

st.subheader("Where attention goes: sinks, registers and token norms")
tokens = handle.num_tokens


def head_view(value: str, title: str, axis_title: str, caption: str, **chart) -> None:
    """A clickable dot per head of ``value`` by layer (``heads``, the focus head ringed), captioned."""
    chart_spec = heads_by_layer_chart(heads, value, title, axis_title, head_at, **chart)
    selection.show_head_chart(chart_spec, key=f"strength_{value}_chart")
    st.caption(caption)


st.caption(
    "Hop entropy and distance say how far a head looks; they cannot tell a head that spreads its attention from one "
    "that sends it all to a single token (a *sink*, Darcet et al. 2024), which sits at many distances at once. "
    f"Top-key share = the largest share of the patches' attention that one token receives (1 = all on one token, "
    f"1/{tokens} = uniform); key entropy = the entropy of a patch's attention over the {tokens} tokens "
    f"(0 = one token each, ln {tokens} = {math.log(tokens):.2f} = uniform)."
)
names = handle.prefix_names
e1, e2, e3 = st.columns(3, gap="medium")
with e1:
    head_view(
        "top_share", "Attention on one single token", "top-key share",
        f"Top-key share of every head {where}. Click a dot to make it the focus head.",
        reference=(1 / tokens, "uniform attention"),
    )
with e2:
    shares = stats.over_images("top_share", *head_at)
    export.chart(
        distribution_chart(
            shares, "top_share", float(shares["top_share"][image]),
            f"Top-key share over images · {focus.head_label}", "top-key share", domain=(0.0, 1.0),
        ),
        "C top-key share over images",
        width="stretch",
    )
    strong = int((shares["top_share"] >= SINK_SHARE).sum())
    st.caption(
        f"**{focus.head_label}** sends {SINK_SHARE:.0%} or more of the patches' attention to one token on {strong} of "
        f"{stats.num_images} images."
    )
with e3:
    attn = patterns.image_attention(handle, ctx.image_set, ctx.focus_id)[focus.layer, focus.head]
    image_norms = strength.image_norms(handle, ctx.image_set, ctx.focus_id)
    marked = strength.key_outliers(image_norms, focus.layer, handle.num_prefix_tokens)
    picture, received = strength.sink_overlay(handle, ctx.image_set.by_id(ctx.focus_id).image, attn, marked)
    sink = int(received.argmax())
    st.image(picture, width=300)
    where_sink = "boxed red" if sink >= handle.num_prefix_tokens else "a prefix token, so no box on the image"
    patches = [int(t) for t in marked if t >= handle.num_prefix_tokens]
    prefixes = [names[int(t)] for t in marked if t < handle.num_prefix_tokens]
    high = f" No key of layer {focus.layer} has a norm {OUTLIER_NORM_RATIO:g}× the median patch norm." if not len(marked) else (
        f" Purple: the {len(patches)} high-norm patch(es) among its keys"
        + (f"; high-norm prefix tokens: {', '.join(prefixes)}." if prefixes else ".")
    )
    st.caption(
        f"The sink of **{focus.head_label}** on {name}: {received[sink]:.0%} of the patches' attention goes to "
        f"{token_label(sink, handle.grid, names)} ({where_sink}); orange: the share each patch receives.{high}"
    )

f1, f2, f3 = st.columns(3, gap="medium")
with f1:
    head_view(
        "key_entropy", "Key entropy across layers", "key entropy (nats)",
        f"Mean entropy of a patch's attention over all tokens, every head {where}. Click a dot to focus it.",
        reference=(math.log(tokens), "uniform attention"),
    )
with f2:
    export.chart(
        token_norms_chart(strength.norms_table(image_norms, names), OUTLIER_NORM_RATIO, focus.layer), "C token norms",
        width="stretch",
    )
    norms = stats.layer_norms()
    worst = norms.loc[norms["norm_ratio_max"].idxmax()]
    with_outliers = int((stats.outliers > 0).any(axis=1).sum())
    st.caption(
        f"Every token's norm on {name}, from the embeddings through each block's output, over that stage's median "
        f"patch norm (shaded: what layer {focus.layer} attends to); coloured dots: "
        f"the prefix tokens ({', '.join(names) or 'none'}). High-norm tokens "
        f"(at least {OUTLIER_NORM_RATIO:g}×; Darcet et al. find artefacts near 10×) are where large ViTs park attention. "
        f"Over the set: {with_outliers} of {stats.num_images} images have one in some layer; the largest ratio is "
        f"{worst['norm_ratio_max']:.1f}× (layer {int(worst['layer'])})."
    )
with f3:
    if handle.num_registers:
        head_view(
            "register_share", "Attention to the registers", "share of attention",
            f"Share of the patches' attention that goes to the {handle.num_registers} register tokens {where}. "
            "Click a dot to make it the focus head.",
        )
    elif (stats.outliers > 0).any():
        head_view(
            "outlier_share", "Attention to high-norm tokens", "share of attention",
            f"Share of the patches' attention that goes to high-norm tokens (at least {OUTLIER_NORM_RATIO:g}× the "
            f"median patch norm) among each layer's keys, {where}. This model has no register tokens.",
        )
    else:
        st.info(
            f"No token of any image in the set has a norm {OUTLIER_NORM_RATIO:g}× its layer's median patch norm, so "
            "no attention goes to high-norm tokens, and this model has no register tokens: its sinks, if any, are "
            "tokens of ordinary norm."
        )
