"""The fold ensemble: one sweep of windows through every fold model, and exactly the mean of the folds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from medres.checkpoint import save_checkpoint
from medres.config import load_config
from medres.errors import ConfigError, DataError
from medres.inference.ensemble import load_run_members, run_folds, write_test_ensemble
from medres.inference.predictor import Predictor, source_geometry, source_probabilities
from medres.inference.sliding import SlidingWindow, infer_volume, infer_volume_models
from medres.layout import case_file_stem
from medres.metrics.calibration import apply_calibration
from medres.predict import main
from medres.training.fold import build_model, model_spec

LABELS = ["normal", "nodule"]
CALS = [{"method": "temperature", "temperature": 0.5, "n": 10}, None,
        {"method": "platt", "a": 1.7, "b": -0.4, "positive": 1, "n": 10}]


def tiny_config(**data):
    return load_config({
        "data": {"labels": LABELS, "windows": [{"name": "lung", "center": -600, "width": 1500}],
                 "normalize": "window", "spacing": [2.5, 2.5, 2.5], "patch_size": [16, 16, 16], **data},
        "model": {"name": "dual_resnet10", "options": {"base_channels": 4}},
        "evaluate": {"sliding_window_overlap": 0.5},
    })


def write_fold(run: Path, k: int, cfg, calibration=None, seed=None) -> Path:
    torch.manual_seed(k if seed is None else seed)
    model = build_model(cfg)
    for p in model.parameters():  # a stronger signal than the default init, so the folds disagree
        p.data.add_(0.05 * torch.randn_like(p))
    state = {"model": model.state_dict(), "config": cfg.model_dump(mode="json"),
             "model_spec": model_spec(cfg), "epoch": 1, "fold": k}
    if calibration:
        state["calibration"] = calibration
    path = run / f"fold_{k}" / "checkpoint_best.pt"
    save_checkpoint(state, path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ens") / "run"
    cfg = tiny_config()
    for k, cal in enumerate(CALS):
        write_fold(run, k, cfg, cal)
    return run


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    """A CT volume larger than the patch (several windows per axis), with an off-centre blob."""
    shape = (40, 34, 30)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")).astype(float)
    inside = ((grid[0] - 25) / 7) ** 2 + ((grid[1] - 12) / 5) ** 2 + ((grid[2] - 10) / 4) ** 2 < 1
    vol = np.where(inside, 40.0, -900.0).astype(np.float32)
    vol += np.random.default_rng(0).normal(0, 30, shape).astype(np.float32)
    path = tmp_path_factory.mktemp("scan") / "big.nii.gz"
    affine = np.array([[-1.5, 0, 0, 30.0], [0, 1.8, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(vol, affine), path)
    return path


@pytest.mark.slow
def test_one_sweep_gives_each_model_exactly_its_own_prediction(run_dir, scan):
    models, cfg, _, names = load_run_members(run_dir)
    assert names == ["fold0", "fold1", "fold2"] and run_folds(run_dir) == [0, 1, 2]
    image = Predictor(models[0], cfg, device="cpu").transform({"image": str(scan)})["image"]
    assert all(s > 16 for s in image.shape[1:])  # several windows
    for tta in (False, True):
        together = infer_volume_models(models, image, SlidingWindow([16, 16, 16], overlap=0.5, tta=tta))
        for model, pred in zip(models, together):
            alone = infer_volume(model, image, SlidingWindow([16, 16, 16], overlap=0.5, tta=tta))
            torch.testing.assert_close(pred.cls_probs, alone.cls_probs, rtol=0, atol=1e-6)
            torch.testing.assert_close(pred.seg_logits, alone.seg_logits, rtol=0, atol=1e-5)
    # the models do differ, so the check above has teeth
    assert not torch.allclose(together[0].seg_logits, together[1].seg_logits, atol=1e-3)


@pytest.mark.slow
def test_ensemble_is_exactly_the_mean_of_the_calibrated_folds(run_dir, scan, tmp_path):
    pred = Predictor.from_run(run_dir, device="cpu")
    assert [m.training for m in pred.models] == [False] * 3
    ens = pred.predict_records([{"case_id": "big", "image": str(scan)}], seg_dir=tmp_path / "ens")
    row = ens.iloc[0]
    per_fold = []
    for k, cal in enumerate(CALS):
        single = Predictor.from_checkpoint(run_dir / f"fold_{k}" / "checkpoint_best.pt", device="cpu")
        assert single.calibration == cal
        one = single.predict_records([{"case_id": "big", "image": str(scan)}], logits=True).iloc[0]
        probs = np.array([one[f"p_{c}"] for c in LABELS])
        # the fold's calibrated probabilities are its map applied to its logits
        np.testing.assert_allclose(probs, apply_calibration([one[f"logit_{c}"] for c in LABELS], cal),
                                   atol=1e-12)
        np.testing.assert_allclose([row[f"p_{c}_fold{k}"] for c in LABELS], probs, rtol=0, atol=1e-7)
        per_fold.append(probs)
    mean = np.mean(per_fold, axis=0)
    np.testing.assert_allclose([row[f"p_{c}"] for c in LABELS], mean, rtol=0, atol=1e-7)
    assert row["y_pred"] == row["y_pred_argmax"] == int(np.argmax(mean))  # these maps hold no operating point
    assert np.ptp([p[1] for p in per_fold]) > 1e-3  # the calibrations and weights make them differ

    # the mask: argmax of the mean of the folds' softmax maps, resampled to the source scan
    image = pred.transform({"image": str(scan)})["image"]
    src_affine, src_shape = source_geometry(image)
    maps = [source_probabilities(torch.softmax(p.seg_logits, 0), image.affine, src_affine, src_shape)
            for p in infer_volume_models(pred.models, image, SlidingWindow([16, 16, 16], overlap=0.5))]
    expected = torch.argmax(torch.stack(maps).mean(0), dim=0).numpy()
    got = nib.load(tmp_path / "ens" / f"{case_file_stem('big')}.nii.gz")
    assert got.shape == nib.load(scan).shape
    np.testing.assert_allclose(got.affine, nib.load(scan).affine, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(got.dataobj), expected)


def test_cli_run_with_fold_subset(run_dir, scan, tmp_path):
    out = tmp_path / "out"
    assert main(["--run", str(run_dir), "--folds", "0", "2", "--input", str(scan), "--output", str(out),
                 "--no-masks", "--device", "cpu"]) == 0
    df = pd.read_csv(out / "predictions.csv")
    assert [c for c in df.columns if c.startswith("p_")] == [
        "p_normal", "p_nodule", "p_normal_fold0", "p_nodule_fold0", "p_normal_fold2", "p_nodule_fold2"]
    np.testing.assert_allclose(df["p_nodule"], (df["p_nodule_fold0"] + df["p_nodule_fold2"]) / 2, atol=1e-9)


def test_bad_ensembles_are_one_message(run_dir, tmp_path, capsys):
    assert main(["--run", str(run_dir), "--folds", "7", "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "o")]) == 2
    assert "no checkpoint for fold(s) [7]" in capsys.readouterr().err
    assert main(["--checkpoint", str(run_dir / "fold_0" / "checkpoint_best.pt"), "--folds", "0",
                 "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]) == 2
    assert "--folds needs --run" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    write_fold(mixed, 0, tiny_config())
    write_fold(mixed, 1, tiny_config(spacing=[2.0, 2.0, 2.0]))
    with pytest.raises(ConfigError, match="differ in their data pipeline"):
        load_run_members(mixed)
    with pytest.raises(DataError, match="run folder not found"):
        load_run_members(tmp_path / "nope")


def test_write_test_ensemble(run_dir, scan, tmp_path):
    cfg = tiny_config()
    records = [{"case_id": "t1", "patient_id": "p1", "image": str(scan), "label": 1, "mask": None}]
    df = write_test_ensemble(run_dir, records, cfg, device="cpu")
    saved = pd.read_parquet(run_dir / "ensemble" / "test_predictions.parquet")
    assert saved["fold"].tolist() == [-1] and saved["y_true"].tolist() == [1]
    assert saved["seg_path"].tolist() == [f"ensemble/seg/{case_file_stem('t1')}.nii.gz"]
    assert (run_dir / saved["seg_path"][0]).exists()
    np.testing.assert_allclose(df["p_nodule"], saved[[f"p_nodule_fold{k}" for k in range(3)]].mean(axis=1))
    assert write_test_ensemble(run_dir, records, cfg, folds=[0]) is None  # one model is no ensemble
