"""Two case studies side by side: what changed between two models, checkpoints, image sets or input sizes.

``compare(study_a, study_b)`` reads two ``CaseStudy`` objects (computed, or reopened from
result bundles of any format version) and recomputes nothing from a model, so comparing
costs no model in memory. What it can say depends on what the studies share:

- **the same heads** (same layers x heads): per head, B minus A of every measure both
  hold (head importance under each shared metric and the set means of the strength
  measures), how much the two head rankings agree (Spearman, Kendall, top-k overlap),
  the heads whose rank moved most, and which sink heads and high-norm tokens are new or
  gone;
- **any two models**: per-layer trends against depth as a fraction of the network
  (layer / (L - 1)), both pruning curves against the fraction of heads pruned, and the
  top heads of each side with their findings;
- **patterns across both** (``joint_patterns``): one autoencoder trained on every head's
  mean offset map of both studies (``StrengthStats.offset_mean``, which bundles of every
  version hold), one 2-D layout of both, shared clusters and each head's nearest heads
  on the other side.

It also says in sentences what changed most, with the numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats

from core.errors import NothingToCompare, UnsupportedMetric
from core.measures.importance import (
    HIGHER_MEANS_LESS_IMPORTANT,
    METRICS,
    RANKED_BY_MAGNITUDE,
)
from core.measures.patterns import (
    AE_SIZE,
    MapSample,
    cluster_patterns,
    project_patterns,
    resize_maps,
    train_autoencoder,
)
from core.measures.projection import Method
from core.study.casestudy import CaseStudy
from core.study.narrative import CaseFindings, findings, sink_summary

__all__ = [
    "FAITHFULNESS_NOTE",
    "FINDING_PARTS",
    "HEAD_MEASURES",
    "MEASURE_TITLES",
    "OVERLAP_KS",
    "SIDES",
    "STRENGTH_MEASURES",
    "TREND_MEASURES",
    "Comparison",
    "JointPatterns",
    "Side",
    "compare",
    "head_values",
    "joint_patterns",
]

SIDES = ("A", "B")
# Per-head set means of the strength measures (``StrengthStats.heads``), after the importance metrics.
STRENGTH_MEASURES = ("entropy", "distance", "prefix_share", "top_share", "key_entropy")
HEAD_MEASURES = (*METRICS, *STRENGTH_MEASURES)
# The per-layer trends, comparable between any two models.
TREND_MEASURES = ("entropy", "distance", "prefix_share", "top_share")
MEASURE_TITLES = {
    "probability": "importance: probability",
    "accuracy": "importance: accuracy",
    "layer_impact": "importance: layer impact",
    "output_impact": "importance: output impact",
    "taylor": "importance: taylor",
    "entropy": "hop entropy (nats)",
    "distance": "mean attention distance (px)",
    "prefix_share": "prefix share",
    "top_share": "top-key share",
    "key_entropy": "key entropy (nats)",
}
# How the sentences name a measure, and how they print its values.
_SPOKEN = {
    "entropy": ("hop entropy", "{:.2f} nats"),
    "distance": ("mean attention distance", "{:.0f} px"),
    "prefix_share": ("share of attention on prefix tokens", "{:.0%}"),
    "top_share": ("top-key share", "{:.0%}"),
    "key_entropy": ("key entropy", "{:.2f} nats"),
}
OVERLAP_KS = (5, 10, 20)
# The sentences of a top head's finding (``HeadFinding``) a comparison shows, in the case study's order.
FINDING_PARTS = ("importance", "mechanism", "locality", "concentration", "pattern", "explanation")
# Why a comparison shows no faithfulness scores: no study holds them, so no two studies both have them.
FAITHFULNESS_NOTE = (
    "Faithfulness is not compared: a study keeps the relevance maps of the images its findings cite, not their "
    "deletion and insertion scores; the Explanations page scores the current analysis's maps."
)
_NEIGHBOURS = 3  # nearest heads of the other side by pattern, per head
_THIRDS = ("first", "middle", "last")
# A relative change below this is the noise of recomputing the same numbers (float32 sums in
# another order), not a change: the sentences do not report it.
NOISE = 1e-4


@dataclass(frozen=True)
class Side:
    """What one side of a comparison is: its model, input size and image set."""

    name: str  # "A" or "B"
    model: str
    layers: int
    heads: int
    grid: tuple[int, int]
    img_size: tuple[int, int]
    image_set: str
    images: int
    backbone: bool
    format_version: int

    @classmethod
    def of(cls, name: str, study: CaseStudy) -> Side:
        model = study.manifest["model"]
        grid = (int(model["grid"][0]), int(model["grid"][1]))
        patch = (int(model["patch_size"][0]), int(model["patch_size"][1]))
        return cls(
            name=name, model=str(model["name"]), layers=study.num_layers, heads=study.num_heads, grid=grid,
            img_size=(grid[0] * patch[0], grid[1] * patch[1]), image_set=str(study.manifest["image_set"]["title"]),
            images=len(study.tables["images"]), backbone=study.is_backbone,
            format_version=int(study.manifest["format_version"]),
        )

    @property
    def size(self) -> str:
        """``224 px`` for a square input, ``224x320 px`` otherwise."""
        rows, cols = self.img_size
        return f"{rows} px" if rows == cols else f"{rows}x{cols} px"

    @property
    def label(self) -> str:
        """``A: dinov2-s at 224 px on Sample photos from scikit-image (9 images)``; a name that carries its
        size (``dinov2-s (448 px)``) reads the same way: ``dinov2-s at 448 px``."""
        model = self.model.removesuffix(f" ({self.size})")
        return f"{self.name}: {model} at {self.size} on {self.image_set}"

    @property
    def shape(self) -> str:
        """``12 layers x 6 heads``; ``1 layer x 1 head``."""
        return f"{self.layers} layer{'s' if self.layers != 1 else ''} x {self.heads} head{'s' if self.heads != 1 else ''}"


@dataclass(frozen=True)
class JointPatterns:
    """Both studies' heads in one pattern space: one autoencoder over every head's mean offset map.

    Attributes:
        heads: one row per head of both sides: side, layer, head, head_label, x, y (the 2-D
            layout), cluster (k-means on the codes of both, largest first).
        clusters: one row per cluster: cluster, heads_a, heads_b (how many heads of each
            side), shared (both sides have heads there).
        prototypes: each cluster's decoded centre: cluster, row, col (offsets dy, dx from the
            query patch), value.
        neighbours: for every head, its nearest heads of the other side by pattern (distance
            between the autoencoder's codes): side, layer, head, head_label, rank (1 =
            nearest), other_layer, other_head, other_label, distance.
        window: the offset window both sides' maps were compared in (rows, cols).
        resampled: a sentence naming the side whose maps were resampled to that window ("" when
            the grids match).
        method: the 2-D layout, ``"umap"`` or ``"pca"``.
        reconstruction_mse, baseline_mse: the autoencoder's error, and that of always answering
            the mean map.
    """

    heads: pd.DataFrame
    clusters: pd.DataFrame
    prototypes: pd.DataFrame
    neighbours: pd.DataFrame
    window: tuple[int, int]
    resampled: str
    method: Method
    reconstruction_mse: float
    baseline_mse: float


@dataclass(frozen=True)
class Comparison:
    """What changed from study A to study B (``compare``); differences are always B minus A.

    Attributes:
        a, b: what each side is.
        same_heads: both have the same layers x heads, so heads can be matched one to one.
        why_not: when they do not, the sentence that says so and what is compared instead.
        distance_share: the input sizes differ, so mean attention distance is compared as a share
            of each input's side (in ``differences`` and ``trends``), not in pixels.
        metric: the importance metric the sentences and the top heads rank by.
        measures: the per-head measures both sides hold, in ``HEAD_MEASURES`` order.
        missing: sentences naming what one side lacks (a measure, concentration arrays, a pruning
            curve, top heads) and what reads differently on the two sides (input sizes).
        differences: one row per head and shared measure: measure, layer, head, head_label,
            a, b, difference (b - a). Empty when the heads differ.
        agreement: one row per shared importance metric: metric, heads, spearman, kendall
            (of the two rankings) and top_5, top_10, top_20 (heads in both top k; NaN when
            k is not below the number of heads).
        moves: one row per shared metric and head: metric, layer, head, head_label, rank_a,
            rank_b, move (rank_a - rank_b: above 0 the head rises in B), most moved first.
        curves: both pruning curves: side, order (the metric the heads were pruned by, or
            random), fraction, pruned, value (accuracy of a classifier pair, else the output's
            similarity), quantity (which of the two).
        sinks: heads that are a sink on at least one side: layer, head, head_label,
            share_a, share_b, token_a, token_b, status ("on both", "new in B", "gone in B").
        norms: one row per layer: layer, images_a, images_b (images whose block output has
            high-norm tokens), ratio_a, ratio_b (mean largest norm over the median patch
            norm), status ("on both", "new in B", "gone in B", "neither").
        trends: per-layer means of ``TREND_MEASURES``: side, layer, depth (layer / (L - 1)),
            measure, value.
        top: each side's top heads with their findings, by side name.
        patterns: the joint pattern space, when asked for.
        sentences: what changed most, in sentences with their numbers.
    """

    a: Side
    b: Side
    same_heads: bool
    why_not: str
    distance_share: bool
    metric: str
    measures: tuple[str, ...]
    missing: tuple[str, ...]
    differences: pd.DataFrame
    agreement: pd.DataFrame
    moves: pd.DataFrame
    curves: pd.DataFrame
    sinks: pd.DataFrame
    norms: pd.DataFrame
    trends: pd.DataFrame
    top: Mapping[str, CaseFindings]
    patterns: JointPatterns | None
    sentences: tuple[str, ...]

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.a, self.b

    def measure_title(self, measure: str) -> str:
        """``MEASURE_TITLES[measure]``, with the unit distance is compared in."""
        if measure == "distance" and self.distance_share:
            return "mean attention distance (share of the image side)"
        return MEASURE_TITLES[measure]

    def difference_grid(self, measure: str) -> pd.DataFrame:
        """The rows of ``differences`` for one measure."""
        return self.differences[self.differences["measure"] == measure].reset_index(drop=True)


def compare(
    study_a: CaseStudy,
    study_b: CaseStudy,
    *,
    metric: str | None = None,
    top_k: int = 5,
    patterns: bool = False,
    layout: Method = "umap",
    seed: int = 0,
) -> Comparison:
    """Compare two case studies; nothing is recomputed from a model.

    Args:
        study_a, study_b: the two studies; any two models, sizes or image sets.
        metric: the importance metric the sentences and top heads rank by (default: the
            first metric both sides hold, else each side's own first).
        top_k: top heads per side.
        patterns: also train the joint pattern space (``joint_patterns``): seconds, plus
            UMAP's first compilation.
        layout, seed: the pattern layout's method and seed.

    Raises:
        NothingToCompare: the two studies hold no measure in common, in a sentence naming
            what each holds.
        UnsupportedMetric: ``metric`` is held by neither side.
    """
    a, b = Side.of("A", study_a), Side.of("B", study_b)
    values = {"A": head_values(study_a), "B": head_values(study_b)}
    share = a.img_size != b.img_size  # in pixels, the same pattern covers more of the larger input
    if share:
        for side in (a, b):
            values[side.name]["distance"] = values[side.name]["distance"] / _image_side(side)
    held = {side: [m for m in HEAD_MEASURES if m in frame and frame[m].notna().all()] for side, frame in values.items()}
    measures = tuple(m for m in HEAD_MEASURES if m in held["A"] and m in held["B"])
    if not measures:
        raise NothingToCompare(
            f"A and B hold no measure in common: A has {_listed(held['A'])}, B has {_listed(held['B'])}."
        )
    shared_metrics = [m for m in measures if m in METRICS]
    metric = _pick_metric(metric, shared_metrics, study_a, study_b)
    same = (a.layers, a.heads) == (b.layers, b.heads)
    why_not = "" if same else (
        f"A has {a.shape} and B has {b.shape}: heads cannot be matched one to one, so only the per-layer trends "
        "against depth, the pruning curves, each side's top heads and the joint pattern space are compared."
    )
    differences = _differences(values, measures) if same else _empty_differences()
    agreement, moves = _rankings(study_a, study_b, shared_metrics) if same else (_empty_agreement(), _empty_moves())
    sinks, norms = _concentration(study_a, study_b) if same else (_empty_sinks(), _empty_norms())
    trends = pd.concat([_trends(side, frame) for side, frame in zip((a, b), values.values())], ignore_index=True)
    top = {
        side.name: findings(study, _side_metric(metric, study), top_k=min(top_k, study.settings.top_k))
        for side, study in ((a, study_a), (b, study_b))
    }
    joint = joint_patterns(study_a, study_b, method=layout, seed=seed) if patterns else None
    curves = _curves(study_a, study_b)
    comparison = Comparison(
        a=a, b=b, same_heads=same, why_not=why_not, distance_share=share, metric=metric, measures=measures,
        missing=_missing(held, study_a, study_b) + _caveats(a, b, study_a, study_b, curves, top_k),
        differences=differences, agreement=agreement, moves=moves, curves=curves, sinks=sinks, norms=norms,
        trends=trends, top=top, patterns=joint, sentences=(),
    )
    return _with_sentences(comparison)


# --- per head ------------------------------------------------------------------------------


def head_values(study: CaseStudy) -> pd.DataFrame:
    """One row per head: layer, head, head_label, then each importance metric the study holds and
    the set means of ``STRENGTH_MEASURES`` (NaN in a bundle saved before they were measured)."""
    strength = study.strength.heads()[["layer", "head", "head_label", *STRENGTH_MEASURES]]
    importance = study.tables["importance_overall"].pivot_table(
        index=["layer", "head"], columns="metric", values="value", aggfunc="first"
    )
    importance = importance[[m for m in METRICS if m in importance.columns]].reset_index()
    importance.columns.name = None
    frame = strength.merge(importance, on=["layer", "head"], how="left")
    return frame[["layer", "head", "head_label", *[m for m in METRICS if m in frame], *STRENGTH_MEASURES]]


def _differences(values: Mapping[str, pd.DataFrame], measures: Sequence[str]) -> pd.DataFrame:
    """B minus A per head, the heads matched by (layer, head)."""
    joined = values["A"].merge(values["B"], on=["layer", "head", "head_label"], suffixes=("_a", "_b"), validate="1:1")
    joined = joined.sort_values(["layer", "head"], ignore_index=True)
    parts = [
        pd.DataFrame({
            "measure": measure, "layer": joined["layer"], "head": joined["head"], "head_label": joined["head_label"],
            "a": joined[f"{measure}_a"].astype(float), "b": joined[f"{measure}_b"].astype(float),
            "difference": joined[f"{measure}_b"].astype(float) - joined[f"{measure}_a"].astype(float),
        })
        for measure in measures
    ]
    return pd.concat(parts, ignore_index=True)


def _empty_differences() -> pd.DataFrame:
    return pd.DataFrame(columns=["measure", "layer", "head", "head_label", "a", "b", "difference"])


def _rankings(study_a: CaseStudy, study_b: CaseStudy, metrics: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How much the two head rankings agree under each shared metric, and which heads moved.

    The correlations are of the importance scores themselves (Spearman with average ranks for
    ties, Kendall's tau-b), so tied heads are not ordered by their position in the model;
    NaN when every head ties on a side. Ranks in ``moves`` give tied heads the best rank they
    share, and a top k holds every head ranked k or better (more than k when heads tie at k).
    """
    rows, moves = [], []
    for metric in metrics:
        joined = _score(study_a, metric).merge(_score(study_b, metric), on=["layer", "head"], suffixes=("_a", "_b"))
        joined = joined.sort_values(["layer", "head"], ignore_index=True)
        for side in ("a", "b"):
            joined[f"rank_{side}"] = joined[f"score_{side}"].rank(ascending=False, method="min").astype(int)
        n = len(joined)
        overlaps = {
            f"top_{k}": float(((joined["rank_a"] <= k) & (joined["rank_b"] <= k)).sum()) if k < n else float("nan")
            for k in OVERLAP_KS
        }
        with warnings.catch_warnings():  # a side whose heads all tie: the correlation is undefined (NaN)
            warnings.simplefilter("ignore")
            spearman = float(stats.spearmanr(joined["score_a"], joined["score_b"]).statistic)
            kendall = float(stats.kendalltau(joined["score_a"], joined["score_b"]).statistic)
        rows.append({"metric": metric, "heads": n, "spearman": spearman, "kendall": kendall, **overlaps})
        joined = joined.assign(
            metric=metric, head_label="L" + joined["layer"].astype(str) + "H" + joined["head"].astype(str),
            move=joined["rank_a"] - joined["rank_b"],
        )
        order = np.lexsort((joined["rank_a"].to_numpy(), -joined["move"].abs().to_numpy()))
        moves.append(joined.iloc[order][["metric", "layer", "head", "head_label", "rank_a", "rank_b", "move"]])
    return pd.DataFrame(rows, columns=_empty_agreement().columns), pd.concat(moves, ignore_index=True)


def _score(study: CaseStudy, metric: str) -> pd.DataFrame:
    """layer, head, score: the head's importance under ``metric``, higher = more important (as ``rank_heads`` orders)."""
    overall = study.tables["importance_overall"]
    rows = overall[overall["metric"] == metric]
    score = rows["value"].abs() if metric in RANKED_BY_MAGNITUDE else rows["value"]
    score = -score if HIGHER_MEANS_LESS_IMPORTANT[metric] else score
    return pd.DataFrame({"layer": rows["layer"].astype(int), "head": rows["head"].astype(int), "score": score.astype(float)})


def _empty_agreement() -> pd.DataFrame:
    return pd.DataFrame(columns=["metric", "heads", "spearman", "kendall", *(f"top_{k}" for k in OVERLAP_KS)])


def _empty_moves() -> pd.DataFrame:
    return pd.DataFrame(columns=["metric", "layer", "head", "head_label", "rank_a", "rank_b", "move"])


def _concentration(study_a: CaseStudy, study_b: CaseStudy) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sink heads and high-norm tokens of both sides, and which are new or gone (empty when a side
    was saved before they were measured)."""
    strength_a, strength_b = study_a.strength, study_b.strength
    if not (strength_a.has_concentration and strength_b.has_concentration):
        return _empty_sinks(), _empty_norms()
    rows = []
    for layer in range(study_a.num_layers):
        for head in range(study_a.num_heads):
            sink_a = sink_summary(strength_a, layer, head, study_a.prefix_names)
            sink_b = sink_summary(strength_b, layer, head, study_b.prefix_names)
            if sink_a.is_sink or sink_b.is_sink:
                rows.append({
                    "layer": layer, "head": head, "head_label": f"L{layer}H{head}",
                    "share_a": sink_a.share, "share_b": sink_b.share,
                    "token_a": sink_a.token if sink_a.is_sink else "", "token_b": sink_b.token if sink_b.is_sink else "",
                    "status": _status(sink_a.is_sink, sink_b.is_sink),
                })
    norms_a, norms_b = strength_a.layer_norms(), strength_b.layer_norms()
    norms = pd.DataFrame({
        "layer": norms_a["layer"],
        "images_a": norms_a["images_with_outliers"], "images_b": norms_b["images_with_outliers"],
        "ratio_a": norms_a["norm_ratio"], "ratio_b": norms_b["norm_ratio"],
    })
    norms["status"] = [_status(x > 0, y > 0) for x, y in zip(norms["images_a"], norms["images_b"])]
    return pd.DataFrame(rows, columns=_empty_sinks().columns), norms


def _status(on_a: bool, on_b: bool) -> str:
    return "on both" if on_a and on_b else "new in B" if on_b else "gone in B" if on_a else "neither"


def _empty_sinks() -> pd.DataFrame:
    return pd.DataFrame(columns=["layer", "head", "head_label", "share_a", "share_b", "token_a", "token_b", "status"])


def _empty_norms() -> pd.DataFrame:
    return pd.DataFrame(columns=["layer", "images_a", "images_b", "ratio_a", "ratio_b", "status"])


# --- any two models --------------------------------------------------------------------


def _trends(side: Side, values: pd.DataFrame) -> pd.DataFrame:
    """Per-layer means over heads of the per-head set means, against depth as a fraction of the network."""
    layers = values.groupby("layer", as_index=False)[list(TREND_MEASURES)].mean()
    depth = layers["layer"] / max(side.layers - 1, 1)
    long = layers.assign(depth=depth).melt(id_vars=["layer", "depth"], var_name="measure", value_name="value")
    return long.assign(side=side.name)[["side", "layer", "depth", "measure", "value"]]


def _curves(study_a: CaseStudy, study_b: CaseStudy) -> pd.DataFrame:
    """Both pruning curves; accuracy when both are classifiers, else the output's similarity."""
    quantity = "similarity" if study_a.is_backbone or study_b.is_backbone else "accuracy"
    parts = []
    for side, study in zip(SIDES, (study_a, study_b)):
        curve = study.tables["pruning_curve"]
        parts.append(pd.DataFrame({
            "side": side, "order": curve["order"].astype(str), "fraction": curve["fraction"].astype(float),
            "pruned": curve["pruned"].astype(int), "value": curve[quantity].astype(float), "quantity": quantity,
        }))
    return pd.concat(parts, ignore_index=True)


def _pick_metric(metric: str | None, shared: Sequence[str], study_a: CaseStudy, study_b: CaseStudy) -> str:
    if metric is None:
        return shared[0] if shared else study_a.metrics[0]
    if metric not in study_a.metrics and metric not in study_b.metrics:
        raise UnsupportedMetric(f"Neither study holds {metric!r} importance: A has {_listed(study_a.metrics)}, B has {_listed(study_b.metrics)}.")
    return metric


def _side_metric(metric: str, study: CaseStudy) -> str:
    """``metric`` when the study holds it, else its own first metric."""
    return metric if metric in study.metrics else study.metrics[0]


def _missing(held: Mapping[str, Sequence[str]], study_a: CaseStudy, study_b: CaseStudy) -> tuple[str, ...]:
    """Sentences on what one side holds and the other lacks."""
    notes = []
    for side, other, study in (("A", "B", study_a), ("B", "A", study_b)):
        lacking = [m for m in held[other] if m not in held[side]]
        if lacking:
            why = (
                f" (its bundle is format version {study.manifest['format_version']}, saved before HeadScope measured them)"
                if any(m in STRENGTH_MEASURES for m in lacking) else ""
            )
            names = [f"{m.replace('_', '-')} importance" if m in METRICS else _SPOKEN[m][0] for m in lacking]
            notes.append(f"{side} holds no {_listed(names, 'or')}{why}, so {other}'s are not compared.")
    return tuple(notes)


def _caveats(
    a: Side, b: Side, study_a: CaseStudy, study_b: CaseStudy, curves: pd.DataFrame, top_k: int
) -> tuple[str, ...]:
    """Sentences on what makes a number read differently on the two sides."""
    notes = []
    if a.img_size != b.img_size:
        notes.append(
            f"A sees {a.size} inputs and B {b.size}: mean attention distance is compared as a share of each input's "
            "side (in pixels the same pattern covers more of a larger input), and hop and key entropy can reach "
            "higher on the larger grid (more hops, more tokens)."
        )
    for side in SIDES:
        if curves[curves["side"] == side]["value"].isna().all():
            study = study_a if side == "A" else study_b
            notes.append(
                f"{side}'s bundle (format version {study.manifest['format_version']}) has no "
                f"{curves['quantity'].iloc[0]} pruning curve, so only the other side's is drawn."
            )
    old = [side for side, study in (("A", study_a), ("B", study_b)) if not study.strength.has_concentration]
    if old and a.layers == b.layers and a.heads == b.heads:
        notes.append(
            f"{_listed(old)}'s bundle{'s were' if len(old) > 1 else ' was'} saved before HeadScope measured sink heads "
            "and token norms, so they are not compared."
        )
    for side, study in (("A", study_a), ("B", study_b)):
        if top_k > study.settings.top_k:
            notes.append(f"{side}'s study kept its top {study.settings.top_k} heads per metric, so at most that many are shown.")
    return tuple(notes)


def _listed(names: Sequence[str], conjunction: str = "and") -> str:
    names = [name.replace("_", " ") for name in names]
    if not names:
        return "none"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" {conjunction} " + names[-1]


# --- patterns across both ---------------------------------------------------------------


def joint_patterns(
    study_a: CaseStudy, study_b: CaseStudy, *, method: Method = "umap", n_clusters: int | None = None, seed: int = 0
) -> JointPatterns:
    """One pattern space for both studies' heads.

    Each head's map is its mean offset map (``StrengthStats.offset_mean``: the attention from a
    patch to the patch ``dy`` rows and ``dx`` columns away, averaged over patches and images),
    which every bundle holds. When the grids differ, the larger side's maps are resampled to
    the smaller side's offset window by area averaging, so an offset becomes a fraction of the
    image on both sides. Maps are then prepared as the attention-patterns view prepares them
    (resized to the autoencoder's input, divided by their peak and scaled by the share of
    attention the patches give to patches), and one autoencoder is trained on both sides.
    """
    a, b = Side.of("A", study_a), Side.of("B", study_b)
    small = a if a.grid[0] * a.grid[1] <= b.grid[0] * b.grid[1] else b
    large = b if small is a else a
    window = (2 * small.grid[0] - 1, 2 * small.grid[1] - 1)
    # a non-square pair (16x32 against 32x16) can be shorter on one side: that side's cells are repeated
    stretched = " (repeating cells along its shorter side)" if min(large.grid[0] - small.grid[0], large.grid[1] - small.grid[1]) < 0 else ""
    resampled = "" if a.grid == b.grid else (
        f"{large.name}'s offset maps ({2 * large.grid[0] - 1}x{2 * large.grid[1] - 1}, grid {large.grid[0]}x"
        f"{large.grid[1]}) were resampled to {small.name}'s {window[0]}x{window[1]} (grid {small.grid[0]}x"
        f"{small.grid[1]}) by area averaging{stretched}, so an offset is a fraction of the image on both sides."
    )
    inputs, origins = [], []
    for side, study in ((a, study_a), (b, study_b)):
        offsets = torch.as_tensor(np.asarray(study.arrays["offset_mean"], dtype=np.float32))  # [L, H, r, c]
        maps = offsets.reshape(-1, *offsets.shape[2:])
        if tuple(maps.shape[1:]) != window:
            maps = resize_maps(maps, window)
        patch_share = torch.as_tensor(1.0 - np.asarray(study.arrays["prefix_share"], dtype=np.float32).mean(axis=0))
        resized = resize_maps(maps, (AE_SIZE, AE_SIZE))
        peak = resized.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
        inputs.append((resized / peak * patch_share.reshape(-1, 1, 1).clamp(0, 1)).unsqueeze(1))
        layer, head = np.divmod(np.arange(side.layers * side.heads), side.heads)
        origins.append(pd.DataFrame({"side": side.name, "layer": layer, "head": head, "image": -1, "source": -1}))
    origin = pd.concat(origins, ignore_index=True)
    sample = MapSample(
        inputs=torch.cat(inputs).nan_to_num(0.0), origin=origin, kind="patch", grid=small.grid,
        num_layers=max(a.layers, b.layers), num_heads=max(a.heads, b.heads),
    )
    space = train_autoencoder(sample, seed=seed, device="cpu")
    k = n_clusters if n_clusters is not None else int(min(study_a.settings.n_clusters, study_b.settings.n_clusters))
    clusters = cluster_patterns(space, n_clusters=k, seed=seed)
    layout = project_patterns(space, method=method, seed=seed)
    heads = origin[["side", "layer", "head"]].assign(
        head_label="L" + origin["layer"].astype(str) + "H" + origin["head"].astype(str),
        x=layout.samples["x"].to_numpy(), y=layout.samples["y"].to_numpy(), cluster=clusters.labels,
    )
    counts = pd.crosstab(heads["cluster"], heads["side"]).reindex(columns=list(SIDES), fill_value=0)
    table = pd.DataFrame({
        "cluster": counts.index.to_numpy(), "heads_a": counts["A"].to_numpy(), "heads_b": counts["B"].to_numpy(),
    })
    table["shared"] = (table["heads_a"] > 0) & (table["heads_b"] > 0)
    return JointPatterns(
        heads=heads, clusters=table, prototypes=clusters.prototypes,
        neighbours=_neighbours(heads, space.latents), window=window, resampled=resampled, method=layout.method,
        reconstruction_mse=space.reconstruction_mse, baseline_mse=space.baseline_mse,
    )


def _neighbours(heads: pd.DataFrame, latents: np.ndarray) -> pd.DataFrame:
    """Each head's ``_NEIGHBOURS`` nearest heads of the other side, by distance between codes."""
    rows = []
    codes = latents.astype(np.float64)
    for side, other in (("A", "B"), ("B", "A")):
        mine, theirs = np.flatnonzero(heads["side"] == side), np.flatnonzero(heads["side"] == other)
        distance = np.linalg.norm(codes[mine][:, None, :] - codes[theirs][None, :, :], axis=-1)
        for row, index in enumerate(mine):
            nearest = np.argsort(distance[row], kind="stable")[:_NEIGHBOURS]
            for rank, column in enumerate(nearest, start=1):
                match = heads.iloc[theirs[column]]
                rows.append({
                    "side": side, "layer": int(heads.at[index, "layer"]), "head": int(heads.at[index, "head"]),
                    "head_label": heads.at[index, "head_label"], "rank": rank, "other_layer": int(match["layer"]),
                    "other_head": int(match["head"]), "other_label": match["head_label"],
                    "distance": float(distance[row, column]),
                })
    return pd.DataFrame(rows)


# --- sentences --------------------------------------------------------------------------


def _with_sentences(comparison: Comparison) -> Comparison:
    return replace(comparison, sentences=tuple(_sentences(comparison)))


def _sentences(c: Comparison) -> list[str]:
    parts = [f"{c.a.label}, {c.a.shape}. {c.b.label}, {c.b.shape}."]
    if c.why_not:
        parts.append(c.why_not)
    if c.same_heads:
        largest = float(c.differences["difference"].abs().max())
        differs = any(_changed(c.difference_grid(measure)) for measure in c.measures)
        if largest == 0:
            parts.append("Every per-head measure both studies hold is the same in A and B: every difference is 0.")
        elif not differs:
            parts.append(
                f"Every per-head measure both studies hold is the same in A and B up to {largest:.1g}: the noise of "
                "computing the same numbers again."
            )
        parts.extend(_ranking_sentences(c))
        if differs:
            parts.extend(_largest_changes(c))
        parts.extend(_concentration_sentences(c))
    parts.extend(_trend_sentences(c))
    parts.extend(_curve_sentences(c))
    parts.extend(c.missing)
    return parts


def _changed(rows: pd.DataFrame) -> bool:
    """Whether one measure's differences are more than the noise of computing its numbers again."""
    scale = max(float(rows["a"].abs().max()), float(rows["b"].abs().max()), 1e-12)
    return float(rows["difference"].abs().max()) > NOISE * scale


def _ranking_sentences(c: Comparison) -> list[str]:
    if c.metric not in set(c.agreement["metric"]):
        return []
    row = c.agreement[c.agreement["metric"] == c.metric].iloc[0]
    by = c.metric.replace("_", " ")
    moves = c.moves[c.moves["metric"] == c.metric]
    if not (np.isfinite(row["spearman"]) and np.isfinite(row["kendall"])):
        return [f"By {by}, every head ties on one side, so how much the two rankings agree is undefined."]
    firsts = moves[moves["rank_a"] == 1]
    agree = (
        f"the two rankings of {int(row['heads'])} heads agree with Spearman {row['spearman']:.2f} and Kendall "
        f"{row['kendall']:.2f}"
    )
    if len(firsts) == 1:
        first = firsts.iloc[0]
        rank_b = int(first["rank_b"])
        moved = "stays rank 1 in B" if rank_b == 1 else f"{'drops' if rank_b > 1 else 'rises'} from rank 1 to rank {rank_b}"
        out = [f"By {by}, A's top head {first['head_label']} {moved}; {agree}."]
    else:
        out = [f"By {by}, {len(firsts)} heads tie for A's rank 1; {agree}."]
    overlaps = [_overlap_phrase(int(row[f"top_{k}"]), k, int((moves["rank_a"] <= k).sum())) for k in OVERLAP_KS if np.isfinite(row[f"top_{k}"])]
    if overlaps:
        out.append(overlaps[0][0].upper() + "; ".join(overlaps)[1:] + ".")
    top = moves[moves["move"] != 0].head(1)
    if len(top):
        moved = top.iloc[0]
        direction = "rises" if moved["move"] > 0 else "drops"
        out.append(
            f"The head whose rank moved most: {moved['head_label']} {direction} from rank {int(moved['rank_a'])} "
            f"to {int(moved['rank_b'])}."
        )
    return out


def _overlap_phrase(both: int, k: int, in_top: int) -> str:
    """``7 of A's top 10 heads are in B's top 10``; with ties at k, how many heads A's top k holds."""
    if in_top == k:
        return f"{both} of A's top {k} heads are in B's top {k}"
    return f"{both} of the {in_top} heads tied into A's top {k} are in B's top {k}"


def _largest_changes(c: Comparison) -> list[str]:
    """The head that changed most in each of up to two strength measures, relative to A's spread."""
    out, scored = [], []
    for measure in (m for m in c.measures if m in _SPOKEN):
        rows = c.difference_grid(measure)
        if not _changed(rows):
            continue
        spread = float(rows["a"].std())
        spread = spread if np.isfinite(spread) and spread > 0 else 1.0
        change = rows["difference"].abs()
        at = int(change.to_numpy().argmax())
        scored.append((float(change.iloc[at]) / spread, measure, rows.iloc[at]))
    for _, measure, row in sorted(scored, key=lambda item: -item[0])[:2]:
        out.append(
            f"The largest change in {_SPOKEN[measure][0]}: {row['head_label']}, from {_said(c, measure, row['a'])} "
            f"in A to {_said(c, measure, row['b'])} in B."
        )
    return out


def _image_side(side: Side) -> float:
    """The input's side in pixels (the mean of height and width)."""
    return (side.img_size[0] + side.img_size[1]) / 2


def _said(c: Comparison, measure: str, value: float) -> str:
    """A value in words: ``75 px``, or ``33% of the image side`` for a distance when the input sizes differ."""
    if measure == "distance" and c.distance_share:
        return f"{value:.0%} of the image side"
    return _SPOKEN[measure][1].format(value)


def _concentration_sentences(c: Comparison) -> list[str]:
    out = []
    if len(c.sinks):
        both, new, gone = (c.sinks[c.sinks["status"] == s]["head_label"].tolist() for s in ("on both", "new in B", "gone in B"))
        pieces = [f"{len(both)} sink head{'s' if len(both) != 1 else ''} on both sides"]
        if new:
            pieces.append(f"{len(new)} new in B ({', '.join(new[:4])}{', …' if len(new) > 4 else ''})")
        if gone:
            pieces.append(f"{len(gone)} gone in B ({', '.join(gone[:4])}{', …' if len(gone) > 4 else ''})")
        out.append("Sink heads: " + "; ".join(pieces) + ".")
    if len(c.norms):
        first = {
            side: c.norms[c.norms[f"images_{side.lower()}"] > 0]["layer"].min() for side in SIDES
        }
        said = {side: f"block {int(layer)}" if pd.notna(layer) else "no block" for side, layer in first.items()}
        if said["A"] == said["B"] == "no block":
            out.append("No block's output has high-norm tokens on either side.")
        elif said["A"] == said["B"]:
            out.append(f"High-norm tokens first leave {said['A']} on both sides.")
        else:
            out.append(f"High-norm tokens first leave {said['A']} in A and {said['B']} in B.")
    return out


def _trend_sentences(c: Comparison) -> list[str]:
    """For up to two trend measures, the third of the network where the mean changed most (relatively)."""
    scored = []
    for measure in TREND_MEASURES:
        rows = c.trends[c.trends["measure"] == measure]
        for index, name in enumerate(_THIRDS):
            means, spans = {}, {}
            for side in SIDES:
                part = rows[(rows["side"] == side) & _third(rows["depth"], index)]
                means[side] = float(part["value"].mean()) if len(part) else float("nan")
                spans[side] = (int(part["layer"].min()), int(part["layer"].max())) if len(part) else None
            if not all(np.isfinite(list(means.values()))):
                continue
            change = abs(means["B"] - means["A"]) / max(abs(means["A"]), abs(means["B"]), 1e-12)
            if change > NOISE:
                scored.append((change, measure, name, means, spans))
    out, seen = [], set()
    for change, measure, third, means, spans in sorted(scored, key=lambda item: -item[0]):
        if measure in seen or len(out) == 2:
            continue
        seen.add(measure)
        spoken = _SPOKEN[measure][0]
        verb = "rises" if means["B"] > means["A"] else "falls"
        if c.a.layers == c.b.layers:
            where = f"layers {_span(spans['A'])}"
        else:
            where = f"the {third} third of the network (A's layers {_span(spans['A'])}, B's {_span(spans['B'])})"
        out.append(
            f"The {spoken} of {where} {verb} from {_said(c, measure, means['A'])} in A to "
            f"{_said(c, measure, means['B'])} in B."
        )
    return out


def _third(depth: pd.Series, index: int) -> pd.Series:
    low, high = index / 3, (index + 1) / 3
    return (depth >= low) & ((depth < high) | ((index == 2) & (depth <= 1.0)))


def _span(span: tuple[int, int] | None) -> str:
    if span is None:
        return "none"
    return str(span[0]) if span[0] == span[1] else f"{span[0]}-{span[1]}"


def _curve_sentences(c: Comparison) -> list[str]:
    """The quantity left with half the heads pruned by the metric, on each side."""
    quantity = c.curves["quantity"].iloc[0]
    values = {}
    for side in SIDES:
        order = c.top[side].metric
        rows = c.curves[(c.curves["side"] == side) & (c.curves["order"] == order)].sort_values("fraction")
        if rows.empty or rows["value"].isna().all():
            return []
        values[side] = float(np.interp(0.5, rows["fraction"], rows["value"]))
    metric = c.top["A"].metric.replace("_", " ")
    same = c.top["A"].metric == c.top["B"].metric
    by = f"by {metric}" if same else f"by each side's first metric ({metric} in A, {c.top['B'].metric.replace('_', ' ')} in B)"
    return [
        f"With half the heads pruned {by}, the {quantity} is {values['A']:.2f} in A and {values['B']:.2f} in B "
        "(read off each pruning curve)."
    ]
