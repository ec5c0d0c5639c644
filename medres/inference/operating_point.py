"""A fold's operating point: chosen on its calibrated inner-validation predictions as the report chooses
it, kept in its calibration map (``operating_point``), and the class called at it (``y_pred``)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["choose_operating_point", "decide", "ensemble_threshold"]


def choose_operating_point(y_true: np.ndarray, p_positive: np.ndarray, cfg: Any, *,
                           positive: int | None = None) -> dict:
    """The fold's threshold on ``p_<positive>``, chosen on inner validation as the report chooses it.

    ``positive``: the positive class index (default ``data.positive_index()``; 1 for a 0/1 label).

    Returns plain types: ``threshold`` (None when the inner validation holds one class only or no
    case), ``method``, ``target``, ``positive`` (class index), ``n_val``, ``n_val_pos`` and ``note``.
    """
    from medres.metrics.operating_points import choose_threshold

    ev = cfg.evaluate
    pos = cfg.data.positive_index() if positive is None else int(positive)
    y = (np.asarray(y_true) == pos).astype(np.int8)
    thr, note = None, ""
    if y.size == 0:
        note = "no inner-validation predictions: no operating point"
    elif y.sum() in (0, y.size):
        note = f"inner validation holds one class only (n_pos={int(y.sum())}): no operating point"
    else:
        thr = float(choose_threshold(y, np.asarray(p_positive, np.float64), ev.threshold,
                                     target=ev.threshold_target))
    return {"threshold": thr, "method": ev.threshold,
            "target": float(ev.threshold_target) if ev.threshold in ("sensitivity", "specificity") else None,
            "positive": pos, "n_val": int(y.size), "n_val_pos": int(y.sum()), "note": note}


def ensemble_threshold(calibrations: Any) -> float | None:
    """The members' operating point: one member's threshold, or for several the mean of theirs (as the
    report calls the test-set ensemble); None when a member has none."""
    thr = [((c or {}).get("operating_point") or {}).get("threshold") for c in calibrations]
    return None if not thr or any(t is None for t in thr) else float(np.mean(thr))


def decide(p: np.ndarray, positive: int, threshold: float | None) -> np.ndarray:
    """The class called for each row of ``p [N, K]``: ``positive`` where ``p[:, positive] >= threshold``,
    else the most probable other class; the plain argmax without a threshold."""
    p = np.asarray(p, np.float64)
    if threshold is None:
        return np.argmax(p, axis=1).astype(np.int64)
    others = p.copy()
    others[:, positive] = -np.inf
    return np.where(p[:, positive] >= threshold, positive, np.argmax(others, axis=1)).astype(np.int64)
