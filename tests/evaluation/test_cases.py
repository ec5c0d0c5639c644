"""Per-case segmentation scores read each case's own predicted mask, or refuse a run whose cases share one."""

from __future__ import annotations

import pandas as pd
import pytest

from medres.errors import DataError
from medres.evaluation.cases import segmentation_cases
from medres.report.run_folder import load_run
from tests.report.synthetic_run import write_synthetic_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_synthetic_run(tmp_path_factory.mktemp("cases"), n_patients=9, extra_scans=0,
                               bootstrap_resamples=100)


def test_a_run_with_masks_named_the_old_way_is_still_scored(run_dir):
    run = load_run(run_dir)  # the synthetic run names masks seg/<case_id>.nii.gz: read through seg_path
    cases = segmentation_cases(run)
    assert set(cases["case_id"]) == set(run.predictions["case_id"])
    assert cases["dice"].between(0, 1).all()


def test_two_cases_pointing_at_one_mask_file_are_refused(run_dir):
    table = run_dir / "fold_0" / "predictions.parquet"
    original = pd.read_parquet(table)
    clashed = original.copy()
    first, second = clashed["case_id"].iloc[:2]
    # as the old rule left them: a second case's row naming the first one's mask (on a case-insensitive
    # file system: the same name in another case)
    clashed.loc[1, "seg_path"] = clashed.loc[0, "seg_path"].upper().replace(".NII.GZ", ".nii.gz")
    try:
        clashed.to_parquet(table, index=False)
        with pytest.raises(DataError, match=f"case '{first}' and case '{second}' would share one predicted "
                                            "mask file"):
            segmentation_cases(load_run(run_dir))
    finally:
        original.to_parquet(table, index=False)
