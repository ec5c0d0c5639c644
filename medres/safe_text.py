"""Text from data made inert for the programs that open medres's outputs: spreadsheets and Markdown.

- CSV for people (predictions, cohort and per-case tables, the index): a text cell that starts with
  ``= + - @``, TAB or CR is a formula to Excel/LibreOffice (``=HYPERLINK(...)``, ``+cmd|' /C calc'!A0``);
  OWASP's rule prefixes such a cell with ``'``. Numbers stay numbers (``-1.5`` is not a formula), and so
  does text that is a plain decimal number. Parquet tables and files medres reads back keep exact values.
- Markdown (``model_card.md``): HTML and Markdown markup in a string from data is escaped.

Figures turn off math parsing on every text instead (``medres.report.figures.to_data_uri``).
"""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

__all__ = ["FORMULA_START", "csv_cell", "csv_safe", "markdown_text"]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_MARKDOWN = re.compile(r"([\\`*_\[\]#|~])")


def csv_cell(value: Any) -> Any:
    """``value`` as a spreadsheet shows it without running it: text starting with a formula character
    gets a leading ``'`` (already-quoted text and plain decimal numbers are left as they are)."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _safe_labels(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_tuples([tuple(csv_cell(v) for v in t) for t in index], names=index.names)
    return pd.Index([csv_cell(v) for v in index], name=csv_cell(index.name), dtype=object) \
        if index.dtype == object or pd.api.types.is_string_dtype(index.dtype) else index


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` for a CSV that people open: every text cell, column name and index label through
    :func:`csv_cell`; numeric columns untouched."""
    out = df.copy()
    for k in range(out.shape[1]):
        col = out.iloc[:, k]
        if col.dtype == object or pd.api.types.is_string_dtype(col.dtype) or isinstance(col.dtype,
                                                                                       pd.CategoricalDtype):
            out.isetitem(k, col.astype(object).map(csv_cell))
    out.columns = _safe_labels(out.columns)
    out.index = _safe_labels(out.index)
    return out


def markdown_text(value: Any) -> str:
    """``value`` as literal text inside a Markdown document: on one line, ``< > &`` as HTML entities,
    Markdown's markup characters (and a leading list marker) backslash-escaped."""
    text = " ".join(str(value).split())
    text = _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))
    return "\\" + text if text[:1] in ("-", "+", "=") else text
