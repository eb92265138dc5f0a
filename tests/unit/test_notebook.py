"""docs/notebook.ipynb runs end to end in a real Jupyter kernel on the demo model, and is committed without outputs."""

from __future__ import annotations

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.data import ROOT

NOTEBOOK = ROOT / "docs" / "notebook.ipynb"
KERNEL = "headscope-test"


def _code_cells(notebook) -> list:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def test_the_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    cells = _code_cells(notebook)
    assert cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in cells)
    assert 'MODEL = "demo"' in notebook.cells[3].source, "the test runs the notebook as committed: on the demo model"


@pytest.mark.slow
def test_the_notebook_runs_and_draws_every_chart_it_names(tmp_path, monkeypatch) -> None:
    # a kernel of this very interpreter, whatever other kernels the machine has
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # from docs/, as a user who opens it there: its first cell finds the repository root
    NotebookClient(notebook, timeout=900, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    cells = _code_cells(notebook)
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    shows = [cell for cell in cells if cell.source.startswith("viz.show(")]
    assert len(shows) >= 10
    for cell in shows:  # each viz.show cell displays one Altair chart and nothing else
        displays = [output for output in cell.outputs if output.output_type == "display_data"]
        assert len(displays) == 1, cell.source
        assert "vega" in displays[0].data["text/html"], cell.source
    printed = "".join(output.text for cell in cells for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")
    assert "demo: 6 layers x 6 heads" in printed
    assert "1. L" in printed and "ranks 1st of 36 heads by probability" in printed  # the case study's findings
    assert "modes-" in printed and "relevance-maps" in printed  # the reopened bundle lists its charts
