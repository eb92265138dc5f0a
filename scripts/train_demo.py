"""Train HeadScope's embedded ``demo`` Vision Transformer and write its weights and card.

Why: the app must work with no network, so it ships a small timm ViT trained here on
scikit-learn's handwritten digits (8x8 images upscaled to 32x32, 4-pixel patches, so an
8x8 patch grid plus one CLS token). This script is the reproducible recipe for the
files in ``data/``: the same seeds, split and schedule give the same weights, bit for bit,
on the CPU in a few minutes.

How: from the repository root, run

    python scripts/train_demo.py [--out-dir data] [--epochs N]

It trains on the train part of ``core.inputs.digits.digits_split(0, 0.2)`` only, with a fixed
schedule (no model selection on the held-out part), evaluates once on the 360 held-out
images at the end, and writes ``demo_vit.safetensors`` and the JSON card
``demo_vit.json`` into the output directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform
from timm.models.vision_transformer import VisionTransformer

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from core.inputs.digits import CLASS_NAMES, DIGIT_SIZE, digit_images, digits_split  # noqa: E402

SEED = 0
TEST_FRACTION = 0.2
THREADS = 2
INPUT_SIZE = (1, DIGIT_SIZE, DIGIT_SIZE)
INTERPOLATION = "bilinear"
CROP_PCT = 1.0
WEIGHTS_NAME = "demo_vit.safetensors"
CARD_NAME = "demo_vit.json"

ARCH: dict[str, Any] = {
    "img_size": DIGIT_SIZE,
    "patch_size": 4,
    "in_chans": 1,
    "num_classes": len(CLASS_NAMES),
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 6,
    "mlp_ratio": 2.0,
    "qkv_bias": True,
    "class_token": True,
    "global_pool": "token",
    "reg_tokens": 0,
    "drop_path_rate": 0.05,
}

EPOCHS = 60
BATCH_SIZE = 32
LR = 1e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 3
LABEL_SMOOTHING = 0.1
MAX_SHIFT_PX = 2.0
MAX_ROTATE_DEG = 10.0
MAX_SCALE_DELTA = 0.1
AUGMENTATION = (
    f"per-sample random affine on normalised tensors: shift up to {MAX_SHIFT_PX:g} px, "
    f"rotation up to {MAX_ROTATE_DEG:g} deg, scale 1 +/- {MAX_SCALE_DELTA:g}, "
    "bilinear, background-filled"
)


def seed_everything(seed: int) -> None:
    """Fix every random source and force deterministic kernels on ``THREADS`` threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)


def pixel_stats(images: list[Image.Image]) -> tuple[float, float]:
    """Mean and standard deviation of the images' pixels in [0, 1], rounded to 4 decimals."""
    pixels = np.stack([np.asarray(image, dtype=np.float64) / 255.0 for image in images])
    return round(float(pixels.mean()), 4), round(float(pixels.std()), 4)


def to_tensors(
    images: list[Image.Image], labels: list[int], mean: float, std: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the app's evaluation transform to every image, once, and stack the results."""
    transform = create_transform(
        input_size=INPUT_SIZE,
        interpolation=INTERPOLATION,
        crop_pct=CROP_PCT,
        mean=(mean,),
        std=(std,),
        is_training=False,
    )
    return torch.stack([transform(image) for image in images]), torch.tensor(labels)


def augment(batch: torch.Tensor, background: float, generator: torch.Generator) -> torch.Tensor:
    """Randomly shift, rotate and scale each image; uncovered pixels take the background value."""
    n = batch.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = torch.deg2rad(uniform(-MAX_ROTATE_DEG, MAX_ROTATE_DEG))
    scale = uniform(1.0 - MAX_SCALE_DELTA, 1.0 + MAX_SCALE_DELTA)
    shift = 2.0 * MAX_SHIFT_PX / DIGIT_SIZE  # pixels -> normalised grid units
    tx, ty = uniform(-shift, shift), uniform(-shift, shift)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    )
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    warped = F.grid_sample(
        batch - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return warped + background


def lr_at(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warmup to ``LR`` then cosine decay to zero, per optimiser step."""
    if step < warmup_steps:
        return LR * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return LR * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(
    model: VisionTransformer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    background: float,
) -> None:
    """Train ``model`` in place on the given tensors with the fixed schedule."""
    generator = torch.Generator().manual_seed(SEED)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LR,
    )
    steps_per_epoch = math.ceil(len(inputs) / BATCH_SIZE)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(WARMUP_EPOCHS * steps_per_epoch, total_steps)
    step = 0
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(inputs), generator=generator)
        loss_sum, correct = 0.0, 0
        for first in range(0, len(inputs), BATCH_SIZE):
            index = order[first : first + BATCH_SIZE]
            batch = augment(inputs[index], background, generator)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup_steps)
            logits = model(batch)
            loss = F.cross_entropy(logits, labels[index], label_smoothing=LABEL_SMOOTHING)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_sum += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == labels[index]).sum())
        print(
            f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / len(inputs):.4f}  "
            f"train acc (augmented) {correct / len(inputs):.4f}  "
            f"lr {optimizer.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:.1f}s",
            flush=True,
        )


@torch.no_grad()
def accuracy(model: VisionTransformer, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode) on the given tensors."""
    model.eval()
    predictions = torch.cat([model(chunk).argmax(dim=1) for chunk in inputs.split(256)])
    return float((predictions == labels).float().mean())


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Train the embedded demo ViT on the digits and write its weights and card."
    )
    parser.add_argument(
        "--out-dir", type=Path, default=Path("data"), help="where to write the files"
    )
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs")
    args = parser.parse_args()

    seed_everything(SEED)
    split = digits_split(SEED, TEST_FRACTION)
    train_images, train_labels = digit_images(split.train)
    test_images, test_labels = digit_images(split.test)
    mean, std = pixel_stats(train_images)
    train_x, train_y = to_tensors(train_images, train_labels, mean, std)
    test_x, test_y = to_tensors(test_images, test_labels, mean, std)
    print(f"train {len(train_y)}, held-out {len(test_y)}, mean {mean}, std {std}", flush=True)

    model = VisionTransformer(**ARCH)
    print(f"{sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    start = time.perf_counter()
    train(model, train_x, train_y, args.epochs, background=-mean / std)
    wall_time_s = round(time.perf_counter() - start, 1)
    test_accuracy = round(accuracy(model, test_x, test_y), 4)
    print(f"held-out accuracy {test_accuracy:.4f} after {wall_time_s}s of training", flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.out_dir / WEIGHTS_NAME
    tensors = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    save_file(tensors, str(weights_path))
    card: dict[str, Any] = {
        "name": "demo",
        "description": (
            "A small Vision Transformer trained from scratch on scikit-learn's handwritten "
            "digits, upscaled to 32x32 greyscale with 4-pixel patches and one CLS token."
        ),
        "architecture": ARCH,
        "class_names": CLASS_NAMES,
        "input_size": list(INPUT_SIZE),
        "interpolation": INTERPOLATION,
        "crop_pct": CROP_PCT,
        "mean": [mean],
        "std": [std],
        "split": {
            "dataset": "sklearn.datasets.load_digits",
            "seed": SEED,
            "test_fraction": TEST_FRACTION,
            "stratified": True,
            "train_size": len(train_y),
            "test_size": len(test_y),
        },
        "training": {
            "epochs": args.epochs,
            "batch_size": BATCH_SIZE,
            "optimizer": (
                f"AdamW, {WARMUP_EPOCHS}-epoch linear warmup then cosine to 0, "
                f"label smoothing {LABEL_SMOOTHING}, no weight decay on biases/norms/tokens"
            ),
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "augmentation": AUGMENTATION,
            "seed": SEED,
            "wall_time_s": wall_time_s,
            "threads": THREADS,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
        "test_accuracy": test_accuracy,
        "weights": WEIGHTS_NAME,
        "weights_sha256": sha256_of(weights_path),
    }
    card_path = args.out_dir / CARD_NAME
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {weights_path} and {card_path}", flush=True)


if __name__ == "__main__":
    main()
