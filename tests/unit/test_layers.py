"""The layers stay apart: core imports neither streamlit, altair nor vl_convert; viz never imports streamlit."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from conftest import ROOT

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
