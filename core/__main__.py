"""Command line: ``python -m core analyze`` computes a case study, ``python -m core compare`` compares two,
``python -m core library`` keeps studies in the server's study library.

``python -m core analyze --model demo --images DIR --out FILE`` computes the case study's
result bundle headless, with a progress bar per stage, for batch jobs and for sharing: the
dashboard's case-study page opens the bundle without recomputing. ``--report FILE.html``
also writes the self-contained HTML report. Started with ``torchrun --nproc-per-node N -m
core analyze ...`` the heavy stages are sharded over N processes (GPUs when present; see
``core.pipeline.distributed``).

A backbone (no classes: ``dinov2-s``, a DINO or MAE checkpoint) becomes a classifier with a
linear probe (``core.models.probe``), so that the class-based analyses apply to it:

- ``--probe fit``: the folder must hold one subfolder of images per class (at least 2
  classes, 5 images each). The probe is fitted on the backbone's features of those images
  (its summary says how well it classifies them), and the case study is computed on the
  backbone with that probe as its head. ``--save-probe FILE`` keeps the probe.
- ``--probe FILE``: a probe saved earlier (by ``--save-probe`` or the dashboard) for this
  backbone; subfolders named after its classes give labels, other images have none.

The bundle then holds the probe, and the dashboard reopens it on the same backbone.

``python -m core compare A.zip B.zip [--report FILE.html]`` opens two result bundles of any
models, sizes or image sets (no model is loaded), prints what changed from A to B in
sentences and how much the two head rankings agree, and writes the comparison report when
asked. A bundle that cannot be opened is named by its side, A or B.

``python -m core library add results.zip --title "..."`` publishes a study in the server's study
library, where everyone who uses the dashboard finds it (the Library page): a nightly batch job
runs ``analyze`` and then ``library add`` so that the team opens the morning's study without
recomputing it. ``library list`` shows the studies, ``library remove ID`` deletes one (ID: its
id or at least its first 8 characters). The library is the dashboard's: ``$HEADSCOPE_LIBRARY``
(see ``core.study.library``), or ``--library DIR``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from core.errors import (
    BundleRejected,
    HeadScopeError,
    InvalidSetting,
    LabelsMismatch,
    ProbeRejected,
    StudyNotFound,
    UnsupportedMetric,
    human_size,
)
from core.measures.importance import BACKBONE_REASON, METRICS, metrics_for
from core.pipeline import distributed
from core.settings import DEFAULT_CLUSTERS, DEFAULT_SEED, DEFAULT_TOP_K
from core.study.casestudy import CaseSettings, analyze, gather_or_raise
from core.study.comparison import OVERLAP_KS, Comparison, compare
from core.study.library import (
    ENV_LIBRARY,
    OFF,
    Library,
    library_from_environment,
    study_id,
)
from core.study.narrative import findings

if TYPE_CHECKING:
    from core.inputs.images import ImageSet
    from core.models.handle import ViTHandle
    from core.models.probe import LinearProbe
    from core.study.casestudy import CaseStudy

EXIT_BAD_INPUT = 2
FIT = "fit"  # --probe fit: fit the probe on the folder's classes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="HeadScope without the dashboard.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "analyze",
        help="compute a case study's result bundle for a folder of images",
        description=(
            "Run every analysis of the dashboard (head importance, pruning curve, attention strength, "
            "attention patterns, partial pruning of the top heads) on a folder of images and write one "
            "result bundle that the case-study page opens without recomputing. Images in subfolders named "
            "after classes get those labels (ImageFolder layout). A backbone becomes a classifier with "
            "--probe: a linear probe fitted on the folder's classes, or one saved earlier."
        ),
    )
    run.add_argument(
        "--model", default="demo",
        help="'demo' (default), 'dinov2-s' (DINOv2 ViT-S/14 backbone, prepared once offline), 'dinov2-s-fashion' (that backbone with a Fashion-MNIST linear probe), a timm ViT name, "
        "or a transformers ViT/DeiT/DINOv2: hub repo id, save_pretrained folder or ZIP file",
    )
    run.add_argument("--img-size", type=int, help="input side in pixels, a multiple of the patch size (default: the model's)")
    run.add_argument("--checkpoint", type=Path, help="weights for --model (.safetensors or a weights-only torch file)")
    images = run.add_mutually_exclusive_group(required=True)
    images.add_argument("--images", type=Path, help="folder of images (class subfolders give labels)")
    images.add_argument(
        "--sample-photos", action="store_true",
        help="the 9 unlabelled photos that ship with scikit-image (the dashboard's sample photos), instead of --images",
    )
    run.add_argument("--out", type=Path, required=True, help="the result bundle to write (.zip)")
    run.add_argument("--report", type=Path, help="also write the self-contained HTML report here")
    run.add_argument(
        "--probe", metavar="fit|FILE",
        help="give a backbone classes with a linear probe: 'fit' fits one on the folder's class subfolders "
        "(at least 2 classes of 5 images each); FILE is a probe saved for this backbone (.safetensors), whose "
        "class names the subfolders are matched to. The bundle keeps the probe",
    )
    run.add_argument(
        "--save-probe", type=Path, metavar="FILE",
        help="with --probe fit: also write the fitted probe here (.safetensors), for --probe FILE or the dashboard",
    )
    run.add_argument(
        "--metric", choices=METRICS,
        help="ranking metric of the report and summary (default probability; layer_impact for a backbone without --probe)",
    )
    defaults = CaseSettings()
    run.add_argument("--top-k", type=int, default=defaults.top_k, help="heads studied per metric (default %(default)s)")
    run.add_argument("--hurt-images", type=int, default=defaults.hurt_images, help="images per head for partial pruning")
    run.add_argument("--kind", choices=("patch", "cls"), default=defaults.kind, help="attention maps for the patterns")
    run.add_argument("--max-maps", type=int, default=defaults.max_maps, help="maps sampled for the pattern autoencoder")
    run.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS, help="pattern clusters")
    run.add_argument("--curve-steps", type=int, default=defaults.curve_steps, help="points of the pruning curve")
    run.add_argument("--seed", type=int, default=defaults.seed)
    run.add_argument("--layout", choices=("umap", "pca"), default="umap", help="2-D layout of the pattern codes")
    _compare_parser(commands)
    _library_parser(commands)
    return parser


def _compare_parser(commands: argparse._SubParsersAction) -> None:
    both = commands.add_parser(
        "compare",
        help="compare two result bundles",
        description=(
            "Open two result bundles (any models, input sizes or image sets; no model is loaded) and say what "
            "changed from A to B: per head when both have the same layers x heads, else per-layer trends against "
            "depth, the pruning curves, each side's top heads and one pattern space for both."
        ),
    )
    both.add_argument("a", type=Path, metavar="A.zip", help="side A: a result bundle (python -m core analyze --out)")
    both.add_argument("b", type=Path, metavar="B.zip", help="side B: another result bundle; differences are B minus A")
    both.add_argument("--report", type=Path, help="also write the self-contained HTML comparison report here")
    both.add_argument(
        "--metric", help=f"importance metric the heads are ranked by: one of {', '.join(METRICS)} (default: the first both hold)"
    )
    both.add_argument("--top-k", type=int, default=DEFAULT_TOP_K, help="top heads per side (default %(default)s)")
    both.add_argument("--layout", choices=("umap", "pca"), default="umap", help="2-D layout of the joint pattern space")
    both.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the joint pattern space")


def _library_parser(commands: argparse._SubParsersAction) -> None:
    shelf = commands.add_parser(
        "library",
        help="add, list or remove studies in the server's study library",
        description=(
            "The study library the dashboard's Library page shows: result bundles saved on the server with a title "
            f"and a note, for everyone who uses it. Its folder is ${ENV_LIBRARY} (as for the dashboard) or --library."
        ),
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--library", type=Path, metavar="DIR",
        help=f"the library's folder (default: ${ENV_LIBRARY}, else the user's data folder, as for the dashboard)",
    )
    actions = shelf.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", parents=[common], help="add a result bundle to the library")
    add.add_argument("bundle", type=Path, metavar="BUNDLE.zip", help="a result bundle (python -m core analyze --out)")
    add.add_argument("--title", required=True, help="the title the study is listed under")
    add.add_argument("--note", default="", help="a note for whoever opens it")
    listing = actions.add_parser("list", parents=[common], help="list the studies, newest first")
    listing.add_argument("--filter", default="", metavar="TEXT", help="only studies whose title, note, model or image set holds TEXT")
    listing.add_argument("--model", metavar="NAME", help="only studies of this model")
    remove = actions.add_parser("remove", parents=[common], help="delete a study from the library")
    remove.add_argument("id", metavar="ID", help="the study's id, or at least its first 8 characters")


class _StageBars:
    """One tqdm bar per stage on stderr, closed when the next stage starts."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self._bar = None
        self._stage: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self._stage:
            self.close()
            self._bar = self._tqdm(total=total, desc=stage, unit="step", file=sys.stderr, dynamic_ncols=True)
            self._stage = stage
        self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _settings(args: argparse.Namespace) -> CaseSettings:
    for name in ("top_k", "hurt_images", "max_maps", "clusters", "curve_steps"):
        if getattr(args, name) < 1:
            raise InvalidSetting(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}.")
    return CaseSettings(
        top_k=args.top_k, hurt_images=args.hurt_images, kind=args.kind, max_maps=args.max_maps,
        n_clusters=args.clusters, curve_steps=args.curve_steps, seed=args.seed,
    )


def _check_output(flag: str, path: Path | None) -> None:
    """Refuse an output path that cannot be written, before minutes of work."""
    if path is None:
        return
    if path.is_dir():
        raise InvalidSetting(f"{flag} {path} is a folder; give a file name such as results.zip.")
    if not path.resolve().parent.is_dir():
        raise InvalidSetting(f"{flag} {path}: the folder {path.resolve().parent} does not exist; create it first.")


def _probe_file(path: Path) -> bytes:
    """The bytes of a ``--probe FILE``, its size checked before it is read."""
    from core.models.probe import MAX_FILE_BYTES

    info = path.stat()  # a missing or unreadable file is an OSError: one line, exit 2
    if not path.is_file():
        raise InvalidSetting(f"--probe {path} is not a file; give a probe file (.safetensors) or 'fit'.")
    if info.st_size > MAX_FILE_BYTES:
        raise ProbeRejected(
            f"--probe {path} is {info.st_size / 2**20:.0f} MB; a probe file of 1,000 classes is at most "
            f"{MAX_FILE_BYTES // 2**20} MB, so this is not one."
        )
    with path.open("rb") as file:
        return file.read(MAX_FILE_BYTES + 1)  # past the cap if it grew since: probe_from_bytes refuses it


def _check_probe_classes(image_set: ImageSet, folder: Path) -> None:
    """Refuse, before any feature is computed, a folder a probe cannot be fitted on (``--probe fit``)."""
    from core.models.probe import MIN_CLASSES, check_probe_labels

    names = image_set.label_names  # a backbone's set: the sorted class folders, which the labels index
    if len(names) < MIN_CLASSES:
        raise LabelsMismatch(
            f"--probe fit needs at least {MIN_CLASSES} class subfolders of images in {folder}, one per class; "
            f"it has {len(names)}."
        )
    check_probe_labels(image_set.labels, names)  # a class with too few images


def _fitted_probe(handle: ViTHandle, image_set: ImageSet, shards: distributed.Shards, bars: _StageBars | None) -> LinearProbe:
    """``--probe fit``: a linear probe fitted on the backbone's features of the folder's classes.

    Each rank computes the features of its share; rank 0 fits the probe and every rank reads
    the same probe file back, so that all of them analyse one classifier.
    """
    import numpy as np

    from core.models.probe import fit_probe, probe_features, probe_from_bytes

    names, labels = image_set.label_names, image_set.labels
    part = shards.part(len(image_set))
    progress = None if bars is None else (lambda done, total: bars("probe features", done, total))
    features = np.concatenate(
        gather_or_raise(shards, lambda: probe_features(handle, image_set.pil_images(part), progress=progress))
    )

    def fitted() -> bytes | None:
        return fit_probe(features, labels, names, backbone=handle).to_bytes() if shards.rank == 0 else None

    return probe_from_bytes(gather_or_raise(shards, fitted)[0], handle)


def _labelled_by_classes(image_set: ImageSet, class_names: Sequence[str] | None) -> tuple[ImageSet, list[str]]:
    """A backbone's set (labels index its folder names) relabelled with the class indices of ``class_names``.

    A folder is matched to a class as a classifier's folder is (``match_class_name``);
    images of a folder that matches no class get no label, and a note says which folders.
    ``None``: the classes are the folder names in the set's order (a probe fitted on it).
    """
    from core.inputs.images import ImageSet, match_class_name

    if class_names is None:
        return ImageSet.from_images(image_set.title, image_set.images), []
    index = [match_class_name(name, class_names) for name in image_set.label_names]
    images = [item if item.label is None else replace(item, label=index[item.label]) for item in image_set.images]
    unmatched = sorted(name for name, found in zip(image_set.label_names, index) if found is None)
    notes = [f"Folders that match none of the probe's classes, so their images have no label: {', '.join(unmatched)}."]
    return ImageSet.from_images(image_set.title, images), notes if unmatched else []


def analyze_command(args: argparse.Namespace) -> int:
    from core.inputs.images import (
        image_set_from_folder,
        join_folder_shares,
        sample_photos_set,
    )
    from core.models.handle import imagenet_synsets
    from core.models.load import load_model
    from core.study.bundle import write_bundle

    settings = _settings(args)
    # checked before minutes of work, not after
    for flag, path in (("--out", args.out), ("--report", args.report), ("--save-probe", args.save_probe)):
        _check_output(flag, path)
    fit = args.probe == FIT
    if fit and args.sample_photos:
        raise InvalidSetting("--probe fit needs --images: a folder with one subfolder of images per class.")
    if args.save_probe is not None and not fit:
        raise InvalidSetting("--save-probe writes a probe fitted here; use it with --probe fit.")
    probe_data = _probe_file(Path(args.probe)) if args.probe is not None and not fit else None
    started = time.perf_counter()
    shards = distributed.start_from_environment()
    lead = shards.rank == 0  # under torchrun, rank 0 talks and writes
    checkpoint = args.checkpoint.read_bytes() if args.checkpoint else None
    handle = load_model(args.model, checkpoint=checkpoint, device=distributed.local_device(), img_size=args.img_size)
    probe = _given_probe(args, handle, probe_data)
    metric = _checked_metric(args, handle)
    aliases = [[s] for s in imagenet_synsets()] if len(handle.class_names) == 1000 else None
    # streamed: the set keeps names, ids and labels, and every pass decodes one batch at a
    # time; each process reads (and later decodes) only its own share of the folder
    if args.sample_photos:  # small, built in and unlabelled: every process holds the whole set
        image_set, notes = sample_photos_set(), []
    else:
        share = image_set_from_folder(
            args.images, handle.class_names, aliases=aliases, lazy=True, share=(shards.rank, shards.size)
        )
        image_set, notes = join_folder_shares(distributed.gather(share, shards), args.images)
    for note in notes if lead else ():
        print(f"note: {note}", file=sys.stderr)
    bars = _StageBars() if lead else None
    try:
        if args.probe is not None:
            handle, image_set = _probed(args, handle, image_set, probe, shards, bars)
        if lead:
            print(
                f"{handle.name}: {handle.num_layers} layers x {handle.num_heads} heads on {handle.device}"
                f"{f' (x {shards.size} processes)' if shards.size > 1 else ''}; {image_set.title}",
                file=sys.stderr,
            )
        study = analyze(handle, image_set, settings, layout_method=args.layout, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    if study is None:  # another rank writes
        distributed.stop(together=True)
        return 0
    write_bundle(study, args.out)
    print(f"Wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.0f} s.")
    _report(study, args, metric)
    distributed.stop(together=True)
    return 0


def _given_probe(args: argparse.Namespace, handle: ViTHandle, probe_data: bytes | None) -> LinearProbe | None:
    """The probe file ``--probe`` names, read against ``handle`` (``None`` for none or ``--probe fit``).

    Raises:
        ProbeRejected: ``handle`` has classes already, or the file is not a probe of this backbone.
    """
    if args.probe is None:
        return None
    if not handle.is_backbone:
        raise ProbeRejected(
            f"'{handle.name}' already has {len(handle.class_names):,} classes; --probe puts a linear probe on a "
            "backbone (a model without classes, such as dinov2-s)."
        )
    if probe_data is None:
        return None
    from core.models.probe import probe_from_bytes

    return probe_from_bytes(probe_data, handle)  # before the folder is read: another backbone's probe


def _checked_metric(args: argparse.Namespace, handle: ViTHandle) -> str:
    """``--metric``, or the model's first; checked before minutes of work."""
    # a probed backbone is a classifier: every metric applies to it
    available = METRICS if args.probe is not None else metrics_for(handle)
    metric = args.metric or available[0]
    if metric not in available:
        raise UnsupportedMetric(
            f"--metric {metric} is not available for '{handle.name}': {BACKBONE_REASON}; --probe gives it classes."
        )
    return metric


def _probed(
    args: argparse.Namespace, handle: ViTHandle, image_set: ImageSet, probe: LinearProbe | None,
    shards: distributed.Shards, bars: _StageBars | None,
) -> tuple[ViTHandle, ImageSet]:
    """The backbone with its probe (fitted here for ``--probe fit``), and the set labelled by the probe's classes."""
    from core.models.probe import with_probe

    fit, lead = args.probe == FIT, shards.rank == 0
    if fit:
        _check_probe_classes(image_set, args.images)
        if lead:
            print(f"Fitting a linear probe on {handle.name}'s features of {image_set.title}.", file=sys.stderr)
        probe = _fitted_probe(handle, image_set, shards, bars)
        if bars is not None:
            bars.close()
    if lead:
        print(probe.summary())
    if lead and args.save_probe is not None:
        args.save_probe.write_bytes(probe.to_bytes())
        print(f"Wrote {args.save_probe}.")
    handle = with_probe(handle, probe)
    # labels become the probe's classes: the folder names in the same order (fit), or matched to them
    image_set, relabel_notes = _labelled_by_classes(image_set, None if fit else handle.class_names)
    for note in relabel_notes if lead else ():
        print(f"note: {note}", file=sys.stderr)
    return handle, image_set


def _report(study: CaseStudy, args: argparse.Namespace, metric: str) -> None:
    """The HTML report when asked for, and the findings under ``metric`` on the terminal."""
    if args.report:
        # imported here, not at the top: core never imports viz (altair, vl_convert) when it is imported
        from viz.report import render_report

        args.report.write_text(render_report(study, metric), encoding="utf-8")
        print(f"Wrote {args.report}.")
    found = findings(study, metric)
    print(f"Top heads by {metric}: {', '.join(finding.label for finding in found.heads)}.")
    print(found.layer_trend)
    print(found.concentration)
    for finding in found.heads:  # relevance maps of the image each top head hurts most (in the bundle and report)
        if finding.explanation:
            print(f"{finding.label}: {finding.explanation}")


def compare_command(args: argparse.Namespace) -> int:
    """``python -m core compare``: the sentences and the ranking agreement on the terminal, the report when asked."""
    if args.metric is not None and args.metric not in METRICS:
        raise UnsupportedMetric(f"--metric {args.metric} is not a head-importance metric: choose one of {', '.join(METRICS)}.")
    if args.top_k < 1:
        raise InvalidSetting(f"--top-k must be at least 1, not {args.top_k}.")
    _check_output("--report", args.report)
    study_a, study_b = _opened_bundle("A", args.a), _opened_bundle("B", args.b)
    c = compare(study_a, study_b, metric=args.metric, top_k=args.top_k, patterns=True, layout=args.layout, seed=args.seed)
    for sentence in c.sentences:
        print(_printable(sentence))  # names come from the bundles: no escape sequence reaches the terminal
    _print_agreement(c)
    if args.report:
        # imported here, not at the top: core never imports viz (altair, vl_convert) when it is imported
        from viz.compare_report import render_comparison

        args.report.write_text(render_comparison(c), encoding="utf-8")
        print(f"Wrote {args.report}.")
    return 0


def _printable(text: str) -> str:
    """``text`` without control characters (a bundle's names could hold terminal escape sequences)."""
    return "".join(ch if ch.isprintable() else "\N{REPLACEMENT CHARACTER}" for ch in text)


def _opened_bundle(side: str, path: Path) -> CaseStudy:
    """The study in the bundle at ``path``, of any model.

    Raises:
        BundleRejected: the file cannot be read, is too large or is no bundle, in a sentence naming ``side``.
    """
    from core.study.bundle import load_bundle

    label = f"{side} ({path})"
    data = _bundle_file(label, path)
    try:
        return load_bundle(data)
    except BundleRejected as err:
        raise BundleRejected(f"{label}: {err}") from None


def _bundle_file(label: str, path: Path) -> bytes:
    """The bytes of the bundle file at ``path``, its size checked before it is read.

    Raises:
        BundleRejected: the file cannot be read or is larger than any bundle, in a sentence that begins with ``label``.
    """
    from core.study.bundle import DEFAULT_BUNDLE_LIMITS

    limit = DEFAULT_BUNDLE_LIMITS.max_total_bytes
    try:
        size = path.stat().st_size
        if size > limit:  # a bundle's ZIP is never larger than what it holds: refused before it is read
            raise BundleRejected(
                f"{label} is {human_size(size)}; a result bundle is at most {human_size(limit)}, so this is not one."
            )
        return path.read_bytes()  # a folder is an OSError too
    except OSError as err:
        raise BundleRejected(f"{label} cannot be read: {err.strerror or err}.") from None


def _print_agreement(c: Comparison) -> None:
    """How much the two head rankings agree under the comparison's metric, in one line (none when they cannot be matched)."""
    rows = c.agreement[c.agreement["metric"] == c.metric]
    if rows.empty:
        return
    row = rows.iloc[0]
    parts = [f"Spearman {row['spearman']:.3f}", f"Kendall {row['kendall']:.3f}"]
    parts += [f"top {k} overlap {int(row[f'top_{k}'])}/{k}" for k in OVERLAP_KS if math.isfinite(row[f"top_{k}"])]
    print(f"Rank agreement by {c.metric} over {int(row['heads'])} heads: {', '.join(parts)}.")


def library_command(args: argparse.Namespace) -> int:
    """``python -m core library add|list|remove``: the library of ``--library``, else the dashboard's."""
    if args.library is not None:  # the quota still comes from the environment, as for the dashboard
        library = library_from_environment({**os.environ, ENV_LIBRARY: str(args.library.absolute())})
    else:
        library = library_from_environment()
    if library is None:
        raise InvalidSetting(f"The study library is off ({ENV_LIBRARY}={OFF}); pass --library DIR.")
    return LIBRARY_ACTIONS[args.action](library, args)


def _library_add(library: Library, args: argparse.Namespace) -> int:
    data = _bundle_file(str(args.bundle), args.bundle)
    try:
        known = bool(library.get(study_id(data)))
    except StudyNotFound:
        known = False
    try:
        entry = library.add(data, title=args.title, note=args.note)  # also restores a known study's missing file
    except BundleRejected as err:
        raise BundleRejected(f"{args.bundle}: {err}") from None
    if known:
        print(_printable(f'Already in the library: {entry.id} "{entry.title}".'))
    else:
        print(_printable(
            f'Added {entry.id} "{entry.title}" ({entry.model_name}, {entry.images} images, {human_size(entry.size)}) '
            f"to {library.folder}."
        ))
    return 0


def _library_list(library: Library, args: argparse.Namespace) -> int:
    used, count = library.usage()
    if not count:
        print(_printable(f"The library at {library.folder} holds no studies."))
        return 0
    found = library.entries(args.filter, args.model)
    if not found:
        print("No study in the library matches.")
    for entry in found:
        line = (
            f"{entry.id[:12]}  {entry.saved}  {entry.model_name}  {entry.images} images  {human_size(entry.size)}  "
            f"{entry.title}"
        )
        print(_printable(line if entry.damaged is None else f"{line}  DAMAGED: {entry.damaged}"))
    studies = "1 study" if count == 1 else f"{count} studies"
    print(f"{studies}, {used / 2**20:.1f} of {library.quota_bytes / 2**20:.0f} MB.")
    return 0


def _library_remove(library: Library, args: argparse.Namespace) -> int:
    entry = library.find(args.id)
    library.remove(entry.id)
    print(_printable(f'Removed {entry.id} "{entry.title}".'))
    return 0


LIBRARY_ACTIONS = {"add": _library_add, "list": _library_list, "remove": _library_remove}
COMMANDS = {"analyze": analyze_command, "compare": compare_command, "library": library_command}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (HeadScopeError, OSError) as err:
        message = err.strerror + f": {err.filename}" if isinstance(err, OSError) and err.strerror else str(err)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        distributed.stop()


if __name__ == "__main__":
    sys.exit(main())
