#!/usr/bin/env python
"""Snapshot of every number HeadScope shows, to compare two versions of the code (before and after a refactor).

Usage (from the repository root, with the project's Python)::

    .venv/bin/python scripts/snapshot_views.py OUT_DIR                 # take a snapshot
    .venv/bin/python scripts/snapshot_views.py --compare DIR_A DIR_B   # compare two snapshots

Standalone on purpose: it imports none of ``core``, ``ui`` or ``viz``. It drives the app the
way a user does, through Streamlit's ``AppTest`` on the page files (``streamlit_app.py``,
``pages/*.py``), and the command line ``python -m core analyze`` in a subprocess, so it runs
unchanged on a tree whose ``core`` was reorganised. The repository is the folder above this
script's folder (``--root`` to change it); it is put first on ``sys.path`` and is the cwd.

What is recorded (one canonical JSON file per page, plus ``cli_bundle.json`` and ``meta.json``)
------------------------------------------------------------------------------------------
The app runs offline (``HF_HUB_OFFLINE=1``) on its start model (the embedded ``demo``
model) and its sample images (the 360 held-out digits), with every widget at its default.
Order: the home page (starts the set's analysis and UMAP's background compilation), Head
importance (waits for the staged analysis; if the heavy stages wait for **Start** because
the machine measured them above the one-minute auto-start budget, the cap slider is set to
every image and Start is pressed: the same work the test suite's ``AUTO_START_SECONDS=inf``
makes start on its own, as both choose a sample of all ``n`` images), Attention strength,
Attention patterns (waits for UMAP), Case study, Explanations, and the home page last (once
UMAP is ready and the analysis done, so its overview is the UMAP layout and its predictions
the analysis's). Each page is rerun until it is settled (no progress bar, spinner, Start or
Stop left) and then captured in one or more *states*:

- ``streamlit_app``: default.
- ``1_Head_Importance``: every metric over the set, and the first metric on the focus image
  (scope "local"). States are named by metric and scope, not "default": the metric selectbox
  keeps (``persist_state``) the Taylor preview it offered while the sweep ran.
- ``2_Attention_Strength``: focus image and set mean.
- ``3_Attention_Patterns``: default (patch maps, density, 6 clusters, 10,000 maps, UMAP) and
  the scatter plot. CLS maps are left to the command line, which runs them on 2,000 maps with
  PCA (the app's CLS state would train one more autoencoder on 10,000 maps and lay it out).
- ``4_Case_Study``: every ranking metric (top 5 heads, the default).
- ``5_Explanations``: "Score the maps" pressed on the focus image (default), then on the set's
  first images.

In each state, separately for the main area and the sidebar, in render order:
``charts`` (every Vega-Lite chart: ``json.loads(proto.spec)`` and each dataset converted to
pandas with ``streamlit.dataframe_util.convert_arrow_bytes_to_pandas_df``, as
``tests/conftest.py::chart_specs`` does), ``tables`` (every ``st.dataframe``/``st.table``:
columns, dtypes, index, every value, and its column config), ``metrics``, ``texts`` (title,
headers, markdown, captions, info/warning/error/success, code, ...), ``images`` (the media
file name, which Streamlit derives from a hash of the image's bytes, and the caption),
``widgets`` (type, key, label, value, options, slider range) and ``other`` (any other element,
by type).

``cli_bundle.json``: ``python -m core analyze`` on the same 360 digits written as an
ImageFolder (``<label>/digit-<index>.png``; the split is the model card's, the rendering a
copy of ``core/inputs/digits.py``), with every setting explicit (``CLI_SETTINGS``: the defaults,
except CLS maps, 2,000 of them and the PCA layout, which the pages do not cover and which
cost less) and ``--report``: the folder's sha256, the bundle's member names in order,
each member's sha256, size and ZIP date, and the content of each member: ``manifest.json``
parsed, Parquet tables (schema and every value), ``.npy`` arrays (dtype, shape, every value),
PNG thumbnails by sha256; the HTML report's sha256 and size; the command's stdout (its
summary sentences) and its stderr apart from progress bars.

Canonical form
--------------
``json.dumps(sort_keys=True)``. Floats are written with Python's ``repr`` (the shortest text
that reads back to the same double; a float32 is widened exactly), so nothing is rounded.
NaN and infinities (not JSON) become the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``;
bytes become their sha256; timestamps ISO text. ``--compare`` compares exactly (types too,
``-0.0`` differs from ``0.0``) and prints, for a file that differs, its first differing paths
and the largest absolute difference among the floats that differ.

What is normalised, and why (each found by running the snapshot twice on the same code)
------------------------------------------------------------------------------------
- ``manifest.json``'s ``created`` (the UTC time the study was assembled, to the second; also
  printed in the HTML report's "created" row): replaced by ``"<created>"`` before hashing the
  manifest and the report. The ZIP members' dates are fixed by the bundle writer already.
- The command line's "Wrote bundle.zip (x MB) in N s." line: the seconds are replaced by
  ``<seconds>``; stderr's tqdm progress bars (rates, times) are dropped.
- Not nondeterminism, but names that are not content, so that a diff points at the values:
  Streamlit names each chart dataset by a hash of its content; they are renamed ``data_0``,
  ``data_1``, ... in the chart's dataset order (in the spec too). Altair numbers its automatic
  ``view_N``/``param_N`` names with a process-wide counter, which depends on how many charts
  were built before; they are renumbered per spec in order of first appearance. The media
  URL prefix (``/mock/media/``) is dropped, keeping the content-hash file name.

Whether the heavy stages started on their own or waited for Start makes no difference: two runs,
one of each, gave identical page states. Things that would vary but are kept out of the states
rather than normalised: the Start
panel's time **Estimate** and the progress bars' "about N s left" (pages are captured only
once settled), and the PCA-then-UMAP switch of the home overview (captured after UMAP is
ready; if UMAP did not become ready, the caption says PCA and the comparison shows it).

Not normalised: floating-point results are compared bit for bit. torch, numpy and OpenMP use
as many threads as the machine has cores, so two snapshots are comparable on the same
machine (or with the same ``OMP_NUM_THREADS``); ``meta.json`` records the thread count and
library versions. The CLI work folder is the fixed ``$TMPDIR/headscope-snapshot-cli`` (so no
run-specific path reaches the bundle): do not take two snapshots at once.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

# Every setting explicit. The pages already show the defaults (patch maps, 10,000 of them, UMAP), so the
# command line takes what they do not: CLS maps, the smallest sample the app offers (2,000: cheaper) and
# the PCA layout (no UMAP compilation in the new process); the rest are the defaults of core/settings.py.
CLI_SETTINGS = [
    "--top-k", "5", "--hurt-images", "5", "--kind", "cls", "--max-maps", "2000", "--clusters", "6",
    "--curve-steps", "10", "--seed", "0", "--layout", "pca", "--metric", "probability",
]
RUN_TIMEOUT = 1800.0  # seconds one AppTest run may take (the heavy stages run inside one)
SETTLE_TRIES = 60
SETTLE_PAUSE = 2.0
UMAP_WAIT = 600.0
CLI_WORK = Path(tempfile.gettempdir()) / "headscope-snapshot-cli"
MAX_ARRAY_VALUES = 2_000_000  # larger .npy arrays are recorded by sha256 and summary only


# --- canonical JSON -------------------------------------------------------------------------


def _float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(value)


def plain(value: Any) -> Any:
    """``value`` as JSON-able data, exactly: numpy and pandas scalars, arrays and frames included."""
    import numpy as np
    import pandas as pd

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _float(float(value))
    if isinstance(value, (complex, np.complexfloating)):
        return {"real": _float(value.real), "imag": _float(value.imag)}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest(), "bytes": len(bytes(value))}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return frame(value)
    if isinstance(value, pd.Series):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    try:
        if pd.isna(value):  # pd.NA, pd.NaT
            return None
    except (TypeError, ValueError):
        pass
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def frame(df: Any) -> dict[str, Any]:
    """A DataFrame as columns, dtypes, index and every value by column."""
    import pandas as pd

    names, columns = [], {}
    for i, column in enumerate(df.columns):
        name = str(column)
        if name in columns:
            name = f"{name}#{i}"
        names.append(name)
        series = df.iloc[:, i]
        values = series.astype(object).tolist() if isinstance(series.dtype, pd.CategoricalDtype) else series.tolist()
        columns[name] = [plain(v) for v in values]
    out: dict[str, Any] = {
        "columns": names,
        "dtypes": [str(t) for t in df.dtypes],
        "rows": int(len(df)),
        "values": columns,
    }
    index = df.index
    if not (isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1):
        out["index"] = [plain(v) for v in index.tolist()]
        out["index_names"] = [plain(n) for n in index.names]
    return out


def dump(data: Any, path: Path) -> None:
    text = json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


# --- reading a page -------------------------------------------------------------------------

_AUTO_NAME = re.compile(r"\b(view|param)_(\d+)\b")


def _renamed(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {_renamed(k, mapping): _renamed(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, mapping) for v in value]
    if isinstance(value, str):
        if value in mapping:
            return mapping[value]
        return _AUTO_NAME.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
    return value


def _auto_names(value: Any, found: list[str]) -> None:
    """Altair's counter names in order of first appearance (dict keys sorted, so the walk is canonical)."""
    if isinstance(value, dict):
        for key in sorted(value):
            _auto_names(key, found)
            _auto_names(value[key], found)
    elif isinstance(value, list):
        for item in value:
            _auto_names(item, found)
    elif isinstance(value, str):
        for match in _AUTO_NAME.finditer(value):
            if match.group(0) not in found:
                found.append(match.group(0))


def chart_record(el: Any) -> dict[str, Any]:
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    spec = json.loads(el.proto.spec)
    mapping = {d.name: f"data_{i}" for i, d in enumerate(el.proto.datasets)}
    found: list[str] = []
    _auto_names(spec, found)
    counters: dict[str, int] = {}
    for name in found:
        kind = name.split("_")[0]
        counters[kind] = counters.get(kind, 0) + 1
        mapping[name] = f"{kind}_{counters[kind]}"
    datasets = {
        mapping[d.name]: frame(convert_arrow_bytes_to_pandas_df(d.data.data)) for d in el.proto.datasets
    }
    return {"key": el.key, "spec": plain(_renamed(spec, mapping)), "datasets": datasets}


def table_record(el: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"type": el.type, "key": el.key, "data": frame(el.value)}
    columns = getattr(el.proto, "columns", "")
    if columns:
        try:
            record["column_config"] = plain(json.loads(columns))
        except (TypeError, ValueError):
            record["column_config"] = str(columns)
    return record


def widget_record(el: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"type": el.type, "key": el.key}
    for field in ("label", "value", "options", "min", "max", "step", "placeholder"):
        try:
            got = getattr(el, field)
        except Exception:  # noqa: BLE001 -- a widget without that field
            continue
        if got is not None and not callable(got):
            record[field] = plain(list(got) if field == "options" else got)
    if "disabled" in type(el.proto).DESCRIPTOR.fields_by_name:
        record["disabled"] = bool(el.proto.disabled)
    return record


TEXT_TYPES = {
    "markdown", "caption", "title", "header", "subheader", "divider", "latex", "code", "json", "html",
    "error", "warning", "info", "success", "exception", "help_info", "toast",
}
WIDGET_TYPES = {
    "button", "download_button", "checkbox", "toggle", "radio", "selectbox", "multiselect", "slider",
    "select_slider", "text_input", "text_area", "number_input", "date_input", "time_input", "color_picker",
    "file_uploader", "chat_input", "button_group", "pills", "segmented_control", "feedback", "camera_input",
    "link_button", "form_submit_button", "datetime_input",
}
SKIPPED = {"main", "sidebar", "event", "bottom", "flex_container", "column", "columns", "container", "vertical",
           "horizontal", "expandable", "expander", "tab", "tabs", "form", "popover", "dialog", "chat_message",
           "status", "grid_container"}


def area_record(block: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {
        "charts": [], "tables": [], "metrics": [], "texts": [], "images": [], "widgets": [], "other": [],
    }
    for el in block:
        kind = el.type
        if "vega_lite" in kind:
            out["charts"].append(chart_record(el))
        elif kind in ("dataframe", "arrow_data_frame", "table", "arrow_table"):
            out["tables"].append(table_record(el))
        elif kind == "metric":
            out["metrics"].append({
                "label": el.label, "value": el.value, "delta": getattr(el, "delta", None),
                "color": getattr(el, "color", None),
            })
        elif kind in TEXT_TYPES:
            out["texts"].append({"type": kind, "value": plain(el.value)})
        elif kind in ("image", "imgs"):
            out["images"].append({
                "files": [str(url).rsplit("/", 1)[-1] for url in el.value],
                "captions": list(getattr(el, "captions", [])),
            })
        elif kind == "page_link":
            out["widgets"].append({"type": kind, "label": el.proto.label, "page": el.proto.page})
        elif kind in WIDGET_TYPES or hasattr(el, "set_value"):
            out["widgets"].append(widget_record(el))
        elif kind in SKIPPED:
            continue
        elif kind == "progress":
            out["other"].append({"type": kind, "value": plain(el.value), "text": getattr(el, "text", "")})
        else:
            out["other"].append({"type": kind})
    return out


def capture(at: Any) -> dict[str, Any]:
    return {"main": area_record(at.main), "sidebar": area_record(at.sidebar)}


# --- driving the app ------------------------------------------------------------------------


def _checked(at: Any, where: str) -> Any:
    if at.exception:
        raise RuntimeError(f"{where}: the page raised: {[e.value for e in at.exception]}")
    return at


def _keys(at: Any, kind: str) -> set[str]:
    return {el.key for el in at.get(kind) if el.key}


def _busy(at: Any) -> str:
    """Why the page is not settled yet, or ""."""
    for el in [*at.main, *at.sidebar]:
        if el.type in ("progress", "spinner"):
            return f"a {el.type} is shown"
    buttons = _keys(at, "button")
    if "analysis_stop" in buttons:
        return "the heavy stages are running"
    if "analysis_start" in buttons:
        return "the heavy stages wait for Start"
    return ""


def _start_heavy_stages(at: Any, where: str) -> None:
    """Press Start (or Continue) on every image when the page waits for it."""
    if "analysis_start" not in _keys(at, "button"):
        return
    caps = [s for s in at.slider if s.key == "analysis_cap"]
    if caps:
        cap = caps[0]
        cap.set_value(int(cap.proto.max))
        _checked(at.run(), where)
    print(f"  {where}: the heavy stages waited for Start; pressing it on every image", flush=True)
    at.button(key="analysis_start").click()
    _checked(at.run(), where)


def settle(at: Any, where: str) -> Any:
    """Rerun until nothing is in progress; press Start when the heavy stages wait for it."""
    for _ in range(SETTLE_TRIES):
        _start_heavy_stages(at, where)
        why = _busy(at)
        if not why:
            _checked(at.run(), where)  # one more run from the caches: what a reader sees once it is done
            if not _busy(at):
                return at
            continue
        print(f"  {where}: not settled ({why}); rerunning", flush=True)
        time.sleep(SETTLE_PAUSE)
        _checked(at.run(), where)
    raise RuntimeError(f"{where} did not settle: {_busy(at)}")


def _captions(at: Any) -> str:
    return "\n".join(str(c.value) for c in at.caption)


def run_pages(root: Path, out: Path) -> dict[str, list[str]]:
    from streamlit.testing.v1 import AppTest

    home = root / "streamlit_app.py"
    pages = sorted((root / "pages").glob("[0-9]*_*.py"))
    at = AppTest.from_file(str(home), default_timeout=RUN_TIMEOUT)
    began = time.perf_counter()
    _checked(at.run(), "home (first open)")
    print(f"  home opened in {time.perf_counter() - began:.0f} s", flush=True)

    states_of: dict[str, list[str]] = {}

    def page_path(page: Path) -> str:
        return page.relative_to(root).as_posix()

    def selectbox(key: str) -> Any | None:
        return next((s for s in at.selectbox if s.key == key), None)

    def write(name: str, states: dict[str, Any]) -> None:
        dump({"page": name, "states": states}, out / f"{name}.json")
        states_of[name] = list(states)

    # the page that runs the heavy stages first, so that every later page reads the finished analysis
    ordered = sorted(pages, key=lambda p: (0 if "Importance" in p.stem else 1, p.name))
    for page in ordered:
        name, where = page.stem, page_path(page)
        began = time.perf_counter()
        at.switch_page(where)
        _checked(at.run(), where)
        settle(at, where)
        states: dict[str, Any] = {}
        if "Importance" in name:
            # states named by what they show: the metric selectbox keeps (persist_state) the Taylor
            # preview it offered while the sweep ran, so "the default" would depend on that history
            metric = selectbox("importance_metric")
            options = list(metric.options) if metric is not None else []
            scope_options = list(at.radio(key="importance_scope").options)
            for i, option in enumerate(options):
                selectbox("importance_metric").select_index(i)
                at.radio(key="importance_scope").set_value(scope_options[0])
                settle(_checked(at.run(), where), where)
                states[f"metric={option}, scope={scope_options[0]}"] = capture(at)
            if options:
                selectbox("importance_metric").select_index(0)
            for option in scope_options[1:]:
                at.radio(key="importance_scope").set_value(option)
                settle(_checked(at.run(), where), where)
                states[f"metric={options[0] if options else ''}, scope={option}"] = capture(at)
            at.radio(key="importance_scope").set_value(scope_options[0])
            settle(_checked(at.run(), where), where)
            if not states:
                states["default"] = capture(at)
        elif "Strength" in name:
            scope_options = list(at.radio(key="strength_scope").options)
            for option in scope_options:
                at.radio(key="strength_scope").set_value(option)
                settle(_checked(at.run(), where), where)
                states[f"scope={option}"] = capture(at)
            at.radio(key="strength_scope").set_value(scope_options[0])
            settle(_checked(at.run(), where), where)
        elif "Patterns" in name:
            states["default"] = capture(at)
            # CLS maps are left to the command line (below): one more autoencoder and UMAP layout here
            for key in ("pattern_scatter",):
                toggles = [t for t in at.toggle if t.key == key]
                if not toggles:
                    continue
                toggles[0].set_value(True)
                settle(_checked(at.run(), where), where)
                states[f"{key}=on"] = capture(at)
                at.toggle(key=key).set_value(False)
                settle(_checked(at.run(), where), where)
        elif "Case_Study" in name:
            metric = selectbox("case_metric")
            options = list(metric.options) if metric is not None else []
            for i, option in enumerate(options):
                selectbox("case_metric").select_index(i)
                settle(_checked(at.run(), where), where)
                states[f"metric={option}"] = capture(at)
            if options:
                selectbox("case_metric").select_index(0)
                settle(_checked(at.run(), where), where)
            else:
                states["default"] = capture(at)
        elif "Explanations" in name:
            if "explain_score" in _keys(at, "button"):
                at.button(key="explain_score").click()
                settle(_checked(at.run(), where), where)
            radios = [r for r in at.radio if r.key == "explain_scope"]
            states[f"scope={radios[0].value if radios else ''}, scored"] = capture(at)
            if radios:
                default_scope = radios[0].value
                for option in radios[0].options:
                    if radios[0].format_func(default_scope) == option:
                        continue
                    raw = next(v for v in ("set", "focus") if radios[0].format_func(v) == option)
                    at.radio(key="explain_scope").set_value(raw)
                    _checked(at.run(), where)
                    at.button(key="explain_score").click()
                    settle(_checked(at.run(), where), where)
                    states[f"scope={raw}, scored"] = capture(at)
                at.radio(key="explain_scope").set_value(default_scope)
                settle(_checked(at.run(), where), where)
        else:
            states["default"] = capture(at)
        write(name, states)
        print(f"  {where}: {len(states)} state(s) in {time.perf_counter() - began:.0f} s", flush=True)

    # the home page last: its overview switches from PCA to UMAP once UMAP has compiled
    began = time.perf_counter()
    at.switch_page(home.name)
    _checked(at.run(), home.name)
    deadline = time.monotonic() + UMAP_WAIT
    while "UMAP of the" not in _captions(at) and time.monotonic() < deadline:
        time.sleep(SETTLE_PAUSE)
        _checked(at.run(), home.name)
    if "UMAP of the" not in _captions(at):
        print("  WARNING: the home overview never switched to UMAP; it is captured as shown", flush=True)
    settle(at, home.name)
    write(home.stem, {"default": capture(at)})
    print(f"  {home.name}: 1 state in {time.perf_counter() - began:.0f} s", flush=True)
    return states_of


# --- the command line -----------------------------------------------------------------------


def write_demo_folder(root: Path, dest: Path) -> dict[str, Any]:
    """The demo model's held-out digits as an ImageFolder (a copy of core/inputs/digits.py's split and rendering)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    split = {"seed": 0, "test_fraction": 0.2}
    card = root / "data" / "demo_vit.json"
    if card.is_file():
        split.update({k: v for k, v in json.loads(card.read_text()).get("split", {}).items() if k in split})
    digits = load_digits()
    labels = digits.target
    _, test = train_test_split(
        np.arange(len(labels)), test_size=split["test_fraction"], random_state=split["seed"], stratify=labels
    )
    digest = hashlib.sha256()
    for index in np.sort(test):
        values = np.asarray(digits.images[index], dtype=np.float64)
        pixels = np.clip(np.rint(values * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels).resize((32, 32), Image.Resampling.BILINEAR)
        folder = dest / str(int(labels[index]))
        folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        name = f"{folder.name}/digit-{int(index):04d}.png"
        (dest / name).write_bytes(buffer.getvalue())
        digest.update(name.encode() + b"\0" + hashlib.sha256(buffer.getvalue()).digest())
    return {"split": split, "images": int(len(test)), "sha256": digest.hexdigest()}


def _member(name: str, content: bytes, created: str | None) -> dict[str, Any]:
    import numpy as np

    record: dict[str, Any] = {"sha256": hashlib.sha256(content).hexdigest(), "bytes": len(content)}
    if name.endswith(".json"):
        data = json.loads(content)
        if isinstance(data, dict) and "created" in data:
            data["created"] = "<created>"
            normal = content.decode("utf-8").replace(f'"{created}"', '"<created>"').encode()
            record = {"sha256 (created normalised)": hashlib.sha256(normal).hexdigest(), "bytes": len(content)}
        record["content"] = plain(data)
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(content))
        record["schema"] = [f"{field.name}: {field.type}" for field in table.schema]
        record["content"] = frame(table.to_pandas())
    elif name.endswith(".npy"):
        array = np.load(io.BytesIO(content), allow_pickle=False)
        record.update(dtype=str(array.dtype), shape=list(array.shape))
        if array.size <= MAX_ARRAY_VALUES:
            record["content"] = plain(array)
        else:
            record["content_sha256"] = hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
    elif name.endswith(".npz"):
        with np.load(io.BytesIO(content), allow_pickle=False) as arrays:
            record["content"] = {key: {"dtype": str(arrays[key].dtype), "shape": list(arrays[key].shape),
                                       "values": plain(arrays[key])} for key in sorted(arrays.files)}
    elif name.endswith(".csv"):
        record["content"] = content.decode("utf-8").splitlines()
    return record


_TQDM = re.compile(r"\d+%\||\d+/\d+ \[|it/s|step/s|s/it|s/step")


def run_cli(root: Path, out: Path) -> dict[str, Any]:
    if CLI_WORK.exists():
        shutil.rmtree(CLI_WORK)
    images = CLI_WORK / "demo_digits"
    images.mkdir(parents=True)
    folder = write_demo_folder(root, images)
    command = ["-m", "core", "analyze", "--model", "demo", "--images", "demo_digits", "--out", "bundle.zip",
               "--report", "report.html", *CLI_SETTINGS]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *command], cwd=CLI_WORK, env=env, capture_output=True, text=True,
                          timeout=3 * RUN_TIMEOUT)
    seconds = time.perf_counter() - began
    (out / "cli_stderr.txt").write_text(done.stderr, encoding="utf-8")  # not compared: progress bars
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    print(f"  python -m core analyze: {seconds:.0f} s", flush=True)
    stdout = [re.sub(r" in \d+ s\.$", " in <seconds> s.", line) for line in done.stdout.splitlines()]
    stderr = [line for line in re.split(r"[\r\n]+", done.stderr) if line.strip() and not _TQDM.search(line)]

    data = (CLI_WORK / "bundle.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        contents = {info.filename: archive.read(info) for info in infos}
    created = json.loads(contents["manifest.json"]).get("created") if "manifest.json" in contents else None
    members = {}
    for info in infos:
        members[info.filename] = {
            "zip_date": list(info.date_time), "compress_type": info.compress_type,
            **_member(info.filename, contents[info.filename], created),
        }
    report = (CLI_WORK / "report.html").read_bytes()
    normal = report.replace(created.encode(), b"<created>") if created else report
    return {
        "command": ["python", *command],
        "input_folder": folder,
        "stdout": stdout,
        "stderr_without_progress_bars": stderr,
        "bundle": {"bytes": len(data), "member_names": [info.filename for info in infos], "members": members},
        "report_html": {
            "sha256 (created normalised)": hashlib.sha256(normal).hexdigest(),
            "bytes": len(report),
            "created_occurrences": report.count(created.encode()) if created else 0,
        },
    }


# --- compare --------------------------------------------------------------------------------


def _diffs(a: Any, b: Any, path: str, found: list[tuple[str, Any, Any]], numeric: list[float]) -> None:
    if type(a) is not type(b):
        found.append((path, a, b))
        if {type(a), type(b)} == {int, float}:
            numeric.append(abs(float(a) - float(b)))
        return
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else str(key)
            if key not in a:
                found.append((where, "<missing>", b[key]))
            elif key not in b:
                found.append((where, a[key], "<missing>"))
            else:
                _diffs(a[key], b[key], where, found, numeric)
    elif isinstance(a, list):
        if len(a) != len(b):
            found.append((f"{path} (length)", len(a), len(b)))
        for i, (x, y) in enumerate(zip(a, b)):
            _diffs(x, y, f"{path}[{i}]", found, numeric)
    elif isinstance(a, float):
        if repr(a) != repr(b):
            found.append((path, a, b))
            numeric.append(abs(a - b))
    elif a != b:
        found.append((path, a, b))


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def compare(dir_a: Path, dir_b: Path, shown: int) -> int:
    names = sorted({p.name for p in dir_a.glob("*.json")} | {p.name for p in dir_b.glob("*.json")})
    if not names:
        print(f"no snapshot files in {dir_a} or {dir_b}")
        return 2
    different = 0
    for name in names:
        a, b = dir_a / name, dir_b / name
        if not a.exists() or not b.exists():
            print(f"{name}: MISSING in {dir_a if not a.exists() else dir_b}")
            different += 1
            continue
        if a.read_bytes() == b.read_bytes():
            print(f"{name}: identical")
            continue
        found: list[tuple[str, Any, Any]] = []
        numeric: list[float] = []
        _diffs(json.loads(a.read_text(encoding="utf-8")), json.loads(b.read_text(encoding="utf-8")), "", found, numeric)
        if not found:  # same data, other formatting
            print(f"{name}: identical data (files differ only in formatting)")
            continue
        different += 1
        largest = f"; largest difference between floats {max(numeric):.3g}" if numeric else ""
        print(f"{name}: DIFFERENT at {len(found)} path(s){largest}")
        for path, x, y in found[:shown]:
            print(f"    {path}\n        A: {_short(x)}\n        B: {_short(y)}")
        if len(found) > shown:
            print(f"    ... and {len(found) - shown} more")
    print("ALL IDENTICAL" if not different else f"{different} of {len(names)} file(s) differ")
    return 0 if not different else 1


# --- main -----------------------------------------------------------------------------------


def snapshot(root: Path, out: Path, *, pages: bool, cli: bool) -> None:
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    os.chdir(root)  # the app's .streamlit/config.toml and relative paths
    sys.path.insert(0, str(root))
    import logging

    import numpy
    import pandas
    import streamlit
    import torch

    logging.getLogger("streamlit").setLevel(logging.ERROR)
    meta: dict[str, Any] = {
        "python": sys.version.split()[0],
        "versions": {m.__name__: m.__version__ for m in (numpy, pandas, streamlit, torch)},
        "torch_threads": torch.get_num_threads(),
        "cli_settings": CLI_SETTINGS,
    }
    if pages:
        print("pages (AppTest):", flush=True)
        meta["page_states"] = run_pages(root, out)
    if cli:
        print("command line:", flush=True)
        dump(run_cli(root, out), out / "cli_bundle.json")
    dump(meta, out / "meta.json")
    seconds = time.perf_counter() - began
    (out / "timing.txt").write_text(f"{seconds:.0f} s\n")  # not compared
    print(f"snapshot of {root} written to {out} in {seconds:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="folder to write the snapshot to")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("DIR_A", "DIR_B"), help="compare two snapshots")
    parser.add_argument("--shown", type=int, default=15, help="differing paths printed per file (--compare)")
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent, help="the repository")
    parser.add_argument("--no-pages", action="store_true", help="skip the AppTest pages")
    parser.add_argument("--no-cli", action="store_true", help="skip the command line")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare, shown=args.shown)
    if args.out is None:
        parser.error("give OUT_DIR, or --compare DIR_A DIR_B")
    os.environ["HF_HUB_OFFLINE"] = "1"
    snapshot(args.root.resolve(), args.out.resolve(), pages=not args.no_pages, cli=not args.no_cli)
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # the app's worker threads (the staged analysis, UMAP's warm-up) are idle by now; leave at once
    os._exit(code)
