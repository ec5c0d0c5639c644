"""Clustered proportion intervals against statsmodels / scipy and against the patient bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import beta, binomtest
from statsmodels.stats.proportion import proportion_confint

from medres.metrics import patient_bootstrap
from medres.metrics.proportions import (
    clustered_proportion_interval,
    design_effect,
    effective_size_interval,
)


@pytest.mark.parametrize(("k", "n"), [(0, 4), (10, 10), (2, 2), (3, 10), (37, 113)])
def test_one_scan_per_patient_is_clopper_pearson(k, n):
    """Fold 1's sensitivity 0/4 must read [0, 0.60], specificity 10/10 [0.69, 1], PPV 2/2 [0.16, 1]."""
    r = clustered_proportion_interval(np.r_[np.ones(k), np.zeros(n - k)].astype(int), np.arange(n))
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    assert (r.ci_low, r.ci_high) == pytest.approx((ref.low, ref.high), abs=1e-9)
    assert r.design_effect == 1 and r.n_effective == n
    assert r.ci_method == "Clopper-Pearson on n/deff (patient design effect)"


def test_issue_values_at_the_boundary():
    assert clustered_proportion_interval([0, 0, 0, 0]).ci_high == pytest.approx(0.6024, abs=1e-4)
    assert clustered_proportion_interval([1] * 10).ci_low == pytest.approx(0.6915, abs=1e-4)
    assert clustered_proportion_interval([1, 1]).ci_low == pytest.approx(0.1581, abs=1e-4)


def test_design_effect_matches_the_patient_bootstrap_variance():
    """deff * binomial variance = the ratio-estimator variance, which the patient bootstrap estimates
    (times (k - 1) / k)."""
    rng = np.random.default_rng(0)
    k = 300
    p_i = rng.beta(2, 1, k)  # mean 2/3, ICC 1/4
    g = np.repeat(np.arange(k), rng.integers(1, 4, k))
    s = (rng.uniform(size=g.size) < p_i[g]).astype(np.int8)
    p = s.mean()
    deff = design_effect(s, g, k)
    boot = patient_bootstrap("mean", None, s.astype(float), g, n_resamples=4000, seed=1)
    assert deff * p * (1 - p) / s.size * (k - 1) / k == pytest.approx(boot.var(ddof=1), rel=0.08)
    assert deff > 1.2  # correlated scans: fewer effective observations than scans


def test_duplicated_scans_do_not_narrow_the_interval():
    """Every patient's scan twice (perfectly correlated) is about the information of one scan each."""
    rng = np.random.default_rng(2)
    s = (rng.uniform(size=40) < 0.8).astype(int)
    one = clustered_proportion_interval(s, np.arange(40))
    two = clustered_proportion_interval(np.repeat(s, 2), np.repeat(np.arange(40), 2))
    assert two.ci_high - two.ci_low >= one.ci_high - one.ci_low
    assert two.ci_high - two.ci_low == pytest.approx(one.ci_high - one.ci_low, rel=0.05)
    # n/n: fully correlated, so exactly the interval of one observation per patient
    ones = clustered_proportion_interval(np.ones(80, int), np.repeat(np.arange(40), 2))
    assert ones.ci_low == pytest.approx(beta.ppf(0.025, 40, 1), abs=1e-12)
    assert ones.ci_low < binomtest(80, 80).proportion_ci(method="exact").low - 0.02  # not 80 scans' worth


@pytest.mark.parametrize("method", ["beta", "wilson", "jeffreys"])
def test_effective_counts_go_to_statsmodels(method):
    g = np.repeat(np.arange(6), [3, 1, 2, 3, 1, 2])
    s = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 1])
    r = clustered_proportion_interval(s, g, level=0.9, method=method)
    ref = proportion_confint(r.estimate * r.n_effective, r.n_effective, alpha=0.1, method=method)
    assert (r.ci_low, r.ci_high) == pytest.approx(ref, abs=1e-12)
    assert r.n_effective == pytest.approx(s.size / r.design_effect)


def test_empty_denominator_and_effective_size_interval():
    r = clustered_proportion_interval(np.zeros(0, int), np.zeros(0, int))
    assert math.isnan(r.estimate) and math.isnan(r.ci_low) and "empty" in r.reason
    low, high, n_eff = effective_size_interval(1.0, 12, 0.0, [3, 3, 3, 3])
    assert n_eff == 4 and high == 1 and low == pytest.approx(beta.ppf(0.025, 4, 1))
    low, high, n_eff = effective_size_interval(0.8, 50, 0.8 * 0.2 / 20, [1] * 50)
    assert n_eff == pytest.approx(20) and (low, high) == pytest.approx(
        proportion_confint(16, 20, method="beta"))
