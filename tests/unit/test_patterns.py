"""core.measures.patterns (view D), the pure parts of ui.patterns and the charts of viz.patterns: maps, sampling, autoencoder, layout, clusters, charts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from core.measures.attention import extract_attention
from core.measures.patterns import (
    AE_SIZE,
    PatternSpace,
    attention_cells,
    autoencoder_input,
    centre_on_source,
    cluster_patterns,
    display_shape,
    grid_maps,
    project_patterns,
    sample_maps,
    sample_maps_from,
    strong_links,
    token_names,
    train_autoencoder,
    training_steps,
    weight_histogram,
)
from core.measures.projection import layout_2d, wait_for_umap
from ui import patterns as ui_patterns
from viz import patterns as charts
from viz.common import HEAD_SELECTION
from viz.patterns import prototype_chart

KINDS = ("self", "left", "cls", "uniform")
STEPS = 300  # the floor of ``training_steps``: what the page uses for small samples


def synthetic_attention(n: int = 10, grid: tuple[int, int] = (6, 6), prefix: int = 1, layers: int = 2, seed: int = 0) -> torch.Tensor:
    """``[n, layers, 4, T, T]`` attention whose head ``h`` follows ``KINDS[h]`` in every layer.

    self: each patch looks at itself; left: at the patch to its left (wrapping to the
    row's last patch); cls: at token 0; uniform: at nothing in particular. Small noise
    on the logits makes every map a little different.
    """
    rows, cols = grid
    t = prefix + rows * cols
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, layers, len(KINDS), t, t, generator=g) * 0.3
    for query in range(t):
        for h, kind in enumerate(KINDS):
            if kind == "uniform":
                continue
            if kind == "cls" or query < prefix:
                key = 0 if kind == "cls" else query
            else:
                r, c = divmod(query - prefix, cols)
                key = query if kind == "self" else prefix + r * cols + (c - 1) % cols
            logits[:, :, h, query, key] += 9.0
    return logits.softmax(-1)


def _space(attn: torch.Tensor, max_maps: int = 2000, seed: int = 0, steps: int = STEPS) -> PatternSpace:
    sample = sample_maps_from(list(attn.split(4)), num_images=len(attn), grid=(6, 6), num_prefix_tokens=1, max_maps=max_maps, seed=seed)
    return train_autoencoder(sample, steps=steps, seed=seed, device="cpu")


def _model_state(handle):
    model = handle.model
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [b.attn.fused_attn for b in model.blocks],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
    )


# --- maps ------------------------------------------------------------------------------


def test_patch_and_cls_maps_are_rows_laid_on_the_grid() -> None:
    grid, prefix = (3, 4), 4
    t = prefix + 12
    attn = torch.rand(2, 3, t, t)
    maps = grid_maps(attn[..., prefix:, :], grid, prefix)  # every source patch's map
    cls = grid_maps(attn.numpy()[..., 0, :], grid, prefix)  # numpy in, numpy out
    assert maps.shape == (2, 3, 12, 3, 4) and cls.shape == (2, 3, 3, 4) and isinstance(cls, np.ndarray)
    for b in range(2):
        for h in range(3):
            for r in range(3):
                for c in range(4):
                    assert cls[b, h, r, c] == attn[b, h, 0, prefix + r * 4 + c]
                    for s in range(12):
                        assert maps[b, h, s, r, c] == attn[b, h, prefix + s, prefix + r * 4 + c]


def test_centring_puts_the_source_in_the_middle_and_pads_with_the_mean() -> None:
    grid = (3, 4)
    maps = torch.rand(12, 3, 4)
    sources = torch.arange(12)
    out = centre_on_source(maps, sources, grid)
    assert out.shape == (12, 5, 7)
    for m in range(12):
        sr, sc = divmod(m, 4)
        inside = set()
        for r in range(3):
            for c in range(4):
                assert out[m, 2 + r - sr, 3 + c - sc] == maps[m, r, c]
                inside.add((2 + r - sr, 3 + c - sc))
        mean = float(maps[m].mean())
        for i in range(5):
            for j in range(7):
                if (i, j) not in inside:
                    assert math.isclose(float(out[m, i, j]), mean, rel_tol=1e-6)


def test_normalisation_keeps_shape_and_the_share_of_attention_on_patches() -> None:
    grid = (4, 4)
    self_map = torch.zeros(1, 4, 4)
    self_map[0, 1, 2] = 0.5  # the other half of the attention goes to the CLS token
    uniform = torch.full((1, 4, 4), 1 / 16)
    looks_at_cls = torch.full((1, 4, 4), 0.01 / 16)
    x = autoencoder_input(torch.cat([self_map, uniform, looks_at_cls]), torch.tensor([6, 6, 6]), grid)
    assert x.shape == (3, 1, AE_SIZE, AE_SIZE)
    assert math.isclose(float(x[0].max()), 0.5, rel_tol=1e-5)
    centre = x[0, 0, AE_SIZE // 2 - 1:AE_SIZE // 2 + 1, AE_SIZE // 2 - 1:AE_SIZE // 2 + 1]
    assert float(centre.max()) == pytest.approx(0.5)  # the source sits in the middle of the window
    torch.testing.assert_close(x[1], torch.ones_like(x[1]))  # uniform attention: flat, at full strength
    assert float(x[2].max()) < 0.011  # mostly on the CLS token: nearly blank, unlike uniform


# --- sampling --------------------------------------------------------------------------


def test_sampling_cap_is_respected_per_head_and_deterministic(tiny_handle) -> None:
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    heads = tiny_handle.num_layers * tiny_handle.num_heads
    seen: list[tuple[int, int]] = []
    first = sample_maps(tiny_handle, x, max_maps=60, seed=3, progress=lambda d, t: seen.append((d, t)))
    assert len(first.inputs) == len(first.origin) == heads * (60 // heads) <= 60
    assert (first.origin.groupby(["layer", "head"]).size() == 60 // heads).all()
    assert not first.origin.duplicated().any()
    assert seen[-1] == (5, 5)
    again = sample_maps(tiny_handle, x, max_maps=60, seed=3)
    pd.testing.assert_frame_equal(first.origin, again.origin)
    torch.testing.assert_close(first.inputs, again.inputs, atol=0, rtol=0)
    other = sample_maps(tiny_handle, x, max_maps=60, seed=4)
    assert not first.origin.equals(other.origin)

    # every sampled map is the attention row its origin names, read independently
    attn = extract_attention(tiny_handle, x).attn
    prefix, grid = tiny_handle.num_prefix_tokens, tiny_handle.grid
    for i, row in enumerate(first.origin.itertuples()):
        raw = attn[row.image, row.layer, row.head, prefix + row.source, prefix:].reshape(1, *grid)
        torch.testing.assert_close(first.inputs[i:i + 1], autoencoder_input(raw, torch.tensor([row.source]), grid))


def test_pil_images_are_preprocessed_per_batch_and_give_the_same_sample(tiny_handle, monkeypatch) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    from_tensor = sample_maps(tiny_handle, tiny_handle.preprocess(images), max_maps=60, seed=3)
    monkeypatch.setattr("core.settings.ATTENTION_BUDGET_BYTES", 2 * 3 * 3 * 17**2 * 4)  # two images per batch
    sizes: list[int] = []
    original = type(tiny_handle).preprocess
    monkeypatch.setattr(type(tiny_handle), "preprocess", lambda self, ims: sizes.append(len(ims)) or original(self, ims))
    from_pil = sample_maps(tiny_handle, images, max_maps=60, seed=3)
    assert sizes == [2, 2, 1]  # never the whole set at once
    pd.testing.assert_frame_equal(from_tensor.origin, from_pil.origin)
    torch.testing.assert_close(from_tensor.inputs, from_pil.inputs)


def test_small_pools_give_every_map_once_and_tiny_caps_are_refused(tiny_handle) -> None:
    x = torch.randn(1, 3, 32, 32)
    one = sample_maps(tiny_handle, x, kind="cls", max_maps=1000)
    heads = tiny_handle.num_layers * tiny_handle.num_heads
    assert len(one.origin) == heads and set(one.origin["source"]) == {-1}
    with pytest.raises(ValueError, match="below the model's 9 heads"):
        sample_maps(tiny_handle, x, max_maps=5)


def test_streaming_in_any_batch_size_gives_the_same_sample() -> None:
    attn = synthetic_attention(n=7)
    samples = [
        sample_maps_from(list(attn.split(size)), num_images=7, grid=(6, 6), num_prefix_tokens=1, max_maps=400, seed=0)
        for size in (1, 3, 7)
    ]
    for other in samples[1:]:
        pd.testing.assert_frame_equal(samples[0].origin, other.origin)
        torch.testing.assert_close(samples[0].inputs, other.inputs, atol=0, rtol=0)


def test_sampling_leaves_the_shared_model_exactly_as_it_was(tiny_handle) -> None:
    before = _model_state(tiny_handle)
    sample = sample_maps(tiny_handle, torch.randn(3, 3, 32, 32), max_maps=90)
    train_autoencoder(sample, steps=5, device="cpu")
    after = _model_state(tiny_handle)
    assert all(torch.equal(before[0][k], v) for k, v in after[0].items())
    assert before[1:] == after[1:]
    assert all(p.grad is None for p in tiny_handle.model.parameters())


def test_a_model_without_cls_token_has_no_cls_maps() -> None:
    from core.models.handle import wrap_model
    from helpers.models import tiny_vit

    handle = wrap_model(tiny_vit(class_token=False, global_pool="avg"), device="cpu")
    with pytest.raises(ValueError, match="no CLS token"):
        sample_maps(handle, torch.randn(1, 3, 32, 32), kind="cls")
    assert token_names(handle)[0] == "p0 (0,0)"


# --- autoencoder, clusters, layout -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 6])  # 6: k-means split the diffuse maps before the autoencoder denoised
def test_clusters_recover_the_synthetic_kinds(seed: int) -> None:
    space = _space(synthetic_attention(seed=seed), seed=seed)
    clusters = cluster_patterns(space, n_clusters=4, seed=seed)
    kinds = np.array(KINDS)[space.origin["head"].to_numpy()]
    table = pd.crosstab(clusters.labels, kinds)
    purity = table.max(axis=1).sum() / len(kinds)
    assert purity >= 0.9, table
    # each kind's heads (one per layer) share a member cluster, and the kinds do not share one
    member = {kind: set(clusters.heads.loc[clusters.heads["head"] == h, "cluster"]) for h, kind in enumerate(KINDS)}
    assert all(len(m) == 1 for m in member.values())
    assert len(set.union(*member.values())) == 4
    # decoded prototypes: "self" peaks at offset (0, 0), "left" at (0, -1)
    for kind, offset in (("self", (0, 0)), ("left", (0, -1))):
        proto = clusters.prototypes[clusters.prototypes["cluster"] == member[kind].pop()]
        peak = proto.loc[proto["value"].idxmax()]
        assert (peak["row"], peak["col"]) == offset
    assert space.reconstruction_mse < 0.25 * space.baseline_mse
    assert clusters.clusters["maps"].is_monotonic_decreasing and clusters.clusters["maps"].sum() == len(kinds)


def test_training_is_deterministic_for_a_seed() -> None:
    attn = synthetic_attention(n=3)
    a, b, c = (_space(attn, max_maps=400, seed=seed, steps=40) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a.latents, b.latents)
    assert not np.array_equal(a.latents, c.latents)
    assert not any(p.requires_grad for p in a.autoencoder.parameters())


def test_head_positions_are_the_mean_of_their_maps() -> None:
    space = _space(synthetic_attention(n=3), max_maps=400, steps=40)
    layout = project_patterns(space, method="pca")
    assert len(layout.samples) == len(space.latents) and layout.method == "pca"
    for head in layout.heads.itertuples():
        mine = layout.samples[(layout.samples["layer"] == head.layer) & (layout.samples["head"] == head.head)]
        assert head.maps == len(mine) and head.head_label == f"L{head.layer}H{head.head}"
        assert head.x == pytest.approx(mine["x"].mean()) and head.y == pytest.approx(mine["y"].mean())


@pytest.mark.slow
def test_constant_maps_give_one_cluster_and_visible_points() -> None:
    rows, cols, prefix = 4, 4, 1
    t = prefix + rows * cols
    attn = torch.full((2, 2, 2, t, t), 1.0 / t)
    sample = sample_maps_from([attn], num_images=2, grid=(rows, cols), num_prefix_tokens=prefix, kind="cls", max_maps=100)
    space = train_autoencoder(sample, steps=20, device="cpu")
    clusters = cluster_patterns(space, n_clusters=5)
    assert list(clusters.clusters["cluster"]) == [0] and set(clusters.labels) == {0}
    layout = project_patterns(space, method="umap")  # constant codes: no UMAP needed, points spread on a line
    assert len({(x, y) for x, y in zip(layout.samples["x"], layout.samples["y"])}) == len(layout.samples)


@pytest.mark.slow
def test_one_image_on_a_non_square_grid_with_registers(register_handle) -> None:
    x = torch.randn(1, 3, 24, 32)
    sample = sample_maps(register_handle, x, max_maps=200)
    assert set(sample.origin["image"]) == {0} and sample.origin["source"].between(0, 11).all()
    space = train_autoencoder(sample, steps=30, device="cpu")
    clusters = cluster_patterns(space, n_clusters=3)
    proto = clusters.prototypes
    assert display_shape("patch", (3, 4)) == (5, 7)
    assert (proto["row"].min(), proto["row"].max(), proto["col"].min(), proto["col"].max()) == (-2, 2, -3, 3)
    assert len(proto) == len(clusters.clusters) * 5 * 7
    cls_space = train_autoencoder(sample_maps(register_handle, x, kind="cls", max_maps=200), steps=30, device="cpu")
    cls_proto = cluster_patterns(cls_space, n_clusters=3).prototypes
    assert (cls_proto["row"].max(), cls_proto["col"].max()) == (2, 3)
    assert token_names(register_handle)[:5] == ["CLS", "REG1", "REG2", "REG3", "p0 (0,0)"]
    assert project_patterns(cls_space, method="pca").heads.shape[0] == register_handle.num_layers * register_handle.num_heads


def test_umap_layout_of_few_maps_and_of_separated_groups() -> None:
    """The one test that waits for UMAP's compilation (about 40 s in a fresh process)."""
    assert wait_for_umap(timeout=600)
    rng = np.random.default_rng(0)
    few = layout_2d(rng.normal(size=(7, 4)), "umap", min_dist=0.1, spread=1.0, exact_neighbors=True)  # 7 maps < 15 neighbours
    assert few.shape == (7, 2) and np.isfinite(few).all()
    groups = np.concatenate([rng.normal(0, 0.1, (150, 6)), rng.normal(5, 0.1, (150, 6))]).astype(np.float32)
    first = layout_2d(groups, "umap", min_dist=0.1, spread=1.0, n_epochs=100, exact_neighbors=True)
    second = layout_2d(groups, "umap", min_dist=0.1, spread=1.0, n_epochs=100, exact_neighbors=True)
    np.testing.assert_array_equal(first, second)
    a, b = first[:150], first[150:]
    gap = np.linalg.norm(a.mean(axis=0) - b.mean(axis=0))
    assert gap > 3 * max(a.std(axis=0).max(), b.std(axis=0).max())


def test_training_steps_cover_epochs_with_a_floor() -> None:
    assert training_steps(20_000) == math.ceil(8 * 20_000 / 256)
    assert training_steps(100) == 300


# --- the focus head (D2-D5) ------------------------------------------------------------


def test_cells_links_and_histogram_of_one_head() -> None:
    rng = np.random.default_rng(0)
    attn = rng.dirichlet(np.full(6, 0.3), size=6)  # T = 6: two prefix tokens, a 2x2 grid
    names = ["CLS", "REG1", "p0", "p1", "p2", "p3"]
    cells = attention_cells(attn, names, num_prefix_tokens=2)
    assert len(cells) == 36
    for row in cells.itertuples():
        assert row.weight == pytest.approx(attn[row.source, row.target])
        assert row.prefix == (row.source < 2 or row.target < 2)
        assert (row.source_name, row.target_name) == (names[row.source], names[row.target])
    links = strong_links(cells, 0.2)
    assert sorted(links["weight"]) == sorted(w for w in attn.ravel() if w >= 0.2)
    capped = strong_links(cells, 0.0, max_links=5)
    assert sorted(capped["weight"], reverse=True) == sorted(attn.ravel(), reverse=True)[:5]
    hist = weight_histogram(attn, bins=10)
    assert hist["count"].sum() == 36
    for row in hist.itertuples():
        inside = ((attn >= row.start) & (attn < row.end)) | ((row.end == 1.0) & (attn == 1.0))
        assert row.count == inside.sum()


# --- charts and images (pure) -----------------------------------------------------------


def _pattern_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"x": rng.normal(size=300), "y": rng.normal(size=300), "layer": rng.integers(0, 3, 300), "head": rng.integers(0, 2, 300)})
    heads = pd.DataFrame(
        {
            "layer": [0, 0, 1, 1, 2, 2], "head": [0, 1] * 3, "head_label": [f"L{l}H{h}" for l in range(3) for h in range(2)],
            "x": rng.normal(size=6), "y": rng.normal(size=6), "maps": 50, "cluster": [0, 1, 0, 2, 1, 0], "share": 0.8,
        }
    )
    return samples, heads


def test_pattern_space_chart_density_and_points() -> None:
    samples, heads = _pattern_frames()
    dense = charts.pattern_space_chart(samples, heads, (1, 1), density=True).to_dict()
    background, dots, ring = dense["layer"]
    assert background["mark"]["type"] == "rect" and background["encoding"]["color"]["field"] == "maps"
    assert sum(r["maps"] for r in dense["datasets"][background["data"]["name"]]) == 300
    assert dots["encoding"]["color"]["field"] == "layer"
    assert {"head_label", "cluster"} <= {t["field"] for t in dots["encoding"]["tooltip"]}
    assert HEAD_SELECTION in [p["name"] for p in dense["params"]]
    assert [(r["layer"], r["head"]) for r in dense["datasets"][ring["data"]["name"]]] == [(1, 1)]
    assert dense["resolve"]["scale"]["color"] == "independent"
    points = charts.pattern_space_chart(samples, heads, (0, 0), density=False).to_dict()
    assert points["layer"][0]["mark"]["type"] == "circle" and points["layer"][0]["encoding"]["color"]["field"] == "layer"
    assert len(points["datasets"][points["layer"][0]["data"]["name"]]) == 300


def test_prototype_chart_scales_each_map_to_its_peak_and_outlines_the_source() -> None:
    proto = pd.DataFrame(
        [(c, r, k, (0.2 if c == 0 else 0.5) * (1.0 if (r, k) == (0, 0) else 0.5)) for c in range(2) for r in (-1, 0, 1) for k in (-1, 0, 1)],
        columns=["cluster", "row", "col", "value"],
    )
    clusters = pd.DataFrame({"cluster": [0, 1], "share": [0.7, 0.3], "head_count": [3, 1]})
    spec = prototype_chart(proto, clusters, "patch").to_dict()
    rows = spec["datasets"][spec["data"]["name"]]
    assert [r for r in rows if r["source"]] == [r for r in rows if r["row"] == 0 and r["col"] == 0]
    assert {r["title"] for r in rows} == {"C0 · 70% of maps|3 heads · peak 0.20", "C1 · 30% of maps|1 head · peak 0.50"}
    assert all(r["relative"] == pytest.approx(1.0 if r["source"] else 0.5) for r in rows)
    enc = spec["spec"]["encoding"]
    assert enc["color"]["field"] == "relative" and enc["color"]["scale"]["domain"] == [0, 1]
    assert enc["x"]["title"].startswith("dx") and "value" in {t["field"] for t in enc["tooltip"]}


def test_link_chart_uses_blue_for_prefix_links_and_orange_for_patches() -> None:
    attn = np.random.default_rng(0).dirichlet(np.ones(6), size=6)
    cells = attention_cells(attn, ["CLS", "p0", "p1", "p2", "p3", "p4"], 1)
    links = strong_links(cells, 0.1)
    spec = charts.link_chart(links, ["CLS"], 6, "L0H0", 0.1).to_dict()
    prefix_layer, patch_layer = spec["layer"]
    assert prefix_layer["encoding"]["color"]["scale"]["scheme"] == "blues"
    assert patch_layer["encoding"]["color"]["scale"]["scheme"] == "oranges"
    assert all(r["prefix"] for r in spec["datasets"][prefix_layer["data"]["name"]])
    assert not any(r["prefix"] for r in spec["datasets"][patch_layer["data"]["name"]])
    enc = patch_layer["encoding"]
    assert (enc["x"]["field"], enc["x2"]["field"], enc["y"]["field"], enc["y2"]["field"]) == ("source", "target", "top", "bottom")
    assert spec["resolve"]["scale"]["color"] == "independent"


def test_matrix_chart_signs_prefix_cells_and_is_clickable() -> None:
    attn = np.random.default_rng(1).dirichlet(np.ones(5), size=5)
    cells = attention_cells(attn, ["CLS", "p0", "p1", "p2", "p3"], 1)
    spec = charts.matrix_chart(cells, ["CLS"], (2, 3), "L1H0").to_dict()
    heat, mark = spec["layer"]
    rows = spec["datasets"][heat["data"]["name"]]
    assert all((r["signed"] < 0) == r["prefix"] and abs(r["signed"]) == pytest.approx(r["weight"]) for r in rows)
    assert heat["encoding"]["color"]["scale"]["scheme"] == "blueorange"
    assert charts.CELL_SELECTION in [p["name"] for p in spec["params"]]
    assert [(r["source"], r["target"]) for r in spec["datasets"][mark["data"]["name"]]] == [(2, 3)]
    assert "CLS" in heat["encoding"]["x"]["axis"]["labelExpr"]


def test_histogram_chart_marks_the_threshold() -> None:
    spec = charts.histogram_chart(weight_histogram(np.array([0.1, 0.2, 0.9])), 0.35, "L0H0").to_dict()
    bars, rule = spec["layer"]
    assert bars["encoding"]["y"]["scale"]["type"] == "symlog" and bars["encoding"]["y2"] == {"datum": 0}
    assert sorted(r["count"] for r in spec["datasets"][bars["data"]["name"]]) == [1, 1, 1]  # empty bins left out
    assert spec["datasets"][rule["data"]["name"]] == [{"threshold": 0.35}]


def test_overlay_tints_by_weight_and_boxes_source_and_target() -> None:
    from PIL import Image

    view = Image.new("RGB", (40, 40), (0, 0, 0))
    weights = np.zeros((2, 2))
    weights[1, 1] = 1.0
    out = np.asarray(ui_patterns.attention_overlay(view, weights, (0, 0), (1, 0), min_side=40))
    assert out.shape == (40, 40, 3)
    assert tuple(out[30, 30]) != (0, 0, 0) and tuple(out[10, 30]) == (0, 0, 0)  # tinted where the weight is
    assert tuple(out[0, 5]) == (214, 39, 40)  # source box edge, red
    assert tuple(out[20, 5]) == (31, 119, 180)  # target box edge, blue
    assert ui_patterns.patch_position(0, (2, 2), 1) is None and ui_patterns.patch_position(4, (2, 2), 1) == (1, 1)


def test_overlay_shows_both_boxes_when_source_and_target_are_one_patch() -> None:
    from PIL import Image

    view = Image.new("RGB", (80, 80), (0, 0, 0))
    out = np.asarray(ui_patterns.attention_overlay(view, np.zeros((2, 2)), (0, 0), (0, 0), min_side=80))
    colours = {tuple(out[y, 20]) for y in range(0, 20)}  # a line down from the patch's top edge
    assert (214, 39, 40) in colours and (31, 119, 180) in colours  # the red box outside, the blue one inside
    assert tuple(out[0, 20]) == (214, 39, 40) and tuple(out[20, 20]) == (0, 0, 0)


def test_model_view_undoes_the_normalisation(demo_handle) -> None:
    from core.inputs.images import demo_digits_set

    image = demo_digits_set(0, 0.2).images[0].image
    seen = ui_patterns.model_view(demo_handle, image)
    assert seen.size == (32, 32)
    np.testing.assert_allclose(np.asarray(seen)[..., 0], np.asarray(image.convert("L")), atol=1)
