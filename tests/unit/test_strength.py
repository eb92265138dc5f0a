"""core.measures.strength (view C) against slow loop references, and the charts of viz.strength."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from core.measures.attention import extract_attention
from core.measures.strength import (
    SPREAD_QUANTILES,
    attention_distance,
    hop_entropy,
    hop_strength,
    offset_strength,
    prefix_share,
    strength_statistics,
)
from helpers.attention import random_attention
from viz import strength as charts
from viz.common import FOCUS_RED, HEAD_SELECTION


def patches(grid: tuple[int, int]) -> list[tuple[int, int]]:
    return [(r, c) for r in range(grid[0]) for c in range(grid[1])]


def slow_hop_strength(a: torch.Tensor, grid: tuple[int, int], prefix: int) -> list[float]:
    """The hop strength definition literally, for one ``[T, T]`` map: loops over sources, hops and targets."""
    cells = patches(grid)
    out = []
    for n in range(max(grid)):
        per_source = []
        for i, (ri, ci) in enumerate(cells):
            ring = [a[prefix + i, prefix + j].item() for j, (rj, cj) in enumerate(cells) if max(abs(ri - rj), abs(ci - cj)) == n]
            if ring:
                per_source.append(sum(ring) / len(ring))
        out.append(sum(per_source) / len(per_source))
    return out


def slow_entropy(s: list[float]) -> float:
    total = sum(s)
    return -sum(v / total * math.log(v / total) for v in s if v > 0)


def slow_offsets(a: torch.Tensor, grid: tuple[int, int], prefix: int) -> np.ndarray:
    rows, cols = grid
    cells = patches(grid)
    out = np.zeros((2 * rows - 1, 2 * cols - 1))
    for dy in range(-rows + 1, rows):
        for dx in range(-cols + 1, cols):
            values = [
                a[prefix + i, prefix + cells.index((r + dy, c + dx))].item()
                for i, (r, c) in enumerate(cells)
                if 0 <= r + dy < rows and 0 <= c + dx < cols
            ]
            out[dy + rows - 1, dx + cols - 1] = sum(values) / len(values)
    return out


def slow_distance(a: torch.Tensor, grid: tuple[int, int], patch: tuple[int, int], prefix: int) -> float:
    cells = patches(grid)
    per_source = []
    for i, (ri, ci) in enumerate(cells):
        row = [a[prefix + i, prefix + j].item() for j in range(len(cells))]
        mass = sum(row)
        per_source.append(
            sum(w / mass * math.hypot((ri - rj) * patch[0], (ci - cj) * patch[1]) for w, (rj, cj) in zip(row, cells))
        )
    return sum(per_source) / len(per_source)


def slow_prefix_share(a: torch.Tensor, grid: tuple[int, int], prefix: int) -> float:
    p = grid[0] * grid[1]
    return sum(sum(a[prefix + i, k].item() for k in range(prefix)) for i in range(p)) / p


# --- the metrics -------------------------------------------------------------------


@pytest.mark.parametrize("grid, prefix", [((3, 4), 4), ((4, 4), 1), ((5, 2), 0), ((1, 1), 1)])
def test_identity_attention_is_all_hop_zero_with_entropy_zero(grid: tuple[int, int], prefix: int) -> None:
    t = prefix + grid[0] * grid[1]
    s = hop_strength(torch.eye(t), grid, prefix)
    assert s.shape == (max(grid),)
    assert s[0].item() == pytest.approx(1.0, abs=1e-6) and torch.all(s[1:] == 0)
    assert hop_entropy(s).item() == 0.0
    assert math.copysign(1.0, hop_entropy(s).item()) == 1.0  # not -0.0


@pytest.mark.parametrize("grid, prefix", [((3, 4), 4), ((8, 8), 1), ((2, 6), 2)])
def test_uniform_attention_is_one_over_t_at_every_hop(grid: tuple[int, int], prefix: int) -> None:
    t = prefix + grid[0] * grid[1]
    attn = torch.full((2, 3, t, t), 1.0 / t)
    s = hop_strength(attn, grid, prefix)
    assert s.shape == (2, 3, max(grid))
    torch.testing.assert_close(s, torch.full_like(s, 1.0 / t))
    torch.testing.assert_close(hop_entropy(s), torch.full((2, 3), math.log(max(grid))))


def test_register_grid_matches_slow_loops_on_random_attention() -> None:
    grid, prefix, patch = (3, 4), 4, (8, 6)
    attn = random_attention(2, 3, 16, 16, seed=1)
    s = hop_strength(attn, grid, prefix)
    h = hop_entropy(s)
    offsets = offset_strength(attn, grid, prefix)
    distance = attention_distance(attn, grid, patch, prefix)
    share = prefix_share(attn, grid, prefix)
    assert offsets.shape == (2, 3, 5, 7)
    for b in range(2):
        for k in range(3):
            a = attn[b, k]
            expected = slow_hop_strength(a, grid, prefix)
            np.testing.assert_allclose(s[b, k].numpy(), expected, rtol=1e-12, atol=1e-15)
            assert h[b, k].item() == pytest.approx(slow_entropy(expected), rel=1e-12)
            np.testing.assert_allclose(offsets[b, k].numpy(), slow_offsets(a, grid, prefix), rtol=1e-12, atol=1e-15)
            assert distance[b, k].item() == pytest.approx(slow_distance(a, grid, patch, prefix), rel=1e-12)
            assert share[b, k].item() == pytest.approx(slow_prefix_share(a, grid, prefix), rel=1e-12)


def test_real_register_model_attention_matches_slow_loops(register_handle) -> None:
    attn = extract_attention(register_handle, torch.randn(2, 3, 24, 32)).attn  # [2, 3, 3, 16, 16]
    grid, prefix = register_handle.grid, register_handle.num_prefix_tokens
    assert grid == (3, 4) and prefix == 4
    s = hop_strength(attn, grid, prefix)
    offsets = offset_strength(attn, grid, prefix)
    distance = attention_distance(attn, grid, register_handle.patch_size, prefix)
    for layer, head in [(0, 0), (1, 2), (2, 1)]:
        a = attn[1, layer, head].double()
        np.testing.assert_allclose(s[1, layer, head].numpy(), slow_hop_strength(a, grid, prefix), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(offsets[1, layer, head].numpy(), slow_offsets(a, grid, prefix), rtol=1e-5, atol=1e-7)
        assert distance[1, layer, head].item() == pytest.approx(
            slow_distance(a, grid, register_handle.patch_size, prefix), rel=1e-5
        )


def test_hand_worked_example_on_a_two_by_two_grid() -> None:
    # no prefix; patch 0 attends half to itself, half to its diagonal neighbour (patch 3)
    attn = torch.tensor(
        [[0.5, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64
    )
    s = hop_strength(attn, (2, 2), 0)
    # hop 0: mean of the self-weights (0.5, 1, 1, 1); hop 1: each source has 3 neighbours,
    # patch 0 gives them 0.5 in all, the others 0 -> (0.5 / 3) / 4
    torch.testing.assert_close(s, torch.tensor([3.5 / 4, 0.5 / 12], dtype=torch.float64))
    offsets = offset_strength(attn, (2, 2), 0)
    # only patch 0 has a target at (+1, +1): its weight there, 0.5, is the whole mean
    assert offsets[2, 2].item() == 0.5 and offsets[1, 1].item() == 3.5 / 4 and offsets[0, 0].item() == 0.0
    # patch 0 looks one diagonal step away with half its attention: 0.5 * sqrt(2) * 4 px, / 4 sources
    assert attention_distance(attn, (2, 2), (4, 4), 0).item() == pytest.approx(0.5 * math.sqrt(32) / 4)


def test_distance_ignores_attention_on_prefix_tokens_but_strength_does_not() -> None:
    grid, prefix = (3, 3), 1
    attn = random_attention(10, 10, seed=3)
    sunk = attn.clone()
    sunk[prefix:, prefix:] *= 0.25  # move three quarters of each patch row to CLS
    sunk[prefix:, 0] += 1 - sunk[prefix:].sum(-1)
    torch.testing.assert_close(attention_distance(sunk, grid, (16, 16), prefix), attention_distance(attn, grid, (16, 16), prefix))
    torch.testing.assert_close(hop_strength(sunk, grid, prefix), 0.25 * hop_strength(attn, grid, prefix))
    torch.testing.assert_close(hop_entropy(hop_strength(sunk, grid, prefix)), hop_entropy(hop_strength(attn, grid, prefix)))


@pytest.mark.parametrize(
    "shape, grid, prefix, needle",
    [
        ((2, 13, 12), (3, 4), 1, "last two dimensions must both be 13"),
        ((2, 14, 14), (3, 4), 1, "does not fit a 3x4 grid with 1 prefix tokens"),
        ((13,), (3, 4), 1, "Attention of shape (13,)"),
        ((1, 1), (0, 4), 1, "at least 1x1"),
        ((1, 1), (3, 4), -1, "non-negative"),
    ],
)
def test_bad_shapes_raise_one_sentence(shape, grid, prefix, needle) -> None:
    for metric in (hop_strength, offset_strength, prefix_share):
        with pytest.raises(ValueError) as err:
            metric(torch.rand(*shape), grid, prefix)
        assert needle in str(err.value) and str(err.value).endswith(".")
    with pytest.raises(ValueError, match="does not fit|at least 1x1|non-negative"):
        attention_distance(torch.rand(*shape), grid, (4, 4), prefix)


def test_half_precision_attention_is_summed_in_float32() -> None:
    attn = random_attention(4, 17, 17, seed=5)
    s = hop_strength(attn.to(torch.bfloat16), (4, 4), 1)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s.double(), hop_strength(attn, (4, 4), 1), atol=2e-3, rtol=1e-2)


# --- set-level statistics ----------------------------------------------------------


def _images(n: int, size: tuple[int, int], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_streaming_equals_the_whole_set_at_once(register_handle) -> None:
    images = _images(5, (32, 24))
    calls: list[tuple[int, int]] = []
    stats = strength_statistics(register_handle, images, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]

    attn = extract_attention(register_handle, register_handle.preprocess(images)).attn  # [5, L, H, T, T]
    grid, prefix = register_handle.grid, register_handle.num_prefix_tokens
    s = hop_strength(attn, grid, prefix)
    n, layers, heads = 5, register_handle.num_layers, register_handle.num_heads
    assert stats.hop_strength.shape == (n, layers, heads, 4)
    assert stats.entropy.shape == stats.distance.shape == stats.prefix_share.shape == (n, layers, heads)
    assert stats.offset_mean.shape == (layers, heads, 5, 7)
    np.testing.assert_allclose(stats.hop_strength, s.numpy(), atol=1e-6)
    np.testing.assert_allclose(stats.entropy, hop_entropy(s).numpy(), atol=1e-5)
    np.testing.assert_allclose(stats.distance, attention_distance(attn, grid, (8, 8), prefix).numpy(), atol=1e-4)
    np.testing.assert_allclose(stats.prefix_share, prefix_share(attn, grid, prefix).numpy(), atol=1e-6)
    np.testing.assert_allclose(stats.offset_mean, offset_strength(attn, grid, prefix).mean(0).numpy(), atol=1e-6)


def test_statistics_leave_the_shared_model_as_it_was(tiny_handle) -> None:
    model = tiny_handle.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [b.attn.fused_attn for b in model.blocks]
    strength_statistics(tiny_handle, _images(3, (32, 32)), batch_size=2)
    assert [b.attn.fused_attn for b in model.blocks] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert not model.training


def test_batches_shrink_so_a_batch_of_attention_fits_the_budget() -> None:
    from core.models.handle import wrap_model
    from core.settings import ATTENTION_BUDGET_BYTES, BATCH_CAP
    from helpers.models import tiny_vit

    handle = wrap_model(tiny_vit(img_size=128, patch_size=4), device="cpu")  # 32x32 patches, T = 1025
    per_image = 3 * 3 * 1025 * 1025 * 4
    expected = ATTENTION_BUDGET_BYTES // per_image
    assert 1 <= expected < BATCH_CAP
    calls: list[tuple[int, int]] = []
    stats = strength_statistics(handle, _images(expected + 1, (128, 128)), progress=lambda d, t: calls.append((d, t)))
    assert calls == [(expected, expected + 1), (expected + 1, expected + 1)]
    assert stats.hop_strength.shape == (expected + 1, 3, 3, 32)


def test_no_images_is_a_sentence(tiny_handle) -> None:
    with pytest.raises(ValueError, match="at least one image"):
        strength_statistics(tiny_handle, [])


def test_tables_for_the_charts(register_handle) -> None:
    stats = strength_statistics(register_handle, _images(6, (32, 24), seed=2), batch_size=4)
    heads = stats.heads()
    assert list(heads.columns) == [
        "layer", "head", "head_label", "entropy", "distance", "prefix_share", "top_share", "key_entropy",
        "register_share", "outlier_share",
    ]
    assert len(heads) == 9 and heads["head_label"].iloc[5] == "L1H2"
    assert heads["entropy"].iloc[5] == pytest.approx(float(np.mean([stats.entropy[i, 1, 2] for i in range(6)])), rel=1e-6)
    assert heads.loc[7, "distance"] == pytest.approx(sum(stats.distance[i, 2, 1] for i in range(6)) / 6, rel=1e-6)
    one = stats.heads(3)
    assert one.loc[7, "distance"] == pytest.approx(stats.distance[3, 2, 1])
    assert one.loc[4, "prefix_share"] == pytest.approx(stats.prefix_share[3, 1, 1])

    profile = stats.hop_profile(1, 2, image=4)
    values = sorted(stats.hop_strength[i, 1, 2, 1] for i in range(6))
    # numpy's default quantile interpolates linearly between order statistics
    low_rank = SPREAD_QUANTILES[0] * 5
    expected_low = values[int(low_rank)] + (low_rank - int(low_rank)) * (values[int(low_rank) + 1] - values[int(low_rank)])
    assert list(profile["hop"]) == [0, 1, 2, 3]
    assert profile.loc[1, "strength"] == pytest.approx(stats.hop_strength[4, 1, 2, 1])
    assert profile.loc[1, "low"] == pytest.approx(expected_low, rel=1e-6)
    assert (profile["low"] <= profile["mean"] + 1e-9).all() and (profile["mean"] <= profile["high"] + 1e-9).all()

    spread = stats.entropy_over_images(2, 0)
    assert list(spread["image"]) == list(range(6)) and spread.loc[3, "entropy"] == pytest.approx(stats.entropy[3, 2, 0])

    offsets = stats.offsets(0, 1)
    assert len(offsets) == 5 * 7
    row = offsets[(offsets["dy"] == -2) & (offsets["dx"] == 3)].iloc[0]
    assert row["attention"] == pytest.approx(stats.offset_mean[0, 1, 0, 6])


# --- charts ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_stats(demo_handle):
    from core.inputs.images import demo_digits_set

    images = demo_digits_set(0, 0.2).pil_images()[:8]
    return strength_statistics(demo_handle, images, batch_size=8)


def test_heads_chart_is_a_clickable_dot_per_head(demo_stats) -> None:
    spec = charts.heads_by_layer_chart(demo_stats.heads(), "entropy", "Head entropy across layers", "entropy (nats)", (2, 3)).to_dict()
    dots, ring = spec["layer"]
    assert dots["mark"]["type"] == "circle"
    assert dots["encoding"]["x"]["field"] == "layer" and dots["encoding"]["y"]["field"] == "entropy"
    assert dots["encoding"]["color"]["field"] == "layer"
    assert dots["encoding"]["xOffset"]["field"] == "head"
    assert {t["field"] for t in dots["encoding"]["tooltip"]} >= {"head_label", "entropy"}
    assert spec["params"][0]["name"] == HEAD_SELECTION
    assert spec["params"][0]["select"]["fields"] == ["layer", "head"]
    ring_rows = spec["datasets"][ring["data"]["name"]]
    assert [r["head_label"] for r in ring_rows] == ["L2H3"]
    assert spec["title"]["text"] == "Head entropy across layers"


def test_hop_profile_chart_bars_band_and_mean(demo_stats) -> None:
    spec = charts.hop_profile_chart(demo_stats.hop_profile(1, 2, 0), "L1H2").to_dict()
    kinds = [layer["mark"]["type"] for layer in spec["layer"]]
    assert kinds == ["bar", "rule", "tick"]
    bars, band, mean = spec["layer"]
    assert bars["encoding"]["y"]["field"] == "strength" and bars["encoding"]["x"]["field"] == "hop"
    assert band["encoding"]["y"]["field"] == "low" and band["encoding"]["y2"]["field"] == "high"
    assert mean["encoding"]["y"]["field"] == "mean"
    assert "L1H2" in spec["title"]["text"]
    assert len(spec["datasets"][spec["data"]["name"]]) == 8


def test_entropy_distribution_marks_the_focus_images_bar_not_a_rule(demo_stats) -> None:
    entropies = demo_stats.entropy_over_images(0, 0)
    focus = float(entropies["entropy"].min())  # the smallest value: a rule there would sit on the axis
    spec = charts.entropy_distribution_chart(entropies, focus_value=focus, head_label="L0H0").to_dict()
    assert spec["mark"]["type"] == "bar" and "layer" not in spec  # no rule anywhere
    bins = pd.DataFrame(spec["datasets"][spec["data"]["name"]])
    assert (bins["images"] > 0).all() and bins["images"].sum() == demo_stats.num_images  # no empty bar
    assert bins["focus"].tolist() == [True] + [False] * (len(bins) - 1)
    assert bins["start"].iloc[0] == pytest.approx(focus) and bins["end"].iloc[-1] == pytest.approx(entropies["entropy"].max())
    assert spec["encoding"]["y2"] == {"datum": 0}  # upright bars: x and x2 alone would lay them down
    assert spec["encoding"]["color"]["condition"]["value"] == FOCUS_RED


def test_distribution_bins_count_every_value_once_and_find_the_focus() -> None:
    values = np.array([0.0, 0.1, 0.1, 0.5, 1.0, np.nan])
    bins = charts.distribution_bins(values, 0.52, (0.0, 1.0))
    assert bins["images"].sum() == 5  # the NaN is left out; 1.0 falls in the last bin
    assert bins.loc[bins["focus"], "start"].item() == pytest.approx(0.5)
    same = charts.distribution_bins(np.full(4, 2.0), 2.0)  # every image alike
    assert same["images"].sum() == 4 and same.loc[same["focus"], "images"].item() == 4


def test_offset_heatmap_puts_up_on_top(demo_stats) -> None:
    spec = charts.offset_heatmap(demo_stats.offsets(0, 0), "L0H0 · set mean").to_dict()
    assert spec["mark"]["type"] == "rect"
    enc = spec["encoding"]
    assert enc["x"]["field"] == "dx" and enc["y"]["field"] == "dy" and enc["color"]["field"] == "attention"
    assert enc["y"]["sort"] == "ascending"  # dy = -(rows - 1) (above the source) first, i.e. on top
    assert len(spec["datasets"][spec["data"]["name"]]) == 15 * 15


def test_concentration_charts_top_share_with_its_uniform_line_and_a_fixed_share_axis(demo_stats) -> None:
    tokens = 1 + 8 * 8
    spec = charts.heads_by_layer_chart(
        demo_stats.heads(), "top_share", "Attention on one single token", "top-key share", (0, 1),
        reference=(1 / tokens, "uniform attention"),
    ).to_dict()
    rule = spec["layer"][0]
    assert rule["mark"]["type"] == "rule" and spec["datasets"][rule["data"]["name"]][0]["top_share"] == pytest.approx(1 / 65)
    # two notes on a page: a line each, so a third of a wide page does not cut them short
    assert spec["title"]["subtitle"] == ["focus head L0H1 ringed in red", "dashed: uniform attention"]
    shares = demo_stats.over_images("top_share", 0, 1)
    focus = float(shares["top_share"][3])
    spread = charts.distribution_chart(shares, "top_share", focus, "Top-key share · L0H1", "top-key share", domain=(0.0, 1.0)).to_dict()
    assert spread["encoding"]["x"]["scale"]["domain"] == [0.0, 1.0]
    assert spread["encoding"]["y"]["axis"]["tickMinStep"] == 1  # whole images
    bins = pd.DataFrame(spread["datasets"][spread["data"]["name"]])
    start = bins.loc[bins["focus"], "start"].item()  # bins of 0.05 on the fixed axis
    assert start <= focus < start + 0.05 and start == pytest.approx(round(start / 0.05) * 0.05)


def test_token_norms_chart_marks_the_outliers_and_the_threshold() -> None:
    from ui.strength import norms_table

    rng = np.random.default_rng(0)
    norms = 1 + rng.random((4, 1 + 16))  # entering 3 blocks, then leaving the last: CLS and 4x4 patches
    norms[1, 3] = 0.0  # a zero patch norm is an ordinary ratio, not a division by zero
    norms[2:, 5] = 30.0  # one patch leaves blocks 1 and 2 at about 20x the median
    table = norms_table(norms, ("CLS",))
    assert len(table) == 4 * 17 and set(table["name"]) == {"CLS", "patch"}
    assert list(dict.fromkeys(table["stage"])) == ["in", "0", "1", "2"]
    assert table["outlier"].sum() == 2 and set(table[table["outlier"]]["stage"]) == {"1", "2"}
    spec = charts.token_norms_chart(table, 4.0, focus_layer=2).to_dict()
    focus, boxes, rule, dots, outliers = spec["layer"]
    # block 2 attends to what leaves block 1
    assert spec["datasets"][focus["data"]["name"]] == [{"stage": "1"}]
    assert focus["encoding"]["x"]["sort"] == ["in", "0", "1", "2"]
    assert [layer["mark"]["type"] for layer in boxes["layer"]] == ["rule", "bar", "tick"]
    assert boxes["layer"][0]["encoding"]["y"]["scale"]["type"] == "log"
    assert spec["datasets"][rule["data"]["name"]][0]["ratio"] == 4.0
    assert [row["name"] for row in spec["datasets"][dots["data"]["name"]]] == ["CLS"] * 4
    assert len(spec["datasets"][outliers["data"]["name"]]) == 2
    assert "purple: 2 outliers" in spec["title"]["subtitle"][1]
