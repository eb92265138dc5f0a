"""Whole-head sweep vs. the naive loop (one full forward per pruned head).

Both compute, for every head, the target probability, top-1 correctness, layer impact
and output impact of every image with that head pruned (a backbone: the two impacts),
on the fused attention path. Prints, per
model, the largest difference between the two (target <= 1e-5), the median time of
each and their ratio (target <= 0.6 for a 12-layer model). Runs are interleaved so
that machine noise hits both sides alike.

    .venv/bin/python benchmarks/bench_importance.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.measures.importance import head_importance_tables  # noqa: E402
from core.models.handle import ViTHandle  # noqa: E402
from core.models.hooks import locked_forward  # noqa: E402
from core.models.load import load_model  # noqa: E402

SWEPT = ("probability", "accuracy", "layer_impact", "output_impact")
BACKBONE_SWEPT = ("layer_impact", "output_impact")


def swept_metrics(handle: ViTHandle) -> tuple[str, ...]:
    return BACKBONE_SWEPT if handle.is_backbone else SWEPT
RATIO_TARGET = 0.6
DIFF_TARGET = 1e-5


def naive_loop(handle: ViTHandle, x: torch.Tensor, target: torch.Tensor) -> dict[str, np.ndarray]:
    """``{metric: [N, L, H]}`` from one full forward of ``x`` per pruned head."""
    model = handle.model
    blocks_out: dict[int, torch.Tensor] = {}

    def keep_outputs(hooks: Any) -> None:
        for layer, block in enumerate(model.blocks):
            hooks.forward(block, lambda _m, _i, out, layer=layer: blocks_out.__setitem__(layer, out))

    clean_logits = locked_forward(handle, x, keep_outputs).double()
    clean = dict(blocks_out)
    shape = (len(x), handle.num_layers, handle.num_heads)
    out = {metric: np.zeros(shape) for metric in swept_metrics(handle)}
    head_dim = model.blocks[0].attn.head_dim
    for layer, block in enumerate(model.blocks):
        for head in range(handle.num_heads):
            def prune(hooks: Any, block=block, head=head, layer=layer) -> None:
                def zero(_m: Any, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor]:
                    pruned = inputs[0].clone()
                    pruned[..., head * head_dim:(head + 1) * head_dim] = 0
                    return (pruned,)

                hooks.forward_pre(block.attn.norm, zero)
                hooks.forward(block, lambda _m, _i, o: blocks_out.__setitem__(layer, o))

            logits = locked_forward(handle, x, prune)
            if not handle.is_backbone:
                probs = logits.softmax(-1)
                out["probability"][:, layer, head] = probs.gather(-1, target[:, None]).squeeze(-1).numpy()
                out["accuracy"][:, layer, head] = (logits.argmax(-1) == target).numpy()
            cos = F.cosine_similarity(blocks_out[layer].flatten(1).double(), clean[layer].flatten(1).double(), dim=-1)
            out["layer_impact"][:, layer, head] = (1 - cos).numpy()
            cos = F.cosine_similarity(logits.double(), clean_logits, dim=-1)
            out["output_impact"][:, layer, head] = (1 - cos).numpy()
    return out


def sweep(handle: ViTHandle, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The same ``{metric: [N, L, H]}`` from ``head_importance_tables``."""
    metrics = swept_metrics(handle)
    table = head_importance_tables(handle, x, metrics=metrics, batch_size=len(x)).per_image
    shape = (len(x), handle.num_layers, handle.num_heads)
    rows = table.sort_values(["metric", "image", "layer", "head"])
    return {m: rows[rows["metric"] == m]["value"].to_numpy().reshape(shape) for m in metrics}


def bench(handle: ViTHandle, images: int, repeats: int, x: torch.Tensor | None = None) -> tuple[float, float]:
    """``x``: the images (default ``images`` of standard normal noise)."""
    assert all(b.attn.fused_attn for b in handle.model.blocks), "both sides must use fused attention"
    c, h, w = handle.data_config["input_size"]
    if x is None:
        x = torch.randn(images, c, h, w, generator=torch.Generator().manual_seed(0))
    images = len(x)
    target = locked_forward(handle, x).argmax(-1)  # no labels: the target is the unpruned top-1
    results = {"naive": naive_loop(handle, x, target), "sweep": sweep(handle, x)}  # also the warm-up
    diff = max(float(np.abs(results["naive"][m] - results["sweep"][m]).max()) for m in swept_metrics(handle))
    times: dict[str, list[float]] = {"naive": [], "sweep": []}
    for _ in range(repeats):
        for label, run in (("naive", lambda: naive_loop(handle, x, target)), ("sweep", lambda: sweep(handle, x))):
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
    naive, swept = statistics.median(times["naive"]), statistics.median(times["sweep"])
    ratio = swept / naive
    print(
        f"{handle.name:<34} {handle.num_layers:>2} layers x {handle.num_heads} heads, T={handle.num_tokens:<4} "
        f"{images:>3} images  naive {naive:7.2f} s  sweep {swept:7.2f} s  ratio {ratio:.3f} "
        f"({'ok' if ratio <= RATIO_TARGET else 'over'} target {RATIO_TARGET})  max diff {diff:.1e} "
        f"({'ok' if diff <= DIFF_TARGET else 'over'} target {DIFF_TARGET:.0e})"
    )
    return ratio, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, device cpu"
    )
    bench(load_model("vit_small_patch16_224", pretrained=False, device="cpu"), images=8, repeats=args.repeats)
    bench(load_model("demo", device="cpu"), images=64, repeats=args.repeats)


if __name__ == "__main__":
    main()
