"""The whole analysis of the demo set, page switches with cached results, and the case study's exports.

Prints, with the machine facts:

1. the headless case study of the demo model's held-out digits (``core.study.casestudy.analyze``,
   what ``python -m core analyze`` runs: importance, pruning curve, strength, patterns with
   UMAP warm, partial pruning), per stage, against the spec's "about a minute" (ratio);
2. the dashboard (AppTest, default settings, UMAP warm): the home page and the four view
   pages visited in order with every result cache empty, then the same visits again with
   the caches filled, interleaved; the ratio of a cached page switch to the whole cold
   visit, and the slowest cached switch against the spec's 1 s;
3. the exports of that study: the HTML report and the result bundle (time and size), and
   opening the bundle again against recomputing it (ratio).

    .venv/bin/python benchmarks/bench_casestudy.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from _machine import cpu_model, load_average, timed  # noqa: E402  (this folder is on sys.path when run as a script)

from core.inputs.images import demo_digits_set  # noqa: E402
from core.measures.projection import start_umap_warmup, wait_for_umap  # noqa: E402
from core.models.load import load_model  # noqa: E402
from core.study.bundle import load_bundle, save_bundle  # noqa: E402
from core.study.casestudy import CaseSettings, CaseStudy, analyze  # noqa: E402
from viz.report import render_report  # noqa: E402

TARGET_ANALYSIS_S = 60.0
TARGET_SWITCH_S = 1.0
PAGES = [f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("[0-9]*_*.py"))]


def bench_analysis(repeats: int) -> tuple[CaseStudy, float]:
    handle = load_model("demo")
    print(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {handle.device.type}, load average {load_average()}"
    )
    split = handle.card["split"]
    images = demo_digits_set(split["seed"], split["test_fraction"])
    start_umap_warmup()
    assert wait_for_umap(timeout=600), "UMAP is unusable in this process"
    totals, study = [], None
    for run in range(repeats):
        stages: dict[str, float] = {}
        start = time.perf_counter()

        def progress(stage: str, done: int, total: int) -> None:
            if done == total:
                stages[stage] = time.perf_counter() - start - sum(stages.values())

        study, total = timed(lambda: analyze(handle, images, CaseSettings(), layout_method="umap", progress=progress))
        totals.append(total)
        # each stage counts from the end of the one before: "partial pruning" includes the layout and k-means
        listed = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
        print(f"run {run + 1}: {total:.1f} s ({listed})")
    total = statistics.median(totals)
    print(
        f"=> headless case study of {len(images)} images: median {total:.1f} s "
        f"(runs: {', '.join(f'{t:.1f}' for t in totals)}); ratio to the {TARGET_ANALYSIS_S:.0f} s target {total / TARGET_ANALYSIS_S:.2f}"
    )
    assert study is not None
    return study, total


def bench_pages(repeats: int) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["HF_HUB_OFFLINE"] = "1"
    colds, switches = [], []
    for _ in range(repeats):
        st.cache_data.clear()
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=900)
        _, home = timed(at.run)
        cold = home
        for page in PAGES:
            _, seconds = timed(at.switch_page(page).run)
            assert not at.exception and not at.error, (page, at.exception, [e.value for e in at.error])
            cold += seconds
        colds.append(cold)
        for page in ["streamlit_app.py", *PAGES]:
            _, seconds = timed(at.switch_page(page).run)
            switches.append((seconds, Path(page).stem))
    cold = statistics.median(colds)
    typical = statistics.median(s for s, _ in switches)
    slowest, where = max(switches)
    print(
        f"all pages, empty caches: median {cold:.1f} s (runs: {', '.join(f'{t:.1f}' for t in colds)}); "
        f"ratio to the {TARGET_ANALYSIS_S:.0f} s target {cold / TARGET_ANALYSIS_S:.2f}"
    )
    print(
        f"page switch with cached results: median {typical:.2f} s, slowest {slowest:.2f} s ({where}); "
        f"cached switch / cold visit {typical / cold:.3f}; slowest / {TARGET_SWITCH_S:.0f} s target {slowest / TARGET_SWITCH_S:.2f}"
    )


def bench_exports(study: CaseStudy, computed_s: float, repeats: int) -> None:
    html, render = timed(lambda: render_report(study))
    data, save = timed(lambda: save_bundle(study))
    opens = [timed(lambda: load_bundle(data, model_key=study.manifest["model"]["key"]))[1] for _ in range(repeats)]
    opened = statistics.median(opens)
    print(f"HTML report: {len(html.encode()) / 2**20:.1f} MB in {render:.1f} s")
    print(
        f"result bundle: {len(data) / 2**20:.1f} MB saved in {save:.1f} s, opened in median {opened:.2f} s; "
        f"opening / recomputing {opened / computed_s:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    study, computed = bench_analysis(args.repeats)
    bench_exports(study, computed, args.repeats)
    bench_pages(args.repeats)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
