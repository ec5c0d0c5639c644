"""Statistics for regression targets (e.g. cardiothoracic ratio, nodule diameter in mm) against the truth.

Inputs are the reference values ``y_true [N]`` and the predictions ``y_pred [N]`` (finite floats), with
``groups [N]`` the patient of every case when a patient has several scans. Errors are ``y_pred - y_true``
(a positive bias: the model over-estimates).

- errors and agreement: `mae`, `rmse`, `r2` (scikit-learn's), `pearson_r`, `concordance_correlation`
  (Lin 1989), each with a patient bootstrap (`regression_bootstrap`, all metrics on the same
  resamples, vectorised over moment sums; at 20-50 patients it under-covers, see BENCHMARKS.md);
- `pearson_interval` (Fisher z) and `ccc_interval` (Fisher z of the CCC with Lin's asymptotic
  variance); with several scans per patient the variance is multiplied by a design effect (the
  leave-one-patient-out over the leave-one-scan-out jackknife variance) and the critical value is
  Student's t on patients - 1;
- `bland_altman`: bias, limits of agreement ``bias +- k SD`` and their intervals, exact by default
  (Carkeet 2015: the noncentral t) or Bland and Altman's approximate SE ``sqrt(3 s^2 / n)``; clustered
  cases count ``n / deff`` (the design effect of the mean difference), with ``n / deff - 1`` df;
- `binned_calibration`: mean predicted and observed per predicted-quantile bin, and the OLS intercept and
  slope of observed on predicted with patient-clustered standard errors (statsmodels);
- `interval_coverage`: the share of cases with ``lo <= y <= hi`` and its clustered Clopper-Pearson interval;
- `regression_summary` / `regression_records`: all of it as long-format records (``head`` = task name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import nct, norm
from scipy.stats import t as student_t

from medres.errors import DataError
from medres.metrics._validation import as_groups
from medres.metrics.bootstrap import BootstrapResult, _check, _interval, _jackknife, _run
from medres.metrics.proportions import ProportionInterval, clustered_proportion_interval
from medres.metrics.records import MetricRecord
from medres.metrics.undefined import undefined

__all__ = ["REGRESSION_METRICS", "BlandAltman", "Estimate", "IntervalCoverage", "RegressionCalibration",
           "RegressionSummary", "bland_altman", "binned_calibration", "ccc_interval",
           "concordance_correlation", "interval_coverage", "lin_ccc_variance", "mae", "pearson_interval",
           "pearson_r", "r2", "regression_bootstrap", "regression_records", "regression_summary", "rmse"]

#: metrics `regression_bootstrap` evaluates on every resample
REGRESSION_METRICS = ("mae", "rmse", "r2", "pearson_r", "ccc", "bias", "loa_lower", "loa_upper")


@dataclass(frozen=True)
class Estimate:
    """A value with its interval; ``note`` says why it is NaN or how the interval was built."""

    metric: str
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_method: str = ""
    level: float = 0.95
    note: str = ""


# --- inputs ------------------------------------------------------------------------------------------


def _as_values(values: ArrayLike, n: int | None, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or (n is not None and v.shape[0] != n):
        want = "[N]" if n is None else f"[{n}] like y_true"
        raise DataError(f"{name} must have shape {want}, got {v.shape}", hint="pass one value per case")
    if not np.isfinite(v).all():
        rows = np.flatnonzero(~np.isfinite(v))[:5].tolist()
        raise DataError(f"{name} holds NaN or infinite values (rows {rows})",
                        hint="drop cases without a reference value or prediction before computing metrics")
    return v


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _as_values(y_true, None, "y_true")
    return y, _as_values(y_pred, y.size, "y_pred")


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


# --- moment sums: point estimates and the vectorised bootstrap ---------------------------------------

# per-case columns: 1, y, p, y^2, p^2, y p, |e|, e^2 (y and p shifted by mean(y); e = p - y)
_N, _SY, _SP, _SYY, _SPP, _SYP, _SABS, _SEE = range(8)


def _case_moments(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    shift = y.mean() if y.size else 0.0
    yc, pc = y - shift, p - shift
    e = p - y
    return np.stack([np.ones_like(y), yc, pc, yc * yc, pc * pc, yc * pc, np.abs(e), e * e], axis=1)


def _from_moments(m: np.ndarray, k: float = 1.96) -> dict[str, np.ndarray]:
    """Every metric of `REGRESSION_METRICS` from weighted moment sums ``m [R, 8]`` (NaN where undefined)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = m[:, _N]
        my, mp = m[:, _SY] / n, m[:, _SP] / n
        vy = np.maximum(m[:, _SYY] / n - my * my, 0.0)
        vp = np.maximum(m[:, _SPP] / n - mp * mp, 0.0)
        cyp = m[:, _SYP] / n - my * mp
        bias = mp - my
        var_d = np.maximum(m[:, _SEE] - n * bias * bias, 0.0) / (n - 1)
        sd = np.sqrt(np.where(n > 1, var_d, np.nan))
        out = {
            "mae": m[:, _SABS] / n,
            "rmse": np.sqrt(m[:, _SEE] / n),
            "r2": np.where(vy > 0, 1 - m[:, _SEE] / (n * vy), np.nan),
            "pearson_r": np.where((vy > 0) & (vp > 0), cyp / np.sqrt(vy * vp), np.nan),
            "ccc": np.where(vy + vp + bias * bias > 0, 2 * cyp / (vy + vp + bias * bias), np.nan),
            "bias": bias,
            "loa_lower": bias - k * sd,
            "loa_upper": bias + k * sd,
        }
    return {name: np.where(n > 0, v, np.nan) for name, v in out.items()}


class _MomentStatistic:
    """One regression metric for many patient resamples: ``__call__(counts [R, P]) -> values [R]``."""

    n_levels = 1

    def __init__(self, metric: str, patient_moments: np.ndarray, k: float) -> None:
        self.metric, self.moments, self.k = metric, patient_moments, k

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        return _from_moments(counts @ self.moments, self.k)[self.metric]


def _patient_moments(y: np.ndarray, p: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    per_case = _case_moments(y, p)
    return np.stack([np.bincount(cluster, weights=col, minlength=n_clusters) for col in per_case.T], axis=1)


def _point(metric: str, y_true: ArrayLike, y_pred: ArrayLike) -> float:
    y, p = _pair(y_true, y_pred)
    if y.size == 0:
        return undefined(f"{metric} undefined: no cases")
    value = float(_from_moments(_case_moments(y, p).sum(axis=0)[None])[metric][0])
    if not math.isfinite(value):
        return undefined(f"{metric} undefined: y_true or y_pred is constant")
    return value


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error (scikit-learn's ``mean_absolute_error``)."""
    return _point("mae", y_true, y_pred)


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error."""
    return _point("rmse", y_true, y_pred)


def r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """``1 - SS_res / SS_tot`` (scikit-learn's ``r2_score``); NaN if y_true is constant."""
    return _point("r2", y_true, y_pred)


def pearson_r(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson's correlation of the predictions with the truth; NaN if either is constant."""
    return _point("pearson_r", y_true, y_pred)


def concordance_correlation(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Lin's concordance correlation ``2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)`` (moments over n)."""
    return _point("ccc", y_true, y_pred)


# --- Fisher-z intervals --------------------------------------------------------------------------------


def _clustered(cluster: np.ndarray, n_clusters: int) -> bool:
    return bool(np.bincount(cluster, minlength=n_clusters).max() > 1)


def _jackknife_variance(values: np.ndarray) -> float:
    ok = values[np.isfinite(values)]
    if ok.size < 2:
        return math.nan
    return float((ok.size - 1) / ok.size * np.sum((ok - ok.mean()) ** 2))


def _jackknife_z(metric: str, y: np.ndarray, p: np.ndarray, cluster: np.ndarray, n_clusters: int) -> float:
    """Leave-one-cluster-out jackknife variance of atanh(metric)."""
    moments = _patient_moments(y, p, cluster, n_clusters)
    loo = _from_moments(moments.sum(axis=0)[None] - moments)[metric]
    with np.errstate(invalid="ignore", divide="ignore"):
        return _jackknife_variance(np.arctanh(np.clip(loo, -1.0, 1.0)))


def _fisher_z(metric: str, value: float, var_z: float, y: np.ndarray, p: np.ndarray,
              groups: ArrayLike | None, level: float, method: str) -> Estimate:
    """``tanh(atanh(value) +- crit sqrt(var_z * deff))``; deff and t on patients - 1 for clustered cases.

    The design effect is the leave-one-patient-out over the leave-one-scan-out jackknife variance of
    atanh(value), at least 1: both share the sample's quirks, so their ratio is steadier than either
    against the asymptotic variance.
    """
    cluster, n_clusters = as_groups(groups, y.size)
    z = math.atanh(value)
    crit, note = float(norm.ppf(0.5 + level / 2)), ""
    if _clustered(cluster, n_clusters):
        by_patient = _jackknife_z(metric, y, p, cluster, n_clusters)
        by_scan = _jackknife_z(metric, y, p, np.arange(y.size), y.size)
        ratio = by_patient / by_scan if by_scan > 0 else math.nan
        deff = max(1.0, ratio) if math.isfinite(ratio) else 1.0
        var_z *= deff
        crit = float(student_t.ppf(0.5 + level / 2, n_clusters - 1))
        method += f", x patient design effect {deff:.2f} (jackknife), t on {n_clusters - 1} df"
        note = f"{n_clusters} patients, {y.size} cases"
    half = crit * math.sqrt(var_z)
    return Estimate(metric, value, math.tanh(z - half), math.tanh(z + half), method, level, note)


def _undefined_estimate(metric: str, reason: str, level: float) -> Estimate:
    undefined(f"{metric} interval undefined: {reason}")
    return Estimate(metric, math.nan, level=level, note=reason)


def pearson_interval(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None,
                     level: float = 0.95) -> Estimate:
    """Pearson's r with the Fisher-z interval ``tanh(atanh r +- z / sqrt(n - 3))``.

    With one case per patient this is ``scipy.stats.pearsonr(...).confidence_interval()``; with several
    scans per patient the variance of atanh r is multiplied by a design effect (patient over scan
    jackknife variance, at least 1) and the critical value is t on patients - 1.
    """
    _check_level(level)
    y, p = _pair(y_true, y_pred)
    if y.size < 4:
        return _undefined_estimate("pearson_r", f"the Fisher-z interval needs at least 4 cases, got {y.size}",
                                   level)
    r = float(_from_moments(_case_moments(y, p).sum(axis=0)[None])["pearson_r"][0])
    if not math.isfinite(r):
        return _undefined_estimate("pearson_r", "y_true or y_pred is constant", level)
    if abs(r) >= 1:
        return Estimate("pearson_r", r, r, r, "Fisher z", level, "|r| = 1: the interval is degenerate")
    return _fisher_z("pearson_r", r, 1 / (y.size - 3), y, p, groups, level, "Fisher z")


def lin_ccc_variance(ccc: float, r: float, u: float, n: int) -> float:
    """Lin's (1989; corrected 2000) asymptotic variance of ``atanh(ccc)``.

    ``u = (mean_p - mean_y) / (s_y s_p)^(1/2)`` with moments over n; the variance of the CCC itself is
    ``[(1 - r^2) c^2 (1 - c^2) / r^2 + 2 c^3 (1 - c) u^2 / r - c^4 u^4 / (2 r^2)] / (n - 2)``, divided by
    ``(1 - c^2)^2`` on the z scale (the form of epiR's ``epi.ccc`` and Stata's ``concord``).
    """
    c = ccc
    var_c = ((1 - r * r) * c * c * (1 - c * c) / (r * r) + 2 * c**3 * (1 - c) * u * u / r
             - c**4 * u**4 / (2 * r * r)) / (n - 2)
    return var_c / (1 - c * c) ** 2


def ccc_interval(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None,
                 level: float = 0.95) -> Estimate:
    """Lin's concordance correlation with the Fisher-z interval from Lin's asymptotic variance.

    With several scans per patient the variance is multiplied by the jackknife design effect and the
    critical value is t on patients - 1 (as `pearson_interval`). Coverage by simulation:
    ``benchmarks/coverage_regression.py`` and BENCHMARKS.md.
    """
    _check_level(level)
    y, p = _pair(y_true, y_pred)
    if y.size < 3:
        return _undefined_estimate("ccc", f"the interval needs at least 3 cases, got {y.size}", level)
    vals = _from_moments(_case_moments(y, p).sum(axis=0)[None])
    c, r = float(vals["ccc"][0]), float(vals["pearson_r"][0])
    if not (math.isfinite(c) and math.isfinite(r)) or r == 0:
        return _undefined_estimate("ccc", "y_true or y_pred is constant, or they are uncorrelated", level)
    if abs(c) >= 1:
        return Estimate("ccc", c, c, c, "Fisher z, Lin 1989 variance", level,
                        "perfect agreement: the interval is degenerate")
    sy, sp = float(np.std(y)), float(np.std(p))
    u = (float(p.mean()) - float(y.mean())) / math.sqrt(sy * sp)
    var_z = lin_ccc_variance(c, r, u, y.size)
    if not (math.isfinite(var_z) and var_z > 0):
        return _undefined_estimate("ccc", "Lin's asymptotic variance is not positive", level)
    return _fisher_z("ccc", c, var_z, y, p, groups, level, "Fisher z, Lin 1989 variance")


# --- Bland-Altman --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlandAltman:
    """Bias (mean of y_pred - y_true), SD of the differences, and the limits ``bias +- k SD``.

    ``n_effective = n / design_effect`` is the sample size the intervals used (the design effect of the
    mean difference over patients, at least 1).
    """

    bias: Estimate
    lower: Estimate
    upper: Estimate
    sd: float
    k: float
    n: int
    n_clusters: int
    design_effect: float
    n_effective: float
    method: str
    mean: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))
    difference: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0))


def _mean_design_effect(d: np.ndarray, cluster: np.ndarray, n_clusters: int) -> float:
    """Ratio-estimator (cluster) variance of mean(d) over s^2 / n, at least 1."""
    m = np.bincount(cluster, minlength=n_clusters).astype(np.float64)
    keep = m > 0
    if m.max() <= 1:
        return 1.0
    a = np.bincount(cluster, weights=d, minlength=n_clusters)[keep]
    m = m[keep]
    n, k = d.size, m.size
    var_iid = float(d.var(ddof=1)) / n
    if k < 2 or var_iid <= 0:
        return float((m**2).sum() / n)
    var_cluster = k / (k - 1) * float(((a - d.mean() * m) ** 2).sum()) / n**2
    return max(1.0, var_cluster / var_iid)


def bland_altman(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None, *,
                 level: float = 0.95, k: float = 1.96,
                 method: Literal["exact", "approximate"] = "exact") -> BlandAltman:
    """Bland-Altman agreement of the predictions with the truth.

    Args:
        y_true, y_pred: values [N]; the differences are ``y_pred - y_true``.
        groups: patient per case [N]; several scans of a patient count as ``n / deff`` cases.
        level: confidence level of the intervals.
        k: the limits are ``bias +- k SD`` (1.96 for 95% agreement; Bland and Altman 1986 used 2).
        method: ``"exact"`` (Carkeet, Optom Vis Sci 2015: the limit ``mu + k sigma`` has the pivot
            ``sqrt(n) (d - limit) / s`` ~ noncentral t(n - 1, -k sqrt(n)) for normal differences) or
            ``"approximate"`` (Bland and Altman, Stat Methods Med Res 1999: SE ``sqrt(3 s^2 / n)`` with
            t on n - 1).

    The bias interval is ``bias +- t s / sqrt(n)``, t on n - 1 df. With clustered cases n is
    ``n_eff = n / deff`` throughout, degrees of freedom included (``n_eff - 1``).
    """
    _check_level(level)
    if method not in ("exact", "approximate"):
        raise ValueError(f"unknown method {method!r}; use 'exact' or 'approximate'")
    y, p = _pair(y_true, y_pred)
    d = p - y
    cluster, n_clusters = as_groups(groups, y.size)
    n = d.size
    if n < 3:
        nan = math.nan
        reason = f"Bland-Altman intervals need at least 3 cases, got {n}"
        undefined(reason)
        empty = [Estimate(name, nan, level=level, note=reason) for name in ("bias", "loa_lower", "loa_upper")]
        return BlandAltman(*empty, nan, k, n, n_clusters, nan, nan, method, (p + y) / 2, d)
    bias, sd = float(d.mean()), float(d.std(ddof=1))
    deff = _mean_design_effect(d, cluster, n_clusters)
    n_eff = n / deff
    df = max(n_eff - 1, 1.0)
    alpha = 1 - level
    t = float(student_t.ppf(1 - alpha / 2, df))
    cluster_note = f"; n/deff = {n_eff:.1f} of {n} cases ({n_clusters} patients)" if deff > 1 else ""
    half = t * sd / math.sqrt(n_eff)
    bias_est = Estimate("bias", bias, bias - half, bias + half, f"t on {df:.4g} df" + cluster_note, level)
    limits = []
    for name, sign in (("loa_lower", -1.0), ("loa_upper", 1.0)):
        value = bias + sign * k * sd
        if method == "exact":
            q = nct.ppf([alpha / 2, 1 - alpha / 2], df, sign * k * math.sqrt(n_eff))
            lo, hi = bias + sd * q / math.sqrt(n_eff)
            how = f"exact, noncentral t (Carkeet 2015) on {df:.4g} df"
        else:
            se = math.sqrt(3 * sd * sd / n_eff)
            lo, hi = value - t * se, value + t * se
            how = f"approximate SE sqrt(3 s^2/n) (Bland-Altman 1999), t on {df:.4g} df"
        limits.append(Estimate(name, value, float(lo), float(hi), how + cluster_note, level))
    return BlandAltman(bias_est, limits[0], limits[1], sd, k, n, n_clusters, deff, n_eff, method,
                       (p + y) / 2, d)


# --- calibration of a regression ------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressionCalibration:
    """Binned predicted vs observed, and the OLS line ``observed = intercept + slope * predicted``.

    ``bin_edges [B + 1]`` are quantiles of the predictions (duplicates dropped, so B may be fewer than
    asked); ``mean_predicted``, ``mean_observed`` and ``counts`` are per bin. A calibrated model has
    intercept 0 and slope 1.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    mean_observed: np.ndarray
    counts: np.ndarray
    intercept: Estimate
    slope: Estimate
    n_bins: int


def binned_calibration(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None,
                       n_bins: int = 10, level: float = 0.95) -> RegressionCalibration:
    """Calibration of a regression: bins by predicted quantile, and the line of observed on predicted.

    The line is fitted on the cases (not the bins) by statsmodels OLS with cluster-robust (patient)
    standard errors and t on patients - 1 df; ``groups=None`` makes every case its own patient.
    """
    import statsmodels.api as sm

    _check_level(level)
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y, p = _pair(y_true, y_pred)
    cluster, n_clusters = as_groups(groups, y.size)
    edges = np.unique(np.quantile(p, np.linspace(0, 1, n_bins + 1))) if p.size else np.zeros(1)
    b = max(edges.size - 1, 1)
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, b - 1)  # (lo, hi], the first [lo, hi]
    counts = np.bincount(index, minlength=b)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=b) / counts
        mean_y = np.bincount(index, weights=y, minlength=b) / counts
    nan = math.nan
    how = f"OLS, patient cluster-robust SE, t on {n_clusters - 1} df"
    if n_clusters < 3 or np.ptp(p) == 0:
        reason = ("the calibration line needs at least 3 patients and non-constant predictions "
                  f"({n_clusters} patients)")
        undefined(reason)
        line = [Estimate(name, nan, level=level, note=reason) for name in ("intercept", "slope")]
    else:
        fit = sm.OLS(y, sm.add_constant(p, has_constant="add")).fit(
            cov_type="cluster", cov_kwds={"groups": cluster}, use_t=True)
        ci = np.asarray(fit.conf_int(alpha=1 - level))
        line = [Estimate(name, float(fit.params[i]), float(ci[i, 0]), float(ci[i, 1]), how, level)
                for i, name in enumerate(("intercept", "slope"))]
    return RegressionCalibration(edges, mean_p, mean_y, counts, line[0], line[1], b)


# --- coverage of prediction intervals ---------------------------------------------------------------


@dataclass(frozen=True)
class IntervalCoverage:
    """Share of cases whose prediction interval holds the truth, with its clustered interval."""

    coverage: ProportionInterval
    mean_width: float
    nominal: float


def interval_coverage(y_true: ArrayLike, lo: ArrayLike, hi: ArrayLike, groups: ArrayLike | None = None,
                      level: float = 0.95, nominal: float = math.nan) -> IntervalCoverage:
    """Fraction of cases with ``lo <= y_true <= hi``: Clopper-Pearson on n / design effect (patients).

    ``nominal`` is the coverage the intervals claim (e.g. 0.9), kept for the records' note.
    """
    y = _as_values(y_true, None, "y_true")
    low, high = _as_values(lo, y.size, "lo"), _as_values(hi, y.size, "hi")
    if (low > high).any():
        rows = np.flatnonzero(low > high)[:5].tolist()
        raise DataError(f"prediction intervals with lo > hi (rows {rows})",
                        hint="pass the lower bound as lo and the upper as hi")
    covered = ((low <= y) & (y <= high)).astype(np.int8)
    res = clustered_proportion_interval(covered, groups, level)
    width = float(np.mean(high - low)) if y.size else math.nan
    return IntervalCoverage(res, width, float(nominal))


# --- patient bootstrap -----------------------------------------------------------------------------------


def regression_bootstrap(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None, *,
                         metrics: tuple[str, ...] = REGRESSION_METRICS, n_resamples: int = 2000,
                         level: float = 0.95, method: Literal["percentile", "bca"] = "percentile",
                         seed: int = 0, k: float = 1.96) -> dict[str, BootstrapResult]:
    """Patient-bootstrap intervals of regression metrics, all on the same resamples.

    Each resample draws patients with replacement (`medres.metrics.bootstrap`'s multiplicities) and
    evaluates every metric from the resampled moment sums at once. ``k`` sets the limits of agreement.
    """
    _check(method, level, n_resamples)
    unknown = [m for m in metrics if m not in REGRESSION_METRICS]
    if unknown:
        raise ValueError(f"unknown regression metrics {unknown}; use some of {REGRESSION_METRICS}")
    y, p = _pair(y_true, y_pred)
    cluster, n_clusters = as_groups(groups, y.size)
    if n_clusters < 2:
        raise DataError(f"a bootstrap needs at least 2 patients, got {n_clusters}",
                        hint="report the point estimate without an interval")
    moments = _patient_moments(y, p, cluster, n_clusters)
    stats = [_MomentStatistic(m, moments, k) for m in metrics]
    dist = _run(stats, n_clusters, n_resamples, seed)
    jack: list[np.ndarray] = []

    def jackknife(i: int) -> np.ndarray:
        if not jack:
            jack.append(_jackknife(stats, n_clusters))
        return jack[0][i]

    out = {}
    for i, stat in enumerate(stats):
        estimate = float(stat(np.ones((1, n_clusters)))[0])
        if not math.isfinite(estimate):
            out[stat.metric] = BootstrapResult(
                stat.metric, math.nan, math.nan, math.nan, method, level, n_resamples, 0, math.nan,
                n_clusters, seed, reason=f"{stat.metric} undefined on the full sample (constant values)")
            continue
        out[stat.metric] = _interval(stat.metric, estimate, dist[i], lambda i=i: jackknife(i), method=method,
                                     level=level, n_resamples=n_resamples, n_clusters=n_clusters, seed=seed)
    return out


# --- summary and records ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegressionSummary:
    """Everything `regression_summary` computes for one regression target."""

    n: int
    n_clusters: int
    bootstrap: dict[str, BootstrapResult]
    pearson: Estimate
    ccc: Estimate
    bland_altman: BlandAltman
    calibration: RegressionCalibration
    coverage: IntervalCoverage | None = None


def regression_summary(y_true: ArrayLike, y_pred: ArrayLike, groups: ArrayLike | None = None, *,
                       lo: ArrayLike | None = None, hi: ArrayLike | None = None, nominal: float = math.nan,
                       level: float = 0.95, n_resamples: int = 2000, seed: int = 0, n_bins: int = 10,
                       k: float = 1.96) -> RegressionSummary:
    """All regression statistics of one target; ``lo``/``hi`` add the coverage of prediction intervals."""
    y, p = _pair(y_true, y_pred)
    cluster, n_clusters = as_groups(groups, y.size)
    boot = regression_bootstrap(y, p, cluster, n_resamples=n_resamples, level=level, seed=seed, k=k)
    coverage = None
    if (lo is None) != (hi is None):
        raise DataError("prediction intervals need both lo and hi", hint="pass both bounds, or neither")
    if lo is not None and hi is not None:
        coverage = interval_coverage(y, lo, hi, cluster, level, nominal)
    return RegressionSummary(y.size, n_clusters, boot, pearson_interval(y, p, cluster, level),
                             ccc_interval(y, p, cluster, level),
                             bland_altman(y, p, cluster, level=level, k=k),
                             binned_calibration(y, p, cluster, n_bins, level), coverage)


def regression_records(summary: RegressionSummary, *, scope: str, head: str, subgroup: str = "all",
                       fold: str = "pooled", class_name: str = "") -> list[dict[str, Any]]:
    """Long-format records (`medres.metrics.RECORD_COLUMNS`) of a `RegressionSummary`; ``head`` = task name.

    A metric with two intervals (Pearson r and the CCC: Fisher z and the patient bootstrap; the bias
    and limits of agreement: t / noncentral t and the bootstrap) has one row per interval, told apart
    by ``ci_method``.
    """
    common = dict(scope=scope, subgroup=subgroup, fold=str(fold), head=head, class_name=class_name,
                  n=summary.n)
    rows: list[MetricRecord] = []
    for name, res in summary.bootstrap.items():
        rows.append(MetricRecord(metric=name, value=res.estimate, ci_low=res.ci_low, ci_high=res.ci_high,
                                 ci_method=res.ci_method, note=res.reason, **common))
    ba = summary.bland_altman
    cal = summary.calibration
    named = [(e.metric, e) for e in (summary.pearson, summary.ccc, ba.bias, ba.lower, ba.upper)]
    named += [("calibration_intercept", cal.intercept), ("calibration_slope", cal.slope)]
    for metric, est in named:
        rows.append(MetricRecord(metric=metric, value=est.value, ci_low=est.ci_low, ci_high=est.ci_high,
                                 ci_method=est.ci_method, note=est.note, **common))
    rows.append(MetricRecord(metric="sd_difference", value=ba.sd, note=f"limits are bias +- {ba.k:g} SD",
                             **common))
    if summary.coverage is not None:
        cov = summary.coverage.coverage
        nominal = summary.coverage.nominal
        claim = f"nominal {nominal:g}; " if math.isfinite(nominal) else ""
        rows.append(MetricRecord(metric="interval_coverage", value=cov.estimate, ci_low=cov.ci_low,
                                 ci_high=cov.ci_high, ci_method=cov.ci_method,
                                 note=f"{claim}mean width {summary.coverage.mean_width:.4g}; {cov.note}",
                                 **common))
    return [r.as_row() for r in rows]
