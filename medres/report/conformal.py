"""The report's conformal section: a prediction set per held-out case, its coverage and size.

Each fold's set rule (`medres.metrics.conformal.fit_conformal`) is fitted on that fold's inner-validation
predictions only and applied to its held-out cases, with the same ``p_<class>`` columns the rest of the
report uses. Coverage (share of held-out cases whose set holds the true class) gets the clustered
proportion interval of `medres.metrics.proportions` (patients as clusters); it is shown overall, per
fold, per true class (what Mondrian sets guarantee) and per subgroup level, where coverage can fall
below ``1 - alpha`` while it holds overall.

The held-out test split (manifest ``split=test``) gets its sets from the out-of-fold predictions instead
(`conformal_test_split_section`): cases no model was tuned on, so the sets are calibrated on
cross-validation's held-out cases and evaluated on the test cases (scope ``test_conformal``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medres.config import Config
from medres.metrics.bootstrap import patient_bootstrap_ci
from medres.metrics.conformal import ConformalFit, fit_conformal, prediction_sets, set_coverage
from medres.report.aggregate import _quiet, _record
from medres.report.html import fmt, fmt_ci, table_html
from medres.report.subgroups import subgroup_levels

__all__ = ["SET_COLUMN", "TEST_ENSEMBLE", "conformal_section", "conformal_sets",
           "conformal_test_split_section"]

#: the predictions tables' column of each case's set: class names joined by "|" ("" for an empty set)
SET_COLUMN = "conformal_set"
#: the ``fold`` of the test-split records of the mean of the fold models' probabilities
TEST_ENSEMBLE = "mean of folds"


def conformal_sets(predictions: pd.DataFrame, inner_val: pd.DataFrame, config: Config
                   ) -> tuple[np.ndarray, dict[int, ConformalFit]]:
    """Set membership [N, C] of every held-out case (rows as ``predictions``) and each fold's fit."""
    ev, labels = config.evaluate, list(config.data.labels)
    cols = [f"p_{c}" for c in labels]
    member = np.zeros((len(predictions), len(labels)), dtype=bool)
    fits = {}
    folds = predictions["fold"].to_numpy()
    for f in sorted(predictions["fold"].unique()):
        val = inner_val[inner_val["fold"] == f]
        fit = fit_conformal(val[cols].to_numpy(np.float64), val["y_true"].to_numpy(np.int64),
                            ev.conformal_alpha, score=ev.conformal_score, mondrian=ev.conformal_mondrian)
        rows = folds == f
        member[rows] = prediction_sets(predictions.loc[rows, cols].to_numpy(np.float64), fit)
        fits[int(f)] = fit
    return member, fits


def _records(member: np.ndarray, part: pd.DataFrame, config: Config, *, subgroup: str, fold: int | str,
             seed: int, method: str, scope: str = "conformal") -> list[dict]:
    ev = config.evaluate
    y = part["y_true"].to_numpy(np.int64)
    g = part["patient_id"].to_numpy()
    cov = set_coverage(member, y, g, ev.ci_level)
    size = member.sum(1).astype(np.float64)
    ci, size_note = (math.nan, math.nan), ""
    if len(np.unique(g)) >= 2:
        res, size_note = _quiet(patient_bootstrap_ci, "mean", None, size, g,
                                n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
        ci = (res.ci_low, res.ci_high)
    target = 1 - ev.conformal_alpha
    note = cov.coverage.note
    if cov.n and cov.coverage.ci_high < target:
        note = f"coverage below the target {target:g} (interval excludes it); " + note
    common = dict(subgroup=subgroup, fold=fold, n=cov.n, n_pos=cov.coverage.successes)
    return [
        _record(scope, "conformal_coverage", cov.coverage.estimate,
                ci=(cov.coverage.ci_low, cov.coverage.ci_high),
                ci_method=f"{cov.coverage.ci_method}; {method}", note=note, **common),
        _record(scope, "conformal_mean_set_size", cov.mean_size, ci=ci,
                ci_method="patient bootstrap percentile" if math.isfinite(ci[0]) else "",
                note=size_note, **common),
    ]


def _breakdown(member: np.ndarray, predictions: pd.DataFrame, config: Config, *, fold: int | str, seed: int,
               method: str, scope: str = "conformal") -> list[dict]:
    """Records per true class (what Mondrian sets guarantee) and per level of each subgroup column."""
    recs = []
    y = predictions["y_true"].to_numpy()
    for k, name in enumerate(config.data.labels):
        rows = y == k
        if rows.any():
            recs += _records(member[rows], predictions[rows], config, subgroup=f"true class={name}",
                             fold=fold, seed=seed, method=method, scope=scope)
    levels, _ = subgroup_levels(predictions, config.evaluate.subgroups)
    for label, rows in levels:
        recs += _records(member[rows], predictions[rows], config, subgroup=label,
                         fold=fold, seed=seed, method=method, scope=scope)
    return recs


def conformal_section(predictions: pd.DataFrame, inner_val: pd.DataFrame, config: Config, *, seed: int = 0
                      ) -> tuple[list[dict], pd.Series | None, dict | None]:
    """Records (scope ``conformal``), each held-out case's set (`SET_COLUMN`) and the HTML context.

    Returns ``([], None, None)`` when ``evaluate.conformal_alpha`` is null; a context with only a note
    when the run has no inner-validation predictions to fit on."""
    ev, labels = config.evaluate, list(config.data.labels)
    if ev.conformal_alpha is None:
        return [], None, None
    target = 1 - ev.conformal_alpha
    if len(inner_val) == 0:
        return [], None, {"note": "No inner-validation predictions in the run folder: no conformal sets "
                                  "(they are fitted on each fold's inner validation).", "table": None}
    member, fits = conformal_sets(predictions, inner_val, config)
    method = next(iter(fits.values())).method
    sets = pd.Series(["|".join(c for c, m in zip(labels, row) if m) for row in member],
                     index=predictions.index, name=SET_COLUMN)
    recs = _records(member, predictions, config, subgroup="all", fold="pooled", seed=seed, method=method)
    folds = predictions["fold"].to_numpy()
    for f in sorted(fits):
        rows = folds == f
        recs += _records(member[rows], predictions[rows], config, subgroup="all", fold=f, seed=seed,
                         method=method)
    recs += _breakdown(member, predictions, config, fold="pooled", seed=seed, method=method)
    notes = sorted({f"fold {f}: {fit.note}" for f, fit in fits.items() if fit.note})
    table = _table(recs, target)
    per_fold = "; ".join(f"fold {f}: " + ("/".join(str(int(c)) for c in fits[f].n_calibration)
                                           if ev.conformal_mondrian else str(int(fits[f].n_calibration[0])))
                         for f in sorted(fits))
    note = (f"{method}. Each fold's sets are fitted on its inner validation only ({per_fold} cases"
            f"{' per class, ' + ', '.join(labels) if ev.conformal_mondrian else ''}) and applied to its "
            f"held-out cases; target coverage {target:.0%}. The guarantee holds on average over exchangeable "
            "cases, not within a subgroup: 'below target' marks a row whose interval excludes the target. "
            "The inner validation also chose the checkpoint and the recalibration, so the sets may be "
            "slightly optimistic. " + " ".join(notes))
    return recs, sets, {"note": note, "table": table_html(table)}


def _fit(part: pd.DataFrame, config: Config) -> ConformalFit:
    ev = config.evaluate
    cols = [f"p_{c}" for c in config.data.labels]
    return fit_conformal(part[cols].to_numpy(np.float64), part["y_true"].to_numpy(np.int64),
                         ev.conformal_alpha, score=ev.conformal_score, mondrian=ev.conformal_mondrian)


def _n_calibration(fit: ConformalFit, mondrian: bool) -> str:
    return "/".join(str(int(c)) for c in fit.n_calibration) if mondrian else str(int(fit.n_calibration[0]))


def conformal_test_split_section(predictions: pd.DataFrame, test: pd.DataFrame | None, config: Config, *,
                           seed: int = 0) -> tuple[list[dict], dict | None]:
    """Conformal sets for the test split, calibrated on the out-of-fold predictions: records (scope
    ``test_conformal``) and the HTML context of the report's test-split section.

    Fold k's model: its rule is fitted on its own out-of-fold cases (``predictions`` of fold k, the
    cases it never trained on) and applied to its predictions of the test cases (``test`` rows of fold
    k). The mean of the fold models' probabilities (fold `TEST_ENSEMBLE`): one rule fitted on every
    out-of-fold prediction, applied to the mean probabilities, overall, per true class and per
    subgroup level. Test rows without a label (``y_true`` outside the classes) are left out.
    Returns ``([], None)`` without labelled test rows or when ``evaluate.conformal_alpha`` is null."""
    ev, labels = config.evaluate, list(config.data.labels)
    if ev.conformal_alpha is None or test is None or not len(test):
        return [], None
    cols = [f"p_{c}" for c in labels]
    y = pd.to_numeric(test["y_true"], errors="coerce")
    labelled = y.between(0, len(labels) - 1) & (y == y.round())
    unlabelled = int((~labelled).sum())
    test = test[labelled.to_numpy()].assign(y_true=y[labelled].astype(np.int64).to_numpy())
    if not len(test):
        return [], None
    target = 1 - ev.conformal_alpha
    recs: list[dict] = []
    fits = {}
    for f in sorted(test["fold"].unique()):
        held = predictions[predictions["fold"] == f]
        if not len(held):
            continue
        fits[int(f)] = fit = _fit(held, config)
        part = test[test["fold"] == f]
        member = prediction_sets(part[cols].to_numpy(np.float64), fit)
        recs += _records(member, part, config, subgroup="all", fold=int(f), seed=seed, method=fit.method,
                         scope="test_conformal")
    keep = [c for c in test.columns if c not in (*cols, "fold")]
    ens = (test.groupby("case_id", sort=False)
           .agg({**{c: "first" for c in keep if c != "case_id"}, **{c: "mean" for c in cols}}).reset_index())
    pooled = _fit(predictions, config)
    member = prediction_sets(ens[cols].to_numpy(np.float64), pooled)
    recs += _records(member, ens, config, subgroup="all", fold=TEST_ENSEMBLE, seed=seed,
                     method=pooled.method, scope="test_conformal")
    recs += _breakdown(member, ens, config, fold=TEST_ENSEMBLE, seed=seed, method=pooled.method,
                       scope="test_conformal")
    mondrian = ev.conformal_mondrian
    per_class = f" per class, {', '.join(labels)}" if mondrian else ""
    per_fold = "; ".join(f"fold {f}: {_n_calibration(fit, mondrian)}" for f, fit in fits.items())
    notes = sorted({f"fold {f}: {fit.note}" for f, fit in fits.items() if fit.note}
                   | ({f"{TEST_ENSEMBLE}: {pooled.note}"} if pooled.note else set()))
    note = (f"{pooled.method}, target coverage {target:.0%}. Calibrated on the out-of-fold predictions and "
            f"evaluated on the test split: each fold model's sets on its own held-out cases ({per_fold} cases"
            f"{per_class}), the sets of the mean of the fold models on all "
            f"{_n_calibration(pooled, mondrian)} out-of-fold cases{per_class}. The fold models' guarantee "
            "holds when test and development cases are exchangeable (a test set from another site or time "
            "may break it: the coverage shows whether it did); the mean of the fold models is not the model "
            "the out-of-fold scores came from, so its coverage is checked here, not guaranteed. 'below "
            "target' marks a row whose interval excludes the target."
            + (f" {unlabelled} unlabelled test case(s) left out." if unlabelled else "")
            + (" " + " ".join(notes) if notes else ""))
    table = _table(recs, target).rename(columns={"fold": "model"})
    table["model"] = table["model"].map(lambda f: "mean of the fold models" if f == TEST_ENSEMBLE
                                        else f"fold {f} model")
    return recs, {"note": note, "table": table_html(table)}


def _table(recs: list[dict], target: float) -> pd.DataFrame:
    rows = {}
    for r in recs:
        key = (r["subgroup"], r["fold"])
        row = rows.setdefault(key, {"group": r["subgroup"], "fold": r["fold"], "cases": r["n"]})
        if r["metric"] == "conformal_coverage":
            row["coverage [CI]"] = fmt_ci(r["value"], r["ci_low"], r["ci_high"])
            row["below target"] = "yes" if r["n"] and r["ci_high"] < target else ""
        else:
            row["mean set size [CI]"] = fmt_ci(r["value"], r["ci_low"], r["ci_high"]) if math.isfinite(
                r["ci_low"]) else fmt(r["value"])
    return pd.DataFrame(list(rows.values()))
