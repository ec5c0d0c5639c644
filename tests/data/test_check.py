"""The pre-flight check on a cohort with several planted problems: all reported in one table."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from medres.data.check.__main__ import main
from tests.data.conftest import write_nifti
from tests.data.dicom_factory import write_series

AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


def _cohort(root: Path, *, planted: bool) -> Path:
    """Two good rows (a DICOM series with a mask, a NIfTI) plus, if ``planted``, one row per fault."""
    scans = root / "scans"
    scans.mkdir(parents=True)
    write_series(scans / "s1", 4)  # 128 x 128 x 4
    from medres.data.readers.io import load_image

    grid = load_image(scans / "s1").affine.numpy()
    mask = np.zeros((128, 128, 4), np.uint8)
    mask[60:70, 60:70, 1:3] = 1
    write_nifti(scans / "s1_mask.nii.gz", mask, grid)
    write_nifti(scans / "n1.nii.gz", np.zeros((10, 10, 6), np.float32), AFFINE)
    rows = ["case_id,patient_id,image,mask,label",
            "good1,p1,scans/s1,scans/s1_mask.nii.gz,nodule",
            "good2,p2,scans/n1.nii.gz,,normal"]
    if planted:
        write_series(scans / "gap", 5, positions=[(0, 0, z) for z in (0, 2.5, 5, 10, 12.5)])
        write_nifti(scans / "n2.nii.gz", np.zeros((10, 10, 6), np.float32), AFFINE)
        write_nifti(scans / "small_mask.nii.gz", np.zeros((10, 10, 5), np.uint8), AFFINE)
        bad_labels = np.zeros((10, 10, 6), np.uint8)
        bad_labels[0, 0, 0] = 3
        write_nifti(scans / "bad_labels.nii.gz", bad_labels, AFFINE)
        nan = np.zeros((10, 10, 6), np.float32)
        nan[1, 1, 1] = np.nan
        write_nifti(scans / "nan.nii.gz", nan, AFFINE)
        rows += ["gap,p3,scans/gap,,normal",                                # row 3: missing slice
                 "shape,p4,scans/n2.nii.gz,scans/small_mask.nii.gz,nodule",  # row 4: mask shape
                 "labels,p5,scans/nan.nii.gz,scans/bad_labels.nii.gz,nodule",  # row 5: NaN image
                 "labels2,p6,scans/s1/../n1.nii.gz,scans/bad_labels.nii.gz,nodule",  # row 6: same scan
                 "typo,p7,scans/missing.nii.gz,,Nodule"]                   # row 7: missing file, label
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "config.yaml").write_text("data:\n  labels: [normal, nodule]\n  mask_labels: {0: background, "
                                      "1: nodule}\n  spatial_dims: 3\n")
    return root / "manifest.csv"


def test_clean_cohort_passes(tmp_path, capsys):
    manifest = _cohort(tmp_path, planted=False)
    assert main(["--manifest", str(manifest), "--config", str(tmp_path / "config.yaml")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("medres data check: OK: 2 rows, 2 image(s), 1 mask(s)")


def test_planted_problems_are_all_reported(tmp_path, capsys):
    manifest = _cohort(tmp_path, planted=True)
    assert main(["--manifest", str(manifest), "--config", str(tmp_path / "config.yaml")]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    rows = [line.split()[0] for line in lines[3:]]
    assert rows == sorted(rows, key=int)  # one table, in row order
    assert lines[0].startswith("medres data check: 6 problem(s)")
    assert lines[1].split() == ["row", "case", "path", "reason", "hint"]
    table = {}
    for line in lines[3:]:
        row = line.split()[0]
        table.setdefault(row, []).append(line)
    expected = {("3", "slice(s) missing"), ("4", "shape (10, 10, 5) differs"), ("5", "1 NaN"),
                ("6", "same scan as row 2"), ("7", "not found"),
                ("7", "label 'Nodule' is not in the vocabulary")}
    found = {(row, text) for row, text in expected for line in table.get(row, []) if text in line}
    assert found == expected
    assert sorted(table) == ["3", "4", "5", "6", "7"] and len(table["7"]) == 2  # 6 problems, nothing else


def test_mask_label_problem_is_found_when_the_row_is_otherwise_fine(tmp_path, capsys):
    manifest = _cohort(tmp_path, planted=True)
    text = manifest.read_text().replace("labels2,p6,scans/s1/../n1.nii.gz", "labels2,p6,scans/n1b.nii.gz")
    manifest.write_text(text)
    write_nifti(tmp_path / "scans" / "n1b.nii.gz", np.zeros((10, 10, 6), np.float32), AFFINE)
    assert main(["--manifest", str(manifest), "--config", str(tmp_path / "config.yaml")]) == 1
    out = capsys.readouterr().out
    assert "mask holds values [3] that are not labels of the configuration (allowed: [0, 1])" in out


def test_module_entry_point(tmp_path, monkeypatch, capsys):
    """``python -m medres.data.check`` (run in-process: a fresh interpreter costs ~10 s of imports)."""
    import runpy

    manifest = _cohort(tmp_path, planted=True)
    monkeypatch.setattr(sys, "argv", ["medres.data.check", "--manifest", str(manifest)])
    monkeypatch.delitem(sys.modules, "medres.data.check.__main__", raising=False)  # runpy runs it afresh
    with pytest.raises(SystemExit) as info:
        runpy.run_module("medres.data.check", run_name="__main__", alter_sys=True)
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "slice(s) missing" in out


def test_manifest_from_the_config_and_config_errors(tmp_path, capsys):
    _cohort(tmp_path, planted=False)
    (tmp_path / "with_manifest.yaml").write_text("data:\n  manifest: manifest.csv\n"
                                                 "  labels: [normal, nodule]\n")
    assert main(["--config", str(tmp_path / "with_manifest.yaml")]) == 0  # path relative to the config
    assert "OK: 2 rows" in capsys.readouterr().out
    (tmp_path / "bad.yaml").write_text("data:\n  lables: [normal, nodule]\n")
    assert main(["--manifest", str(tmp_path / "manifest.csv"), "--config", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "lables" in err and "Traceback" not in err


def test_manifest_only_reads_no_scan_and_imports_no_torch(tmp_path):
    """``--manifest-only`` checks columns, rows, labels and paths without loading a scan: a manifest whose
    files exist passes (even an empty file is not opened), a missing file is still reported, and the
    process never imports torch or MONAI."""
    import subprocess

    (tmp_path / "a.nii.gz").touch()
    (tmp_path / "m.csv").write_text("case_id,patient_id,image,label\n"
                                    "c1,p1,a.nii.gz,normal\nc2,p2,b.nii.gz,nodule\n")
    code = ("import sys, runpy\n"
            "sys.argv = ['medres.data.check', '--manifest', sys.argv[1], '--manifest-only']\n"
            "try:\n    runpy.run_module('medres.data.check', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai'}))\n"
            "sys.exit(code)")
    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.csv")], cwd=root, capture_output=True,
                       text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 1, p.stderr
    assert "1 problem(s)" in p.stdout and "line 3 of m.csv" in p.stdout  # c2: b.nii.gz is missing
    assert "HEAVY []" in p.stdout
