"""metrics.csv: one row per epoch, union of columns, rows after a resumed checkpoint dropped."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from medres.engine.tracking import MetricsTracker


def test_metrics_csv_rows_and_resume(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medres.engine"):
        t = MetricsTracker(tmp_path, backends=("tensorboard", "mlflow"))
    both_on = t._tb is not None and t._mlflow is not None  # before close(), which drops them
    for e in (1, 2, 3):
        t.log_epoch({"epoch": e, "step": 10 * e, "lr": 1e-7 * e, "loss": 1.0 / e,
                     **({"val_auroc": math.nan} if e == 2 else {})})
    t.close()
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df["epoch"]) == [1, 2, 3] and df["lr"].iloc[0] == pytest.approx(1e-7)  # not rounded away
    assert "val_auroc" in df.columns and df["val_auroc"].isna().all()
    resumed = MetricsTracker(tmp_path, resume_epoch=2, backends=())
    resumed.log_epoch({"epoch": 3, "step": 31, "loss": 0.5})
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert list(df["step"]) == [10, 20, 31]
    if not both_on:  # the tracking extra is not installed: said once, in a log line
        assert "off (not installed" in caplog.text


def test_tensorboard_and_mlflow_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    t = MetricsTracker(tmp_path / "fold_0", run_name="x/fold_0", params={"optim.lr": 0.1})
    t.log_epoch({"epoch": 1, "step": 1, "loss": 0.5})
    t.close()
    assert list((tmp_path / "fold_0" / "tensorboard").iterdir())
    assert (tmp_path / "mlflow.db").exists()
