"""Per-fold recalibration: fitted on the inner-validation predictions only (a planted check), saved in the
checkpoint, applied to the fold's held-out and test tables and by ``Predictor``."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from medres.checkpoint import load_checkpoint
from medres.inference.predictor import Predictor
from medres.metrics.calibration import fit_calibration
from medres.training.calibrate import calibrate_fold, case_ids_digest
from tests.inference.test_ensemble import LABELS, tiny_config, write_fold


def table(prefix: str, z: np.ndarray, y: np.ndarray, fold: int = 0) -> pd.DataFrame:
    p = softmax(z, axis=1)
    return pd.DataFrame({"case_id": [f"{prefix}{i}" for i in range(len(y))],
                         "patient_id": [f"{prefix}P{i}" for i in range(len(y))], "fold": fold, "y_true": y,
                         "p_normal": p[:, 0], "p_nodule": p[:, 1], "y_pred": p.argmax(1),
                         "logit_normal": z[:, 0], "logit_nodule": z[:, 1]})


def overconfident(n: int, seed: int, t_true: float = 3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, (n, 2))
    y = (rng.uniform(size=n) < softmax(z / t_true, axis=1)[:, 1]).astype(int)
    return z, y


@pytest.fixture
def fold_dir(tmp_path):
    cfg = tiny_config()
    write_fold(tmp_path, 0, cfg)
    d = tmp_path / "fold_0"
    z, y = overconfident(300, seed=0)
    table("val", z, y).to_parquet(d / "inner_val_predictions.parquet")
    return d, cfg, z, y


def plant_heldout(d, seed: int, scale: float):
    """Held-out cases whose labels contradict their logits: any use of them in the fit would show."""
    z, y = overconfident(200, seed=seed)
    table("held", scale * z, (z[:, 1] < z[:, 0]).astype(int)).to_parquet(d / "predictions.parquet")
    table("test", z, y).to_parquet(d / "test_predictions.parquet")


def test_heldout_cases_never_touch_the_fit(fold_dir):
    d, cfg, z, y = fold_dir
    alone = fit_calibration(z, y, "temperature")
    fitted = []
    for seed, scale in ((1, 1.0), (2, 10.0)):
        plant_heldout(d, seed, scale)
        fitted.append(calibrate_fold(d, cfg))
    (d / "predictions.parquet").unlink()
    (d / "test_predictions.parquet").unlink()
    fitted.append(calibrate_fold(d, cfg))
    for cal in fitted:
        assert cal["temperature"] == alone["temperature"]  # exactly: same cases, same optimiser
        assert cal["n"] == 300 and cal["fitted_on"] == "inner_val"
        assert cal["case_ids_sha256"] == case_ids_digest([f"val{i}" for i in range(300)])
    # the plant has teeth: fitted on inner validation AND the held-out cases, the temperature differs
    plant_heldout(d, 1, 1.0)
    held = pd.read_parquet(d / "predictions.parquet")
    both = fit_calibration(np.r_[z, held[["logit_normal", "logit_nodule"]].to_numpy()],
                           np.r_[y, held["y_true"].to_numpy()], "temperature")
    assert abs(both["temperature"] - alone["temperature"]) > 0.5


def test_map_is_saved_and_applied_to_the_fold_tables_and_by_the_predictor(fold_dir):
    d, cfg, z, y = fold_dir
    plant_heldout(d, 1, 1.0)
    cal = calibrate_fold(d, cfg)
    t = cal["temperature"]
    assert 2.0 < t < 4.5  # the generating temperature is 3
    state = torch.load(d / "checkpoint_best.pt", weights_only=True)  # plain types only
    assert state["calibration"] == cal == json.loads((d / "calibration.json").read_text())
    assert load_checkpoint(d / "checkpoint_best.pt")["model"].keys() == state["model"].keys()
    for name in ("inner_val_predictions", "predictions", "test_predictions"):
        df = pd.read_parquet(d / f"{name}.parquet")
        zz = df[["logit_normal", "logit_nodule"]].to_numpy()
        np.testing.assert_allclose(df[["p_normal", "p_nodule"]], softmax(zz / t, axis=1), atol=1e-12)
        assert (df["y_pred_argmax"] == zz.argmax(1)).all()
        thr = cal["operating_point"]["threshold"]
        assert (df["y_pred"] == (df["p_nodule"] >= thr)).all()
    assert Predictor.from_checkpoint(d / "checkpoint_best.pt", device="cpu").calibration == cal
    # refitting is idempotent: it reads the logits, not the (already calibrated) probabilities
    assert calibrate_fold(d, cfg)["temperature"] == t


def test_platt_and_no_logits(fold_dir):
    d, cfg, z, y = fold_dir
    cfg_platt = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"calibration": "platt"})})
    cal = calibrate_fold(d, cfg_platt)
    assert cal["method"] == "platt" and cal["positive"] == LABELS.index("nodule")
    pd.read_parquet(d / "inner_val_predictions.parquet").drop(columns=["logit_normal", "logit_nodule"]) \
        .to_parquet(d / "inner_val_predictions.parquet")
    assert calibrate_fold(d, cfg) is None  # nothing to fit on


def test_operating_point_is_the_reports_and_decides_y_pred(fold_dir):
    """The threshold kept in the map is the one the report chooses on the same inner validation, and the
    fold table's ``y_pred`` is the report's ``y_pred_op``; ``y_pred_argmax`` stays the most probable class."""
    from medres.report import binary_task, operating_points

    d, cfg, z, y = fold_dir
    plant_heldout(d, 1, 1.0)
    for method in ("youden", "sensitivity"):
        ev = cfg.evaluate.model_copy(update={"threshold": method, "threshold_target": 0.95})
        c = cfg.model_copy(update={"evaluate": ev})
        cal = calibrate_fold(d, c)
        held = pd.read_parquet(d / "predictions.parquet")
        val = pd.read_parquet(d / "inner_val_predictions.parquet")
        report, table = operating_points(held, val, binary_task(c), method=method, target=0.95)
        op = cal["operating_point"]
        assert op["threshold"] == table["threshold"].item() and op["method"] == method
        assert (op["n_val"], op["n_val_pos"]) == (300, int(y.sum()))
        np.testing.assert_array_equal(held["y_pred"], report["y_pred_op"].astype(int))
        assert (held["y_pred"] != held["y_pred_argmax"]).any()  # the threshold is not 0.5 here
        assert json.loads((d / "calibration.json").read_text())["operating_point"] == op
    # a one-class inner validation: no operating point, y_pred falls back to the argmax
    val = pd.read_parquet(d / "inner_val_predictions.parquet").assign(y_true=0)
    val.to_parquet(d / "inner_val_predictions.parquet")
    cal = calibrate_fold(d, cfg)
    assert cal["operating_point"]["threshold"] is None and "one class" in cal["operating_point"]["note"]
    held = pd.read_parquet(d / "predictions.parquet")
    assert (held["y_pred"] == held["y_pred_argmax"]).all()


def test_predictor_calls_at_the_operating_point(fold_dir, tmp_path):
    """``Predictor`` (and so ``medres.predict``) decides ``y_pred`` at the checkpoint's operating point."""
    import nibabel as nib

    d, cfg, z, y = fold_dir
    cal = calibrate_fold(d, cfg)
    pred = Predictor.from_checkpoint(d / "checkpoint_best.pt", device="cpu")
    scan = tmp_path / "scan.nii.gz"
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(0, 300, (20, 20, 12)).astype(np.float32), np.eye(4)), scan)
    row = pred.predict_records([{"case_id": "a", "image": str(scan)}]).iloc[0]
    p = row["p_nodule"]
    for thr in (p - 1e-6, p + 1e-6):  # just below and just above this scan's probability
        cal["operating_point"]["threshold"] = thr
        again = Predictor.from_checkpoint(d / "checkpoint_best.pt", device="cpu", calibration=cal)
        got = again.predict_records([{"case_id": "a", "image": str(scan)}]).iloc[0]
        assert got["y_pred"] == int(p >= thr) and got["y_pred_argmax"] == int(p > row["p_normal"])
        assert again.predict(str(scan)).label == LABELS[int(p >= thr)]
        assert f"y_pred: nodule where p_nodule >= {thr:.4g}" in again.decision_rule()


def test_a_fit_without_evidence_leaves_the_fold_uncalibrated_and_says_why(tmp_path):
    """Twenty well-calibrated inner-validation patients: the fitted temperature is noise, so the fold keeps
    softmax(logits) and calibration.json records the candidate and the likelihood-ratio test."""
    cfg = tiny_config()
    write_fold(tmp_path, 0, cfg)
    d = tmp_path / "fold_0"
    z, y = overconfident(20, seed=3, t_true=1.0)
    table("val", z, y).to_parquet(d / "inner_val_predictions.parquet")
    plant_heldout(d, 1, 1.0)
    cal = calibrate_fold(d, cfg)
    assert cal["method"] == "none" and cal["candidate"]["method"] == "temperature"
    assert not cal["evidence"]["kept"] and cal["evidence"]["patients"] == 20
    assert "not kept" in cal["note"] and cal["evidence"]["p_value"] >= 0.05
    assert json.loads((d / "calibration.json").read_text())["evidence"] == cal["evidence"]
    held = pd.read_parquet(d / "predictions.parquet")
    zz = held[["logit_normal", "logit_nodule"]].to_numpy()
    np.testing.assert_allclose(held[["p_normal", "p_nodule"]], softmax(zz, axis=1), atol=1e-12)
