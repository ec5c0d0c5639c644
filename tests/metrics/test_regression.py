"""Regression statistics against scikit-learn, scipy, statsmodels, pandas and a published Bland-Altman
example."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn import metrics as skm
from statsmodels.stats.proportion import proportion_confint

from medres.errors import DataError
from medres.metrics import RECORD_COLUMNS, UndefinedMetricWarning
from medres.metrics.regression import (
    REGRESSION_METRICS,
    _MomentStatistic,
    _patient_moments,
    binned_calibration,
    bland_altman,
    ccc_interval,
    concordance_correlation,
    interval_coverage,
    lin_ccc_variance,
    mae,
    pearson_interval,
    pearson_r,
    r2,
    regression_bootstrap,
    regression_records,
    regression_summary,
    rmse,
)

# Bland & Altman, Lancet 1986, Table 1: first reading of peak expiratory flow (l/min) of 17 subjects with
# the Wright and the mini Wright meter. Published: mean difference -2.1, SD 38.8, limits -80 and 76 (2 SD).
# The same 17 pairs as the R package blandr's copy of the paper's table (bland.altman.PEFR.r, first readings).
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def _sample(seed: int, n: int = 60, patients: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.normal(50, 10, n)
    p = 0.9 * y + 7 + rng.normal(0, 4, n)
    groups = None if patients is None else rng.integers(0, patients, n) * 5 + 11
    return y, p, groups


def test_point_metrics_equal_sklearn_and_scipy():
    y, p, _ = _sample(0)
    assert mae(y, p) == pytest.approx(skm.mean_absolute_error(y, p), rel=1e-12)
    assert rmse(y, p) == pytest.approx(math.sqrt(skm.mean_squared_error(y, p)), rel=1e-12)
    assert r2(y, p) == pytest.approx(skm.r2_score(y, p), rel=1e-10)
    assert pearson_r(y, p) == pytest.approx(stats.pearsonr(y, p).statistic, rel=1e-10)


def test_concordance_correlation_from_its_definition():
    x = np.array([1.0, 2, 3, 4, 5])
    # shift by 1: variances 2 and 2, covariance 2, mean difference 1 -> 2 * 2 / (2 + 2 + 1) = 0.8
    assert concordance_correlation(x, x + 1) == pytest.approx(0.8)
    # scale by 2: variances 2 and 8, covariance 4, means 3 and 6 -> 8 / (2 + 8 + 9) = 8 / 19
    assert concordance_correlation(x, 2 * x) == pytest.approx(8 / 19)
    assert concordance_correlation(x, x) == pytest.approx(1.0)
    with pytest.warns(UndefinedMetricWarning):
        assert math.isnan(r2(np.full(5, 3.0), x))  # a constant truth has no R^2


@pytest.mark.parametrize("level", [0.9, 0.95])
def test_pearson_fisher_interval_equals_scipy(level):
    y, p, _ = _sample(1, n=25)
    ours = pearson_interval(y, p, level=level)
    ref = stats.pearsonr(y, p).confidence_interval(confidence_level=level)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-10)
    assert ours.ci_method == "Fisher z"


def test_lin_variance_matches_the_monte_carlo_spread_of_atanh_ccc():
    """Lin's asymptotic variance of atanh(CCC) against 4000 simulated bivariate-normal samples."""
    n, rho, mu_x, mu_y, sd_x, sd_y = 100, 0.85, 0.0, 0.4, 1.0, 1.3
    rng = np.random.default_rng(2)
    cov = [[sd_x**2, rho * sd_x * sd_y], [rho * sd_x * sd_y, sd_y**2]]
    xy = rng.multivariate_normal([mu_x, mu_y], cov, size=(4000, n))
    x, y = xy[..., 0], xy[..., 1]
    sxy = ((x - x.mean(1, keepdims=True)) * (y - y.mean(1, keepdims=True))).mean(1)
    ccc = 2 * sxy / (x.var(1) + y.var(1) + (x.mean(1) - y.mean(1)) ** 2)
    true_ccc = 2 * rho * sd_x * sd_y / (sd_x**2 + sd_y**2 + (mu_x - mu_y) ** 2)
    u = (mu_y - mu_x) / math.sqrt(sd_x * sd_y)
    asymptotic = math.sqrt(lin_ccc_variance(true_ccc, rho, u, n))
    assert np.arctanh(ccc).std() == pytest.approx(asymptotic, rel=0.08)
    # and ccc_interval uses it: its half-width on the z scale at one sample
    est = ccc_interval(x[0], y[0])
    half = (math.atanh(est.ci_high) - math.atanh(est.ci_low)) / 2
    assert half / stats.norm.ppf(0.975) == pytest.approx(asymptotic, rel=0.25)


def test_bland_altman_on_the_published_peak_flow_example():
    ba = bland_altman(MINI_WRIGHT, WRIGHT, k=2, method="approximate")  # differences Wright - mini Wright
    assert round(ba.bias.value, 1) == -2.1
    assert round(ba.sd, 1) == 38.8
    assert (round(ba.lower.value), round(ba.upper.value)) == (-80, 75)  # -79.6 and 75.4; published -80, 76
    t16 = stats.t.ppf(0.975, 16)
    assert ba.bias.ci_low == pytest.approx(ba.bias.value - t16 * ba.sd / math.sqrt(17))
    se = math.sqrt(3 * ba.sd**2 / 17)  # Bland and Altman's approximate SE of a limit
    assert (ba.lower.ci_low, ba.lower.ci_high) == pytest.approx((ba.lower.value - t16 * se,
                                                                 ba.lower.value + t16 * se))
    assert (round(ba.lower.ci_low), round(ba.lower.ci_high)) == (-114, -45)


def test_exact_limit_interval_covers_at_the_nominal_rate():
    """Carkeet's interval is location-scale equivariant; simulate its coverage of mu + k sigma at n = 10."""
    n, k = 10, 1.96
    rng = np.random.default_rng(3)
    base = rng.normal(size=n)
    ba = bland_altman(np.zeros(n), base, k=k)
    c_lo = (ba.upper.ci_low - ba.bias.value) / ba.sd
    c_hi = (ba.upper.ci_high - ba.bias.value) / ba.sd
    shifted = bland_altman(np.zeros(n), 3 + 2 * base, k=k)  # equivariance
    assert shifted.upper.ci_low == pytest.approx(3 + 2 * ba.upper.ci_low)
    d = rng.normal(size=(200_000, n))
    m, s = d.mean(1), d.std(1, ddof=1)
    covered = (m + c_lo * s <= k) & (k <= m + c_hi * s)
    assert covered.mean() == pytest.approx(0.95, abs=0.003)
    approx = bland_altman(np.zeros(n), base, k=k, method="approximate")
    a_lo = (approx.upper.ci_low - approx.bias.value) / approx.sd
    a_hi = (approx.upper.ci_high - approx.bias.value) / approx.sd
    assert ((m + a_lo * s <= k) & (k <= m + a_hi * s)).mean() < 0.94  # the approximation under-covers here


def test_bland_altman_counts_duplicated_patients_once():
    y, p, _ = _sample(4, n=30)
    once = bland_altman(y, p)
    twice = bland_altman(np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(30), 2))
    # each patient twice: the cluster variance of the mean is the unduplicated s^2 / n, so n_eff = 30 * 58/59
    assert twice.n_effective == pytest.approx(30 * 58 / 59)
    se_once = (once.bias.ci_high - once.bias.value) / stats.t.ppf(0.975, 29)
    se_twice = (twice.bias.ci_high - twice.bias.value) / stats.t.ppf(0.975, twice.n_effective - 1)
    assert se_twice == pytest.approx(se_once, rel=1e-10)
    naive = bland_altman(np.repeat(y, 2), np.repeat(p, 2))
    assert naive.bias.ci_high - naive.bias.ci_low < 0.75 * (once.bias.ci_high - once.bias.ci_low)


def test_binned_calibration_against_pandas_and_a_hand_sandwich():
    y, p, g = _sample(5, n=80, patients=25)
    cal = binned_calibration(y, p, g, n_bins=5)
    bins = pd.qcut(p, 5, labels=False)
    ref = pd.DataFrame({"p": p, "y": y, "b": bins}).groupby("b").agg(p=("p", "mean"), y=("y", "mean"),
                                                                      n=("y", "size"))
    np.testing.assert_allclose(cal.mean_predicted, ref["p"], rtol=1e-12)
    np.testing.assert_allclose(cal.mean_observed, ref["y"], rtol=1e-12)
    np.testing.assert_array_equal(cal.counts, ref["n"])
    slope, intercept = np.polyfit(p, y, 1)
    assert (cal.slope.value, cal.intercept.value) == pytest.approx((slope, intercept), rel=1e-10)
    # cluster-robust sandwich with the small-sample factor G/(G-1) (N-1)/(N-K), t on G - 1
    x = np.column_stack([np.ones_like(p), p])
    bread = np.linalg.inv(x.T @ x)
    e = y - x @ np.array([intercept, slope])
    _, idx = np.unique(g, return_inverse=True)
    scores = np.stack([np.bincount(idx, weights=x[:, j] * e) for j in range(2)], axis=1)
    n_g, n = scores.shape[0], y.size
    v = n_g / (n_g - 1) * (n - 1) / (n - 2) * bread @ (scores.T @ scores) @ bread
    half = stats.t.ppf(0.975, n_g - 1) * math.sqrt(v[1, 1])
    assert (cal.slope.ci_low, cal.slope.ci_high) == pytest.approx((slope - half, slope + half), rel=1e-8)


def test_interval_coverage_is_clopper_pearson_without_groups():
    y, p, _ = _sample(6, n=40)
    res = interval_coverage(y, p - 5, p + 5, nominal=0.9)
    k = int(np.sum((p - 5 <= y) & (y <= p + 5)))
    lo, hi = proportion_confint(k, 40, method="beta")
    assert res.coverage.estimate == k / 40
    assert (res.coverage.ci_low, res.coverage.ci_high) == pytest.approx((lo, hi))
    assert res.mean_width == pytest.approx(10.0)
    with pytest.raises(DataError, match=r"lo > hi \(rows \[3\]\)"):
        interval_coverage(y, np.where(np.arange(40) == 3, p + 6, p - 5), p + 5)


def test_moment_kernel_equals_sklearn_on_weighted_resamples():
    y, p, g = _sample(7, n=50, patients=20)
    _, cluster = np.unique(g, return_inverse=True)
    moments = _patient_moments(y, p, cluster, 20)
    counts = np.random.default_rng(0).multinomial(20, np.full(20, 1 / 20), size=5)
    for metric in REGRESSION_METRICS:
        got = _MomentStatistic(metric, moments, 1.96)(counts)
        for r, row in enumerate(counts):
            rows = np.repeat(np.arange(y.size), row[cluster])
            yy, pp = y[rows], p[rows]
            d = pp - yy
            ccc = 2 * np.cov(yy, pp, ddof=0)[0, 1] / (yy.var() + pp.var() + (yy.mean() - pp.mean()) ** 2)
            ref = {"mae": skm.mean_absolute_error(yy, pp), "rmse": math.sqrt(skm.mean_squared_error(yy, pp)),
                   "r2": skm.r2_score(yy, pp), "pearson_r": stats.pearsonr(yy, pp).statistic, "ccc": ccc,
                   "bias": d.mean(), "loa_lower": d.mean() - 1.96 * d.std(ddof=1),
                   "loa_upper": d.mean() + 1.96 * d.std(ddof=1)}[metric]
            assert got[r] == pytest.approx(ref, rel=1e-9, abs=1e-12), metric


def test_bootstrap_resamples_patients_not_scans():
    y, p, _ = _sample(8, n=40)
    once = regression_bootstrap(y, p, n_resamples=400, seed=3)
    twice = regression_bootstrap(np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(40), 2),
                                 n_resamples=400, seed=3)
    naive = regression_bootstrap(np.repeat(y, 2), np.repeat(p, 2), n_resamples=400, seed=3)
    for metric in ("mae", "rmse", "r2", "pearson_r", "ccc", "bias"):
        assert (twice[metric].ci_low, twice[metric].ci_high) == pytest.approx(
            (once[metric].ci_low, once[metric].ci_high), rel=1e-9)
        assert naive[metric].ci_high - naive[metric].ci_low < twice[metric].ci_high - twice[metric].ci_low
    assert once["ccc"].estimate == pytest.approx(concordance_correlation(y, p))
    bca = regression_bootstrap(y, p, n_resamples=400, seed=3, method="bca")
    assert bca["mae"].ci_low < bca["mae"].estimate < bca["mae"].ci_high


def test_clustered_fisher_intervals_widen_with_duplicated_patients():
    y, p, _ = _sample(9, n=30)
    once = ccc_interval(y, p)
    twice = ccc_interval(np.repeat(y, 2), np.repeat(p, 2), np.repeat(np.arange(30), 2))
    naive = ccc_interval(np.repeat(y, 2), np.repeat(p, 2))
    width = lambda e: math.atanh(e.ci_high) - math.atanh(e.ci_low)  # noqa: E731
    assert width(naive) < 0.8 * width(once)
    assert width(twice) > 0.9 * width(once)
    assert "design effect" in twice.ci_method


def test_summary_records_follow_the_long_format():
    y, p, g = _sample(10, n=45, patients=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = regression_summary(y, p, g, lo=p - 6, hi=p + 6, nominal=0.9, n_resamples=200)
    rows = regression_records(summary, scope="oof", head="ctr")
    assert all(list(r) == list(RECORD_COLUMNS) for r in rows)
    assert {r["head"] for r in rows} == {"ctr"}
    metrics = [r["metric"] for r in rows]
    for name in (*REGRESSION_METRICS, "calibration_slope", "calibration_intercept", "interval_coverage"):
        assert name in metrics
    assert metrics.count("ccc") == 2  # Fisher z and the bootstrap
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows if r["ci_method"])


def test_missing_values_are_a_data_error_naming_rows():
    y, p, _ = _sample(11, n=10)
    p[[2, 7]] = np.nan
    with pytest.raises(DataError, match=r"y_pred holds NaN.*rows \[2, 7\]"):
        mae(y, p)
