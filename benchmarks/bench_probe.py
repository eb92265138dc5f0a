"""What fitting a linear probe adds to a backbone's first pass, on a labelled set of 300 images in 10 classes.

A backbone becomes a classifier for the user's classes by a linear probe fitted on the
features the analysis's first pass already reads (``PassResult.probe_input``: no extra
forward). The target: fitting (``core.models.probe.fit_probe``, a standardised
multinomial logistic regression whose L2 strength is cross-validated, 7 strengths x
5 folds) adds under 10% to the first pass on 300 images. Both are timed side by side in
one run on the same set: the first pass exactly as the dashboard's first stage runs it
(``core.pipeline.staged``: ``first_pass(..., sweep=False)`` with the set's labels and map sample),
then the fit on its ``probe_input``, three times (the median is the figure; the first
fit is printed too). The fit is timed again with BLAS limited to one thread, for
comparison: the problem is small, and on a shared two-core machine BLAS threads mostly wait.

The set: Fashion-MNIST's sample images (``data/fashion_sample/<class>/*.png``, one folder
per class) when they are there, each class filled to its share by shifted and mirrored
copies; else crops of one scikit-image photo per class (random position, size and
mirroring). The probe's accuracy does not matter for the timing; it is printed.

    .venv/bin/python benchmarks/bench_probe.py [--model dinov2-s|vit-tiny] [--images 300] [--classes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image, ImageOps
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _machine import cpu_model, load_average, timed  # noqa: E402

from core.measures.importance import check_labels  # noqa: E402
from core.models.handle import ViTHandle, wrap_model  # noqa: E402
from core.models.load import load_model  # noqa: E402
from core.models.probe import fit_probe  # noqa: E402
from core.pipeline.analysis import Capture, draw_samples, run_pass  # noqa: E402
from core.settings import CaseSettings  # noqa: E402

RATIO_TARGET = 0.10
FASHION = Path(__file__).resolve().parent.parent / "data" / "fashion_sample"
# scikit-image photos that ship with the package (no download); one class each
PHOTOS = (
    "astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry",
    "hubble_deep_field", "camera", "coins", "horse", "moon", "page", "text", "clock", "logo",
)
SIZE = 224
FIT_REPEATS = 3


def _model(name: str, device: str) -> ViTHandle:
    if name == "vit-tiny":
        torch.manual_seed(0)  # random weights: the shape is what costs time
        return wrap_model(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0), device=device)
    return load_model(name, device=device)


def _fashion_sources(classes: int) -> dict[str, list[Image.Image]] | None:
    folders = sorted(p for p in FASHION.iterdir() if p.is_dir()) if FASHION.is_dir() else []
    sources = {f.name: [Image.open(p).convert("RGB") for p in sorted(f.glob("*.png"))] for f in folders}
    sources = {name: images for name, images in sources.items() if images}
    return dict(list(sources.items())[:classes]) if len(sources) >= classes else None


def _photo_sources(classes: int) -> dict[str, list[Image.Image]]:
    import skimage.data

    sources: dict[str, list[Image.Image]] = {}
    for name in PHOTOS:
        try:
            pixels = getattr(skimage.data, name)()
        except Exception:  # a photo this scikit-image fetches from the network
            continue
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:  # a boolean or float picture: stretched to 0-255
            pixels = pixels.astype(np.float64)
            pixels = (255 * (pixels - pixels.min()) / max(np.ptp(pixels), 1e-9)).astype(np.uint8)
        sources[name] = [Image.fromarray(pixels).convert("RGB")]
        if len(sources) == classes:
            return sources
    raise SystemExit(f"only {len(sources)} scikit-image photos load offline; ask for --classes {len(sources)} or fewer")


def _jittered(source: Image.Image, rng: np.random.Generator, crop: bool) -> Image.Image:
    """A crop (photos) or a shifted copy (small images) of ``source``, mirrored half the time, at ``SIZE`` px."""
    width, height = source.size
    if crop:
        side = int(min(width, height) * rng.uniform(0.35, 0.9))
        left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        image = source.crop((left, top, left + side, top + side))
    else:
        dx, dy = (int(v) for v in rng.integers(-width // 8, width // 8 + 1, 2))
        image = source.transform(source.size, Image.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=(0, 0, 0))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return image.resize((SIZE, SIZE), Image.BICUBIC)


def labelled_set(n: int, classes: int, seed: int = 0) -> tuple[list[Image.Image], list[int], list[str], str]:
    """``n`` images in ``classes`` classes of (nearly) equal size, their labels, the class names and where they come from."""
    sources = _fashion_sources(classes)
    origin = "Fashion-MNIST sample images, shifted and mirrored"
    crop = False
    if sources is None:
        sources = _photo_sources(classes)
        origin = "crops of scikit-image photos, one photo per class"
        crop = True
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, pictures in enumerate(sources.values()):
        count = n // classes + (label < n % classes)
        for i in range(count):
            source = pictures[i % len(pictures)]
            # each original once as it is, then jittered copies
            images.append(source.resize((SIZE, SIZE), Image.BICUBIC) if not crop and i < len(pictures) else _jittered(source, rng, crop))
            labels.append(label)
    return images, labels, list(sources), origin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dinov2-s", choices=["dinov2-s", "vit-tiny"],
                        help="dinov2-s (the real backbone, prepared in the cache) or vit-tiny (timm's ViT-Ti/16, random weights)")
    parser.add_argument("--images", type=int, default=300, help="labelled images (default 300)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default 10)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"machine: {cpu_model()}, {torch.get_num_threads()} threads, device {device}, load {load_average()}")
    handle = _model(args.model, device)
    images, labels, names, origin = labelled_set(args.images, args.classes)
    counts = np.bincount(labels)
    print(f"torch {torch.__version__}, timm {timm.__version__}; {handle.name}: {handle.num_layers} layers x "
          f"{handle.num_heads} heads, {handle.num_tokens} tokens at {handle.img_size[0]} px")
    print(f"set: {len(images)} images in {len(names)} classes ({counts.min()}-{counts.max()} each), {origin}\n")

    # as the dashboard's first stage runs it (core.pipeline.staged.StagedAnalysis._run_preview)
    given = check_labels(handle, torch.tensor(labels), len(images))
    run_pass(handle, images[:2], given[:2], Capture(metrics=()))  # warm-up: kernels, allocator
    capture = Capture(metrics=(), map_samples=draw_samples(handle, len(images), CaseSettings()))  # a backbone: no Taylor
    part, first = timed(lambda: run_pass(handle, images, given, capture))
    features = part.predictions.probe_input
    assert features is not None, "a backbone's first pass reads the probe's input"
    print(f"first pass  {first:8.2f} s  ({first / len(images) * 1000:.0f} ms per image; probe input {features.shape[1]} features)")

    fits = []
    for _ in range(FIT_REPEATS):
        probe, seconds = timed(lambda: fit_probe(features, labels, names, backbone=handle))
        fits.append(seconds)
    fit = statistics.median(fits)
    print(f"fit_probe   {fit:8.2f} s  (median of {FIT_REPEATS}: {', '.join(f'{s:.2f}' for s in fits)} s; "
          f"{probe.folds} folds, C = {probe.strength:g})")
    with threadpool_limits(1, user_api="blas"):
        single = statistics.median(timed(lambda: fit_probe(features, labels, names, backbone=handle))[1] for _ in range(FIT_REPEATS))
    print(f"  with BLAS on one thread {single:.2f} s (median of {FIT_REPEATS})")
    print(f"  {probe.summary()}\n")

    ratio = fit / first
    verdict = "OK" if ratio < RATIO_TARGET else "ABOVE TARGET"
    print(f"fit / first pass = {fit:.2f} / {first:.2f} s = {ratio:.3f} on {len(images)} images "
          f"(target < {RATIO_TARGET:.2f}): {verdict}")
    print(f"  with BLAS on one thread: {single / first:.3f}")


if __name__ == "__main__":
    main()
