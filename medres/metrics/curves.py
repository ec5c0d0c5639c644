"""ROC and precision-recall curves, and a patient-bootstrap confidence band for the ROC curve.

A case is positive when ``score >= threshold``; thresholds run from high to low, as in scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import DataError
from medres.metrics._ranking import LevelMatrices, LevelWeights
from medres.metrics._validation import as_groups, as_labels, as_scores
from medres.metrics.classification import class_balance_reason

__all__ = ["RocBand", "precision_recall_curve", "roc_band", "roc_curve"]


def _checked(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    why = class_balance_reason(y)
    if why:
        raise DataError(f"a ROC curve is undefined: {why}", hint="evaluate a sample with both classes")
    return y, s


def _counts_by_threshold(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    levels, level = np.unique(s, return_inverse=True)
    pos = np.bincount(level, weights=y.astype(np.float64), minlength=levels.size)[::-1]
    neg = np.bincount(level, minlength=levels.size)[::-1] - pos
    return levels[::-1], np.cumsum(pos), np.cumsum(neg)


def roc_curve(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points at every distinct score: ``fpr [K+1]``, ``tpr [K+1]``, ``thresholds [K+1]``.

    Starts at (0, 0) with threshold +inf (scikit-learn's ``roc_curve(drop_intermediate=False)``).
    """
    y, s = _checked(y_true, score)
    thresholds, tp, fp = _counts_by_threshold(y, s)
    return (np.concatenate([[0.0], fp / fp[-1]]), np.concatenate([[0.0], tp / tp[-1]]),
            np.concatenate([[np.inf], thresholds]))


def precision_recall_curve(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision [K], recall [K] and thresholds [K], thresholds decreasing (one point per distinct score).

    Read with the prevalence: a model without skill has precision = prevalence at every recall.
    """
    y, s = _checked(y_true, score)
    thresholds, tp, fp = _counts_by_threshold(y, s)
    return tp / (tp + fp), tp / tp[-1], thresholds


@dataclass(frozen=True)
class RocBand:
    """Pointwise patient-bootstrap band of the ROC curve on an FPR grid.

    Attributes:
        fpr: [G] grid of false-positive rates.
        tpr: [G] the full sample's TPR at each grid point.
        tpr_low, tpr_high: [G] pointwise percentile interval of TPR (not a simultaneous band).
        level, n_resamples, n_valid: as in `BootstrapResult`.
    """

    fpr: np.ndarray
    tpr: np.ndarray
    tpr_low: np.ndarray
    tpr_high: np.ndarray
    level: float
    n_resamples: int
    n_valid: int


def _tpr_on_grid(w: LevelWeights, grid: np.ndarray) -> np.ndarray:
    """TPR [R, G] interpolated on the FPR grid from level weights (positives as columns).

    Walking thresholds from high to low, at each positive level the negatives strictly between it and
    the level above enter first (a horizontal step), then the level's positives and tied negatives
    (a diagonal step); vertical steps take the upper value.
    """
    tp = np.cumsum(w.col[:, ::-1], axis=1)
    fp_after = w.other_total[:, None] - w.below[:, ::-1]
    fp_before = fp_after - w.tie[:, ::-1]
    tp_before = tp - w.col[:, ::-1]
    r = w.col.shape[0]
    fpr = np.concatenate([np.zeros((r, 1)), np.stack([fp_before, fp_after], 2).reshape(r, -1),
                          np.ones((r, 1)) * w.other_total[:, None]], axis=1)
    tpr = np.concatenate([np.zeros((r, 1)), np.stack([tp_before, tp], 2).reshape(r, -1),
                          np.ones((r, 1)) * w.col_total[:, None]], axis=1)
    out = np.full((r, grid.size), np.nan)
    for i in range(r):
        if w.col_total[i] > 0 and w.other_total[i] > 0:
            out[i] = _interp_upper(grid, fpr[i] / w.other_total[i], tpr[i] / w.col_total[i])
    return out


def _interp_upper(grid: np.ndarray, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Linear interpolation along a path with non-decreasing x; at a vertical step, the top value."""
    j = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, x.size - 2)  # last point with x <= g
    x0, x1 = x[j], x[j + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(x1 > x0, np.clip((grid - x0) / np.where(x1 > x0, x1 - x0, 1), 0, 1), 1.0)
    return t[j] + frac * (t[j + 1] - t[j])


def roc_band(y_true: ArrayLike, score: ArrayLike, groups: ArrayLike | None = None, *,
             fpr_grid: ArrayLike | None = None, n_resamples: int = 2000, level: float = 0.95,
             seed: int = 0) -> RocBand:
    """ROC curve with a pointwise patient-bootstrap band (resampling patients, all their rows).

    Args:
        y_true: labels [N]; score: scores [N]; groups: patient id per row [N] (None: rows).
        fpr_grid: FPR values [G] (default 0, 0.01, ..., 1).
    """
    from medres.metrics.bootstrap import _resample_counts  # the same resampling as patient_bootstrap

    y, s = _checked(y_true, score)
    cluster, n_clusters = as_groups(groups, y.size)
    grid = np.linspace(0, 1, 101) if fpr_grid is None else np.asarray(fpr_grid, dtype=np.float64)
    matrices = LevelMatrices(y, s, cluster, n_clusters)
    full = _tpr_on_grid(matrices.weights(np.ones((1, n_clusters))), grid)[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**21 // max(n_clusters, 2 * matrices.n_levels + 2))
    sizes = [min(chunk, n_resamples - start) for start in range(0, n_resamples, chunk)]
    curves = np.concatenate([_tpr_on_grid(matrices.weights(_resample_counts(rng, k, n_clusters)), grid)
                             for k in sizes])
    valid = curves[np.isfinite(curves).all(axis=1)]
    alpha = (1 - level) / 2
    low, high = np.quantile(valid, [alpha, 1 - alpha], axis=0) if len(valid) else (full * np.nan,) * 2
    return RocBand(grid, full, low, high, level, n_resamples, len(valid))
