"""Peak memory of the streamed attention-strength statistics: 64 vs. 512 images.

Set-level statistics must not hold the ``N x L x H x T x T`` attention of a set, so
their peak memory should barely grow with the number of images (target: the 512-image
peak at most 1.15x the 64-image peak).

Method: each measurement runs in a fresh Python process, so no allocator state or
cache carries over. The child loads the demo model, renders its digit images (the
first N of scikit-learn's 1,797), then computes the statistics of one warm-up batch
(preprocessing, the hooked forward, every metric and the per-grid index caches all
run once). After ``gc.collect()`` and glibc's ``malloc_trim(0)`` (so what the warm-up
freed counts in no run's baseline) it takes the resident set size (``VmRSS``) as the
baseline, resets the kernel's peak counter (writing ``5`` to
``/proc/self/clear_refs``), runs ``core.measures.strength.strength_statistics`` over all N
images and reads the kernel-tracked peak (``VmHWM``): peak growth = VmHWM - baseline.
This catches short spikes that sampling RSS from a thread can miss; it needs Linux.
Runs alternate 64, 512, 64, 512, ... so machine noise hits both sizes alike; the
medians, their ratio, the difference against the size of the extra per-image
summaries, and the images per second are printed.

    .venv/bin/python benchmarks/bench_strength.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _machine import cpu_model  # noqa: E402  (this folder is on sys.path when run as a script)

from core.inputs.digits import digit_images  # noqa: E402
from core.measures.strength import PER_IMAGE, strength_statistics  # noqa: E402
from core.models.load import load_model  # noqa: E402
from core.settings import images_per_batch  # noqa: E402

SIZES = (64, 512)
TARGET = 1.15


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark needs Linux.")


def child(n: int) -> None:
    """Measure one set size in this (fresh) process and print one JSON line."""
    handle = load_model("demo", device="cpu")
    images, _ = digit_images(np.arange(n))
    batch = images_per_batch(handle)
    strength_statistics(handle, images[:batch])
    gc.collect()
    # hand the warm-up's freed buffers back to the OS, so both sizes start from the same
    # heap state instead of whatever the warm-up happened to leave resident
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    baseline = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    start = time.perf_counter()
    stats = strength_statistics(handle, images)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    full_attention = n * handle.num_layers * handle.num_heads * handle.num_tokens**2 * 4
    summaries = sum(getattr(stats, name).nbytes for name in PER_IMAGE)
    print(json.dumps({
        "n": n,
        "batch": batch,
        "growth_mib": (peak - baseline) / 1024,
        "baseline_mib": baseline / 1024,
        "seconds": seconds,
        "summaries_mib": summaries / 2**20,
        "full_attention_mib": full_attention / 2**20,
    }))


def _run_child(n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    print(
        f"{platform.system()} {platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, "
        f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"demo model, {args.repeats} interleaved runs per size, each in a fresh process"
    )
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in SIZES}
    for _ in range(args.repeats):
        for n in SIZES:
            runs[n].append(_run_child(n))
    growth = {}
    for n in SIZES:
        growth[n] = statistics.median(r["growth_mib"] for r in runs[n])
        speed = statistics.median(n / r["seconds"] for r in runs[n])
        last = runs[n][-1]
        print(
            f"{n:>4} images (batch {last['batch']}): peak growth {growth[n]:6.1f} MiB (runs: "
            + ", ".join(f"{r['growth_mib']:.1f}" for r in runs[n])
            + f"; baseline RSS {last['baseline_mib']:.0f} MiB)  {speed:6.0f} images/s  "
            f"summaries {last['summaries_mib']:.2f} MiB, a non-streamed attention tensor would be "
            f"{last['full_attention_mib']:.0f} MiB"
        )
    small, large = SIZES
    extra = runs[large][-1]["summaries_mib"] - runs[small][-1]["summaries_mib"]
    print(
        f"{large} vs {small} images: {growth[large] - growth[small]:+.1f} MiB of peak, "
        f"of which {extra:.1f} MiB are the additional per-image summaries"
    )
    ratio = growth[large] / growth[small]
    verdict = "ok" if ratio <= TARGET else "over"
    print(f"peak growth ratio {large} / {small} images: {ratio:.3f} ({verdict}, target <= {TARGET})")


if __name__ == "__main__":
    main()
