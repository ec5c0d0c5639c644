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
    expected = delong_roc_test(y, ra.p_nodule.to_numpy(), rb.p_nodule.to_numpy(),
                               groups=ra.patient_id.to_numpy())  # Obuchowski: clustered by patient
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


def _audit(out: Path) -> dict[str, dict]:
    return {a["check"]: a for a in json.loads((out / "summary.json").read_text())["split_audit"]}


def test_output_elsewhere_and_a_moved_run_give_the_default_report(tmp_path, monkeypatch):
    """The bundle reads everything from the run folder: --output in another folder (from another working
    directory, with a relative --run), --compare, and a run folder copied elsewhere give the same report."""
    import shutil

    run = write_synthetic_run(tmp_path / "a", name="a", n_patients=12, extra_scans=2, seed=0)
    other = write_synthetic_run(
        tmp_path / "b", name="b", n_patients=12, extra_scans=2, with_seg=False, seed=1
    )
    assert main(["--run", str(run), "--gallery", "0"]) == 0
    reference = _records(run / "report")
    elsewhere = tmp_path / "elsewhere" / "shared"
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    rel = Path("..") / run.relative_to(tmp_path)
    argv = ["--run", str(rel), "--output", str(elsewhere), "--compare", str(other), "--gallery", "0"]
    assert main(argv) == 0
    moved = tmp_path / "moved" / "a"
    shutil.copytree(run, moved)
    shutil.rmtree(run)  # the original is gone: nothing may still be read from there
    assert main(["--run", str(moved), "--output", str(tmp_path / "moved_report"), "--gallery", "0"]) == 0
    for out in (elsewhere, tmp_path / "moved_report"):
        audit = _audit(out)
        assert all(a["passed"] for a in audit.values()), audit
        assert "Split audit failed" not in (out / "report.html").read_text()
        got = _records(out)
        got = got[got.scope != "comparison"].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, reference)
    seg = _records(tmp_path / "moved_report")
    assert (seg["head"] == "segmentation").any()  # predicted masks found relative to the moved folder


def test_a_folds_csv_of_another_cohort_is_named_as_such(tmp_path):
    run = write_synthetic_run(tmp_path, n_patients=12, extra_scans=2, with_seg=False)
    pd.DataFrame({"patient_id": [f"OTHER{i}" for i in range(10)], "fold": [i % 3 for i in range(10)]}).to_csv(
        run / "folds.csv", index=False
    )
    assert main(["--run", str(run), "--output", str(tmp_path / "out"), "--gallery", "0"]) == 0
    check = _audit(tmp_path / "out")["folds.csv agrees with the predictions"]
    assert not check["passed"]
    assert "folds.csv lists 10 patients, none of the 12 predicted" in check["detail"]
    assert "another cohort" in check["detail"]


def test_compare_without_shared_patients_says_so(tmp_path, capsys):
    import shutil

    a = write_synthetic_run(tmp_path / "a", name="a", n_patients=12, extra_scans=2, with_seg=False)
    b = write_synthetic_run(tmp_path / "b", name="b", n_patients=9, extra_scans=0, with_seg=False)
    for fold_dir in b.glob("fold_*"):  # the same scans under other case ids: nothing to pair
        for name in ("predictions.parquet", "inner_val_predictions.parquet"):
            p = pd.read_parquet(fold_dir / name)
            p["case_id"] = "other_" + p["case_id"]
            p.to_parquet(fold_dir / name)
    shutil.rmtree(b / "fold_2")  # an unfinished fold
    assert main(["--run", str(a), "--output", str(tmp_path / "out"), "--compare", str(b)]) == 2
    err = capsys.readouterr().err
    assert "share 0 cases of 0 patients" in err and "bootstrap" not in err
    assert "a: 14 cases of 12 patients" in err
    assert "b: 6 cases of 6 patients, folds [2] of 3 without predictions (not finished)" in err


def test_compare_with_an_unfinished_run_names_its_missing_folds(tmp_path, caplog, monkeypatch):
    import logging
    import shutil

    a = write_synthetic_run(tmp_path / "a", name="a", n_patients=12, extra_scans=2, with_seg=False, seed=0)
    b = write_synthetic_run(tmp_path / "b", name="b", n_patients=12, extra_scans=2, with_seg=False, seed=1)
    shutil.rmtree(b / "fold_1")
    out = tmp_path / "out"
    assert main(["--run", str(a), "--output", str(out), "--compare", str(b), "--gallery", "0"]) == 0
    html = (out / "report.html").read_text()
    assert "b: folds [1] have no predictions yet (not finished)." in html
    diff = _records(out).query("scope == 'comparison'")
    n_b = len(load_run(b).predictions)
    assert (diff["n"] == n_b).all() and n_b < len(load_run(a).predictions)
    monkeypatch.setattr(logging.getLogger("medres"), "propagate", True)
    with caplog.at_level("WARNING", logger="medres"):
        assert main(["--run", str(b), "--output", str(tmp_path / "out_b"), "--gallery", "0"]) == 0
    assert "folds [1] of 3 have no predictions yet (not finished): the report covers the other 2 only" \
        in caplog.text


def test_an_output_on_around_or_inside_a_run_is_refused(tmp_path, capsys):
    a = write_synthetic_run(tmp_path / "a", name="a", with_seg=False, seed=0)
    b = write_synthetic_run(tmp_path / "b", name="b", with_seg=False, seed=1)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out, compare, said in ((a, None, "is the run folder"), (a / "fold_0", None, "lies inside the run"),
                               (a.parent, None, "contains the run"),
                               (b / "report", b, "lies inside the compared run")):
        argv = ["--run", str(a), "--output", str(out), "--gallery", "0"]
        assert main(argv + (["--compare", str(compare)] if compare else [])) == 2
        err = capsys.readouterr().err
        assert said in err and str(out) in err, err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert main(["--run", str(a), "--output", str(a / "report" / "v2"), "--gallery", "0"]) == 0  # its own
    assert (a / "report" / "v2" / "report.html").is_file()


def test_a_file_evaluate_did_not_write_is_never_overwritten(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "a", name="a", with_seg=False, seed=0)
    out = tmp_path / "shared"
    out.mkdir()
    (out / "report.html").write_text("<p>the user's own report</p>")
    argv = ["--run", str(run), "--output", str(out), "--gallery", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds report.html, a file medres did not write there" in err and str(out) in err
    assert "Traceback" not in err
    assert (out / "report.html").read_text() == "<p>the user's own report</p>"
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
    (out / "report.html").unlink()
    assert main(argv) == 0 and main(argv) == 0  # a rerun into its own output
    # the run's own report/: what an earlier report wrote there is medres's, a planted file is not
    assert main(["--run", str(run), "--gallery", "0"]) == 0
    assert main(["--run", str(run), "--gallery", "0"]) == 0
    (run / "report" / "cohort.csv").unlink()
    (run / "report" / "cohort.csv").write_text("mine\n")
    from medres.files import WRITTEN_LIST

    listed = json.loads((run / "report" / WRITTEN_LIST).read_text())
    listed["files"].remove("cohort.csv")
    (run / "report" / WRITTEN_LIST).write_text(json.dumps(listed))
    assert main(["--run", str(run), "--gallery", "0"]) == 2
    assert "holds cohort.csv" in capsys.readouterr().err
    assert (run / "report" / "cohort.csv").read_text() == "mine\n"
    (run / "report" / WRITTEN_LIST).unlink()  # a run's report/ from before the list: the report's own names
    assert main(["--run", str(run), "--gallery", "0"]) == 0
    assert main(["--run", str(run), "--output", str(out), "--gallery", "0"]) == 0
    (out / WRITTEN_LIST).unlink()  # elsewhere no list means nothing there is medres's
    assert main(["--run", str(run), "--output", str(out), "--gallery", "0"]) == 2
