"""Patient-level (cluster) bootstrap: resample patients with replacement and keep all their rows.

Each resample is a vector of patient multiplicities ``counts [R, P]`` (drawn with a seeded
`numpy.random.Generator`), so a whole chunk of resamples is evaluated at once: AUROC and AP through
sparse patient-to-score-level maps and cumulative sums (`medres.metrics._ranking`), ratio metrics
(Brier, sensitivity, ...) as ``counts @ numerator / counts @ denominator``. Chunks bound the memory
(about 2 M floats per array), so 10,000 cases x 2,000 resamples stays well under 100 MB.

Resamples in which a metric is undefined (e.g. no positive patient drawn) are dropped and counted
(``n_valid``); the reason says how many. BCa takes its acceleration from the leave-one-patient-out
jackknife (Efron 1987; the same formulas as `scipy.stats.bootstrap`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr, ndtri

from medres.errors import ConfigError, DataError
from medres.metrics._ranking import auroc_from_levels, average_precision_from_levels, ranking_matrices
from medres.metrics._validation import as_groups, as_labels, as_probabilities, as_scores
from medres.metrics.classification import class_balance_reason

__all__ = ["VECTORISED_METRICS", "BootstrapResult", "paired_bootstrap_ci", "patient_bootstrap",
           "patient_bootstrap_ci"]

VECTORISED_METRICS = ("auroc", "average_precision", "brier", "mean", "sensitivity", "specificity",
                      "ppv", "npv")
_CHUNK_ELEMENTS = 2**21

Metric = str | Callable[..., float]


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with its patient-bootstrap interval.

    ``estimate`` is the metric on the full sample (for a paired bootstrap: metric(a) - metric(b));
    ``standard_error`` is the SD of the valid resamples; ``n_valid`` of ``n_resamples`` were defined.
    """

    metric: str
    estimate: float
    ci_low: float
    ci_high: float
    method: str
    level: float
    n_resamples: int
    n_valid: int
    standard_error: float
    n_clusters: int
    seed: int
    reason: str = ""

    @property
    def ci_method(self) -> str:
        """The interval's method as written in metric records."""
        return f"patient bootstrap {self.method} ({self.n_resamples} resamples)"


class _Statistic:
    """A metric evaluated for many resamples at once: ``__call__(counts [R, P]) -> values [R]``."""

    def __init__(self, metric: Metric, y: np.ndarray | None, score: np.ndarray, cluster: np.ndarray,
                 n_clusters: int, threshold: float | None) -> None:
        self.metric, self.y, self.score, self.cluster = metric, y, score, cluster
        self.n_levels = 1
        if callable(metric):
            return
        if metric not in VECTORISED_METRICS:
            raise ConfigError(f"unknown bootstrap metric {metric!r}", field="metric",
                              hint=f"one of {', '.join(VECTORISED_METRICS)}, or a callable "
                                   "metric(y_true, score, sample_weight) -> float")
        if metric in ("auroc", "average_precision"):
            self.levels = ranking_matrices(metric, y, score, cluster, n_clusters)
            self.n_levels = self.levels.n_levels
            return
        if metric in ("sensitivity", "specificity", "ppv", "npv"):
            if threshold is None or not math.isfinite(threshold):
                raise ConfigError(f"bootstrap of {metric} needs a finite threshold", field="threshold",
                                  hint="choose it on validation data with choose_threshold")
            called = score >= threshold
            num, den = {"sensitivity": ((y == 1) & called, y == 1),
                        "specificity": ((y == 0) & ~called, y == 0),
                        "ppv": ((y == 1) & called, called),
                        "npv": ((y == 0) & ~called, ~called)}[metric]
        elif metric == "brier":
            num, den = (score - y) ** 2, np.ones_like(score)
        else:  # mean
            num, den = score, np.ones_like(score)
        self.num = np.bincount(cluster, weights=num.astype(np.float64), minlength=n_clusters)
        self.den = np.bincount(cluster, weights=den.astype(np.float64), minlength=n_clusters)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        if callable(self.metric):
            return np.array([self._call_one(row[self.cluster]) for row in counts])
        if self.metric in ("auroc", "average_precision"):
            kernel = auroc_from_levels if self.metric == "auroc" else average_precision_from_levels
            return kernel(self.levels.weights(counts))
        num, den = counts @ self.num, counts @ self.den
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)

    def _call_one(self, weights: np.ndarray) -> float:
        try:
            return float(self.metric(self.y, self.score, sample_weight=weights))
        except ValueError:  # e.g. scikit-learn's "Only one class present"
            return math.nan


def _chunk_size(n_clusters: int, n_levels: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_clusters, n_levels, 1))


def _resample_counts(rng: np.random.Generator, n_rows: int, n_clusters: int) -> np.ndarray:
    """Patient multiplicities [n_rows, P]: each row draws P patients with replacement."""
    draws = rng.integers(0, n_clusters, size=(n_rows, n_clusters))
    draws += (np.arange(n_rows) * n_clusters)[:, None]
    return np.bincount(draws.ravel(), minlength=n_rows * n_clusters).reshape(n_rows, n_clusters)


def _run(stats: list[_Statistic], n_clusters: int, n_resamples: int, seed: int) -> np.ndarray:
    """Values [len(stats), R] of every statistic on the same resamples."""
    rng = np.random.default_rng(seed)
    chunk = _chunk_size(n_clusters, max(s.n_levels for s in stats))
    out = np.empty((len(stats), n_resamples))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        counts = _resample_counts(rng, stop - start, n_clusters)
        for i, stat in enumerate(stats):
            out[i, start:stop] = stat(counts)
    return out


def _jackknife(stats: list[_Statistic], n_clusters: int) -> np.ndarray:
    """Leave-one-patient-out values [len(stats), P]."""
    chunk = _chunk_size(n_clusters, max(s.n_levels for s in stats))
    out = np.empty((len(stats), n_clusters))
    for start in range(0, n_clusters, chunk):
        stop = min(start + chunk, n_clusters)
        counts = np.ones((stop - start, n_clusters))
        counts[np.arange(stop - start), np.arange(start, stop)] = 0
        for i, stat in enumerate(stats):
            out[i, start:stop] = stat(counts)
    return out


def _prepare(metric: Metric, y_true: ArrayLike | None, score: ArrayLike, groups: ArrayLike | None,
             threshold: float | None) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, int]:
    if y_true is None:
        if metric != "mean":
            raise DataError(f"bootstrap of {metric!r} needs y_true", hint="pass the labels")
        y = None
        s = as_scores(score, np.asarray(score).shape[0] if np.ndim(score) == 1 else -1)
    else:
        y = as_labels(y_true)
        s = (as_probabilities(score, y.size, name="score") if metric == "brier"
             else as_scores(score, y.size))
    cluster, n_clusters = as_groups(groups, s.size)
    if n_clusters < 2:
        raise DataError(f"a bootstrap needs at least 2 patients, got {n_clusters}",
                        hint="report the point estimate without an interval")
    return y, s, cluster, n_clusters


def patient_bootstrap(metric: Metric, y_true: ArrayLike | None, score: ArrayLike,
                      groups: ArrayLike | None = None, *, n_resamples: int = 2000, seed: int = 0,
                      threshold: float | None = None) -> np.ndarray:
    """The bootstrap distribution [R] of ``metric`` over patient resamples (NaN where undefined).

    Args:
        metric: one of `VECTORISED_METRICS` (``"mean"`` averages ``score`` over rows, e.g. per-case
            Dice, and takes ``y_true=None``), or a callable ``metric(y_true, score, sample_weight)``
            such as scikit-learn's, then called once per resample with row weights = multiplicities.
        y_true: labels [N] (0/1).
        score: scores [N]; probabilities for ``"brier"``.
        groups: patient id per row [N]; ``None`` treats every row as its own patient.
        n_resamples: R.
        seed: seed of the `numpy.random.Generator`.
        threshold: for sensitivity, specificity, ppv, npv (``score >= threshold`` is positive).
    """
    y, s, cluster, n_clusters = _prepare(metric, y_true, score, groups, threshold)
    stat = _Statistic(metric, y, s, cluster, n_clusters, threshold)
    return _run([stat], n_clusters, n_resamples, seed)[0]


def _interval(name: str, estimate: float, dist: np.ndarray, jack: Callable[[], np.ndarray], *,
              method: str, level: float, n_resamples: int, n_clusters: int, seed: int) -> BootstrapResult:
    valid = dist[np.isfinite(dist)]
    nan = math.nan
    base = dict(metric=name, estimate=estimate, method=method, level=level, n_resamples=n_resamples,
                n_valid=int(valid.size), n_clusters=n_clusters, seed=seed)
    if valid.size < 2:
        return BootstrapResult(ci_low=nan, ci_high=nan, standard_error=nan,
                               reason="fewer than 2 resamples had a defined metric", **base)
    reason = ""
    if valid.size < n_resamples:
        reason = (f"{n_resamples - valid.size} of {n_resamples} resamples had an undefined metric "
                  "(e.g. no positive patient drawn) and were dropped")
    alpha = (1 - level) / 2
    se = float(valid.std(ddof=1))
    if method == "percentile":
        lo, hi = np.quantile(valid, [alpha, 1 - alpha])
        return BootstrapResult(ci_low=float(lo), ci_high=float(hi), standard_error=se, reason=reason, **base)
    # BCa: bias correction from the share of resamples below the estimate (ties 1/2), acceleration
    # from the leave-one-patient-out jackknife.
    share = (np.sum(valid < estimate) + np.sum(valid <= estimate)) / (2 * valid.size)
    theta = jack()
    if not (0 < share < 1) or not np.isfinite(theta).all():
        why = ("the bootstrap distribution lies on one side of the estimate" if not 0 < share < 1
               else "a leave-one-patient-out jackknife value is undefined (too few positive patients)")
        return BootstrapResult(ci_low=nan, ci_high=nan, standard_error=se,
                               reason="; ".join(x for x in (reason, f"BCa undefined: {why}") if x), **base)
    z0 = ndtri(share)
    d = theta.mean() - theta
    denom = 6 * np.sum(d**2) ** 1.5
    accel = float(np.sum(d**3) / denom) if denom > 0 else 0.0
    z = ndtri(np.array([alpha, 1 - alpha]))
    adjusted = ndtr(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    lo, hi = np.quantile(valid, adjusted)
    return BootstrapResult(ci_low=float(lo), ci_high=float(hi), standard_error=se, reason=reason, **base)


def _undefined(name: str, y: np.ndarray | None, method: str, level: float, n_resamples: int,
               n_clusters: int, seed: int) -> BootstrapResult:
    why = class_balance_reason(y) if y is not None else ""
    reason = f"{name} undefined on the full sample" + (f": {why}" if why else "")
    nan = math.nan
    return BootstrapResult(metric=name, estimate=nan, ci_low=nan, ci_high=nan, method=method, level=level,
                           n_resamples=n_resamples, n_valid=0, standard_error=nan, n_clusters=n_clusters,
                           seed=seed, reason=reason)


def _check(method: str, level: float, n_resamples: int) -> None:
    if method not in ("percentile", "bca"):
        raise ConfigError(f"unknown bootstrap method {method!r}", field="method", hint="percentile or bca")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}", field="level")
    if n_resamples < 2:
        raise ConfigError(f"n_resamples must be at least 2, got {n_resamples}", field="n_resamples")


def _name(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")


def patient_bootstrap_ci(metric: Metric, y_true: ArrayLike | None, score: ArrayLike,
                         groups: ArrayLike | None = None, *, n_resamples: int = 2000, level: float = 0.95,
                         method: Literal["percentile", "bca"] = "percentile", seed: int = 0,
                         threshold: float | None = None) -> BootstrapResult:
    """Point estimate and patient-bootstrap interval of ``metric`` (arguments as `patient_bootstrap`)."""
    _check(method, level, n_resamples)
    y, s, cluster, n_clusters = _prepare(metric, y_true, score, groups, threshold)
    stat = _Statistic(metric, y, s, cluster, n_clusters, threshold)
    estimate = float(stat(np.ones((1, n_clusters)))[0])
    if not math.isfinite(estimate):
        return _undefined(_name(metric), y, method, level, n_resamples, n_clusters, seed)
    dist = _run([stat], n_clusters, n_resamples, seed)[0]
    return _interval(_name(metric), estimate, dist, lambda: _jackknife([stat], n_clusters)[0],
                     method=method, level=level, n_resamples=n_resamples, n_clusters=n_clusters, seed=seed)


def paired_bootstrap_ci(metric: Metric, y_true: ArrayLike | None, score_a: ArrayLike, score_b: ArrayLike,
                        groups: ArrayLike | None = None, *, n_resamples: int = 2000, level: float = 0.95,
                        method: Literal["percentile", "bca"] = "percentile", seed: int = 0,
                        threshold: float | None = None) -> BootstrapResult:
    """Interval of metric(a) - metric(b) for two models on the same cases and the same resamples.

    The same patient multiplicities are applied to both models in every resample, so the correlation
    between the models (they see the same hard and easy patients) is kept.
    """
    _check(method, level, n_resamples)
    y, a, cluster, n_clusters = _prepare(metric, y_true, score_a, groups, threshold)
    _, b, _, _ = _prepare(metric, y_true, score_b, groups, threshold)
    stats = [_Statistic(metric, y, a, cluster, n_clusters, threshold),
             _Statistic(metric, y, b, cluster, n_clusters, threshold)]
    full = np.ones((1, n_clusters))
    estimate = float(stats[0](full)[0] - stats[1](full)[0])
    if not math.isfinite(estimate):
        return _undefined(f"{_name(metric)} difference", y, method, level, n_resamples, n_clusters, seed)
    both = _run(stats, n_clusters, n_resamples, seed)

    def jack() -> np.ndarray:
        j = _jackknife(stats, n_clusters)
        return j[0] - j[1]

    return _interval(f"{_name(metric)} difference", estimate, both[0] - both[1], jack, method=method,
                     level=level, n_resamples=n_resamples, n_clusters=n_clusters, seed=seed)
