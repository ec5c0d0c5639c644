"""Issue 8 items 8-10 (check part): medres.data.check warns on look-alike patient ids, all-zero images,
one-slice volumes and a patch larger than every image; reads rows in worker processes; reports problems
as it finds them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Spacing

from medres.data.check import check_cohort
from medres.data.check.__main__ import main
from medres.data.readers.limits import resampled_shape

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])


def _write(path, shape=(12, 12, 6), value=1.0):
    nib.save(nib.Nifti1Image(np.full(shape, value, np.float32), AFFINE), path)


def test_warnings_for_careless_cohorts(tmp_path):
    _write(tmp_path / "a.nii.gz")
    _write(tmp_path / "b.nii.gz")
    _write(tmp_path / "zero.nii.gz", value=0.0)
    _write(tmp_path / "one.nii.gz", shape=(12, 12, 1))
    (tmp_path / "m.csv").write_text("case_id,patient_id,image\n"
                                    "A,007,a.nii.gz\nB,7,b.nii.gz\nZ,P9,zero.nii.gz\nO,p09,one.nii.gz\n")
    seen = []
    result = check_cohort(tmp_path / "m.csv", ndim=3, patch_size=[48, 48, 48], workers=1,
                          on_problem=lambda err, warning: seen.append((warning, err.row)))
    assert result.ok and len(result.warnings) == 5
    text = "\n".join(str(w) for w in result.warnings)
    assert "patient ids '007' (row 1), '7' (row 2) differ only in leading zeros" in text
    assert "'P9' (row 3), 'p09' (row 4)" in text
    assert "row 3, case 'Z'" in text and "every voxel of the image is 0" in text
    assert "row 4, case 'O'" in text and "one-slice volume (12, 12, 1)" in text
    assert "patch_size [48, 48, 48] is larger than every image" in text and "[12, 12, 6]" in text
    assert all(warning for warning, _ in seen) and len(seen) == 5  # each reported as found


def test_patch_check_uses_the_resampled_size(tmp_path):
    _write(tmp_path / "a.nii.gz", shape=(40, 40, 10))  # 2 mm slices: 20 slices at 1 mm
    (tmp_path / "m.csv").write_text("case_id,patient_id,image\nA,P1,a.nii.gz\n")
    ok = check_cohort(tmp_path / "m.csv", ndim=3, patch_size=[32, 32, 16], spacing=[1.0, 1.0, 1.0])
    assert not ok.warnings
    small = check_cohort(tmp_path / "m.csv", ndim=3, patch_size=[32, 32, 16], spacing=[2.0, 2.0, 2.0])
    assert "after resampling: [20, 20, 10]" in str(small.warnings[0])


@pytest.mark.parametrize("n,s,t", [(636, 0.6, 3.0), (508, 0.75, 3.0), (382, 1.0, 3.0), (100, 1.0, 3.0),
                                   (101, 1.0, 3.0), (40, 1.0, 2.0), (41, 1.0, 2.0), (7, 2.5, 1.0),
                                   (512, 0.7, 3.0), (3, 1.0, 10.0)])
def test_resampled_shape_is_monais(n, s, t):
    image = MetaTensor(torch.zeros(1, n, n + 3), affine=torch.diag(torch.tensor([s, s, 1.0, 1.0])))
    assert resampled_shape([n, n + 3], [s, s], [t, t]) == tuple(Spacing(pixdim=(t, t))(image).shape[1:])


def test_rows_are_read_in_worker_processes_with_progress(tmp_path, capsys):
    lines = ["case_id,patient_id,image"]
    for i in range(70):
        _write(tmp_path / f"s{i}.nii.gz", shape=(4, 4, 4), value=i + 1)
        lines.append(f"C{i},P{i},s{i}.nii.gz")
    (tmp_path / "s13.nii.gz").write_bytes(b"not a scan")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    assert main(["--manifest", str(tmp_path / "m.csv"), "--workers", "2"]) == 1
    captured = capsys.readouterr()
    assert "70/70 rows read" in captured.err
    assert "problem: row 14, case 'C13'" in captured.err  # as found, before the table
    assert captured.out.startswith("medres data check: 1 problem(s)")


@pytest.mark.parametrize("variant", ["\ufeff007", "0\u200b07", "\uff10\uff10\uff17", "0\u00a007",
                                     " 007\u2060"])
def test_ids_differing_only_in_unicode_form_get_the_zeros_warning(variant):
    """A BOM, a zero-width space or joiner, full-width digits or a no-break space make another text but,
    to a reader, the same id: the same warning as 007 / 7."""
    from medres.data.check import similar_patient_ids

    df = pd.DataFrame({"patient_id": ["7", variant, "8"]})
    warnings = similar_patient_ids(df)
    assert len(warnings) == 1 and warnings[0].row == 2
    assert "differ only in leading zeros" in warnings[0].reason and repr(variant) in warnings[0].reason
    assert similar_patient_ids(pd.DataFrame({"patient_id": ["7", "8", "\uff18\u200b1"]})) == []
