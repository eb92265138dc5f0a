"""Models without a classifier (backbones), the output_impact metric and the input size of large-grid models.

References are independent of the code under test: a head is pruned by zeroing its
columns of the block's output projection in a deep copy of the model (what all-zero
attention weights give), and the copy's own ``model(x)`` is compared.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save

from core.__main__ import EXIT_BAD_INPUT, main
from core.errors import UnsupportedMetric
from core.inputs.images import ImageSet, decode_image
from core.measures.importance import (
    BACKBONE_METRICS,
    METRICS,
    head_importance_tables,
    metrics_for,
    partial_pruning,
    pruning_curve,
)
from core.models.handle import wrap_model
from core.models.load import load_model
from core.study.bundle import load_bundle, save_bundle
from core.study.casestudy import KILLER_SHARE, CaseSettings, analyze, findings
from helpers.models import tiny_vit
from viz.report import render_report


@pytest.fixture
def backbone():
    return wrap_model(tiny_vit(num_classes=0), device="cpu")


@pytest.fixture
def register_backbone():
    """No classifier, a CLS token and four registers, a 3x4 grid, average pooling over the patches."""
    return wrap_model(tiny_vit(num_classes=0, reg_tokens=4, img_size=(24, 32), global_pool="avg"), device="cpu")


def _images(handle, n: int, seed: int = 0) -> torch.Tensor:
    c, h, w = handle.data_config["input_size"]
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _pruned_copy(model, heads: list[tuple[int, int]]):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for layer, head in heads:
            attn = pruned.blocks[layer].attn
            attn.proj.weight[:, head * attn.head_dim:(head + 1) * attn.head_dim] = 0
    return pruned


def _output_change(model, pruned, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        clean, out = model(x).double(), pruned(x).double()
    return (1 - F.cosine_similarity(out, clean, dim=-1)).numpy()


def test_a_backbone_has_no_classes_and_two_metrics(backbone) -> None:
    assert backbone.is_backbone and backbone.class_names == []
    assert metrics_for(backbone) == BACKBONE_METRICS == ("layer_impact", "output_impact")
    classifier = wrap_model(tiny_vit(), device="cpu")
    assert not classifier.is_backbone and metrics_for(classifier) == METRICS
    with pytest.raises(ValueError, match="class names were given for a backbone"):
        wrap_model(tiny_vit(num_classes=0), class_names=["a"], device="cpu")


@pytest.mark.parametrize("which", ["backbone", "register_backbone", "classifier"])
def test_output_impact_is_the_change_of_the_models_own_output(which, request) -> None:
    handle = request.getfixturevalue(which) if which != "classifier" else wrap_model(tiny_vit(), device="cpu")
    x = _images(handle, 3)
    tables = head_importance_tables(handle, x, metrics=["output_impact"])
    local = tables.per_image.set_index(["image", "layer", "head"])["value"]
    for layer in range(handle.num_layers):
        for head in range(handle.num_heads):
            expected = _output_change(handle.model, _pruned_copy(handle.model, [(layer, head)]), x)
            got = [local[(i, layer, head)] for i in range(len(x))]
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"L{layer}H{head}")
    assert (tables.per_image["value"] > 0).any()
    overall = tables.overall.set_index(["layer", "head"])["value"]
    np.testing.assert_allclose(overall.to_numpy(), local.groupby(["layer", "head"]).mean().to_numpy(), atol=1e-12)


def test_a_backbone_refuses_class_metrics_with_a_sentence(backbone) -> None:
    x = _images(backbone, 2)
    for metric in ("probability", "accuracy", "taylor"):
        with pytest.raises(UnsupportedMetric, match=rf"'{metric}' is not available for .*need a class target"):
            head_importance_tables(backbone, x, metrics=[metric])
    with pytest.raises(UnsupportedMetric, match="no target class"):
        partial_pruning(backbone, x[:1], 0, 0, target=1)
    tables = head_importance_tables(backbone, x)  # the default: what the model supports
    assert set(tables.overall["metric"]) == set(BACKBONE_METRICS)
    assert tables.unpruned["probability"].isna().all() and (tables.unpruned["target"] == -1).all()


def test_labels_of_a_backbone_are_kept_as_targets(backbone) -> None:
    tables = head_importance_tables(backbone, _images(backbone, 3), torch.tensor([2, -1, 0]))
    assert tables.unpruned["target"].tolist() == [2, -1, 0]
    assert tables.unpruned["labelled"].tolist() == [True, False, True]


@pytest.mark.parametrize("which", ["backbone", "classifier"])
def test_partial_pruning_output_impact(which, backbone) -> None:
    handle = backbone if which == "backbone" else wrap_model(tiny_vit(), device="cpu")
    x = _images(handle, 1, seed=3)
    modes = partial_pruning(handle, x, 1, 2).set_index("mode")
    expected_columns = ["removes", "removed_attention", "output_impact"]
    if which == "classifier":
        expected_columns += ["probability", "predicted", "top5"]
    assert list(modes.columns) == expected_columns
    assert modes.loc["none", "output_impact"] == 0.0
    whole = _output_change(handle.model, _pruned_copy(handle.model, [(1, 2)]), x)[0]
    assert modes.loc["head", "output_impact"] == pytest.approx(whole, abs=1e-6)
    assert whole > 1e-6  # the head changes the output, so the comparison above means something


def test_the_pruning_curve_of_a_backbone_is_its_output_similarity(register_backbone) -> None:
    handle = register_backbone
    x = _images(handle, 3)
    tables = head_importance_tables(handle, x)
    curve = pruning_curve(handle, x, tables.overall, steps=3)
    assert set(curve["order"]) == {*BACKBONE_METRICS, "random"}
    assert curve["accuracy"].isna().all()
    np.testing.assert_allclose(curve.query("pruned == 0")["similarity"].to_numpy(), 1.0, atol=1e-12)
    everything = [(layer, head) for layer in range(handle.num_layers) for head in range(handle.num_heads)]
    expected = 1 - _output_change(handle.model, _pruned_copy(handle.model, everything), x).mean()
    assert curve.query(f"pruned == {len(everything)}")["similarity"].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert expected < 1 - 1e-5  # pruning every head changes the output: the comparison above means something


def _noise_set(count: int, side: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(decode_image(buffer.getvalue(), f"noise-{i}"))
    return ImageSet.from_images(f"{count} noise images", images)


@pytest.fixture(scope="module")
def backbone_study():
    handle = wrap_model(tiny_vit(num_classes=0), device="cpu")
    settings = CaseSettings(top_k=2, hurt_images=3, max_maps=150, n_clusters=2, curve_steps=2)
    return handle, analyze(handle, _noise_set(5, 32), settings, layout_method="pca")


@pytest.mark.slow
def test_a_backbone_case_study_saves_reopens_and_reports(backbone_study) -> None:
    handle, study = backbone_study
    assert study.is_backbone and study.metrics == BACKBONE_METRICS
    partial = study.tables["partial"]
    assert len(partial) and partial["probability"].isna().all() and (partial["predicted"] == "").all()
    # the image a head hurts is one where pruning it moves the output by at least the threshold
    assert (partial["drop"] >= 0.001).all()
    opened = load_bundle(save_bundle(study), model_key=handle.key)
    for name, table in study.tables.items():
        assert table.equals(opened.tables[name]), name
    found = findings(opened)
    assert found.metric == "layer_impact"
    for finding in found.heads:
        assert "output" in finding.mechanism and "target probability" not in finding.mechanism
        if finding.killer_mode is not None:
            impacts = finding.mode_impact
            assert impacts[finding.killer_mode] >= KILLER_SHARE * impacts["head"]
    html = render_report(opened, "output_impact")
    assert "backbone without a classifier" in html and "unpruned mean target probability" not in html
    with pytest.raises(ValueError, match="no 'probability' importance"):
        findings(opened, "probability")


@pytest.mark.slow
def test_large_grid_models_run_at_224_px_by_default() -> None:
    handle = load_model("vit_small_patch14_dinov2", pretrained=False, device="cpu")
    assert handle.is_backbone and handle.img_size == (224, 224) and handle.grid == (16, 16)
    assert handle.num_tokens == 257 and "224 px" in handle.name
    small = load_model("vit_small_patch14_dinov2", pretrained=False, device="cpu", img_size=140)
    assert small.grid == (10, 10) and small.preprocess([Image.new("RGB", (300, 200))]).shape == (1, 3, 140, 140)
    for bad in (100, 0, -14, 13.5):
        with pytest.raises(ValueError, match="multiple of the model's 14 px patches"):
            load_model("vit_small_patch14_dinov2", pretrained=False, device="cpu", img_size=bad)
    ordinary = load_model("test_vit", pretrained=False, device="cpu")  # 10 x 10 patches: its own size
    assert ordinary.img_size == (160, 160)


@pytest.mark.parametrize("name, antialias", [("vit_small_patch14_dinov2", False), ("test_vit", True)])
def test_a_checkpoint_at_its_own_size_is_resampled_to_the_chosen_grid(name, antialias) -> None:
    torch.manual_seed(0)
    source = timm.create_model(name, pretrained=False, num_classes=0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    side = source.patch_embed.grid_size[0]
    size = 14 * 12 if "patch14" in name else 16 * 7
    handle = load_model(name, checkpoint=save(state), device="cpu", img_size=size)
    grid = size // source.patch_embed.patch_size[0]
    assert handle.grid == (grid, grid) and handle.is_backbone
    table = state["pos_embed"]
    patches = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False, antialias=antialias)
    expected = torch.cat([table[:, :1], resized.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)
    torch.testing.assert_close(handle.model.pos_embed.detach(), expected, atol=1e-6, rtol=0)


def test_a_backbone_checkpoint_of_a_classifier_architecture_loads_as_a_backbone() -> None:
    torch.manual_seed(0)
    source = timm.create_model("test_vit", pretrained=False, num_classes=0)
    handle = load_model("test_vit", checkpoint=save(dict(source.state_dict())), device="cpu")
    assert handle.is_backbone and handle.class_names == []
    x = _images(handle, 2)
    with torch.no_grad():
        torch.testing.assert_close(handle.model(x), source.eval()(x))


@pytest.mark.slow
def test_the_command_line_analyses_a_backbone(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(save(dict(timm.create_model("test_vit", pretrained=False, num_classes=0).state_dict())))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, item in enumerate(_noise_set(3, 48).images):
        item.image.save(folder / f"{i}.png")
    fast = ["--layout", "pca", "--max-maps", "100", "--top-k", "1", "--hurt-images", "1", "--curve-steps", "1", "--clusters", "2"]
    common = ["analyze", "--model", "test_vit", "--checkpoint", str(weights), "--images", str(folder), *fast]
    code = main([*common, "--out", str(tmp_path / "bad.zip"), "--metric", "accuracy"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT and "--metric accuracy is not available" in err and "Traceback" not in err
    assert not (tmp_path / "bad.zip").exists()
    assert main([*common, "--out", str(tmp_path / "ok.zip")]) == 0
    out = capsys.readouterr().out
    assert "Top heads by layer_impact" in out
    study = load_bundle((tmp_path / "ok.zip").read_bytes())
    assert study.is_backbone and len(study.tables["images"]) == 3


def test_a_model_already_at_224_px_keeps_its_size_whatever_its_grid() -> None:
    from core.models.load import _run_size

    assert _run_size("vit_base_patch8_224", None) is None  # 28 x 28 patches, but no larger than 224 px
    assert _run_size("vit_small_patch14_dinov2", None) == 224  # 37 x 37 patches at 518 px


@pytest.mark.slow
def test_a_bundle_whose_per_image_importance_lacks_a_metric_is_refused(backbone_study) -> None:
    import dataclasses

    from core.errors import BundleRejected

    handle, study = backbone_study
    per_image = study.tables["importance_per_image"]
    damaged = dataclasses.replace(
        study, tables={**study.tables, "importance_per_image": per_image[per_image["metric"] == "layer_impact"]}
    )
    with pytest.raises(BundleRejected, match="per-image importance does not hold the metrics of its model"):
        load_bundle(save_bundle(damaged), model_key=handle.key)
