"""The fold ensemble: a run's fold models applied together to new scans (and to the run's test split).

Cross-validation trains one model per fold; the ensemble of all of them is what a user applies to
new scans (as nnU-Net does). Every window of a scan is passed through all fold models while it is in
memory (:func:`medres.engine.sliding.infer_volume_models`), so the ensemble of K models costs about K
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
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from medres.engine.checkpoint import BEST, LAST, load_checkpoint
from medres.errors import ConfigError, DataError

__all__ = ["ENSEMBLE_DIR", "prediction_checkpoint", "load_members", "load_run_members", "run_folds",
           "write_test_ensemble"]

log = logging.getLogger("medres.engine")

#: The run folder's sub-folder for the fold ensemble's predictions.
ENSEMBLE_DIR = "ensemble"


def prediction_checkpoint(fold_dir: str | os.PathLike[str]) -> Path:
    """The checkpoint a fold predicts with: ``checkpoint_best.pt``, else ``checkpoint_last.pt``."""
    fold_dir = Path(fold_dir)
    return fold_dir / BEST if (fold_dir / BEST).exists() else fold_dir / LAST


def load_members(paths: Sequence[str | os.PathLike[str]]
                 ) -> tuple[list[nn.Module], Any, list[dict | None], list[str]]:
    """Models (eval mode), the first one's Config, each one's ``calibration`` and member names.

    Raises ConfigError when the checkpoints disagree on the data pipeline or the class vocabulary
    (an ensemble needs one preprocessing and one meaning per output).
    """
    from medres.config import Config
    from medres.models import create_model

    models, cals, names, config, first = [], [], [], None, None
    for path in paths:
        state = load_checkpoint(path)
        try:
            spec, cfg = state["model_spec"], Config.model_validate(state["config"])
        except KeyError as e:
            raise ConfigError(f"not a medres checkpoint (no {e.args[0]!r} entry)", path=path) from None
        data = cfg.data.model_dump(mode="json", include={"labels", "windows", "normalize", "orientation",
                                                         "spacing", "patch_size", "image_columns",
                                                         "spatial_dims", "modality", "mask_labels"})
        if first is None:
            config, first = cfg, data
        elif data != first:
            raise ConfigError("the checkpoints of the ensemble differ in their data pipeline or labels",
                              path=path, hint="ensemble only the folds of one run")
        model = create_model(spec["name"], **spec["kwargs"])
        model.load_state_dict(state["model"])
        models.append(model.eval())
        cal = state.get("calibration")
        cals.append(dict(cal) if cal else None)
        fold = state.get("fold")
        names.append(f"fold{fold}" if isinstance(fold, int) else f"model{len(names)}")
    if not models:
        raise ConfigError("no checkpoints to ensemble")
    if len(set(names)) != len(names):
        names = [f"model{i}" for i in range(len(names))]
    return models, config, cals, names


def run_folds(run_dir: str | os.PathLike[str]) -> list[int]:
    """The fold numbers of a run folder that have a checkpoint, sorted."""
    run_dir = Path(run_dir)
    out = []
    for p in run_dir.glob("fold_*"):
        if re.fullmatch(r"fold_\d+", p.name) and prediction_checkpoint(p).exists():
            out.append(int(p.name.split("_")[1]))
    return sorted(out)


def load_run_members(run_dir: str | os.PathLike[str], folds: Sequence[int] | None = None
                     ) -> tuple[list[nn.Module], Any, list[dict | None], list[str]]:
    """:func:`load_members` for the folds of a run folder (default: every fold with a checkpoint)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError("run folder not found", path=run_dir, hint="pass runs/NAME as written by training")
    have = run_folds(run_dir)
    wanted = have if folds is None else [int(k) for k in folds]
    missing = [k for k in wanted if k not in have]
    if missing or not wanted:
        raise DataError(f"no checkpoint for fold(s) {missing or 'any'}", path=run_dir,
                        hint=f"folds with a checkpoint: {have or 'none'}; train them first "
                             "(python -m medres.train --fold k)")
    models, config, cals, _ = load_members([prediction_checkpoint(run_dir / f"fold_{k}") for k in wanted])
    return models, config, cals, [f"fold{k}" for k in wanted]


def write_test_ensemble(run_dir: str | os.PathLike[str], records: Iterable[Mapping[str, Any]], cfg: Any, *,
                        folds: Sequence[int] | None = None, masks: bool = True,
                        device: torch.device | str | None = None) -> pd.DataFrame | None:
    """The fold ensemble's predictions of the test split: ``ensemble/test_predictions.parquet``.

    ``fold`` is -1 (no fold model alone); the folds' own probabilities are the ``p_<class>_fold<k>``
    columns. ``seg_path`` is relative to ``run_dir``. Returns None when there are no test records or
    fewer than two folds have a checkpoint (one fold is no ensemble: its own table already says it).
    """
    from medres.engine.inference import predict_cases, write_table

    records = list(records)
    run_dir = Path(run_dir)
    if not records or len(run_folds(run_dir) if folds is None else folds) < 2:
        return None
    models, _, cals, names = load_run_members(run_dir, folds)
    if device is not None:
        models = [m.to(device) for m in models]
    ev = cfg.evaluate
    out = run_dir / ENSEMBLE_DIR
    df = predict_cases(models, records, cfg.data, fold=-1, seg_dir=out / "seg" if masks else None,
                       seg_relative_to=run_dir, overlap=ev.sliding_window_overlap, tta=ev.tta_flips,
                       cls_aggregate=getattr(ev, "cls_aggregate", "max"), device=device,
                       calibration=cals, member_names=names)
    write_table(df, out / "test_predictions.parquet")
    log.info("fold ensemble (%s) on %d test scans: %s", ", ".join(names), len(df),
             (out / "test_predictions.parquet").resolve())
    return df
