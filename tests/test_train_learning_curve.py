"""``medres.train --learning-curve``: nested stratified patient subsets, the same folds for every fraction,
and the curve's table checked against the sub-runs' own predictions."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medres.config import load_config
from medres.errors import ConfigError
from medres.train import main, nested_patient_subset

ROOT = Path(__file__).resolve().parents[1]


def _records(n_neg: int, n_pos: int, scans: int = 2) -> list[dict]:
    return [{"case_id": f"p{i}_{s}", "patient_id": f"p{i}", "label": int(i >= n_neg)}
            for i in range(n_neg + n_pos) for s in range(scans)]


def test_subsets_are_nested_stratified_and_seeded():
    recs = _records(30, 10)
    ids = {f: {r["patient_id"] for r in nested_patient_subset(recs, f, seed=(0, 1))}
           for f in (0.25, 0.5, 1.0)}
    assert ids[0.25] < ids[0.5] < ids[1.0] and len(ids[1.0]) == 40
    positives = {f"p{i}" for i in range(30, 40)}
    # stratified: round(f * n) of each label (Python rounds 2.5 to 2 and 7.5 to 8)
    assert (len(ids[0.25] & positives), len(ids[0.25] - positives)) == (2, 8)
    assert (len(ids[0.5] & positives), len(ids[0.5] - positives)) == (5, 15)
    # a patient's scans stay together
    kept = nested_patient_subset(recs, 0.5, seed=(0, 1))
    assert len(kept) == 2 * len(ids[0.5])
    assert ids[0.5] == {r["patient_id"] for r in nested_patient_subset(recs, 0.5, seed=(0, 1))}
    assert ids[0.5] != {r["patient_id"] for r in nested_patient_subset(recs, 0.5, seed=(0, 2))}
    assert nested_patient_subset(_records(1, 1), 0.1, seed=0)  # at least one patient of each label
    with pytest.raises(ConfigError, match="not in"):
        nested_patient_subset(recs, 1.5)


@pytest.mark.slow
def test_learning_curve_smoke_two_fractions_two_folds(tmp_path, capsys):
    argv = ["--config", str(ROOT / "configs" / "smoke.yaml"), "--quiet", "--learning-curve", "0.5", "1.0",
            "--set", f"data.demo.out={tmp_path / 'demo'}", f"output.dir={tmp_path / 'runs'}",
            "train.epochs=1", "output.tracking=[]", "evaluate.bootstrap_resamples=100"]
    assert main(argv) == 0
    root = tmp_path / "runs" / "smoke" / "learning_curve"
    assert f"learning curve: {root / 'learning_curve.csv'}" in capsys.readouterr().out
    half, full = root / "frac_0.5", root / "frac_1"
    assert (half / "folds.csv").read_text() == (full / "folds.csv").read_text()
    folds = pd.read_csv(full / "folds.csv", dtype=str)
    table = pd.read_csv(root / "learning_curve.csv")
    n_train = {}
    for frac, run_dir in ((0.5, half), (1.0, full)):
        oof = pd.concat([pd.read_parquet(run_dir / f"fold_{k}" / "predictions.parquet") for k in (0, 1)])
        auroc = table[(table.fraction == frac) & (table.metric == "auroc")]
        assert len(auroc) == 1
        assert auroc["value"].iloc[0] == pytest.approx(roc_auc_score(oof.y_true == 1, oof.p_nodule), abs=1e-9)
        assert auroc["ci_low"].iloc[0] <= auroc["value"].iloc[0] <= auroc["ci_high"].iloc[0]
        assert (table[table.fraction == frac].metric == "dice").any()
        n_train[frac] = 0
    for k in (0, 1):
        held = [set(pd.read_parquet(d / f"fold_{k}" / "predictions.parquet").case_id) for d in (half, full)]
        assert held[0] == held[1]  # the same held-out cases for every fraction
        held_patients = set(pd.read_parquet(full / f"fold_{k}" / "predictions.parquet").patient_id)
        assert held_patients == set(folds.loc[folds.fold == str(k), "patient_id"])
        inner = [set(pd.read_parquet(d / f"fold_{k}" / "inner_val_predictions.parquet").patient_id)
                 for d in (half, full)]
        assert inner[0] == inner[1]
        train = [set(pd.read_csv(d / f"fold_{k}" / "train_patients.csv", dtype=str).patient_id)
                 for d in (half, full)]
        assert train[0] < train[1]  # nested, and a real subset
        assert not train[1] & inner[1] and not train[1] & held_patients
        n_train[0.5] += len(train[0])
        n_train[1.0] += len(train[1])
    assert dict(table.groupby("fraction")["train_patients"].first()) == n_train
    assert (root / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(half / "config.yaml").cv.folds_file is None  # the first fraction drew the folds
