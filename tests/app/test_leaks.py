"""No leaks: repeated analyses keep resident memory flat and every cache within its bound."""

from __future__ import annotations

import gc
import os
import re

import numpy as np
from streamlit.runtime.caching import cache_data_api, cache_resource_api
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from helpers.data import APP, ROOT
from helpers.images import encode


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")



def _cache_sizes() -> list[tuple[str, int, float]]:
    """(function, entries held, max_entries) of every data and resource cache in this process."""
    sizes = []
    for registry in (cache_data_api._data_caches, cache_resource_api._resource_caches):
        for caches in registry._function_caches.values():
            for cache in caches.values():
                held = sum(len(stats) for stats in cache.get_stats().values())
                sizes.append((cache.display_name, held, cache.max_entries))
    return sizes


def test_every_cache_decorator_is_bounded() -> None:
    for path in [ROOT / "streamlit_app.py", *ROOT.glob("ui/*.py"), *ROOT.glob("pages/*.py")]:
        for call in re.findall(r"@st\.cache_(?:data|resource)(?:\([^)]*\))?", path.read_text()):
            assert "max_entries=" in call, f"{path.name}: {call} is unbounded"


def test_fifty_reruns_keep_memory_flat_and_caches_bounded(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    test = digits_split(0, 0.2).test
    images, _ = digit_images(test)
    uploads = [[(f"d{i}.png", encode(images[(3 * run + i) % len(images)]), "image/png") for i in range(3)] for run in range(70)]

    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.radio(key="image_source").set_value("Upload images").run()

    def analyse(files) -> None:
        at.sidebar.get("file_uploader")[0].set_value(files)
        at.run()
        assert not at.exception and not at.error
        assert "3 images ready" in [s.value for s in at.success][0]

    # fill every bounded cache first (16 distinct sets), then measure fifty more analyses
    for files in uploads[:20]:
        analyse(files)
    gc.collect()
    before = _rss_bytes()
    for files in uploads[20:]:
        analyse(files)
    gc.collect()
    after = _rss_bytes()

    assert after < before * 1.10, f"resident memory grew from {before / 2**20:.0f} MB to {after / 2**20:.0f} MB"
    sizes = _cache_sizes()
    assert any(held > 1 for _, held, _ in sizes)  # the caches were really used
    for name, held, bound in sizes:
        assert held <= bound, f"{name} holds {held} entries, over its bound of {bound}"
    assert np.isfinite(before) and before > 0
