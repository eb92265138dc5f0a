"""AppTest of every page's downloads with a model whose class names and images' names are hostile.

Each CSV file is made by calling the callable its button registered, as a click does, and
read back with the csv module: no cell may start as a spreadsheet formula. Each SVG file
must keep the names as text, never as markup.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from helpers.app import started_app
from helpers.data import ROOT
from helpers.images import encode
from helpers.transformers import hf_model, save
from ui import patterns

TIMEOUT = 300
PAGES = ["streamlit_app.py", *(f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("[0-9]*_*.py")))]
# one class name per kind of attack: a command, a function, a request, a number as text, markup
CLASS_NAMES = ["+cmd|' /C calc'!A0", "@SUM(1+1)", '=HYPERLINK("http://127.0.0.1:9/x","y")', "-1", "<script>alert(1)</script>"]
IMAGE_NAMES = ["=1+1.png", "@cmd.png", "-2.png", "+3.png", "\t=4.png"]
FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


@pytest.fixture
def made() -> dict[str, tuple[str, Callable[[], bytes | str]]]:
    """Each deferred download's file name and what a click calls, by its file id (AppTest drops its runtime after a run)."""
    return {}


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, made) -> AppTest:
    model = hf_model("ViTForImageClassification")
    model.config.id2label = dict(enumerate(CLASS_NAMES))
    model.config.label2id = {name: i for i, name in enumerate(CLASS_NAMES)}
    monkeypatch.setenv("HEADSCOPE_MODEL", str(save(model, tmp_path / "hostile")))
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)  # PCA: no wait for UMAP's compilation
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    real = MediaFileManager.add_deferred

    def recording(self, data_callable, mimetype, coordinates, file_name=None, **kwargs) -> str:
        file_id = real(self, data_callable, mimetype, coordinates, file_name, **kwargs)
        made[file_id] = (file_name, data_callable)
        return file_id

    monkeypatch.setattr(MediaFileManager, "add_deferred", recording)
    at = started_app(monkeypatch, TIMEOUT)
    images, _ = digit_images(digits_split(0, 0.2).test[:len(IMAGE_NAMES)])
    at.radio(key="image_source").set_value("Upload images").run()
    at.file_uploader(key="image_upload").set_value(
        [(name, encode(image), "image/png") for name, image in zip(IMAGE_NAMES, images)]
    )
    at.run()
    assert not at.exception, at.exception
    assert len(at.session_state["uploaded_set"][1].images) == len(IMAGE_NAMES)
    return at


def _downloads(at: AppTest, made: dict, label: str) -> dict[str, bytes]:
    """Each download labelled ``label`` on the page as run: its file name and the bytes a click sends."""
    files = {}
    for button in at.get("download_button"):
        if button.proto.label == label:
            file_name, make = made[button.proto.deferred_file_id]
            data = make()
            files[file_name] = data.encode() if isinstance(data, str) else data
    return files


def test_no_csv_cell_of_any_page_starts_a_formula_and_svgs_keep_names_as_text(app: AppTest, made) -> None:
    tables: dict[str, list[list[str]]] = {}
    drawn: dict[str, set[str | None]] = {}
    for page in PAGES:
        app.switch_page(page).run()
        if page.endswith("5_Explanations.py"):
            app.button(key="explain_score").click().run()  # its second table is made on request
        assert not app.exception, (page, app.exception)
        assert not app.error, (page, [e.value for e in app.error])
        csvs = _downloads(app, made, "CSV")
        assert len(csvs) == len(app.dataframe), page  # every table's CSV was made
        tables.update({name: list(csv.reader(io.StringIO(data.decode(), newline=""))) for name, data in csvs.items()})
        for name, data in _downloads(app, made, "SVG").items():
            drawing = ElementTree.fromstring(data)  # well-formed: no name ended an element early
            assert not [e.tag for e in drawing.iter() if e.tag.rsplit("}", 1)[-1] in ("script", "foreignObject")], name
            assert b"<script" not in data, name
            drawn[name] = {e.text for e in drawing.iter() if e.tag.rsplit("}", 1)[-1] == "text"}

    assert {"headscope-a-top-5-table.csv", "headscope-e-faithfulness-summary.csv"} <= set(tables)
    for name, rows in tables.items():
        live = [cell for row in rows for cell in row if cell.startswith(FORMULA) and not _is_number(cell)]
        assert not live, (name, live)
    header, *rows = tables["headscope-a-top-5-table.csv"]
    column = header.index("class")
    assert sorted(row[column] for row in rows) == sorted(
        ["'+cmd|' /C calc'!A0", "'@SUM(1+1)", "'=HYPERLINK(\"http://127.0.0.1:9/x\",\"y\")", "'-1", "<script>alert(1)</script>"]
    )
    assert set(CLASS_NAMES) <= drawn["headscope-a-top-5.svg"]  # the drawing shows each name whole, as text
