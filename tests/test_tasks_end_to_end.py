"""Several questions per scan, end to end: the shipped cxr_findings.yaml (a multilabel task and a regression
task, no binary/multiclass task, plus the lung/opacity masks) at smoke size trains, predicts out of fold,
writes the report and its headline, and ``medres.predict --run`` gives the same task columns."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import mean_absolute_error, roc_auc_score

from medres import predict, train
from medres.config import load_config

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ("opacity", "effusion", "cardiomegaly")
# tasks.1.interval 0.5: a finite split-conformal interval from a handful of inner-validation cases
SMOKE = ["data.demo.n_patients=12", "train.epochs=1", "cv.folds=2", "data.spacing=[12.0,12.0]",
         "data.patch_size=[32,32]", "train.batch_size=4", "data.cache=none",
         "evaluate.bootstrap_resamples=200", "tasks.1.interval=0.5"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("findings")
    demo = home / "demo"
    argv = ["--config", str(ROOT / "configs" / "cxr_findings.yaml"), "--quiet",
            "--output", str(home / "runs"), "--set", f"data.demo.out={demo}", *SMOKE]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(argv) == 0
    return home / "runs" / "cxr_findings", out.getvalue()


def test_config_without_a_single_label_task_needs_no_labels():
    cfg = load_config(ROOT / "configs" / "cxr_findings.yaml").resolved()
    assert cfg.data.demo.kind == "cxr_findings" and cfg.data.positive_label is None
    assert [(t.name, t.type) for t in cfg.tasks] == [("findings", "multilabel"), ("ctr", "regression")]
    assert cfg.model.num_classes == 4  # three sigmoids and one standardised value


def test_train_report_and_headline_per_task(run):
    run_dir, printed = run
    report = run_dir / "report"
    html = (report / "report.html").read_text(encoding="utf-8")
    assert "Task findings" in html and "Task ctr" in html
    assert 'id="classification"' not in html  # no single-label task: no classification section
    summary = json.loads((report / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["tasks"]) == {"findings", "ctr"}
    preds = pd.read_csv(report / "predictions.csv")
    cols = [f"{k}_{c}" for c in FINDINGS for k in ("p", "y")]
    cols += ["pred_ctr", "y_ctr", "pred_ctr_lo", "pred_ctr_hi"]
    assert set(cols) <= set(preds.columns)
    assert "y_true" not in preds.columns and "p_normal" not in preds.columns

    # the headline's numbers are the report's, and the report's are sklearn's on the pooled table
    records = pd.DataFrame(summary["records"])
    pooled = records[records["scope"] == "pooled"]
    known = preds["y_ctr"].notna()
    mae = pooled[(pooled["head"] == "ctr") & (pooled["metric"] == "mae")].iloc[0]
    assert mae["value"] == pytest.approx(mean_absolute_error(preds.loc[known, "y_ctr"],
                                                              preds.loc[known, "pred_ctr"]), abs=1e-9)
    assert "MAE ctr" in printed and f"{mae['value']:.3f}" in printed
    for c in FINDINGS:
        k = preds[f"y_{c}"].notna()
        if preds.loc[k, f"y_{c}"].nunique() < 2:
            continue
        auroc = pooled[(pooled["head"] == "findings") & (pooled["class"] == c)
                       & (pooled["metric"] == "auroc")]
        expected = roc_auc_score(preds.loc[k, f"y_{c}"], preds.loc[k, f"p_{c}"])
        assert auroc["value"].iloc[0] == pytest.approx(expected, abs=1e-9)
        assert f"AUROC {c}" in printed and f"{expected:.3f}" in printed
    lo, hi = preds["pred_ctr_lo"].to_numpy(), preds["pred_ctr_hi"].to_numpy()
    assert np.isfinite(lo).all() and (lo <= preds["pred_ctr"]).all() and (preds["pred_ctr"] <= hi).all()


def test_predict_with_the_run_gives_the_task_columns(run, tmp_path):
    run_dir, _ = run
    cfg = load_config(run_dir / "config.yaml")
    demo = Path(cfg.data.manifest).parent
    assert (demo / "manifest.csv").is_file()
    with open(cfg.data.manifest, newline="") as f:
        every = list(csv.DictReader(f))
    # one scan labelled 'opacity', a class the run's (default) data.labels does not name
    rows = [next(r for r in every if r["label"] == label) for label in ("opacity", "normal")]
    manifest = demo / "two.csv"  # beside the scans: the manifest's folder is the data root
    keep = ["case_id", "patient_id", "image", "label", "pixel_spacing", "view"]  # label: read by no task
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keep)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in keep})
    assert predict.main(["--run", str(run_dir), "--input", str(manifest), "--output", str(tmp_path / "out"),
                         "--no-masks"]) == 0
    out = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(out) == 2
    for c in FINDINGS:
        assert out[f"p_{c}"].between(0, 1).all() and f"p_{c}_fold0" in out.columns
    assert np.isfinite(out["pred_ctr"]).all()
    assert (out["pred_ctr_lo"] <= out["pred_ctr"]).all() and (out["pred_ctr"] <= out["pred_ctr_hi"]).all()
