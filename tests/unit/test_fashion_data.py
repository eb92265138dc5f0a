"""The Fashion-MNIST files that ship in data/: the probe, its card, the sample images and their licence."""

from __future__ import annotations

import json
from collections import Counter

from core.inputs.images import FASHION_SAMPLE, fashion_sample_set
from core.models.load import DATA_DIR, FASHION_PROBE
from core.models.probe import CLASS_AND_PATCH_MEAN, probe_from_bytes


def test_the_shipped_probe_is_the_one_its_card_describes() -> None:
    probe = probe_from_bytes(FASHION_PROBE.read_bytes())
    card = json.loads((DATA_DIR / "dinov2_s_fashion_probe.json").read_text())
    assert card["probe"] == probe.card()
    assert probe.feature_input == CLASS_AND_PATCH_MEAN and probe.num_features == 2 * 384
    assert probe.images >= 5000 and probe.backbone_weights_sha256 == card["backbone"]["weights_sha256"]
    assert card["held_out"]["images"] >= 2000
    assert FASHION_PROBE.stat().st_size < 100_000  # a few tens of KB


def test_the_sample_set_is_ten_labelled_test_images_per_class_under_100_kb() -> None:
    probe = probe_from_bytes(FASHION_PROBE.read_bytes())
    image_set = fashion_sample_set(probe.class_names)
    assert len(image_set) == 100
    assert Counter(image.label for image in image_set.images) == {label: 10 for label in range(10)}
    assert all(image.image.size == (28, 28) for image in image_set.images)
    files = list(FASHION_SAMPLE.rglob("*.png"))
    assert len(files) == 100 and sum(f.stat().st_size for f in files) < 100_000
    assert image_set.images[0].name.startswith("t10k-") and "(T-shirt or top)" in image_set.images[0].name


def test_the_images_carry_their_licence() -> None:
    notice = (DATA_DIR / "fashion_sample_LICENSE.txt").read_text()
    assert "Zalando" in notice and "MIT" in notice and "Permission is hereby granted" in notice
