"""Memory: a model whose weights, or one image's analysis, would not fit the server's budget is refused at load,
before its weights are read; an allocator failure during an analysis reaches the user as one sentence."""

from __future__ import annotations

import re
import time
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import core.models.handle
import core.models.load
import core.models.memory
import core.models.transformers
from core import settings
from core.errors import CheckpointRejected, InvalidSetting, ModelTooLarge, OutOfMemory
from core.measures.attention import extract_attention, iter_attention, stream_norms
from core.measures.attribution import faithfulness_curves, relevance_maps
from core.measures.importance import (
    head_importance_tables,
    partial_pruning,
    pruning_curve,
)
from core.measures.inference import predict_images
from core.measures.patterns import sample_maps
from core.measures.strength import strength_statistics
from core.models.handle import wrap_model
from core.models.load import DEMO_NAME, load_model
from core.models.memory import check_fits, out_of_memory_as_sentence, shape_of
from core.models.transformers import load_transformers
from core.pipeline.analysis import run_pass
from helpers.memory import ALLOCATOR_TEXT, BUDGET_MB, transformers_zip
from helpers.models import tiny_vit


@pytest.fixture(autouse=True)
def budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.MEMORY_ENV, str(BUDGET_MB))


@pytest.fixture
def weights_never_read(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if the weights are read or a real model is built; returns the ZIP members opened."""
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def watched_open(self, name, mode="r", *args, **kwargs):
        if mode == "r":  # writing a test's own ZIP opens its members too
            opened.append(name if isinstance(name, str) else name.filename)
        return real_open(self, name, mode, *args, **kwargs)

    def never(*_args, **_kwargs):
        raise AssertionError("the weights were read or the model built before the refusal")

    monkeypatch.setattr(zipfile.ZipFile, "open", watched_open)
    monkeypatch.setattr(core.models.transformers, "_read_checkpoint", never)
    monkeypatch.setattr(core.models.transformers, "_build_handle", never)
    return opened


def _needed_gb(sentence: str) -> float:
    return float(re.search(r"needs about ([\d.]+) GB", sentence).group(1))


# --- refused at load ---------------------------------------------------------------------------


def test_12_layers_x_16_heads_at_80x80_patches_are_refused_from_config_json_alone(weights_never_read) -> None:
    data = transformers_zip(12, 16)
    began = time.perf_counter()
    with pytest.raises(ModelTooLarge) as refused:
        load_transformers(data, device="cpu")
    seconds = time.perf_counter() - began
    sentence = str(refused.value)
    assert "'big' at 320 px sees 6,401 tokens in each of its 12 layers x 16 heads" in sentence, sentence
    # the attention of every layer alone is 12 x 16 x 6,401² float32 = 29.3 GiB; the passes keep more
    assert _needed_gb(sentence) >= 12 * 16 * 6401**2 * 4 / 2**30
    assert "budget of 6.0 GB (HEADSCOPE_MEMORY_MB)" in sentence and "choose a smaller input size or a smaller model" in sentence
    assert not any(name.endswith("model.safetensors") for name in weights_never_read), (weights_never_read, seconds)


def test_2_layers_x_4_heads_at_80x80_patches_need_more_than_a_quarter_of_24_gib(weights_never_read) -> None:
    """Refused at 6 GiB: partial pruning masks six copies of one layer's 4 x 6,401² attention (655 MB each with its
    mask and weights: 12.3 GB), though the first pass alone grows by about 4 GB; a 16 GiB budget admits it."""
    with pytest.raises(ModelTooLarge) as refused:
        load_transformers(transformers_zip(2, 4), device="cpu")
    assert "6,401 tokens in each of its 2 layers x 4 heads" in str(refused.value)
    assert 6.0 < _needed_gb(str(refused.value)) < 16.0


def test_a_larger_budget_admits_what_a_smaller_one_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.MEMORY_ENV, str(16 * 1024))
    # past the memory check, the weights are read: this file's are no safetensors
    with pytest.raises(CheckpointRejected):
        load_transformers(transformers_zip(2, 4), device="cpu")


def test_declared_weights_over_the_budget_are_refused_before_the_weights_are_read(weights_never_read) -> None:
    # 24 blocks 4,096 wide with 16,384 hidden: 4.8 billion weights, on a 2 x 2 patch grid (5 tokens)
    data = transformers_zip(24, 32, width=4096, hidden=16384, side=32, patch=16)
    with pytest.raises(ModelTooLarge) as refused:
        load_transformers(data, device="cpu")
    sentence = str(refused.value)
    weights = 24 * (4 * 4096**2 + 2 * 4096 * 16384)
    declared = int(re.search(r"declares ([\d,]+) weights", sentence).group(1).replace(",", ""))
    assert weights < declared < weights * 1.01  # embeddings, norms and the classifier are the rest
    assert "as float32), and loading them needs about" in sentence and sentence.endswith("choose a smaller model.")
    assert not any(name.endswith("model.safetensors") for name in weights_never_read)


def test_a_small_budget_refuses_a_normal_tiny_model_and_the_previous_one_keeps_working(
    monkeypatch: pytest.MonkeyPatch, tiny_handle
) -> None:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    before = predict_images(tiny_handle, [image]).logits
    monkeypatch.setenv(settings.MEMORY_ENV, "16")
    with pytest.raises(ModelTooLarge) as refused:
        load_model("vit_tiny_patch16_224", pretrained=False, device="cpu")
    assert re.search(r"'vit_tiny_patch16_224' declares 5,\d{3},\d{3} weights \(21\.8 MB as float32\)", str(refused.value))
    assert "budget of 16 MB" in str(refused.value)
    monkeypatch.setattr(core.models.memory, "memory_budget", lambda: 2**16)
    with pytest.raises(ModelTooLarge, match=r"'big' declares 75,082 weights \(293\.3 KB as float32\).* budget of 64 KB"):
        load_transformers(transformers_zip(2, 4, side=32), device="cpu")  # 2 layers, 64 wide, 65 tokens
    np.testing.assert_array_equal(predict_images(tiny_handle, [image]).logits, before)


def test_the_default_budget_loads_a_normal_model() -> None:
    handle = load_model("vit_tiny_patch16_224", pretrained=False, device="cpu")
    assert handle.num_tokens == 197


def test_the_built_in_models_fit_at_their_sizes_and_dinov2_s_is_refused_at_1022_px(
    demo_handle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.models import dinov2

    demo = shape_of(demo_handle.model)  # the demo is the app's fallback: loaded without a check, it needs little
    assert demo_handle.name == DEMO_NAME and demo.load_bytes + demo.image_bytes < 64 * 2**20
    for side in (224, 518):  # 518 px: 1,370 tokens, 540 MB of attention per image
        shape = check_fits(lambda: core.models.load._create_supported(dinov2.TIMM_NAME, num_classes=0, img_size=side), "dinov2-s")
        assert shape.image_bytes >= 2 * shape.layers * shape.heads * shape.tokens**2 * 4  # the attention and its gradient
    monkeypatch.setattr(dinov2, "prepare_weights", lambda **_: pytest.fail("the weights were prepared before the refusal"))
    with pytest.raises(ModelTooLarge, match=r"'dinov2-s' at 1022 px sees 5,330 tokens in each of its 12 layers x 6 heads"):
        load_model("dinov2-s", img_size=1022)


def test_the_budget_is_a_quarter_of_the_memory_at_most_16_gib_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.MEMORY_ENV)
    monkeypatch.setattr(settings, "_physical_memory", lambda: 24 * 2**30)
    assert settings.memory_budget() == 6 * 2**30
    monkeypatch.setattr(settings, "_physical_memory", lambda: 256 * 2**30)
    assert settings.memory_budget() == 16 * 2**30
    monkeypatch.setenv(settings.MEMORY_ENV, "40000")
    assert settings.memory_budget() == 40000 * 2**20
    for wrong in ("6GB", "-5", "0"):
        monkeypatch.setenv(settings.MEMORY_ENV, wrong)
        with pytest.raises(InvalidSetting, match="HEADSCOPE_MEMORY_MB must be a whole number of megabytes"):
            settings.memory_budget()


def test_the_machine_memory_is_read_within_its_container() -> None:
    import os

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < settings._physical_memory() <= physical


# --- allocator failures during an analysis -----------------------------------------------------


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _x(handle) -> torch.Tensor:
    return handle.preprocess([_image()])


# every core call a page (or the staged analysis) makes that runs the model
CALLS = {
    "predict_images": lambda h: predict_images(h, [_image()]),
    "run_pass": lambda h: run_pass(h, [_image()], None),
    "extract_attention": lambda h: extract_attention(h, _x(h)),
    "iter_attention": lambda h: list(iter_attention(h, _x(h))),
    "stream_norms": lambda h: stream_norms(h, _x(h)),
    "strength_statistics": lambda h: strength_statistics(h, [_image()]),
    "sample_maps": lambda h: sample_maps(h, [_image()], max_maps=9),
    "head_importance_tables": lambda h: head_importance_tables(h, _x(h)),
    "partial_pruning": lambda h: partial_pruning(h, _x(h), 0, 0),
    "relevance_maps": lambda h: relevance_maps(h, _x(h)),
    "faithfulness_curves": lambda h: faithfulness_curves(h, _x(h), torch.rand(1, 16), steps=2),
}
FAILURES = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB"),
    "DefaultCPUAllocator": lambda: RuntimeError(ALLOCATOR_TEXT),
    "MemoryError": MemoryError,
}


def _failing_block(handle, failure) -> None:
    def forward(*_args, **_kwargs):
        raise failure()

    handle.model.blocks[1].forward = forward


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("failure", list(FAILURES))
def test_an_allocator_failure_in_a_pass_becomes_one_sentence(tiny_handle, call: str, failure: str) -> None:
    _failing_block(tiny_handle, FAILURES[failure])
    with pytest.raises(OutOfMemory) as caught:
        CALLS[call](tiny_handle)
    assert str(caught.value) == (
        "The server ran out of memory analysing VisionTransformer (17 tokens per image in 3 layers x 3 heads); try "
        "again when fewer analyses run, or load the model at a smaller input size or pick a smaller one."
    )
    assert type(caught.value.__cause__) is type(FAILURES[failure]())
    # the failed frames (and the tensors they held) are let go; the hooks are gone, the model runs again
    assert caught.value.__cause__.__traceback__ is None
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in tiny_handle.model.modules())
    del tiny_handle.model.blocks[1].forward
    assert predict_images(tiny_handle, [_image()]).logits.shape == (1, 5)


def test_a_real_allocator_refusal_becomes_the_sentence(tiny_handle) -> None:
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x + torch.empty(2**50)  # 4 PiB: the allocator refuses at once, nothing is allocated

    tiny_handle.model.blocks[0].forward = forward
    with pytest.raises(OutOfMemory, match="The server ran out of memory analysing VisionTransformer") as caught:
        relevance_maps(tiny_handle, _x(tiny_handle))
    assert "DefaultCPUAllocator" in str(caught.value.__cause__)


def test_a_failure_that_is_not_about_memory_stays_what_it_is(tiny_handle) -> None:
    _failing_block(tiny_handle, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as caught:
        predict_images(tiny_handle, [_image()])
    assert not isinstance(caught.value, OutOfMemory)


def test_the_pruning_curve_and_the_load_probe_say_it_too(tiny_handle, monkeypatch: pytest.MonkeyPatch) -> None:
    table = head_importance_tables(tiny_handle, _x(tiny_handle), metrics=["layer_impact"]).overall
    _failing_block(tiny_handle, FAILURES["DefaultCPUAllocator"])
    with pytest.raises(OutOfMemory):
        pruning_curve(tiny_handle, _x(tiny_handle), table, steps=2)

    def out_of_memory(*_args, **_kwargs):
        raise RuntimeError(ALLOCATOR_TEXT)

    monkeypatch.setattr(core.models.handle, "locked_forward", out_of_memory)
    with pytest.raises(OutOfMemory, match=r"analysing VisionTransformer \(17 tokens per image"):
        wrap_model(tiny_vit(), device="cpu")


def test_without_a_model_among_the_arguments_the_sentence_still_says_what_to_do() -> None:
    @out_of_memory_as_sentence
    def allocate() -> None:
        raise MemoryError

    with pytest.raises(OutOfMemory, match=r"^The server ran out of memory during the analysis; try again when"):
        allocate()
