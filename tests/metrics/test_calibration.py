"""Calibration and decision-curve metrics against docs/reference.md §5, scikit-learn and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from medres.metrics import UndefinedMetricWarning
from medres.metrics.calibration import brier, calibration_intercept_slope, ece, reliability_curve
from medres.metrics.decision import decision_curve

P_REF = np.array([0.22, 0.48, 0.49, 0.96, 0.55, 0.64, 0.78, 0.82, 0.34, 0.87])
Y_REF = np.array([0, 1, 0, 0, 1, 1, 1, 1, 1, 0])


def test_reference_values():
    assert ece(Y_REF, P_REF, n_bins=2) == pytest.approx(0.109)
    assert ece(Y_REF, P_REF, n_bins=5) == pytest.approx(0.315)
    assert ece(Y_REF, P_REF, n_bins=10) == pytest.approx(0.359)
    assert brier(Y_REF, P_REF) == pytest.approx(0.30859)
    assert brier([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3]) == pytest.approx(0.0375)


@pytest.mark.parametrize("seed", range(3))
def test_brier_and_reliability_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(300) ** 2
    p[:3] = [0.0, 0.5, 1.0]  # bin edges
    y = (rng.random(300) < p).astype(int)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))
    curve = reliability_curve(y, p, n_bins=8)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8, strategy="uniform")
    filled = curve.counts > 0
    np.testing.assert_allclose(curve.observed[filled], prob_true)
    np.testing.assert_allclose(curve.mean_predicted[filled], prob_pred)
    assert curve.counts.sum() == 300 and curve.n_bins == 8 and curve.bin_edges.shape == (9,)
    manual = np.nansum(curve.counts / 300 * np.abs(curve.observed - curve.mean_predicted))
    assert curve.ece == pytest.approx(manual)


def test_intercept_and_slope_recover_a_known_miscalibration():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20000)
    y = (rng.random(x.size) < 1 / (1 + np.exp(-(x + 0.5)))).astype(int)  # true risk: logit x + 0.5
    fair = calibration_intercept_slope(y, 1 / (1 + np.exp(-x)))
    assert fair.intercept == pytest.approx(0.5, abs=0.06) and fair.slope == pytest.approx(1, abs=0.05)
    extreme = calibration_intercept_slope(y, 1 / (1 + np.exp(-2 * x)))  # over-confident predictions
    assert extreme.slope == pytest.approx(0.5, abs=0.03)


def test_intercept_and_slope_match_independent_fits():
    rng = np.random.default_rng(1)
    p = rng.uniform(0.05, 0.95, 400)
    y = (rng.random(400) < p**1.5).astype(int)
    fit = calibration_intercept_slope(y, p)
    logit = np.log(p / (1 - p))
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10000).fit(logit[:, None], y)
    assert fit.slope == pytest.approx(ref.coef_[0, 0], abs=1e-5)

    def nll(a):  # calibration-in-the-large: logit(p) as an offset
        eta = a + logit
        return np.sum(np.logaddexp(0, eta) - y * eta)

    assert fit.intercept == pytest.approx(minimize_scalar(nll).x, abs=1e-5)


def test_calibration_fit_undefined_cases():
    with pytest.warns(UndefinedMetricWarning):
        one = calibration_intercept_slope([1, 1, 1], [0.2, 0.5, 0.7])
    assert math.isnan(one.slope) and "one class" in one.reason
    separated = calibration_intercept_slope([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert math.isnan(separated.slope) and "separated" in separated.reason


def test_decision_curve_closed_forms():
    rng = np.random.default_rng(2)
    y = (rng.random(500) < 0.3).astype(int)
    p = np.clip(0.3 + 0.4 * (y - 0.3) + 0.2 * rng.normal(size=500), 0, 1)
    dc = decision_curve(y, p, thresholds=[0.1, 0.2, 0.5])
    for t, nb in zip(dc.thresholds, dc.model):
        treated = p >= t
        tp, fp = np.sum(treated & (y == 1)), np.sum(treated & (y == 0))
        assert nb == pytest.approx(tp / 500 - fp / 500 * t / (1 - t))
    prev = y.mean()
    np.testing.assert_allclose(dc.treat_all, prev - (1 - prev) * dc.thresholds / (1 - dc.thresholds))
    assert np.all(dc.treat_none == 0)
    perfect = decision_curve(y, y.astype(float))  # a perfect model's net benefit is the prevalence
    np.testing.assert_allclose(perfect.model, prev)
    assert perfect.thresholds.shape == (99,)
    with pytest.raises(ValueError, match="strictly between"):
        decision_curve(y, p, thresholds=[0.0, 0.5])
