"""The fold ensemble: a run's fold models applied together to new scans (and to the run's test split).

Cross-validation trains one model per fold; the ensemble of all of them is what a user applies to
new scans (as nnU-Net does). Every window of a scan is passed through all fold models while it is in
memory (:func:`medres.inference.sliding.infer_volume_models`), so the ensemble of K models costs about K
forward passes per window and one pass of loading, resampling and windowing. Class probabilities are
each fold's *calibrated* probabilities (its checkpoint's ``calibration``, fitted on that fold's inner
validation), averaged; the mask is the argmax of the mean of the folds' softmax maps.

``write_test_ensemble`` scores the manifest's ``split=test`` rows with the ensemble into
``runs/<name>/ensemble/test_predictions.parquet`` (masks in ``ensemble/seg/``), beside the folds'
own ``fold_k/test_predictions.parquet``; the report scores both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from medres.inference.members import load_members, load_run_members, prediction_checkpoint, run_folds
from medres.runfolder import RunFolder

__all__ = ["prediction_checkpoint", "load_members", "load_run_members", "run_folds",
           "write_test_ensemble"]

log = logging.getLogger("medres.training")


def _layout(cfg: Any) -> Any:
    """The task layout of a ``tasks:`` configuration (None for today's single head)."""
    from medres.config.tasks import task_layout

    return task_layout(cfg) if cfg.tasks is not None else None


def write_test_ensemble(run_dir: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], cfg: Any, *,
                        folds: Sequence[int] | None = None, masks: bool = True,
                        device: torch.device | str | None = None) -> pd.DataFrame | None:
    """The fold ensemble's predictions of the test split: ``ensemble/test_predictions.parquet``.

    ``fold`` is -1 (no fold model alone); the folds' own probabilities are the ``p_<class>_fold<k>``
    columns (with ``tasks:`` also ``p_<c>_fold<k>`` per label and ``pred_<t>_fold<k>`` per regression
    task: ``medres.inference.tasks``). ``seg_path`` is relative to ``run_dir``. Returns None when there are
    no test records or fewer than two folds have a checkpoint (one fold is no ensemble: its own table
    already says it).
    """
    from medres.inference.predictor import predict_cases, write_table

    records = list(records)
    run_dir = Path(run_dir)
    if not records or len(run_folds(run_dir) if folds is None else folds) < 2:
        return None
    models, _, cals, names = load_run_members(run_dir, folds)
    if device is not None:
        models = [m.to(device) for m in models]
    ev = cfg.evaluate
    out = RunFolder(run_dir).ensemble
    df = predict_cases(models, records, cfg.data, fold=-1, seg_dir=out.seg_dir if masks else None,
                       seg_relative_to=run_dir, overlap=ev.sliding_window_overlap, tta=ev.tta_flips,
                       cls_aggregate=ev.cls_aggregate, device=device,
                       calibration=cals, member_names=names, layout=_layout(cfg))
    write_table(df, out.test_predictions)
    log.info("fold ensemble (%s) on %d test scans: %s", ", ".join(names), len(df),
             out.test_predictions.resolve())
    return df
