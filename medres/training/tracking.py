"""Per-epoch metrics: ``metrics.csv`` always; TensorBoard and MLflow when the ``tracking`` extra is installed.

``metrics.csv`` has one row per epoch (``epoch, step, lr, seconds, samples_per_s, loss, loss_<term>...,
val_loss, val_auroc, val_dice``). On resume, rows from epochs after the checkpoint are dropped so the
file matches the weights. MLflow logs to a SQLite store (``<run>/mlflow.db``) — no server needed. The
fold jobs of one run share it, each write made under ``<run>/.mlflow.lock`` (SQLite and MLflow's schema
set-up are not safe for two processes at once).
Only rank 0 creates a tracker. Nothing patient-related is logged: numbers and the config only.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medres.files import atomic_write
from medres.runfolder import FoldFolder, RunFolder
from medres.training.run_guard import FolderLock

__all__ = ["MetricsTracker"]

log = logging.getLogger("medres.training")

#: how long a fold job waits for another's write to the run's MLflow store
STORE_WAIT_S = 600.0


class MetricsTracker:
    """Append epoch rows to ``metrics.csv`` and mirror them to TensorBoard / MLflow if installed.

    Args:
        fold_dir: the fold's folder (``runs/<name>/fold_k``).
        run_name: the MLflow run name (e.g. ``<name>/fold_k``).
        params: flat config dict, logged once to MLflow.
        resume_epoch: keep only rows with ``epoch <= resume_epoch`` (``None``: start a fresh file).
    """

    def __init__(self, fold_dir: str | Path, *, run_name: str = "",
                 params: Mapping[str, Any] | None = None, resume_epoch: int | None = None,
                 backends: tuple[str, ...] = ("tensorboard", "mlflow")) -> None:
        fold = FoldFolder(Path(fold_dir))
        run = RunFolder(fold.dir.parent)
        self.path = fold.metrics_csv
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []
        if resume_epoch is not None and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
        self._write_all()
        self._tb = self._mlflow = None
        off = []
        if "tensorboard" in backends:
            if importlib.util.find_spec("tensorboard") is not None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(fold.tensorboard))
            else:
                off.append("TensorBoard")
        if "mlflow" in backends:
            if importlib.util.find_spec("mlflow") is not None:
                import mlflow

                self._store_lock = FolderLock(run.mlflow_lock, what="the run's MLflow store")
                with self._store_lock.acquire(wait_s=STORE_WAIT_S):
                    mlflow.set_tracking_uri(f"sqlite:///{run.mlflow_db.resolve()}")
                    mlflow.set_experiment(run.root.name)
                    self._mlflow = mlflow.start_run(run_name=run_name or self.path.parent.name)
                    if params:
                        mlflow.log_params({k: str(v)[:250] for k, v in params.items()})
            else:
                off.append("MLflow")
        if off:
            log.info("%s off (not installed; pip install 'medres[tracking]'); metrics go to %s",
                     " and ".join(off), self.path)

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """Record one epoch; ``row`` must hold ``epoch`` and ``step``."""
        row = {k: _clean(v) for k, v in row.items()}
        self.rows.append(row)
        self._write_all()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")}
        if self._tb is not None:
            for k, v in numeric.items():
                self._tb.add_scalar(k, v, int(row["epoch"]))
            self._tb.flush()
        if self._mlflow is not None:
            import mlflow

            with self._store_lock.acquire(wait_s=STORE_WAIT_S):
                mlflow.log_metrics({k: v for k, v in numeric.items() if math.isfinite(v)},
                                   step=int(row["epoch"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._mlflow is not None:
            import mlflow

            with self._store_lock.acquire(wait_s=STORE_WAIT_S):
                mlflow.end_run()
            self._mlflow = None

    def _write_all(self) -> None:
        fields: list[str] = []
        for r in self.rows:
            fields += [k for k in r if k not in fields]

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                if fields:
                    w.writeheader()
                w.writerows(self.rows)

        atomic_write(self.path, write)


def _clean(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float):
        return v
    return v
