"""The case study's sentences on sink heads, high-norm tokens and registers, from hand-made statistics."""

from __future__ import annotations

import numpy as np
import pytest

from core.measures.strength import StrengthStats
from core.models.handle import prefix_names
from core.study.narrative import (
    SINK_SHARE,
    _locality_sentence,
    _sink_sentence,
    concentration_sentences,
    sink_summary,
)

GRID = (16, 16)


def _stats(n: int = 17, layers: int = 2, heads: int = 3, prefix: int = 1) -> StrengthStats:
    """Statistics where every head spreads its attention (top share 0.05) and no token has a high norm."""
    per_head = (n, layers, heads)
    rng = np.random.default_rng(0)
    return StrengthStats(
        hop_strength=np.full((*per_head, 16), 1 / 260, dtype=np.float32),
        entropy=np.full(per_head, 2.7, dtype=np.float32),
        distance=np.full(per_head, 100.0, dtype=np.float32),
        prefix_share=np.full(per_head, 0.1, dtype=np.float32),
        offset_mean=np.zeros((layers, heads, 31, 31), dtype=np.float32),
        grid=GRID,
        top_share=np.full(per_head, 0.05, dtype=np.float32),
        key_entropy=np.full(per_head, 4.5, dtype=np.float32),
        sink=rng.integers(0, prefix + 256, per_head).astype(np.int32),
        register_share=np.zeros(per_head, dtype=np.float32),
        outlier_share=np.zeros(per_head, dtype=np.float32),
        outliers=np.zeros((n, layers), dtype=np.int32),
        norm_ratio=np.full((n, layers), 1.8, dtype=np.float32),
    )


def test_a_head_that_sends_the_patches_attention_to_one_patch_is_a_sink_not_a_global_head() -> None:
    stats = _stats()
    patch = 1 + 8 * 16 + 2  # row 9, column 3 counted from 1
    stats.sink[:15, 0, 2] = patch
    stats.top_share[:15, 0, 2] = 0.98
    stats.key_entropy[:, 0, 2] = 0.1
    sink = sink_summary(stats, 0, 2, prefix_names(1))
    assert sink.is_sink and sink.strong == 15 and sink.distinct == 1 and sink.images == 15
    sentence = _sink_sentence("L0H2", sink)
    assert sentence.startswith("L0H2 sends 98% of the patches' attention to one token, patch (row 9, column 3), on 15 of 17 images")
    assert sentence.endswith("a sink, not a global head.")
    locality = _locality_sentence(72, 72, 112.0, 2.47, 16, 0.05, 0.1, sink)
    assert "global" not in locality.replace("not a global", "") and "lands on one token" in locality
    assert "among the most global third" in _locality_sentence(72, 72, 112.0, 2.47, 16, 0.05, 0.1, None)


def test_a_sink_that_moves_between_images_and_a_spread_head() -> None:
    stats = _stats(n=6)
    stats.top_share[:, 1, 0] = [0.9, 0.8, 0.7, 0.95, 0.6, 0.2]
    stats.sink[:, 1, 0] = [5, 6, 5, 7, 8, 9]
    sink = sink_summary(stats, 1, 0, prefix_names(1))
    assert sink.strong == 5 and sink.distinct == 4 and sink.images == 2
    assert sink.share == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.95, 0.6, 0.2]), abs=1e-6)
    assert sink.strong_share == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.95, 0.6]), abs=1e-6)
    assert "4 different tokens, most often patch (row 1, column 5) (2 images)" in _sink_sentence("L1H0", sink)
    spread = sink_summary(stats, 1, 1, prefix_names(1))
    assert not spread.is_sink and spread.share < SINK_SHARE
    assert "spreads its patches' attention" in _sink_sentence("L1H1", spread)


def test_a_prefix_sink_is_named_and_the_set_sentences_count_sinks_norms_and_registers() -> None:
    names = prefix_names(5, 4)
    stats = _stats(prefix=5)
    stats.sink[:, 1, 1] = 3  # register 3
    stats.top_share[:, 1, 1] = 0.7
    stats.register_share[:, 1] = 0.4
    stats.outliers[4:, 1] = 2
    stats.norm_ratio[4:, 1] = 11.0
    stats.outlier_share[:, 1, :] = 0.35
    sink = sink_summary(stats, 1, 1, names)
    assert sink.on_prefix and sink.token == "register 3"
    locality = _locality_sentence(60, 72, 80.0, 2.6, 16, 0.1, 0.75, sink)
    assert locality.startswith("It is a sink head: 70% of its patches' attention lands on one token, register 3")
    assert "describe only the rest" in locality and "global" not in locality
    assert "give each other no attention" in _locality_sentence(60, 72, 0.0, 0.0, 16, float("nan"), 1.0, sink)
    text = concentration_sentences(stats, names)
    assert "1 of 6 heads is a sink head" in text and "L1H1 (70%, always register 3)" in text
    assert "first leave block 1; block 1's output has them on the most images, 13 of 17 (2.0 on each of those)" in text
    assert "up to 35% of the patches' attention in a layer (layer 1)" in text
    assert "The 4 registers receive 20% of the patches' attention on average, most in layer 1 (40%)" in text
    stats.top_share[:, 0, 0] = 0.6  # a second sink head
    assert "2 of 6 heads are sink heads" in concentration_sentences(stats, names)
    plain = concentration_sentences(_stats(), prefix_names(1))
    assert plain.startswith("No head sends 50% or more") and "no high-norm artefact tokens" in plain
    assert "largest 1.8 times" in plain and "registers" not in plain
