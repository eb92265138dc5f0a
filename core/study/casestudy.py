"""Case study: why the most important heads matter, as findings with their numbers.

A ``CaseStudy`` gathers every result the case study needs (head importance, the pruning
curve, attention strength, attention patterns and partial pruning of the top heads on
the images where pruning hurts them most) as plain named tables and arrays plus a JSON
manifest (model, images, settings, library versions). That container is what a result
bundle stores (``core.study.bundle``), what the HTML report renders (``viz.report``) and what
the dashboard reopens without recomputing. Its numbers come from one streamed analysis
of the set (``core.pipeline.analysis``); ``CaseSettings`` (``core.settings``) says with what.
``findings`` turns it into short sentences.
"""

from __future__ import annotations

import io
import platform
import sys
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from core.pipeline.analysis import (
    PASS_STAGE,
    SetAnalysis,
    StageProgress,
    draw_samples,
    first_pass,
    samples_from,
)
from core.measures.attention import OUTLIER_NORM_RATIO
from core.measures.attribution import METHODS as ATTRIBUTION_METHODS
from core.measures.attribution import relevance_maps
from core.errors import HeadScopeError, NotEnoughImages, UnsupportedMetric
from core.inputs.images import ImageSet
from core.measures.importance import (
    METRICS,
    MODE_BLOCKS,
    MODE_REMOVES,
    MODES,
    HeadImportance,
    partial_pruning,
    pruning_curve,
    rank_heads,
)
from core.measures.inference import Predictions
from core.models.handle import ViTHandle
from core.measures.patterns import (
    PatternClusters,
    PatternLayout,
    PatternSpace,
    check_map_kind,
    cluster_patterns,
    project_patterns,
    train_autoencoder,
)
from core.measures.projection import Method
from core.settings import CaseSettings, images_per_batch
from core.measures.strength import StrengthStats, token_label

if TYPE_CHECKING:
    from core.pipeline.distributed import Shards

__all__ = [
    "ARRAYS",
    "BUNDLE_FORMAT",
    "BUNDLE_VERSION",
    "KILLER_SHARE",
    "NEGLIGIBLE_CHANGE",
    "NEGLIGIBLE_DROP",
    "PARTIAL_MODES",
    "PLAIN_BUNDLE_VERSION",
    "SINK_SHARE",
    "STRENGTH_ARRAYS",
    "TABLES",
    "TABLE_COLUMNS",
    "THUMBNAIL_SIDE",
    "VERSIONED_PACKAGES",
    "CaseFindings",
    "CaseSettings",
    "CaseStudy",
    "HeadFinding",
    "SinkSummary",
    "StageProgress",
    "analyze",
    "assemble",
    "concentration_sentences",
    "findings",
    "gather_or_raise",
    "hurt_images",
    "relevance_of",
    "library_versions",
    "model_summary",
    "negligible",
    "set_labels",
    "sink_summary",
    "studied_heads",
    "study_from",
    "thumbnail_png",
]

BUNDLE_FORMAT = "headscope-bundle"
# 2: backbones (empty class names), the output_impact metric, the curve's similarity and
# partial pruning's output_impact columns.
# 3: the concentration and token-norm arrays (top_share to norm_ratio in ARRAYS) and the
# model's prefix_names. Bundles of versions 1 and 2 still open, without those numbers.
# 4: the relevance maps of the images partial pruning ran on (relevance_images, relevance
# and relevance_heads in ARRAYS). Bundles of versions 1 to 3 still open, without them.
# 5: a linear probe's classifier (``core.models.probe``): the probe file (probe/probe.safetensors)
# and model.probe in the manifest (its digest, features and the backbone it sits on). Only
# a study of a probed model is saved as version 5: nothing else changed, so every other
# study is still saved as PLAIN_BUNDLE_VERSION, which HeadScope versions reading up to 4 open,
# and those versions tell a user to update HeadScope for a probe's bundle instead of
# refusing a member they do not know.
BUNDLE_VERSION = 5
PLAIN_BUNDLE_VERSION = 4
# The libraries whose versions a result depends on, in the manifest and the report.
VERSIONED_PACKAGES = (
    "torch", "timm", "numpy", "pandas", "scikit-learn", "umap-learn", "altair", "vl-convert-python", "pyarrow",
    "streamlit", "Pillow",
)
# Partial-pruning modes that remove part of a head (``none`` and ``head`` are the two ends).
PARTIAL_MODES = tuple(mode for mode in MODES if mode not in ("none", "head"))
# A head whose pruning lowers no image's target probability by this much changes no
# prediction on its own: the case study says so instead of naming a mode.
NEGLIGIBLE_DROP = 0.01
# The same for a backbone, whose change is 1 - cosine of its output features: pruning one
# head of the real DINOv2-S moves its output by about 0.001 to 0.05 on a photo.
NEGLIGIBLE_CHANGE = 0.001
THUMBNAIL_SIDE = 96

# Tables of a ``CaseStudy`` and their columns, by name (a bundle stores exactly these).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    # probability: the unpruned model's, of the target
    "images": ("position", "id", "name", "label", "target", "probability"),
    "importance_overall": ("layer", "head", "metric", "value"),
    "importance_per_image": ("image", "layer", "head", "metric", "value"),
    "importance_unpruned": ("image", "target", "probability", "correct", "labelled"),
    # accuracy is NaN for a backbone, whose curve is the similarity of its output
    "pruning_curve": ("order", "pruned", "fraction", "accuracy", "similarity"),
    # drop: what pruning the whole head does to the image (target probability lost, or a
    # backbone's output_impact); probability NaN and predicted "" for a backbone
    "partial": (
        "layer", "head", "image", "image_id", "drop", "mode", "probability", "predicted", "removed_attention",
        "output_impact",
    ),
    "pattern_heads": ("layer", "head", "head_label", "cluster", "share", "x", "y", "maps"),
    "pattern_clusters": ("cluster", "maps", "share", "heads", "head_count"),
    "pattern_prototypes": ("cluster", "row", "col", "value"),
    "pattern_samples": ("image", "layer", "head", "source", "x", "y", "cluster"),
}
TABLES = tuple(TABLE_COLUMNS)
ARRAYS = (
    "hop_strength",  # [N, L, H, n_hops]
    "entropy",  # [N, L, H]
    "distance",  # [N, L, H]
    "prefix_share",  # [N, L, H]
    "offset_mean",  # [L, H, 2 rows - 1, 2 cols - 1]
    # format version 3 on: where attention concentrates, and the residual stream's norms
    "top_share",  # [N, L, H]
    "key_entropy",  # [N, L, H]
    "sink",  # [N, L, H] token index
    "register_share",  # [N, L, H]
    "outlier_share",  # [N, L, H]
    "outliers",  # [N, L] high-norm tokens
    "norm_ratio",  # [N, L]
    # format version 4 on: explanations of the C images partial pruning ran on (only those)
    "relevance_images",  # [C] their positions in the set, in the order they are first cited
    "relevance",  # [C, len(core.measures.attribution.METHODS), n_patches]; a backbone's gradient rollout NaN
    "relevance_heads",  # [C, L, H] each head's share of the gradient rollout; NaN for a backbone
)
STRENGTH_ARRAYS = ARRAYS[:ARRAYS.index("relevance_images")]  # the StrengthStats fields


@dataclass(frozen=True)
class CaseStudy:
    """Every result of a case study as named tables and arrays, plus a JSON-able manifest.

    Attributes:
        manifest: format, created (UTC ISO time), model (name, key, layers, heads, grid,
            prefix tokens, patch size, class names, and for a linear probe's classifier
            ``probe``: see ``model_summary``), image_set (key, title, images: id, name,
            label), settings (``CaseSettings`` plus the layout method), patterns
            (reconstruction and baseline MSE), versions (Python and ``VERSIONED_PACKAGES``).
        tables: one DataFrame per name in ``TABLES``.
        arrays: one array per name in ``ARRAYS``: the ``StrengthStats`` fields, then the
            relevance maps of the images the findings cite (``relevance_of``).
        thumbnails: PNG bytes of the images the findings cite, by image id.
        probe: the model's linear probe file (``LinearProbe.to_bytes``) when the model is a
            backbone with a probe (``ViTHandle.probe``), else ``None``.
    """

    manifest: Mapping[str, Any]
    tables: Mapping[str, pd.DataFrame]
    arrays: Mapping[str, np.ndarray]
    thumbnails: Mapping[str, bytes] = field(default_factory=dict)
    probe: bytes | None = None

    @property
    def importance(self) -> HeadImportance:
        return HeadImportance(
            overall=self.tables["importance_overall"],
            per_image=self.tables["importance_per_image"],
            unpruned=self.tables["importance_unpruned"],
        )

    @property
    def strength(self) -> StrengthStats:
        grid = tuple(self.manifest["model"]["grid"])
        return StrengthStats(**{name: self.arrays[name] for name in STRENGTH_ARRAYS}, grid=grid)  # type: ignore[arg-type]

    @property
    def prefix_names(self) -> tuple[str, ...]:
        """What each prefix token is (``ViTHandle.prefix_names``).

        Bundles before format 3 did not record it: their first prefix token is taken for
        the class token and the others are named by position.
        """
        model = self.manifest["model"]
        if self.manifest["format_version"] >= 3:
            return tuple(model["prefix_names"])
        count = int(model["num_prefix_tokens"])
        return ("CLS", *(f"prefix token {i + 1}" for i in range(1, count))) if count else ()

    @property
    def settings(self) -> CaseSettings:
        stored = self.manifest["settings"]
        return CaseSettings(**{name: stored[name] for name in CaseSettings.__dataclass_fields__})

    @property
    def model_label(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def num_heads(self) -> int:
        return int(self.manifest["model"]["num_heads"])

    @property
    def num_layers(self) -> int:
        return int(self.manifest["model"]["num_layers"])

    @property
    def is_backbone(self) -> bool:
        """The model has no classifier: heads are judged by how they change its output features."""
        return not self.manifest["model"]["class_names"]

    @property
    def metrics(self) -> tuple[str, ...]:
        """The importance metrics the study holds, in ``METRICS`` order."""
        present = set(self.tables["importance_overall"]["metric"])
        return tuple(metric for metric in METRICS if metric in present)


# --- computing ---------------------------------------------------------------------------


def analyze(
    handle: ViTHandle,
    image_set: ImageSet,
    settings: CaseSettings = CaseSettings(),
    *,
    layout_method: Method = "umap",
    progress: StageProgress | None = None,
) -> CaseStudy | None:
    """Compute every part of the case study from scratch (the command line's path).

    Stages, each reported as ``progress(stage, done, total)``: reading the set (the one
    unpruned pass: importance, strength, predictions and the map sample), pruning curve,
    training the autoencoder, laying out the patterns, partial pruning.

    ``image_set`` may read its images lazily (``core.inputs.images.image_set_from_folder`` with
    ``lazy=True``): each pass decodes one batch at a time, so only per-image summaries and
    the thumbnails the findings cite are kept.

    Under ``torchrun`` (``core.pipeline.distributed``) each process runs the pass and the curve on
    its share of the images (and decodes only those); rank 0 gathers them, finishes the
    rest and returns the study, the other ranks return ``None``. One process returns the study.
    A user error on any process is raised on every process.

    Raises:
        HeadScopeError: with one sentence: ``NotEnoughImages`` (an empty set, fewer images
            than processes), ``UnsupportedMapKind`` (a pattern kind the model lacks),
            ``InvalidSetting`` (a setting out of range).
    """
    from core.pipeline import distributed

    shards = distributed.current()
    check_map_kind(handle, settings.kind)  # before minutes of work, not after
    if len(image_set) < max(1, shards.size):
        raise NotEnoughImages(
            f"The case study needs at least {max(1, shards.size)} image(s), one per process; the set has {len(image_set)}."
        )
    labels = set_labels(image_set)
    part = shards.part(len(image_set))
    # read lazily: a folder's images are decoded batch by batch, each process only its own
    mine, my_labels = image_set.pil_images(part), labels[part] if labels is not None else None
    report = _stage_reporter(progress)
    # drawn over the whole set before the pass, the same on every process
    picks = draw_samples(handle, len(image_set), settings)

    def pass_result():
        first = first_pass(handle, mine, my_labels, picks, first_image=part.start, progress=report(PASS_STAGE))
        # the study needs no final features: they are not sent between processes
        return replace(first, features=first.features[:, :0])

    parts = gather_or_raise(shards, pass_result)
    tables = distributed.combine_importance([p.importance for p in parts])

    def curve_part():
        curve = pruning_curve(
            handle, mine, tables.overall, my_labels, steps=settings.curve_steps, seed=settings.seed,
            progress=report("pruning curve"),
        )
        return curve, len(mine)

    curve = distributed.combine_curves(gather_or_raise(shards, curve_part))
    if shards.rank != 0:
        return None
    analysis = SetAnalysis(
        settings=settings,
        importance=tables,
        curve=curve,
        strength=distributed.combine_strength([p.strength for p in parts]),
        samples=samples_from(handle, {kind: [p.maps[kind] for p in parts] for kind in picks}),
        predictions=Predictions(
            logits=np.concatenate([p.logits for p in parts]), features=np.concatenate([p.features for p in parts])
        ),
    )
    del parts
    return study_from(handle, image_set, analysis, layout_method=layout_method, progress=progress)


def gather_or_raise(shards: Shards, compute: Callable[[], Any]) -> list[Any]:
    """Every process's ``compute()``, in rank order; a user error on any process is raised on all of them.

    Without this, a process whose share fails (a file that changed since the folder was
    read, outputs that are not finite on its images) would leave the others waiting in
    the gather.
    """
    from core.pipeline import distributed

    try:
        value: Any = compute()
    except HeadScopeError as err:
        value = err
    parts = distributed.gather(value, shards)
    for item in parts:
        if isinstance(item, HeadScopeError):
            raise item
    return parts


def study_from(
    handle: ViTHandle,
    image_set: ImageSet,
    analysis: SetAnalysis,
    *,
    layout_method: Method = "umap",
    progress: StageProgress | None = None,
) -> CaseStudy:
    """The case study from a set's analysis: trains the pattern autoencoder, lays out, clusters, prunes partially."""
    settings = analysis.settings
    report = _stage_reporter(progress)
    check_map_kind(handle, settings.kind)
    sample = analysis.samples[settings.kind]
    space = train_autoencoder(sample, seed=settings.seed, device=handle.device, progress=report("training the autoencoder"))
    laying_out = report("laying out the patterns")  # UMAP's first call compiles for ~40 s: show that it runs
    if laying_out is not None:
        laying_out(0, 1)
    layout = project_patterns(space, method=layout_method, seed=settings.seed)
    clusters = cluster_patterns(space, n_clusters=settings.n_clusters, seed=settings.seed)
    if laying_out is not None:
        laying_out(1, 1)
    return assemble(
        handle, image_set, settings,
        importance=analysis.importance, curve=analysis.curve, strength=analysis.strength,
        space=space, layout=layout, clusters=clusters, outputs=analysis.predictions.logits, progress=progress,
    )


def assemble(
    handle: ViTHandle,
    image_set: ImageSet,
    settings: CaseSettings,
    *,
    importance: HeadImportance,
    curve: pd.DataFrame,
    strength: StrengthStats,
    space: PatternSpace,
    layout: PatternLayout,
    clusters: PatternClusters,
    outputs: np.ndarray | None = None,
    progress: StageProgress | None = None,
) -> CaseStudy:
    """Build the case study from results computed elsewhere (the dashboard's cached views).

    Only the partial pruning of the top heads runs here: for each metric's ``top_k`` heads,
    on the ``hurt_images`` images where pruning the whole head lowers the target's
    probability most. ``outputs``: ``[N, outputs]`` the unmodified model's output of every
    image (a set analysis holds it), so mode ``none`` is not run again.
    """
    heads = studied_heads(importance.overall, settings.top_k)
    partial = _partial_table(
        handle, image_set, importance, heads, settings.hurt_images, _stage_reporter(progress)("partial pruning"), outputs
    )
    cited = list(dict.fromkeys(partial["image_id"]))
    pattern_heads = clusters.heads.merge(
        layout.heads[["layer", "head", "x", "y", "maps"]], on=["layer", "head"], how="left"
    )
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION if handle.probe is not None else PLAIN_BUNDLE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model_summary(handle),
        "image_set": {
            "key": image_set.key,
            "title": image_set.title,
            "images": [{"id": item.id, "name": item.name, "label": item.label} for item in image_set.images],
            # a backbone has no classes: labels then index the set's own names (its folders)
            "label_names": list(image_set.label_names),
        },
        "settings": {**asdict(settings), "layout": layout.method},
        "patterns": {"reconstruction_mse": space.reconstruction_mse, "baseline_mse": space.baseline_mse},
        "versions": library_versions(),
    }
    tables = {
        "images": _images_table(handle, image_set, importance),
        "importance_overall": importance.overall,
        "importance_per_image": importance.per_image,
        "importance_unpruned": importance.unpruned,
        "pruning_curve": curve,
        "partial": partial,
        "pattern_heads": pattern_heads,
        "pattern_clusters": clusters.clusters,
        "pattern_prototypes": clusters.prototypes,
        "pattern_samples": layout.samples.assign(cluster=clusters.labels),
    }
    arrays: dict[str, np.ndarray] = {name: getattr(strength, name) for name in STRENGTH_ARRAYS}
    arrays["relevance_images"], arrays["relevance"], arrays["relevance_heads"] = _relevance_arrays(
        handle, image_set, importance, cited, _stage_reporter(progress)("relevance maps")
    )
    thumbnails = {image_id: thumbnail_png(image_set.by_id(image_id).image) for image_id in cited}
    return CaseStudy(
        manifest=manifest,
        tables={name: tables[name][list(columns)].reset_index(drop=True) for name, columns in TABLE_COLUMNS.items()},
        arrays=arrays,
        thumbnails=thumbnails,
        probe=handle.probe.to_bytes() if handle.probe is not None else None,
    )


def _relevance_arrays(
    handle: ViTHandle,
    image_set: ImageSet,
    importance: HeadImportance,
    image_ids: Sequence[str],
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``relevance_images`` ``[C]``, ``relevance`` ``[C, methods, P]`` and ``relevance_heads`` ``[C, L, H]`` of ``image_ids``.

    Every method of ``core.measures.attribution.relevance_maps`` (attention rollout with the mean
    of the heads, nothing discarded), explaining the target class the importance used
    (the label, else the unpruned top-1); NaN where a method does not apply (a backbone's
    gradient rollout and head shares). A few images at a time, so a long list never holds
    more than a batch's attention; only these images are kept, however large the set.
    """
    positions = np.array([image_set.index_of(image_id) for image_id in image_ids], dtype=np.int32)
    patches = handle.grid[0] * handle.grid[1]
    maps = np.full((len(positions), len(ATTRIBUTION_METHODS), patches), np.nan, dtype=np.float32)
    heads = np.full((len(positions), handle.num_layers, handle.num_heads), np.nan, dtype=np.float32)
    targets = importance.unpruned.set_index("image")["target"]
    step = images_per_batch(handle)
    for start in range(0, len(positions), step):
        part = positions[start:start + step]
        x = handle.preprocess([image_set.images[int(i)].image for i in part])
        target = None if handle.is_backbone else torch.tensor([int(targets[int(i)]) for i in part])
        found = relevance_maps(handle, x, target=target)
        for m, method in enumerate(ATTRIBUTION_METHODS):
            if method in found.maps:
                maps[start:start + len(part), m] = found.maps[method].numpy()
        if found.heads is not None:
            heads[start:start + len(part)] = found.heads.numpy()
        if progress is not None:
            progress(start + len(part), len(positions))
    return positions, maps, heads


def relevance_of(study: CaseStudy, image_id: str) -> dict[str, np.ndarray]:
    """The relevance maps a study holds for one image: method to ``[rows, cols]``, only the methods it has.

    Empty for an image the findings do not cite, and for bundles before format version 4.
    """
    found = _relevance_row(study, image_id)
    if found is None:
        return {}
    rows, cols = study.manifest["model"]["grid"]
    stored = study.arrays["relevance"][found]
    return {
        method: stored[m].reshape(rows, cols)
        for m, method in enumerate(ATTRIBUTION_METHODS)
        if not np.isnan(stored[m]).any()
    }


def _relevance_row(study: CaseStudy, image_id: str) -> int | None:
    """The row of the relevance arrays that holds ``image_id``, ``None`` when none does."""
    ids = [item["id"] for item in study.manifest["image_set"]["images"]]
    if image_id not in ids:
        return None
    rows = np.flatnonzero(study.arrays["relevance_images"] == ids.index(image_id))
    return int(rows[0]) if len(rows) else None


def set_labels(image_set: ImageSet) -> torch.Tensor | None:
    """``[N]`` labels of the set (-1 where unknown), or ``None`` when no image has one."""
    labels = image_set.labels
    if all(label is None for label in labels):
        return None
    return torch.tensor([-1 if label is None else label for label in labels])


def studied_heads(overall: pd.DataFrame, top_k: int) -> list[tuple[int, int]]:
    """The union over metrics of each metric's ``top_k`` heads, in model order."""
    chosen: set[tuple[int, int]] = set()
    for metric in overall["metric"].unique():
        ranked = rank_heads(overall, metric).head(top_k)
        chosen.update(zip(ranked["layer"].astype(int), ranked["head"].astype(int)))
    return sorted(chosen)


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


_PARTIAL_DTYPES = {
    "layer": "int64", "head": "int64", "image": "int64", "image_id": "str", "drop": "float64",
    "mode": "str", "probability": "float64", "predicted": "str", "removed_attention": "float64",
    "output_impact": "float64",
}


def _partial_table(
    handle: ViTHandle,
    image_set: ImageSet,
    importance: HeadImportance,
    heads: list[tuple[int, int]],
    count: int,
    progress: Callable[[int, int], None] | None,
    outputs: np.ndarray | None = None,
) -> pd.DataFrame:
    targets = importance.unpruned["target"].to_numpy()
    least = negligible(handle.is_backbone)
    frames = []
    for done, (layer, head) in enumerate(heads, start=1):
        hurt = hurt_images(importance, layer, head, count, backbone=handle.is_backbone)
        # "where pruning hurts": an image whose target probability pruning leaves alone is no evidence
        for image, drop in hurt[hurt["drop"] >= least].itertuples(index=False):
            item = image_set.images[int(image)]
            x = handle.preprocess([item.image])
            target = None if handle.is_backbone else int(targets[int(image)])
            unpruned = None if outputs is None else torch.from_numpy(outputs[int(image)])
            modes = partial_pruning(handle, x, layer, head, target, unpruned=unpruned)
            if handle.is_backbone:
                modes = modes.assign(probability=np.nan, predicted="")
            frames.append(
                modes[["mode", "probability", "predicted", "removed_attention", "output_impact"]].assign(
                    layer=layer, head=head, image=int(image), image_id=item.id, drop=float(drop)
                )
            )
        if progress is not None:
            progress(done, len(heads))
    if not frames:
        # typed like a filled table, so a study in which no head hurts any image saves and reopens
        return pd.DataFrame({name: pd.Series([], dtype=kind) for name, kind in _PARTIAL_DTYPES.items()})
    return pd.concat(frames, ignore_index=True)[list(_PARTIAL_DTYPES)]


def _images_table(handle: ViTHandle, image_set: ImageSet, importance: HeadImportance) -> pd.DataFrame:
    unpruned = importance.unpruned
    # a backbone has no classes: its labels are the set's own names, and it has no target
    return pd.DataFrame(
        {
            "position": np.arange(len(image_set)),
            "id": [item.id for item in image_set.images],
            "name": [item.name for item in image_set.images],
            "label": [image_set.label_text(item.label, handle.class_names) for item in image_set.images],
            "target": ["" if handle.is_backbone else handle.class_names[int(t)] for t in unpruned["target"]],
            "probability": unpruned["probability"].to_numpy(dtype=float),
        }
    )


def model_summary(handle: ViTHandle) -> dict[str, Any]:
    """The model facts a bundle records and checks when it is opened again (no class names: a backbone).

    A backbone with a linear probe (``handle.probe``) also records ``probe``: the probe's
    ``digest`` (``LinearProbe.digest``), its input ``features``, and the ``backbone_key``
    and ``backbone_name`` of the backbone it sits on, so that a reader knows which backbone
    to load without parsing the probe file (the model's key is
    ``f"{backbone_key}-probe-{digest[:16]}"``).
    """
    summary: dict[str, Any] = {
        "name": handle.name,
        "key": handle.key,
        "num_layers": handle.num_layers,
        "num_heads": handle.num_heads,
        "grid": list(handle.grid),
        "num_prefix_tokens": handle.num_prefix_tokens,
        "prefix_names": list(handle.prefix_names),
        "patch_size": list(handle.patch_size),
        "class_names": list(handle.class_names),
    }
    if handle.probe is not None:
        backbone = handle.backbone
        summary["probe"] = {
            "digest": handle.probe.digest,
            "features": handle.probe.num_features,
            "backbone_key": backbone.key if backbone is not None else handle.probe.backbone_key,
            "backbone_name": backbone.name if backbone is not None else handle.probe.backbone_name,
        }
    return summary


def library_versions() -> dict[str, str]:
    """Python, the platform and each of ``VERSIONED_PACKAGES`` (``"not installed"`` when absent)."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def thumbnail_png(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """A PNG of the image, its longer side scaled to ``side`` (nearest neighbour when enlarging)."""
    width, height = image.size
    scale = side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    buffer = io.BytesIO()
    image.convert("RGB").resize(size, resample).save(buffer, format="PNG")
    return buffer.getvalue()


def _stage_reporter(progress: StageProgress | None) -> Callable[[str], Callable[[int, int], None] | None]:
    def for_stage(stage: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(stage, done, total)

    return for_stage


# --- findings ----------------------------------------------------------------------------


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
    top_k = study.settings.top_k if top_k is None else top_k
    ranked = rank_heads(overall, metric).head(top_k)
    strength = study.strength
    per_head = strength.heads()
    mean_profile = strength.hop_strength.mean(axis=0)  # [L, H, n]
    partial = study.tables["partial"]
    pattern_heads = study.tables["pattern_heads"].set_index(["layer", "head"])
    clusters = study.tables["pattern_clusters"].set_index("cluster")
    n_heads = study.num_layers * study.num_heads
    unpruned = study.tables["importance_unpruned"]
    distance_rank = per_head["distance"].rank(method="min").astype(int)
    names = study.prefix_names
    measured = strength.has_concentration
    heads = []
    for rank, row in enumerate(ranked.itertuples(index=False), start=1):
        layer, head = int(row.layer), int(row.head)
        label = f"L{layer}H{head}"
        index = layer * study.num_heads + head
        profile = mean_profile[layer, head]
        near = float(profile[:2].sum() / profile.sum()) if profile.sum() > 0 else float("nan")
        entropy = float(per_head["entropy"].iloc[index])
        distance = float(per_head["distance"].iloc[index])
        rows = partial[(partial["layer"] == layer) & (partial["head"] == head)]
        modes = rows.groupby("mode")["probability"].mean().reindex(list(MODES)).to_dict()
        impacts = rows.groupby("mode")["output_impact"].mean().reindex(list(MODES)).to_dict()
        removed = rows.groupby("mode")["removed_attention"].mean().reindex(list(MODES)).to_dict()
        hurt = tuple(dict.fromkeys(rows["image_id"]))
        largest = float(hurt_images(study.importance, layer, head, 1, backbone=study.is_backbone)["drop"].max())
        damage = impacts if study.is_backbone else {mode: modes["none"] - value for mode, value in modes.items()}
        killer = _killer_mode(damage, removed) if len(rows) else None
        member = pattern_heads.loc[(layer, head)] if (layer, head) in pattern_heads.index else None
        cluster = int(member["cluster"]) if member is not None else -1
        cluster_share = float(member["share"]) if member is not None else float("nan")
        sink = sink_summary(strength, layer, head, names) if measured else None
        explanation, relevance_share = _explanation(study, label, layer, head, hurt[0] if hurt else None)
        heads.append(
            HeadFinding(
                rank=rank, layer=layer, head=head, label=label, value=float(row.value),
                importance=_importance_sentence(label, rank, n_heads, metric, float(row.value), overall, unpruned),
                mechanism=_mechanism_sentence(modes, impacts, removed, killer, len(hurt), largest, study.is_backbone),
                locality=_locality_sentence(
                    int(distance_rank.iloc[index]), n_heads, distance, entropy, len(profile), near,
                    float(per_head["prefix_share"].iloc[index]), sink,
                ),
                pattern=_pattern_sentence(label, cluster, cluster_share, clusters, study.manifest["settings"]["kind"]),
                hurt_images=hurt, mode_probability=modes, killer_mode=killer, mode_impact=impacts,
                entropy=entropy, near_share=near, distance=distance, cluster=cluster, cluster_share=cluster_share,
                concentration=_sink_sentence(label, sink) if sink else "",
                top_share=float(per_head["top_share"].iloc[index]), key_entropy=float(per_head["key_entropy"].iloc[index]),
                explanation=explanation, relevance_share=relevance_share,
            )
        )
    layers = per_head.groupby("layer", as_index=False)[["entropy", "distance", "prefix_share", "top_share"]].mean()
    layers["top_heads"] = [int((ranked["layer"] == layer).sum()) for layer in layers["layer"]]
    return CaseFindings(
        metric=metric, heads=tuple(heads), layer_trend=_trend_sentence(layers, len(mean_profile[0, 0])), layers=layers,
        concentration=concentration_sentences(strength, names) if measured else "",
    )


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
    shares = study.arrays["relevance_heads"][_relevance_row(study, image_id)]
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
            f"{len(sinks)} of {layers * heads} heads are sink heads, sending {SINK_SHARE:.0%} or more of the "
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
