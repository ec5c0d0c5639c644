"""The one rule from a case id to a file name, and the clash check where a set of names is made."""

from __future__ import annotations

import hashlib

import pytest

from medres.errors import DataError
from medres.layout import CASE_HASH_CHARS, case_file_stem, case_file_stems, check_distinct_files

COLLIDING_BEFORE = ["症例1", "病例1", "P1 S1", "P1_S1", "A1", "a1", "c/1", "c:1", "c_1", ""]


def test_stem_is_a_readable_prefix_and_the_sha256_of_the_exact_id():
    for case_id, prefix in (("P1 S1", "P1_S1"), ("P1_S1", "P1_S1"), ("症例1", "__1"), ("", "case"),
                            ("../x", "_x"), ("..", "case")):
        digest = hashlib.sha256(case_id.encode("utf-8")).hexdigest()[:CASE_HASH_CHARS]
        assert case_file_stem(case_id) == f"{prefix}-{digest}"


def test_ids_the_old_rule_collapsed_get_distinct_names_even_case_folded():
    stems = case_file_stems(COLLIDING_BEFORE)
    assert len({s.casefold() for s in stems.values()}) == len(COLLIDING_BEFORE)
    for stem in stems.values():
        assert all(c.isascii() and (c.isalnum() or c in "._-") for c in stem)
        assert not stem.startswith(".") and len(stem) <= 40 + 1 + CASE_HASH_CHARS


def test_a_long_id_stays_a_short_file_name():
    stem = case_file_stem("x" * 10_000)
    assert len(stem) == 40 + 1 + CASE_HASH_CHARS and stem != case_file_stem("x" * 9_999)


def test_a_clash_names_both_cases_and_rows_and_compares_case_folded():
    with pytest.raises(DataError, match=r"case 'A' \(row 2\) and case 'a' \(row 5\) would share one mask"):
        check_distinct_files([("A", "seg/A.nii.gz", 2), ("b", "seg/b.nii.gz", 3), ("a", "seg/a.nii.gz", 5)],
                             what="mask")
    check_distinct_files([("A", "seg/A1.nii.gz", 2), ("a", "seg/a2.nii.gz", 5)])  # no clash: no error


def test_records_with_rows_and_a_repeated_id_are_refused():
    with pytest.raises(DataError, match=r"case 'x' \(row 1\) and case 'x' \(row 4\)"):
        case_file_stems([{"case_id": "x", "row": 1}, {"case_id": "x", "row": 4}])
