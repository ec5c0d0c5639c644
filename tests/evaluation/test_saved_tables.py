"""The evaluation saves its per-case tables in the report folder and the report is built from them alone:
rebuilt in a fresh interpreter that cannot import torch, it writes the same bundle; the test split's
masks (each fold's and the ensemble's) are scored from the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medres.errors import DataError
from medres.report import build_saved_bundle, load_run
from medres.runfolder import EVALUATION_FILES, ReportFolder
from tests.report.synthetic_run import write_synthetic_run

ROOT = Path(__file__).resolve().parents[2]
SHARED = ("summary.json", "predictions.csv", "seg_cases.csv", "cohort.csv")


def _add_test_masks(run: Path) -> None:
    """Predicted masks for the test split: each fold's a copy of the reference shifted by the fold number
    along x, and the fold ensemble's (``ensemble/``) shifted by one voxel along y."""
    for k, fd in enumerate(sorted(run.glob("fold_*"))):
        table = pd.read_parquet(fd / "test_predictions.parquet")
        paths = []
        for case, mask in zip(table["case_id"], table["mask"]):
            ref = nib.load(mask)
            nib.save(nib.Nifti1Image(np.roll(np.asarray(ref.dataobj), k, axis=0), ref.affine),
                     fd / "seg" / f"test_{case}.nii.gz")
            paths.append(f"{fd.name}/seg/test_{case}.nii.gz")
        table["seg_path"] = paths
        table.to_parquet(fd / "test_predictions.parquet", index=False)
    ens = table.assign(fold=-1, seg_path=[f"ensemble/seg/{c}.nii.gz" for c in table["case_id"]])
    (run / "ensemble" / "seg").mkdir(parents=True)
    for case, mask in zip(ens["case_id"], ens["mask"]):
        ref = nib.load(mask)
        nib.save(nib.Nifti1Image(np.roll(np.asarray(ref.dataobj), 1, axis=1), ref.affine),
                 run / "ensemble" / "seg" / f"{case}.nii.gz")
    ens.to_parquet(run / "ensemble" / "test_predictions.parquet", index=False)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from medres.evaluation import evaluate_run

    run = write_synthetic_run(tmp_path_factory.mktemp("saved"), n_patients=9, extra_scans=0,
                              bootstrap_resamples=100, n_test_patients=3)
    _add_test_masks(run)
    out = evaluate_run(run, gallery_size=2).parent
    return run, out


def test_the_bundle_is_rebuilt_from_the_saved_tables_without_torch(evaluated, tmp_path):
    run, out = evaluated
    assert all((out / name).is_file() for name in EVALUATION_FILES)
    rebuilt = tmp_path / "rebuilt"
    code = f"""
import sys
BLOCKED = ("torch", "monai", "torchvision")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{{name}} is blocked")
        return None
sys.meta_path.insert(0, Block())
from medres.report import build_saved_bundle, load_run
build_saved_bundle(load_run({str(run)!r}), {str(out)!r}, {str(rebuilt)!r})
print(sorted(m for m in sys.modules if m.startswith(("medres.evaluation", "medres.data", "torch"))))
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"
    for name in SHARED:
        assert (rebuilt / name).read_bytes() == (out / name).read_bytes(), name
    summary = json.loads((out / "summary.json").read_text())
    assert {r["scope"] for r in summary["records"]} >= {"test", "test_ensemble"}
    drawn = [(d / "report.html").read_text().count('alt="case ') for d in (out, rebuilt)]
    assert drawn == [2, 2]  # the saved gallery, drawn by evaluate, shown again


def test_the_test_split_masks_are_scored_from_their_files(evaluated):
    run, out = evaluated
    cases = pd.read_parquet(ReportFolder(out).saved_test_seg_cases)
    test = load_run(run).test
    assert sorted(cases["fold"].unique()) == [-1, 0, 1, 2]
    for fold, shift, axis in ((-1, 1, 1), (0, 0, 0), (2, 2, 0)):
        part = cases[cases["fold"] == fold].set_index("case_id")
        assert set(part.index) == set(test["case_id"])
        for case, mask in zip(test["case_id"].unique(), test.drop_duplicates("case_id")["mask"]):
            ref = np.asarray(nib.load(mask).dataobj) > 0
            pred = np.roll(ref, shift, axis=axis)
            total = ref.sum() + pred.sum()
            dice = 1.0 if total == 0 else 2 * (ref & pred).sum() / total
            assert part.loc[case, "dice"] == pytest.approx(dice), (fold, case)
    records = pd.DataFrame(json.loads((out / "summary.json").read_text())["records"])
    ens = records[(records["scope"] == "test_ensemble") & (records["metric"] == "dice")
                  & (records["head"] == "segmentation") & (records["class"] == "nodule")]
    assert len(ens) == 1
    assert ens["value"].iloc[0] == pytest.approx(cases.loc[cases["fold"] == -1, "dice"].mean())


def test_a_report_folder_without_saved_tables_is_refused(evaluated, tmp_path):
    run, _ = evaluated
    with pytest.raises(DataError, match="no saved evaluation table private/evaluation/") as info:
        build_saved_bundle(load_run(run), tmp_path)
    assert "python -m medres.evaluate" in str(info.value)
