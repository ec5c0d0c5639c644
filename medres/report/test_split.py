"""The held-out test split (manifest ``split=test``) segmented by each fold model and by the fold ensemble.

Each fold's model predicts the test scans (``fold_k/test_predictions.parquet``, masks in
``fold_k/seg/``); the fold ensemble (``medres.inference.ensemble``) predicts them once more with every
fold model together (``ensemble/test_predictions.parquet``, masks in ``ensemble/seg/``: the argmax of
the mean of the folds' softmax maps). The evaluation stage scores both against the reference masks per
case (``medres.evaluation.cases.test_segmentation_cases``, saved with the report); here they are
summarised as mean per-case metrics with patient-bootstrap intervals: scope ``test`` (per fold) and
``test_ensemble`` (fold ``ensemble``). The classification head's test records are
``medres.report.aggregate.holdout_test_records``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medres.config import Config
from medres.report.html import seg_cells
from medres.report.run_folder import _read_parquet
from medres.report.seg_records import segmentation_records
from medres.runfolder import RunFolder

__all__ = ["load_ensemble_test", "test_segmentation_records", "test_segmentation_table"]

_ENSEMBLE_FOLD = -1  # the ensemble's ``fold`` in its table


def load_ensemble_test(run_dir: str | Path) -> pd.DataFrame | None:
    """``ensemble/test_predictions.parquet`` of a run folder, or None."""
    path = RunFolder(run_dir).ensemble.test_predictions
    return _read_parquet(path) if path.is_file() else None


def test_segmentation_records(cases: pd.DataFrame, config: Config, *, seed: int = 0) -> list[dict]:
    """Records of the test split's per-case scores (``fold`` -1: the ensemble's): scope ``test`` per
    fold, ``test_ensemble``."""
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
