"""``python -m medres.evaluate``: the CLI, --compare, user errors, and DICOM fields kept out of the bundle."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medres.evaluate import main
from medres.metrics import delong_roc_test, paired_bootstrap_ci
from medres.report import load_run
from medres.report.html import fmt_p
from tests.report.synthetic_run import write_synthetic_run

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def _records(out: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((out / "summary.json").read_text())["records"])


def test_compare_gives_paired_delong_and_paired_bootstrap(tmp_path):
    a = write_synthetic_run(tmp_path / "a", name="a", with_seg=False, seed=0, separation=2.0)
    b = write_synthetic_run(tmp_path / "b", name="b", with_seg=False, seed=1, separation=0.5)
    out = tmp_path / "out"
    assert main(["--run", str(a), "--output", str(out), "--compare", str(b), "--gallery", "1"]) == 0
    ra, rb = load_run(a).predictions.set_index("case_id"), load_run(b).predictions.set_index("case_id")
    rb = rb.loc[ra.index]
    y = (ra.y_true == 1).to_numpy()
    expected = delong_roc_test(y, ra.p_nodule.to_numpy(), rb.p_nodule.to_numpy())
    rec = _records(out)
    d = rec[rec.metric == "auroc_difference"].set_index("ci_method")
    delong = d[d.index.str.startswith("paired DeLong")].iloc[0]
    assert delong["value"] == pytest.approx(expected.difference)
    assert delong["ci_low"] == pytest.approx(expected.ci_low) and delong["ci_high"] == pytest.approx(
        expected.ci_high
    )
    boot = d[d.index.str.startswith("paired patient bootstrap")].iloc[0]
    ref = paired_bootstrap_ci(
        "auroc",
        y,
        ra.p_nodule.to_numpy(),
        rb.p_nodule.to_numpy(),
        ra.patient_id.to_numpy(),
        n_resamples=200,
        seed=0,
    )
    assert (boot["value"], boot["ci_low"], boot["ci_high"]) == pytest.approx(
        (ref.estimate, ref.ci_low, ref.ci_high)
    )
    html = (out / "report.html").read_text()
    assert "Comparison with b" in html and f"<td>{escape(fmt_p(expected.p_value))}</td>" in html


def test_user_errors_are_reported_without_traceback(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    run = write_synthetic_run(tmp_path / "r", with_seg=False)
    (run / "fold_1" / "predictions.parquet").unlink()
    assert main(["--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "fold_1" in err and "no predictions.parquet" in err


def test_missing_score_column_names_the_file(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "r", with_seg=False)
    path = run / "fold_0" / "predictions.parquet"
    pd.read_parquet(path).drop(columns="p_nodule").to_parquet(path)
    assert main(["--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "p_nodule" in err and str(path) in err


@pytest.mark.slow
def test_dicom_patient_fields_never_reach_the_bundle(tmp_path):
    """The first case's scan is pydicom's CT_small.dcm; its patient name, id, birth/study dates and
    institution must not appear anywhere in the bundle, although the scan is read (spacing, gallery)."""
    ds = pydicom.dcmread(CT_SMALL)
    secrets = [str(ds.PatientName), str(ds.PatientID), str(ds.StudyDate), str(ds.InstitutionName)]
    assert all(secrets)
    run = write_synthetic_run(tmp_path, with_seg=False, dicom_image=CT_SMALL)
    # make the DICOM case the worst classification error, so the gallery draws it
    for fold_dir in run.glob("fold_*"):
        p = pd.read_parquet(fold_dir / "predictions.parquet")
        if (p.case_id == "case000_0").any():
            p.loc[p.case_id == "case000_0", ["p_normal", "p_nodule"]] = [0.999, 0.001]
            p.to_parquet(fold_dir / "predictions.parquet")
    out = tmp_path / "out"
    assert main(["--run", str(run), "--output", str(out), "--gallery", "1"]) == 0
    html = (out / "report.html").read_text()
    assert "case000_0" in html  # the DICOM case is in the gallery
    preds = pd.read_csv(out / "predictions.csv").set_index("case_id")
    assert preds.loc["case000_0", "spacing_x_mm"] == pytest.approx(float(ds.PixelSpacing[0]), rel=1e-4)
    for name in ("report.html", "summary.json", "predictions.csv", "cohort.csv"):
        text = (out / name).read_text()
        for secret in secrets:
            assert secret not in text, (name, secret)
    assert np.isfinite(preds.p_nodule).all()
