"""Cohort metrics as long-format records: per fold, pooled out-of-fold, mean ± SD across folds, subgroups.

A record is one dict with the DESIGN.md fields ``scope, subgroup, fold, head, class, metric, value,
ci_low, ci_high, ci_method, n, n_pos`` plus ``note`` (why a value is missing or "not estimable").
Scopes: ``fold`` (one fold's held-out cases), ``pooled`` (all out-of-fold cases together),
``fold_mean`` / ``fold_sd`` (across folds), ``subgroup`` (pooled, one level of a manifest column).

Operating points are chosen per fold on that fold's inner-validation predictions and applied
unchanged to its held-out cases (never chosen on held-out data). Every interval treats the patient, not
the scan, as the unit (see `classification_records`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medres.config import Config
from medres.metrics.bootstrap import patient_bootstrap_ci
from medres.metrics.classification import confusion_counts, metrics_from_counts
from medres.metrics.delong import auroc_score_interval, delong_roc_ci
from medres.metrics.operating_points import choose_threshold
from medres.metrics.proportions import clustered_proportion_interval, effective_size_interval
from medres.metrics.records import RECORD_COLUMNS, MetricRecord

__all__ = [
    "RECORD_FIELDS",
    "BinaryTask",
    "binary_task",
    "operating_points",
    "classification_records",
    "one_vs_rest_records",
    "across_fold_records",
    "holdout_test_records",
]

RECORD_FIELDS = RECORD_COLUMNS


@dataclass(frozen=True)
class BinaryTask:
    """The report's binary question: the positive class against the rest."""

    positive: str  # class name
    index: int  # its index in data.labels
    score_col: str  # p_<positive>


def binary_task(config: Config) -> BinaryTask:
    index = config.data.positive_index()
    pos = config.data.labels[index]
    return BinaryTask(pos, index, f"p_{pos}")


def _record(
    scope: str,
    metric: str,
    value: float,
    *,
    subgroup: str = "all",
    fold: int | str = "pooled",
    head: str = "classification",
    cls: str = "",
    ci: tuple[float, float] = (math.nan, math.nan),
    ci_method: str = "",
    n: int = 0,
    n_pos: int = 0,
    note: str = "",
) -> dict:
    """One record row (`medres.metrics.MetricRecord`'s columns)."""
    return MetricRecord(
        scope=scope,
        subgroup=subgroup,
        fold=str(fold),
        head=head,
        class_name=cls,
        metric=metric,
        value=float(value),
        ci_low=float(ci[0]),
        ci_high=float(ci[1]),
        ci_method=ci_method,
        n=int(n),
        n_pos=int(n_pos),
        note=note,
    ).as_row()


def operating_points(
    predictions: pd.DataFrame,
    inner_val: pd.DataFrame,
    task: BinaryTask,
    *,
    method: str = "youden",
    target: float = 0.9,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Choose one threshold per fold on its inner-validation predictions; apply it to its held-out cases.

    Returns:
        the predictions with ``threshold`` and ``y_pred_op`` (1 = called positive, NaN where the
        fold has no operating point), and a table per fold: fold, method, target, threshold, n_val,
        n_val_pos, note.
    """
    out = predictions.copy()
    out["threshold"] = np.nan
    rows = []
    for fold in sorted(out["fold"].unique()):
        val = inner_val[inner_val["fold"] == fold]
        y = (val["y_true"].to_numpy() == task.index).astype(np.int8)
        note, thr = "", math.nan
        if len(val) == 0:
            note = "no inner-validation predictions for this fold: no operating point"
        elif y.sum() == 0 or y.sum() == y.size:
            note = f"inner validation holds one class only (n_pos={int(y.sum())}): no operating point"
        else:
            thr = choose_threshold(y, val[task.score_col].to_numpy(), method, target=target)
        rows.append(
            {
                "fold": int(fold),
                "method": method,
                "target": target if method in ("sensitivity", "specificity") else math.nan,
                "threshold": thr,
                "n_val": len(val),
                "n_val_pos": int(y.sum()),
                "note": note,
            }
        )
        out.loc[out["fold"] == fold, "threshold"] = thr
    called = out[task.score_col] >= out["threshold"]
    out["y_pred_op"] = called.astype(float).where(out["threshold"].notna())
    return out, pd.DataFrame(rows)


def _quiet(fn, *args, **kwargs):
    """Call a metric, returning (value, the undefined-metric warnings as one note)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = fn(*args, **kwargs)
    return value, "; ".join(dict.fromkeys(str(w.message) for w in caught))


def _boot(metric: str, y, s, g, ev, seed: int, **kw) -> tuple[float, tuple[float, float], str, str]:
    if len(np.unique(g)) < 2:
        return math.nan, (math.nan, math.nan), "", "fewer than 2 patients"
    res, note = _quiet(
        patient_bootstrap_ci,
        metric,
        y,
        s,
        g,
        n_resamples=ev.bootstrap_resamples,
        level=ev.ci_level,
        seed=seed,
        **kw,
    )
    note = "; ".join(x for x in (note, res.reason) if x)
    return res.estimate, (res.ci_low, res.ci_high), res.ci_method, note


def _interval_record(scope: str, name: str, value: float, res, note: str, common: dict) -> dict:
    """A record from a `ProportionInterval` or `AurocInterval` (its note: the design effect)."""
    return _record(scope, name, value, ci=(res.ci_low, res.ci_high), ci_method=res.ci_method,
                   note="; ".join(x for x in (note, res.note) if x), **common)


def average_precision_record(scope: str, y, s, g, ev, seed: int, common: dict) -> dict:
    """AP with a binomial-type interval on the effective number of positive scans.

    The patient bootstrap gives AP's variance; the interval is Clopper-Pearson on
    ``AP * n_eff`` of ``n_eff = AP (1 - AP) / variance`` positive scans (at most all of them), the
    binomial-type interval for AP of Boyd, Eng and Page (ECML PKDD 2013) made cluster-aware. Where the
    bootstrap has no spread (perfect separation in every resample) n_eff counts the positive patients.
    """
    if len(np.unique(g)) < 2:
        return _record(scope, "average_precision", math.nan, note="fewer than 2 patients", **common)
    res, note = _quiet(patient_bootstrap_ci, "average_precision", y, s, g,
                       n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
    note = "; ".join(x for x in (note, res.reason) if x)
    if not math.isfinite(res.estimate):
        return _record(scope, "average_precision", res.estimate, note=note, **common)
    _, cluster = np.unique(g[y == 1], return_inverse=True)
    low, high, n_eff = effective_size_interval(res.estimate, int(y.sum()), res.standard_error**2,
                                               np.bincount(cluster.ravel()), ev.ci_level)
    note = "; ".join(x for x in (note, f"effective {n_eff:.1f} of {int(y.sum())} positive scans") if x)
    return _record(scope, "average_precision", res.estimate, ci=(low, high), note=note,
                   ci_method="Clopper-Pearson on AP x n_pos/deff (deff from the patient bootstrap)", **common)


#: The denominator rows and the success of each ratio at the operating point (y: truth, d: called).
_RATIOS = {"sensitivity": lambda y, d: (y == 1, d == 1), "specificity": lambda y, d: (y == 0, d == 0),
           "ppv": lambda y, d: (d == 1, y == 1), "npv": lambda y, d: (d == 0, y == 0)}


def classification_records(
    df: pd.DataFrame,
    task: BinaryTask,
    config: Config,
    *,
    scope: str,
    fold: int | str = "pooled",
    subgroup: str = "all",
    seed: int = 0,
    with_delong: bool = False,
) -> list[dict]:
    """Records of one set of cases: AUROC, AP with prevalence, Brier, metrics at the operating point.

    ``df`` needs y_true, patient_id, the task's score column and (for the operating point)
    ``y_pred_op``. Intervals, all cluster-aware (patients, not scans): prevalence, sensitivity,
    specificity, PPV and NPV Clopper-Pearson on the effective sample size n / design effect
    (`clustered_proportion_interval`); AUROC a score-type interval (`auroc_score_interval`); AP a
    binomial-type interval on the bootstrap's effective size; Brier the patient bootstrap (percentile).
    ``with_delong`` adds DeLong's Wald interval with Obuchowski's clustered variance.
    """
    ev = config.evaluate
    y = (df["y_true"].to_numpy() == task.index).astype(np.int8)
    s = df[task.score_col].to_numpy(dtype=np.float64)
    g = df["patient_id"].astype(str).to_numpy()
    n, n_pos = len(df), int(y.sum())
    common = dict(subgroup=subgroup, fold=fold, cls=task.positive, n=n, n_pos=n_pos)
    prev = clustered_proportion_interval(y, g, ev.ci_level)
    recs = [_interval_record(scope, "prevalence", prev.estimate, prev, "", common)]
    au, note = _quiet(auroc_score_interval, y, s, g, ev.ci_level) if n else (None, "no cases")
    if au is None or not math.isfinite(au.auroc):
        recs.append(_record(scope, "auroc", math.nan, note=note or au.reason, **common))
    else:
        recs.append(_interval_record(scope, "auroc", au.auroc, au, note, common))
    recs.append(average_precision_record(scope, y, s, g, ev, seed, common))
    value, ci, how, note = _boot("brier", y, s, g, ev, seed)
    recs.append(_record(scope, "brier", value, ci=ci, ci_method=how, note=note, **common))
    if with_delong:
        res, note = _quiet(delong_roc_ci, y, s, ev.ci_level, g)
        recs.append(
            _record(
                scope,
                "auroc",
                res.auroc,
                ci=(res.ci_low, res.ci_high),
                ci_method=res.ci_method,
                note=note or res.reason,
                **common,
            )
        )
    if "y_pred_op" not in df.columns or df["y_pred_op"].isna().any():
        recs.append(
            _record(scope, "sensitivity", math.nan, note="no operating point (see thresholds)", **common)
        )
        return recs
    op = df["y_pred_op"].to_numpy().astype(np.int8)
    tm = metrics_from_counts(confusion_counts(y, op))
    for name, value in tm.as_dict().items():
        note = tm.reasons.get(name, "")
        if name in _RATIOS and math.isfinite(value):
            rows, success = _RATIOS[name](y, op)
            res = clustered_proportion_interval(success[rows].astype(np.int8), g[rows], ev.ci_level)
            recs.append(_interval_record(scope, name, value, res, note, common))
        else:
            recs.append(_record(scope, name, value, note=note, **common))
    return recs


def one_vs_rest_records(
    df: pd.DataFrame, config: Config, *, scope: str, fold: int | str = "pooled", seed: int = 0
) -> list[dict]:
    """AUROC of every class against the rest, and their macro average (multi-class runs)."""
    ev = config.evaluate
    recs, values = [], []
    g = df["patient_id"].to_numpy()
    for c, name in enumerate(config.data.labels):
        y = (df["y_true"].to_numpy() == c).astype(np.int8)
        res, note = _quiet(auroc_score_interval, y, df[f"p_{name}"].to_numpy(np.float64), g, ev.ci_level)
        value, ci, how = res.auroc, (res.ci_low, res.ci_high), res.ci_method
        note = "; ".join(x for x in (note, res.note) if x)
        values.append(value)
        recs.append(
            _record(
                scope,
                "auroc_ovr",
                value,
                fold=fold,
                cls=name,
                ci=ci,
                ci_method=how,
                n=len(df),
                n_pos=int(y.sum()),
                note=note,
            )
        )
    macro = float(np.mean(values)) if np.isfinite(values).all() else math.nan
    recs.append(
        _record(
            scope,
            "auroc_macro",
            macro,
            fold=fold,
            cls="macro",
            n=len(df),
            note="" if math.isfinite(macro) else "a class has no AUROC",
        )
    )
    return recs


def across_fold_records(fold_records: list[dict]) -> list[dict]:
    """Mean and SD (ddof 1) across folds of every per-fold metric (bootstrap or point records)."""
    df = pd.DataFrame([r for r in fold_records if r["scope"] == "fold" and "DeLong" not in r["ci_method"]])
    recs = []
    if df.empty:
        return recs
    for (head, cls, metric), grp in df.groupby(["head", "class", "metric"], sort=False):
        v = grp["value"].to_numpy(np.float64)
        ok = v[np.isfinite(v)]
        note = "" if ok.size == v.size else f"{v.size - ok.size} of {v.size} folds undefined, left out"
        mean = float(ok.mean()) if ok.size else math.nan
        sd = float(ok.std(ddof=1)) if ok.size > 1 else math.nan
        for scope, value in (("fold_mean", mean), ("fold_sd", sd)):
            recs.append(
                _record(
                    scope,
                    metric,
                    value,
                    fold="across folds",
                    head=head,
                    cls=cls,
                    n=int(grp["n"].sum()),
                    n_pos=int(grp["n_pos"].sum()),
                    note=note,
                )
            )
    return recs


def holdout_test_records(
    test: pd.DataFrame, thresholds: pd.DataFrame, task: BinaryTask, config: Config, *, seed: int = 0
) -> list[dict]:
    """Records on the held-out test set (``split=test``), predicted by every fold's model.

    Scope ``test``: each fold's model with its own operating point (chosen on its inner validation).
    Scope ``test_ensemble``: the mean of the fold models' probabilities per case, called positive at
    the mean of the fold thresholds (NaN when a fold has none).
    """
    thr = dict(zip(thresholds["fold"], thresholds["threshold"]))
    df = test.copy()
    df["threshold"] = df["fold"].map(thr).astype(float)
    df["y_pred_op"] = (df[task.score_col] >= df["threshold"]).astype(float).where(df["threshold"].notna())
    recs = []
    for f in sorted(df["fold"].unique()):
        recs += classification_records(
            df[df["fold"] == f], task, config, scope="test", fold=int(f), seed=seed
        )
    scores = [f"p_{c}" for c in config.data.labels]
    ens = (
        df.groupby("case_id", sort=False)
        .agg({"patient_id": "first", "y_true": "first", **{c: "mean" for c in scores}})
        .reset_index()
    )
    cut = float(np.mean(list(thr.values()))) if thr and all(np.isfinite(list(thr.values()))) else math.nan
    if math.isfinite(cut):
        ens["y_pred_op"] = (ens[task.score_col] >= cut).astype(float)
    recs += classification_records(ens, task, config, scope="test_ensemble", fold="mean of folds", seed=seed)
    return recs
