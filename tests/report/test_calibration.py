"""The report's calibration section: which probabilities it uses and what it says about them."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from medres.report import load_run
from medres.report.calibration import calibration_section


def predictions(z: np.ndarray, y: np.ndarray, p_used: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"case_id": [f"c{i}" for i in range(len(y))],
                         "patient_id": [f"P{i // 2}" for i in range(len(y))], "fold": 0, "y_true": y,
                         "p_normal": 1 - p_used, "p_nodule": p_used,
                         "logit_normal": z[:, 0], "logit_nodule": z[:, 1]})


@pytest.fixture(scope="module")
def config(synthetic_run):
    return load_run(synthetic_run).config


def calibrated_sample(n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, (n, 2))
    y = (rng.uniform(size=n) < softmax(z, axis=1)[:, 1]).astype(int)
    return z, y


def test_worse_recalibration_is_never_shown_as_the_calibrated_probabilities(config, tmp_path):
    z, y = calibrated_sample()
    raw = softmax(z, axis=1)[:, 1]
    sharpened = softmax(z / 0.3, axis=1)[:, 1]  # a map that made the probabilities too extreme
    recs, table, _, note = calibration_section(predictions(z, y, sharpened), config, positive="nodule",
                                               run_dir=tmp_path)
    assert "WORSE" in note and "Brier" in note
    assert table["probabilities"].tolist() == ["uncalibrated (softmax)",
                                               "recalibrated, worse out of fold (used by this report)"]
    brier = {r["subgroup"]: r["value"] for r in recs if r["metric"] == "brier"}
    assert brier["recalibrated, worse out of fold (used by this report)"] > brier["uncalibrated (softmax)"]
    assert brier["uncalibrated (softmax)"] == pytest.approx(np.mean((raw - y) ** 2))
    # a map that helps (or the identity) keeps the plain label and no warning
    _, table, _, note = calibration_section(predictions(z, y, raw), config, positive="nodule",
                                            run_dir=tmp_path)
    assert "WORSE" not in note and table["probabilities"].iloc[1] == "calibrated (used by this report)"


def test_the_note_says_what_each_fold_kept_and_why(config, tmp_path):
    from medres.metrics.calibration import choose_calibration

    z, y = calibrated_sample(20, seed=1)
    kept_z, kept_y = calibrated_sample(300, seed=2)
    maps = {0: choose_calibration(z, y, np.arange(20)), 1: choose_calibration(3 * kept_z, kept_y)}
    assert maps[0]["method"] == "none" and maps[1]["method"] == "temperature"
    for k, cal in maps.items():
        (tmp_path / f"fold_{k}").mkdir()
        (tmp_path / f"fold_{k}" / "calibration.json").write_text(json.dumps(cal))
    raw = softmax(z, axis=1)[:, 1]
    _, _, _, note = calibration_section(predictions(z, y, raw), config, positive="nodule", run_dir=tmp_path)
    assert "fold 0: identity (the fitted temperature T = " in note and "was not kept" in note
    assert "fold 1: temperature T = " in note and "kept on evidence" in note
    (tmp_path / "fold_1" / "calibration.json").write_text(json.dumps(maps[0]))
    _, _, _, note = calibration_section(predictions(z, y, raw), config, positive="nodule", run_dir=tmp_path)
    assert "No fold kept a recalibration" in note
