"""Subgroup levels sort naturally: age bands in age order, numbers by value, "missing" last."""

from __future__ import annotations

from medres.report.subgroups import AGE_BANDS, level_order


def test_age_bands_sort_in_age_order():
    bands = [name for _, _, name in AGE_BANDS]
    assert sorted(reversed(bands + ["missing"]), key=level_order) == bands + ["missing"]
    assert sorted(["80+", "<40", "50-59"]) == ["50-59", "80+", "<40"]  # what plain text order gave


def test_numbers_by_value_then_text():
    assert sorted(["scanner 10", "site_b", "scanner 2", "missing", "site_a"], key=level_order) == [
        "scanner 2", "scanner 10", "site_a", "site_b", "missing"]
