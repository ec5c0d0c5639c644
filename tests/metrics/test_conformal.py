"""Split conformal sets: the set rule by hand, coverage by simulation, Mondrian per class."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medres.errors import DataError
from medres.metrics.conformal import (
    class_scores,
    conformal_quantile,
    fit_conformal,
    prediction_sets,
    set_coverage,
)
from medres.metrics.proportions import clustered_proportion_interval


def test_quantile_rank_is_the_finite_sample_corrected_one():
    scores = [0.5, 0.1, 0.9, 0.3, 0.7]  # sorted: 0.1 0.3 0.5 0.7 0.9
    # n = 5, alpha = 0.3: ceil(6 * 0.7) = ceil(4.2) = 5 -> the 5th smallest
    assert conformal_quantile(scores, 0.3) == 0.9
    # alpha = 0.5: ceil(6 * 0.5) = 3 -> the 3rd smallest (an exact integer rank stays put)
    assert conformal_quantile(scores, 0.5) == 0.5
    # alpha = 0.1: ceil(5.4) = 6 > n -> infinite: every class in every set
    assert conformal_quantile(scores, 0.1) == math.inf
    # numpy's empirical quantile (the inverse of the empirical CDF) at the corrected level
    for alpha in (0.2, 0.34, 0.5, 0.6):
        level = math.ceil(6 * (1 - alpha)) / 5
        assert conformal_quantile(scores, alpha) == np.quantile(scores, level, method="inverted_cdf")


def test_lac_sets_by_hand():
    cal = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.55, 0.45]])
    y = np.array([0, 0, 1, 1, 1])
    # true-class LAC scores 1 - p_y: 0.1, 0.4, 0.3, 0.2, 0.55; alpha 0.4: ceil(6 * 0.6) = 4th smallest = 0.4
    fit = fit_conformal(cal, y, 0.4)
    assert fit.thresholds.tolist() == [0.4, 0.4]
    new = np.array([[0.65, 0.35], [0.5, 0.5], [0.62, 0.38], [0.05, 0.95]])
    # class y is in the set iff 1 - p_y <= 0.4; (0.5, 0.5) gets the empty set
    expected = [[True, False], [False, False], [True, False], [False, True]]
    assert prediction_sets(new, fit).tolist() == expected


def test_aps_scores_by_hand():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])
    # APS: mass of the classes ranked above y plus p_y (ties are not above each other)
    expected = [[0.7, 0.9, 1.0], [1.0, 0.6, 0.9], [0.7, 0.7, 0.4]]
    np.testing.assert_allclose(class_scores(p, "aps"), expected)
    fit = fit_conformal(p, [0, 1, 2], 0.3, score="aps")  # ceil(4 * 0.7) = 3rd of (0.7, 0.6, 0.4)
    assert fit.thresholds[0] == pytest.approx(0.7)
    assert prediction_sets(p, fit).tolist() == [[True, False, False], [False, True, False],
                                                [True, True, True]]


def _draw(rng, n, shift=0.0):
    """Three classes; a model whose probabilities are a noisy softmax of the true class."""
    y = rng.choice(3, size=n, p=[0.5, 0.35, 0.15])
    logits = rng.normal(0, 1.0, (n, 3))
    logits[np.arange(n), y] += 1.2 - shift * (y == 2)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("score", ["lac", "aps"])
def test_split_coverage_on_exchangeable_data(score):
    rng = np.random.default_rng(20261207)
    alpha, n_cal, draws = 0.1, 45, 300
    covered = []
    for _ in range(draws):
        pc, yc = _draw(rng, n_cal)
        pt, yt = _draw(rng, 200)
        sets = prediction_sets(pt, fit_conformal(pc, yc, alpha, score=score))
        covered.append(sets[np.arange(200), yt].mean())
    mean = float(np.mean(covered))
    assert mean >= 1 - alpha
    if score == "lac":  # continuous scores: E coverage = ceil((n + 1)(1 - alpha)) / (n + 1) = 42/46 exactly
        assert mean == pytest.approx(42 / 46, abs=0.008)  # without the correction it would be 41/46 < 0.9


def test_mondrian_covers_each_class_where_split_does_not():
    rng = np.random.default_rng(7)
    alpha, draws = 0.1, 200
    per = {"split": [], "mondrian": []}
    for _ in range(draws):
        pc, yc = _draw(rng, 300, shift=1.5)  # the rare class 2 is poorly ranked
        pt, yt = _draw(rng, 300, shift=1.5)
        for kind in per:
            fit = fit_conformal(pc, yc, alpha, mondrian=kind == "mondrian")
            sets = prediction_sets(pt, fit)
            per[kind].append([sets[yt == c, c].mean() for c in range(3)])
    split, mondrian = np.mean(per["split"], 0), np.mean(per["mondrian"], 0)
    se = np.std(per["mondrian"], 0) / math.sqrt(draws)  # Monte Carlo error of the mean coverage
    assert split[2] < 1 - alpha - 0.05  # marginal sets under-cover the hard class
    assert (mondrian + 3 * se >= 1 - alpha).all()  # class-conditional sets cover every class
    assert (mondrian - 3 * se <= 1 - alpha + 0.03).all()  # and not by making every set full


def test_mondrian_thresholds_are_per_class_quantiles():
    rng = np.random.default_rng(3)
    p, y = _draw(rng, 60)
    fit = fit_conformal(p, y, 0.2, mondrian=True)
    for c in range(3):
        s = 1 - p[y == c, c]
        n = s.size
        assert fit.n_calibration[c] == n
        assert fit.thresholds[c] == np.quantile(s, math.ceil((n + 1) * 0.8) / n, method="inverted_cdf")


def test_too_few_calibration_cases_give_full_sets_and_say_so():
    fit = fit_conformal([[0.8, 0.2], [0.3, 0.7]], [0, 1], 0.1)
    assert np.isinf(fit.thresholds).all() and "too few calibration cases" in fit.note
    assert prediction_sets([[0.99, 0.01]], fit).tolist() == [[True, True]]


def test_set_coverage_uses_the_clustered_proportion_interval():
    sets = np.array([[True, False], [True, True], [False, True], [False, True], [True, False]])
    y = np.array([0, 0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "c", "d"])
    cov = set_coverage(sets, y, groups, 0.9)
    ref = clustered_proportion_interval([1, 1, 0, 1, 0], groups, 0.9)
    c = cov.coverage
    assert (c.estimate, c.ci_low, c.ci_high) == (0.6, ref.ci_low, ref.ci_high)
    assert cov.mean_size == pytest.approx(6 / 5)


def test_bad_input_is_a_data_error():
    with pytest.raises(DataError, match="class indices"):
        fit_conformal([[0.5, 0.5]], [2], 0.1)
    with pytest.raises(DataError, match="alpha"):
        conformal_quantile([0.1], 1.5)
