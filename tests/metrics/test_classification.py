"""Classification metrics against scikit-learn and docs/reference.md §5 values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medres.errors import DataError
from medres.metrics import (
    UndefinedMetricWarning,
    auroc,
    average_precision,
    candidate_thresholds,
    choose_threshold,
    confusion_counts,
    macro_average,
    metrics_at_threshold,
    one_vs_rest,
    one_vs_rest_threshold_metrics,
    prevalence,
)


def _sample(seed: int, n: int = 60, tied: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = y * 0.7 + rng.normal(size=n)
    if tied:
        s = np.round(s, 0)  # a handful of levels, many ties
    return y, s


def test_reference_values():
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333, abs=1e-4)
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 8.3]) == pytest.approx(0.875)  # the tie counts 1/2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_auroc_and_ap_match_sklearn(seed, tied):
    y, s = _sample(seed, tied=tied)
    assert auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert prevalence(y) == pytest.approx(y.mean())


def test_one_class_is_nan_with_reason_never_half():
    with pytest.warns(UndefinedMetricWarning, match="only one class"):
        assert math.isnan(auroc([1, 1, 1], [0.2, 0.5, 0.9]))
    with pytest.warns(UndefinedMetricWarning, match="no positive"):
        assert math.isnan(average_precision([0, 0], [0.2, 0.5]))


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="binary"):
        auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(DataError, match="NaN"):
        auroc([0, 1, 1], [0.1, np.nan, 0.3])
    with pytest.raises(DataError, match="shape"):
        auroc([0, 1, 1], [0.1, 0.3])


@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_match_sklearn(seed):
    y, s = _sample(seed, n=80)
    t = float(np.median(s))
    m = metrics_at_threshold(y, s, t)
    pred = (s >= t).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    assert (m.counts.tp, m.counts.fp, m.counts.tn, m.counts.fn) == (tp, fp, tn, fn)
    assert m.sensitivity == pytest.approx(skm.recall_score(y, pred))
    assert m.specificity == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m.ppv == pytest.approx(skm.precision_score(y, pred))
    assert m.npv == pytest.approx(skm.precision_score(y, pred, pos_label=0))
    assert m.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m.mcc == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert m.f1 == pytest.approx(skm.f1_score(y, pred))
    lr_pos, lr_neg = skm.class_likelihood_ratios(y, pred)
    assert m.lr_positive == pytest.approx(lr_pos)
    assert m.lr_negative == pytest.approx(lr_neg)
    assert m.reasons == {}


def test_division_by_zero_is_explained():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    nobody = metrics_at_threshold(y, s, 0.9)  # nothing called positive
    assert math.isnan(nobody.ppv) and "no case called positive" in nobody.reasons["ppv"]
    assert math.isnan(nobody.mcc) and "mcc" in nobody.reasons  # scikit-learn would say 0
    assert math.isnan(nobody.lr_positive) and "0/0" in nobody.reasons["lr_positive"]
    perfect = metrics_at_threshold(y, s, 0.25)
    assert perfect.lr_positive == math.inf and "no false positives" in perfect.reasons["lr_positive"]
    assert perfect.lr_negative == 0.0
    everyone = metrics_at_threshold(y, s, 0.0)
    assert math.isnan(everyone.npv) and math.isnan(everyone.lr_negative)
    only_neg = metrics_at_threshold([0, 0, 0], [0.1, 0.5, 0.7], 0.4)
    assert math.isnan(only_neg.sensitivity) and only_neg.reasons["sensitivity"] == "no positive cases"
    assert only_neg.specificity == pytest.approx(1 / 3)


def _brute_force(y, s, method, target=0.9, cost_ratio=1.0):
    """Best validation objective over every cut between sorted scores (independent of the code)."""
    best = -math.inf
    for t in np.concatenate([[-np.inf], np.unique(s), [np.inf]]):
        c = confusion_counts(y, (s > t).astype(int))
        sens, spec = c.tp / (c.tp + c.fn), c.tn / (c.tn + c.fp)
        value = {"youden": sens + spec - 1,
                 "sensitivity": spec if sens >= target else -math.inf,
                 "specificity": sens if spec >= target else -math.inf,
                 "cost": -(cost_ratio * c.fn + c.fp)}[method]
        best = max(best, value)
    return best


@pytest.mark.parametrize("method", ["youden", "sensitivity", "specificity", "cost"])
def test_choose_threshold_is_optimal_on_validation_and_applied_unchanged(method):
    y_val, p_val = _sample(10, n=120)
    y_test, p_test = _sample(11, n=90)
    t = choose_threshold(y_val, p_val, method, target=0.85, cost_ratio=3.0)
    val = metrics_at_threshold(y_val, p_val, t)
    got = {"youden": val.sensitivity + val.specificity - 1,
           "sensitivity": val.specificity if val.sensitivity >= 0.85 else -math.inf,
           "specificity": val.sensitivity if val.specificity >= 0.85 else -math.inf,
           "cost": -(3.0 * val.counts.fn + val.counts.fp)}[method]
    assert got == pytest.approx(_brute_force(y_val, p_val, method, 0.85, 3.0))
    assert not np.isin(t, p_val)  # halfway between validation scores, not on one
    held_out = metrics_at_threshold(y_test, p_test, t)
    assert held_out.threshold == t
    pred = (p_test >= t).astype(int)
    assert held_out.sensitivity == pytest.approx(skm.recall_score(y_test, pred))


def test_youden_matches_sklearn_roc_curve():
    y, s = _sample(3, n=200)
    fpr, tpr, _ = skm.roc_curve(y, s)
    t = choose_threshold(y, s, "youden")
    m = metrics_at_threshold(y, s, t)
    assert m.sensitivity + m.specificity - 1 == pytest.approx(np.max(tpr - fpr))
    thresholds, sens, spec = candidate_thresholds(y, s)
    assert np.all(np.diff(thresholds) > 0) and sens[0] == 1 and spec[-1] == 1


def test_one_vs_rest_and_macro_match_sklearn():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    per_class = one_vs_rest(auroc, y, p)
    for c in range(3):
        assert per_class[c] == pytest.approx(skm.roc_auc_score(y == c, p[:, c]))
    assert macro_average(per_class) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    ap = one_vs_rest(average_precision, y, p)
    assert macro_average(ap) == pytest.approx(
        skm.average_precision_score(np.eye(3)[y], p, average="macro"))
    y_missing = np.where(y == 2, 0, y)  # class 2 absent: its AUROC and the macro are undefined
    with pytest.warns(UndefinedMetricWarning):
        values = one_vs_rest(auroc, y_missing, p)
        assert math.isnan(values[2]) and math.isnan(macro_average(values))


def test_multiclass_threshold_metrics_match_sklearn():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.6, y, rng.integers(0, 4, 200))
    per_class = one_vs_rest_threshold_metrics(y, pred, 4)
    np.testing.assert_allclose([m.sensitivity for m in per_class], skm.recall_score(y, pred, average=None))
    np.testing.assert_allclose([m.ppv for m in per_class], skm.precision_score(y, pred, average=None))
    assert macro_average([m.f1 for m in per_class]) == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert macro_average([m.sensitivity for m in per_class]) == pytest.approx(
        skm.balanced_accuracy_score(y, pred))
    with pytest.raises(DataError, match="class indices"):
        one_vs_rest_threshold_metrics(y, pred, 3)
