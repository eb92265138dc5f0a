"""Tables as CSV files that a spreadsheet opens as data, never as formulas.

Excel, LibreOffice and Google Sheets evaluate a cell that starts with ``=``, ``+``, ``-``
or ``@``, and class, image and folder names are whatever a model or an upload says: a
class named ``=HYPERLINK("http://…","y")`` would run when its table is opened. OWASP's
rule against CSV injection covers those four starts plus a tab and a carriage return:
a text cell or a text header that starts with one gets a leading single quote, which
spreadsheets show as text and never evaluate. Numbers stay numbers, so a negative
value is written as it is.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

__all__ = ["FORMULA_STARTS", "csv_bytes", "inert"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# dtype kinds that hold no text: bool, integers, floats, complex, datetimes and durations
_NOT_TEXT = frozenset("biufcmM")


def inert(value: Any) -> Any:
    """``value`` with a leading ``'`` if it is text a spreadsheet would read as a formula; anything else as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """The frame as a UTF-8 CSV file without its index, every text cell and header made ``inert``.

    Floats keep their full precision (the shortest text that reads back as the same
    float), not any rounding a page shows. Lines end in CRLF, as RFC 4180 has them:
    with pandas' default line feed, a cell holding a bare carriage return is written
    unquoted and CSV readers split the row there.
    """
    cells = frame.copy(deep=False)
    for position in range(cells.shape[1]):
        column = cells.iloc[:, position]
        if column.dtype.kind not in _NOT_TEXT:  # object, string and category columns may hold text
            cells.isetitem(position, column.astype(object).map(inert))
    cells.columns = [inert(name) for name in cells.columns]
    return cells.to_csv(index=False, lineterminator="\r\n").encode()
