"""Subgroup levels sort naturally (age bands in age order, numbers by value, "missing" last) and each is a
mask of the frame's rows."""

from __future__ import annotations

import pandas as pd

from medres.report.subgroups import AGE_BANDS, level_order, subgroup_levels


def test_age_bands_sort_in_age_order():
    bands = [name for _, _, name in AGE_BANDS]
    assert sorted(reversed(bands + ["missing"]), key=level_order) == bands + ["missing"]
    assert sorted(["80+", "<40", "50-59"]) == ["50-59", "80+", "<40"]  # what plain text order gave


def test_numbers_by_value_then_text():
    assert sorted(["scanner 10", "site_b", "scanner 2", "missing", "site_a"], key=level_order) == [
        "scanner 2", "scanner 10", "site_a", "site_b", "missing"]


def test_subgroup_levels_masks_missing_level_and_absent_columns():
    df = pd.DataFrame({"site": ["b", "", "a", None, "b"], "age": ["057Y", "39", "", "80", "52"]},
                      index=[10, 3, 7, 7, 1])  # not a range, with a repeat: the masks are by position
    levels, notes = subgroup_levels(df, ["site", "scanner", "age_band"])
    assert notes == ["subgroup column 'scanner' is not in the predictions."]
    got = {label: rows.tolist() for label, rows in levels}
    assert list(got) == ["site=a", "site=b", "site=missing",
                         "age_band=<40", "age_band=50-59", "age_band=80+", "age_band=missing"]
    assert got["site=b"] == [True, False, False, False, True]
    assert got["site=missing"] == [False, True, False, True, False]
    assert got["age_band=50-59"] == [True, False, False, False, True]
    assert got["age_band=missing"] == [False, False, True, False, False]
    assert "age_band" not in df.columns  # the caller's frame is left as it was
