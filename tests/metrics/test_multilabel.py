"""Multi-label metrics against scikit-learn's macro/micro averages and the single-label bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medres.errors import DataError
from medres.metrics import (
    RECORD_COLUMNS,
    UndefinedMetricWarning,
    cooccurrence,
    delong_roc_ci,
    multilabel_metrics,
    multilabel_records,
    patient_bootstrap,
    patient_bootstrap_ci,
)

LABELS = ("opacity", "effusion", "cardiomegaly")


def _cohort(seed: int, patients: int = 50, missing: float = 0.0):
    """Patients with 1-2 scans; three labels of different prevalence; scores correlated within a patient."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(patients) * 3 + 100, rng.integers(1, 3, patients))
    y = (rng.random((g.size, 3)) < [0.3, 0.15, 0.5]).astype(float)
    _, idx = np.unique(g, return_inverse=True)
    s = 1.2 * y + 0.5 * rng.normal(size=(patients, 3))[idx] + rng.normal(size=y.shape)
    s = np.round(s, 1)  # ties
    if missing:
        y[rng.random(y.shape) < missing] = np.nan
    return y, s, g


def test_macro_and_micro_equal_sklearn():
    y, s, g = _cohort(0)
    res = multilabel_metrics(y, s, g, labels=LABELS, n_resamples=200)
    assert res.macro_auroc.estimate == pytest.approx(skm.roc_auc_score(y, s, average="macro"), rel=1e-12)
    assert res.micro_auroc.estimate == pytest.approx(skm.roc_auc_score(y, s, average="micro"), rel=1e-12)
    assert res.macro_average_precision.estimate == pytest.approx(
        skm.average_precision_score(y, s, average="macro"), rel=1e-12)
    assert res.micro_average_precision.estimate == pytest.approx(
        skm.average_precision_score(y, s, average="micro"), rel=1e-12)
    for j, lab in enumerate(res.per_label):
        assert lab.auroc.estimate == pytest.approx(skm.roc_auc_score(y[:, j], s[:, j]), rel=1e-12)
        assert lab.average_precision.estimate == pytest.approx(
            skm.average_precision_score(y[:, j], s[:, j]), rel=1e-12)
        assert lab.prevalence.estimate == pytest.approx(y[:, j].mean())


def test_unknown_cells_are_left_out_per_label_and_counted():
    y, s, g = _cohort(1, patients=80, missing=0.15)
    s[np.isnan(y)] = np.nan  # no score needed where the label is unknown
    res = multilabel_metrics(y, s, g, labels=LABELS, n_resamples=200)
    known = ~np.isnan(y)
    for j, lab in enumerate(res.per_label):
        rows = known[:, j]
        assert (lab.n, lab.n_missing, lab.n_pos) == (rows.sum(), (~rows).sum(), y[rows, j].sum())
        assert lab.auroc.estimate == pytest.approx(skm.roc_auc_score(y[rows, j], s[rows, j]), rel=1e-12)
        dl = delong_roc_ci(y[rows, j], s[rows, j], groups=g[rows])
        assert (lab.auroc_delong.ci_low, lab.auroc_delong.ci_high) == (dl.ci_low, dl.ci_high)
    assert res.micro_auroc.estimate == pytest.approx(skm.roc_auc_score(y[known], s[known]), rel=1e-12)
    assert res.micro_average_precision.estimate == pytest.approx(
        skm.average_precision_score(y[known], s[known]), rel=1e-12)


def test_labels_macro_and_micro_share_one_bootstrap_draw():
    """Same seed and patients: each label's interval is the single-label bootstrap's, and the macro
    interval is the percentile interval of the mean of those same resamples."""
    y, s, g = _cohort(2)
    res = multilabel_metrics(y, s, g, labels=LABELS, n_resamples=300, seed=5)
    dists = []
    for j, lab in enumerate(res.per_label):
        ref = patient_bootstrap_ci("auroc", y[:, j], s[:, j], g, n_resamples=300, seed=5)
        assert (lab.auroc.ci_low, lab.auroc.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-12)
        dists.append(patient_bootstrap("auroc", y[:, j], s[:, j], g, n_resamples=300, seed=5))
    macro = np.mean(dists, axis=0)
    macro = macro[np.isfinite(macro)]
    lo, hi = np.quantile(macro, [0.025, 0.975])
    assert (res.macro_auroc.ci_low, res.macro_auroc.ci_high) == pytest.approx((lo, hi), rel=1e-12)
    rows = np.repeat(g, 3)  # micro: the ravelled cells keep their row's patient
    ref = patient_bootstrap_ci("average_precision", y.ravel(), s.ravel(), rows, n_resamples=300, seed=5)
    got = res.micro_average_precision
    assert (got.ci_low, got.ci_high) == pytest.approx((ref.ci_low, ref.ci_high), rel=1e-12)


def test_cooccurrence_counts_and_conditional_prevalence_by_hand():
    nan = np.nan
    y = np.array([[1, 1, 0], [1, 0, nan], [0, 1, 1], [1, 1, 1], [nan, 1, 0]])
    co = cooccurrence(y, labels=("a", "b", "c"))
    np.testing.assert_array_equal(co.both_positive, [[3, 2, 1], [2, 4, 2], [1, 2, 2]])
    np.testing.assert_array_equal(co.both_known, [[4, 4, 3], [4, 5, 4], [3, 4, 4]])
    # P(b | a): rows 0, 1, 3 are a-positive with b known, b positive in 0 and 3
    assert co.conditional[0, 1] == pytest.approx(2 / 3)
    # P(c | a): a-positive rows with c known are 0 and 3, c positive in 3
    assert co.conditional[0, 2] == pytest.approx(1 / 2)
    assert co.conditional[2, 0] == pytest.approx(1 / 2)  # c-positive rows 2, 3: a positive in 3
    np.testing.assert_array_equal(np.diag(co.conditional), [1, 1, 1])
    rows = co.rows()
    assert {"label": "b", "given": "a", "n_both_known": 4, "n_both_positive": 2,
            "p_given": pytest.approx(2 / 3)} in rows


def test_a_label_with_one_class_leaves_the_macro_undefined_with_its_name():
    y, s, g = _cohort(3)
    y[:, 1] = 0
    with pytest.warns(UndefinedMetricWarning):
        res = multilabel_metrics(y, s, g, labels=LABELS, n_resamples=100)
    assert math.isnan(res.per_label[1].auroc.estimate)
    assert math.isnan(res.macro_auroc.estimate)
    assert "effusion" in res.macro_auroc.reason
    assert math.isfinite(res.micro_auroc.estimate)


def test_records_follow_the_long_format():
    y, s, g = _cohort(4, missing=0.1)
    res = multilabel_metrics(y, s, g, labels=LABELS, n_resamples=100)
    rows = multilabel_records(res, scope="oof", head="findings")
    assert all(list(r) == list(RECORD_COLUMNS) for r in rows)
    assert {r["class"] for r in rows} == {*LABELS, "macro", "micro"}
    assert {r["head"] for r in rows} == {"findings"}
    micro = [r for r in rows if r["class"] == "micro"]
    assert {r["metric"] for r in micro} == {"auroc", "average_precision"}
    assert micro[0]["n"] == int((~np.isnan(y)).sum())
    assert "unknown left out" in micro[0]["note"]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows)


def test_bad_labels_and_scores_are_data_errors():
    y, s, g = _cohort(5)
    bad = y.copy()
    bad[4, 2] = 2
    with pytest.raises(DataError, match=r"'cardiomegaly' holds values other than 0, 1 or NaN \(rows \[4\]"):
        multilabel_metrics(bad, s, g, labels=LABELS)
    s[7, 0] = np.nan
    with pytest.raises(DataError, match=r"scores of label 'opacity' are NaN.*rows \[7\]"):
        multilabel_metrics(y, s, g, labels=LABELS)
    with pytest.raises(DataError, match="2 label names for 3"):
        multilabel_metrics(y, s, g, labels=LABELS[:2])
