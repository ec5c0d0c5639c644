"""Read a training run folder (DESIGN.md "Run folder") into DataFrames, without torch.

A run folder is everything the report needs: ``config.yaml``, ``folds.csv`` and per fold
``predictions.parquet`` (held-out cases), ``inner_val_predictions.parquet`` (where thresholds are
chosen), optional ``test_predictions.parquet``, ``metrics.csv`` and the masks in ``seg/`` (each named by
the table's ``seg_path``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medres.config import Config, load_config
from medres.config.tasks import task_layout
from medres.errors import DataError
from medres.runfolder import RunFolder

__all__ = ["RunData", "load_run", "read_run_config", "has_single_label"]

REQUIRED_COLUMNS = ("case_id", "patient_id", "fold", "y_true")
#: A run whose tasks have no binary/multiclass task has no ``y_true`` / ``p_<class>`` to require.
TASKS_ONLY_COLUMNS = ("case_id", "patient_id", "fold")


def has_single_label(config: Config) -> bool:
    """Whether the run scores one single-label head (``y_true``, ``p_<data.labels>``): always without
    ``tasks:``, else when one task is binary or multiclass."""
    return config.tasks is None or task_layout(config).single_label is not None


@dataclass
class RunData:
    """The contents of one run folder.

    Attributes:
        run_dir: the folder.
        config: the resolved configuration the run was trained with.
        folds: ``folds.csv`` (patient_id, fold).
        predictions: held-out predictions of every fold, one row per case (out-of-fold).
        inner_val: inner-validation predictions of every fold (thresholds are chosen here).
        test: predictions on the manifest's ``split=test`` rows, or None.
        train_logs: ``metrics.csv`` of each fold, with a ``fold`` column (empty if none).
        checkpoints: the checkpoint files found, relative to ``run_dir``.
    """

    run_dir: Path
    config: Config
    folds: pd.DataFrame
    predictions: pd.DataFrame
    inner_val: pd.DataFrame
    test: pd.DataFrame | None = None
    train_logs: pd.DataFrame = field(default_factory=pd.DataFrame)
    checkpoints: list[Path] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """The single-label classes (``data.labels``); empty when the tasks have no single-label task."""
        return list(self.config.data.labels) if has_single_label(self.config) else []

    @property
    def has_seg(self) -> bool:
        return "seg_path" in self.predictions.columns and self.predictions["seg_path"].notna().any()


def read_run_config(run_dir: Path) -> Config:
    """The run's resolved ``config.yaml`` as a `Config` (ConfigError names the file and field)."""
    path = RunFolder(run_dir).config
    if not path.is_file():
        raise DataError(
            "the run folder has no config.yaml",
            path=run_dir,
            hint="pass the folder written by `python -m medres.train` (runs/NAME)",
        )
    return load_config(path)


def _read_parquet(path: Path, required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:
        raise DataError(
            f"cannot read predictions: {type(exc).__name__}",
            path=path,
            hint="the file is damaged or not parquet; re-run inference for this fold",
        ) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"predictions lack the columns {missing}",
            path=path,
            hint=f"predictions need {', '.join(required)}"
            + (" and p_<class> columns" if "y_true" in required else " and the tasks' columns"),
        )
    df["case_id"] = df["case_id"].astype(str)
    df["patient_id"] = df["patient_id"].astype(str)
    return df


def _check_scores(df: pd.DataFrame, labels: list[str], path: Path) -> None:
    missing = [f"p_{c}" for c in labels if f"p_{c}" not in df.columns]
    if missing:
        raise DataError(
            f"predictions lack the score columns {missing} for data.labels {labels}",
            path=path,
            hint="the run's config.yaml and its predictions disagree",
        )
    bad = (df["y_true"] < 0) | (df["y_true"] >= len(labels))
    if bad.any():
        raise DataError(
            f"{int(bad.sum())} rows have y_true outside 0..{len(labels) - 1} "
            f"(first case {df.loc[bad, 'case_id'].iloc[0]!r})",
            path=path,
            hint="held-out predictions must be labelled; unlabelled cases belong in predict",
        )


def load_run(run_dir: str | Path) -> RunData:
    """Read a run folder; every missing or malformed file is a DataError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("run folder not found", path=run_dir, hint="pass runs/NAME as written by training")
    config = read_run_config(run_dir)
    folder = RunFolder(run_dir)
    parts, inner, tests, logs, ckpts = [], [], [], [], []
    single = has_single_label(config)
    required = REQUIRED_COLUMNS if single else TASKS_ONLY_COLUMNS
    for fold in folder.folds():
        pred = fold.predictions
        if not pred.is_file():
            raise DataError(
                f"fold has no {pred.name}",
                path=fold.dir,
                hint="the fold's training did not finish; re-run it with --fold",
            )
        df = _read_parquet(pred, required)
        if single:
            _check_scores(df, config.data.labels, pred)
        parts.append(df)
        if fold.inner_val_predictions.is_file():
            inner.append(_read_parquet(fold.inner_val_predictions, required))
        if fold.test_predictions.is_file():
            tests.append(_read_parquet(fold.test_predictions, required))
        if fold.metrics_csv.is_file():
            logs.append(pd.read_csv(fold.metrics_csv).assign(fold=fold.index))
        ckpts += [p.relative_to(run_dir) for p in fold.checkpoints()]
    if not parts:
        raise DataError(
            f"the run folder holds no fold_k/{folder.fold(0).predictions.name}",
            path=run_dir,
            hint="train first: python -m medres.train --config ...",
        )
    folds_csv = folder.folds_csv
    folds = (
        pd.read_csv(folds_csv, dtype={"patient_id": str}, keep_default_na=False)
        if folds_csv.is_file()
        else pd.DataFrame(columns=["patient_id", "fold"])
    )
    predictions = pd.concat(parts, ignore_index=True)
    dup = predictions["case_id"].duplicated()
    if dup.any():
        raise DataError(
            f"{int(dup.sum())} cases are predicted in more than one fold "
            f"(first {predictions.loc[dup, 'case_id'].iloc[0]!r})",
            path=run_dir,
            hint="each case must be held out exactly once; check folds.csv",
        )
    return RunData(
        run_dir=run_dir,
        config=config,
        folds=folds,
        predictions=predictions,
        inner_val=pd.concat(inner, ignore_index=True) if inner else predictions.iloc[:0].copy(),
        test=pd.concat(tests, ignore_index=True) if tests else None,
        train_logs=pd.concat(logs, ignore_index=True) if logs else pd.DataFrame(),
        checkpoints=ckpts,
    )
