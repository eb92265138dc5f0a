"""Fixtures and hooks of every test tier; shared plain helpers live in ``tests/helpers``.

Tiers (folders, each with its marker, registered in pytest.ini): ``unit`` (core and
chart functions, no app), ``app`` (pages driven in-process by Streamlit's AppTest),
``browser`` (a real server and headless Chromium). ``make test`` runs all three;
``pytest -m unit`` runs one, ``make test-fast`` the unit tier without ``slow`` tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.models.handle import ViTHandle, wrap_model
from helpers.models import tiny_vit
from helpers.report import with_hostile_names

TIERS = ("unit", "app", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with the tier its folder names."""
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def _heavy_stages_start_on_their_own(monkeypatch):
    """Pages analyse at once whatever the machine's speed: on a loaded CI machine the demo's
    360 images can be estimated above the one-minute auto-start budget, and every page would
    wait for Start. The tests of that wait (``test_app_stages.py``) set the budget themselves."""
    import ui.results

    monkeypatch.setattr(ui.results, "AUTO_START_SECONDS", float("inf"))


@pytest.fixture(scope="session", autouse=True)
def _study_library_in_a_temporary_folder(tmp_path_factory):
    """The app's study library (``HEADSCOPE_LIBRARY``) lives in a folder of this run, never in the user's data
    folder; app tests that need an empty or a particular library set their own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HEADSCOPE_LIBRARY", str(tmp_path_factory.mktemp("library")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _umap_warmup_ends_before_exit():
    """App tests start UMAP's background compilation; let it finish before the interpreter exits."""
    yield
    from core.measures.projection import join_umap_warmup

    join_umap_warmup(timeout=300)


@pytest.fixture
def tiny_handle() -> ViTHandle:
    return wrap_model(tiny_vit(), class_names=[f"c{i}" for i in range(5)], device="cpu")


@pytest.fixture
def register_handle() -> ViTHandle:
    """Non-square 3x4 grid, a CLS token plus three register tokens."""
    return wrap_model(tiny_vit(img_size=(24, 32), reg_tokens=3), device="cpu")


@pytest.fixture(scope="session")
def demo_handle() -> ViTHandle:
    from core.models.load import load_model

    return load_model("demo", device="cpu")


SMALL_STUDY_IMAGES = 24


@pytest.fixture(scope="session")
def small_set(demo_handle):
    """The first ``SMALL_STUDY_IMAGES`` held-out digits of the demo model (labelled)."""
    from core.inputs.images import ImageSet, demo_digits_set

    split = demo_handle.card["split"]
    full = demo_digits_set(split["seed"], split["test_fraction"])
    return ImageSet.from_images(f"{SMALL_STUDY_IMAGES} digits", full.images[:SMALL_STUDY_IMAGES])


@pytest.fixture(scope="session")
def small_study(demo_handle, small_set):
    """A whole case study of the demo model on a few digits (PCA layout, small map sample): a few seconds."""
    from core.study.casestudy import CaseSettings, analyze

    settings = CaseSettings(top_k=3, hurt_images=3, max_maps=600, n_clusters=4, curve_steps=4)
    return analyze(demo_handle, small_set, settings, layout_method="pca")


@pytest.fixture(scope="session")
def hostile_study(small_study):
    """The small study with hostile names for an image, the model and a class (``helpers.report``)."""
    return with_hostile_names(small_study)


@pytest.fixture(scope="session")
def hostile_report(hostile_study) -> str:
    from viz.report import render_report

    return render_report(hostile_study)


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder of an empty study library of this test only (not created yet, as on a new server), which the
    app tests' pages use (``HEADSCOPE_LIBRARY``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = tmp_path / "library"
    monkeypatch.setenv("HEADSCOPE_LIBRARY", str(path))
    return path


@pytest.fixture
def live_study(monkeypatch: pytest.MonkeyPatch, small_study):
    """The Case study page's live study, whatever the page asks for: the small study, not the demo set's
    two-minute one (for the tests of what the page does with a study)."""
    import ui.casestudy

    monkeypatch.setattr(ui.casestudy, "live_study", lambda handle, image_set, settings: small_study)
    return small_study


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, headless, driven by Playwright (the browser tier)."""
    from playwright.sync_api import sync_playwright

    from helpers.browser import CHROMIUM_ARGS, chromium_path

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
