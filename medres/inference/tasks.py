"""The prediction-table columns of a configuration's ``tasks:`` (``medres.config.tasks.TaskLayout``).

One case's task outputs (:attr:`medres.inference.sliding.VolumePrediction.task_values`, one vector per
member) become the columns of the contract: the single-label task as today's head (``p_<class>``,
``y_true``, ``y_pred``, ``y_pred_argmax``); a multilabel column ``c``: ``p_<c>`` (Platt-calibrated where
the member's map keeps it), ``y_<c>``, ``logit_<c>``; a regression task ``t``: ``pred_<t>`` in the target's
units (the checkpoint's ``task_scales``: mean and sd of the training fold), ``y_<t>``, ``pred_<t>_lo`` /
``pred_<t>_hi`` (the split-conformal half-width fitted on inner validation). A fold ensemble averages the
members' calibrated probabilities and values in units; its interval half-width is the MEAN of the members'
conformal half-widths (each valid for its member; the mean is a pragmatic pooled width, not a proof).

A member's calibration map (a checkpoint's ``calibration``) carries everything per task: ``task_scales``
(copied from the checkpoint by ``medres.inference.members``) and, after ``medres.training.calibrate``,
``tasks``: ``{name: {"columns": {c: platt map + operating_point}}}`` (multilabel) or
``{name: {"half_width": h, "level": l, ...}}`` (regression).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from medres.errors import ConfigError

__all__ = ["uses_tasks", "regression_scale", "label_probability", "conformal_half_width", "record_targets",
           "task_columns", "task_outputs"]


def uses_tasks(layout: Any) -> bool:
    """True for a ``TaskLayout`` from a configuration with ``tasks:`` (not today's single head)."""
    return layout is not None and not getattr(layout, "single_head", True)


def regression_scale(calibration: Mapping[str, Any] | None, name: str) -> tuple[float, float]:
    """``(mean, sd)`` of regression task ``name`` from a member's map (its checkpoint's ``task_scales``).

    Raises:
        ConfigError: the checkpoint holds no scales for the task (its values would not be in units).
    """
    scales = (calibration or {}).get("task_scales") or {}
    entry = scales.get(name) if isinstance(scales, Mapping) else None
    if not isinstance(entry, Mapping) or "mean" not in entry or "sd" not in entry:
        raise ConfigError(f"the checkpoint holds no target scale (task_scales) for regression task {name!r}",
                          hint="predict with a checkpoint trained with this task (training saves the "
                               "training fold's mean and sd of the target)")
    return float(entry["mean"]), float(entry["sd"])


def _task_cal(calibration: Mapping[str, Any] | None, name: str) -> Mapping[str, Any]:
    return ((calibration or {}).get("tasks") or {}).get(name) or {}


def label_probability(logit: np.ndarray, column_map: Mapping[str, Any] | None) -> np.ndarray:
    """Probabilities of a multilabel column from its logits: the Platt map (``metrics.calibration``'s, fitted
    on the two-class logits ``[0, z]``) where one is kept, else the sigmoid."""
    from medres.metrics.calibration import apply_calibration

    z = np.asarray(logit, np.float64).reshape(-1)
    two = np.stack([np.zeros_like(z), z], axis=1)
    cal = dict(column_map or {})
    cal.pop("operating_point", None)
    return apply_calibration(two, cal if cal.get("method", "none") != "none" else None)[:, 1]


def conformal_half_width(residuals: np.ndarray, level: float) -> float:
    """Split-conformal half-width: the ceil((n + 1) * level)-th smallest absolute residual (inf when that
    exceeds n, or with no residual)."""
    r = np.sort(np.abs(np.asarray(residuals, np.float64)[np.isfinite(residuals)]))
    k = math.ceil((len(r) + 1) * float(level))
    return float(r[k - 1]) if 1 <= k <= len(r) else math.inf


def record_targets(records: Sequence[Any], layout: Any) -> dict[str, np.ndarray]:
    """Each task's targets ``[cases, columns]`` (NaN unknown) read from the records' manifest cells
    (``extras``); a task whose columns the records lack (new scans) is all NaN."""
    from medres.data.tasks import parse_task_targets

    frame = pd.DataFrame([dict(getattr(r, "extras", {}) or {}) for r in records])
    rows = [getattr(r, "row", None) for r in records]
    if rows and all(isinstance(r, int) for r in rows):
        frame.index = pd.Index([r - 1 for r in rows])
    frame["case_id"] = [str(r.case_id) for r in records]
    out = {}
    present = [s for s in layout if all(c in frame.columns for c in s.task.target_columns())]
    table = parse_task_targets(frame.astype(object).where(frame.notna(), ""), [s.task for s in present]) \
        if present and len(frame) else None
    for slot in layout:
        n = slot.target_stop - slot.target_start
        if table is not None and slot.name in table.tasks:
            out[slot.name] = table[slot.name].values
        else:
            out[slot.name] = np.full((len(records), n), np.nan)
    return out


def task_outputs(values: Sequence[np.ndarray], layout: Any, calibrations: Sequence[Mapping[str, Any] | None]
                 ) -> dict[str, dict[str, Any]]:
    """Per task, per member: ``probs`` (single-label, calibrated), ``p`` and ``logit`` per column
    (multilabel), ``value`` (units) and ``half_width`` (regression)."""
    from medres.metrics.calibration import apply_calibration

    out: dict[str, dict[str, Any]] = {}
    for slot in layout:
        parts: dict[str, Any] = {}
        if slot.single_label:
            z = [np.log(np.clip(np.asarray(v[slot.start:slot.stop], np.float64), 1e-300, None))
                 for v in values]
            parts["log_probs"] = z
            parts["probs"] = [apply_calibration(zz, c) for zz, c in zip(z, calibrations)]
        elif slot.type == "multilabel":
            cols = [_task_cal(c, slot.name).get("columns") or {} for c in calibrations]
            parts["logit"] = [np.asarray(v[slot.start:slot.stop], np.float64) for v in values]
            parts["p"] = [np.array([label_probability(z[j], cc.get(c))[0]
                                    for j, c in enumerate(slot.classes)])
                          for z, cc in zip(parts["logit"], cols)]
        else:
            scaled = []
            for v, c in zip(values, calibrations):
                mean, sd = regression_scale(c, slot.name)
                scaled.append(float(v[slot.start]) * sd + mean)
            parts["value"] = scaled
            hw = [_task_cal(c, slot.name).get("half_width") for c in calibrations]
            parts["half_width"] = [math.inf if h is None and _task_cal(c, slot.name) else
                                   (math.nan if h is None else float(h)) for h, c in zip(hw, calibrations)]
        out[slot.name] = parts
    return out


def task_columns(values: Sequence[np.ndarray], layout: Any, calibrations: Sequence[Mapping[str, Any] | None],
                 targets: Mapping[str, np.ndarray], *, member_names: Sequence[str] | None = None,
                 logits: bool = False) -> dict[str, Any]:
    """One case's table columns for every task (see the module docstring).

    Args:
        values: each member's ``task_values`` as a float64 array ``[width]``.
        layout: the configuration's ``TaskLayout``.
        calibrations: each member's map (``task_scales``, ``tasks``, the single-label map at the top).
        targets: this case's targets per task (a row of :func:`record_targets`).
        member_names: with several members, the suffixes of the per-member columns (``fold<k>``).
        logits: write the single-label task's ``logit_<class>`` (a single model's fold tables).
    """
    from medres.inference.operating_point import decide, ensemble_threshold

    outs = task_outputs(values, layout, calibrations)
    ensemble = len(values) > 1
    names = list(member_names) if member_names is not None else [f"fold{k}" for k in range(len(values))]
    row: dict[str, Any] = {}
    for slot in layout:
        o, y = outs[slot.name], np.asarray(targets[slot.name], np.float64).reshape(-1)
        if slot.single_label:
            probs = np.mean(o["probs"], axis=0)
            row["y_true"] = int(y[0]) if np.isfinite(y[0]) else -1
            row.update({f"p_{c}": float(probs[k]) for k, c in enumerate(slot.classes)})
            ops = [(c or {}).get("operating_point") or {} for c in calibrations]
            positive = int(ops[0].get("positive", len(slot.classes) - 1))
            row["y_pred"] = int(decide(probs[None], positive, ensemble_threshold(calibrations))[0])
            row["y_pred_argmax"] = int(np.argmax(probs))
            if ensemble:
                for m, p in zip(names, o["probs"]):
                    row.update({f"p_{c}_{m}": float(p[k]) for k, c in enumerate(slot.classes)})
            elif logits:
                row.update({f"logit_{c}": float(o["log_probs"][0][k]) for k, c in enumerate(slot.classes)})
        elif slot.type == "multilabel":
            p, z = np.mean(o["p"], axis=0), np.mean(o["logit"], axis=0)
            for j, c in enumerate(slot.classes):
                row[f"p_{c}"], row[f"y_{c}"], row[f"logit_{c}"] = float(p[j]), float(y[j]), float(z[j])
            if ensemble:
                for m, pm in zip(names, o["p"]):
                    row.update({f"p_{c}_{m}": float(pm[j]) for j, c in enumerate(slot.classes)})
        else:
            t = slot.name
            value, hw = float(np.mean(o["value"])), float(np.mean(o["half_width"]))
            row[f"pred_{t}"], row[f"y_{t}"] = value, float(y[0])
            row[f"pred_{t}_lo"], row[f"pred_{t}_hi"] = value - hw, value + hw
            if ensemble:
                row.update({f"pred_{t}_{m}": float(v) for m, v in zip(names, o["value"])})
    if layout.single_label is None:
        row.setdefault("y_true", -1)
    return row
