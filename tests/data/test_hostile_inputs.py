"""Issue 8 item 8: ``predict --input FOLDER`` holding NIfTI files and DICOM series sub-folders predicts
them all and names what it skipped, with the reason."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from medres.data.readers.inputs import discover_inputs
from medres.errors import DataError
from tests.data.dicom_factory import write_series


def _mixed(folder):
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii"):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), folder / name)
    write_series(folder / "series1", 2)
    write_series(folder / "series2", 3)
    (folder / "notes.txt").write_text("DOE JOHN\n")
    (folder / "empty").mkdir()
    (folder / ".DS_Store").write_bytes(b"\x00")
    return folder


def test_nifti_files_and_series_folders_are_all_found(tmp_path, caplog):
    folder = _mixed(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="medres"):
        cases, skipped = discover_inputs(folder)
    assert [p.name for p in cases] == ["a.nii.gz", "b.nii", "series1", "series2"]
    reasons = {p.name: why for p, why in skipped}
    assert set(reasons) == {"notes.txt", "empty"}
    assert "not a scan" in reasons["notes.txt"] and "without DICOM files" in reasons["empty"]
    assert "skipping notes.txt" in caplog.text and "skipping empty" in caplog.text
    assert "DOE" not in caplog.text


def test_predict_input_records_use_the_discovery(tmp_path):
    from medres.predict import input_records

    records = input_records(_mixed(tmp_path / "in"), None)
    assert [r["case_id"] for r in records] == ["a", "b", "series1", "series2"]


def test_a_series_folder_is_one_case(tmp_path):
    write_series(tmp_path / "s", 3)
    cases, skipped = discover_inputs(tmp_path / "s")
    assert cases == [tmp_path / "s"] and not skipped


def test_loose_dicom_files_beside_nifti_are_named(tmp_path):
    folder = _mixed(tmp_path / "in")
    write_series(folder, 2, name="X{:03d}.dcm")
    _, skipped = discover_inputs(folder)
    assert any("2 loose DICOM file(s) beside other scans" in why for _, why in skipped)


def test_nothing_to_predict_is_a_data_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no scans"):
        discover_inputs(tmp_path / "in")
