"""medres.report.external: held-out sites and external test sites, checked against recomputation from the
run's own prediction tables (scikit-learn per site, statsmodels for the random-effects summary)."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, roc_auc_score
from statsmodels.stats.meta_analysis import combine_effects

from medres.metrics.calibration import calibration_intercept_slope
from medres.metrics.delong import delong_covariance
from medres.report.external import calibration_fits, random_effects_dl
from tests.report.synthetic_run import LABELS, SITES, write_synthetic_run


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # statsmodels' sqrt of a negative tau²
def test_dersimonian_laird_matches_statsmodels():
    rng = np.random.default_rng(3)
    branches = set()
    for _ in range(20):
        k = int(rng.integers(2, 8))
        y, v = rng.normal(1.5, 0.8, k), rng.uniform(0.05, 0.5, k)
        ours = random_effects_dl(y, v)
        ref = combine_effects(y, v, method_re="dl")
        branches.add(ref.tau2 >= 0)
        assert ours.q == pytest.approx(ref.q, rel=1e-10)
        if ref.tau2 >= 0:  # statsmodels leaves a negative moment estimate untruncated
            assert ours.tau2 == pytest.approx(ref.tau2, rel=1e-10, abs=1e-14)
            assert ours.i2 == pytest.approx(ref.i2, rel=1e-10, abs=1e-14)
            assert ours.mean == pytest.approx(ref.mean_effect_re, rel=1e-10)
            assert ours.se == pytest.approx(ref.sd_eff_w_re, rel=1e-10)
            low, high = ref.conf_int(alpha=0.05)[1]  # (fixed, random, ...): the random-effects row
            assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-10)
        else:  # DerSimonian-Laird truncates tau² at 0: the fixed-effect summary
            assert ours.tau2 == 0 and ours.i2 == 0
            assert ours.mean == pytest.approx(ref.mean_effect_fe, rel=1e-10)
            assert ours.se == pytest.approx(ref.sd_eff_w_fe, rel=1e-10)
    assert branches == {True, False}  # both cases drawn


def test_calibration_fits_match_the_maximum_likelihood_fit():
    rng = np.random.default_rng(0)
    lp = rng.normal(0, 1.5, 300)
    y = (rng.uniform(size=300) < expit(0.4 + 0.6 * lp)).astype(int)  # too extreme and underestimated
    groups = np.repeat(np.arange(150), 2)
    fits = calibration_fits(y, expit(lp), groups)
    ref = calibration_intercept_slope(y, expit(lp))  # medres's own Newton fit, not statsmodels
    assert fits["calibration_intercept"].value == pytest.approx(ref.intercept, abs=1e-6)
    assert fits["calibration_slope"].value == pytest.approx(ref.slope, abs=1e-6)
    slope = fits["calibration_slope"]
    assert slope.ci_low < 0.6 < slope.ci_high and slope.ci_high < 1  # the truth inside, 1 outside
    one_class = calibration_fits(np.zeros(10), np.full(10, 0.3), np.arange(10))
    slope = one_class["calibration_slope"]
    assert math.isnan(slope.value) and "one class" in slope.note


@pytest.fixture(scope="module")
def site_run(tmp_path_factory):
    from medres.evaluation import evaluate_run

    run = write_synthetic_run(tmp_path_factory.mktemp("lso"), n_patients=60, with_seg=False,
                              leave_site_out=True, n_test_patients=12, test_site="west")
    report = evaluate_run(run, run.parent / "lso_report")
    records = pd.DataFrame(json.loads((report.parent / "summary.json").read_text())["records"])
    return run, report, records


def _binary(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return ((df.y_true == 1).to_numpy().astype(int), df[f"p_{LABELS[1]}"].to_numpy(),
            df.patient_id.to_numpy())


def test_each_held_out_site_against_its_own_predictions(site_run):
    run, report, records = site_run
    ext = records[records.scope == "external_group"]
    logits, variances = [], []
    for k, site in enumerate(sorted(SITES)):
        held = pd.read_parquet(run / f"fold_{k}" / "predictions.parquet")
        assert set(held.site) == {site}  # the fold held out exactly that site
        y, p, g = _binary(held)
        rec = ext[(ext.fold == str(k)) & (ext.subgroup == f"site = {site}")].set_index("metric")
        assert rec.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert rec.loc["auroc", "ci_low"] < rec.loc["auroc", "value"] < rec.loc["auroc", "ci_high"]
        ref = calibration_intercept_slope(y, p)
        assert rec.loc["calibration_intercept", "value"] == pytest.approx(ref.intercept, abs=1e-6)
        assert rec.loc["calibration_slope", "value"] == pytest.approx(ref.slope, abs=1e-6)
        for m in ("calibration_intercept", "calibration_slope"):
            assert rec.loc[m, "ci_low"] < rec.loc[m, "value"] < rec.loc[m, "ci_high"]
        assert rec.loc["brier", "value"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
        auc, cov = delong_covariance(y, p[None], g)
        logits.append(logit(roc_auc_score(y, p)))
        variances.append(cov[0, 0] / (auc[0] * (1 - auc[0])) ** 2)
    ref = combine_effects(np.array(logits), np.array(variances), method_re="dl")
    pooled = records[records.scope == "external_pooled"].set_index("metric")
    assert ref.tau2 > 0  # heterogeneous draws: statsmodels' summary is the DerSimonian-Laird one
    low, high = ref.conf_int(alpha=0.05)[1]
    assert pooled.loc["auroc", "value"] == pytest.approx(expit(ref.mean_effect_re), abs=1e-10)
    assert (pooled.loc["auroc", "ci_low"], pooled.loc["auroc", "ci_high"]) == pytest.approx(
        (expit(low), expit(high)), abs=1e-10)
    assert pooled.loc["auroc_logit_tau2", "value"] == pytest.approx(ref.tau2, rel=1e-9)
    assert pooled.loc["auroc_i2", "value"] == pytest.approx(ref.i2, rel=1e-9)
    html = report.read_text()
    assert "External validation: each held-out group" in html and "I² " in html
    assert "SECRETPAT" not in html


def test_external_test_site_drift_and_recalibration_in_the_large(site_run):
    run, report, records = site_run
    folds = [pd.read_parquet(run / f"fold_{k}" / "test_predictions.parquet") for k in range(len(SITES))]
    test = pd.concat(folds).groupby("case_id").agg(
        patient_id=("patient_id", "first"), y_true=("y_true", "first"), p=(f"p_{LABELS[1]}", "mean"))
    y, p = (test.y_true == 1).to_numpy().astype(int), test.p.to_numpy()
    site = records[records.subgroup == "site = west"]
    assert set(records.loc[records.scope.str.startswith("external_test"), "subgroup"]) == {"site = west"}
    drift = site[site.scope == "external_test"].set_index("metric")
    assert drift.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    ref = calibration_intercept_slope(y, p)
    assert drift.loc["calibration_intercept", "value"] == pytest.approx(ref.intercept, abs=1e-6)
    assert drift.loc["calibration_slope", "value"] == pytest.approx(ref.slope, abs=1e-6)
    # the refit: 20% of the site's 12 patients, the rest scored before and after the new intercept
    shift = site[site.metric == "recalibration_intercept_shift"].iloc[0]
    before = site[site.scope == "external_test_remaining"].set_index("metric")
    after = site[site.scope == "external_test_recalibrated"]
    after = after[after.metric != "recalibration_intercept_shift"].set_index("metric")
    assert "recalibrated in the large on 2 of 12 patients" in after.loc["brier", "note"]
    assert before.loc["auroc", "n"] + shift["n"] == len(test) == 12
    patients = np.array(sorted(test.patient_id.unique()))
    fit = np.isin(test.patient_id, np.random.default_rng(0).permutation(patients)[:2])
    assert shift["value"] == pytest.approx(calibration_intercept_slope(y[fit], p[fit]).intercept, abs=1e-6)
    moved = expit(logit(p[~fit]) + shift["value"])
    assert before.loc["brier", "value"] == pytest.approx(brier_score_loss(y[~fit], p[~fit]), abs=1e-12)
    assert after.loc["brier", "value"] == pytest.approx(brier_score_loss(y[~fit], moved), abs=1e-12)
    assert after.loc["calibration_intercept", "value"] == pytest.approx(
        calibration_intercept_slope(y[~fit], moved).intercept, abs=1e-6)
    assert after.loc["auroc", "value"] == pytest.approx(before.loc["auroc", "value"])  # a shift keeps ranks
    html = report.read_text()
    assert "External test sites" in html and "recalibrated in the large (marked)" in html
