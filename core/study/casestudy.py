"""Case study: the results that say why the most important heads matter, gathered and kept.

A ``CaseStudy`` gathers every result the case study needs (head importance, the pruning
curve, attention strength, attention patterns and partial pruning of the top heads on
the images where pruning hurts them most) as plain named tables and arrays plus a JSON
manifest (model, images, settings, library versions). That container is what a result
bundle stores (``core.study.bundle``), what the HTML report renders (``viz.report``) and what
the dashboard reopens without recomputing. Its numbers come from one streamed analysis
of the set (``core.pipeline.analysis``); ``CaseSettings`` (``core.settings``) says with what.
``core.study.narrative`` turns it into short sentences (its names are importable from here too).
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

from core.errors import HeadScopeError, NotEnoughImages
from core.inputs.images import ImageSet
from core.measures.attribution import METHODS as ATTRIBUTION_METHODS
from core.measures.attribution import relevance_maps
from core.measures.importance import (
    METRICS,
    HeadImportance,
    partial_pruning,
    pruning_curve,
    rank_heads,
)
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
from core.measures.strength import StrengthStats
from core.models.handle import ViTHandle
from core.pipeline.analysis import (
    CURVE_STAGE,
    PASS_STAGE,
    Capture,
    SetAnalysis,
    StageProgress,
    draw_samples,
    preview_of,
    run_pass,
    set_analysis,
)
from core.settings import CaseSettings, images_per_batch
from core.study.narrative import (  # the findings' names, importable from here as before they moved
    KILLER_SHARE,
    NEGLIGIBLE_CHANGE,
    NEGLIGIBLE_DROP,
    PARTIAL_MODES,
    SINK_SHARE,
    CaseFindings,
    HeadFinding,
    SinkSummary,
    concentration_sentences,
    findings,
    hurt_images,
    negligible,
    relevance_of,
    sink_summary,
)

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
    capture = Capture(map_samples=draw_samples(handle, len(image_set), settings))

    def pass_result():
        first = run_pass(handle, mine, my_labels, capture, first_image=part.start, progress=report(PASS_STAGE))
        # the study reads only the outputs: final features and probe inputs are not sent between processes
        outputs = replace(first.predictions, features=first.predictions.features[:, :0], probe_input=None)
        return replace(first, predictions=outputs)

    preview = preview_of(handle, gather_or_raise(shards, pass_result))

    def curve_part():
        curve = pruning_curve(
            handle, mine, preview.importance.overall, my_labels, steps=settings.curve_steps, seed=settings.seed,
            progress=report(CURVE_STAGE),
        )
        return curve, len(mine)

    curve = distributed.combine_curves(gather_or_raise(shards, curve_part))
    if shards.rank != 0:
        return None
    return study_from(handle, image_set, set_analysis(settings, preview, curve), layout_method=layout_method, progress=progress)


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
        manifest=_manifest(handle, image_set, settings, space, layout),
        tables={name: tables[name][list(columns)].reset_index(drop=True) for name, columns in TABLE_COLUMNS.items()},
        arrays=arrays,
        thumbnails=thumbnails,
        probe=handle.probe.to_bytes() if handle.probe is not None else None,
    )


def _manifest(
    handle: ViTHandle, image_set: ImageSet, settings: CaseSettings, space: PatternSpace, layout: PatternLayout
) -> dict[str, Any]:
    """The study's JSON manifest: format, creation time, model, images, settings, pattern fit and library versions."""
    return {
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
