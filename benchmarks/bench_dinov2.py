"""The built-in DINOv2-S/14 backbone on scikit-image's photos: the sweep against the naive loop, and the whole analysis.

Prints, with the machine facts:

1. the whole-head sweep (``layer_impact`` and ``output_impact`` of every head on every
   image) against the naive loop of one full forward per pruned head, interleaved runs:
   the ratio of their median times and their largest difference;
2. the whole analysis of the photos (``core.study.casestudy.analyze``, what ``python -m core
   analyze --model dinov2-s`` runs, UMAP warmed first), seconds per stage and per image;
3. what the views show on it: the top heads by each metric, hop-profile entropy and mean
   attention distance by layer.

The weights are prepared into the cache on first use (``core.models.dinov2``).

    .venv/bin/python benchmarks/bench_dinov2.py [--repeats 2] [--images 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import cpu_model, load_average, timed  # noqa: E402
from bench_importance import bench  # noqa: E402

from core.inputs.images import sample_photos_set  # noqa: E402
from core.measures.importance import rank_heads  # noqa: E402
from core.measures.projection import start_umap_warmup, wait_for_umap  # noqa: E402
from core.models.load import load_model  # noqa: E402
from core.study.casestudy import CaseSettings, analyze, findings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=4, help="photos for the sweep against the naive loop")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"device cpu, load average {load_average()}"
    )
    handle, seconds = timed(lambda: load_model("dinov2-s", device="cpu"))
    print(f"load_model('dinov2-s'): {seconds:.1f} s (weights cached)")
    photos = sample_photos_set()
    x = handle.preprocess(photos.pil_images()[:args.images])
    print("\n1. whole-head sweep vs. naive loop")
    bench(handle, len(x), args.repeats, x=x)

    print(f"\n2. whole analysis of {len(photos)} photos (default settings, UMAP warm)")
    start_umap_warmup()
    wait_for_umap()
    stages: dict[str, float] = {}
    last = [time.perf_counter(), None]

    def progress(stage: str, _done: int, _total: int) -> None:
        now = time.perf_counter()
        if last[1] is not None:
            stages[last[1]] = stages.get(last[1], 0.0) + now - last[0]
        last[0], last[1] = now, stage

    study, total = timed(lambda: analyze(handle, photos, CaseSettings(), progress=progress))
    stages[last[1]] = stages.get(last[1], 0.0) + time.perf_counter() - last[0]
    for stage, spent in stages.items():
        print(f"  {stage:<28} {spent:7.1f} s")
    print(f"  {'in all':<28} {total:7.1f} s  = {total / len(photos):.1f} s per image")

    print("\n3. what the views show")
    overall = study.tables["importance_overall"]
    for metric in study.metrics:
        top = rank_heads(overall, metric).head(5)
        heads = ", ".join(f"L{r.layer}H{r.head} {r.value:.4f}" for r in top.itertuples())
        print(f"  top heads by {metric}: {heads}")
    strength = study.strength.heads()
    layers = strength.groupby("layer").agg(
        min_entropy=("entropy", "min"), mean_entropy=("entropy", "mean"), mean_distance=("distance", "mean"),
    )
    hops = study.arrays["hop_strength"].shape[-1]
    print(f"  hop-profile entropy (uniform {np.log(hops):.2f} nats) and mean attention distance by layer:")
    for layer, row in layers.iterrows():
        print(
            f"    layer {layer:>2}: entropy min {row.min_entropy:.2f} mean {row.mean_entropy:.2f} nats, "
            f"distance {row.mean_distance:.0f} px"
        )
    curve = study.tables["pruning_curve"]
    half = curve[np.isclose(curve["fraction"], 0.5, atol=0.06)]
    print("  output similarity with about half of the heads pruned: " + ", ".join(
        f"{r.order} {r.similarity:.3f}" for r in half.itertuples()
    ))
    found = findings(study, "output_impact")
    for finding in found.heads[:3]:
        print(f"  {finding.mechanism}")
    print(f"  {found.layer_trend}")
    print(f"  pattern reconstruction MSE {study.manifest['patterns']['reconstruction_mse']:.4g} "
          f"(baseline {study.manifest['patterns']['baseline_mse']:.4g})")
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
