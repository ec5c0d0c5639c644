"""Several questions per scan at inference: per-task window aggregation, the table's columns in units,
calibration per label, conformal intervals, the fold ensemble and ``Predictor.predict``."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import MetaTensor
from torch import nn

from medres.checkpoint import load_checkpoint, save_checkpoint
from medres.config import load_config
from medres.config.tasks import task_layout
from medres.data.records import Case
from medres.inference.predictor import Predictor, predict_cases
from medres.inference.sliding import aggregate_task_windows, aggregate_windows
from medres.inference.tasks import conformal_half_width
from medres.training.calibrate import calibrate_fold
from medres.training.fold import build_model, model_spec

TASKS = [{"name": "nodule_task", "type": "binary", "column": "nodule"},
         {"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]},
         {"name": "ctr_task", "type": "regression", "column": "ctr", "unit": "ratio", "interval": 0.8}]
SCALES = {"ctr_task": {"mean": 0.5, "sd": 0.1}}


def config(**evaluate):
    return load_config({
        "data": {"labels": ["normal", "nodule"], "windows": [{"name": "lung", "center": -600, "width": 1500}],
                 "normalize": "window", "spacing": [4.0, 4.0, 4.0], "patch_size": [16, 16, 16]},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "tasks": TASKS, "evaluate": evaluate,
    })


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class WindowLogits(nn.Module):
    """Five case-level logits that depend on the window's mean intensity m: binary [0, 2m], labels
    [3m - 1, -m], regression 4m - 2 (standardised); no segmentation head."""

    def __init__(self, shift: float = 0.0) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift))

    def forward(self, x: torch.Tensor):
        m = x.flatten(1).mean(1) + self.shift
        return torch.stack([torch.zeros_like(m), 2 * m, 3 * m - 1, -m, 4 * m - 2], dim=1), None


def two_window_image() -> MetaTensor:
    img = torch.zeros(1, 16, 16, 32)
    img[..., :16], img[..., 16:] = 0.2, 0.9  # two windows of mean 0.2 and 0.9 (overlap 0)
    return MetaTensor(img, affine=torch.eye(4))


CASE = Case(case_id="c1", patient_id="p1", image="unused.nii.gz",
            extras={"nodule": "1", "opacity": "0", "effusion": "", "ctr": "0.61"})


def test_aggregate_task_windows_by_hand():
    layout = task_layout(config())
    z = torch.tensor([[0.0, 1.0, -2.0, 0.5, 1.0], [0.0, -1.0, 3.0, -0.5, 3.0], [0.0, 0.2, 0.0, 0.0, -1.0]])
    out = aggregate_task_windows(z, layout, "max")
    assert torch.allclose(out[:2], aggregate_windows(torch.softmax(z[:, :2], 1), "max").double())
    assert out[2:4].tolist() == [3.0, 0.5] and out[4].item() == pytest.approx(1.0)
    mean = aggregate_task_windows(z, layout, "mean")
    assert mean[2:4].tolist() == pytest.approx([1.0 / 3, 0.0]) and mean[4].item() == pytest.approx(1.0)


def test_table_columns_in_units_against_a_plain_forward_of_each_window():
    cfg = config()
    layout = task_layout(cfg)
    platt = {"method": "platt", "a": 0.7, "b": 0.3, "positive": 1, "n": 50}
    cal = {"task_scales": SCALES, "tasks": {
        "findings": {"columns": {"opacity": platt, "effusion": {"method": "none"}}},
        "ctr_task": {"half_width": 0.07, "level": 0.8}}}
    image = two_window_image()
    df = predict_cases(WindowLogits(), [CASE], cfg.data, transform=lambda _: {"image": image}, overlap=0.0,
                       layout=layout, calibration=cal, logits=True)
    row = df.iloc[0]
    means = np.array([0.2, 0.9])  # each window's own forward pass, by hand
    z_open, z_eff, reg = 3 * means - 1, -means, 4 * means - 2
    binary = sigmoid(2 * means).max()  # max-pooled p(positive) over windows
    assert row["p_1"] == pytest.approx(binary) and row["p_0"] == pytest.approx(1 - binary)
    assert row["y_true"] == 1 and row["y_pred"] == 1 and row["logit_1"] - row["logit_0"] == pytest.approx(1.8)
    assert row["logit_opacity"] == pytest.approx(z_open.max())
    assert row["logit_effusion"] == pytest.approx(-0.2)
    assert row["p_opacity"] == pytest.approx(sigmoid(0.7 * z_open.max() + 0.3))  # Platt kept for opacity
    assert row["p_effusion"] == pytest.approx(sigmoid(z_eff.max()))  # identity map: the sigmoid
    assert row["y_opacity"] == 0.0 and math.isnan(row["y_effusion"])
    value = reg.mean() * 0.1 + 0.5  # mean standardised value, in units
    assert row["pred_ctr_task"] == pytest.approx(value) and row["y_ctr_task"] == pytest.approx(0.61)
    assert (row["pred_ctr_task_lo"], row["pred_ctr_task_hi"]) == pytest.approx((value - 0.07, value + 0.07))


def test_a_tasks_model_without_target_scales_is_refused():
    from medres.errors import ConfigError

    cfg = config()
    with pytest.raises(ConfigError, match="ctr_task"):
        predict_cases(WindowLogits(), [CASE], cfg.data, transform=lambda _: {"image": two_window_image()},
                      overlap=0.0, layout=task_layout(cfg))


def test_the_fold_ensemble_averages_each_task_and_keeps_the_members():
    cfg = config()
    cals = [{"task_scales": {"ctr_task": {"mean": mean, "sd": sd}}, "tasks": {"ctr_task": {"half_width": hw}}}
            for mean, sd, hw in ((0.5, 0.1, 0.04), (0.4, 0.2, 0.10))]
    image = two_window_image()
    df = predict_cases([WindowLogits(), WindowLogits(0.3)], [CASE], cfg.data,
                       transform=lambda _: {"image": image}, overlap=0.0, layout=task_layout(cfg),
                       calibration=cals)
    row = df.iloc[0]
    for c in ("1", "opacity", "effusion"):
        assert row[f"p_{c}"] == pytest.approx((row[f"p_{c}_fold0"] + row[f"p_{c}_fold1"]) / 2)
    m0, m1 = np.array([0.2, 0.9]), np.array([0.5, 1.2])
    assert row["p_opacity_fold1"] == pytest.approx(sigmoid((3 * m1 - 1).max()))
    v0, v1 = (4 * m0 - 2).mean() * 0.1 + 0.5, (4 * m1 - 2).mean() * 0.2 + 0.4
    assert (row["pred_ctr_task_fold0"], row["pred_ctr_task_fold1"]) == pytest.approx((v0, v1))
    assert row["pred_ctr_task"] == pytest.approx((v0 + v1) / 2)
    assert row["pred_ctr_task_hi"] - row["pred_ctr_task"] == pytest.approx(0.07)  # mean half-width


def test_conformal_half_width_is_the_ceil_n_plus_one_level_th_residual():
    r = np.random.default_rng(1).normal(size=37)
    for level in (0.5, 0.8, 0.9):
        k = math.ceil(38 * level)
        assert conformal_half_width(r, level) == pytest.approx(
            np.quantile(np.abs(r), k / 37, method="inverted_cdf"))
    assert conformal_half_width(r[:5], 0.9) == math.inf  # ceil(6 * 0.9) = 6 > 5 residuals


def _fold_with_checkpoint(tmp_path, cfg):
    fold = tmp_path / "fold_0"
    fold.mkdir()
    save_checkpoint({"model": {"w": torch.zeros(1)}, "config": cfg.model_dump(mode="json"), "epoch": 1},
                    fold / "checkpoint_best.pt")
    return fold


def test_the_interval_takes_each_patients_largest_residual(tmp_path):
    cfg = config()
    fold = _fold_with_checkpoint(tmp_path, cfg)
    rng = np.random.default_rng(1)
    n = 60  # 30 patients with two scans each, and the residuals of a patient alike
    patients = np.repeat([f"p{i}" for i in range(30)], 2)
    pred = rng.normal(0.5, 0.1, n)
    err = np.repeat(rng.normal(0, 0.05, 30), 2) + rng.normal(0, 0.01, n)
    val = pd.DataFrame({"case_id": [f"v{i}" for i in range(n)], "patient_id": patients,
                        "y_true": 0, "logit_0": 0.0, "logit_1": 0.0, "logit_opacity": 0.0, "y_opacity": 0.0,
                        "p_opacity": 0.5, "logit_effusion": 0.0, "y_effusion": 0.0, "p_effusion": 0.5,
                        "pred_ctr_task": pred, "y_ctr_task": pred + err})
    val.to_parquet(fold / "inner_val_predictions.parquet")
    val.iloc[:2].to_parquet(fold / "predictions.parquet")
    got = calibrate_fold(fold, cfg)["tasks"]["ctr_task"]
    per_patient = np.sort(pd.Series(np.abs(err)).groupby(patients).max().to_numpy())
    assert got["half_width"] == pytest.approx(per_patient[math.ceil(31 * 0.8) - 1])
    assert got["n"] == 60 and got["n_patients"] == 30
    assert got["half_width"] > np.sort(np.abs(err))[math.ceil(61 * 0.8) - 1]  # wider than scans as units


def test_calibrate_fold_fits_each_label_and_interval_on_inner_validation(tmp_path):
    import statsmodels.api as sm

    cfg = config()
    fold = _fold_with_checkpoint(tmp_path, cfg)
    rng = np.random.default_rng(0)
    n = 400
    z = rng.normal(0, 2, n)
    y_open = (rng.random(n) < sigmoid(0.4 * z + 0.5)).astype(float)  # over-confident logits: Platt helps
    y_eff = (rng.random(n) < sigmoid(z)).astype(float)
    y_eff[:40] = np.nan
    pred = rng.normal(0.5, 0.1, n)
    y_ctr = pred + rng.normal(0, 0.05, n)
    y_ctr[:10] = np.nan
    val = pd.DataFrame({"case_id": [f"v{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                        "y_true": rng.integers(0, 2, n), "logit_0": 0.0, "logit_1": z,
                        "logit_opacity": z, "y_opacity": y_open, "p_opacity": sigmoid(z),
                        "logit_effusion": z, "y_effusion": y_eff, "p_effusion": sigmoid(z),
                        "pred_ctr_task": pred, "y_ctr_task": y_ctr})
    val.to_parquet(fold / "inner_val_predictions.parquet")
    held = val.iloc[:5].assign(logit_opacity=[-3.0, -1.0, 0.0, 1.0, 3.0])
    held.to_parquet(fold / "predictions.parquet")
    cal = calibrate_fold(fold, cfg)
    opacity = cal["tasks"]["findings"]["columns"]["opacity"]
    assert opacity["method"] == "platt"
    ref = sm.Logit(y_open, sm.add_constant(z)).fit(disp=0).params  # independent maximum likelihood
    assert opacity["a"] == pytest.approx(ref[1], abs=0.05) and opacity["b"] == pytest.approx(ref[0], abs=0.1)
    assert opacity["operating_point"]["threshold"] is not None
    effusion = cal["tasks"]["findings"]["columns"]["effusion"]
    assert effusion["n"] == n - 40
    r = np.abs(y_ctr - pred)[10:]
    hw = np.sort(r)[math.ceil((len(r) + 1) * 0.8) - 1]
    assert cal["tasks"]["ctr_task"]["half_width"] == pytest.approx(hw)
    assert cal["tasks"]["ctr_task"]["n"] == cal["tasks"]["ctr_task"]["n_patients"] == n - 10
    assert json.loads((fold / "calibration.json").read_text())["tasks"]["ctr_task"]["level"] == 0.8
    assert load_checkpoint(fold / "checkpoint_best.pt")["calibration"]["tasks"]["ctr_task"]["half_width"] == \
        pytest.approx(hw)
    out = pd.read_parquet(fold / "predictions.parquet")
    assert out["p_opacity"].to_numpy() == pytest.approx(sigmoid(opacity["a"] * held["logit_opacity"]
                                                                + opacity["b"]))
    assert (out["pred_ctr_task_hi"] - out["pred_ctr_task"]).to_numpy() == pytest.approx(hw)
    assert (out["pred_ctr_task"] - out["pred_ctr_task_lo"]).to_numpy() == pytest.approx(hw)


def test_predictor_returns_every_tasks_output(tmp_path):
    cfg = config()
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "fold_0" / "checkpoint_best.pt"
    save_checkpoint({"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg), "epoch": 1, "fold": 0, "task_scales": SCALES,
                     "calibration": {"method": "none", "tasks": {"ctr_task": {"half_width": 0.05}}}}, path)
    pred = Predictor.from_checkpoint(path, device="cpu")
    p = pred.predict(MetaTensor(torch.randn(20, 20, 20) * 300 - 500, affine=torch.eye(4) * 4.0))
    assert set(p.tasks) == {"nodule_task", "findings", "ctr_task"}
    assert sum(p.tasks["nodule_task"].values()) == pytest.approx(1.0)
    assert p.probabilities == p.tasks["nodule_task"]
    assert set(p.tasks["findings"]) == {"opacity", "effusion"}
    assert all(0 < v < 1 for v in p.tasks["findings"].values())
    ctr = p.tasks["ctr_task"]
    assert ctr["hi"] - ctr["value"] == pytest.approx(0.05) and ctr["value"] - ctr["lo"] == pytest.approx(0.05)
    assert p.mask is not None and p.label in ("0", "1")


def test_predict_cli_writes_every_tasks_columns_from_a_manifest(tmp_path):
    import nibabel as nib

    from medres.predict import main

    cfg = config()
    torch.manual_seed(1)
    path = tmp_path / "run" / "fold_0" / "checkpoint_best.pt"
    save_checkpoint({"model": build_model(cfg).state_dict(), "config": cfg.model_dump(mode="json"),
                     "model_spec": model_spec(cfg), "epoch": 1, "fold": 0, "task_scales": SCALES}, path)
    data = tmp_path / "data"
    data.mkdir()
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), -500, np.float32), np.eye(4) * [4, 4, 4, 1]),
             data / "a.nii.gz")
    pd.DataFrame({"case_id": ["a"], "patient_id": ["p"], "image": ["a.nii.gz"], "nodule": ["0"],
                  "opacity": ["1"], "effusion": ["-1"], "ctr": ["0.47"]}).to_csv(data / "m.csv", index=False)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(path), "--input", str(data / "m.csv"), "--output", str(out),
                 "--device", "cpu", "--no-masks"]) == 0
    row = pd.read_csv(out / "predictions.csv").iloc[0]
    assert row["y_true"] == 0 and row["y_opacity"] == 1 and math.isnan(row["y_effusion"])
    assert row["y_ctr_task"] == pytest.approx(0.47)
    assert row["p_opacity"] == pytest.approx(sigmoid(row["logit_opacity"]))  # no calibration yet: sigmoid
    assert row["p_0"] + row["p_1"] == pytest.approx(1.0) and math.isfinite(row["pred_ctr_task"])
    assert math.isnan(row["pred_ctr_task_lo"])  # no conformal half-width before the fold is calibrated


def test_the_run_ensemble_of_tasks_folds_through_write_test_ensemble(tmp_path):
    import nibabel as nib

    from medres.inference.ensemble import write_test_ensemble

    cfg = config()
    run = tmp_path / "run"
    for k, (mean, hw) in enumerate(((0.5, 0.02), (0.3, 0.06))):
        torch.manual_seed(k)
        save_checkpoint({"model": build_model(cfg).state_dict(), "config": cfg.model_dump(mode="json"),
                         "model_spec": model_spec(cfg), "epoch": 1, "fold": k,
                         "task_scales": {"ctr_task": {"mean": mean, "sd": 0.1}},
                         "calibration": {"method": "none", "tasks": {"ctr_task": {"half_width": hw}}}},
                        run / f"fold_{k}" / "checkpoint_best.pt")
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), -500, np.float32), np.eye(4) * [4, 4, 4, 1]),
             tmp_path / "a.nii.gz")
    case = Case(case_id="a", patient_id="p", image=str(tmp_path / "a.nii.gz"), extras={"ctr": "0.5"})
    df = write_test_ensemble(run, [case], cfg, masks=False, device="cpu")
    row = df.iloc[0]
    members = (row["pred_ctr_task_fold0"], row["pred_ctr_task_fold1"])
    assert row["pred_ctr_task"] == pytest.approx(np.mean(members)) and members[0] != members[1]
    assert row["pred_ctr_task_hi"] - row["pred_ctr_task"] == pytest.approx(0.04)  # mean of 0.02 and 0.06
    assert row["p_effusion"] == pytest.approx((row["p_effusion_fold0"] + row["p_effusion_fold1"]) / 2)
    assert row["y_ctr_task"] == 0.5 and math.isnan(row["y_opacity"])  # the manifest lacks opacity
    assert (run / "ensemble" / "test_predictions.parquet").is_file()
    pred = Predictor.from_run(run, device="cpu").predict(str(tmp_path / "a.nii.gz"))
    assert pred.tasks["ctr_task"]["value"] == pytest.approx(row["pred_ctr_task"], abs=1e-5)
