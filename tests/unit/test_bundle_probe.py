"""A case study of a linear probe's classifier: its bundle keeps the probe, and reopens on the same backbone only."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from core.errors import ProbeRejected
from core.inputs.images import ImageSet
from core.models.handle import wrap_model
from core.models.probe import fit_probe, probe_features, probe_from_bytes, with_probe
from core.study.bundle import (
    MANIFEST,
    PROBE_MEMBER,
    bundle_probe,
    load_bundle,
    save_bundle,
)
from core.study.casestudy import (
    ARRAYS,
    BUNDLE_VERSION,
    PLAIN_BUNDLE_VERSION,
    TABLES,
    CaseSettings,
    analyze,
)
from helpers.bundles import bundle_members, edited_bundle, refused
from helpers.data import DATA
from helpers.images import labelled_noise
from helpers.models import tiny_vit

CLASSES = ("ant", "bee", "cat")
TINY = CaseSettings(top_k=2, hurt_images=2, max_maps=150, n_clusters=2, curve_steps=2)


@pytest.fixture(scope="module")
def backbone():
    return wrap_model(tiny_vit(num_classes=0), device="cpu")


@pytest.fixture(scope="module")
def noise() -> ImageSet:
    return labelled_noise(15)


@pytest.fixture(scope="module")
def probe(backbone, noise):
    features = probe_features(backbone, noise.pil_images())
    return fit_probe(features, noise.labels, CLASSES, backbone=backbone)


@pytest.fixture(scope="module")
def probed(backbone, probe):
    return with_probe(backbone, probe)


@pytest.fixture(scope="module")
def study(probed, noise):
    return analyze(probed, noise, TINY, layout_method="pca")


@pytest.fixture(scope="module")
def data(study) -> bytes:
    return save_bundle(study)


def _refused_by_both(data: bytes, match: str) -> str:
    """Refused alike by ``bundle_probe`` and by ``load_bundle``: the sentence."""
    message = refused(bundle_probe, data, match)
    assert refused(load_bundle, data, match) == message
    return message


# --- saving and opening ------------------------------------------------------------------


def test_a_probed_study_saves_its_probe_and_names_it_in_the_manifest(study, data, probe, probed, backbone):
    assert study.probe == probe.to_bytes()
    model = study.manifest["model"]
    assert study.manifest["format_version"] == BUNDLE_VERSION == 5
    assert model["key"] == probed.key == f"{backbone.key}-probe-{probe.digest[:16]}"
    assert model["class_names"] == list(CLASSES)
    assert model["probe"] == {
        "digest": probe.digest, "features": 2 * 24, "backbone_key": backbone.key, "backbone_name": backbone.name,
    }
    members = bundle_members(data)
    assert members[PROBE_MEMBER] == probe.to_bytes()
    assert probe_from_bytes(members[PROBE_MEMBER], backbone).digest == probe.digest
    files = json.loads(members[MANIFEST])["files"]
    assert files[PROBE_MEMBER] == {"sha256": hashlib.sha256(members[PROBE_MEMBER]).hexdigest(), "size": len(members[PROBE_MEMBER])}
    assert set(files) == set(members) - {MANIFEST}


def test_bundle_probe_gives_back_the_same_probe(data, probe, backbone):
    found = bundle_probe(data)
    assert found is not None and found.digest == probe.digest
    assert found.class_names == CLASSES and found.backbone_key == backbone.key
    np.testing.assert_array_equal(found.weight, probe.weight)
    np.testing.assert_array_equal(found.bias, probe.bias)


def test_the_probe_restores_the_classifier_and_the_bundle_opens_with_identical_numbers(data, study, backbone, probed):
    restored = with_probe(backbone, bundle_probe(data))
    assert restored.key == probed.key and restored.class_names == probed.class_names
    opened = load_bundle(data, model_key=restored.key, model_name=restored.name)
    assert opened.manifest == study.manifest
    for name in TABLES:
        pd.testing.assert_frame_equal(opened.tables[name], study.tables[name], check_dtype=True)
    for name in ARRAYS:
        np.testing.assert_array_equal(opened.arrays[name], study.arrays[name])
    assert dict(opened.thumbnails) == dict(study.thumbnails)
    assert opened.probe == study.probe
    assert save_bundle(opened) == data  # the page's download of an opened bundle keeps its probe


def test_a_study_without_a_probe_is_saved_as_before(small_study):
    """Nothing changed for other models: version 4, which HeadScope versions reading up to 4 open."""
    assert small_study.probe is None and "probe" not in small_study.manifest["model"]
    assert small_study.manifest["format_version"] == PLAIN_BUNDLE_VERSION == 4
    data = save_bundle(small_study)
    assert PROBE_MEMBER not in bundle_members(data)
    assert bundle_probe(data) is None
    assert load_bundle(data).probe is None


def test_an_older_bundle_has_no_probe():
    data = (DATA / "bundle_v3_demo.zip").read_bytes()
    assert bundle_probe(data) is None and load_bundle(data).probe is None


def test_a_study_whose_manifest_and_probe_disagree_is_not_saved(study, small_study, probe):
    with pytest.raises(ValueError, match="names a linear probe but the study holds none"):
        save_bundle(dataclasses.replace(study, probe=None))
    with pytest.raises(ValueError, match="holds a linear probe that its manifest does not name"):
        save_bundle(dataclasses.replace(small_study, probe=probe.to_bytes()))


# --- another model -----------------------------------------------------------------------


def test_a_probes_bundle_opened_with_another_model_names_its_backbone(data, backbone):
    message = refused(load_bundle, data, "load that backbone", model_key="vit_small-0123456789abcdef", model_name="vit_small")
    assert "linear probe of 3 classes" in message and f"'{backbone.name}'" in message
    assert backbone.key.rsplit("-", 1)[-1][:8] in message and "'vit_small' (weights 01234567)" in message


def test_a_probes_bundle_opened_with_its_backbone_alone_or_another_probe_says_to_use_its_own(data, backbone, noise):
    message = refused(load_bundle, data, "not with the backbone alone", model_key=backbone.key, model_name=backbone.name)
    assert "open it with its own probe on that backbone" in message
    features = probe_features(backbone, noise.pil_images())
    other = with_probe(backbone, fit_probe(features, [i % 2 for i in range(15)], ("odd", "even"), backbone=backbone))
    message = refused(load_bundle, data, "not with the loaded probe", model_key=other.key, model_name=other.name)
    assert f"the loaded probe {other.key.rsplit('-', 1)[-1][:8]}:" in message


def test_a_probe_for_another_backbone_does_not_sit_on_this_one(data):
    """The app's check: the bundle's probe on another backbone of the same shape is refused by with_probe."""
    other = wrap_model(tiny_vit(num_classes=0, qkv_bias=False), device="cpu")
    found = bundle_probe(data)
    assert found.backbone_key != other.key
    with pytest.raises(ProbeRejected, match="load that backbone"):
        with_probe(other, found)


def test_a_bundle_holding_another_backbones_probe_is_refused(data, study, noise):
    """Checksums recomputed: the member is a valid probe, but not the one the manifest names."""
    other_backbone = wrap_model(tiny_vit(num_classes=0, qkv_bias=False), device="cpu")
    features = probe_features(other_backbone, noise.pil_images())
    other = fit_probe(features, noise.labels, CLASSES, backbone=other_backbone)
    damaged = edited_bundle(data, replace={PROBE_MEMBER: other.to_bytes()})
    message = _refused_by_both(damaged, "is not the one its manifest.json names")
    assert other.digest[:8] in message and study.manifest["model"]["probe"]["digest"][:8] in message


# --- damaged -----------------------------------------------------------------------------


def test_a_changed_probe_member_fails_its_checksum(data):
    content = bytearray(bundle_members(data)[PROBE_MEMBER])
    content[-3] ^= 0xFF  # a weight
    message = _refused_by_both(edited_bundle(data, replace={PROBE_MEMBER: bytes(content)}, rehash=False), "checksum")
    assert PROBE_MEMBER in message


def test_a_manifest_naming_a_probe_without_its_member_is_refused(data):
    unlisted = edited_bundle(data, drop=(PROBE_MEMBER,), manifest=lambda meta: meta["files"].pop(PROBE_MEMBER))
    _refused_by_both(unlisted, "names a linear probe, but the bundle lists no probe file")
    missing = edited_bundle(data, drop=(PROBE_MEMBER,), rehash=False)  # listed, but not in the archive
    assert PROBE_MEMBER in _refused_by_both(missing, "damaged.*missing")


def test_a_probe_member_without_the_manifest_naming_it_is_refused(data):
    def forget(meta):
        del meta["model"]["probe"]

    _refused_by_both(edited_bundle(data, manifest=forget), "which is not part of a HeadScope bundle")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not a safetensors file at all", "linear probe cannot be used: this file is not a HeadScope probe"),
        (b"\x08" + bytes(7) + b'{"a": 1}', "linear probe cannot be used"),
    ],
)
def test_a_probe_member_that_is_no_probe_is_refused(data, content, match):
    _refused_by_both(edited_bundle(data, replace={PROBE_MEMBER: content}), match)


def test_a_probe_with_nan_weights_is_refused_even_when_the_manifest_names_it(data, probe, backbone):
    weight = probe.weight.copy()
    weight[0, 0] = np.nan
    broken = dataclasses.replace(probe, weight=weight)

    def name_it(meta):
        meta["model"]["probe"]["digest"] = broken.digest
        meta["model"]["key"] = f"{backbone.key}-probe-{broken.digest[:16]}"

    _refused_by_both(edited_bundle(data, replace={PROBE_MEMBER: broken.to_bytes()}, manifest=name_it), "NaN or infinite weights")


def _set(path: str, value):
    def edit(meta):
        *parents, last = path.split(".")
        target = meta
        for part in parents:
            target = target[part]
        target[last] = value
    return edit


@pytest.mark.parametrize(
    "edit, match",
    [
        (_set("model.probe.digest", "not a sha256"), "model.probe.digest"),
        (_set("model.probe.features", 0), "model.probe.features"),
        (_set("model.probe.features", 10**9), "model.probe.features"),
        (_set("model.probe.backbone_key", ""), "model.probe.backbone_key"),
        (_set("model.probe.backbone_name", None), "model.probe.backbone_name"),
        (_set("model.probe", "dinov2-s"), "model.probe.digest"),
        (_set("model.key", "VisionTransformer-0123456789abcdef"), "model key is not the key of the probe"),
        (_set("model.class_names", ["ant"]), "a linear probe but 1 class name; a probe has 2 to 1,000 classes"),
        (_set("model.class_names", ["ant", "bee", "cow"]), "classes or features are not the ones"),
        (_set("model.probe.features", 47), "classes or features are not the ones"),
        (_set("format_version", 4), "which a bundle of format version 4 cannot hold"),
    ],
)
def test_a_manifest_whose_probe_facts_are_wrong_is_refused(data, edit, match):
    refused(bundle_probe, edited_bundle(data, manifest=edit), match)
    refused(load_bundle, edited_bundle(data, manifest=edit), match)


def test_a_probe_member_larger_than_its_classes_and_features_is_refused_unread(data, monkeypatch):
    """3 classes of 48 features are about 1 KB of weights beside a header of at most 1 MiB: 2 MiB is no probe."""
    import core.study.bundle

    read: list[str] = []
    real = core.study.bundle._read_member
    monkeypatch.setattr(core.study.bundle, "_read_member", lambda archive, info, entry: read.append(info.filename) or real(archive, info, entry))
    damaged = edited_bundle(data, replace={PROBE_MEMBER: bytes(2 * 2**20)})
    message = refused(bundle_probe, damaged, "more than a linear probe of 3 classes and 48 features can be")
    assert refused(load_bundle, damaged, "more than a linear probe") == message
    assert read == []  # refused from the listed size, before any member


def test_bundle_probe_of_what_is_not_a_bundle_is_a_sentence():
    refused(bundle_probe, b"", "empty")
    refused(bundle_probe, np.random.default_rng(0).bytes(5000), "not a readable ZIP")
