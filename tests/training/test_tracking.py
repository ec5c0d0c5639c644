"""metrics.csv: one row per epoch, union of columns, rows after a resumed checkpoint dropped."""

from __future__ import annotations

import logging
import math

import pandas as pd
import pytest

from medres.training.tracking import MetricsTracker


def test_metrics_csv_rows_and_resume(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="medres.training"):
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


_FOLD_JOB = """
import sys, time
from pathlib import Path
root, fold = Path(sys.argv[1]), int(sys.argv[2])
import mlflow  # noqa: F401 - imported before the start signal, so that both jobs start together
from medres.training.tracking import MetricsTracker
(root / f"ready_{fold}").touch()
while not (root / "go").exists():
    time.sleep(0.005)
t = MetricsTracker(root / "run" / f"fold_{fold}", run_name=f"run/fold_{fold}", params={"lr": 0.1},
                   backends=("mlflow",))
for e in (1, 2, 3):
    t.log_epoch({"epoch": e, "step": e, "loss": 1.0 / e})
t.close()
"""


def test_two_fold_jobs_share_the_mlflow_store_side_by_side(tmp_path):
    """Two ``--fold k`` jobs of one run start their trackers at the same instant: both succeed and the
    run's one store holds both runs (without the store lock, MLflow's schema set-up races and one job
    dies with an alembic traceback)."""
    import os
    import sqlite3
    import subprocess
    import sys
    import time
    from pathlib import Path

    pytest.importorskip("mlflow")
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    jobs = [subprocess.Popen([sys.executable, "-c", _FOLD_JOB, str(tmp_path), str(k)], cwd=root, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready_{k}").exists() for k in (0, 1)):
        assert time.monotonic() < deadline and all(j.poll() is None for j in jobs), \
            [j.communicate()[1][-2000:] for j in jobs]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    results = [j.communicate(timeout=120) for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], [err[-2000:] for _, err in results]
    with sqlite3.connect(tmp_path / "run" / "mlflow.db") as db:
        names = sorted(r[0] for r in db.execute("SELECT name FROM runs"))
        steps = db.execute("SELECT COUNT(*) FROM metrics WHERE key = 'loss'").fetchone()[0]
    assert names == ["run/fold_0", "run/fold_1"] and steps == 6
    assert (tmp_path / "run" / "fold_0" / "metrics.csv").exists()
