"""Seconds per image of each stage of a set's analysis, on ViT-S/16 and ViT-B/16 shapes, and what staging costs.

Random weights (the shapes are what costs time): timm's ``vit_small_patch16_224`` and
``vit_base_patch16_224`` built without pretrained weights, 1,000 classes, 224 px. Stages
as the dashboard runs them (``core.pipeline.staged``): the first pass (predictions, strength,
pattern maps and the Taylor preview), the exact sweep (each head pruned alone), the
pruning curve, and the case study's partial pruning of one head on one image (its six
modes). Prints the seconds per image of each, the whole analysis of 15 images that the
stages add up to, and the side-by-side ratio of the staged analysis to the one-call
``analyze_set`` on the same images (target <= 1.15: staging, the estimate's first
batches and the sweep's own pass cost little).

    .venv/bin/python benchmarks/bench_stages.py [--images 4] [--models small base]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model, load_average  # noqa: E402

from core.measures.importance import partial_pruning, pruning_curve  # noqa: E402
from core.models.handle import wrap_model  # noqa: E402
from core.pipeline.analysis import Capture, analyze_set, draw_samples, run_pass  # noqa: E402
from core.pipeline.staged import StagedAnalysis  # noqa: E402
from core.settings import CaseSettings  # noqa: E402

MODELS = {"small": "vit_small_patch16_224", "base": "vit_base_patch16_224"}
RATIO_TARGET = 1.15
SET_SIZE = 15  # the laptop case: 15 photos


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(n)]


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=4, help="images timed per stage (default 4)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    n = args.images
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, device {device}, load {load_average()}")
    print(f"torch {torch.__version__}, timm {timm.__version__}; {n} random 224 px images per stage\n")
    settings = CaseSettings()
    ratios = []
    for size in args.models:
        torch.manual_seed(0)
        model = timm.create_model(MODELS[size], pretrained=False, num_classes=1000)
        handle = wrap_model(model, class_names=[f"c{i}" for i in range(1000)], device=device)
        images = _images(n)
        labels = torch.arange(n) % 1000
        # the captures the staged run asks for: the preview (Taylor rides on it), then the sweep alone
        preview_capture = Capture(metrics=("taylor",), map_samples=draw_samples(handle, n, settings))
        sweep_capture = Capture(
            metrics=("probability", "accuracy", "layer_impact", "output_impact"), attention_stats=False, predictions=False
        )
        run_pass(handle, images[:1], labels[:1], Capture(metrics=("taylor",)))  # warm-up: kernels, allocator
        preview = _seconds(lambda: run_pass(handle, images, labels, preview_capture))
        swept = run_pass(handle, images, labels, sweep_capture).importance.tables()
        sweep = _seconds(lambda: run_pass(handle, images, labels, sweep_capture))
        curve = _seconds(lambda: pruning_curve(handle, images, swept.overall, labels, steps=settings.curve_steps))
        x = handle.preprocess(images[:1]).to(handle.device)
        partial = _seconds(lambda: partial_pruning(handle, x, 0, 0, 0))
        per_image = {"first pass": preview / n, "exact sweep": sweep / n, "pruning curve": curve / n}
        print(f"{MODELS[size]} ({handle.num_layers} layers x {handle.num_heads} heads, {handle.num_tokens} tokens):")
        for stage, seconds in per_image.items():
            print(f"  {stage:<15} {seconds:7.2f} s per image")
        print(f"  {'partial pruning':<15} {partial:7.2f} s per head and image (6 modes; the case study runs top heads x hurt images)")
        total = sum(per_image.values()) * SET_SIZE
        print(f"  -> the analysis of {SET_SIZE} images: about {total:.0f} s ({total / 60:.1f} min) before the case study")
        # side by side: the staged analysis against one call, on the same images, interleaved
        one, staged = [], []
        for _ in range(2):
            one.append(_seconds(lambda: analyze_set(handle, images, labels, settings)))

            def run_staged() -> None:
                job = StagedAnalysis(handle, images, labels, settings, auto_start=float("inf"))
                job.begin()
                job.wait()

            staged.append(_seconds(run_staged))
        ratio = min(staged) / min(one)
        ratios.append(ratio)
        print(f"  staged {min(staged):.1f} s vs one call {min(one):.1f} s on {n} images: ratio {ratio:.2f} (target <= {RATIO_TARGET})\n")
    worst = max(ratios)
    print(f"worst staged/one-call ratio {worst:.2f}: {'OK' if worst <= RATIO_TARGET else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
