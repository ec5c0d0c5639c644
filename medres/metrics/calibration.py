"""Calibration: Brier score, expected calibration error, the reliability curve, intercept and slope.

Inputs are labels ``y_true [N]`` (0/1) and predicted probabilities of the positive class ``p [N]``.
Bins are equal-width on [0, 1], right-closed like scikit-learn's ``calibration_curve``
((lo, hi], the first bin [0, hi]); the bin count is part of every ECE result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medres.metrics._validation import as_labels, as_probabilities
from medres.metrics.classification import class_balance_reason
from medres.metrics.undefined import undefined

__all__ = ["CalibrationFit", "ReliabilityCurve", "brier", "calibration_intercept_slope", "ece",
           "reliability_curve"]

_EPS = 1e-12


def brier(y_true: ArrayLike, p: ArrayLike) -> float:
    """Mean squared difference between p and the 0/1 outcome (scikit-learn's binary form, in [0, 1];
    Metrics Reloaded's multi-class form is twice this)."""
    y = as_labels(y_true)
    q = as_probabilities(p, y.size)
    return float(np.mean((q - y) ** 2)) if y.size else undefined("Brier score undefined: no cases")


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin mean prediction and observed frequency; empty bins are NaN with count 0.

    Attributes:
        bin_edges: [B + 1] from 0 to 1.
        mean_predicted: [B] mean p in each bin.
        observed: [B] fraction of positives in each bin.
        counts: [B] cases per bin.
        n_bins: B.
        ece: sum over bins of counts / N * |observed - mean_predicted|.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    n_bins: int
    ece: float


def reliability_curve(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> ReliabilityCurve:
    """The reliability diagram's data with ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y = as_labels(y_true)
    q = as_probabilities(p, y.size)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], q, side="left")  # (lo, hi], like scikit-learn
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=q, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / np.maximum(counts, 1), np.nan)
        observed = np.where(counts > 0, sum_y / np.maximum(counts, 1), np.nan)
    gap = np.abs(sum_y - sum_p)  # = counts * |observed - mean_p|
    value = float(gap.sum() / y.size) if y.size else math.nan
    return ReliabilityCurve(edges, mean_p, observed, counts, n_bins, value)


def ece(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error of the positive class with ``n_bins`` equal-width bins.

    The value depends on ``n_bins``: report it with the count (e.g. metric name ``ece_10_bins``).
    """
    return reliability_curve(y_true, p, n_bins).ece


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of the predictions.

    Attributes:
        intercept: calibration-in-the-large, ``a`` in ``logit P(y=1) = a + logit(p)`` (logit(p) as an
            offset); 0 when the mean risk is right, > 0 when risks are underestimated.
        slope: ``b`` in ``logit P(y=1) = c + b * logit(p)``; 1 is ideal, < 1 means too extreme
            (over-fitted) predictions.
        reason: why a value is NaN (one class, separation, no convergence).
    """

    intercept: float
    slope: float
    reason: str = ""


def _log_likelihood(eta: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """Maximum-likelihood logistic regression ``y ~ x @ beta + offset`` by Newton's method with step
    halving (the likelihood is concave); None if it does not converge (e.g. separated classes)."""
    beta = np.zeros(x.shape[1])
    current = _log_likelihood(offset, y)
    for _ in range(max_iter):
        eta = x @ beta + offset
        mu = 1 / (1 + np.exp(-eta))
        hessian = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):
            candidate = _log_likelihood(x @ (beta + step) + offset, y)
            if candidate >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, candidate
        if not np.isfinite(beta).all() or np.abs(beta).max() > 1e3:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def calibration_intercept_slope(y_true: ArrayLike, p: ArrayLike) -> CalibrationFit:
    """Calibration intercept (in the large, logit(p) as offset) and slope (coefficient of logit(p)).

    Fitted by Newton's method on the logistic likelihood (a 1- and a 2-parameter problem;
    statsmodels, which would fit a GLM with an offset, is not a dependency). ``p`` is clipped to
    [1e-12, 1 - 1e-12] before the logit.
    """
    y = as_labels(y_true)
    q = np.clip(as_probabilities(p, y.size), _EPS, 1 - _EPS)
    why = class_balance_reason(y)
    if why:
        nan = undefined(f"calibration intercept and slope undefined: {why}")
        return CalibrationFit(nan, nan, why)
    x = np.log(q / (1 - q))
    yf = y.astype(np.float64)
    itl = _newton(np.ones((y.size, 1)), yf, x)
    fit = _newton(np.column_stack([np.ones(y.size), x]), yf, np.zeros(y.size))
    reasons = []
    if itl is None:
        reasons.append("intercept: the fit did not converge")
    if fit is None:
        reasons.append("slope: the fit did not converge (are the classes perfectly separated?)")
    return CalibrationFit(math.nan if itl is None else float(itl[0]),
                          math.nan if fit is None else float(fit[1]), "; ".join(reasons))
