"""CSV files: text that a spreadsheet would evaluate is quoted, numbers and plain names are written as they are."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest

from core.csvfile import FORMULA_STARTS, csv_bytes, inert

# class names a model could carry: each one runs (a command, a sum, a request) in a spreadsheet
HOSTILE = ["+cmd|' /C calc'!A0", "@SUM(1+1)", '=HYPERLINK("http://127.0.0.1:9/x","y")', "-1", "\t=1", "\r=1"]
PLAIN = ["cat", "tabby cat, Felis", "L0H3", "", "1+1", "a=b", "'=quoted already"]


def _rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def test_hostile_text_cells_get_one_leading_quote_and_nothing_else_changes() -> None:
    frame = pd.DataFrame({"class": HOSTILE + PLAIN, "rank": range(1, len(HOSTILE) + len(PLAIN) + 1)})
    header, *rows = _rows(csv_bytes(frame))
    assert header == ["class", "rank"]
    assert [row[0] for row in rows] == [
        "'+cmd|' /C calc'!A0",
        "'@SUM(1+1)",
        "'=HYPERLINK(\"http://127.0.0.1:9/x\",\"y\")",
        "'-1",
        "'\t=1",
        "'\r=1",
        *PLAIN,
    ]
    assert [row[1] for row in rows] == [str(i) for i in range(1, 14)]


def test_numbers_stay_numbers_at_full_precision() -> None:
    third = 1 / 3
    frame = pd.DataFrame({
        "delta": [-0.5, 0.25, -third],
        "layer": np.array([-1, 0, 2], dtype=np.int64),
        "kept": [True, False, True],
    })
    header, *rows = _rows(csv_bytes(frame))
    assert header == ["delta", "layer", "kept"]
    assert rows == [["-0.5", "-1", "True"], ["0.25", "0", "False"], [repr(-third), "2", "True"]]
    assert float(rows[2][0]) == -third  # every digit of the float, not a display rounding


def test_text_headers_are_guarded_like_cells() -> None:
    frame = pd.DataFrame([[1, 2, 3]], columns=["=cmd", "-x", "value"])
    assert _rows(csv_bytes(frame))[0] == ["'=cmd", "'-x", "value"]


@pytest.mark.parametrize("dtype", [object, "string", "category"])
def test_every_kind_of_text_column_is_guarded(dtype) -> None:
    frame = pd.DataFrame({"name": pd.Series(["@SUM(1+1)", "dog", None], dtype=dtype), "p": [-0.5, 0.5, 0.0]})
    assert _rows(csv_bytes(frame))[1:] == [["'@SUM(1+1)", "-0.5"], ["dog", "0.5"], ["", "0.0"]]


def test_numbers_inside_a_text_column_are_left_alone() -> None:
    frame = pd.DataFrame({"mixed": pd.Series(["=1", -2, -0.5], dtype=object)})
    assert [row[0] for row in _rows(csv_bytes(frame))[1:]] == ["'=1", "-2", "-0.5"]


def test_a_line_break_inside_a_name_keeps_its_row_whole() -> None:
    frame = pd.DataFrame({"name": ["p\rq", "x\ny", "last"], "p": [0.1, 0.2, 0.3]})
    assert _rows(csv_bytes(frame)) == [["name", "p"], ["p\rq", "0.1"], ["x\ny", "0.2"], ["last", "0.3"]]


def test_the_frame_itself_is_not_changed() -> None:
    frame = pd.DataFrame({"=class": ["=1"]})
    csv_bytes(frame)
    assert list(frame.columns) == ["=class"] and frame.iloc[0, 0] == "=1"


def test_inert_covers_the_owasp_starts() -> None:
    assert set(FORMULA_STARTS) == {"=", "+", "-", "@", "\t", "\r"}
    assert [inert(start + "x") for start in FORMULA_STARTS] == ["'" + start + "x" for start in FORMULA_STARTS]
    assert inert(-3) == -3 and inert("x=1") == "x=1"
