"""Attention capture vs. a plain fused forward pass, same batch and device.

Prints, per model, the median time of each and their ratio; the target is a ratio
of at most 1.2. Runs are interleaved so that machine noise hits both sides alike.

    .venv/bin/python benchmarks/bench_capture.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.measures.attention import extract_attention  # noqa: E402
from core.models.handle import ViTHandle  # noqa: E402
from core.models.load import load_model  # noqa: E402

TARGET = 1.2


def _plain(handle: ViTHandle, x: torch.Tensor) -> None:
    with torch.inference_mode():
        handle.model(x)


def _capture(handle: ViTHandle, x: torch.Tensor) -> None:
    extract_attention(handle, x, batch_size=len(x))


def bench(handle: ViTHandle, batch: int, repeats: int) -> float:
    assert all(b.attn.fused_attn for b in handle.model.blocks), "the baseline must use fused attention"
    c, h, w = handle.data_config["input_size"]
    x = torch.randn(batch, c, h, w, device=handle.device)
    for fn in (_plain, _capture):
        fn(handle, x)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {"plain": [], "capture": []}
    for _ in range(repeats):
        for label, fn in (("plain", _plain), ("capture", _capture)):
            if handle.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(handle, x)
            if handle.device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)
    plain, capture = statistics.median(times["plain"]), statistics.median(times["capture"])
    ratio = capture / plain
    print(
        f"{handle.name:<32} batch {batch:>3}  T={handle.num_tokens:<4} plain {plain * 1e3:8.1f} ms  "
        f"capture {capture * 1e3:8.1f} ms  ratio {ratio:.3f}  ({'ok' if ratio <= TARGET else 'over'} target {TARGET})"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    ratios = [
        bench(load_model("demo"), batch=64, repeats=args.repeats),
        bench(load_model("vit_small_patch16_224", pretrained=False), batch=8, repeats=args.repeats),
    ]
    print(f"worst ratio {max(ratios):.3f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
