"""Temperature and Platt scaling (medres.metrics.calibration.fit_calibration) against independent fits."""

from __future__ import annotations

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
