"""Subgroups: pooled out-of-fold metrics per level of any manifest column, age bands included."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from medres.config import Config
from medres.report.aggregate import BinaryTask, _record, classification_records

__all__ = ["AGE_BANDS", "SubgroupLevel", "add_age_band", "level_order", "subgroup_levels", "subgroup_records"]

AGE_BANDS = (
    (0, 40, "<40"),
    (40, 50, "40-49"),
    (50, 60, "50-59"),
    (60, 70, "60-69"),
    (70, 80, "70-79"),
    (80, math.inf, "80+"),
)


def add_age_band(df: pd.DataFrame) -> pd.DataFrame:
    """Add ``age_band`` (decades, "<40" .. "80+") from a text ``age`` column like "57" or "057Y"."""
    if "age" not in df.columns:
        return df
    out = df.copy()
    years = pd.to_numeric(
        out["age"].astype(str).str.extract(r"(\d+(?:\.\d+)?)", expand=False), errors="coerce"
    )
    out["age_years"] = years
    band = pd.Series("missing", index=out.index, dtype=object)
    for lo, hi, name in AGE_BANDS:
        band[(years >= lo) & (years < hi)] = name
    out["age_band"] = band
    return out


def level_order(level: str) -> tuple[int, float, str]:
    """Sort key of a subgroup level: levels holding a number by that number (``<40`` before ``40-49``
    before ``80+``; ``scanner 2`` before ``scanner 10``), then the others as text, ``missing`` last."""
    if level == "missing":
        return (2, 0.0, level)
    number = re.search(r"\d+(?:\.\d+)?", level)
    if number is None:
        return (1, 0.0, level)
    below = level.lstrip().startswith("<")  # "<40" holds the ages under 40
    return (0, float(number.group()) - (0.5 if below else 0.0), level)


class SubgroupLevel(NamedTuple):
    """One level of a subgroup column: ``label`` is ``column=level``; ``rows`` the boolean mask of the
    frame's rows (by position) at that level."""

    label: str
    rows: np.ndarray


def subgroup_levels(df: pd.DataFrame, columns: Iterable[str]) -> tuple[list[SubgroupLevel], list[str]]:
    """Every level of each subgroup column of ``df`` (``age_band`` derived from ``age``), in
    `level_order`: an empty or absent value is the level "missing".

    Returns the levels (columns in the order given) and one note per column that ``df`` lacks.
    """
    df = add_age_band(df)
    levels, notes = [], []
    for col in columns:
        if col not in df.columns:
            notes.append(f"subgroup column {col!r} is not in the predictions.")
            continue
        text = df[col].astype(str).fillna("missing")  # pandas 3 keeps a missing value missing in str
        values = text.replace({"": "missing", "nan": "missing", "None": "missing"}).to_numpy()
        levels += [SubgroupLevel(f"{col}={v}", values == v) for v in sorted(set(values), key=level_order)]
    return levels, notes


def subgroup_records(
    df: pd.DataFrame, task: BinaryTask, config: Config, *, seed: int = 0
) -> tuple[list[dict], list[str]]:
    """Pooled out-of-fold metrics per level of every ``evaluate.subgroups`` column.

    A level with fewer than ``evaluate.min_positives`` positive cases (or negatives) is "not
    estimable": its records carry n and n_pos, value NaN and that note. Returns the records and
    notes on requested columns that the predictions lack.
    """
    ev = config.evaluate
    levels, missing = subgroup_levels(df, ev.subgroups)
    recs = []
    for label, rows in levels:
        part = df[rows]
        y = part["y_true"].to_numpy() == task.index
        n, n_pos = len(part), int(y.sum())
        if n_pos < ev.min_positives or n - n_pos < ev.min_positives:
            note = (
                f"not estimable: {n_pos} positive and {n - n_pos} negative cases "
                f"(minimum {ev.min_positives} of each)"
            )
            for metric in ("auroc", "sensitivity", "specificity"):
                recs.append(
                    _record(
                        "subgroup",
                        metric,
                        math.nan,
                        subgroup=label,
                        cls=task.positive,
                        n=n,
                        n_pos=n_pos,
                        note=note,
                    )
                )
            continue
        recs += [
            r
            for r in classification_records(part, task, config, scope="subgroup", subgroup=label, seed=seed)
            if r["metric"] in ("auroc", "sensitivity", "specificity", "prevalence")
        ]
    return recs, missing
