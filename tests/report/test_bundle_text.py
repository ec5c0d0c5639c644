"""Hostile text from a manifest through the whole report: the figures draw it as written (no mathtext
crash, no formula), and every CSV of the bundle holds it quoted for spreadsheets."""

from __future__ import annotations

import csv

import pandas as pd
import pytest

from medres.evaluation import evaluate_run
from tests.report.synthetic_run import write_synthetic_run

SITES = {"north": "=HYPERLINK(\"http://x\",\"y\")", "south": "$\\frac{$", "east": "$x$"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    run = write_synthetic_run(tmp_path_factory.mktemp("text"), n_patients=18, extra_scans=2,
                              bootstrap_resamples=100)
    for table in run.glob("fold_*/*.parquet"):
        df = pd.read_parquet(table)
        df["site"] = df["site"].map(SITES)
        df["scanner"] = "@SUM(1)"
        df["case_id"] = "$" + df["case_id"] + "$"  # case names reach the gallery's titles
        df.to_parquet(table, index=False)
    return evaluate_run(run, run.parent / "report").parent


def test_the_report_is_built_and_names_the_hostile_values(bundle):
    html = (bundle / "report.html").read_text(encoding="utf-8")
    assert "$\\frac{$" in html and "&lt;" not in SITES["north"]


@pytest.mark.parametrize("name", ["predictions.csv", "seg_cases.csv", "cohort.csv"])
def test_no_bundle_csv_holds_a_formula(bundle, name):
    with open(bundle / name, newline="", encoding="utf-8") as fh:
        cells = [c for row in csv.reader(fh) for c in row]
    assert cells
    for c in cells:
        if c.startswith(("=", "+", "-", "@", "\t", "\r")):
            float(c)  # only a number may start so


def test_the_predictions_csv_keeps_the_values_quoted(bundle):
    df = pd.read_csv(bundle / "predictions.csv", dtype=str, keep_default_na=False)
    assert set(df["site"]) == {"'" + SITES["north"], SITES["south"], SITES["east"]}
    assert set(df["scanner"]) == {"'@SUM(1)"}
