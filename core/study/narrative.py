"""A case study's findings: why its most important heads matter, in sentences with their numbers.

``findings`` reads a ``CaseStudy`` (``core.study.casestudy``), computed or reopened from a
bundle, and recomputes nothing: each sentence cites the views its numbers come from. The
rules it judges by live here too: which images pruning a head hurts (``hurt_images``, also
the images the case study runs partial pruning on), which partial mode kills a prediction
(``KILLER_SHARE``) and which head is a sink (``SINK_SHARE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from core.errors import UnsupportedMetric
from core.measures.attention import OUTLIER_NORM_RATIO
from core.measures.attribution import METHODS as ATTRIBUTION_METHODS
from core.measures.importance import (
    METRICS,
    MODE_BLOCKS,
    MODE_REMOVES,
    MODES,
    HeadImportance,
    rank_heads,
)
from core.measures.strength import StrengthStats, token_label

if TYPE_CHECKING:
    from core.study.casestudy import CaseStudy

__all__ = [
    "KILLER_SHARE",
    "NEGLIGIBLE_CHANGE",
    "NEGLIGIBLE_DROP",
    "PARTIAL_MODES",
    "SINK_SHARE",
    "CaseFindings",
    "HeadFinding",
    "SinkSummary",
    "concentration_sentences",
    "findings",
    "hurt_images",
    "negligible",
    "relevance_of",
    "relevance_row",
    "sink_summary",
]

# Partial-pruning modes that remove part of a head (``none`` and ``head`` are the two ends).
PARTIAL_MODES = tuple(mode for mode in MODES if mode not in ("none", "head"))
# A head whose pruning lowers no image's target probability by this much changes no
# prediction on its own: the case study says so instead of naming a mode.
NEGLIGIBLE_DROP = 0.01
# The same for a backbone, whose change is 1 - cosine of its output features: pruning one
# head of the real DINOv2-S moves its output by about 0.001 to 0.05 on a photo.
NEGLIGIBLE_CHANGE = 0.001


def hurt_images(
    importance: HeadImportance, layer: int, head: int, count: int, *, backbone: bool = False
) -> pd.DataFrame:
    """The ``count`` images where pruning the head hurts most.

    Columns image (position), drop: the unpruned minus the pruned probability of the
    target, or for a ``backbone`` (no classes) the output_impact of pruning the head;
    largest first, ties keep set order.
    """
    local = importance.per_image
    metric = "output_impact" if backbone else "probability"
    pruned = local[(local["metric"] == metric) & (local["layer"] == layer) & (local["head"] == head)]
    pruned = pruned.set_index("image")["value"]
    index = importance.unpruned.set_index("image").index
    if backbone:
        drop = pruned.reindex(index).rename("drop").reset_index()
    else:
        unpruned = importance.unpruned.set_index("image")["probability"]
        drop = (unpruned - pruned.reindex(index)).rename("drop").reset_index()
    return drop.sort_values("drop", ascending=False, kind="stable").head(count).reset_index(drop=True)


def negligible(backbone: bool) -> float:
    """The least whole-head change on an image that counts as hurting it (see ``hurt_images``)."""
    return NEGLIGIBLE_CHANGE if backbone else NEGLIGIBLE_DROP


def relevance_of(study: CaseStudy, image_id: str) -> dict[str, np.ndarray]:
    """The relevance maps a study holds for one image: method to ``[rows, cols]``, only the methods it has.

    Empty for an image the findings do not cite, and for bundles before format version 4.
    """
    found = relevance_row(study, image_id)
    if found is None:
        return {}
    rows, cols = study.manifest["model"]["grid"]
    stored = study.arrays["relevance"][found]
    return {
        method: stored[m].reshape(rows, cols)
        for m, method in enumerate(ATTRIBUTION_METHODS)
        if not np.isnan(stored[m]).any()
    }


def relevance_row(study: CaseStudy, image_id: str) -> int | None:
    """The row of the relevance arrays that holds ``image_id``, ``None`` when none does."""
    ids = [item["id"] for item in study.manifest["image_set"]["images"]]
    if image_id not in ids:
        return None
    rows = np.flatnonzero(study.arrays["relevance_images"] == ids.index(image_id))
    return int(rows[0]) if len(rows) else None



@dataclass(frozen=True)
class HeadFinding:
    """Why one of the most important heads matters, in sentences and in numbers.

    The sentences link to the views they come from: ``importance`` and ``mechanism`` to
    head importance (B1, B2), ``locality`` to attention strength (C), ``pattern`` to
    attention patterns (D).

    Attributes:
        rank: 1 = most important under ``metric``.
        layer, head, label: the head (``L{l}H{h}``).
        value: its global value under ``metric``.
        importance: what pruning it does to the set.
        mechanism: which partial-pruning mode kills the prediction (for a backbone: does
            most of the change to its output) on the images where pruning it hurts most.
        locality: how local or global it is (entropy, hop profile, mean distance); for a
            sink head, why those numbers do not make it global.
        pattern: the pattern cluster its maps fall in.
        hurt_images: ids of the images partial pruning ran on, most hurt first.
        mode_probability: mean target probability over those images, by mode (NaN for a
            backbone).
        mode_impact: mean output_impact over those images, by mode (NaN in a study saved
            before that column existed).
        killer_mode: the partial mode (not ``none``/``head``) that alone does at least
            ``KILLER_SHARE`` of the whole head's damage, or ``None`` (no part does, or no
            image is hurt by ``negligible(backbone)``).
        entropy, near_share, distance: set-mean entropy (nats), share of the mean hop
            profile within one hop (NaN when the head's patches attend to no patch), mean
            attention distance (pixels).
        cluster, cluster_share: its member pattern cluster and the share of its maps there.
        concentration: whether it is a sink head, with its numbers ("" in a study saved
            before concentration was measured).
        top_share, key_entropy: set means of ``core.measures.strength.top_key_share`` and
            ``key_entropy`` (NaN in such a study).
        explanation: where the model looked on the image pruning it hurts most, and (for
            a classifier) the head's share of that image's gradient rollout ("" in a study
            saved before relevance maps were kept).
        relevance_share: that share (NaN for a backbone and in such a study).
    """

    rank: int
    layer: int
    head: int
    label: str
    value: float
    importance: str
    mechanism: str
    locality: str
    pattern: str
    hurt_images: tuple[str, ...]
    mode_probability: Mapping[str, float]
    killer_mode: str | None
    mode_impact: Mapping[str, float]
    entropy: float
    near_share: float
    distance: float
    cluster: int
    cluster_share: float
    concentration: str = ""
    top_share: float = float("nan")
    key_entropy: float = float("nan")
    explanation: str = ""
    relevance_share: float = float("nan")


@dataclass(frozen=True)
class CaseFindings:
    """The case study under one metric: a finding per top head and the layer trend.

    Attributes:
        metric: the importance metric the heads are ranked by.
        heads: one finding per top head, most important first.
        layer_trend: one sentence on how locality changes with depth, with its numbers.
        layers: one row per layer: layer, entropy, distance, prefix_share, top_share
            (set means over heads and images), top_heads (how many of the top heads sit there).
        concentration: sentences on the model's sink heads, its high-norm tokens and its
            registers, with their numbers ("" in a study saved before they were measured).
    """

    metric: str
    heads: tuple[HeadFinding, ...]
    layer_trend: str
    layers: pd.DataFrame
    concentration: str = ""


def findings(study: CaseStudy, metric: str | None = None, top_k: int | None = None) -> CaseFindings:
    """The case study's findings with the heads ranked by ``metric`` (default the study's first metric:
    ``probability``, or ``layer_impact`` for a backbone; ``top_k`` defaults to the settings').

    Raises:
        UnsupportedMetric: ``metric`` is unknown or the study does not hold it.
    """
    metric = study.metrics[0] if metric is None else metric
    if metric not in METRICS:
        raise UnsupportedMetric(f"Unknown metric {metric!r}: choose one of {', '.join(METRICS)}.")
    overall = study.tables["importance_overall"]
    if metric not in set(overall["metric"]):
        raise UnsupportedMetric(f"This case study has no {metric!r} importance.")
    ranked = rank_heads(overall, metric).head(study.settings.top_k if top_k is None else top_k)
    evidence = _Evidence.of(study)
    heads = tuple(
        _head_finding(evidence, metric, rank, int(row.layer), int(row.head), float(row.value))
        for rank, row in enumerate(ranked.itertuples(index=False), start=1)
    )
    per_head = evidence.per_head
    layers = per_head.groupby("layer", as_index=False)[["entropy", "distance", "prefix_share", "top_share"]].mean()
    layers["top_heads"] = [int((ranked["layer"] == layer).sum()) for layer in layers["layer"]]
    measured = study.strength.has_concentration
    return CaseFindings(
        metric=metric, heads=heads, layer_trend=_trend_sentence(layers, evidence.hops), layers=layers,
        concentration=concentration_sentences(evidence.strength, study.prefix_names) if measured else "",
    )


@dataclass(frozen=True)
class _Evidence:
    """What the findings of any head read from a study, read once."""

    study: CaseStudy
    strength: StrengthStats
    per_head: pd.DataFrame  # StrengthStats.heads(): one row per head, model order
    mean_profile: np.ndarray  # [L, H, hops] the hop profile's set mean
    distance_rank: pd.Series  # each head's rank by mean attention distance (1: most local)

    @classmethod
    def of(cls, study: CaseStudy) -> _Evidence:
        strength = study.strength
        per_head = strength.heads()
        return cls(
            study=study, strength=strength, per_head=per_head, mean_profile=strength.hop_strength.mean(axis=0),
            distance_rank=per_head["distance"].rank(method="min").astype(int),
        )

    @property
    def hops(self) -> int:
        return len(self.mean_profile[0, 0])


def _head_finding(evidence: _Evidence, metric: str, rank: int, layer: int, head: int, value: float) -> HeadFinding:
    """Why head ``L{layer}H{head}``, ranked ``rank`` by ``metric``, matters: every sentence with its numbers."""
    study, per_head = evidence.study, evidence.per_head
    label, index, n_heads = f"L{layer}H{head}", layer * study.num_heads + head, study.num_layers * study.num_heads
    profile = evidence.mean_profile[layer, head]
    near = float(profile[:2].sum() / profile.sum()) if profile.sum() > 0 else float("nan")
    entropy, distance = float(per_head["entropy"].iloc[index]), float(per_head["distance"].iloc[index])
    modes, impacts, removed, hurt, killer = _partial_evidence(study, layer, head)
    largest = float(hurt_images(study.importance, layer, head, 1, backbone=study.is_backbone)["drop"].max())
    pattern_heads = study.tables["pattern_heads"].set_index(["layer", "head"])
    member = pattern_heads.loc[(layer, head)] if (layer, head) in pattern_heads.index else None
    cluster = int(member["cluster"]) if member is not None else -1
    cluster_share = float(member["share"]) if member is not None else float("nan")
    clusters = study.tables["pattern_clusters"].set_index("cluster")
    sink = sink_summary(evidence.strength, layer, head, study.prefix_names) if evidence.strength.has_concentration else None
    explanation, relevance_share = _explanation(study, label, layer, head, hurt[0] if hurt else None)
    unpruned = study.tables["importance_unpruned"]
    return HeadFinding(
        rank=rank, layer=layer, head=head, label=label, value=value,
        importance=_importance_sentence(label, rank, n_heads, metric, value, study.tables["importance_overall"], unpruned),
        mechanism=_mechanism_sentence(modes, impacts, removed, killer, len(hurt), largest, study.is_backbone),
        locality=_locality_sentence(
            int(evidence.distance_rank.iloc[index]), n_heads, distance, entropy, len(profile), near,
            float(per_head["prefix_share"].iloc[index]), sink,
        ),
        pattern=_pattern_sentence(label, cluster, cluster_share, clusters, study.manifest["settings"]["kind"]),
        hurt_images=hurt, mode_probability=modes, killer_mode=killer, mode_impact=impacts,
        entropy=entropy, near_share=near, distance=distance, cluster=cluster, cluster_share=cluster_share,
        concentration=_sink_sentence(label, sink) if sink else "",
        top_share=float(per_head["top_share"].iloc[index]), key_entropy=float(per_head["key_entropy"].iloc[index]),
        explanation=explanation, relevance_share=relevance_share,
    )


def _partial_evidence(
    study: CaseStudy, layer: int, head: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], tuple[str, ...], str | None]:
    """Partial pruning of one head, as the mean over its hurt images by mode: target probability, output_impact,
    attention removed; those images' ids, most hurt first; and the mode that kills the prediction, if one does."""
    partial = study.tables["partial"]
    rows = partial[(partial["layer"] == layer) & (partial["head"] == head)]
    by_mode = rows.groupby("mode")
    modes = by_mode["probability"].mean().reindex(list(MODES)).to_dict()
    impacts = by_mode["output_impact"].mean().reindex(list(MODES)).to_dict()
    removed = by_mode["removed_attention"].mean().reindex(list(MODES)).to_dict()
    hurt = tuple(dict.fromkeys(rows["image_id"]))
    damage = impacts if study.is_backbone else {mode: modes["none"] - value for mode, value in modes.items()}
    killer = _killer_mode(damage, removed) if len(rows) else None
    return modes, impacts, removed, hurt, killer


def _explanation(study: CaseStudy, label: str, layer: int, head: int, image_id: str | None) -> tuple[str, float]:
    """The sentence on where the model looked on the head's most hurt image, and the head's share of its gradient rollout."""
    maps = relevance_of(study, image_id) if image_id is not None else {}
    if not maps:
        return "", float("nan")
    rows, cols = study.manifest["model"]["grid"]
    ids = [item["id"] for item in study.manifest["image_set"]["images"]]
    name = str(study.manifest["image_set"]["images"][ids.index(image_id)]["name"])
    method = "gradient rollout" if "gradient rollout" in maps else "attention rollout"
    r, c = divmod(int(np.argmax(maps[method])), cols)
    where = f"the {method} puts the most relevance on the patch in row {r + 1}, column {c + 1} (of {rows}×{cols})"
    if study.is_backbone:
        return f"On {name}, the image whose output pruning it changes most, {where}.", float("nan")
    shares = study.arrays["relevance_heads"][relevance_row(study, image_id)]
    share = float(shares[layer, head])
    if method != "gradient rollout" or not np.isfinite(shares).all() or not share > 0:
        return f"On {name}, the image pruning it hurts most, {where}.", float("nan")
    rank = int((shares > share).sum()) + 1
    tied = "tied at rank" if int((shares == share).sum()) > 1 else "rank"
    return (
        f"On {name}, the image pruning it hurts most, {label} carries {share:.1%} of what the layers add to the "
        f"gradient rollout ({tied} {rank} of {shares.size} heads there; an even share is {1 / shares.size:.1%}), "
        f"and {where}.",
        share,
    )


# A head is a sink head when, on the set's mean, at least this share of its patches'
# attention lands on one single token: hop entropy and mean distance then say where that
# token lies, not how widely the head looks.
SINK_SHARE = 0.5


@dataclass(frozen=True)
class SinkSummary:
    """How one head concentrates over a set.

    Attributes:
        share: set mean of its top-key share.
        is_sink: ``share`` is at least ``SINK_SHARE``.
        strong: images on which one token gets at least ``SINK_SHARE`` of its patches' attention.
        strong_share: its mean top-key share on those images (NaN when there are none).
        distinct: how many different tokens are the sink on those images.
        token: the token that is most often the sink there (of all images when there
            are none), named as ``core.measures.strength.token_label`` names it.
        on_prefix: that token is a prefix token (CLS, a register), not a patch.
        images: on how many of the ``strong`` images ``token`` is the sink.
        total: the set's images.
        key_entropy: set mean of its key entropy (nats); ``uniform`` is ln T.
    """

    share: float
    is_sink: bool
    strong: int
    strong_share: float
    distinct: int
    token: str
    on_prefix: bool
    images: int
    total: int
    key_entropy: float
    uniform: float


def sink_summary(strength: StrengthStats, layer: int, head: int, prefix_names: Sequence[str]) -> SinkSummary:
    """Whether head ``L{layer}H{head}`` is a sink head over the set, and which token its sink is."""
    share, sink = strength.top_share[:, layer, head].astype(np.float64), strength.sink[:, layer, head]
    strong = share >= SINK_SHARE
    among = sink[strong] if strong.any() else sink
    common = int(np.bincount(among).argmax())  # the lowest index among equally common ones
    tokens = len(prefix_names) + strength.grid[0] * strength.grid[1]
    return SinkSummary(
        share=float(share.mean()), is_sink=float(share.mean()) >= SINK_SHARE, strong=int(strong.sum()),
        strong_share=float(share[strong].mean()) if strong.any() else float("nan"),
        distinct=len(np.unique(sink[strong])), token=token_label(common, strength.grid, prefix_names),
        on_prefix=common < len(prefix_names), images=int((sink[strong] == common).sum()), total=len(share),
        key_entropy=float(strength.key_entropy[:, layer, head].mean()), uniform=float(np.log(tokens)),
    )


def _sink_sentence(label: str, sink: SinkSummary) -> str:
    """'L0H5 sends 98% of the patches' attention to one token, ...: a sink, not a global head.'"""
    entropy = f"key entropy {sink.key_entropy:.2f} nats; uniform: {sink.uniform:.2f}"
    if not sink.is_sink:
        return (
            f"{label} spreads its patches' attention over many tokens: on a typical image at most {sink.share:.0%} "
            f"goes to any one ({entropy})."
        )
    if sink.distinct == 1:
        return (
            f"{label} sends {sink.strong_share:.0%} of the patches' attention to one token, {sink.token}, on "
            f"{sink.strong} of {sink.total} images ({entropy}): a sink, not a global head."
        )
    which = (
        "a different token on each" if sink.distinct == sink.strong
        else f"{sink.distinct} different tokens, most often {sink.token} ({sink.images} images)"
    )
    return (
        f"{label} sends {sink.strong_share:.0%} of the patches' attention to one token on {sink.strong} of "
        f"{sink.total} images ({which}; {entropy}): a sink, not a global head."
    )


def concentration_sentences(strength: StrengthStats, prefix_names: Sequence[str]) -> str:
    """The model's sink heads, its high-norm tokens and its registers' share, in a few sentences with their numbers."""
    layers, heads = strength.top_share.shape[1:]
    summaries = {(l, h): sink_summary(strength, l, h, prefix_names) for l in range(layers) for h in range(heads)}
    sinks = sorted((item for item in summaries.items() if item[1].is_sink), key=lambda item: -item[1].share)
    if sinks:
        shown = "; ".join(
            f"L{l}H{h} ({s.share:.0%}, "
            + (f"always {s.token}" if s.distinct == 1 and s.strong == s.total else f"{s.distinct} different sink tokens")
            + ")"
            for (l, h), s in sinks[:4]
        )
        more = f" and {len(sinks) - 4} more" if len(sinks) > 4 else ""
        parts = [
            f"{len(sinks)} of {layers * heads} heads {'is a sink head' if len(sinks) == 1 else 'are sink heads'}, "
            f"sending {SINK_SHARE:.0%} or more of the "
            f"patches' attention to one token on a typical image: {shown}{more}."
        ]
    else:
        top = max(summaries.items(), key=lambda item: item[1].share)
        parts = [
            f"No head sends {SINK_SHARE:.0%} or more of the patches' attention to one token on a typical image "
            f"(most: L{top[0][0]}H{top[0][1]}, {top[1].share:.0%})."
        ]
    norms = strength.layer_norms()
    with_outliers = norms[norms["images_with_outliers"] > 0]
    if len(with_outliers):
        first = int(with_outliers["layer"].iloc[0])
        most = norms.loc[norms["images_with_outliers"].idxmax()]
        layer = int(most["layer"])
        counts = strength.outliers[:, layer]
        received = strength.outlier_share.mean(axis=(0, 2))  # [L]
        parts.append(
            f"High-norm tokens (at least {OUTLIER_NORM_RATIO:g} times the median patch norm) first leave block "
            f"{first}; block {layer}'s output has them on the most images, {int(most['images_with_outliers'])} of "
            f"{strength.num_images} ({counts[counts > 0].mean():.1f} on each of those), and as keys they draw up to "
            f"{received.max():.0%} of the patches' attention in a layer (layer {int(received.argmax())})."
        )
    else:
        worst = norms.loc[norms["norm_ratio_max"].idxmax()]
        parts.append(
            f"No token has a norm {OUTLIER_NORM_RATIO:g} times its image's median patch norm in any layer (largest "
            f"{worst['norm_ratio_max']:.1f} times, layer {int(worst['layer'])}): this model has no high-norm "
            "artefact tokens, so its sinks are tokens of ordinary norm."
        )
    registers = sum(name.startswith("register") for name in prefix_names)
    if registers:
        by_layer = strength.register_share.mean(axis=(0, 2))  # [L]
        parts.append(
            f"The {registers} registers receive {strength.register_share.mean():.0%} of the patches' attention on "
            f"average, most in layer {int(by_layer.argmax())} ({by_layer.max():.0%})."
        )
    return " ".join(parts)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _importance_sentence(
    label: str, rank: int, n_heads: int, metric: str, value: float, overall: pd.DataFrame, unpruned: pd.DataFrame
) -> str:
    head = f"{label} ranks {_ordinal(rank)} of {n_heads} heads by {metric.replace('_', ' ')}"
    if metric == "probability":
        base = float(unpruned["probability"].mean())
        return f"{head}: pruning it lowers the mean target probability from {base:.3f} to {value:.3f}."
    if metric == "accuracy":
        base = float(unpruned["correct"].mean())
        return f"{head}: pruning it changes the share of images whose top-1 is the target from {base:.1%} to {value:.1%}."
    if metric == "layer_impact":
        return f"{head}: pruning it turns its block's output tokens {value:.4f} away from the unpruned ones (1 - cosine)."
    if metric == "output_impact":
        return f"{head}: pruning it turns the model's output {value:.4f} away from the unpruned output (1 - cosine)."
    return f"{head}: its gate gradient is {value:.4f} in magnitude over the set (a first-order estimate of its cost)."


def _blocks(mode: str) -> set[int]:
    return {i for i, removed in enumerate(MODE_BLOCKS[mode]) if removed}


# A partial mode "kills the prediction" when it does at least this share of the whole head's damage.
KILLER_SHARE = 0.5


def _killer_mode(damage: Mapping[str, float], removed: Mapping[str, float]) -> str | None:
    """The partial mode that does most of the whole head's damage, or ``None`` when no part alone does.

    ``damage``: by mode, what it does to the images: the target probability it takes
    away (unpruned minus pruned), or for a backbone its output_impact. Only modes that
    remove some attention count (on a model without prefix tokens the prefix modes
    remove nothing). ``cls`` removes the blocks of ``cls_patch`` and ``cls_cls`` too:
    when one of those alone does at least 90% of its damage, it is the more precise answer.
    """
    whole = damage["head"]
    candidates = [mode for mode in PARTIAL_MODES if removed.get(mode, 0.0) > 0 and np.isfinite(damage[mode])]
    if not whole > 0 or not candidates:
        return None
    killer = max(candidates, key=lambda mode: (damage[mode], -PARTIAL_MODES.index(mode)))
    if damage[killer] < KILLER_SHARE * whole:
        return None
    within = [mode for mode in candidates if _blocks(mode) < _blocks(killer) and damage[mode] >= 0.9 * damage[killer]]
    return min(within, key=lambda mode: (len(_blocks(mode)), -damage[mode])) if within else killer


def _span(values: list[float], digits: int = 3) -> str:
    low, high = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
    return low if low == high else f"{low} to {high}"


def _mechanism_sentence(
    modes: Mapping[str, float],
    impacts: Mapping[str, float],
    removed: Mapping[str, float],
    killer: str | None,
    images: int,
    largest: float,
    backbone: bool,
) -> str:
    """What partial pruning shows: the target probability by mode, or for a backbone its output_impact by mode."""
    if not images:
        if backbone:
            return (
                f"Pruning it changes no single image's output by {NEGLIGIBLE_CHANGE} or more (1 - cosine; largest "
                f"{largest:.4f}): its importance comes from small changes spread over the set."
            )
        return (
            f"Pruning it lowers no single image's target probability by {NEGLIGIBLE_DROP} or more "
            f"(largest drop {largest:.3f}): its importance comes from small changes, not from any one prediction."
        )
    where = "On the image" if images == 1 else f"On the {images} images"
    if backbone:
        whole = (
            f"{where} where pruning it changes the output most, removing the whole head turns the output "
            f"{impacts['head']:.4f} away from the unpruned one (1 - cosine)"
        )
        damage, does, digits, keep_verb = impacts, (lambda mode: f"does {impacts[mode]:.4f}"), 4, "do"
    else:
        whole = (
            f"{where} where pruning it hurts most, removing the whole head takes the target probability from "
            f"{modes['none']:.3f} to {modes['head']:.3f}"
        )
        damage = {mode: modes["none"] - value for mode, value in modes.items()}
        does, digits, keep_verb = (lambda mode: f"takes it to {modes[mode]:.3f}"), 3, "leave"
    removing = [mode for mode in PARTIAL_MODES if removed.get(mode, 0.0) > 0]
    if killer is None:
        if not removing:
            return f"{whole}; none of the partial modes removes any of its attention on these images."
        best = max(removing, key=lambda mode: (damage[mode], -PARTIAL_MODES.index(mode)))
        return (
            f"{whole}; no part of its attention does most of that alone: the closest, removing only "
            f"{MODE_REMOVES[best]} ({best}), {does(best)}."
        )
    # modes that remove none of the killer's blocks: what the head does without that flow
    keeping = [(impacts if backbone else modes)[mode] for mode in removing if not _blocks(killer) & _blocks(mode)]
    rest = f"; modes that keep that flow {keep_verb} {_span(keeping, digits)}" if keeping else ""
    return f"{whole}, and removing only {MODE_REMOVES[killer]} ({killer}) {does(killer)}{' of it' if backbone else ''}{rest}."


def _locality_sentence(
    distance_rank: int,
    n_heads: int,
    distance: float,
    entropy: float,
    hops: int,
    near: float,
    prefix_share: float,
    sink: SinkSummary | None = None,
) -> str:
    """Local or global by mean attention distance; how concentrated by the hop profile's entropy.

    A sink head is never called global: its distance and entropy say where its sink lies.
    """
    uniform = float(np.log(hops)) if hops > 1 else 0.0
    if sink is not None and sink.is_sink and sink.on_prefix:
        if not np.isfinite(near):
            return f"It is a sink head: its patches give each other no attention, {prefix_share:.0%} of it goes to prefix tokens."
        return (
            f"It is a sink head: {sink.share:.0%} of its patches' attention lands on one token, {sink.token}, so its "
            f"mean attention distance ({distance:.1f} px, the {_ordinal(distance_rank)} shortest of {n_heads}) and hop "
            f"entropy ({entropy:.2f} nats; uniform: {uniform:.2f}) describe only the rest, spread over the patches."
        )
    if sink is not None and sink.is_sink:
        return (
            f"Its mean attention distance ({distance:.1f} px, the {_ordinal(distance_rank)} shortest of {n_heads}) and "
            f"hop entropy ({entropy:.2f} nats; uniform: {uniform:.2f}) say how far its sink lies from each patch, not "
            f"how widely it looks: {sink.share:.0%} of its patches' attention lands on one token."
        )
    if distance_rank <= n_heads / 3:
        kind = "among the most local third of the heads"
    elif distance_rank > 2 * n_heads / 3:
        kind = "among the most global third of the heads"
    else:
        kind = "in the middle third of the heads"
    if not np.isfinite(near):
        return (
            f"It is {kind} by mean attention distance ({distance:.1f} px), but its patches give each other no "
            f"attention: {prefix_share:.0%} of their attention goes to prefix tokens."
        )
    return (
        f"It is {kind} by mean attention distance ({distance:.1f} px, the {_ordinal(distance_rank)} shortest of "
        f"{n_heads}); {near:.0%} of its hop profile lies within one hop (uniform attention: {min(2, hops) / hops:.0%}) "
        f"and its entropy is {entropy:.2f} nats (uniform: {uniform:.2f})."
    )


def _pattern_sentence(label: str, cluster: int, share: float, clusters: pd.DataFrame, kind: str) -> str:
    if cluster < 0 or cluster not in clusters.index:
        return f"{label} has no maps in the pattern sample."
    info = clusters.loc[cluster]
    mates = [name for name in str(info["heads"]).split(", ") if name and name != label]
    shown = ", ".join(mates[:6]) + (f" and {len(mates) - 6} more" if len(mates) > 6 else "")
    with_whom = f"shared with {shown}" if mates else "no other head's maps mostly fall there"
    return (
        f"{share:.0%} of its {kind} maps fall in pattern cluster {cluster} "
        f"({float(info['share']):.0%} of all maps; {with_whom})."
    )


def _trend_sentence(layers: pd.DataFrame, hops: int) -> str:
    first, last = layers.iloc[0], layers.iloc[-1]
    low = layers.loc[layers["entropy"].idxmin()]
    high = layers.loc[layers["entropy"].idxmax()]
    change = (last["distance"] - first["distance"]) / max(first["distance"], 1e-12)
    if change > 0.05:
        verdict = "deeper heads look further"
    elif change < -0.05:
        verdict = "deeper heads look closer"
    else:
        verdict = "locality changes little with depth"
    return (
        f"From layer {int(first['layer'])} to layer {int(last['layer'])}, mean hop-profile entropy goes from "
        f"{first['entropy']:.2f} to {last['entropy']:.2f} nats (lowest {low['entropy']:.2f} in layer {int(low['layer'])}, "
        f"highest {high['entropy']:.2f} in layer {int(high['layer'])}; uniform attention gives {np.log(hops):.2f}) and "
        f"mean attention distance from {first['distance']:.1f} px to {last['distance']:.1f} px: {verdict}."
    )
