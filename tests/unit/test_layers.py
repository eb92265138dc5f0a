"""The layers stay apart: core imports neither streamlit, altair nor vl_convert; viz never imports streamlit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from helpers.data import ROOT

FORBIDDEN_IN_CORE = ("streamlit", "altair", "vl_convert")

# Imports every module of the core package (core.__main__ and core.report too) in a fresh
# interpreter, then prints which forbidden top-level packages ended up in sys.modules.
_IMPORT_ALL_OF_CORE = """
import importlib, json, pkgutil, sys
import core
names = {"core", "core.__main__", "core.report"}
names.update(info.name for info in pkgutil.walk_packages(core.__path__, "core."))
for name in sorted(names):
    importlib.import_module(name)
loaded = sorted({name.split(".")[0] for name in sys.modules} & set(json.loads(sys.argv[1])))
print(json.dumps({"modules": sorted(names), "loaded": loaded}))
"""


def test_importing_all_of_core_loads_no_streamlit_altair_or_vl_convert() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL_OF_CORE, json.dumps(FORBIDDEN_IN_CORE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {"core.__main__", "core.report", "core.study.casestudy", "core.measures.importance"} <= set(result["modules"])
    assert result["loaded"] == [], f"importing core loaded {result['loaded']}"


def test_core_report_still_forwards_to_viz_report() -> None:
    import core.report
    import viz.report

    assert core.report.render_report is viz.report.render_report
    assert core.report.case_charts is viz.report.case_charts
    from core.report import mode_chart_key

    assert mode_chart_key is viz.report.mode_chart_key


def _imported_modules(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_no_viz_module_imports_streamlit() -> None:
    sources = sorted((ROOT / "viz").rglob("*.py"))
    assert {"__init__.py", "common.py", "report.py"} <= {path.name for path in sources}
    for path in sources:
        imported = _imported_modules(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        assert not {name for name in imported if name.split(".")[0] == "streamlit"}, path.relative_to(ROOT)
        # viz sits above core and below ui: it never reaches up into the pages' glue either
        assert not {name for name in imported if name.split(".")[0] == "ui"}, path.relative_to(ROOT)


# --- core's subpackages --------------------------------------------------------------
# core is layered (the contract in .importlinter, drawn in docs/architecture.md):
#   core.__main__ > core.study > core.pipeline > core.measures > core.models > core.inputs
#   > core.settings > core.errors | core.csvfile
# A layer imports only the layers below it; across subpackages only public names.
SUBPACKAGES = ("inputs", "models", "measures", "pipeline", "study")


def test_each_layer_of_core_imports_only_the_layers_below_it() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
         "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "1 kept, 0 broken" in done.stdout


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in SUBPACKAGES else module


def _core_modules() -> dict[str, ast.AST]:
    trees = {}
    for path in sorted((ROOT / "core").rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        trees[module] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return trees


def test_a_subpackage_imports_only_public_names_of_another() -> None:
    """Inside one subpackage modules share private helpers; across subpackages only public names and modules."""
    trees = _core_modules()
    assert {f"core.{name}" for name in SUBPACKAGES} <= set(trees)
    private = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith("core") or node.level:
                continue
            if _subpackage(node.module) == _subpackage(module):
                continue
            names = [alias.name for alias in node.names]
            hidden = [part for part in node.module.split(".") if part.startswith("_") and part != "__main__"]
            hidden += [name for name in names if name.startswith("_")]
            if hidden:
                private.append(f"{module}: from {node.module} import {', '.join(names)}")
    assert not private, "\n".join(private)


def test_the_modules_of_core_import_each_other_without_a_cycle() -> None:
    """Imports inside functions count too: a late import hides a cycle, it does not remove it."""
    import grimp

    graph = grimp.build_graph("core", include_external_packages=False, exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    assert "core.models.handle" in modules and "core.pipeline.analysis" in modules
    imports = {module: graph.find_modules_directly_imported_by(module) for module in modules}
    state: dict[str, int] = {}  # 1 while on the path, 2 when done

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for target in sorted(imports[module]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target] if target in path else [module, target]
            if target not in state:
                found = cycle_from(target, path + [target])
                if found:
                    return found
        state[module] = 2
        return None

    for module in modules:
        if module not in state:
            found = cycle_from(module, [module])
            assert found is None, " -> ".join(found)


def test_every_subpackage_exports_the_public_names_of_its_modules() -> None:
    import importlib

    for name in SUBPACKAGES:
        package = importlib.import_module(f"core.{name}")
        modules = [module for module in _core_modules() if module.startswith(f"core.{name}.")]
        assert modules, name
        for module_name in modules:
            if module_name.rsplit(".", 1)[1].startswith("_"):
                continue
            module = importlib.import_module(module_name)
            missing = [item for item in module.__all__ if not hasattr(package, item)]
            assert not missing, f"core.{name} does not export {missing} of {module_name}"


def test_every_module_and_name_the_architecture_page_names_exists() -> None:
    """docs/architecture.md matches the code: each dotted name in backticks imports (a module, or a name in one)."""
    import importlib
    import re

    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = sorted(set(re.findall(r"`((?:core|ui|viz)(?:\.\w+)+)`", text)))
    assert len(named) >= 30, named
    missing = []
    for dotted in named:
        parts = dotted.split(".")
        for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then attributes
            try:
                target = importlib.import_module(".".join(parts[:cut]))
            except ModuleNotFoundError:
                continue
            for attribute in parts[cut:]:
                target = getattr(target, attribute, None)
            if target is None:
                missing.append(dotted)
            break
        else:
            missing.append(dotted)
    assert not missing, missing
    layers = re.findall(r"^\s+(?:core\.)?(\w+)", (ROOT / ".importlinter").read_text(encoding="utf-8"), re.MULTILINE)
    for subpackage in SUBPACKAGES:
        assert f"core.{subpackage}" in text and subpackage in layers
