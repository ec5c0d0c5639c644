"""Aggregation: operating points from inner validation, per-fold/pooled/across-fold records, subgroups."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from medres.config import load_config
from medres.metrics import choose_threshold
from medres.metrics.delong import AurocInterval, auroc_score_interval
from medres.metrics.proportions import clustered_proportion_interval
from medres.report import (
    across_fold_records,
    add_age_band,
    binary_task,
    classification_records,
    holdout_test_records,
    load_run,
    one_vs_rest_records,
    operating_points,
    segmentation_records,
    split_audit,
    subgroup_records,
)
from tests.report.synthetic_run import write_synthetic_run


@pytest.fixture(scope="module")
def run(synthetic_run):
    return load_run(synthetic_run)


@pytest.fixture(scope="module")
def op(run):
    task = binary_task(run.config)
    preds, thresholds = operating_points(run.predictions, run.inner_val, task)
    return task, preds, thresholds


def _get(recs, **kw):
    df = pd.DataFrame(recs)
    for k, v in kw.items():
        df = df[df[k] == v]
    return df


def test_thresholds_come_from_inner_validation_only(run, op):
    task, preds, thresholds = op
    for fold in range(3):
        val = run.inner_val[run.inner_val.fold == fold]
        held = run.predictions[run.predictions.fold == fold]
        expected = choose_threshold((val.y_true == 1).to_numpy(), val.p_nodule.to_numpy(), "youden")
        assert thresholds.set_index("fold").loc[fold, "threshold"] == expected
        # the held-out cases are called with that threshold, unchanged
        called = preds.loc[preds.fold == fold, "y_pred_op"].to_numpy()
        np.testing.assert_array_equal(called, (held.p_nodule.to_numpy() >= expected).astype(float))
    # and the inner-validation choice is not what held-out data would have given for every fold
    on_held = [
        choose_threshold((h.y_true == 1).to_numpy(), h.p_nodule.to_numpy())
        for _, h in run.predictions.groupby("fold")
    ]
    assert not np.allclose(on_held, thresholds["threshold"].to_numpy())


def test_pooled_and_fold_records_match_scikit_learn(run, op):
    task, preds, _ = op
    y = (preds.y_true == 1).to_numpy()
    recs = classification_records(preds, task, run.config, scope="pooled", with_delong=True)
    boot = _get(recs, metric="auroc", ci_method=AurocInterval.ci_method)
    assert boot["value"].item() == pytest.approx(roc_auc_score(y, preds.p_nodule), abs=1e-12)
    assert boot["ci_low"].item() < boot["value"].item() < boot["ci_high"].item()
    assert _get(recs, metric="average_precision")["value"].item() == pytest.approx(
        average_precision_score(y, preds.p_nodule), abs=1e-12
    )
    assert _get(recs, metric="brier")["value"].item() == pytest.approx(brier_score_loss(y, preds.p_nodule))
    delong = _get(recs, metric="auroc", ci_method="DeLong Wald, Obuchowski clustered")
    assert delong["value"].item() == pytest.approx(boot["value"].item())
    # pooled sensitivity applies each fold's own threshold
    called = preds.p_nodule >= preds.threshold
    sens = (called & y).sum() / y.sum()
    assert _get(recs, metric="sensitivity")["value"].item() == pytest.approx(sens)
    assert _get(recs, metric="prevalence")["n_pos"].item() == y.sum()

    fold_recs = []
    for f in range(3):
        part = preds[preds.fold == f]
        fold_recs += classification_records(part, task, run.config, scope="fold", fold=f)
        got = _get(fold_recs, fold=str(f), metric="auroc")["value"].item()
        assert got == pytest.approx(roc_auc_score(part.y_true == 1, part.p_nodule))
    across = across_fold_records(fold_recs)
    values = _get(fold_recs, metric="auroc")["value"].to_numpy()
    assert _get(across, scope="fold_mean", metric="auroc")["value"].item() == pytest.approx(values.mean())
    assert _get(across, scope="fold_sd", metric="auroc")["value"].item() == pytest.approx(values.std(ddof=1))


def test_intervals_count_patients_not_scans(run, op):
    """Duplicating every scan of a patient must not narrow an interval as if patients doubled."""
    task, preds, _ = op
    cfg = run.config
    doubled = pd.concat([preds, preds.assign(case_id=preds.case_id + "_copy")], ignore_index=True)
    base = pd.DataFrame(classification_records(preds, task, cfg, scope="pooled"))
    dup = pd.DataFrame(classification_records(doubled, task, cfg, scope="pooled"))
    for metric in ("auroc", "average_precision", "prevalence", "sensitivity", "specificity", "ppv", "npv"):
        b, d = base[base.metric == metric].iloc[0], dup[dup.metric == metric].iloc[0]
        assert d.ci_high - d.ci_low == pytest.approx(b.ci_high - b.ci_low, rel=0.25), metric
        assert b.ci_low < b.value or b.value == 0, metric
    # the AUROC interval is exactly medres.metrics' score interval, clustered by patient_id
    y = (preds.y_true == 1).to_numpy()
    ref = auroc_score_interval(y, preds.p_nodule.to_numpy(), preds.patient_id.to_numpy())
    row = base[base.metric == "auroc"].iloc[0]
    assert (row.ci_low, row.ci_high) == (ref.ci_low, ref.ci_high)
    by_scan = auroc_score_interval(y, preds.p_nodule.to_numpy(), None)
    assert (by_scan.ci_low, by_scan.ci_high) != (ref.ci_low, ref.ci_high)
    # sensitivity: Clopper-Pearson of the called positives among positive scans, on n / deff
    called = (preds.p_nodule >= preds.threshold).to_numpy()
    sens = clustered_proportion_interval(called[y].astype(int), preds.patient_id.to_numpy()[y])
    row = base[base.metric == "sensitivity"].iloc[0]
    assert (row.value, row.ci_low, row.ci_high) == (sens.estimate, sens.ci_low, sens.ci_high)
    assert row.ci_method == "Clopper-Pearson on n/deff (patient design effect)"


def test_perfect_separation_keeps_a_nonzero_interval(run, op):
    """A fold that separates perfectly: AUROC, AP, sensitivity and specificity 1, none of them [1, 1]."""
    task, preds, _ = op
    part = preds[preds.fold == 0].copy()
    y = (part.y_true == 1).to_numpy()
    part["p_nodule"] = np.where(y, 0.9, 0.1) + np.linspace(0, 0.05, len(part))
    part["y_pred_op"] = y.astype(float)
    recs = pd.DataFrame(classification_records(part, task, run.config, scope="fold", fold=0))
    for metric in ("auroc", "average_precision", "sensitivity", "specificity", "ppv", "npv"):
        r = recs[recs.metric == metric].iloc[0]
        assert r.value == 1 and r.ci_high == 1 and r.ci_low < 0.95, (metric, r.ci_low)
    # Clopper-Pearson of n/n at the patients' effective size: never narrower than the exact interval
    # of one observation per positive patient
    sens = recs[recs.metric == "sensitivity"].iloc[0]
    k = part.loc[y, "patient_id"].nunique()
    assert sens.ci_low <= beta.ppf(0.025, k, 1) + 1e-12


def test_subgroups_counts_and_not_estimable(run, op):
    task, preds, _ = op
    recs, missing = subgroup_records(preds, task, run.config)
    assert missing == []
    df = pd.DataFrame(recs)
    banded = add_age_band(preds)
    min_pos = run.config.evaluate.min_positives
    for col in ("site", "sex", "age_band", "smoker"):
        for level, part in banded.groupby(col):
            rows = df[df.subgroup == f"{col}={level}"]
            n_pos = int((part.y_true == 1).sum())
            assert set(rows.n) == {len(part)} and set(rows.n_pos) == {n_pos}
            auc = rows[rows.metric == "auroc"]["value"].item()
            if n_pos < min_pos or len(part) - n_pos < min_pos:
                assert math.isnan(auc)
                assert rows.note.str.startswith("not estimable").all()
            else:
                assert auc == pytest.approx(roc_auc_score(part.y_true == 1, part.p_nodule))
    assert df.note.str.startswith("not estimable").any()  # the synthetic age bands are small


def test_missing_subgroup_column_is_reported(run, op):
    task, preds, _ = op
    cfg = run.config.model_copy(deep=True)
    cfg.evaluate.subgroups = ["site", "smoking_pack_years"]
    _, missing = subgroup_records(preds, task, cfg)
    assert missing == ["subgroup column 'smoking_pack_years' is not in the predictions."]


def test_age_bands():
    df = add_age_band(pd.DataFrame({"age": ["057Y", "39", "", "80", "70.5"]}))
    assert df.age_band.tolist() == ["50-59", "<40", "missing", "80+", "70-79"]


def test_no_operating_point_without_inner_validation(run):
    task = binary_task(run.config)
    preds, thresholds = operating_points(run.predictions, run.inner_val.iloc[:0], task)
    assert thresholds.threshold.isna().all() and preds.y_pred_op.isna().all()
    assert thresholds.note.str.contains("no inner-validation predictions").all()
    recs = classification_records(preds, task, run.config, scope="pooled")
    assert math.isnan(_get(recs, metric="sensitivity")["value"].item())


def test_one_vs_rest_matches_scikit_learn():
    rng = np.random.default_rng(1)
    n = 90
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + np.eye(3)[y] * 1.5
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    df = pd.DataFrame(
        {
            "y_true": y,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            **{f"p_{c}": p[:, i] for i, c in enumerate("abc")},
        }
    )
    cfg = load_config(data={"data": {"labels": ["a", "b", "c"]}, "evaluate": {"bootstrap_resamples": 100}})
    recs = pd.DataFrame(one_vs_rest_records(df, cfg, scope="pooled"))
    expected = roc_auc_score(y, p, multi_class="ovr", average=None)
    np.testing.assert_allclose(recs[recs.metric == "auroc_ovr"]["value"], expected, atol=1e-12)
    assert recs[recs.metric == "auroc_macro"]["value"].item() == pytest.approx(expected.mean())


def test_segmentation_records_count_valid_cases(run):
    seg = pd.DataFrame(
        {
            "case_id": list("abcd"),
            "patient_id": ["p1", "p1", "p2", "p3"],
            "fold": [0, 0, 1, 1],
            "class": "nodule",
            "dice": [0.5, 0.7, 1.0, 0.0],
            "hd95": [2.0, 4.0, np.nan, np.nan],
            "empty": ["", "", "both", "prediction"],
        }
    )
    recs = pd.DataFrame(segmentation_records(seg, run.config))
    pooled = recs[(recs.scope == "pooled") & (recs["class"] == "nodule")].set_index("metric")
    assert pooled.loc["dice", "value"] == pytest.approx(0.55) and pooled.loc["dice", "n"] == 4
    assert pooled.loc["hd95", "value"] == pytest.approx(3.0) and pooled.loc["hd95", "n"] == 2
    assert "2 of 4 cases undefined" in pooled.loc["hd95", "note"]
    present = recs[(recs.scope == "pooled") & (recs["class"] == "nodule (reference present)")].set_index(
        "metric"
    )
    assert present.loc["dice", "value"] == pytest.approx(0.4) and present.loc["dice", "n"] == 3


def test_holdout_test_set_records(tmp_path):
    run = load_run(write_synthetic_run(tmp_path, with_seg=False, n_test_patients=9, bootstrap_resamples=100))
    task = binary_task(run.config)
    assert run.test is not None and run.test.case_id.nunique() == 9
    _, thresholds = operating_points(run.predictions, run.inner_val, task)
    recs = pd.DataFrame(holdout_test_records(run.test, thresholds, task, run.config))
    for f, part in run.test.groupby("fold"):
        got = recs[(recs.scope == "test") & (recs.fold == str(f)) & (recs.metric == "auroc")]["value"].item()
        assert got == pytest.approx(roc_auc_score(part.y_true == 1, part.p_nodule))
        thr = thresholds.set_index("fold").loc[f, "threshold"]
        sens = recs[(recs.scope == "test") & (recs.fold == str(f)) & (recs.metric == "sensitivity")]["value"]
        pos = part[part.y_true == 1]
        assert sens.item() == pytest.approx((pos.p_nodule >= thr).mean())
    mean = run.test.groupby("case_id").agg(y=("y_true", "first"), p=("p_nodule", "mean"))
    ens = recs[(recs.scope == "test_ensemble") & (recs.metric == "auroc")]["value"].item()
    assert ens == pytest.approx(roc_auc_score(mean.y == 1, mean.p))
    audit = split_audit(run.predictions, run.folds, run.inner_val, run.test).set_index("check")
    assert audit.loc["test patients outside cross-validation", "passed"]
