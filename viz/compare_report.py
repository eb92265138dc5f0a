"""Two case studies compared, as one self-contained HTML file.

``render_comparison`` lays out a ``Comparison`` (``core.study.comparison``) with the charts
``viz.compare.comparison_charts`` builds, under the same rules as the case-study report
(``viz.report``): one inline copy of the Vega JavaScript, every chart's Vega-Lite spec as
an inline JSON literal, tooltips shown as text, every user string (model names, image-set
titles, token names) HTML-escaped, so the file opens with no network at all.
"""

from __future__ import annotations

from html import escape
from typing import Mapping

import altair as alt
import numpy as np

from core.study.comparison import (
    FAITHFULNESS_NOTE,
    FINDING_PARTS,
    OVERLAP_KS,
    SIDES,
    Comparison,
    Side,
)
from core.study.narrative import HeadFinding
from viz.compare import SIDE_COLOURS, comparison_charts
from viz.report import _chart, _table, html_document

__all__ = ["render_comparison"]

MOVED_ROWS = 10  # heads listed whose rank moved most
# the two sides' columns, and a card's edge in its side's colour
_COMPARE_CSS = """
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5em; }
.sides h3 { overflow-wrap: anywhere; }
.card.side-A { border-left-color: %(A)s; } .card.side-B { border-left-color: %(B)s; }
.card h4 { margin: 0.3em 0; } .card h4 small { color: #666; font-weight: normal; }
""" % SIDE_COLOURS
_SECTION_TITLES = {
    "summary": "Summary",
    "heads": "Per-head differences",
    "concentration": "Sink heads and high-norm tokens",
    "trends": "Trends with depth",
    "curves": "Pruning curves",
    "top": "Top heads side by side",
    "patterns": "Patterns across both",
}


def render_comparison(c: Comparison) -> str:
    """The comparison as one HTML document that opens without any network.

    Sections: summary, per-head differences, sink heads and high-norm tokens, trends with
    depth, pruning curves, top heads side by side, patterns across both; a section that
    does not apply says why.
    """
    charts = comparison_charts(c)
    bodies = {
        "summary": _summary(c),
        "heads": _heads(c, charts),
        "concentration": _concentration(c),
        "trends": _trends(c),
        "curves": _curves(c),
        "top": _top(c),
        "patterns": _patterns(c),
    }
    title = f"HeadScope comparison: {_model_at(c.a)} and {_model_at(c.b)}"
    sections = {key: (_SECTION_TITLES[key], body) for key, body in bodies.items()}
    return html_document(title, sections, charts, css=_COMPARE_CSS)


def _model_at(side: Side) -> str:
    """``dinov2-s at 224 px``: the side's label without its name and image set."""
    return side.label.removeprefix(f"{side.name}: ").removesuffix(f" on {side.image_set}")


def _note(sentence: str) -> str:
    return f'<p class="note">{escape(sentence)}</p>'


def _summary(c: Comparison) -> str:
    def kind(backbone: bool) -> str:
        return "backbone (no classes)" if backbone else "classifier"

    rows = [
        ("model", c.a.model, c.b.model),
        ("input size", c.a.size, c.b.size),
        ("layers x heads", c.a.shape, c.b.shape),
        ("patch grid", *(f"{side.grid[0]} x {side.grid[1]}" for side in c.sides)),
        ("kind", kind(c.a.backbone), kind(c.b.backbone)),
        ("image set", c.a.image_set, c.b.image_set),
        ("images", c.a.images, c.b.images),
        ("bundle format version", c.a.format_version, c.b.format_version),
    ]
    facts = _table(["", "A", "B"], rows, css="facts")
    notes = (c.why_not, *c.missing)
    findings = "\n".join(f"<li>{escape(sentence)}</li>" for sentence in c.sentences if sentence not in notes)
    return (
        f"{facts}\n<p>Differences are always B minus A. What changed most:</p>\n<ul>\n{findings}\n</ul>\n"
        + "\n".join(_note(sentence) for sentence in notes if sentence)
    )


# --- per head ------------------------------------------------------------------------------


def _heads(c: Comparison, charts: Mapping[str, alt.TopLevelMixin]) -> str:
    if not c.same_heads:
        return _note(c.why_not)
    maps = "".join(_chart(key) for key in charts if key.startswith("difference-"))
    parts = [
        "<p>One cell per head, coloured by B minus A of each measure both studies hold; the colour scale is "
        "symmetric around 0, so equal changes either way look equally strong.</p>",
        f'<div class="row">{maps}</div>',
        "<h3>How much the two head rankings agree</h3>",
        _agreement(c),
    ]
    by = escape(c.metric.replace("_", " "))
    if "ranks" in charts:
        parts += [_chart("ranks"), f"<h3>The {MOVED_ROWS} heads whose rank by {by} moved most</h3>", _moved(c)]
    else:
        parts.append(_note(f"B does not rank heads by {c.metric.replace('_', ' ')} as A does, so no ranks are matched."))
    return "\n".join(parts)


def _agreement(c: Comparison) -> str:
    if c.agreement.empty:
        return _note("A and B share no importance metric, so their head rankings are not compared.")

    def overlap(value: float, k: int) -> str:
        return f"{int(value)} of {k}" if np.isfinite(value) else "–"

    rows = [
        [
            str(row["metric"]).replace("_", " "), int(row["heads"]), f"{row['spearman']:.2f}", f"{row['kendall']:.2f}",
            *(overlap(float(row[f"top_{k}"]), k) for k in OVERLAP_KS),
        ]
        for _, row in c.agreement.iterrows()
    ]
    header = ["metric", "heads", "Spearman", "Kendall", *(f"in both top {k}" for k in OVERLAP_KS)]
    return _table(header, rows, [False, *([True] * (len(header) - 1))])


def _moved(c: Comparison) -> str:
    moves = c.moves[(c.moves["metric"] == c.metric) & (c.moves["move"] != 0)].head(MOVED_ROWS)
    if moves.empty:
        return _note(f"Every head keeps its rank by {c.metric.replace('_', ' ')}.")
    rows = [
        [row.head_label, int(row.rank_a), int(row.rank_b), f"rises {int(row.move)}" if row.move > 0 else f"drops {-int(row.move)}"]
        for row in moves.itertuples()
    ]
    return _table(["head", "rank in A", "rank in B", "in B"], rows, [False, True, True, False])


def _concentration(c: Comparison) -> str:
    if not c.same_heads:
        return _note(
            f"A has {c.a.shape} and B has {c.b.shape}, so sink heads and high-norm tokens cannot be matched head by "
            "head and layer by layer."
        )
    if c.norms.empty:
        return _note(
            "One side's bundle was saved before HeadScope measured sink heads and high-norm tokens (format version "
            f"{c.a.format_version} in A, {c.b.format_version} in B), so they are not compared."
        )
    if c.sinks.empty:
        sinks = _note("No head is a sink on either side (none sends most of its patches' attention to one token).")
    else:
        sinks = _table(
            ["head", "share in A", "share in B", "sink token in A", "sink token in B", "status"],
            [
                [row.head_label, f"{row.share_a:.0%}", f"{row.share_b:.0%}", row.token_a or "–", row.token_b or "–", row.status]
                for row in c.sinks.itertuples()
            ],
            [False, True, True, False, False, False],
        )
    norms = _table(
        ["block", "images with high-norm tokens in A", "in B", "norm ratio in A", "in B", "status"],
        [
            [int(row.layer), int(row.images_a), int(row.images_b), f"{row.ratio_a:.1f}", f"{row.ratio_b:.1f}", row.status]
            for row in c.norms.itertuples()
        ],
        [True, True, True, True, True, False],
    )
    return (
        "<h3>Sink heads</h3>\n<p>Heads that send most of their patches' attention to one token, on either side; "
        "share is the mean top-key share over the images.</p>\n"
        f"{sinks}\n<h3>High-norm tokens</h3>\n<p>Per block: the images whose output has high-norm tokens, and the "
        f"mean ratio of the largest token norm to the median patch norm.</p>\n{norms}"
    )


# --- any two models --------------------------------------------------------------------------


def _trends(c: Comparison) -> str:
    return (
        "<p>Each layer's mean over its heads of the set means, against depth as a fraction of the network "
        "(layer / last layer), so models of different depths line up.</p>\n" + _chart("trends")
    )


def _curves(c: Comparison) -> str:
    quantity = str(c.curves["quantity"].iloc[0]) if len(c.curves) else "accuracy"
    what = "the accuracy" if quantity == "accuracy" else "the cosine similarity of the output to the unpruned output"
    why = "" if quantity == "accuracy" else " (a backbone has no accuracy, so both sides show it)"
    empty = [side for side in c.sides if c.curves.loc[c.curves["side"] == side.name, "value"].isna().all()]
    if len(empty) == 2:
        notes = _note(f"Neither bundle holds a {quantity} curve, so there is none to draw.")
    else:
        notes = "".join(
            _note(f"{side.name}'s bundle (format version {side.format_version}) holds no {quantity} curve, so only "
                  "the other side's is drawn.")
            for side in empty
        )
    return (
        f"<p>Heads are pruned least important first, and {what}{why} is measured after each step; "
        f"a random order is the baseline.</p>\n{notes}{_chart('curves')}"
    )


def _top(c: Comparison) -> str:
    columns = []
    for side in c.sides:
        found = c.top[side.name]
        by = found.metric.replace("_", " ")
        cards = "\n".join(_head_card(side.name, finding, by) for finding in found.heads)
        columns.append(f"<div>\n<h3>{escape(side.label)}</h3>\n<p>Top heads by {escape(by)}.</p>\n{cards}\n</div>")
    return '<div class="sides">\n' + "\n".join(columns) + f'\n</div>\n<p class="note">{escape(FAITHFULNESS_NOTE)}</p>'


def _head_card(side: str, finding: HeadFinding, by: str) -> str:
    sentences = "\n".join(
        f"<li>{escape(getattr(finding, part))}</li>" for part in FINDING_PARTS if getattr(finding, part)
    )
    return (
        f'<article class="card side-{side}">\n'
        f"<h4>#{finding.rank} · {escape(finding.label)} <small>{escape(by)} {finding.value:.4f}</small></h4>\n"
        f"<ul>\n{sentences}\n</ul>\n</article>"
    )


# --- patterns across both --------------------------------------------------------------------


def _patterns(c: Comparison) -> str:
    patterns = c.patterns
    if patterns is None:
        return _note("The joint pattern space was not computed for this comparison.")
    ratio = patterns.reconstruction_mse / max(patterns.baseline_mse, 1e-12)
    clusters = _table(
        ["cluster", "heads of A", "heads of B", "on both"],
        [
            [f"C{int(row.cluster)}", int(row.heads_a), int(row.heads_b), "yes" if row.shared else "no"]
            for row in patterns.clusters.itertuples()
        ],
        [False, True, True, False],
    )
    resampled = _note(patterns.resampled) if patterns.resampled else ""
    return (
        "<p>One autoencoder is trained on every head's mean offset map of both studies (the attention from a patch "
        f"to the patch dy rows and dx columns away, in a {patterns.window[0]} x {patterns.window[1]} window), its "
        f"codes laid out in 2-D with {escape(patterns.method.upper())} and grouped into {len(patterns.clusters)} "
        f"clusters over the heads of both sides, {int(patterns.clusters['shared'].sum())} of which hold heads of both. "
        f"Its reconstruction error is {ratio:.0%} of the baseline's (always answering the mean map).</p>\n"
        f"{resampled}\n{_chart('patterns')}\n{_chart('prototypes')}\n{clusters}\n"
        f"<h3>Each side's top heads and their nearest heads on the other side</h3>\n{_nearest(c)}"
    )


def _nearest(c: Comparison) -> str:
    table = c.patterns.neighbours
    rows = []
    for side, other in zip(SIDES, reversed(SIDES)):
        for finding in c.top[side].heads:
            near = table[(table["side"] == side) & (table["layer"] == finding.layer) & (table["head"] == finding.head)]
            near = near.sort_values("rank")
            listed = ", ".join(f"{row.other_label} ({row.distance:.2f})" for row in near.itertuples())
            rows.append([side, finding.label, f"{other}: {listed}"])
    return _table(["side", "top head", "nearest heads (distance between codes)"], rows)

