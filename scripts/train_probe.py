"""Fit the Fashion-MNIST linear probe of the built-in ``dinov2-s-fashion`` model and write its files.

Why: DINOv2 ViT-S/14 is a backbone with no classes, so the class-based views of the app
(head importance for a class, pruning, gradient rollout) have nothing to ask of it. The
built-in ``dinov2-s-fashion`` is that backbone with a linear probe for Fashion-MNIST's 10
clothing classes, read from ``data/dinov2_s_fashion_probe.safetensors``. The app must work
with no network beyond package registries, so the data comes from Debian's
``dataset-fashion-mnist`` package (Fashion-MNIST by Zalando Research, MIT licence), fetched
with ``apt-get download`` (no root, nothing installed) and checked by its sha256. This
script is the reproducible recipe for the probe, its card and the small sample set.

How: from the repository root, run

    python scripts/train_probe.py [--out-dir data] [--deb PATH] [--train-per-class N] [--test-per-class N]

1. The .deb is downloaded into a temporary folder (or ``--deb`` is read), its size and
   sha256 checked, and only the four idx files and the package's copyright file are read
   out of its ``data.tar.*`` member, in Python (``dpkg-deb --fsys-tarfile`` when Python
   cannot decompress it). They are cached under ``core.models.dinov2.cache_dir()/fashion-mnist``
   with their sha256, so a rerun downloads nothing.
2. A seeded (``SEED``) choice of ``--train-per-class`` images per class of the 60,000
   training images and ``--test-per-class`` per class of the 10,000 t10k images (a
   larger count keeps the images a smaller one chose).
3. The probe input of every chosen image (28x28 greyscale, preprocessed as the app does:
   RGB, 224 px) is computed with ``core.models.probe.probe_features`` on ``load_model("dinov2-s")``
   on 2 threads (roughly 10 images/s: half an hour for the default 22,000 images), and
   cached per image in an npz per split keyed by the data and the backbone weights, so a
   rerun with the same choices computes nothing.
4. ``core.models.probe.fit_probe`` on all the training images (cross-validated L2 strength;
   500 per class gave 82.7% held-out, short of the 85% aimed at, hence 2,000 per class),
   stamped with the backbone weights' sha256, evaluated once on the held-out test images;
   the class token alone (the first half of the features) is fitted and evaluated the same
   way for comparison only.
5. Written into ``--out-dir``: ``dinov2_s_fashion_probe.safetensors`` (the probe),
   ``dinov2_s_fashion_probe.json`` (its card, the held-out results, the selection, the
   data's provenance and the timings), ``fashion_sample/<class>/t10k-<index>.png`` (10
   held-out test images per class, seeded) and ``fashion_sample_LICENSE.txt``.

The same inputs give the same bytes: the probe file, the sample PNGs and the licence are
identical from run to run; the card differs only in its ``timings``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from core.models import dinov2  # noqa: E402
from core.models.handle import ViTHandle  # noqa: E402
from core.models.load import FASHION_PROBE, load_model  # noqa: E402
from core.models.probe import LinearProbe, fit_probe, probe_features  # noqa: E402

SEED = 0
THREADS = 2
BACKBONE = "dinov2-s"

# The Debian package holding Fashion-MNIST (bookworm/main), checked before anything is read from it.
PACKAGE = "dataset-fashion-mnist"
VERSION = "0.0~git20200523.55506a9-1"
DEB_SIZE = 30_900_652
DEB_SHA256 = "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0"
DATA_PREFIX = "usr/share/datasets/fashion-mnist/"
COPYRIGHT_MEMBER = f"usr/share/doc/{PACKAGE}/copyright"
IDX_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("t10k", "images"): "t10k-images-idx3-ubyte.gz",
    ("t10k", "labels"): "t10k-labels-idx1-ubyte.gz",
}
COPYRIGHT_FILE = "copyright"
MEMBERS = {DATA_PREFIX + name: name for name in IDX_FILES.values()} | {COPYRIGHT_MEMBER: COPYRIGHT_FILE}
SPLIT_SIZES = {"train": 60_000, "t10k": 10_000}
IMAGE_SIDE = 28
MANIFEST = "SOURCE.json"
UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"
LICENCE = "MIT"

# Fashion-MNIST's official label order; "T-shirt/top" made folder-safe. Label i is name i.
CLASS_NAMES = [
    "T-shirt or top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
TRAIN_PER_CLASS = 2000
TEST_PER_CLASS = 200
SAMPLE_PER_CLASS = 10
SAMPLE_BUDGET_BYTES = 100_000
SAVE_EVERY = 1000  # images between saves of the feature cache
# Independent seeded streams, so changing one count does not change the other choices.
_STREAM_TRAIN, _STREAM_TEST, _STREAM_SAMPLE = 0, 1, 2

PROBE_NAME = FASHION_PROBE.name
CARD_NAME = FASHION_PROBE.with_suffix(".json").name
SAMPLE_DIR = "fashion_sample"
SAMPLE_LICENSE = "fashion_sample_LICENSE.txt"


class DataRejected(SystemExit):
    """The .deb or a cached file is not the one this script was written for."""


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.tmp{os.getpid()}")
    scratch.write_bytes(data)
    os.replace(scratch, path)


# --- the data: a checked .deb, read without installing it -------------------------------------


def check_deb(path: Path) -> None:
    """Refuse, with a sentence, a file that is not the expected package."""
    size = path.stat().st_size
    if size != DEB_SIZE:
        raise DataRejected(
            f"{path} is {size:,} bytes, but {PACKAGE} {VERSION} is {DEB_SIZE:,} bytes; refusing to read it."
        )
    digest = sha256_of(path)
    if digest != DEB_SHA256:
        raise DataRejected(
            f"{path} has sha256 {digest}, but {PACKAGE} {VERSION} has {DEB_SHA256}; refusing to read it."
        )


def download_deb(folder: Path) -> Path:
    """``apt-get download`` the pinned package into ``folder`` (no root, nothing installed)."""
    command = ["apt-get", "download", f"{PACKAGE}={VERSION}"]
    print(f"downloading {PACKAGE} {VERSION} ({DEB_SIZE / 2**20:.1f} MB) with {' '.join(command)}", flush=True)
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise DataRejected(f"apt-get download failed ({err}); pass a local copy with --deb PATH.") from err
    debs = sorted(folder.glob("*.deb"))
    if done.returncode != 0 or len(debs) != 1:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no .deb was written"]
        raise DataRejected(
            f"apt-get download {PACKAGE}={VERSION} failed ({detail[0]}); run 'apt-get update' first, "
            "or pass a local copy with --deb PATH."
        )
    return debs[0]


def _ar_members(f: BinaryIO) -> dict[str, tuple[int, int]]:
    """``{name: (offset, size)}`` of the members of an ``ar`` archive (a .deb)."""
    if f.read(8) != b"!<arch>\n":
        raise DataRejected("The .deb is not an ar archive.")
    members: dict[str, tuple[int, int]] = {}
    while True:
        header = f.read(60)
        if not header:
            return members
        if len(header) != 60 or header[58:60] != b"`\n":
            raise DataRejected("The .deb has a damaged ar header.")
        name = header[:16].decode("ascii").strip().rstrip("/")
        size = int(header[48:58].decode("ascii").strip())
        members[name] = (f.tell(), size)
        f.seek(size + (size & 1), os.SEEK_CUR)


def _data_tar(deb: Path, scratch: Path) -> Path:
    """An uncompressed or Python-readable copy of the .deb's ``data.tar.*`` in ``scratch``."""
    with deb.open("rb") as f:
        members = _ar_members(f)
        names = [name for name in members if name.startswith("data.tar")]
        if len(names) != 1:
            raise DataRejected(f"The .deb has no single data.tar member (it has {sorted(members)}).")
        name = names[0]
        offset, size = members[name]
        print(f"the .deb's files are in {name}", flush=True)
        if name.endswith(".zst"):
            target = scratch / "data.tar"
            print("data.tar.zst: Python cannot read zstd here; using dpkg-deb --fsys-tarfile", flush=True)
            with target.open("wb") as out:
                subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=out, check=True)
            return target
        target = scratch / name
        f.seek(offset)
        with target.open("wb") as out:
            remaining = size
            while remaining:
                chunk = f.read(min(remaining, 2**20))
                if not chunk:
                    raise DataRejected("The .deb ends inside its data.tar member.")
                out.write(chunk)
                remaining -= len(chunk)
        return target


def extract(deb: Path, folder: Path) -> None:
    """Read the idx files and the copyright file out of a checked .deb into ``folder``, with a manifest."""
    check_deb(deb)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".extract-") as scratch:
        tar_path = _data_tar(deb, Path(scratch))
        found: dict[str, bytes] = {}
        with tarfile.open(tar_path, mode="r:*") as tar:
            for info in tar:
                member = info.name.removeprefix("./")
                if member in MEMBERS:
                    if not info.isfile():
                        raise DataRejected(f"{member} in the .deb is not a regular file.")
                    handle = tar.extractfile(info)
                    assert handle is not None
                    found[member] = handle.read()
        missing = sorted(set(MEMBERS) - set(found))
        if missing:
            raise DataRejected(f"The .deb lacks {', '.join(missing)}.")
    files = {}
    for member, name in sorted(MEMBERS.items()):
        _atomic_write(folder / name, found[member])
        files[name] = hashlib.sha256(found[member]).hexdigest()
    manifest = {"package": PACKAGE, "version": VERSION, "deb_sha256": DEB_SHA256, "files": files}
    _atomic_write(folder / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    print(f"extracted {len(files)} files into {folder}", flush=True)


def cached_files(folder: Path) -> dict[str, str] | None:
    """``{file: sha256}`` of a complete, intact cache of the extracted files, else ``None``."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if (manifest["package"], manifest["version"], manifest["deb_sha256"]) != (PACKAGE, VERSION, DEB_SHA256):
            return None
        if set(files) != set(MEMBERS.values()):
            return None
        if any(sha256_of(folder / name) != digest for name, digest in files.items()):
            return None
        return dict(files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fetch_dataset(folder: Path, deb: Path | None) -> dict[str, str]:
    """The extracted files in ``folder`` (from ``deb``, else the cache, else ``apt-get download``)."""
    if deb is None:
        files = cached_files(folder)
        if files is not None:
            print(f"using the cached Fashion-MNIST files in {folder}", flush=True)
            return files
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as scratch:
            extract(download_deb(Path(scratch)), folder)  # the .deb goes with the scratch folder
    else:
        print(f"reading {deb}", flush=True)
        extract(deb, folder)
    files = cached_files(folder)
    if files is None:
        raise DataRejected(f"The files extracted into {folder} do not match their manifest.")
    return files


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (gzip, big-endian header: 0, 0, type 0x08 = ubyte, ndim; then ndim uint32 sizes)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim or data[:4] != bytes([0, 0, 0x08, ndim]):
        raise DataRejected(f"{path.name} is not an idx file of {ndim}-d unsigned bytes.")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataRejected(f"{path.name} holds {body.size:,} bytes for a {shape} array.")
    return body.reshape(shape)


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 28, 28]`` uint8 images and ``[N]`` labels of one split, checked."""
    images = read_idx(folder / IDX_FILES[(split, "images")], 3)
    labels = read_idx(folder / IDX_FILES[(split, "labels")], 1)
    expected = (SPLIT_SIZES[split], IMAGE_SIDE, IMAGE_SIDE)
    if images.shape != expected or labels.shape != expected[:1] or labels.max() >= len(CLASS_NAMES):
        raise DataRejected(f"The {split} split is {images.shape} images and {labels.shape} labels, not {expected}.")
    return images, labels.astype(np.int64)


# --- the selection -------------------------------------------------------------------------------


def choose(labels: np.ndarray, per_class: int, stream: int) -> np.ndarray:
    """Sorted indices of ``per_class`` images of every class, seeded by ``SEED``, ``stream`` and the class.

    Each class has its own generator and takes the first ``per_class`` of a seeded
    permutation of its images, so a larger ``per_class`` keeps every image a smaller one
    chose (and their cached features).
    """
    chosen = []
    for label in range(len(CLASS_NAMES)):
        pool = np.flatnonzero(labels == label)
        if len(pool) < per_class:
            raise SystemExit(f"The class '{CLASS_NAMES[label]}' has {len(pool)} images, fewer than {per_class}.")
        chosen.append(np.random.default_rng([SEED, stream, label]).permutation(pool)[:per_class])
    return np.sort(np.concatenate(chosen))


def pil_images(images: np.ndarray, indices: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(images[i], mode="L") for i in indices]


# --- features, cached by the selection -------------------------------------------------------------


def feature_key(handle: ViTHandle, split: str, images_sha256: str, weights: str) -> str:
    """What the features of one split's images depend on, hashed (the chosen indices are in the file)."""
    described = {
        "backbone_key": handle.key,
        "backbone_weights_sha256": weights,
        "images_sha256": images_sha256,
        "split": split,
        "torch": torch.__version__,
        "threads": THREADS,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]


def _read_store(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cached ``indices [M]`` (sorted), ``features [M, F]`` and per-image compute ``seconds [M]``, or empty."""
    try:
        with np.load(path) as store:
            indices, features, seconds = store["indices"], store["features"], store["seconds"]
        if len(indices) == len(features) == len(seconds) and np.all(np.diff(indices) > 0):
            return indices, features, seconds
    except (OSError, ValueError, KeyError):
        pass
    return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), np.zeros(0)


def features_of(
    handle: ViTHandle, folder: Path, split: str, images: np.ndarray, indices: np.ndarray, key: str
) -> tuple[np.ndarray, float, int]:
    """``[N, F]`` probe input of the chosen images, the seconds they took to compute, and how many were cached.

    Features are kept per image in one npz per split and backbone (``key``): the forward
    pass is batch-invariant on the CPU, so an image's features do not depend on which
    batch computed them, and a rerun (or a larger selection) computes only what is new.
    """
    path = folder / f"features-{split}-{key}.npz"
    known, known_x, known_s = _read_store(path)
    missing = np.setdiff1d(indices, known, assume_unique=True)
    cached = len(indices) - len(missing)
    if len(missing):
        print(f"{split}: computing features of {len(missing):,} images ({cached:,} cached in {path.name})", flush=True)
        start = time.perf_counter()
        last = [start]
        for first in range(0, len(missing), SAVE_EVERY):  # saved as it goes: an interrupted run resumes
            part = missing[first:first + SAVE_EVERY]
            part_start = time.perf_counter()

            def progress(done: int, _total: int) -> None:
                now = time.perf_counter()
                done += first
                if now - last[0] >= 10 or done == len(missing):
                    last[0] = now
                    rate = done / (now - start)
                    print(
                        f"{split}: {done:,}/{len(missing):,} images  {rate:.1f} images/s  "
                        f"{now - start:.0f}s elapsed, {(len(missing) - done) / rate:.0f}s to go",
                        flush=True,
                    )

            with torch.inference_mode():
                new_x = probe_features(handle, pil_images(images, part), progress=progress)
            new_s = np.full(len(part), (time.perf_counter() - part_start) / len(part))
            every = np.concatenate([known, part])
            order = np.argsort(every)
            known = every[order]
            known_x = (np.concatenate([known_x, new_x]) if len(known_x) else new_x)[order]
            known_s = np.concatenate([known_s, new_s])[order]
            scratch = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
            np.savez(scratch, indices=known, features=known_x, seconds=known_s)
            os.replace(scratch, path)
    else:
        print(f"{split}: features of {len(indices):,} images from {path.name}", flush=True)
    rows = np.searchsorted(known, indices)
    return known_x[rows], float(known_s[rows].sum()), cached


# --- fitting -------------------------------------------------------------------------------------------


def held_out_accuracy(probe: LinearProbe, features: np.ndarray, labels: np.ndarray) -> float:
    return float((probe.logits(features).argmax(axis=1) == labels).mean())


def fit(handle: ViTHandle, x: np.ndarray, y: np.ndarray) -> tuple[LinearProbe, float]:
    start = time.perf_counter()
    probe = fit_probe(x, y.tolist(), CLASS_NAMES, backbone=handle, seed=SEED, max_images=len(y))
    return probe, time.perf_counter() - start


# --- the sample set and its licence -------------------------------------------------------------------


def write_sample(out: Path, images: np.ndarray, labels: np.ndarray, test_indices: np.ndarray) -> tuple[int, int]:
    """``SAMPLE_PER_CLASS`` held-out test images per class as PNGs; returns (count, total bytes)."""
    chosen = choose_within(labels, test_indices, SAMPLE_PER_CLASS)
    folder = out / SAMPLE_DIR
    if folder.exists():
        shutil.rmtree(folder)  # no image of an older choice stays behind
    total = 0
    for index in chosen:
        path = folder / CLASS_NAMES[labels[index]] / f"t10k-{index:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index], mode="L").save(path, format="PNG", optimize=True)
        total += path.stat().st_size
    return len(chosen), total


def choose_within(labels: np.ndarray, pool: np.ndarray, per_class: int) -> np.ndarray:
    """Sorted, seeded choice of ``per_class`` indices of every class among ``pool``."""
    chosen = [
        np.random.default_rng([SEED, _STREAM_SAMPLE, label]).permutation(pool[labels[pool] == label])[:per_class]
        for label in range(len(CLASS_NAMES))
    ]
    return np.sort(np.concatenate(chosen))


def write_licence(out: Path, copyright_text: str) -> Path:
    path = out / SAMPLE_LICENSE
    text = (
        f"The images in {SAMPLE_DIR}/ are from Fashion-MNIST by Zalando Research\n"
        f"({UPSTREAM}), {LICENCE} licence: {SAMPLE_PER_CLASS} per class from the t10k (test) split,\n"
        "chosen by scripts/train_probe.py among the images held out from the probe's fit.\n"
        "Each file is <class name>/t10k-<index>.png, <index> being the image's 0-based position in\n"
        "t10k-images-idx3-ubyte; the class folders are Fashion-MNIST's labels 0-9 in order\n"
        "(\"T-shirt/top\" written \"T-shirt or top\").\n"
        "\n"
        f"They were read from the Debian package {PACKAGE} {VERSION}\n"
        f"(sha256 {DEB_SHA256}),\n"
        f"whose copyright file, /{COPYRIGHT_MEMBER}, follows verbatim.\n"
        "\n"
        "----------------------------------------------------------------------------\n"
        "\n"
    ) + copyright_text.rstrip("\n") + "\n"
    _atomic_write(path, text.encode("utf-8"))
    return path


# --- main ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Fit the Fashion-MNIST linear probe of dinov2-s-fashion and write it, its card and a sample set."
    )
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "data", help="where to write the files")
    parser.add_argument("--deb", type=Path, default=None, help=f"a local {PACKAGE}_{VERSION}_all.deb to use")
    parser.add_argument("--train-per-class", type=int, default=TRAIN_PER_CLASS, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=TEST_PER_CLASS, help="held-out test images per class")
    args = parser.parse_args()
    if args.train_per_class < 10 or args.test_per_class < SAMPLE_PER_CLASS:
        parser.error(f"give at least 10 training and {SAMPLE_PER_CLASS} test images per class")

    started = time.perf_counter()
    torch.set_num_threads(THREADS)
    folder = dinov2.cache_dir() / "fashion-mnist"
    files = fetch_dataset(folder, args.deb)
    train_images, train_labels = load_split(folder, "train")
    test_images, test_labels = load_split(folder, "t10k")
    train_idx = choose(train_labels, args.train_per_class, _STREAM_TRAIN)
    test_idx = choose(test_labels, args.test_per_class, _STREAM_TEST)
    print(f"chose {len(train_idx):,} training and {len(test_idx):,} held-out test images (seed {SEED})", flush=True)

    handle = load_model(BACKBONE)
    weights = dinov2.weights_sha256(dinov2.cache_dir() / dinov2.WEIGHTS_FILE)
    print(f"backbone {handle.name}, weights sha256 {weights[:16]}..., {THREADS} threads", flush=True)
    train_key = feature_key(handle, "train", files[IDX_FILES[("train", "images")]], weights)
    test_key = feature_key(handle, "t10k", files[IDX_FILES[("t10k", "images")]], weights)
    train_x, train_s, train_cached = features_of(handle, folder, "train", train_images, train_idx, train_key)
    test_x, test_s, test_cached = features_of(handle, folder, "t10k", test_images, test_idx, test_key)
    train_y, test_y = train_labels[train_idx], test_labels[test_idx]
    feature_s = train_s + test_s
    rate = (len(train_idx) + len(test_idx)) / feature_s
    print(f"features {train_x.shape[1]} per image, {feature_s:.0f}s to compute ({rate:.1f} images/s)", flush=True)

    probe, fit_s = fit(handle, train_x, train_y)
    probe = dataclasses.replace(probe, backbone_weights_sha256=weights)
    accuracy = held_out_accuracy(probe, test_x, test_y)
    # the app's header says what the shipped probe was fitted and tested on
    source = f"{len(train_idx):,} Fashion-MNIST training images ({accuracy:.1%} on {len(test_idx):,} held-out test images)"
    probe = dataclasses.replace(probe, source=source)
    print(
        f"class token + patch mean: held-out {accuracy:.4f}, cross-validated {probe.accuracy:.4f}, "
        f"C={probe.strength:g}, fit {fit_s:.1f}s",
        flush=True,
    )
    width = train_x.shape[1] // 2
    token_probe, token_fit_s = fit(handle, train_x[:, :width], train_y)
    token_accuracy = held_out_accuracy(token_probe, test_x[:, :width], test_y)
    print(
        f"class token alone: held-out {token_accuracy:.4f}, cross-validated {token_probe.accuracy:.4f}, "
        f"C={token_probe.strength:g}, fit {token_fit_s:.1f}s",
        flush=True,
    )

    out: Path = args.out_dir
    probe_path = out / PROBE_NAME
    _atomic_write(probe_path, probe.to_bytes())
    count, sample_bytes = write_sample(out, test_images, test_labels, test_idx)
    print(f"wrote {count} sample images, {sample_bytes:,} bytes in all (budget {SAMPLE_BUDGET_BYTES:,})", flush=True)
    if sample_bytes >= SAMPLE_BUDGET_BYTES:
        raise SystemExit(f"The sample images take {sample_bytes:,} bytes, over the {SAMPLE_BUDGET_BYTES:,} budget.")
    licence_path = write_licence(out, (folder / COPYRIGHT_FILE).read_text(encoding="utf-8"))

    total_s = time.perf_counter() - started
    card: dict[str, Any] = {
        "probe": probe.card(),
        "probe_file": PROBE_NAME,
        "probe_sha256": sha256_of(probe_path),
        "probe_digest": probe.digest,
        "held_out": {
            "split": "t10k",
            "images": int(len(test_idx)),
            "class_and_patch_mean": {
                "accuracy": round(accuracy, 4),
                "cross_validated_accuracy": round(probe.accuracy, 4),
                "strength": probe.strength,
            },
            "class_token": {
                "accuracy": round(token_accuracy, 4),
                "cross_validated_accuracy": round(token_probe.accuracy, 4),
                "strength": token_probe.strength,
                "note": "the class token alone (the first half of the features), fitted the same way for comparison; not shipped",
            },
        },
        "selection": {
            "seed": SEED,
            "train_split": "train",
            "train_per_class": int(args.train_per_class),
            "train_images": int(len(train_idx)),
            "test_split": "t10k",
            "test_per_class": int(args.test_per_class),
            "test_images": int(len(test_idx)),
            "sample_dir": SAMPLE_DIR,
            "sample_per_class": SAMPLE_PER_CLASS,
            "sample_images": count,
            "sample_bytes": sample_bytes,
            "method": "per class, the first per_class of numpy default_rng([seed, stream, label]).permutation(the "
            "class's image indices, ascending); streams 0 train, 1 test, 2 sample; the sample is drawn among the "
            "held-out test images",
        },
        "dataset": {
            "name": "Fashion-MNIST",
            "upstream": UPSTREAM,
            "author": "Zalando Research",
            "licence": LICENCE,
            "debian_package": PACKAGE,
            "debian_version": VERSION,
            "debian_sha256": DEB_SHA256,
            "debian_size": DEB_SIZE,
            "files_sha256": files,
            "class_names": CLASS_NAMES,
        },
        "preprocessing": f"28x28 greyscale, {handle.name}'s own transform (RGB, {handle.data_config.get('input_size')})",
        "backbone": {"name": BACKBONE, "key": handle.key, "weights_sha256": weights},
        "timings": {
            "features_s": round(feature_s, 1),
            "features_cached": int(train_cached + test_cached),
            "images_per_s": round(rate, 2),
            "fit_s": round(fit_s, 1),
            "class_token_fit_s": round(token_fit_s, 1),
            "total_s": round(total_s, 1),
            "threads": THREADS,
        },
    }
    card_path = out / CARD_NAME
    _atomic_write(card_path, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    print("\nsummary", flush=True)
    print(f"  held-out accuracy, class token + patch mean: {accuracy:.4f} on {len(test_idx):,} t10k images")
    print(f"  held-out accuracy, class token alone:        {token_accuracy:.4f}")
    print(f"  train {len(train_idx):,} ({args.train_per_class}/class), test {len(test_idx):,} ({args.test_per_class}/class)")
    cached = f" ({train_cached + test_cached:,} images' features from the cache)" if train_cached + test_cached else ""
    print(f"  features {feature_s:.1f}s{cached}, fit {fit_s:.1f}s (+{token_fit_s:.1f}s class token), total {total_s:.1f}s")
    for path in (probe_path, card_path, licence_path):
        print(f"  {path.relative_to(out.parent) if out.parent in path.parents else path}: {path.stat().st_size:,} bytes")
    print(f"  {SAMPLE_DIR}/: {count} PNGs, {sample_bytes:,} bytes")
    print(f"  {PROBE_NAME} sha256 {sha256_of(probe_path)}", flush=True)


if __name__ == "__main__":
    main()
