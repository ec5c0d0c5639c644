"""End to end on the smoke configuration with a test split: the fold ensemble scores the test split, each
fold is calibrated on its inner validation only, the export (ONNX checked with onnxruntime, TorchScript,
safetensors, model card) predicts without the run folder, and nothing exported names a path or a patient."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medres.config import load_config
from medres.data.demo import generate_demo
from medres.engine.calibrate import case_ids_digest
from medres.export import MAX_ABS_DIFF
from medres.export import main as export_main
from medres.predict import main as predict_main
from medres.train import run

ROOT = Path(__file__).resolve().parents[1]
TEST_PATIENTS = ("P0003", "P0008")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("e2e")
    manifest = generate_demo(root / "demo", n_patients=12, seed=0)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df["split"] = np.where(df["patient_id"].isin(TEST_PATIENTS), "test", "train")
    df.to_csv(manifest, index=False)
    cfg = load_config(ROOT / "medres" / "configs" / "smoke.yaml",
                      [f"data.manifest={manifest}", "data.demo=null", f"output.dir={root / 'runs'}",
                       "cv.val_fraction=0.5"])
    result = run(cfg, quiet=True)
    return result.run_dir, root, df


@pytest.mark.slow
def test_ensemble_scores_the_test_split_and_folds_calibrate_on_inner_validation_only(trained):
    run_dir, _, manifest = trained
    test_cases = set(manifest.loc[manifest["split"] == "test", "case_id"])
    ens = pd.read_parquet(run_dir / "ensemble" / "test_predictions.parquet")
    assert set(ens["case_id"]) == test_cases and (ens["fold"] == -1).all()
    folds = [pd.read_parquet(run_dir / f"fold_{k}" / "test_predictions.parquet").set_index("case_id")
             for k in range(2)]
    for k, f in enumerate(folds):  # the ensemble's per-fold columns are the folds' own test predictions
        np.testing.assert_allclose(ens.set_index("case_id")[f"p_nodule_fold{k}"], f.loc[ens["case_id"],
                                   "p_nodule"], atol=1e-7)
    np.testing.assert_allclose(ens["p_nodule"], ens[["p_nodule_fold0", "p_nodule_fold1"]].mean(axis=1),
                               atol=1e-12)
    for k in range(2):
        cal = json.loads((run_dir / f"fold_{k}" / "calibration.json").read_text())
        inner = pd.read_parquet(run_dir / f"fold_{k}" / "inner_val_predictions.parquet")
        held = pd.read_parquet(run_dir / f"fold_{k}" / "predictions.parquet")
        assert cal["fitted_on"] == "inner_val" and cal["n"] == len(inner)
        assert cal["case_ids_sha256"] == case_ids_digest(inner["case_id"])
        assert not set(inner["case_id"]) & (set(held["case_id"]) | test_cases)
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    scopes = {(r["scope"], r["head"]) for r in summary["records"]}
    assert {("test_ensemble", "segmentation"), ("test", "segmentation"), ("test_ensemble", "classification"),
            ("calibration", "classification")} <= scopes
    html = (run_dir / "report" / "report.html").read_text()
    assert "by each fold model and by the fold ensemble" in html and "before and after recalibration" in html


@pytest.mark.slow
def test_export_checks_card_and_predict_without_the_run_folder(trained, tmp_path):
    run_dir, root, manifest = trained
    out = tmp_path / "export"
    assert export_main(["--run", str(run_dir), "--out", str(out)]) == 0
    checks = json.loads((out / "checks.json").read_text())
    assert checks["passed"] and checks["max_abs_diff"] <= MAX_ABS_DIFF
    assert set(checks["members"]["fold0"]) == {"onnx", "torchscript"} and "ensemble_window" in checks
    names = {p.name for p in out.iterdir()}
    assert {"fold0.onnx", "fold1.onnx", "ensemble.onnx", "fold0.torchscript.pt", "fold0.safetensors",
            "model_card.md", "model_card.json", "export.json"} <= names

    # the card quotes the report's records unchanged
    card = json.loads((out / "model_card.json").read_text())
    summary = json.loads((run_dir / "report" / "summary.json").read_text())
    keys = ("scope", "subgroup", "fold", "head", "class", "metric", "value", "ci_low", "ci_high", "ci_method",
            "n", "n_pos", "note")
    pooled = [{k: r.get(k) for k in keys} for r in summary["records"]
              if r["scope"] == "pooled" and r["subgroup"] == "all"]
    assert card["metrics"]["oof"] == pooled and any(r["metric"] == "auroc" for r in pooled)
    assert card["metrics"]["test_ensemble"] and card["metrics"]["calibration"]
    dev = manifest[manifest["split"] != "test"]
    assert card["cohort"]["scans"] == len(dev) and card["cohort"]["patients"] == dev["patient_id"].nunique()
    assert card["cohort"]["by_site"] == dev["site"].value_counts().sort_index().to_dict()
    assert card["cohort"]["labels"]["nodule"]["scans"] == int((dev["label"] == "nodule").sum())
    assert card["architecture"]["parameters_per_model"] > 0 and card["preprocessing"]["spacing"] == [10.0] * 3

    # no path, no patient identifier, no DICOM patient field in any exported file
    secrets = [str(root).encode(), str(tmp_path).encode(), b"/tmp/", b"DEMO^", b"Demo Hospital", b"ACCP0",
               *[p.encode() for p in manifest["patient_id"]]]
    for path in out.iterdir():
        data = path.read_bytes()
        for s in secrets:
            assert s not in data, (path.name, s)

    # predict from the export alone, the run folder moved away: the same predictions as from the run
    scan = str(root / "demo" / manifest["image"].iloc[0])
    by_run = tmp_path / "by_run"
    assert predict_main(["--run", str(run_dir), "--input", scan, "--output", str(by_run),
                         "--device", "cpu"]) == 0
    moved = root / "moved"
    shutil.move(str(run_dir), moved)
    try:
        by_export = tmp_path / "by_export"
        assert predict_main(["--model", str(out), "--input", scan, "--output", str(by_export),
                             "--device", "cpu"]) == 0
    finally:
        shutil.move(str(moved), run_dir)
    a, b = pd.read_csv(by_run / "predictions.csv"), pd.read_csv(by_export / "predictions.csv")
    assert list(a.columns) == list(b.columns)
    cols = [c for c in a.columns if c.startswith("p_")]
    np.testing.assert_allclose(a[cols], b[cols], atol=1e-7)
    import nibabel as nib

    np.testing.assert_array_equal(np.asarray(nib.load(by_run / a["seg_path"][0]).dataobj),
                                  np.asarray(nib.load(by_export / b["seg_path"][0]).dataobj))


def test_export_errors_are_one_message(tmp_path, capsys):
    assert export_main(["--run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "report/summary.json" in capsys.readouterr().err
    assert predict_main(["--model", str(tmp_path), "--input", str(tmp_path), "--output",
                         str(tmp_path / "o")]) == 2
    assert "no export.json" in capsys.readouterr().err
