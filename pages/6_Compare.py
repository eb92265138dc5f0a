"""Compare: two case studies side by side, what changed from A to B, head by head when the heads match."""

from __future__ import annotations

from functools import partial

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.measures.importance import METRIC_HELP
from core.measures.projection import start_umap_warmup
from core.study.comparison import (
    FAITHFULNESS_NOTE,
    FINDING_PARTS,
    OVERLAP_KS,
    SIDES,
    Comparison,
)
from ui import compare, export, library, patterns, sidebar
from ui.display import plain, sentence_on_error
from viz.common import HEAD_SELECTION
from viz.compare import (
    PATTERN_SELECTION,
    curves_chart,
    difference_heatmap,
    joint_patterns_chart,
    prototypes_chart,
    rank_chart,
    trends_chart,
)
from viz.compare_report import render_comparison

st.set_page_config(page_title="Compare · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("compare")
start_umap_warmup()  # once per process: a no-op when the home page started it
handle = ctx.handle


def _side_picker(side: str) -> DeltaGenerator:
    """The side's source and, for a bundle, its uploader; returns the slot its label is written to."""
    st.subheader(f"Side {side}")
    # the side's source may come from the Library page or a link: the radio shows what the session holds
    st.session_state.setdefault(compare.source_key(side), compare.source(side))
    st.radio(f"Side {side} is", compare.SOURCES, key=compare.source_key(side), horizontal=True, persist_state="session")
    if compare.source(side) == compare.LIVE:
        st.caption(
            f"The case study of {plain(handle.name)} on {plain(ctx.image_set.title)}, with the views' settings; "
            "the Overview page changes the model and the images."
        )
    elif compare.source(side) == compare.LIBRARY:
        _library_picker(side)
    else:
        upload = st.file_uploader(
            "A result bundle (.zip) of any model, saved from the Case study page or by `python -m core analyze`",
            type=["zip"], key=compare.uploader_key(side), on_change=compare.forget_if_cleared, args=(side,),
        )
        if upload is not None:
            compare.open_bundle(side, upload.name, upload.getvalue())
            if compare.refused_sentence(side):
                st.error(plain(compare.refused_sentence(side)))  # it may quote names from the file
        opened = compare.opened_bundle(side)
        if opened is not None:
            st.caption(f"Opened {plain(opened.file_name)}, created {plain(opened.study.manifest['created'])}.")
    return st.empty()


def _library_picker(side: str) -> None:
    """The library studies offered to a side; picking one opens it there."""
    listed, why = library.listed()
    entries = [entry for entry in listed if entry.damaged is None]
    if why:
        st.info(plain(why))
    elif not entries:
        st.info("The library holds no studies yet: save one on the Case study page, or add a bundle on the Library page.")
    if not entries:
        return
    ids = [entry.id for entry in entries]
    shown = {entry.id: library.entry_label(entry) for entry in entries}
    current = compare.library_study_id(side)
    # the side's study may come from the Library page or a link: the picker shows what the side holds
    st.session_state[compare.library_pick_key(side)] = current if current in ids else None
    st.selectbox(
        f"Library study for side {side}", ids, index=None, key=compare.library_pick_key(side),
        format_func=shown.__getitem__, placeholder="Pick a study", help="The studies saved on this server, newest first.",
        on_change=compare.pick_library_study, args=(side,),
    )
    if compare.library_error(side):
        st.error(plain(compare.library_error(side)))  # it may quote the study's title
    opened = compare.opened_bundle(side)
    if opened is not None:
        st.caption(f"Study {opened.digest[:12]}, created {plain(opened.study.manifest['created'])}.")


def _what_changed(c: Comparison) -> None:
    st.subheader("What changed")
    if c.why_not:
        st.info(plain(c.why_not))
    told = {c.why_not, *c.missing}
    st.markdown("\n".join(f"- {plain(sentence)}" for sentence in c.sentences if sentence not in told))
    for note in c.missing:
        st.caption(plain(note))


def _per_head(c: Comparison, metric: str) -> None:
    st.subheader("Per head")
    if metric in set(c.agreement["metric"]):
        left, right = st.columns([3, 2], gap="large")
        with left:
            st.markdown("**How much the two rankings agree**")
            export.table(
                c.agreement, "compare rank agreement", hide_index=True, width="stretch",
                column_config={
                    "spearman": st.column_config.NumberColumn("Spearman", format="%.2f"),
                    "kendall": st.column_config.NumberColumn("Kendall", format="%.2f"),
                    **{f"top_{k}": st.column_config.NumberColumn(f"top {k} in both", format="%d") for k in OVERLAP_KS},
                },
            )
            st.caption("Rank correlations of the two head rankings under each metric, and how many heads both top k share.")
            compare.show_chart(rank_chart(c, metric), f"compare ranks {metric}")
        with right:
            st.markdown(f"**Heads whose rank by {metric.replace('_', ' ')} moved most**")
            moves = c.moves[c.moves["metric"] == metric].head(10)
            export.table(
                moves[["head_label", "rank_a", "rank_b", "move"]], f"compare moves {metric}", hide_index=True,
                width="stretch",
                column_config={
                    "head_label": "head", "rank_a": "rank in A", "rank_b": "rank in B",
                    "move": st.column_config.NumberColumn("move", help="Rank in A minus rank in B: above 0 the head rises in B."),
                },
            )
    layer, head = compare.focus_head(c)
    st.markdown("**B minus A, head by head**")
    for start in range(0, len(c.measures), 2):
        for measure, column in zip(c.measures[start : start + 2], st.columns(2, gap="medium")):
            with column:
                key = f"compare_heatmap_{measure}"
                compare.show_chart(
                    difference_heatmap(c, measure, focus=(layer, head)), f"compare difference {measure}", key=key,
                    on_select=partial(compare.pick_head, key), selection_mode=HEAD_SELECTION,
                )
    _focus_panel(c, layer, head)


def _focus_panel(c: Comparison, layer: int, head: int) -> None:
    label = f"L{layer}H{head}"
    with st.container(border=True):
        st.markdown(f"**Focus head {label}**")
        values, nearest = st.columns([3, 2], gap="large")
        with values:
            export.table(
                compare.focus_values(c, layer, head), f"compare focus {label}", hide_index=True, width="stretch",
                column_config={name: st.column_config.NumberColumn(name, format="%.4g") for name in ("A", "B", "B − A")},
            )
        with nearest:
            if c.patterns is None:
                st.caption("Turn on the joint pattern space below to see its nearest heads on the other side.")
            for side, other in (("A", "B"), ("B", "A")):
                _nearest_sentence(c, side, other, layer, head)


def _nearest_sentence(c: Comparison, side: str, other: str, layer: int, head: int) -> None:
    rows = compare.nearest_heads(c, side, layer, head)
    if len(rows):
        listed = ", ".join(f"{row.other_label} ({row.distance:.2f})" for row in rows.itertuples())
        st.markdown(f"{side}'s L{layer}H{head} has the pattern nearest to {other}'s {listed}.")


def _sinks(c: Comparison) -> None:
    st.subheader("Sinks and high-norm tokens")
    if not c.same_heads:
        st.caption("Sink heads and high-norm tokens are compared head by head and block by block, and the heads differ.")
        return
    if c.norms.empty:
        st.caption("A side was saved before HeadScope measured sink heads and token norms, so they are not compared.")
        return
    # one table a row: the sinks' token names need the width
    st.markdown("**Sink heads** (on at least one side)")
    if c.sinks.empty:
        st.caption("No head is a sink on either side.")
    else:
        export.table(
            c.sinks[["head_label", "share_a", "share_b", "token_a", "token_b", "status"]], "compare sinks",
            hide_index=True, width="stretch",
            column_config={
                "head_label": "head",
                "share_a": st.column_config.NumberColumn("top-key share A", format="percent"),
                "share_b": st.column_config.NumberColumn("top-key share B", format="percent"),
                "token_a": "sink A", "token_b": "sink B",
            },
        )
    st.markdown("**High-norm tokens per block**")
    export.table(
        c.norms, "compare norms", hide_index=True, width="stretch",
        column_config={
            "layer": "block", "images_a": "images A", "images_b": "images B",
            "ratio_a": st.column_config.NumberColumn("norm ratio A", format="%.1f"),
            "ratio_b": st.column_config.NumberColumn("norm ratio B", format="%.1f"),
        },
    )
    st.caption("Images whose block output has high-norm tokens, and the largest token norm over the median patch's.")


def _across_depth(c: Comparison) -> None:
    st.subheader("Across depth")
    # one chart a row: at about 600 px each, the two would not fit side by side
    for chart, name, note in (
        (trends_chart(c), "compare trends", "Per-layer means over heads, against depth as a fraction of the network, so any two models line up."),
        (curves_chart(c), "compare pruning curves", "Both pruning curves against the fraction of heads pruned, least important first."),
    ):
        shown, said = st.columns([3, 2], gap="large", vertical_alignment="center")
        with shown:
            compare.show_chart(chart, name)
        said.caption(note)


def _top_heads(c: Comparison) -> None:
    st.subheader("Top heads")
    for side, column in zip(c.sides, st.columns(2, gap="large")):
        found = c.top[side.name]
        with column:
            st.markdown(f"**{plain(side.label)}**, by {found.metric.replace('_', ' ')}")
            for finding in found.heads:
                with st.container(border=True):
                    st.markdown(f"**{finding.rank}. {finding.label}**")
                    for part in FINDING_PARTS:  # a bundle saved before a part was measured has no sentence for it
                        if getattr(finding, part):
                            st.markdown(plain(getattr(finding, part)))
    st.caption(FAITHFULNESS_NOTE)


def _joint_patterns(c: Comparison, note: str | None) -> None:
    st.subheader("Patterns across both")
    st.checkbox(
        "Lay out both sides' heads in one pattern space", key=compare.PATTERNS_KEY, persist_state="session",
        help="Trains one autoencoder on every head's mean offset map of both sides: a few seconds, plus about "
        f"{patterns.UMAP_COMPILE_SECONDS} s the first time UMAP runs in this server.",
    )
    if c.patterns is None:
        st.caption("Off: it trains an autoencoder on both sides' heads, which takes a few seconds.")
        return
    for sentence in (note, c.patterns.resampled):
        if sentence:
            st.caption(sentence)
    space, prototypes = st.columns([3, 2], gap="large")
    with space:
        key = "compare_pattern_space"
        compare.show_chart(
            joint_patterns_chart(c, focus=compare.pattern_focus(c)), "compare pattern space", key=key,
            on_select=partial(compare.pick_pattern_head, key), selection_mode=PATTERN_SELECTION,
        )
        picked = compare.pattern_focus(c)
        if picked is None:
            st.caption("Click a head to see its nearest heads on the other side.")
        else:
            side, layer, head = picked
            _nearest_sentence(c, side, "B" if side == "A" else "A", layer, head)
    with prototypes:
        compare.show_chart(prototypes_chart(c), "compare pattern prototypes")
        st.caption(
            f"Each cluster's decoded centre, in a {c.patterns.window[0]}x{c.patterns.window[1]} offset window. "
            f"The autoencoder's error is {c.patterns.reconstruction_mse:.3g}, against {c.patterns.baseline_mse:.3g} "
            "for always answering the mean map."
        )


def _export(c: Comparison) -> None:
    st.subheader("Export")
    stem = export.file_stem(f"compare {c.a.model} {c.b.model}")
    st.download_button(
        "Download the HTML comparison report", data=lambda: render_comparison(c), file_name=f"{stem}.html",
        mime="text/html", icon=":material/description:", key="compare_report", on_click="ignore",
        help="One file with every chart, table and sentence of this page; opens with no network.",
    )
    st.caption("The same report from the command line: `python -m core compare A.zip B.zip --report compare.html`.")


st.title("Compare")
st.caption(
    "Two case studies side by side: two models, two checkpoints, two image sets or two input sizes. Each side is "
    "the current analysis, a result bundle of any model or a study of the Library, and nothing is recomputed from "
    "a bundle. Differences "
    "are B minus A; when both have the same layers x heads, heads are matched one to one."
)
labels = {}
for name, column in zip(SIDES, st.columns(2, gap="large")):
    with column:
        labels[name] = _side_picker(name)

missing = [name for name in SIDES if not compare.is_given(name)]
if missing:
    st.info(f"Give side {' and '.join(missing)} a result bundle or a library study to compare.")
    st.stop()

with sentence_on_error():
    study_a = compare.side_study("A", handle, ctx.image_set)
    study_b = compare.side_study("B", handle, ctx.image_set)
layout, layout_note = patterns.layout_method() if st.session_state.get(compare.PATTERNS_KEY) else (None, None)
with sentence_on_error():
    comparison = compare.comparison(study_a, study_b, compare.ranking_metric(study_a[1], study_b[1]), layout)
for side in comparison.sides:
    labels[side.name].markdown(f"**{plain(side.label)}**, {side.shape}")

offered = compare.shared_metrics(comparison)
if st.session_state.get(compare.METRIC_KEY) not in offered:
    st.session_state.pop(compare.METRIC_KEY, None)  # chosen for another pair of studies
if offered:
    st.selectbox(
        "Rank heads by", offered, index=offered.index(comparison.metric) if comparison.metric in offered else 0,
        key=compare.METRIC_KEY, persist_state="session", format_func=lambda metric: metric.replace("_", " "), width=300,
        help="The metric the sentences, the rankings, the top heads and the pruning curves use; "
        + "; ".join(f"{m}: {METRIC_HELP[m]}" for m in offered),
    )
_what_changed(comparison)
if comparison.same_heads:
    _per_head(comparison, comparison.metric)
_sinks(comparison)
_across_depth(comparison)
_top_heads(comparison)
_joint_patterns(comparison, layout_note)
_export(comparison)
