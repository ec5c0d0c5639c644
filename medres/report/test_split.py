"""The held-out test split (manifest ``split=test``) segmented by each fold model and by the fold ensemble.

Each fold's model predicts the test scans (``fold_k/test_predictions.parquet``, masks in
``fold_k/seg/``); the fold ensemble (``medres.inference.ensemble``) predicts them once more with every
fold model together (``ensemble/test_predictions.parquet``, masks in ``ensemble/seg/``: the argmax of
the mean of the folds' softmax maps). Both are scored against the reference masks here, per case,
then summarised as mean per-case metrics with patient-bootstrap intervals: scope ``test`` (per fold)
and ``test_ensemble`` (fold ``ensemble``). The classification head's test records are
``medres.report.aggregate.holdout_test_records``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medres.config import Config
from medres.report.html import seg_cells
from medres.report.run_folder import RunData, _read_parquet
from medres.runfolder import RunFolder
from medres.report.seg_records import segmentation_records

__all__ = ["load_ensemble_test", "test_segmentation_cases", "test_segmentation_records",
           "test_segmentation_table"]

_ENSEMBLE_FOLD = -1  # the ensemble's ``fold`` in its table


def load_ensemble_test(run_dir: str | Path) -> pd.DataFrame | None:
    """``ensemble/test_predictions.parquet`` of a run folder, or None."""
    path = RunFolder(run_dir).ensemble.test_predictions
    return _read_parquet(path) if path.is_file() else None


def test_segmentation_cases(run: RunData, seg_cases: Callable[[RunData], pd.DataFrame]) -> pd.DataFrame:
    """Per-case segmentation metrics of the test split: each fold's masks and the ensemble's.

    ``seg_cases`` computes per-case metrics of a RunData's ``predictions`` (the evaluation's
    ``segmentation_cases``); it is called with the test tables in place of the held-out ones. The
    ensemble's rows have ``fold`` -1.
    """
    frames = []
    for table in (run.test, load_ensemble_test(run.run_dir)):
        if table is None or not len(table) or "seg_path" not in table.columns:
            continue
        view = copy.copy(run)
        view.predictions = table
        frames.append(seg_cases(view))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def test_segmentation_records(cases: pd.DataFrame, config: Config, *, seed: int = 0) -> list[dict]:
    """Records of :func:`test_segmentation_cases`: scope ``test`` per fold, ``test_ensemble``."""
    if cases is None or not len(cases):
        return []
    recs = []
    folds = cases[cases["fold"] != _ENSEMBLE_FOLD]
    for r in segmentation_records(folds, config, seed=seed) if len(folds) else []:
        if r["scope"] == "fold":
            recs.append({**r, "scope": "test"})
    ens = cases[cases["fold"] == _ENSEMBLE_FOLD]
    for r in segmentation_records(ens, config, seed=seed) if len(ens) else []:
        if r["scope"] == "pooled":
            recs.append({**r, "scope": "test_ensemble", "fold": "ensemble"})
    return recs


def test_segmentation_table(records: pd.DataFrame) -> pd.DataFrame:
    """Rows: each fold's model and the fold ensemble, per class; mean [CI] (n) of each metric."""
    if records is None or not len(records) or "head" not in records.columns:
        return pd.DataFrame()
    seg = records[(records["head"] == "segmentation") & records["scope"].isin(["test", "test_ensemble"])]
    rows = []
    for (scope, fold, cls), part in seg.groupby(["scope", "fold", "class"], sort=False):
        by = part.set_index("metric")
        row = {"": f"fold {fold} model" if scope == "test" else "fold ensemble (mean softmax)", "class": cls}
        row.update(seg_cells(by))
        rows.append(row)
    return pd.DataFrame(rows)
