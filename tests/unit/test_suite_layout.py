"""The test suite's own layout: shared code lives in ``tests/helpers``, so no test module imports another."""

from __future__ import annotations

import ast

from helpers.data import ROOT

TESTS = ROOT / "tests"


def _is_test_module(name: str) -> bool:
    """``test_images``, ``conftest``, ``tests.conftest``, ``tests.unit.test_cli``: a module pytest collects or configures from."""
    return any(part.startswith(("test_", "conftest")) for part in name.split("."))


def test_no_test_module_imports_another_or_conftest() -> None:
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(TESTS)} imports {n}" for n in names if _is_test_module(n)]
    assert found == [], "shared code goes in tests/helpers: " + "; ".join(found)
