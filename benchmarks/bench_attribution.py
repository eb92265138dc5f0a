"""Seconds per image of each explanation method, on the demo model and on DINOv2-S, in one run.

For each model, interleaved repeats time, per image:

- a plain forward (the unit every ratio is against);
- attention rollout (reading the attention with ``extract_attention``, then the rollout);
- gradient rollout (one forward and one backward; classifiers only: DINOv2-S is a backbone);
- the faithfulness curves of one map (4 x (steps + 1) masked forwards: deletion and
  insertion, for the map and for a random order).

Medians are printed as seconds per image and as a ratio to the plain forward measured
in the same run. Then the faithfulness summary of every method over the images
(``core.measures.attribution.faithfulness_summary``): the area of the map's curve against the
random order's, and the share of images on which the map beats it.

    .venv/bin/python benchmarks/bench_attribution.py [--repeats 3] [--digits 32] [--photos 3] [--fill mean]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _machine import cpu_model, load_average, timed  # noqa: E402

from core.inputs.digits import digit_images, digits_split  # noqa: E402
from core.inputs.images import sample_photos_set  # noqa: E402
from core.measures.attention import extract_attention  # noqa: E402
from core.measures.attribution import (  # noqa: E402
    answer_readout,
    attention_rollout,
    compare_faithfulness,
    faithfulness_areas,
    faithfulness_curves,
    faithfulness_summary,
    gradient_rollout,
    relevance_maps,
)
from core.models.handle import ViTHandle  # noqa: E402
from core.models.hooks import locked_forward  # noqa: E402
from core.models.load import load_model  # noqa: E402


def per_image(fn: Callable[[], object], images: int) -> float:
    return timed(fn)[1] / images


def bench_model(handle: ViTHandle, x: torch.Tensor, repeats: int, fill: str) -> None:
    n = len(x)
    readout = answer_readout(handle)
    runs: dict[str, Callable[[], object]] = {
        "plain forward": lambda: locked_forward(handle, x),
        "attention rollout": lambda: attention_rollout(extract_attention(handle, x).attn, handle.num_prefix_tokens, readout=readout),
    }
    if not handle.is_backbone:
        runs["gradient rollout"] = lambda: gradient_rollout(handle, x)
    one = x[:1]
    relevance = attention_rollout(extract_attention(handle, one).attn, handle.num_prefix_tokens, readout=readout)
    runs["faithfulness curves (1 map)"] = lambda: faithfulness_curves(handle, one, relevance, fill=fill)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up: first calls allocate and pick kernels
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(per_image(fn, 1 if name.startswith("faithfulness") else n))
    base = statistics.median(times["plain forward"])
    print(f"  {'method':<30} {'s / image':>10} {'x forward':>10}   ({repeats} interleaved repeats, {n} images)")
    for name, found in times.items():
        median = statistics.median(found)
        print(f"  {name:<30} {median:>10.4f} {median / base:>10.1f}")
    maps = relevance_maps(handle, x).maps
    curves, seconds = timed(lambda: compare_faithfulness(handle, x, maps, fill=fill))
    summary = faithfulness_summary(faithfulness_areas(curves))
    print(f"  faithfulness of every method on {n} images ({fill} fill, {seconds:.1f} s):")
    with pd.option_context("display.width", 120, "display.float_format", "{:.3f}".format):
        print("    " + summary.to_string(index=False).replace("\n", "\n    "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--digits", type=int, default=32, help="held-out digits for the demo model")
    parser.add_argument("--photos", type=int, default=3, help="sample photos for DINOv2-S")
    parser.add_argument("--fill", default="mean", choices=["mean", "blur"])
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {cpu_model()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"device cpu, load average {load_average()}"
    )
    demo = load_model("demo", device="cpu")
    split = digits_split(0, 0.2)
    images, _ = digit_images(split.test[:args.digits])
    print(f"\ndemo ({demo.grid[0]}x{demo.grid[1]} patches, {demo.num_layers} layers x {demo.num_heads} heads)")
    bench_model(demo, demo.preprocess(images), args.repeats, args.fill)
    dino = load_model("dinov2-s", device="cpu")
    photos = sample_photos_set().pil_images()[:args.photos]
    print(f"\ndinov2-s ({dino.grid[0]}x{dino.grid[1]} patches, {dino.num_layers} layers x {dino.num_heads} heads; a backbone)")
    bench_model(dino, dino.preprocess(photos), args.repeats, args.fill)


if __name__ == "__main__":
    main()
