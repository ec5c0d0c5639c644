"""Temperature and Platt scaling (medres.metrics.calibration.fit_calibration) against independent fits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import log_softmax, softmax
from sklearn.linear_model import LogisticRegression

from medres.metrics.calibration import apply_calibration, ece, fit_calibration, weighted_ece


def overconfident(n: int, k: int = 2, t_true: float = 2.5, seed: int = 0):
    """Logits whose labels are drawn from softmax(z / t_true): the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (n, k))
    p = softmax(z / t_true, axis=1)
    y = np.array([rng.choice(k, p=row) for row in p])
    return z, y


def test_temperature_recovers_the_generating_temperature_and_the_grid_optimum():
    z, y = overconfident(4000, k=3)
    cal = fit_calibration(z, y, "temperature")
    assert cal["method"] == "temperature" and cal["n"] == 4000
    assert cal["temperature"] == pytest.approx(2.5, rel=0.1)
    grid = np.linspace(0.5, 6, 2201)
    nll = [-log_softmax(z / t, axis=1)[np.arange(len(y)), y].mean() for t in grid]
    assert cal["temperature"] == pytest.approx(grid[int(np.argmin(nll))], abs=5e-3)
    assert cal["nll_after"] < cal["nll_before"]
    p = apply_calibration(z, cal)
    np.testing.assert_allclose(p, softmax(z / cal["temperature"], axis=1), atol=1e-12)
    assert (p.argmax(1) == z.argmax(1)).all()  # temperature keeps the decision
    # log-probabilities (logits up to a per-case constant) give the same fit
    again = fit_calibration(log_softmax(z, axis=1) + 7.0, y, "temperature")
    assert again["temperature"] == pytest.approx(cal["temperature"], rel=1e-5)


def test_platt_matches_scikit_learn_logistic_regression_on_a_large_sample():
    z, y = overconfident(20000, seed=1)
    cal = fit_calibration(z, y, "platt")
    d = (z[:, 1] - z[:, 0])[:, None]
    ref = LogisticRegression(C=1e6, tol=1e-10, max_iter=1000).fit(d, y)
    # Platt's smoothed targets move the fit by O(1/N) only
    assert cal["a"] == pytest.approx(ref.coef_[0, 0], abs=0.01)
    assert cal["b"] == pytest.approx(ref.intercept_[0], abs=0.02)
    np.testing.assert_allclose(apply_calibration(z, cal)[:, 1], ref.predict_proba(d)[:, 1], atol=5e-3)
    assert apply_calibration(z, cal).sum(1) == pytest.approx(np.ones(len(z)))


def test_one_class_and_none_keep_the_identity_and_say_why():
    z, _ = overconfident(10)
    cal = fit_calibration(z, np.zeros(10, int), "temperature")
    assert cal["method"] == "none" and "fewer than two classes" in cal["note"]
    np.testing.assert_allclose(apply_calibration(z, cal), softmax(z, axis=1))
    assert fit_calibration(z, np.r_[np.zeros(5, int), np.ones(5, int)], "none")["method"] == "none"
    with pytest.raises(ValueError, match="Platt scaling is binary"):
        fit_calibration(np.zeros((4, 3)), [0, 1, 2, 0], "platt")
    with pytest.raises(ValueError, match="class indices"):
        fit_calibration(np.zeros((2, 2)), [0, 2])


def test_separable_data_reach_the_bound_and_say_so():
    z = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    cal = fit_calibration(z, [1, 0, 1, 0], "temperature")
    assert cal["temperature"] == pytest.approx(0.05, rel=1e-2) and "bound" in cal["note"]


def test_weighted_ece_is_ece_on_repeated_cases():
    rng = np.random.default_rng(3)
    y, p = rng.integers(0, 2, 50), rng.uniform(size=50)
    w = rng.integers(0, 4, 50)
    assert weighted_ece(y, p) == pytest.approx(ece(y, p))
    assert weighted_ece(y, p, w) == pytest.approx(ece(np.repeat(y, w), np.repeat(p, w)))


def platt_reference_fits(d: np.ndarray, y: np.ndarray) -> list[tuple[float, float]]:
    """The maximum-likelihood fit of sigmoid(a d + b) to Platt's smoothed targets, two independent ways:
    statsmodels' binomial GLM on the fractional targets, and scikit-learn's unpenalised logistic
    regression (C=inf) on every case twice (label 1 with weight t, label 0 with weight 1 - t)."""
    import statsmodels.api as sm

    n_pos, n_neg = y.sum(), y.size - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    glm = sm.GLM(t, sm.add_constant(d), family=sm.families.Binomial()).fit(tol=1e-14)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(
        np.r_[d, d][:, None], np.r_[np.ones(d.size), np.zeros(d.size)], sample_weight=np.r_[t, 1 - t])
    return [(glm.params[1], glm.params[0]), (lr.coef_[0, 0], lr.intercept_[0])]


@pytest.mark.parametrize(("n", "seed"), [(40, 4), (500, 5)])
def test_platt_is_the_maximum_likelihood_fit(n, seed):
    z, y = overconfident(n, seed=seed)
    cal = fit_calibration(z, y, "platt")
    d = z[:, 1] - z[:, 0]
    for a, b in platt_reference_fits(d, y):
        assert cal["a"] == pytest.approx(a, abs=1e-6) and cal["b"] == pytest.approx(b, abs=1e-6)
    assert cal["note"] == ""


def test_upper_temperature_bound_means_no_signal():
    rng = np.random.default_rng(6)
    z = rng.normal(0, 8, (60, 2))
    y = (z[:, 1] < z[:, 0]).astype(int)  # the logits contradict the labels
    cal = fit_calibration(z, y, "temperature")
    assert cal["temperature"] == pytest.approx(20, rel=1e-2) and "no signal" in cal["note"]
    sep = fit_calibration(np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]), [1, 0, 1, 0])
    assert "lower bound" in sep["note"] and "separate" in sep["note"]


def test_recalibration_is_kept_only_on_evidence():
    from scipy.stats import chi2

    from medres.metrics.calibration import choose_calibration

    # strongly overconfident, 300 patients: the fit is kept, unchanged
    z, y = overconfident(300, seed=7, t_true=3.0)
    kept = choose_calibration(z, y, np.arange(300))
    fit = fit_calibration(z, y)
    assert kept["method"] == "temperature" and kept["evidence"]["kept"]
    assert kept["temperature"] == fit["temperature"]
    lr = 2 * 300 * (fit["nll_before"] - fit["nll_after"])
    assert kept["evidence"]["lr_statistic"] == pytest.approx(lr)
    assert kept["evidence"]["p_value"] == pytest.approx(chi2.sf(lr, 1)) and kept["evidence"]["p_value"] < 0.05
    # well calibrated, 20 inner-validation patients: a temperature fitted there is noise; the identity
    # is kept in most draws, with the candidate and the evidence recorded
    dropped = [choose_calibration(*overconfident(20, seed=s, t_true=1.0), np.arange(20)) for s in range(20)]
    assert sum(c["method"] == "none" for c in dropped) >= 16
    c = next(c for c in dropped if c["method"] == "none")
    assert c["candidate"]["method"] == "temperature" and "not kept" in c["note"]
    assert c["evidence"]["patients"] == 20 and c["evidence"]["p_value"] >= 0.05
    np.testing.assert_allclose(apply_calibration(z[:20], c), softmax(z[:20], axis=1))
    # patients, not scans: 3 identical scans per patient carry one scan's evidence
    zz, yy = overconfident(40, seed=8, t_true=1.8)
    once = choose_calibration(zz, yy, np.arange(40))
    thrice = choose_calibration(np.repeat(zz, 3, axis=0), np.repeat(yy, 3), np.repeat(np.arange(40), 3))
    assert thrice["evidence"]["design_effect"] == 3 and thrice["evidence"]["patients"] == 40
    assert thrice["evidence"]["lr_statistic"] == pytest.approx(once["evidence"]["lr_statistic"], rel=1e-4)
    # Platt: two parameters against a = 1, b = 0
    platt = choose_calibration(z, y, None, "platt")
    assert platt["method"] == "platt" and platt["evidence"]["df"] == 2
    json.dumps(thrice)  # plain types: it goes into calibration.json and the checkpoint


def test_the_evidence_rule_beats_a_tiny_fit_out_of_sample():
    """Why the rule exists: on 20 well-calibrated patients a fitted temperature, applied to new cases,
    is on average worse than no recalibration, and the rule's choice is better than always fitting."""
    from medres.metrics.calibration import choose_calibration

    big_z, big_y = overconfident(20000, seed=99, t_true=1.0)
    rows = np.arange(big_y.size)
    loss_raw = -log_softmax(big_z, axis=1)[rows, big_y].mean()
    fitted, chosen = [], []
    for s in range(12):
        z, y = overconfident(20, seed=100 + s, t_true=1.0)
        fitted.append(-np.log(apply_calibration(big_z, fit_calibration(z, y))[rows, big_y]).mean())
        chosen.append(-np.log(apply_calibration(big_z, choose_calibration(z, y))[rows, big_y]).mean())
    assert np.mean(fitted) > loss_raw
    assert np.mean(chosen) < np.mean(fitted)
