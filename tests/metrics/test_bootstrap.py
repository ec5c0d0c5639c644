"""Patient-level bootstrap: the vectorised kernels against scikit-learn, clustering, BCa, DeLong."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medres.errors import ConfigError
from medres.metrics import (
    delong_roc_ci,
    delong_roc_test,
    paired_bootstrap_ci,
    patient_bootstrap,
    patient_bootstrap_ci,
)


def _cohort(seed: int, n_patients: int = 120, scans: int = 2, tied: bool = True):
    """Patients with 1..scans scans each; label per patient; scores correlated within a patient."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, scans + 1, n_patients)
    groups = np.repeat(np.arange(n_patients) * 7 + 3, per)  # ids need not be 0..P-1
    y_patient = rng.random(n_patients) < 0.35
    y = np.repeat(y_patient, per).astype(int)
    s = np.repeat(rng.normal(size=n_patients), per) + 0.8 * y + 0.5 * rng.normal(size=y.size)
    if tied:
        s = np.round(s, 1)
    return y, 1 / (1 + np.exp(-s)), groups


@pytest.mark.parametrize(("name", "reference"), [
    ("auroc", skm.roc_auc_score),
    ("average_precision", skm.average_precision_score),
    ("brier", skm.brier_score_loss),
])
def test_vectorised_kernels_equal_sklearn_on_the_same_resamples(name, reference):
    y, p, groups = _cohort(0)
    fast = patient_bootstrap(name, y, p, groups, n_resamples=60, seed=3)
    slow = patient_bootstrap(reference, y, p, groups, n_resamples=60, seed=3)  # sample_weight route
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_threshold_metric_equals_sklearn_recall():
    y, p, groups = _cohort(1)
    fast = patient_bootstrap("sensitivity", y, p, groups, n_resamples=40, seed=1, threshold=0.6)
    slow = patient_bootstrap(lambda yy, pp, sample_weight: skm.recall_score(
        yy, pp >= 0.6, sample_weight=sample_weight), y, p, groups, n_resamples=40, seed=1)
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_resamples_patients_and_takes_all_their_rows():
    """An explicit loop: draw P patients with replacement, stack all their rows, call scikit-learn."""
    y, p, groups = _cohort(2, n_patients=50, scans=3)
    dist = patient_bootstrap("auroc", y, p, groups, n_resamples=20, seed=7)
    patients = np.unique(groups)
    rng = np.random.default_rng(7)
    for r in range(20):
        drawn = patients[rng.integers(0, patients.size, patients.size)]
        rows = np.concatenate([np.flatnonzero(groups == g) for g in drawn])
        assert dist[r] == pytest.approx(skm.roc_auc_score(y[rows], p[rows]), abs=1e-12)


def test_clustering_widens_the_interval_for_duplicated_scans():
    rng = np.random.default_rng(4)
    n = 400
    y = (rng.random(n) < 0.4).astype(int)
    s = y + rng.normal(size=n)
    y2, s2, groups = np.repeat(y, 2), np.repeat(s, 2), np.repeat(np.arange(n), 2)  # two identical scans
    by_patient = patient_bootstrap_ci("auroc", y2, s2, groups, n_resamples=1000)
    by_row = patient_bootstrap_ci("auroc", y2, s2, None, n_resamples=1000)
    once = patient_bootstrap_ci("auroc", y, s, None, n_resamples=1000)
    assert by_patient.standard_error / by_row.standard_error == pytest.approx(math.sqrt(2), rel=0.12)
    assert by_patient.standard_error == pytest.approx(once.standard_error, rel=0.1)


def test_bootstrap_variance_agrees_with_delong_on_a_large_sample():
    rng = np.random.default_rng(8)
    n = 4000
    y = (rng.random(n) < 0.3).astype(int)
    s = 0.9 * y + rng.normal(size=n)
    boot = patient_bootstrap_ci("auroc", y, s, None, n_resamples=2000, seed=1)
    dl = delong_roc_ci(y, s)
    # relative Monte-Carlo SE of a variance from 2000 resamples ~ sqrt(2/2000) = 3 %
    assert boot.standard_error**2 == pytest.approx(dl.variance, rel=0.12)
    assert boot.ci_low == pytest.approx(dl.ci_low, abs=0.004)
    assert boot.ci_high == pytest.approx(dl.ci_high, abs=0.004)
    s_b = s + rng.normal(size=n)
    paired = paired_bootstrap_ci("auroc", y, s, s_b, None, n_resamples=2000, seed=1)
    test = delong_roc_test(y, s, s_b)
    assert paired.estimate == pytest.approx(test.difference)
    assert paired.standard_error**2 == pytest.approx(test.variance, rel=0.12)


def test_bca_matches_scipy_on_a_skewed_mean():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(9)
    x = rng.exponential(size=60) ** 2  # skewed: BCa moves the interval right of the percentile one
    ours = patient_bootstrap_ci("mean", None, x, None, n_resamples=20000, method="bca", seed=2)
    pct = patient_bootstrap_ci("mean", None, x, None, n_resamples=20000, method="percentile", seed=2)
    ref = bootstrap((x,), np.mean, n_resamples=20000, method="BCa", rng=np.random.default_rng(5))
    shift = ours.ci_high - pct.ci_high
    assert shift > 0.05
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=0.04)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=shift / 3)
    assert ours.estimate == pytest.approx(x.mean())


def test_bca_uses_the_cluster_jackknife_and_is_seeded():
    y, p, groups = _cohort(3)
    a = patient_bootstrap_ci("auroc", y, p, groups, n_resamples=300, method="bca", seed=11)
    b = patient_bootstrap_ci("auroc", y, p, groups, n_resamples=300, method="bca", seed=11)
    c = patient_bootstrap_ci("auroc", y, p, groups, n_resamples=300, method="bca", seed=12)
    assert a == b and a.ci_low != c.ci_low
    assert a.ci_low < a.estimate < a.ci_high and a.n_clusters == 120
    assert a.ci_method == "patient bootstrap bca (300 resamples)"


def test_undefined_resamples_are_dropped_and_counted():
    y = np.zeros(30, int)
    y[0] = 1  # one positive patient: most resamples have no positive
    s = np.linspace(0, 1, 30)
    r = patient_bootstrap_ci("auroc", y, s, None, n_resamples=200)
    assert 0 < r.n_valid < 200 and "dropped" in r.reason
    one_class = patient_bootstrap_ci("auroc", np.zeros(10, int), s[:10], None, n_resamples=50)
    assert math.isnan(one_class.estimate) and math.isnan(one_class.ci_low)
    assert "only one class" in one_class.reason


def test_paired_difference_of_a_model_with_itself_is_zero():
    y, p, groups = _cohort(5)
    r = paired_bootstrap_ci("auroc", y, p, p, groups, n_resamples=100)
    assert r.estimate == 0 and r.ci_low == 0 and r.ci_high == 0


def test_bad_arguments_are_config_errors():
    y, p, groups = _cohort(6)
    with pytest.raises(ConfigError, match="unknown bootstrap metric"):
        patient_bootstrap_ci("auc", y, p, groups)
    with pytest.raises(ConfigError, match="threshold"):
        patient_bootstrap_ci("sensitivity", y, p, groups)
    with pytest.raises(ConfigError, match="method"):
        patient_bootstrap_ci("auroc", y, p, groups, method="basic")


def test_mean_of_per_case_values_by_patient():
    """E.g. per-scan Dice: the bootstrap mean resamples patients and averages all their scans."""
    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(30), rng.integers(1, 4, 30))
    dice = rng.uniform(0.5, 1.0, groups.size)
    dist = patient_bootstrap("mean", None, dice, groups, n_resamples=10, seed=4)
    draws = np.random.default_rng(4)
    for r in range(10):
        drawn = draws.integers(0, 30, 30)
        rows = np.concatenate([np.flatnonzero(groups == g) for g in drawn])
        assert dist[r] == pytest.approx(dice[rows].mean())


def test_cluster_bca_matches_scipy_given_patient_indices():
    """scipy's BCa over patient indices, with a statistic that expands them to rows, is a cluster BCa."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(13)
    per = rng.integers(1, 5, 80)
    groups = np.repeat(np.arange(80), per)
    x = rng.lognormal(sigma=1.0, size=groups.size)
    sums, sizes = np.bincount(groups, weights=x), np.bincount(groups)

    def ratio_mean(idx, axis=-1):
        return sums[idx].sum(axis=axis) / sizes[idx].sum(axis=axis)

    ref = bootstrap((np.arange(80),), ratio_mean, n_resamples=20000, method="BCa",
                    rng=np.random.default_rng(0)).confidence_interval
    ours = patient_bootstrap_ci("mean", None, x, groups, n_resamples=20000, method="bca", seed=1)
    width = ref.high - ref.low
    assert ours.ci_low == pytest.approx(ref.low, abs=0.03 * width)
    assert ours.ci_high == pytest.approx(ref.high, abs=0.03 * width)
