"""The case study as one self-contained HTML file, and the charts it shares with the dashboard.

``case_charts`` builds every chart of the case study from a ``CaseStudy`` and its
``CaseFindings`` with the views' builders (``viz.importance``, ``viz.strength``,
``viz.patterns``, each pure: a tidy DataFrame in, an ``alt.Chart`` out, no HTML), so the
dashboard's case-study page draws the same charts. ``render_report`` lays
them out with the findings, tables and thumbnails in one HTML document that opens with
no network at all: the Vega, Vega-Lite and vega-embed JavaScript is inlined once (from
``vl_convert``), every chart is its Vega-Lite spec as an inline JSON literal rendered to
SVG, images are ``data:`` URIs and the CSS is inline.
"""

from __future__ import annotations

import base64
import json
from html import escape
from typing import Any, Iterable, Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.measures.importance import (
    METRIC_HELP,
    METRICS,
    MODE_REMOVES,
    MODES,
    rank_heads,
    target_measure,
)
from core.study.casestudy import (
    CaseFindings,
    CaseStudy,
    HeadFinding,
    findings,
    relevance_of,
)
from viz.attribution import relevance_grid_chart
from viz.common import CHART_WIDTH
from viz.export import inline_spec
from viz.importance import (
    importance_heatmap,
    importance_line_chart,
    metric_title,
    mode_probability_chart,
    pruning_curve_chart,
    unpruned_value,
)
from viz.patterns import pattern_space_chart, prototype_chart, reconstruction_chart
from viz.strength import ALL_HEADS, heads_by_layer_chart, top_heads_hop_profiles_chart

__all__ = ["case_charts", "head_values", "html_document", "mode_chart_key", "relevance_entries", "render_report"]

# What a <script> must not contain literally: the specs carry user strings (image names).
_SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


# --- chart data ----------------------------------------------------------------------------


def head_values(study: CaseStudy, metric: str, top_k: int) -> pd.DataFrame:
    """One row per head with its global ``metric`` value, most important first.

    Columns layer, head, metric, value, rank (1 = most important), head_label,
    index (``l * H + h``, the x of the paper's line), top (among the ``top_k``).
    """
    ranked = rank_heads(study.tables["importance_overall"], metric)
    return ranked.assign(
        head_label=[f"L{layer}H{head}" for layer, head in zip(ranked["layer"], ranked["head"])],
        index=ranked["layer"] * study.num_heads + ranked["head"],
        top=ranked["rank"] <= top_k,
    )


# --- all charts of a case study --------------------------------------------------------------


def _hurt_rows(study: CaseStudy, finding: HeadFinding) -> pd.DataFrame:
    """The head's partial-pruning rows with the image's name and target class."""
    partial = study.tables["partial"]
    rows = partial[(partial["layer"] == finding.layer) & (partial["head"] == finding.head)]
    names = study.tables["images"][["id", "name", "target"]].rename(columns={"id": "image_id"})
    return rows.merge(names, on="image_id", how="left")


def mode_chart_key(finding: HeadFinding) -> str:
    """Key in ``case_charts`` of a top head's partial-pruning chart."""
    return f"modes-{finding.label}"


def case_charts(study: CaseStudy, found: CaseFindings) -> dict[str, alt.TopLevelMixin]:
    """Every chart of the case study by key, in the report's order.

    Keys: ``mode_chart_key(head)`` for each top head with partial-pruning rows, then
    ``importance-line``, ``importance-heatmap``, ``pruning-curve``, ``entropy-by-layer``,
    ``hop-profiles``, ``distance-by-layer``, ``concentration-by-layer`` (not for a study
    saved before concentration was measured), ``pattern-space``, ``pattern-prototypes``,
    ``pattern-mse``, ``relevance-maps`` (not for a study saved before relevance maps were kept).
    """
    charts: dict[str, alt.TopLevelMixin] = {}
    for finding in found.heads:
        rows = _hurt_rows(study, finding)
        if len(rows):
            charts[mode_chart_key(finding)] = mode_probability_chart(
                rows, finding.label, finding.killer_mode, backbone=study.is_backbone
            )

    measure = target_measure(study.tables["importance_unpruned"]["labelled"])
    title = metric_title(found.metric, False, measure)
    values = head_values(study, found.metric, len(found.heads))
    charts["importance-line"] = importance_line_chart(
        values, title, study.num_heads, baseline=unpruned_value(study.importance, found.metric, None), for_report=True
    )
    charts["importance-heatmap"] = importance_heatmap(values, found.metric, title, for_report=True)
    charts["pruning-curve"] = pruning_curve_chart(study.tables["pruning_curve"], measure, width=CHART_WIDTH)

    top = {finding.label for finding in found.heads}
    heads = study.strength.heads()
    heads["top"] = heads["head_label"].isin(top)
    hops = study.arrays["hop_strength"].shape[-1]
    uniform = (float(np.log(hops)), "uniform attention") if hops > 1 else None
    charts["entropy-by-layer"] = heads_by_layer_chart(
        heads, "entropy", "Hop-profile entropy by layer", "entropy (nats)", reference=uniform, for_report=True
    )
    charts["hop-profiles"] = top_heads_hop_profiles_chart(_hop_profiles(study, found))
    charts["distance-by-layer"] = heads_by_layer_chart(
        heads, "distance", "Mean attention distance by layer", "distance (px)", value_format=".1f", for_report=True
    )
    if study.strength.has_concentration:
        rows, cols = study.manifest["model"]["grid"]
        tokens = int(study.manifest["model"]["num_prefix_tokens"]) + rows * cols
        charts["concentration-by-layer"] = heads_by_layer_chart(
            heads, "top_share", "Attention on one single token by layer", "top-key share",
            reference=(1 / tokens, "uniform attention"), for_report=True,
        )

    pattern_heads = study.tables["pattern_heads"]
    ranks = values.set_index("head_label")["rank"]
    pattern_heads = pattern_heads.assign(rank=pattern_heads["head_label"].map(ranks), top=pattern_heads["head_label"].isin(top))
    method = str(study.manifest["settings"].get("layout", "umap"))
    charts["pattern-space"] = pattern_space_chart(study.tables["pattern_samples"], pattern_heads, method=method, for_report=True)
    charts["pattern-prototypes"] = prototype_chart(
        study.tables["pattern_prototypes"], study.tables["pattern_clusters"], str(study.manifest["settings"]["kind"])
    )
    mse = study.manifest["patterns"]
    charts["pattern-mse"] = reconstruction_chart(float(mse["reconstruction_mse"]), float(mse["baseline_mse"]))
    entries = relevance_entries(study, found)
    if entries:
        charts["relevance-maps"] = relevance_grid_chart(entries)
    return charts


def relevance_entries(study: CaseStudy, found: CaseFindings) -> list[tuple[str, dict[str, np.ndarray], bytes | None]]:
    """The relevance maps of each top head's most hurt image, titled by head and image, with its thumbnail (one entry per image)."""
    names = {item["id"]: item["name"] for item in study.manifest["image_set"]["images"]}
    entries: dict[str, tuple[str, dict[str, np.ndarray], bytes | None]] = {}
    for finding in found.heads:
        if not finding.hurt_images:
            continue
        image_id = finding.hurt_images[0]
        maps = relevance_of(study, image_id)
        if not maps:
            continue
        if image_id in entries:  # another top head hurts the same image most: one row names both
            title, maps, thumbnail = entries[image_id]
            entries[image_id] = (title.replace(" · ", f", {finding.label} · ", 1), maps, thumbnail)
        else:
            entries[image_id] = (f"{finding.label} · {names.get(image_id, image_id)}", maps, study.thumbnails.get(image_id))
    return list(entries.values())


def _hop_profiles(study: CaseStudy, found: CaseFindings) -> pd.DataFrame:
    mean = study.arrays["hop_strength"].mean(axis=0)  # [L, H, n_hops]
    series = [(finding.label, mean[finding.layer, finding.head]) for finding in found.heads]
    series.append((ALL_HEADS, mean.mean(axis=(0, 1))))
    return pd.DataFrame(
        [{"head_label": label, "hop": hop, "strength": float(s)} for label, profile in series for hop, s in enumerate(profile)]
    )


# --- HTML ------------------------------------------------------------------------------------

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; }
a { color: #1f5fa8; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 14px; }
th, td { border-bottom: 1px solid #e4e4e4; padding: 0.25em 0.8em 0.25em 0; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.facts th { color: #555; font-weight: 600; }
.card { border: 1px solid #ddd; border-left: 4px solid #d62728; border-radius: 4px; padding: 0.6em 1em 1em; margin: 1.2em 0; }
.card h3 { margin: 0.3em 0; } .card h3 small { color: #666; font-weight: normal; }
.card ul { padding-left: 1.2em; } .card li { margin: 0.3em 0; }
.source { font-size: 12px; white-space: nowrap; }
.hurt { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.thumbs { display: flex; flex-wrap: wrap; gap: 0.6em; max-width: 420px; }
figure { margin: 0; width: 76px; font-size: 11px; line-height: 1.25; overflow-wrap: anywhere; }
figure img { width: 72px; height: 72px; object-fit: contain; image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.chart { margin: 1em 0; }
.chart.vega-embed { display: block; }
.row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.trend, .note { background: #f3f6fa; border-radius: 4px; padding: 0.6em 1em; }
details summary { cursor: pointer; color: #1f5fa8; }
"""

# vega-tooltip's own formatter lifts a key "image" into <img src=VALUE> and "title" into a
# heading; the charts never use those keys, and this formatter shows every key and value as
# text whatever a spec holds.
_EMBED = """
const asText = (value) => String(value).replace(/[&<>"']/g, (c) => "&#" + c.charCodeAt(0) + ";");
const shown = (value) => asText(value !== null && typeof value === "object" ? JSON.stringify(value) : value);
function textTooltip(value) {
  if (value === null || typeof value !== "object" || Array.isArray(value)) return shown(value);
  const rows = Object.entries(value).filter(([, field]) => field !== undefined).map(
    ([key, field]) => '<tr><td class="key">' + asText(key) + '</td><td class="value">' + shown(field) + "</td></tr>"
  );
  return rows.length ? "<table>" + rows.join("") + "</table>" : "";
}
const options = { renderer: "svg", actions: false, mode: "vega-lite", tooltip: { formatTooltip: textTooltip } };
for (const [key, spec] of Object.entries(specs)) {
  vegaEmbed("#chart-" + key, spec, options).catch((error) => console.error(error));
}
"""

_SOURCES = {
    "importance": "importance", "mechanism": "importance", "locality": "strength", "concentration": "strength",
    "pattern": "patterns", "explanation": "explanations",
}
_SECTION_TITLES = {
    "summary": "Summary",
    "findings": "Findings",
    "importance": "Head importance",
    "strength": "Attention strength",
    "patterns": "Attention patterns",
    "explanations": "Where the model looked",
    "settings": "Settings and versions",
}


def render_report(study: CaseStudy, metric: str | None = None, *, top_k: int | None = None) -> str:
    """The case study as one HTML document that opens without any network.

    Sections: summary, findings (a card per top head under ``metric``), importance,
    strength, patterns, settings and versions. Every user-supplied string (image, model
    and class names) is HTML-escaped; chart specs are escaped so no string can end their
    script.

    ``metric`` defaults to the study's first (``probability``, or ``layer_impact`` for a
    backbone); ``top_k`` is how many heads the findings cover (default: the study's ``top_k``).

    Raises:
        ValueError: ``metric`` is unknown or the study lacks it (from ``findings``).
    """
    found = findings(study, metric, top_k=top_k)
    charts = case_charts(study, found)
    bodies = {
        "summary": _summary(study, found),
        "findings": _findings(study, found, charts),
        "importance": _importance(study, found),
        "strength": _strength(study, found),
        "patterns": _patterns(study),
        "explanations": _explanations(study, charts),
        "settings": _settings(study),
    }
    title = f"HeadScope case study: {study.model_label} on {study.manifest['image_set']['title']}"
    return html_document(title, {key: (_SECTION_TITLES[key], body) for key, body in bodies.items()}, charts)


def html_document(
    title: str, sections: Mapping[str, tuple[str, str]], charts: Mapping[str, alt.TopLevelMixin], css: str = ""
) -> str:
    """One HTML document that opens with no network: one inline copy of Vega, the charts' specs with their data.

    ``sections`` maps an anchor to its heading and its HTML body (already escaped); the headings
    are HeadScope's own text. ``title`` may hold user strings: it is escaped here. ``css`` is
    added to the reports' style sheet. Chart specs are escaped so no string can end their script.
    """
    import vl_convert

    nav = " ".join(f'<a href="#{key}">{heading}</a>' for key, (heading, _) in sections.items())
    body = "\n".join(
        f'<section id="{key}">\n<h2>{heading}</h2>\n{text}\n</section>' for key, (heading, text) in sections.items()
    )
    specs = {key: inline_spec(chart) for key, chart in charts.items()}  # a report holds its data inline
    # the bundle holds no "</script" today; should a later one (in a string or regex, where "<\/" means "</"),
    # the escape keeps it from ending the script early
    bundle = vl_convert.javascript_bundle().replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n<style>{_CSS}{css}</style>\n"
        f"<script>\n{bundle}\n</script>\n</head>\n<body>\n<main>\n"
        f"<h1>{escape(title)}</h1>\n<nav>{nav}</nav>\n{body}\n</main>\n"
        f"<script>\nconst specs = {_script_json(specs)};\n{_EMBED}</script>\n</body>\n</html>\n"
    )


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>``: ``<``, ``>`` and ``&`` as ``\\u`` escapes."""
    return json.dumps(value, separators=(",", ":")).translate(_SCRIPT_ESCAPES)


def _chart(key: str) -> str:
    return f'<div class="chart" id="chart-{escape(key)}"></div>'


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Sequence[bool] | None = None, css: str = "") -> str:
    """An HTML table; every cell is escaped (cells are user strings or numbers already formatted)."""
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{escape(str(name))}</th>" for name in header)
    cell_open = ['<td class="num">' if num else "<td>" for num in numeric]
    body = "\n".join(
        "<tr>" + "".join(f"{start}{escape(str(cell))}</td>" for cell, start in zip(row, cell_open)) + "</tr>" for row in rows
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>'


def _facts(pairs: Iterable[tuple[str, Any]]) -> str:
    """A two-column table of name, value, escaped."""
    rows = "\n".join(f"<tr><th>{escape(str(name))}</th><td>{escape(str(value))}</td></tr>" for name, value in pairs)
    return f'<table class="facts"><tbody>\n{rows}\n</tbody></table>'


def _summary(study: CaseStudy, found: CaseFindings) -> str:
    model, image_set = study.manifest["model"], study.manifest["image_set"]
    unpruned = study.tables["importance_unpruned"]
    labelled = unpruned[unpruned["labelled"].astype(bool)]
    # the target of an image without a label is the unpruned top-1: it always agrees with itself
    accuracy = (
        [(f"unpruned accuracy on the {len(labelled)} labelled images", f"{float(labelled['correct'].mean()):.1%}")]
        if len(labelled) else []
    )
    rows, cols = model["grid"]
    return _facts(
        [
            ("model", f"{model['name']} (key {model['key']})"),
            ("architecture", f"{model['num_layers']} layers × {model['num_heads']} heads, {rows} × {cols} patch grid, "
             f"{model['num_prefix_tokens']} prefix token(s)"),
            ("image set", f"{image_set['title']} · {len(study.tables['images'])} images · key {image_set['key']}"),
            ("created", study.manifest["created"]),
            ("ranking metric", f"{found.metric}: {METRIC_HELP[found.metric]}"),
            *(
                [("model kind", "backbone without a classifier: heads are judged by how pruning them changes its output features")]
                if study.is_backbone else [
                    *accuracy,
                    ("unpruned mean target probability", f"{float(unpruned['probability'].mean()):.3f}"),
                ]
            ),
            ("top heads", ", ".join(finding.label for finding in found.heads)),
        ]
    )


def _findings(study: CaseStudy, found: CaseFindings, charts: Mapping[str, alt.TopLevelMixin]) -> str:
    modes = _table(["mode", "removes"], [(mode, MODE_REMOVES[mode]) for mode in MODES])
    parts = [
        f'<p class="trend">{escape(found.layer_trend)} <a class="source" href="#strength">→ strength</a></p>',
        f"<details><summary>What the partial-pruning modes remove</summary>{modes}</details>",
    ]
    parts += [_card(study, finding, found.metric, mode_chart_key(finding) in charts) for finding in found.heads]
    return "\n".join(parts)


def _card(study: CaseStudy, finding: HeadFinding, metric: str, has_chart: bool) -> str:
    sentences = "\n".join(
        f'<li>{escape(getattr(finding, part))} <a class="source" href="#{target}">→ {target}</a></li>'
        for part, target in _SOURCES.items()
        if getattr(finding, part)  # a study saved before concentration was measured has no such sentence
    )
    rows = _hurt_rows(study, finding)
    figures = []
    for image_id in finding.hurt_images:
        image = rows[rows["image_id"] == image_id]
        name, target = str(image["name"].iloc[0]), str(image["target"].iloc[0])
        png = study.thumbnails.get(image_id)
        img = (
            f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{escape(name)}">' if png else ""
        )
        if study.is_backbone:
            change = image.set_index("mode")["output_impact"].get("head", float("nan"))
            caption_text = f"{escape(name)}<br>output change {change:.4f}"
        else:
            by_mode = image.set_index("mode")["probability"]
            caption_text = (
                f"{escape(name)}<br>target {escape(target)}<br>"
                f"p {by_mode.get('none', float('nan')):.2f} → {by_mode.get('head', float('nan')):.2f}"
            )
        figures.append(f"<figure>{img}<figcaption>{caption_text}</figcaption></figure>")
    hurt = ""
    if figures:
        caption = (
            "<p>Images where pruning it changes the output most (1 - cosine of the features with the head pruned):</p>"
            if study.is_backbone else
            "<p>Images where pruning it hurts most (target probability unpruned → head pruned):</p>"
        )
        chart = _chart(mode_chart_key(finding)) if has_chart else ""
        hurt = f'{caption}<div class="hurt"><div class="thumbs">{"".join(figures)}</div>{chart}</div>'
    return (
        f'<article class="card" id="head-{finding.label}">\n'
        f"<h3>#{finding.rank} · {finding.label} <small>{escape(metric.replace('_', ' '))} {finding.value:.4f}</small></h3>\n"
        f"<ul>\n{sentences}\n</ul>\n{hurt}\n</article>"
    )


def _importance(study: CaseStudy, found: CaseFindings) -> str:
    overall = study.tables["importance_overall"].pivot_table(index=["layer", "head"], columns="metric", values="value")
    metrics = [metric for metric in METRICS if metric in overall.columns]
    rows = [
        [finding.rank, finding.label, *(f"{overall.loc[(finding.layer, finding.head), metric]:.4f}" for metric in metrics)]
        for finding in found.heads
    ]
    table = _table(["rank", "head", *metrics], rows, [True, False, *([True] * len(metrics))])
    help_rows = "".join(f"<li><b>{metric}</b>: {escape(METRIC_HELP[metric])}</li>" for metric in metrics)
    return (
        f"<p>Every head's value over the whole set; heads ranked by <b>{escape(found.metric)}</b> "
        f"({escape(METRIC_HELP[found.metric])}).</p>\n"
        f"{_chart('importance-line')}\n"
        f'<div class="row">{_chart("importance-heatmap")}<div><h3>Top heads, all metrics</h3>{table}</div></div>\n'
        f"<ul>{help_rows}</ul>\n{_chart('pruning-curve')}"
    )


def _strength(study: CaseStudy, found: CaseFindings) -> str:
    layers = found.layers
    table = _table(
        ["layer", "entropy (nats)", "distance (px)", "prefix share", "top-key share", "top heads"],
        [
            [
                int(row.layer), f"{row.entropy:.3f}", f"{row.distance:.1f}", f"{row.prefix_share:.1%}",
                f"{row.top_share:.1%}" if np.isfinite(row.top_share) else "–", int(row.top_heads),
            ]
            for row in layers.itertuples()
        ],
        [True] * 6,
    )
    if found.concentration:
        concentration = f'<h3>Where attention goes</h3>\n<p class="note">{escape(found.concentration)}</p>\n{_chart("concentration-by-layer")}'
    else:
        concentration = (
            f'<h3>Where attention goes</h3>\n<p class="note">This bundle was saved before HeadScope measured sink heads '
            f"and token norms (format version {int(study.manifest['format_version'])}); compute the case study again "
            "to see them.</p>"
        )
    return (
        f'<p class="note">{escape(found.layer_trend)}</p>\n{_chart("entropy-by-layer")}\n'
        f'{_chart("hop-profiles")}\n{_chart("distance-by-layer")}\n{concentration}\n<h3>Layer means</h3>\n{table}'
    )


def _explanations(study: CaseStudy, charts: Mapping[str, alt.TopLevelMixin]) -> str:
    if "relevance-maps" not in charts and int(study.manifest["format_version"]) >= 4:
        return '<p class="note">No top head hurts any image, so there are no relevance maps to show.</p>'
    if "relevance-maps" not in charts:
        return (
            '<p class="note">This bundle was saved before HeadScope kept relevance maps (format version '
            f"{int(study.manifest['format_version'])}); compute the case study again to see them.</p>"
        )
    methods = (
        "attention rollout (the mean of the heads) and the last layer's attention; gradient rollout needs a class, "
        "which a backbone does not have"
        if study.is_backbone else
        "attention rollout (the mean of the heads), gradient rollout for the image's target class, and the last "
        "layer's attention"
    )
    which = "whose output pruning each top head changes most" if study.is_backbone else "each top head hurts most"
    return (
        f'<p class="note">On the image {which}, where the model looked for its answer: '
        f"{escape(methods)}. The Explanations page scores how faithful each map is.</p>\n{_chart('relevance-maps')}"
    )


def _patterns(study: CaseStudy) -> str:
    settings, mse = study.manifest["settings"], study.manifest["patterns"]
    clusters = study.tables["pattern_clusters"]
    table = _table(
        ["cluster", "maps", "share of maps", "member heads"],
        [[f"C{int(row.cluster)}", int(row.maps), f"{row.share:.0%}", row.heads] for row in clusters.itertuples()],
        [False, True, True, False],
    )
    samples = len(study.tables["pattern_samples"])
    ratio = float(mse["reconstruction_mse"]) / max(float(mse["baseline_mse"]), 1e-12)
    return (
        f"<p>{samples:,} {escape(str(settings['kind']))} maps sampled from every head and image, encoded by a small "
        f"autoencoder, laid out in 2-D with {escape(str(settings.get('layout', 'umap')).upper())} and grouped into "
        f"{len(clusters)} k-means clusters. A head belongs to the cluster most of its maps fall in.</p>\n"
        f'<div class="row">{_chart("pattern-space")}{_chart("pattern-prototypes")}</div>\n{table}\n'
        f"<p>The reconstruction error is {ratio:.0%} of the baseline's (always answering the mean map).</p>\n"
        f"{_chart('pattern-mse')}"
    )


def _settings(study: CaseStudy) -> str:
    images = study.tables["images"]
    model = study.manifest["model"]
    if study.is_backbone:
        image_rows = [[int(row.position), row.id, row.name, row.label] for row in images.itertuples()]
        image_table = _table(["#", "id", "name", "label"], image_rows, [True, False, False, False])
        what = "id, name, label"
        classes = "<p>No class names: the model is a backbone without a classifier.</p>"
    else:
        image_rows = [
            [int(row.position), row.id, row.name, row.label, row.target, f"{row.probability:.3f}"] for row in images.itertuples()
        ]
        image_table = _table(
            ["#", "id", "name", "label", "target", "probability"], image_rows, [True, False, False, False, False, True]
        )
        what = "id, name, label; target and unpruned probability of the target"
        class_names = escape(", ".join(map(str, model["class_names"])))
        classes = f"<details><summary>{len(model['class_names'])} class names</summary><p>{class_names}</p></details>"
    return (
        f"<h3>Settings</h3>\n{_facts(study.manifest['settings'].items())}\n"
        f"<h3>Model</h3>\n{_facts((name, value) for name, value in model.items() if name != 'class_names')}\n"
        f"{classes}\n"
        f"<h3>Library versions</h3>\n{_facts(study.manifest['versions'].items())}\n"
        f"<h3>Images</h3>\n<details><summary>All {len(images)} images ({what})</summary>\n{image_table}\n</details>"
    )
