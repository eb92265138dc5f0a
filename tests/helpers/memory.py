"""The memory budget the tests fix, and a model too large for it whose weights must never be read."""

from __future__ import annotations

import io
import json
import zipfile

# What a quarter of this project's 24 GiB machine gives; fixed, so the outcomes do not depend on the machine
BUDGET_MB = 6144
ALLOCATOR_TEXT = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 33554432000 bytes. Error code 12 (Cannot allocate memory)"
)


def transformers_zip(layers: int, heads: int, *, width: int = 64, hidden: int = 128, side: int = 320, patch: int = 4) -> bytes:
    """A save_pretrained folder zipped: a ViT classifier's config.json, its preprocessor at ``side`` px, and a
    weight file that is no safetensors at all (a load that reads it fails on it, so a refusal proves it was never read)."""
    config = {
        "model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": width,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": hidden,
        "image_size": side, "patch_size": patch, "id2label": {str(i): f"class {i}" for i in range(10)},
    }
    preprocessor = {"image_processor_type": "ViTImageProcessor", "do_resize": True, "size": {"height": side, "width": side}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big/config.json", json.dumps(config))
        archive.writestr("big/preprocessor_config.json", json.dumps(preprocessor))
        archive.writestr("big/model.safetensors", b"\x08" + b"\0" * 7 + b"{junk" + bytes(range(256)) * 64)
    return buffer.getvalue()
