"""Hostile checkpoints are refused from what they declare, before the cost they declare is paid.

Each file is small; each test makes the expensive step (building a real model, inflating
or loading tensors, parsing a header) fail the test if it is reached, so a refusal that
came too late would show.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from types import SimpleNamespace

import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from safetensors.torch import save

import core.models.checkpoint
from core.errors import CheckpointRejected, ModelUnavailable, NonFiniteOutputs
from core.measures.attention import extract_attention
from core.measures.inference import predict_images
from core.models.handle import wrap_model
from core.models.load import load_model
from helpers.models import tiny_vit

_create_model = timm.create_model  # the real one: the fixtures below replace timm's


def _state(name: str = "test_vit", **kwargs) -> dict[str, torch.Tensor]:
    model = _create_model(name, pretrained=False, **kwargs)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def only_meta_models(monkeypatch) -> list[int | None]:
    """Fail the test if a model is built anywhere but on the meta device; record the widths built."""
    real = timm.create_model
    widths: list[int | None] = []

    def create(name, *args, **kwargs):
        if torch.empty(()).device.type != "meta":
            pytest.fail("a real model was built before the checkpoint was refused")
        widths.append(kwargs.get("num_classes"))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create)
    return widths


@pytest.fixture
def no_tensor_loading(monkeypatch) -> None:
    """Fail the test if safetensors or torch.load reads any tensor."""

    def fail(*args, **kwargs):
        pytest.fail("the checkpoint's tensors were loaded before it was refused")

    monkeypatch.setattr(safetensors.torch, "load", fail)
    monkeypatch.setattr(safetensors.torch, "load_file", fail)
    monkeypatch.setattr(torch, "load", fail)


def _safetensors(entries: dict, data: bytes = b"") -> bytes:
    header = json.dumps(entries, separators=(",", ":")).encode()
    return struct.pack("<Q", len(header)) + header + data


# --- safetensors -----------------------------------------------------------------------


def test_a_dtype_outside_the_allow_list_is_refused_from_the_header(no_tensor_loading, only_meta_models) -> None:
    state = _state()
    state["blocks.0.norm1.weight"] = state["blocks.0.norm1.weight"].to(torch.float8_e4m3fn)
    data = save(state)
    with pytest.raises(CheckpointRejected, match=r"'blocks\.0\.norm1\.weight' as F8_E4M3, which HeadScope does not load"):
        load_model("test_vit", checkpoint=data)


def test_a_huge_classifier_is_refused_before_any_model_is_built(no_tensor_loading, only_meta_models) -> None:
    data = _safetensors({"head.weight": {"dtype": "F32", "shape": [2_000_000, 0], "data_offsets": [0, 0]}})
    assert len(data) < 100
    with pytest.raises(CheckpointRejected, match=r"2,000,000 outputs; HeadScope loads at most 100,000 classes"):
        load_model("test_vit", checkpoint=data)
    assert 2_000_000 not in only_meta_models


def test_declared_shapes_are_compared_with_the_architecture_on_the_meta_device(
    no_tensor_loading, only_meta_models
) -> None:
    # a width within the bound but an embedding the architecture does not have: no real model either
    data = _safetensors({"head.weight": {"dtype": "F32", "shape": [90_000, 0], "data_offsets": [0, 0]}})
    with pytest.raises(CheckpointRejected, match="does not fit architecture 'test_vit'"):
        load_model("test_vit", checkpoint=data)
    # the first meta copy reads the input size the model runs at, the second weighs its memory at that size,
    # the third is the architecture check
    assert only_meta_models == [None, None, None, 90_000]


def test_declared_sizes_must_match_the_data_they_cover(no_tensor_loading, only_meta_models) -> None:
    entries = {"head.weight": {"dtype": "F32", "shape": [1000, 64], "data_offsets": [0, 1000 * 64 * 4]}}
    with pytest.raises(CheckpointRejected, match="damaged or truncated"):
        load_model("test_vit", checkpoint=_safetensors(entries, b"\0" * 64))


def test_an_integer_tensor_in_place_of_a_float_weight_is_refused(no_tensor_loading, only_meta_models) -> None:
    state = _state()
    state["head.weight"] = state["head.weight"].to(torch.int8)
    with pytest.raises(CheckpointRejected, match="stores 'head.weight' as torch.int8"):
        load_model("test_vit", checkpoint=save(state))


def test_an_oversized_header_is_refused_before_it_is_parsed(monkeypatch, no_tensor_loading) -> None:
    def no_parsing(*args, **kwargs):
        pytest.fail("the header was parsed")

    monkeypatch.setattr(core.models.checkpoint, "json", SimpleNamespace(loads=no_parsing))
    entry = '"t{}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
    header = ("{" + ",".join(entry.format(i) for i in range(20_000)) + "}").encode()
    assert len(header) > core.models.checkpoint._SAFETENSORS_MAX_HEADER
    with pytest.raises(CheckpointRejected, match=r"safetensors header is 1 MB, far more than any ViT's"):
        load_model("test_vit", checkpoint=struct.pack("<Q", len(header)) + header)
    # a header under the length bound with far more tensors than the architecture: refused from its braces
    header = ("{" + ",".join(entry.format(i) for i in range(2_000)) + "}").encode()
    with pytest.raises(CheckpointRejected, match=r"declares far more tensors than the 80 the architecture has"):
        load_model("test_vit", checkpoint=struct.pack("<Q", len(header)) + header)


def test_a_header_with_more_tensors_than_the_architecture_is_refused_after_parsing(no_tensor_loading) -> None:
    entries = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(200)}
    # no head.weight: compared with the backbone layout, 80 tensors less the classifier's two
    with pytest.raises(CheckpointRejected, match=r"78 missing, 200 unexpected and 0 mis-shaped"):
        load_model("test_vit", checkpoint=_safetensors(entries))


# --- PyTorch archives ------------------------------------------------------------------


def _rezip(
    data: bytes,
    deflate: set[str] = frozenset(),
    sizes: dict[str, int] | None = None,
    entries: int | None = None,
    extra_entries: int = 0,
) -> bytes:
    """Rewrite a torch.save archive in its own layout (zip64 record, locator, end record, no comment).

    ``deflate``: record names to compress; ``sizes``: record names whose declared size is
    replaced; ``entries``: an entry count for the zip64 record to claim; ``extra_entries``:
    directory entries appended beyond the real ones (the counts still claim the real ones).
    """
    sizes = sizes or {}
    source = zipfile.ZipFile(io.BytesIO(data))
    out, directory = bytearray(), bytearray()
    for info in source.infolist():
        raw = source.read(info.filename)
        method, body = (8, zlib.compress(raw)[2:-4]) if info.filename in deflate else (0, raw)
        usize = sizes.get(info.filename, len(raw))
        csize = len(body) if method else usize
        name = info.filename.encode()
        fields = (20, 0, method, 0, 0, zlib.crc32(raw), csize, usize, len(name))
        directory += struct.pack("<4s2H4HL2L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, len(out)) + name
        out += struct.pack("<4s5HL2L2H", b"PK\x03\x04", *fields, 0) + name + body
    for n in range(extra_entries):
        name = f"x/{n}".encode()
        directory += struct.pack("<4s2H4HL2L5H2L", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0) + name
    count = entries if entries is not None else len(source.infolist())
    offset = len(out)
    out += directory
    record = len(out)
    out += struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), offset)
    out += struct.pack("<4sLQL", b"PK\x06\x07", 0, record, 1)
    small = len(source.infolist())
    out += struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, small, small, len(directory), offset, 0)
    return bytes(out)


def _storage_names(data: bytes) -> list[str]:
    return [n for n in zipfile.ZipFile(io.BytesIO(data)).namelist() if "/data/" in n]


def test_the_archive_rewriter_keeps_a_loadable_checkpoint() -> None:
    # the rewrites below differ from a real checkpoint only in what each test changes
    source = timm.create_model("test_vit", pretrained=False, num_classes=3)
    data = _rezip(_torch_bytes(source.state_dict()))
    handle = load_model("test_vit", checkpoint=data, device="cpu")
    assert torch.equal(handle.model.head.weight, source.head.weight)


def test_a_compressed_storage_record_is_refused_before_torch_load(no_tensor_loading, only_meta_models) -> None:
    original = _torch_bytes(_state())
    data = _rezip(original, deflate={_storage_names(original)[0]})
    with pytest.raises(CheckpointRejected, match="not one written by torch.save"):
        load_model("test_vit", checkpoint=data)


def test_declared_record_sizes_must_fit_in_the_file(no_tensor_loading, only_meta_models) -> None:
    original = _torch_bytes(_state())
    data = _rezip(original, sizes={_storage_names(original)[0]: 2**30})
    with pytest.raises(CheckpointRejected, match="not one written by torch.save"):
        load_model("test_vit", checkpoint=data)


def test_the_record_count_is_bounded_from_every_end_record(no_tensor_loading, only_meta_models) -> None:
    # the classic end record claims the real count; only the zip64 record claims millions
    data = _rezip(_torch_bytes(_state()), entries=4_000_000)
    with pytest.raises(CheckpointRejected, match=r"declares 4,000,000 records; a checkpoint of this architecture has at most 704"):
        load_model("test_vit", checkpoint=data)


def test_the_directory_size_is_bounded_whatever_count_the_end_records_claim(
    monkeypatch, no_tensor_loading, only_meta_models
) -> None:
    # zipfile reads entries until the declared directory size is used up, not up to the count
    data = _rezip(_torch_bytes(_state()), extra_entries=20_000)
    monkeypatch.setattr(core.models.checkpoint.zipfile, "ZipFile", lambda *a, **k: pytest.fail("zipfile parsed the directory"))
    with pytest.raises(CheckpointRejected, match=r"a checkpoint of this architecture has at most 704"):
        load_model("test_vit", checkpoint=data)


@pytest.mark.parametrize("damage", ["comment", "prepended", "repacked"])
def test_archives_not_laid_out_as_torch_save_writes_them_are_refused(
    damage: str, no_tensor_loading, only_meta_models
) -> None:
    data = _torch_bytes(_state())
    if damage == "comment":
        data = data[:-2] + struct.pack("<H", 4) + b"note"
    elif damage == "prepended":
        data = b"PK\x03\x04" + b"\0" * 60 + data  # offsets now differ between zipfile and PyTorch
    else:  # Python's zipfile writes no zip64 record for a small archive, and compresses here
        buffer = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
            for info in source.infolist():
                out.writestr(info.filename, source.read(info.filename))
        data = buffer.getvalue()
    with pytest.raises(CheckpointRejected):
        load_model("test_vit", checkpoint=data)


def test_an_oversized_pickle_is_refused_before_torch_load(monkeypatch, no_tensor_loading, only_meta_models) -> None:
    monkeypatch.setattr(core.models.checkpoint, "_PICKLE_BYTES_EXTRA", 0)
    monkeypatch.setattr(core.models.checkpoint, "_PICKLE_BYTES_PER_TENSOR", 64)  # the real pickle holds ~170 bytes a tensor
    with pytest.raises(CheckpointRejected, match="pickle is 0 MB, far more than a checkpoint of this architecture needs"):
        load_model("test_vit", checkpoint=_torch_bytes(_state()))


def test_a_tensor_repeating_one_stored_value_is_refused_before_any_model_is_built(only_meta_models) -> None:
    state = _state()
    state["head.weight"] = torch.zeros(1).expand(5_000, 64)  # stride 0: 4 bytes stored, 1.3 MB declared
    data = _torch_bytes(state)
    assert len(data) < 2 * 2**20
    with pytest.raises(CheckpointRejected, match="'head.weight' declares more values than it stores"):
        load_model("test_vit", checkpoint=data)


def test_sparse_tensors_are_refused(only_meta_models) -> None:
    state = _state()
    state["head.bias"] = state["head.bias"].to_sparse()
    with pytest.raises(CheckpointRejected, match="'head.bias' as a torch.sparse_coo"):
        load_model("test_vit", checkpoint=_torch_bytes(state))


def test_a_training_checkpoint_with_optimizer_and_ema_still_loads() -> None:
    model = timm.create_model("test_vit", pretrained=False, num_classes=4)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 160, 160)).sum().backward()
    optimizer.step()
    data = _torch_bytes(
        {"epoch": 2, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "state_dict_ema": model.state_dict()}
    )
    assert len(zipfile.ZipFile(io.BytesIO(data)).infolist()) > 4 * len(model.state_dict())
    handle = load_model("test_vit", checkpoint=data, device="cpu")
    assert torch.equal(handle.model.head.weight, model.head.weight)


# --- non-finite outputs ----------------------------------------------------------------


def test_weights_that_overflow_are_refused_at_load() -> None:
    state = {k: v * 1e30 if v.is_floating_point() else v for k, v in _state().items()}
    assert all(torch.isfinite(v).all() for v in state.values())
    with pytest.raises(CheckpointRejected, match="checkpoint's weights make the model output NaN or infinite values"):
        load_model("test_vit", checkpoint=save(state))


def test_a_wrapped_model_whose_outputs_overflow_is_refused() -> None:
    model = tiny_vit()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1e30)
    with pytest.raises(ModelUnavailable, match="model's weights make it output NaN or infinite values"):
        wrap_model(model, device="cpu")
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_outputs_that_overflow_on_the_users_images_are_refused_at_the_first_pass() -> None:
    handle = wrap_model(tiny_vit(), device="cpu")  # finite on the load probe
    bright = Image.new("RGB", (32, 32), "white")

    # a bias that overflows only where the image is bright: the probe could not have seen it
    def overflow_if_bright(_m, inputs, output):
        is_bright = inputs[0].mean(dim=(1, 2, 3)) > 1.0
        return torch.where(is_bright[:, None, None], output * float("inf"), output)

    hook = handle.model.patch_embed.register_forward_hook(overflow_if_bright)
    try:
        assert predict_images(handle, [Image.new("RGB", (32, 32), "black")]).logits.shape == (1, 5)
        with pytest.raises(NonFiniteOutputs, match="outputs NaN or infinite values for these images"):
            predict_images(handle, [Image.new("RGB", (32, 32), "black"), bright])
    finally:
        hook.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in handle.model.modules())


def test_attention_that_overflows_is_refused_even_when_the_logits_are_finite() -> None:
    handle = wrap_model(tiny_vit(), device="cpu")
    last = handle.model.blocks[-1].attn

    # patch queries of the last block overflow: their rows are NaN, but the CLS row that
    # reaches the classifier is not
    def overflow_patch_queries(_m, _inputs, q):
        q = q.clone()
        q[:, :, 1:] = float("inf")
        return q

    hook = last.q_norm.register_forward_hook(overflow_patch_queries)
    try:
        x = handle.preprocess([Image.new("RGB", (32, 32), "gray")])
        assert torch.isfinite(handle.model(x)).all()
        with pytest.raises(NonFiniteOutputs):
            extract_attention(handle, x)
    finally:
        hook.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in handle.model.modules())


def test_a_header_nested_too_deep_for_the_json_parser_is_one_sentence(no_tensor_loading) -> None:
    header = b"{" + b'"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    data = struct.pack("<Q", len(header)) + header
    with pytest.raises(CheckpointRejected, match="damaged or truncated"):
        load_model("test_vit", checkpoint=data)


def test_a_shape_of_huge_integers_is_refused_as_damaged(no_tensor_loading) -> None:
    # multiplied out, 200 sides of 4,000 digits would be an 800,000-digit product (seconds)
    entries = {"head.weight": {"dtype": "F32", "shape": [10**4000] * 200, "data_offsets": [0, 4]}}
    with pytest.raises(CheckpointRejected, match="damaged or truncated"):
        load_model("test_vit", checkpoint=_safetensors(entries, b"\0" * 4))
