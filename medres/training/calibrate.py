"""Per-fold recalibration: fitted on the fold's inner-validation predictions only, saved in its checkpoint.

After a fold has predicted its inner-validation, held-out and test cases (uncalibrated, with the
case-level ``logit_<class>`` columns), :func:`calibrate_fold` fits ``evaluate.calibration``
(temperature or Platt scaling) on ``inner_val_predictions.parquet`` -- the only table it reads for the
fit -- and keeps it only on evidence (:func:`medres.metrics.calibration.choose_calibration`: a
likelihood-ratio test against no recalibration, on patients, at 5%; otherwise the identity map is kept,
with the candidate and the reason under ``evidence``), stores the map in the
fold's prediction checkpoint (plain types, under ``calibration``) and in ``calibration.json``, and
rewrites the ``p_<class>`` / ``y_pred`` / ``y_pred_argmax`` columns of the fold's tables from their
logits. The uncalibrated probabilities stay recoverable as ``softmax(logit_<class>)``. ``medres.predict``
and the fold ensemble read the map from the checkpoint.

The fold's operating point is chosen on the same calibrated inner-validation predictions, exactly as the
report chooses it (``evaluate.threshold``, ``evaluate.threshold_target``), and kept in the map under
``operating_point``; ``y_pred`` is the class called at it
(:func:`medres.inference.operating_point.decide`), ``y_pred_argmax`` the most probable class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medres.checkpoint import load_checkpoint, save_checkpoint
from medres.inference.operating_point import choose_operating_point, decide
from medres.runfolder import HELDOUT, INNER_VAL, TEST, FoldFolder

__all__ = ["calibrate_fold", "case_ids_digest", "TABLES"]

log = logging.getLogger("medres.training")

#: The fold tables whose probabilities are recalibrated (the fit reads the first one only).
TABLES = (INNER_VAL, HELDOUT, TEST)


def case_ids_digest(case_ids: Any) -> str:
    """SHA-256 of the sorted case ids (a record of which cases a map was fitted on, without them)."""
    return hashlib.sha256("\n".join(sorted(map(str, case_ids))).encode()).hexdigest()


def _recalibrate(df: pd.DataFrame, labels: list[str], cal: dict) -> pd.DataFrame:
    from medres.metrics.calibration import apply_calibration

    z = df[[f"logit_{c}" for c in labels]].to_numpy(np.float64)
    p = apply_calibration(z, cal)
    out = df.copy()
    for k, c in enumerate(labels):
        out[f"p_{c}"] = p[:, k]
    op = cal.get("operating_point") or {}
    out["y_pred"] = decide(p, op.get("positive", len(labels) - 1), op.get("threshold"))
    out["y_pred_argmax"] = np.argmax(p, axis=1).astype(np.int64)
    return out


def calibrate_fold(fold_dir: str | os.PathLike[str], cfg: Any) -> dict | None:
    """Fit the fold's recalibration on its inner validation; save it; recalibrate the fold's tables.

    Returns the map (``fit_calibration``'s dict plus ``fitted_on``, ``case_ids_sha256``), or None when
    the fold has no inner-validation logits (no classification head, or no inner validation).
    """
    from medres.inference.predictor import write_table
    from medres.metrics.calibration import choose_calibration

    fold = FoldFolder(Path(fold_dir))
    if cfg.tasks is not None:
        return _calibrate_tasks(fold, cfg)
    labels = list(cfg.data.labels)
    cols = [f"logit_{c}" for c in labels]
    val_path = fold.inner_val_predictions
    if not val_path.is_file():
        return None
    val = pd.read_parquet(val_path)
    if not set(cols) <= set(val.columns):
        return None
    val = val[val["y_true"] >= 0]
    positive = cfg.data.positive_index()
    method = cfg.evaluate.calibration if len(labels) == 2 or cfg.evaluate.calibration != "platt" \
        else "temperature"
    cal = choose_calibration(val[cols].to_numpy(np.float64), val["y_true"].to_numpy(),
                             val["patient_id"].astype(str).to_numpy() if "patient_id" in val else None,
                             method, positive=positive)
    log.info("%s: recalibration (%s) %s", fold.dir.name, method, cal["evidence"]["why"])
    cal.update(fitted_on="inner_val", case_ids_sha256=case_ids_digest(val["case_id"]),
               labels=labels)
    p_val = _recalibrate(val, labels, cal)[f"p_{labels[positive]}"].to_numpy()
    cal["operating_point"] = choose_operating_point(val["y_true"].to_numpy(), p_val, cfg)
    _store(fold, cal)
    for name in TABLES:
        path = fold.table(name)
        if path.is_file():
            df = pd.read_parquet(path)
            if set(cols) <= set(df.columns):
                write_table(_recalibrate(df, labels, cal), path)
    op = cal["operating_point"]
    log.info("%s: calibration %s fitted on %d inner-validation cases%s; operating point: %s", fold.dir.name,
             cal["method"], cal["n"], f" (T = {cal['temperature']:.3g})" if "temperature" in cal else "",
             f"p_{labels[positive]} >= {op['threshold']:.3g} ({op['method']})" if op["threshold"] is not None
             else op["note"])
    return cal


def _fit_single_label(val: pd.DataFrame, labels: list[str], positive: int, cfg: Any) -> dict:
    """The single-label task's map and operating point, as for the single head."""
    from medres.metrics.calibration import choose_calibration

    cols = [f"logit_{c}" for c in labels]
    val = val[val["y_true"] >= 0]
    method = cfg.evaluate.calibration if len(labels) == 2 or cfg.evaluate.calibration != "platt" \
        else "temperature"
    cal = choose_calibration(val[cols].to_numpy(np.float64), val["y_true"].to_numpy(),
                             val["patient_id"].astype(str).to_numpy() if "patient_id" in val else None,
                             method, positive=positive)
    cal.update(labels=labels)
    p_val = _recalibrate(val, labels, {**cal, "operating_point": {"positive": positive}})[
        f"p_{labels[positive]}"].to_numpy()
    cal["operating_point"] = choose_operating_point(val["y_true"].to_numpy(), p_val, cfg, positive=positive)
    return cal


def _fit_label(val: pd.DataFrame, column: str, cfg: Any) -> dict:
    """One multilabel column: Platt on its logit where the evidence rule keeps it, and its operating point."""
    from medres.inference.tasks import label_probability
    from medres.metrics.calibration import choose_calibration

    known = val[np.isfinite(val[f"y_{column}"].to_numpy(np.float64))]
    z = known[f"logit_{column}"].to_numpy(np.float64)
    y = known[f"y_{column}"].to_numpy(np.float64).astype(np.int64)
    method = "none" if cfg.evaluate.calibration == "none" else "platt"
    groups = known["patient_id"].astype(str).to_numpy() if "patient_id" in known else None
    if len(np.unique(y)) < 2:  # nothing to fit on
        cal = {"method": "none", "n": int(len(y)), "note": "inner validation holds one class only"}
    else:
        cal = choose_calibration(np.stack([np.zeros_like(z), z], axis=1), y, groups, method, positive=1)
    cal["operating_point"] = choose_operating_point(y, label_probability(z, cal), cfg, positive=1)
    return cal


def _fit_interval(val: pd.DataFrame, task: Any) -> dict:
    """A regression task's split-conformal half-width from the inner validation, patients as the units:
    each patient's score is the largest absolute residual of their scans, so the interval covers all of a
    new patient's scans with probability >= the level (Dunn, Wasserman and Ramdas 2022, JASA, on
    conformal prediction for grouped data); scans of one patient are not exchangeable with one another,
    patients are. With one scan per patient it is the usual split-conformal rule."""
    from medres.inference.tasks import conformal_half_width

    t = task.name
    r = np.abs(val[f"y_{t}"].to_numpy(np.float64) - val[f"pred_{t}"].to_numpy(np.float64))
    ok = np.isfinite(r)
    patients = val["patient_id"].astype(str).to_numpy()[ok] if "patient_id" in val else np.arange(ok.sum())
    scores = pd.Series(r[ok]).groupby(patients).max().to_numpy()
    hw = conformal_half_width(scores, task.interval)
    return {"type": "regression", "level": float(task.interval), "n": int(ok.sum()),
            "n_patients": int(scores.size), "score": "largest absolute residual per patient",
            "half_width": hw if np.isfinite(hw) else None,
            "note": "" if np.isfinite(hw) else f"too few inner-validation patients ({scores.size}) for a "
                                                 f"{task.interval:g} interval: it is unbounded"}


def _apply_tasks(df: pd.DataFrame, layout: Any, cal: dict) -> pd.DataFrame:
    """A fold table with every task's calibrated columns rebuilt from its logits and predictions."""
    from medres.inference.tasks import label_probability

    out = df.copy()
    for slot in layout:
        entry = cal["tasks"].get(slot.name) or {}
        if slot.single_label and all(f"logit_{c}" in out for c in slot.classes):
            out = _recalibrate(out, list(slot.classes), cal)
        elif slot.type == "multilabel":
            for c in slot.classes:
                if f"logit_{c}" in out:
                    out[f"p_{c}"] = label_probability(out[f"logit_{c}"].to_numpy(np.float64),
                                                      entry["columns"][c])
        elif slot.type == "regression" and f"pred_{slot.name}" in out:
            hw = entry.get("half_width")
            hw = np.inf if hw is None else float(hw)
            out[f"pred_{slot.name}_lo"] = out[f"pred_{slot.name}"] - hw
            out[f"pred_{slot.name}_hi"] = out[f"pred_{slot.name}"] + hw
    return out


def _calibrate_tasks(fold: FoldFolder, cfg: Any) -> dict | None:
    """:func:`calibrate_fold` for a ``tasks:`` configuration: the single-label task as the single head,
    Platt and an operating point per multilabel column, a conformal half-width per regression task; all
    fitted on the inner validation, kept under ``tasks`` in the map."""
    from medres.config.tasks import task_layout
    from medres.inference.predictor import write_table

    val_path = fold.inner_val_predictions
    if not val_path.is_file():
        return None
    val = pd.read_parquet(val_path)
    layout = task_layout(cfg)
    single = layout.single_label
    if single is not None and all(f"logit_{c}" in val for c in single.classes):
        positive = len(single.classes) - 1 if single.type == "binary" else cfg.data.positive_index()
        cal = _fit_single_label(val, list(single.classes), positive, cfg)
    else:
        cal = {"method": "none", "n": int(len(val))}
    tasks: dict[str, dict] = {}
    for slot in layout:
        if slot.type == "multilabel":
            tasks[slot.name] = {"type": "multilabel", "columns": {c: _fit_label(val, c, cfg)
                                                                  for c in slot.classes}}
        elif slot.type == "regression":
            tasks[slot.name] = _fit_interval(val, slot.task)
    cal.update(tasks=tasks, fitted_on="inner_val", case_ids_sha256=case_ids_digest(val["case_id"]))
    _store(fold, cal)
    for name in TABLES:
        path = fold.table(name)
        if path.is_file():
            write_table(_apply_tasks(pd.read_parquet(path), layout, cal), path)
    for t, entry in tasks.items():
        if entry["type"] == "regression":
            log.info("%s: task %s: %g interval half-width %s from %d inner-validation cases", fold.dir.name,
                     t, entry["level"], entry["half_width"], entry["n"])
        else:
            kept = [c for c, m in entry["columns"].items() if m["method"] != "none"]
            log.info("%s: task %s: Platt kept for %s", fold.dir.name, t, kept or "no column")
    return cal


def _store(fold: Any, cal: dict) -> None:
    """The fitted map into the fold's predicting checkpoint and its calibration.json."""
    ckpt = fold.predicting_checkpoint()
    state = load_checkpoint(ckpt)
    state["calibration"] = cal
    save_checkpoint(state, ckpt, keep_previous=False)
    fold.calibration.write_text(json.dumps(cal, indent=1) + "\n")
