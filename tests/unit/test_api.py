"""The public API: ``__all__`` of every core and ui module, and the Core API of the README and docs/core-api.md from ``core``."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys

import pytest

import core
from helpers.data import ROOT

CORE_API_PAGE = ROOT / "docs" / "core-api.md"

MODULES = sorted(
    path
    for folder in ("core", "ui")
    for path in (ROOT / folder).rglob("*.py")
    if path.name != "__main__.py" and "__pycache__" not in path.parts
)


def _module_name(path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _imports_from_core(text: str) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from core[.<module>] import name`` in the ```python blocks of ``text``."""
    pairs = []
    for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL):
        for module, names in re.findall(r"^from (core(?:\.[\w.]+)?) import (.+)$", block, re.MULTILINE):
            pairs += [(module, name.strip()) for name in names.split("#")[0].split(",")]
    return pairs


def _core_api() -> list[tuple[str, str]]:
    """The full Core API: the imports of every Python block of docs/core-api.md."""
    return _imports_from_core(CORE_API_PAGE.read_text(encoding="utf-8"))


def _readme_core_api() -> list[tuple[str, str]]:
    """The README's short Core API: the imports in its ``## Core API`` section, up to the next section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Core API\n", 1)[1].split("\n## ", 1)[0]
    return _imports_from_core(section)


def test_core_api_page_block_is_found() -> None:
    names = {name for _, name in _core_api()}
    assert {"load_model", "extract_attention", "analyze", "save_bundle", "load_bundle", "compare", "sample_set"} <= names


def test_readme_core_api_block_is_found() -> None:
    names = {name for _, name in _readme_core_api()}
    assert {"load_model", "sample_set", "analyze", "findings", "save_bundle", "load_bundle", "compare"} <= names


@pytest.mark.parametrize("module, name", sorted(set(_core_api() + _readme_core_api())))
def test_core_api_is_importable_from_core(module, name) -> None:
    assert getattr(core, name) is getattr(importlib.import_module(module), name)
    assert name in core.__all__


def test_core_exports_its_error_base_and_nothing_it_does_not_define() -> None:
    from core.errors import HeadScopeError

    assert core.HeadScopeError is HeadScopeError
    assert all(hasattr(core, name) for name in core.__all__)
    assert "render_report" not in core.__all__  # core never imports altair: the report is viz.report


@pytest.mark.slow
def test_importing_core_stays_free_of_streamlit_and_altair() -> None:
    """A fresh process: ``import core.errors`` works (no cycle) and ``import core`` pulls in no UI library."""
    code = (
        "import sys; import core.errors; import core; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'altair', 'ui', 'viz')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_every_module_declares_all_with_names_it_has(path) -> None:
    module = importlib.import_module(_module_name(path))
    assert isinstance(getattr(module, "__all__", None), list), f"{_module_name(path)} has no __all__"
    assert len(set(module.__all__)) == len(module.__all__)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, missing


def test_names_imported_from_other_modules_are_in_their_all() -> None:
    """Every public name one module (or test) imports from a core or ui module is in that module's ``__all__``."""
    declared = {_module_name(path): importlib.import_module(_module_name(path)).__all__ for path in MODULES}
    files = [p for p in ROOT.rglob("*.py") if not {".venv", ".git"} & set(p.parts)]
    absent = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in declared:
                for alias in node.names:
                    own = importlib.import_module(node.module)
                    if alias.name.startswith("_") or alias.name in declared[node.module]:
                        continue
                    if isinstance(getattr(own, alias.name, None), type(own)):
                        continue  # a submodule: ``from core.pipeline import distributed``
                    absent.append(f"{file.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert not absent, absent
