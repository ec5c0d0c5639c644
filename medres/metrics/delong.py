"""DeLong's variance of AUROC and paired comparison of two AUROCs (DeLong et al., Biometrics 1988).

Uses the fast algorithm of Sun and Xu (IEEE Signal Processing Letters 2014): the structural
components come from midranks (ties 1/2), O(N log N) instead of O(n_pos * n_neg). Conventions follow
R's pROC: sample covariances (denominator n - 1), the Wald interval ``auc +- z * sqrt(var)`` clipped to
[0, 1], and a two-sided z test of the difference. With ``groups`` (the patient of every row) the
structural components are summed per patient and the variance is Obuchowski's clustered form
(Biometrics 1997); with one row per patient it equals DeLong's.

`auroc_score_interval` is the interval the report prints: a score-type interval (Newcombe, Stat Med
2006) that does not collapse at perfect separation, on effective sample sizes from the clustered
variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

from medres.metrics._validation import as_groups, as_labels, as_scores
from medres.metrics.classification import class_balance_reason
from medres.metrics.undefined import undefined

__all__ = ["AurocInterval", "DeLongCI", "DeLongTest", "auroc_score_interval", "delong_covariance",
           "delong_roc_ci", "delong_roc_test", "hanley_mcneil_variance"]


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
    clustered: bool = False

    @property
    def ci_method(self) -> str:
        """The interval's method as written in metric records."""
        return "DeLong Wald, Obuchowski clustered" if self.clustered else "DeLong Wald (scans as independent)"


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


def delong_covariance(y_true: ArrayLike, scores: ArrayLike, groups: ArrayLike | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs [M] and their DeLong covariance [M, M] for M score vectors ``scores [M, N]``.

    Sun & Xu 2014: with m positives and n negatives, the midranks T_z over all cases, T_x within the
    positives and T_y within the negatives give V10_i = (T_z,i - T_x,i) / n and
    V01_j = 1 - (T_z,m+j - T_y,j) / m; then S = cov(V10) / m + cov(V01) / n.

    With ``groups`` [N] (patient per row), Obuchowski 1997: per patient k the sums V10_k, V01_k and
    counts m_k, n_k give S10 = I10 / ((I10 - 1) m) sum (V10_k - m_k A)(V10_k - m_k A)',
    S01 likewise, S11 = I / (I - 1) sum (V10_k - m_k A)(V01_k - n_k A)', and
    cov = S10 / m + S01 / n + (S11 + S11') / (m n), I10 (I01) the patients with a positive (negative)
    row, I all patients. One row per patient gives DeLong's covariance.
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
    if groups is None:
        cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
        return aucs, cov
    cluster, n_clusters = as_groups(groups, y.size)
    cp, cn = cluster[y == 1], cluster[y == 0]
    mk = np.bincount(cp, minlength=n_clusters).astype(np.float64)
    nk = np.bincount(cn, minlength=n_clusters).astype(np.float64)
    present = (mk + nk) > 0
    mk, nk = mk[present], nk[present]
    d10 = np.stack([np.bincount(cp, weights=v, minlength=n_clusters)[present] for v in v10]) \
        - aucs[:, None] * mk
    d01 = np.stack([np.bincount(cn, weights=v, minlength=n_clusters)[present] for v in v01]) \
        - aucs[:, None] * nk
    i_all, i10, i01 = mk.size, int((mk > 0).sum()), int((nk > 0).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        s10 = i10 / ((i10 - 1) * m) * (d10 @ d10.T)
        s01 = i01 / ((i01 - 1) * n) * (d01 @ d01.T)
        s11 = i_all / (i_all - 1) * (d10 @ d01.T)
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def _check_level(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2))


def _class_counts(y: np.ndarray, cluster: np.ndarray | None = None) -> tuple[int, int, str]:
    """(n_pos, n_neg, reason DeLong's variance is undefined or "")."""
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    reason = class_balance_reason(y)
    if not reason and min(n_pos, n_neg) < 2:
        reason = f"DeLong's variance needs at least 2 cases of each class (n_pos={n_pos}, n_neg={n_neg})"
    if not reason and cluster is not None:
        k_pos, k_neg = np.unique(cluster[y == 1]).size, np.unique(cluster[y == 0]).size
        if min(k_pos, k_neg) < 2:
            reason = ("the clustered variance needs at least 2 patients with scans of each class "
                      f"({k_pos} with a positive scan, {k_neg} with a negative one)")
    return n_pos, n_neg, reason


def _clusters(groups: ArrayLike | None, n: int) -> np.ndarray | None:
    return None if groups is None else as_groups(groups, n)[0]


def delong_roc_ci(y_true: ArrayLike, score: ArrayLike, level: float = 0.95,
                  groups: ArrayLike | None = None) -> DeLongCI:
    """AUROC, its DeLong variance and the ``level`` Wald interval (pROC's ``ci.auc``), clipped to [0, 1].

    With ``groups`` (patient per row) the variance is Obuchowski's clustered form. At perfect
    separation the variance is 0 and this interval collapses to [1, 1]: the report prints
    `auroc_score_interval` instead.
    """
    z = _check_level(level)
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    cluster = _clusters(groups, y.size)
    n_pos, n_neg, reason = _class_counts(y, cluster)
    if reason:
        nan = undefined(f"DeLong interval undefined: {reason}")
        return DeLongCI(nan, nan, nan, nan, level, n_pos, n_neg, reason, cluster is not None)
    aucs, cov = delong_covariance(y, s[None], cluster)
    auc, var = float(aucs[0]), max(float(cov[0, 0]), 0.0)
    half = z * math.sqrt(var)
    return DeLongCI(auc, var, max(0.0, auc - half), min(1.0, auc + half), level, n_pos, n_neg,
                    clustered=cluster is not None)


def delong_roc_test(y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike,
                    level: float = 0.95, groups: ArrayLike | None = None) -> DeLongTest:
    """Paired DeLong test of two models' AUROCs on the same cases (pROC's ``roc.test(paired=TRUE)``).

    Returns both AUROCs, ``z = (auc_a - auc_b) / sqrt(var_a + var_b - 2 cov_ab)``, the two-sided
    p-value and the Wald interval of the difference; with ``groups`` the covariance is Obuchowski's
    clustered form. Two models that rank the cases identically have a difference of exactly 0 with
    variance 0: medres then gives z, p and the interval as NaN with that reason (pROC reports Z 0 and
    p 1 there).
    """
    zq = _check_level(level)
    y = as_labels(y_true)
    a = as_scores(score_a, y.size, name="score_a")
    b = as_scores(score_b, y.size, name="score_b")
    cluster = _clusters(groups, y.size)
    n_pos, n_neg, reason = _class_counts(y, cluster)
    if reason:
        nan = undefined(f"DeLong test undefined: {reason}")
        return DeLongTest(nan, nan, nan, nan, nan, nan, nan, nan, level, n_pos, n_neg, reason)
    aucs, cov = delong_covariance(y, np.stack([a, b]), cluster)
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


# --- The report's AUROC interval -------------------------------------------------------------------


def hanley_mcneil_variance(theta: float | np.ndarray, m: float, n: float) -> float | np.ndarray:
    """Hanley and McNeil's (Radiology 1982) variance of an AUROC ``theta`` from m positives, n negatives.

    ``theta (1 - theta) / (m n) * [1 + (m - 1)(1 - theta) / (2 - theta) + (n - 1) theta / (1 + theta)]``,
    i.e. Q1 = theta / (2 - theta), Q2 = 2 theta^2 / (1 + theta); m and n may be effective (non-integer).
    """
    t = np.asarray(theta, dtype=np.float64)
    return t * (1 - t) / (m * n) * (1 + (m - 1) * (1 - t) / (2 - t) + (n - 1) * t / (1 + t))


@dataclass(frozen=True)
class AurocInterval:
    """AUROC with the report's score-type interval.

    ``design_effect`` is the clustered (Obuchowski) variance over Hanley-McNeil's at the estimate,
    floored at 1; ``n_pos_effective`` / ``n_neg_effective`` the sizes the interval used.
    """

    auroc: float
    ci_low: float
    ci_high: float
    level: float
    n_pos: int
    n_neg: int
    n_pos_patients: int
    n_neg_patients: int
    design_effect: float
    n_pos_effective: float
    n_neg_effective: float
    reason: str = ""

    ci_method = "score interval, Hanley-McNeil variance on n/deff (Obuchowski patient design effect)"

    @property
    def note(self) -> str:
        """The design effect and effective sizes, for a record's note."""
        if self.reason:
            return self.reason
        return (f"design effect {self.design_effect:.2f}: effective {self.n_pos_effective:.1f} positive "
                f"and {self.n_neg_effective:.1f} negative scans ({self.n_pos_patients} and "
                f"{self.n_neg_patients} patients)")


def _fully_correlated_size(cluster: np.ndarray) -> float:
    """(sum m_k)^2 / sum m_k^2: the effective count of rows whose patients' rows are fully correlated."""
    m = np.bincount(cluster).astype(np.float64)
    return float(m.sum() ** 2 / (m**2).sum())


def auroc_score_interval(y_true: ArrayLike, score: ArrayLike, groups: ArrayLike | None = None,
                         level: float = 0.95) -> AurocInterval:
    """AUROC and a score-type interval that keeps its coverage at small n and at perfect separation.

    The interval is every theta with ``(A - theta)^2 <= z^2 V(theta)``, V the Hanley-McNeil variance
    evaluated at theta (not at the estimate, as Newcombe's score-type intervals do; a Wald interval
    collapses to [1, 1] when A = 1), on effective sizes ``m / deff`` and ``n / deff``. ``deff`` is the
    Obuchowski (1997) clustered variance over the Hanley-McNeil variance at A, floored at 1 (with one
    scan per patient: DeLong's over Hanley-McNeil's). Where the clustered variance is 0 (A = 0 or 1)
    each class counts its patients as if their scans were fully correlated, ``(sum m_k)^2 / sum m_k^2``.
    When some patient has several scans, z is replaced by Student's t on (patients of the smaller class
    - 1) degrees of freedom: the variance then comes from that many patients. Coverage by simulation:
    ``benchmarks/coverage.py`` and BENCHMARKS.md.
    """
    from scipy.optimize import brentq

    z = _check_level(level)
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    cluster = np.arange(y.size) if groups is None else as_groups(groups, y.size)[0]
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    k_pos, k_neg = np.unique(cluster[y == 1]).size, np.unique(cluster[y == 0]).size
    reason = class_balance_reason(y)
    nan = math.nan
    if reason:
        undefined(f"AUROC interval undefined: {reason}")
        return AurocInterval(nan, nan, nan, level, n_pos, n_neg, k_pos, k_neg, nan, nan, nan, reason)
    aucs, cov = delong_covariance(y, s[None], cluster if min(k_pos, k_neg) >= 2 else None)
    auc = float(aucs[0])
    var = float(cov[0, 0]) if min(k_pos, k_neg) >= 2 and min(n_pos, n_neg) >= 2 else nan
    hm = float(hanley_mcneil_variance(auc, n_pos, n_neg))
    if 0 < auc < 1 and math.isfinite(var) and var > 0 and hm > 0:
        deff = max(1.0, var / hm)
        m_eff, n_eff = n_pos / deff, n_neg / deff
    else:
        m_eff = _fully_correlated_size(cluster[y == 1])
        n_eff = _fully_correlated_size(cluster[y == 0])
        deff = math.sqrt(n_pos * n_neg / (m_eff * n_eff))

    crit = z
    if np.bincount(cluster).max() > 1 and min(k_pos, k_neg) > 1:  # a variance from k patients: t, k - 1 df
        crit = float(student_t.ppf(0.5 + level / 2, min(k_pos, k_neg) - 1))

    def excess(theta: float) -> float:
        return (auc - theta) ** 2 - crit * crit * float(hanley_mcneil_variance(theta, m_eff, n_eff))

    tiny = 1e-12
    low = 0.0 if auc <= 0 else brentq(excess, 0.0, auc - tiny if auc >= 1 else auc, xtol=1e-12)
    high = 1.0 if auc >= 1 else brentq(excess, auc + tiny if auc <= 0 else auc, 1.0, xtol=1e-12)
    return AurocInterval(auc, float(low), float(high), level, n_pos, n_neg, k_pos, k_neg, float(deff),
                         float(m_eff), float(n_eff))
