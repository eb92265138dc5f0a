"""Attention patterns (view D): the autoencoder and projection of ~20,000 maps, and the page's first run.

Prints, with the machine facts:

1. sampling ~20,000 patch maps from the demo model's held-out digits, training the
   autoencoder on them, and projecting the codes: UMAP *cold* (the first UMAP call in
   this process, which pays numba's compilation) and *warm* (later calls, each after a
   fresh training, interleaved), then k-means;
2. the attention patterns page on the demo set once UMAP is warm (AppTest, default
   settings): the page's whole first run with every result cache empty against a
   rerun with the caches filled, interleaved, and their ratio. D1 is the page's first
   chart; the rest of the page adds well under a second, so the whole run bounds the
   time to the first chart.

    .venv/bin/python benchmarks/bench_patterns.py [--maps 20000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _machine import cpu_model, load_average, timed  # noqa: E402  (this folder is on sys.path when run as a script)

from core.inputs.images import demo_digits_set  # noqa: E402
from core.measures.patterns import (  # noqa: E402
    cluster_patterns,
    project_patterns,
    sample_maps,
    train_autoencoder,
)
from core.models.load import load_model  # noqa: E402

PAGE = "pages/3_Attention_Patterns.py"


def machine_facts(device: torch.device) -> None:
    print(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device.type}, load average {load_average()}"
    )


def bench_space(max_maps: int, repeats: int) -> None:
    handle = load_model("demo")
    machine_facts(handle.device)
    images = demo_digits_set(0, 0.2)
    x = handle.preprocess(images.pil_images())
    sample, sampling = timed(lambda: sample_maps(handle, x, max_maps=max_maps))
    print(f"sampled {len(sample.inputs):,} patch maps from {len(images)} images in {sampling:.1f} s")

    space, first_train = timed(lambda: train_autoencoder(sample, device=handle.device))
    _, cold = timed(lambda: project_patterns(space, method="umap"))
    trains, warms, kmeans = [first_train], [], []
    for _ in range(repeats):
        space, train_s = timed(lambda: train_autoencoder(sample, device=handle.device))
        _, warm = timed(lambda: project_patterns(space, method="umap"))
        _, km = timed(lambda: cluster_patterns(space))
        trains.append(train_s)
        warms.append(warm)
        kmeans.append(km)
    train_s, warm = statistics.median(trains), statistics.median(warms)
    print(
        f"autoencoder training: median {train_s:.1f} s (runs: {', '.join(f'{t:.1f}' for t in trains)}), "
        f"reconstruction MSE {space.reconstruction_mse:.4f} vs mean-map {space.baseline_mse:.4f}"
    )
    print(f"UMAP projection cold (first call, numba compiles): {cold:.1f} s")
    print(f"UMAP projection warm: median {warm:.1f} s (runs: {', '.join(f'{t:.1f}' for t in warms)}); cold/warm {cold / warm:.1f}x")
    print(f"k-means (6 clusters): median {statistics.median(kmeans):.2f} s")
    print(f"=> {len(sample.inputs):,} maps train + project: cold {first_train + cold:.1f} s, warm {train_s + warm:.1f} s")


def bench_page(repeats: int) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from core.measures.projection import wait_for_umap

    os.environ["HF_HUB_OFFLINE"] = "1"
    assert wait_for_umap(timeout=600), "UMAP is unusable in this process"
    empty, cached = [], []
    for _ in range(repeats):
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=900)
        at.run()
        at.switch_page(PAGE)
        st.cache_data.clear()  # the page's results and the set's predictions: a first visit
        _, first = timed(at.run)
        assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
        _, again = timed(at.run)
        empty.append(first)
        cached.append(again)
    first, again = statistics.median(empty), statistics.median(cached)
    print(
        f"page on the demo set (default settings, UMAP warm): empty caches median {first:.1f} s "
        f"(runs: {', '.join(f'{t:.1f}' for t in empty)}), cached median {again:.2f} s "
        f"(runs: {', '.join(f'{t:.2f}' for t in cached)}); ratio {first / again:.0f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    bench_space(args.maps, args.repeats)
    bench_page(args.repeats)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
