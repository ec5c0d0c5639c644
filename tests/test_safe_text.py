"""Cells and strings from data made inert for spreadsheets and Markdown, read back as people's tools do."""

from __future__ import annotations

import csv
import io
from html import unescape

import numpy as np
import pandas as pd
import pytest

from medres.safe_text import csv_cell, csv_safe, markdown_text

FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+cmd|' /C calc'!A0", "@SUM(1+1)", "-2+3+cmd|' /C calc'!A0",
            "\t=1", "\r=1", "=1", "-", "+"]
NUMBERS_AS_TEXT = ["-1", "-1.5", "+2", "-.5", "-1e-3", "12", "0.25"]
PLAIN = ["A", "site 1", "'=already quoted", "", "P1 S1", "症例1", "a=b", " =x"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_formula_cells_get_a_quote_and_the_rest_stay_as_written():
    for v in FORMULAS:
        assert csv_cell(v) == "'" + v
    for v in NUMBERS_AS_TEXT + PLAIN:
        assert csv_cell(v) == v
    for v in (-1, -1.5, np.float64(-2.5), np.int64(-3), None, float("nan"), True):
        assert csv_cell(v) is v


def test_a_frame_read_back_by_pandas_and_csv_has_no_formula_and_keeps_its_numbers():
    formulas = [v for v in FORMULAS if "\r" not in v]  # pandas leaves a lone CR unquoted: csv would split
    df = pd.DataFrame({"case_id": formulas, "site": ["A"] * len(formulas), "p": -np.arange(len(formulas)) / 4,
                       "n": -np.arange(len(formulas)), "age": (NUMBERS_AS_TEXT * 2)[:len(formulas)],
                       "=cmd": ["x"] * len(formulas)})
    df["cat"] = pd.Categorical(["=1", "b"] * 4)
    text = csv_safe(df).to_csv(index=False)
    assert df["case_id"].tolist() == formulas  # the caller's frame is unchanged
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    rows = list(csv.reader(io.StringIO(text)))
    for cells in rows:
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) and not _is_number(c) for c in cells)
    assert back["case_id"].tolist() == ["'" + v for v in formulas]
    assert "'=cmd" in back.columns and back["cat"].tolist()[:2] == ["'=1", "b"]
    numbers = pd.read_csv(io.StringIO(text))
    np.testing.assert_array_equal(numbers["p"], df["p"])
    np.testing.assert_array_equal(numbers["n"], df["n"])
    assert back["age"].tolist() == df["age"].tolist()  # numbers kept as text are numbers, not formulas


def test_index_labels_are_neutralised_too():
    df = pd.DataFrame({"n": [1, 2]}, index=pd.Index(["=A", "B"], name="site"))
    back = pd.read_csv(io.StringIO(csv_safe(df).to_csv()), dtype=str)
    assert back["site"].tolist() == ["'=A", "B"]


@pytest.mark.parametrize("hostile,forbidden", [
    ("<script>alert(1)</script>", "<script>"), ("<img src=x onerror=alert(1)>", "<img"),
    ("[click](javascript:alert(1))", "[click]("), ("**bold** _it_ `code`", "**bold**"),
    ("a | b", "a | b"), ("two\nlines", "\n")])
def test_markdown_text_escapes_markup(hostile, forbidden):
    out = markdown_text(hostile)
    assert forbidden not in out and "\n" not in out


def test_markdown_text_renders_back_to_the_literal_string():
    """A Markdown renderer (Python-Markdown, with tables) shows the exact characters: no tag, emphasis, code,
    link, heading or list."""
    markdown = pytest.importorskip("markdown")
    for s in ("<b>x</b> & y", "*a* _b_ `c` [d](e) #f |g| \\i", "- item", "+ item", "# title",
              "<script>alert(1)</script>"):
        html = markdown.markdown(markdown_text(s), extensions=["tables"])
        for tag in ("<b>", "<em>", "<strong>", "<code>", "<a ", "<li>", "<h1>", "<script>"):
            assert tag not in html, (s, html)
        assert s in unescape(html), (s, html)
