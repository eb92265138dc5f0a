"""Command line: ``python -m core analyze --model demo --images DIR --out FILE``.

Computes the case study's result bundle headless, with a progress bar per stage, for
batch jobs and for sharing: the dashboard's case-study page opens the bundle without
recomputing. ``--report FILE.html`` also writes the self-contained HTML report. Started
with ``torchrun --nproc-per-node N -m core analyze ...`` the heavy stages are sharded
over N processes (GPUs when present; see ``core.distributed``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

from core import distributed
from core.casestudy import CaseSettings, analyze, findings
from core.errors import HeadScopeError, InvalidSetting, UnsupportedMetric
from core.importance import BACKBONE_REASON, METRICS, metrics_for
from core.settings import DEFAULT_CLUSTERS

EXIT_BAD_INPUT = 2


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
            "after classes get those labels (ImageFolder layout)."
        ),
    )
    run.add_argument(
        "--model", default="demo",
        help="'demo' (default), 'dinov2-s' (DINOv2 ViT-S/14 backbone, prepared once offline), a timm ViT name, "
        "or a transformers ViT/DeiT/DINOv2: hub repo id, save_pretrained folder or ZIP file",
    )
    run.add_argument("--img-size", type=int, help="input side in pixels, a multiple of the patch size (default: the model's)")
    run.add_argument("--checkpoint", type=Path, help="weights for --model (.safetensors or a weights-only torch file)")
    run.add_argument("--images", type=Path, required=True, help="folder of images (class subfolders give labels)")
    run.add_argument("--out", type=Path, required=True, help="the result bundle to write (.zip)")
    run.add_argument("--report", type=Path, help="also write the self-contained HTML report here")
    run.add_argument(
        "--metric", choices=METRICS,
        help="ranking metric of the report and summary (default probability; layer_impact for a backbone)",
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
    return parser


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


def analyze_command(args: argparse.Namespace) -> int:
    from core.bundle import write_bundle
    from core.images import image_set_from_folder, join_folder_shares
    from core.model import imagenet_synsets, load_model

    settings = _settings(args)
    # checked before minutes of work, not after
    for flag, path in (("--out", args.out), ("--report", args.report)):
        if path is None:
            continue
        if path.is_dir():
            raise InvalidSetting(f"{flag} {path} is a folder; give a file name such as results.zip.")
        if not path.resolve().parent.is_dir():
            raise InvalidSetting(f"{flag} {path}: the folder {path.resolve().parent} does not exist; create it first.")
    started = time.perf_counter()
    shards = distributed.start_from_environment()
    lead = shards.rank == 0  # under torchrun, rank 0 talks and writes
    checkpoint = args.checkpoint.read_bytes() if args.checkpoint else None
    handle = load_model(args.model, checkpoint=checkpoint, device=distributed.local_device(), img_size=args.img_size)
    metric = args.metric or metrics_for(handle)[0]
    if metric not in metrics_for(handle):  # before minutes of work
        raise UnsupportedMetric(f"--metric {metric} is not available for '{handle.name}': {BACKBONE_REASON}.")
    aliases = [[s] for s in imagenet_synsets()] if len(handle.class_names) == 1000 else None
    # streamed: the set keeps names, ids and labels, and every pass decodes one batch at a
    # time; each process reads (and later decodes) only its own share of the folder
    share = image_set_from_folder(
        args.images, handle.class_names, aliases=aliases, lazy=True, share=(shards.rank, shards.size)
    )
    image_set, notes = join_folder_shares(distributed.gather(share, shards), args.images)
    for note in notes if lead else ():
        print(f"note: {note}", file=sys.stderr)
    if lead:
        print(
            f"{handle.name}: {handle.num_layers} layers x {handle.num_heads} heads on {handle.device}"
            f"{f' (x {shards.size} processes)' if shards.size > 1 else ''}; {image_set.title}",
            file=sys.stderr,
        )
    bars = _StageBars() if lead else None
    try:
        study = analyze(handle, image_set, settings, layout_method=args.layout, progress=bars)
    finally:
        if bars is not None:
            bars.close()
    if study is None:  # another rank writes
        distributed.stop(together=True)
        return 0
    write_bundle(study, args.out)
    found = findings(study, metric)
    print(f"Wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MB) in {time.perf_counter() - started:.0f} s.")
    if args.report:
        # imported here, not at the top: core never imports viz (altair, vl_convert) when it is imported
        from viz.report import render_report

        args.report.write_text(render_report(study, metric), encoding="utf-8")
        print(f"Wrote {args.report}.")
    print(f"Top heads by {metric}: {', '.join(finding.label for finding in found.heads)}.")
    print(found.layer_trend)
    print(found.concentration)
    for finding in found.heads:  # relevance maps of the image each top head hurts most (in the bundle and report)
        if finding.explanation:
            print(f"{finding.label}: {finding.explanation}")
    distributed.stop(together=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return analyze_command(args)
    except (HeadScopeError, OSError) as err:
        message = err.strerror + f": {err.filename}" if isinstance(err, OSError) and err.strerror else str(err)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        distributed.stop()


if __name__ == "__main__":
    sys.exit(main())
