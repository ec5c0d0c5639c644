"""read_manifest: text columns, validation of every row at once, path rules."""

from __future__ import annotations

import os

import pytest

from medres.data.manifest import read_manifest, validate_manifest
from medres.errors import DataError, DataErrors

VOCAB = ["normal", "nodule"]


def _cohort(tmp_path, rows, header="case_id,patient_id,image,mask,label,split"):
    (tmp_path / "scans").mkdir(exist_ok=True)
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz", "m.nii.gz"):
        (tmp_path / "scans" / name).write_bytes(b"")
    (tmp_path / "scans" / "series1").mkdir(exist_ok=True)
    path = tmp_path / "manifest.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_ids_stay_text_and_paths_resolve(tmp_path):
    path = _cohort(tmp_path, [
        "c1,00123,scans/a.nii.gz,scans/m.nii.gz,nodule,train",
        "c2,123,scans/b.nii.gz,,normal,test",
        "NA,NA,scans/series1,,normal,train",
    ])
    df = read_manifest(path, vocabulary=VOCAB)
    assert df["patient_id"].tolist() == ["00123", "123", "NA"]  # not merged, not NaN
    assert df["case_id"].tolist() == ["c1", "c2", "NA"]
    assert df["image"].tolist() == [str(tmp_path / "scans" / n) for n in ("a.nii.gz", "b.nii.gz", "series1")]
    assert df["mask"].tolist() == [str(tmp_path / "scans" / "m.nii.gz"), "", ""]
    assert df.attrs["image_columns"] == ["image"] and df.attrs["root"] == str(tmp_path)


def test_every_problem_is_reported_at_once_with_its_row(tmp_path):
    path = _cohort(tmp_path, [
        "c1,p1,scans/a.nii.gz,,nodule,train",        # row 1: fine
        "c1,p2,scans/b.nii.gz,,normal,train",        # row 2: duplicate case_id
        "c3,,scans/c.nii.gz,,normal,train",          # row 3: empty patient_id
        "c4,p4,scans/missing.nii.gz,,Nodule ,train",  # row 4: missing file + near-miss label
        "c5,p5,../outside.nii.gz,,normal,validation",  # row 5: escapes root + bad split
        "c6,p6,scans/a.nii.gz,,normal,test",         # row 6: same scan as row 1
    ])
    with pytest.raises(DataErrors) as info:
        read_manifest(path, vocabulary=VOCAB)
    errors = info.value.errors
    found = {(e.row, key) for e in errors for key in
             ("repeats row 1", "patient_id is empty", "not found", "label 'Nodule ' is not in the vocabulary",
              "leaves the data root", "split 'validation'", "same scan as row 1") if key in e.reason}
    assert found == {(2, "repeats row 1"), (3, "patient_id is empty"), (4, "not found"),
                     (4, "label 'Nodule ' is not in the vocabulary"), (5, "leaves the data root"),
                     (5, "split 'validation'"), (6, "same scan as row 1")}
    assert len(errors) == 7
    label_error = next(e for e in errors if "label" in e.reason)
    assert label_error.hint == "did you mean 'nodule'?" and label_error.case_id == "c4"
    assert "(line 5 of manifest.csv)" in label_error.reason  # row 4 = line 5 (header is line 1)
    assert "row 4" in str(label_error)
    assert isinstance(info.value, DataError) and "7 problem(s)" in str(info.value)


def test_absolute_paths_inside_and_outside_the_root(tmp_path):
    inside = tmp_path / "scans" / "a.nii.gz"
    outside = tmp_path.parent / "elsewhere.nii.gz"
    path = _cohort(tmp_path, [f"c1,p1,{inside},,normal,train", f"c2,p2,{outside},,normal,train"])
    with pytest.raises(DataErrors) as info:
        read_manifest(path)
    [error] = info.value.errors
    assert error.row == 2 and "an absolute path" in error.reason and "leaves the data root" in error.reason
    # a wider root admits it (existence is then checked)
    with pytest.raises(DataErrors, match="not found"):
        read_manifest(path, root=tmp_path.parent)


def test_dotdot_that_stays_inside_is_fine(tmp_path):
    path = _cohort(tmp_path, ["c1,p1,scans/../scans/a.nii.gz,,normal,train"])
    assert read_manifest(path)["image"].iloc[0] == os.path.join(tmp_path, "scans", "a.nii.gz")


def test_several_image_columns_are_channels(tmp_path):
    path = _cohort(tmp_path, ["c1,p1,scans/a.nii.gz,scans/b.nii.gz,scans/c.nii.gz,2"],
                   header="case_id,patient_id,image_t1,image_t2,image_flair,fold")
    df = read_manifest(path)
    assert df.attrs["image_columns"] == ["image_t1", "image_t2", "image_flair"]
    assert df["image_flair"].iloc[0] == str(tmp_path / "scans" / "c.nii.gz")


def test_missing_columns_get_suggestions(tmp_path):
    path = _cohort(tmp_path, ["c1,p1,scans/a.nii.gz"], header="caseid,patient_id,images")
    with pytest.raises(DataErrors) as info:
        read_manifest(path, vocabulary=VOCAB)
    reasons = {e.reason: e.hint for e in info.value.errors}
    assert reasons["required column 'case_id' is missing"] == "did you mean 'caseid'?"
    assert "no image column" in " ".join(reasons)
    assert "column 'label' is missing but a label vocabulary is configured" in reasons


def test_bad_fold_and_empty_label(tmp_path):
    path = _cohort(tmp_path, ["c1,p1,scans/a.nii.gz,,x", "c2,p2,scans/b.nii.gz,normal,1.5"],
                   header="case_id,patient_id,image,label,fold")
    _, errors = validate_manifest(path, vocabulary=VOCAB)
    assert {(e.row, e.reason.split(" (line")[0]) for e in errors} == {
        (1, "label is empty"), (1, "fold 'x' is not a non-negative integer"),
        (2, "fold '1.5' is not a non-negative integer")}


def test_unreadable_manifests(tmp_path):
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="cannot be read as a CSV manifest"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header_only.csv").write_text("case_id,patient_id,image\n")
    with pytest.raises(DataErrors, match="has no data rows"):
        read_manifest(tmp_path / "header_only.csv")


def test_byte_order_mark_and_ids_with_spaces(tmp_path):
    path = _cohort(tmp_path, ["c1,P1,scans/a.nii.gz", "c2,P1 ,scans/b.nii.gz"],
                   header="case_id,patient_id,image")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())  # Excel's UTF-8 with BOM
    _, errors = validate_manifest(path)
    [error] = errors  # the BOM is not part of the first column's name
    assert error.row == 2 and "patient_id 'P1 ' has surrounding spaces" in error.reason
