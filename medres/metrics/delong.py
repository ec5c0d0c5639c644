"""DeLong's variance of AUROC and paired comparison of two AUROCs (DeLong et al., Biometrics 1988).

Uses the fast algorithm of Sun and Xu (IEEE Signal Processing Letters 2014): the structural
components come from midranks (ties 1/2), O(N log N) instead of O(n_pos * n_neg). Conventions follow
R's pROC: sample covariances (denominator n - 1), the Wald interval ``auc +- z * sqrt(var)`` clipped to
[0, 1], and a two-sided z test of the difference. Rows are treated as independent: with several
scans per patient prefer `patient_bootstrap_ci`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata

from medres.metrics._validation import as_labels, as_scores
from medres.metrics.classification import class_balance_reason
from medres.metrics.undefined import undefined

__all__ = ["DeLongCI", "DeLongTest", "delong_covariance", "delong_roc_ci", "delong_roc_test"]


@dataclass(frozen=True)
class DeLongCI:
    """AUROC with DeLong's variance and Wald interval; NaNs and ``reason`` when undefined."""

    auroc: float
    variance: float
    ci_low: float
    ci_high: float
    level: float
    n_pos: int
    n_neg: int
    reason: str = ""


@dataclass(frozen=True)
class DeLongTest:
    """Paired DeLong test of AUROC(a) - AUROC(b) on the same cases (two-sided)."""

    auroc_a: float
    auroc_b: float
    difference: float
    variance: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    level: float
    n_pos: int
    n_neg: int
    reason: str = ""


def delong_covariance(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs [M] and their DeLong covariance [M, M] for M score vectors ``scores [M, N]``.

    Sun & Xu 2014: with m positives and n negatives, the midranks T_z over all cases, T_x within the
    positives and T_y within the negatives give V10_i = (T_z,i - T_x,i) / n and
    V01_j = 1 - (T_z,m+j - T_y,j) / m; then S = cov(V10) / m + cov(V01) / n.
    """
    y = as_labels(y_true)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    for row in s:
        as_scores(row, y.size)
    pos, neg = s[:, y == 1], s[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2))


def _class_counts(y: np.ndarray) -> tuple[int, int, str]:
    """(n_pos, n_neg, reason DeLong's variance is undefined or "")."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    reason = class_balance_reason(y)
    if not reason and min(n_pos, n_neg) < 2:
        reason = f"DeLong's variance needs at least 2 cases of each class (n_pos={n_pos}, n_neg={n_neg})"
    return n_pos, n_neg, reason


def delong_roc_ci(y_true: ArrayLike, score: ArrayLike, level: float = 0.95) -> DeLongCI:
    """AUROC, its DeLong variance and the ``level`` confidence interval (pROC's ``ci.auc``)."""
    z = _check_level(level)
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    n_pos, n_neg, reason = _class_counts(y)
    if reason:
        nan = undefined(f"DeLong interval undefined: {reason}")
        return DeLongCI(nan, nan, nan, nan, level, n_pos, n_neg, reason)
    aucs, cov = delong_covariance(y, s[None])
    auc, var = float(aucs[0]), float(cov[0, 0])
    half = z * math.sqrt(var)
    return DeLongCI(auc, var, max(0.0, auc - half), min(1.0, auc + half), level, n_pos, n_neg)


def delong_roc_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike,
                    level: float = 0.95) -> DeLongTest:
    """Paired DeLong test of two models' AUROCs on the same cases (pROC's ``roc.test(paired=TRUE)``).

    Returns both AUROCs, ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``, the two-sided
    p-value and the Wald interval of the difference. Identical rankings give var 0: z and p are NaN.
    """
    zq = _check_level(level)
    y = as_labels(y_true)
    a = as_scores(score_a, y.size, name="score_a")
    b = as_scores(score_b, y.size, name="score_b")
    n_pos, n_neg, reason = _class_counts(y)
    if reason:
        nan = undefined(f"DeLong test undefined: {reason}")
        return DeLongTest(nan, nan, nan, nan, nan, nan, nan, nan, level, n_pos, n_neg, reason)
    aucs, cov = delong_covariance(y, np.stack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        reason = "the two models rank the cases identically (variance of the difference is 0)"
        nan = undefined(f"DeLong test undefined: {reason}")
        return DeLongTest(float(aucs[0]), float(aucs[1]), diff, 0.0, nan, nan, nan, nan, level,
                          n_pos, n_neg, reason)
    sd = math.sqrt(var)
    z = diff / sd
    p = float(2 * norm.sf(abs(z)))
    return DeLongTest(float(aucs[0]), float(aucs[1]), diff, var, z, p, diff - zq * sd, diff + zq * sd,
                      level, n_pos, n_neg)
