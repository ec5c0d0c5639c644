"""DeLong against pROC's published results on aSAH and a brute-force O(n^2) implementation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from medres.metrics import UndefinedMetricWarning, delong_roc_ci, delong_roc_test, wilson_interval

# aSAH: the example data of the R package pROC (Robin et al., BMC Bioinformatics 2011; data from
# Turck et al. 2010), GPL-3. Read from the shared folder beside the repository, never copied into it.
ASAH = Path(__file__).parents[2].parent / "shared" / "data" / "aSAH.csv"


@pytest.fixture(scope="module")
def asah():
    if not ASAH.exists():
        pytest.skip(f"{ASAH} not found (the shared data folder sits beside the repository)")
    import pandas as pd

    table = pd.read_csv(ASAH)
    return (table["outcome"] == "Poor").astype(int).to_numpy(), table  # "Poor" is the positive class


@pytest.mark.parametrize(("marker", "auc", "low", "high"), [
    ("s100b", 0.7314, 0.6301, 0.8326),  # pROC: ci.auc(outcome, s100b), DeLong
    ("wfns", 0.8237, 0.7485, 0.8988),
])
def test_asah_matches_proc(asah, marker, auc, low, high):
    y, table = asah
    r = delong_roc_ci(y, table[marker].to_numpy())
    assert (r.n_pos, r.n_neg) == (41, 72)
    assert r.auroc == pytest.approx(auc, abs=5e-5)
    assert r.ci_low == pytest.approx(low, abs=5e-5)
    assert r.ci_high == pytest.approx(high, abs=5e-5)


def test_asah_ndka_and_paired_test_match_proc(asah):
    y, table = asah
    ndka = delong_roc_ci(y, table["ndka"].to_numpy())
    assert ndka.auroc == pytest.approx(0.6120, abs=5e-5)
    # A figure of 0.5063-0.7175 has been quoted for pROC here; it disagrees with DeLong's formula on
    # this file (checked by the brute force below) and with pROC's own published Z for s100b vs ndka,
    # which uses this same variance. The interval below is therefore a regression value, not a citation.
    assert (ndka.ci_low, ndka.ci_high) == pytest.approx((0.5012, 0.7227), abs=5e-5)
    y_brute, scores = y, table[["s100b", "ndka"]].to_numpy().T
    aucs, cov = _brute_force(y_brute, scores)
    assert ndka.variance == pytest.approx(cov[1, 1], rel=1e-10)
    # pROC: roc.test(roc(outcome, s100b), roc(outcome, ndka)) -> Z = 1.3908, p-value = 0.1643
    t = delong_roc_test(y, table["s100b"].to_numpy(), table["ndka"].to_numpy())
    assert t.auroc_a == pytest.approx(0.7314, abs=5e-5) and t.auroc_b == pytest.approx(0.6120, abs=5e-5)
    assert t.z == pytest.approx(1.3908, abs=5e-5)
    assert t.p_value == pytest.approx(0.1643, abs=5e-5)
    assert t.ci_low < t.difference < t.ci_high and t.ci_low < 0  # not significant at 5 %


def _brute_force(y, scores):
    """DeLong 1988 directly: psi over all (positive, negative) pairs, O(n_pos * n_neg)."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # [M, m, n]
    aucs = psi.mean(axis=(1, 2))
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    m, n = pos.shape[1], neg.shape[1]
    cov = np.cov(v10) / m + np.cov(v01) / n
    return aucs, cov


@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 150
    y = rng.integers(0, 2, n)
    a = np.round(y * 0.8 + rng.normal(size=n), 1)  # ties within and across classes
    b = np.round(0.5 * a + rng.normal(size=n), 1)
    aucs, cov = _brute_force(y, np.stack([a, b]))
    ci = delong_roc_ci(y, a)
    assert ci.auroc == pytest.approx(aucs[0], abs=1e-12)
    assert ci.variance == pytest.approx(cov[0, 0], rel=1e-10)
    half = norm.ppf(0.975) * math.sqrt(cov[0, 0])
    assert ci.ci_low == pytest.approx(aucs[0] - half) and ci.ci_high == pytest.approx(min(1, aucs[0] + half))
    t = delong_roc_test(y, a, b)
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    assert t.z == pytest.approx(z, rel=1e-9)
    assert t.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)


def test_undefined_cases_give_nan_and_reason():
    with pytest.warns(UndefinedMetricWarning):
        r = delong_roc_ci([1, 1, 1], [0.1, 0.2, 0.3])
    assert math.isnan(r.auroc) and "one class" in r.reason
    y = np.array([0, 1, 0, 1, 1, 0])
    s = np.array([0.1, 0.9, 0.3, 0.6, 0.5, 0.2])
    with pytest.warns(UndefinedMetricWarning):
        t = delong_roc_test(y, s, 2 * s + 1)  # the same ranking
    assert t.difference == 0 and math.isnan(t.p_value) and "identically" in t.reason


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (37, 113), (1, 2)])
def test_wilson_matches_scipy(k, n):
    from scipy.stats import binomtest

    ref = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
    low, high = wilson_interval(k, n, level=0.9)
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


# --- Obuchowski's clustered variance and the report's score interval ---------------------------------


def obuchowski_brute_force(y, a, b, g):
    """Obuchowski (Biometrics 1997) from its definitions: psi over every positive/negative scan pair,
    per-patient sums of the structural components, the S10 / S01 / S11 terms; covariance of 2 AUROCs."""
    y, g = np.asarray(y), np.asarray(g)
    scores = [np.asarray(a, float), np.asarray(b, float)]
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    m, n = pos.size, neg.size
    patients = np.unique(g)
    comps = []
    for s in scores:
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        auc = psi.mean()
        v10 = {p: sum(psi[i].sum() / n for i, r in enumerate(pos) if g[r] == p) for p in patients}
        v01 = {p: sum(psi[:, j].sum() / m for j, r in enumerate(neg) if g[r] == p) for p in patients}
        mk = {p: int(np.sum((g == p) & (y == 1))) for p in patients}
        nk = {p: int(np.sum((g == p) & (y == 0))) for p in patients}
        comps.append((auc, v10, v01, mk, nk))
    i10 = sum(1 for p in patients if comps[0][3][p] > 0)
    i01 = sum(1 for p in patients if comps[0][4][p] > 0)
    big_i = len(patients)
    ps = patients
    cov = np.zeros((2, 2))
    for r in range(2):
        for t in range(2):
            ar, v10r, v01r, mk, nk = comps[r]
            at, v10t, v01t, _, _ = comps[t]
            s10 = i10 / ((i10 - 1) * m) * sum((v10r[p] - mk[p] * ar) * (v10t[p] - mk[p] * at) for p in ps)
            s01 = i01 / ((i01 - 1) * n) * sum((v01r[p] - nk[p] * ar) * (v01t[p] - nk[p] * at) for p in ps)
            s11 = big_i / (big_i - 1) * sum((v10r[p] - mk[p] * ar) * (v01t[p] - nk[p] * at) for p in ps)
            s11_t = big_i / (big_i - 1) * sum((v10t[p] - mk[p] * at) * (v01r[p] - nk[p] * ar) for p in ps)
            cov[r, t] = s10 / m + s01 / n + (s11 + s11_t) / (m * n)
    return np.array([comps[0][0], comps[1][0]]), cov


def clustered_sample(seed: int, patients: int = 14):
    """Patients with 1-3 scans, some with scans of both classes, correlated scores, ties."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    y = (rng.uniform(size=g.size) < 0.3 + 0.4 * (g % 2)).astype(int)
    u = rng.normal(size=patients)[g]
    a = np.round(y + u + rng.normal(size=g.size), 1)
    b = np.round(0.5 * y + u + rng.normal(size=g.size), 1)
    return y, a, b, g


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_obuchowski_covariance_matches_its_definition(seed):
    from medres.metrics.delong import delong_covariance

    y, a, b, g = clustered_sample(seed)
    aucs, cov = delong_covariance(y, np.stack([a, b]), g)
    ref_aucs, ref_cov = obuchowski_brute_force(y, a, b, g)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-10, atol=1e-15)
    t = delong_roc_test(y, a, b, groups=g)
    z = (ref_aucs[0] - ref_aucs[1]) / math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert t.z == pytest.approx(z, rel=1e-9) and t.p_value == pytest.approx(2 * norm.sf(abs(z)), rel=1e-9)
    # one scan per patient: exactly DeLong's (pROC's) covariance
    _, plain = delong_covariance(y, np.stack([a, b]))
    single = delong_covariance(y, np.stack([a, b]), np.arange(y.size))[1]
    np.testing.assert_allclose(single, plain, rtol=1e-12)


def test_clustered_variance_agrees_with_the_patient_bootstrap():
    from medres.metrics import patient_bootstrap

    rng = np.random.default_rng(5)
    k = 400
    g = np.repeat(np.arange(k), rng.integers(1, 4, k))
    y = (g < 150).astype(int)
    s = 1.2 * y + 0.8 * rng.normal(size=k)[g] + 0.6 * rng.normal(size=g.size)
    clustered = delong_roc_ci(y, s, groups=g)
    boot = patient_bootstrap("auroc", y, s, g, n_resamples=3000, seed=0)
    assert clustered.variance == pytest.approx(boot.var(ddof=1), rel=0.12)
    assert clustered.variance > 1.3 * delong_roc_ci(y, s).variance  # scans are not independent here
    assert clustered.ci_method == "DeLong Wald, Obuchowski clustered"


def test_score_interval_does_not_collapse_at_perfect_separation():
    from medres.metrics.delong import auroc_score_interval, hanley_mcneil_variance

    y = np.r_[np.zeros(12), np.ones(12)].astype(int)
    s = np.r_[np.linspace(0, 0.4, 12), np.linspace(0.6, 1, 12)]
    assert delong_roc_ci(y, s).ci_low == 1  # DeLong's Wald interval collapses here
    r = auroc_score_interval(y, s)
    z = norm.ppf(0.975)
    assert r.auroc == 1 and r.ci_high == 1 and 0.7 < r.ci_low < 0.95
    assert (1 - r.ci_low) ** 2 == pytest.approx(z * z * hanley_mcneil_variance(r.ci_low, 12, 12), rel=1e-8)
    # three scans per patient: only 4 + 4 patients, a wider interval on the patients' counts
    c = auroc_score_interval(y, s, np.repeat(np.arange(8), 3))
    assert c.ci_low < r.ci_low and c.n_pos_effective == 4 and c.n_neg_effective == 4


def test_score_interval_inside_the_unit_interval_and_around_the_estimate():
    from medres.metrics.delong import AurocInterval, auroc_score_interval, hanley_mcneil_variance

    y, a, _, g = clustered_sample(3, patients=40)
    r = auroc_score_interval(y, a, g)
    assert 0 < r.ci_low < r.auroc < r.ci_high < 1 and r.design_effect >= 1
    assert r.ci_method == AurocInterval.ci_method
    t = float(student_t_quantile(min(r.n_pos_patients, r.n_neg_patients) - 1))
    for bound in (r.ci_low, r.ci_high):  # both ends solve the score equation
        assert (r.auroc - bound) ** 2 == pytest.approx(
            t * t * hanley_mcneil_variance(bound, r.n_pos_effective, r.n_neg_effective), rel=1e-7)
    # Hanley and McNeil's Q1 / Q2 form
    q1, q2, auc = 0.8 / 1.2, 2 * 0.64 / 1.8, 0.8
    ref = (auc * (1 - auc) + 9 * (q1 - auc**2) + 19 * (q2 - auc**2)) / (10 * 20)
    assert hanley_mcneil_variance(0.8, 10, 20) == pytest.approx(ref, rel=1e-12)


def student_t_quantile(df: int) -> float:
    from scipy.stats import t

    return t.ppf(0.975, df)
