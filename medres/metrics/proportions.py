"""Confidence intervals for a proportion (sensitivity, specificity, PPV, NPV, prevalence as k of n).

`clustered_proportion_interval` is what the report prints: an interval for proportions that keeps its
coverage at small n and at 0/n and n/n, computed on the effective sample size ``n / deff`` so that
several correlated scans of one patient count for less than as many patients (Korn and Graubard,
Survey Methodology 1998; Dean and Pagano, J Surv Stat Methodol 2015). The design effect ``deff`` is
the ratio-estimator (cluster) variance of the proportion over its binomial variance, floored at 1; at
0/n and n/n, where both variances are 0, it is the design effect of fully correlated scans,
``sum(m_i^2) / sum(m_i)`` (each patient counts once). The interval itself is statsmodels'
``proportion_confint`` (Clopper-Pearson by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from medres.metrics._validation import as_groups, as_labels

__all__ = ["PROPORTION_METHODS", "ProportionInterval", "clustered_proportion_interval", "design_effect",
           "effective_size_interval", "wilson_interval"]

#: statsmodels ``proportion_confint`` methods offered, and their names in records.
PROPORTION_METHODS = {"beta": "Clopper-Pearson", "wilson": "Wilson", "jeffreys": "Jeffreys"}


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (no continuity correction).

    Same values as ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; written out because
    binomtest also runs an exact test we do not need. It treats the n cases as independent: with
    several scans per patient use `clustered_proportion_interval`. ``n == 0`` gives (NaN, NaN).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    z2 = z * z
    p = successes / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def design_effect(success: np.ndarray, cluster: np.ndarray, n_clusters: int) -> float:
    """Design effect of the proportion ``mean(success)`` over patient clusters (>= 1).

    Args:
        success: 0/1 per row [N]; cluster: patient index per row [N] in 0..P-1; n_clusters: P.

    The ratio-estimator variance ``k / (k - 1) * sum_i (a_i - p m_i)^2 / n^2`` (a_i successes and m_i
    rows of patient i, k patients with rows) over the binomial ``p (1 - p) / n``; 1 when every patient
    has one row; at p = 0 or 1 the fully correlated value ``sum(m_i^2) / n``.
    """
    m = np.bincount(cluster, minlength=n_clusters).astype(np.float64)
    m = m[m > 0]
    n = float(m.sum())
    if n == 0 or m.max() == 1:
        return 1.0
    a = np.bincount(cluster, weights=success.astype(np.float64), minlength=n_clusters)
    a = a[np.bincount(cluster, minlength=n_clusters) > 0]
    p = a.sum() / n
    full = float((m**2).sum() / n)
    if p <= 0 or p >= 1:
        return full
    k = m.size
    var_cluster = k / (k - 1) * float(((a - p * m) ** 2).sum()) / n**2
    return float(max(1.0, var_cluster / (p * (1 - p) / n)))


@dataclass(frozen=True)
class ProportionInterval:
    """A proportion with its clustered interval.

    ``n_effective = n / design_effect``; ``reason`` says why the interval is NaN (an empty denominator).
    """

    estimate: float
    ci_low: float
    ci_high: float
    successes: int
    n: int
    n_clusters: int
    design_effect: float
    n_effective: float
    method: str
    level: float
    reason: str = ""

    @property
    def ci_method(self) -> str:
        """The interval's method as written in metric records."""
        return f"{PROPORTION_METHODS[self.method]} on n/deff (patient design effect)"

    @property
    def note(self) -> str:
        """The design effect and effective sample size, for a record's note."""
        if self.reason:
            return self.reason
        return (f"design effect {self.design_effect:.2f} from {self.n_clusters} patients: "
                f"effective n {self.n_effective:.1f} of {self.n} scans")


def clustered_proportion_interval(success: ArrayLike, groups: ArrayLike | None = None, level: float = 0.95,
                                  method: str = "beta") -> ProportionInterval:
    """``mean(success)`` over the rows of the denominator, with an interval on the effective sample size.

    Args:
        success: 0/1 per row of the denominator [N] (e.g. for sensitivity: called positive, one entry
            per positive scan).
        groups: patient id per row [N]; ``None``: every row its own patient (then the interval is the
            plain ``method`` interval of k of N).
        level: confidence level.
        method: ``"beta"`` (Clopper-Pearson), ``"wilson"`` or ``"jeffreys"`` (statsmodels'
            ``proportion_confint``).

    The effective counts ``k / deff`` of ``N / deff`` are generally not whole numbers; the three
    intervals are defined for them (beta quantiles, score equation). Coverage by simulation:
    ``benchmarks/coverage.py`` and BENCHMARKS.md.
    """
    from statsmodels.stats.proportion import proportion_confint

    if method not in PROPORTION_METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(PROPORTION_METHODS)}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    s = as_labels(success, name="success")
    cluster, n_clusters = as_groups(groups, s.size)
    k, n = int(s.sum()), int(s.size)
    if n == 0:
        nan = math.nan
        return ProportionInterval(nan, nan, nan, 0, 0, 0, nan, 0.0, method, level,
                                  reason="empty denominator: no interval")
    n_clusters = int(np.unique(cluster).size)
    deff = design_effect(s, cluster, int(cluster.max()) + 1)
    n_eff = n / deff
    p = k / n
    low, high = proportion_confint(p * n_eff, n_eff, alpha=1 - level, method=method)
    low = 0.0 if k == 0 else float(min(max(low, 0.0), p))
    high = 1.0 if k == n else float(max(min(high, 1.0), p))
    return ProportionInterval(p, low, high, k, n, n_clusters, deff, n_eff, method, level)


def effective_size_interval(estimate: float, n: int, variance: float, cluster_sizes: ArrayLike,
                            level: float = 0.95, method: str = "beta") -> tuple[float, float, float]:
    """A binomial-type interval for a statistic in [0, 1] with a known variance: ``(low, high, n_eff)``.

    The statistic is treated as a proportion of ``n_eff = estimate (1 - estimate) / variance`` trials,
    at most ``n`` (design effect >= 1; Korn and Graubard's effective sample size). Where the variance
    or ``estimate (1 - estimate)`` is 0 (e.g. a patient bootstrap of AP at perfect separation), n_eff
    is the count of ``cluster_sizes`` fully correlated, ``(sum m)^2 / sum m^2``, so the interval never
    has zero width.
    """
    from statsmodels.stats.proportion import proportion_confint

    if not (math.isfinite(estimate) and 0 <= estimate <= 1) or n < 1:
        return math.nan, math.nan, math.nan
    m = np.asarray(cluster_sizes, dtype=np.float64)
    m = m[m > 0]
    spread = estimate * (1 - estimate)
    if spread > 0 and math.isfinite(variance) and variance > 0:
        n_eff = min(float(n), spread / variance)
    else:
        n_eff = float(m.sum() ** 2 / (m**2).sum()) if m.size else float(n)
    low, high = proportion_confint(estimate * n_eff, n_eff, alpha=1 - level, method=method)
    low = 0.0 if estimate == 0 else float(min(max(low, 0.0), estimate))
    high = 1.0 if estimate == 1 else float(max(min(high, 1.0), estimate))
    return low, high, n_eff
