"""The report per task of a ``tasks:`` configuration: multilabel findings and regression targets.

The single-label task keeps the report's classification section; this module adds one section per
multilabel and regression task, read from the run's saved tables (``y_<c>``, ``p_<c>``, ``logit_<c>``;
``y_<t>``, ``pred_<t>``, ``pred_<t>_lo`` / ``_hi``: see the tasks contract). Records have ``head`` = the
task's name and ``class`` = the label or the target column.

- multilabel (`medres.metrics.multilabel`): per label AUROC (patient bootstrap and DeLong), AP with the
  prevalence, metrics at each label's operating point (each fold's threshold from its calibration.json
  ``tasks`` entry, else 0.5, said in the note), Brier and ECE with a reliability diagram per label,
  macro and micro averages, the co-occurrence table and subgroups per label;
- regression (`medres.metrics.regression`): MAE, RMSE, R², Pearson r and Lin's CCC with patient-bootstrap
  intervals, Bland-Altman with its intervals, binned calibration, the coverage of the prediction
  intervals and subgroups.

The held-out test split (manifest ``split=test``, `holdout_task_records`) is scored as the single-label
head's: each fold's model (scope ``test``, fold ``k``; a label at the fold's operating point) and the mean
of the fold models per scan (scope ``test_ensemble``, fold `TEST_ENSEMBLE_FOLD`; the mean of the folds'
thresholds), one table in each task's section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from markupsafe import Markup

import medres.report.figures as figures
from medres.config import Config
from medres.config.tasks import AnyTask, MultilabelTask, RegressionTask
from medres.errors import DataError
from medres.metrics.calibration import reliability_curve
from medres.metrics.classification import confusion_counts, metrics_from_counts
from medres.metrics.multilabel import multilabel_metrics, multilabel_records
from medres.metrics.proportions import clustered_proportion_interval
from medres.metrics.records import MetricRecord
from medres.metrics.regression import regression_bootstrap, regression_records, regression_summary
from medres.report.aggregate import _RATIOS, _interval_record, _quiet, _record
from medres.report.calibration import _figure as reliability_versions_figure
from medres.report.calibration import calibration_records, fold_maps
from medres.report.html import fmt, fmt_ci, table_html
from medres.report.subgroups import subgroup_levels
from medres.runfolder import FoldFolder

__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_INTERVAL", "TEST_ENSEMBLE_FOLD", "TaskFigure", "TaskTable",
           "TaskSection", "TaskReport", "report_tasks", "label_thresholds", "task_columns", "task_report",
           "holdout_task_records"]

#: a multilabel column's threshold when its fold's calibration.json names none
DEFAULT_THRESHOLD = 0.5
#: the nominal level of a regression task's prediction intervals when the task sets none
DEFAULT_INTERVAL = 0.9
ECE_BINS = 10
CAL_BINS = 10
_CAL_FILE = FoldFolder(Path(".")).calibration.name  # where a fold's thresholds are read from


@dataclass
class TaskFigure:
    src: str
    alt: str
    caption: str = ""


@dataclass
class TaskTable:
    title: str
    html: Markup
    note: str = ""


@dataclass
class TaskSection:
    """One task's part of the HTML (``anchor``: its id in the page)."""

    name: str
    type: str
    anchor: str
    description: str
    tables: list[TaskTable] = field(default_factory=list)
    figures: list[TaskFigure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class TaskReport:
    """The records, HTML sections, summary.json ``tasks`` section and the shareable columns of the tasks."""

    records: list[dict] = field(default_factory=list)
    sections: list[TaskSection] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    export_columns: list[str] = field(default_factory=list)


def report_tasks(cfg: Config) -> list[AnyTask]:
    """The multilabel and regression tasks of ``cfg`` (none without ``tasks:``), in config order."""
    return [t for t in (cfg.tasks or []) if isinstance(t, (MultilabelTask, RegressionTask))]


def task_columns(task: AnyTask) -> list[str]:
    """The table columns of a multilabel or regression task (contract names)."""
    if isinstance(task, MultilabelTask):
        return [f"{k}_{c}" for c in task.columns for k in ("y", "p", "logit")]
    t = task.name  # a regression task's columns are named by the task, not by its manifest column
    return [f"y_{t}", f"pred_{t}", f"pred_{t}_lo", f"pred_{t}_hi"]


def _need(df: pd.DataFrame, columns: list[str], task: AnyTask) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"task {task.name!r}: the predictions lack the columns {missing}",
                        hint="the run's config.yaml names this task but its tables do not hold its outputs; "
                             "predict the folds again with this configuration")


def label_thresholds(run_dir: Any, task: MultilabelTask, folds: list[int]) -> pd.DataFrame:
    """Each fold's threshold per label: ``calibration.json["tasks"][task]["columns"][label]
    ["operating_point"]["threshold"]`` (as ``medres.training.calibrate`` writes it), else
    `DEFAULT_THRESHOLD`. Columns: fold, label, threshold, source."""
    maps = fold_maps(run_dir)
    rows = []
    for k in folds:
        entry = ((maps.get(k) or {}).get("tasks") or {}).get(task.name) or {}
        for c in task.columns:
            cal = (entry.get("columns") or {}).get(c) or {}
            thr = cal.get("threshold")
            if thr is None:
                thr = (cal.get("operating_point") or {}).get("threshold")
            if thr is not None and math.isfinite(float(thr)):
                rows.append({"fold": k, "label": c, "threshold": float(thr), "source": _CAL_FILE})
            else:
                rows.append({"fold": k, "label": c, "threshold": DEFAULT_THRESHOLD,
                             "source": f"default {DEFAULT_THRESHOLD:g}: none in {_CAL_FILE}"})
    return pd.DataFrame(rows, columns=["fold", "label", "threshold", "source"])


def _cell(r: dict | None, digits: int = 3) -> str:
    if r is None:
        return "n/a"
    return fmt_ci(r["value"], r["ci_low"], r["ci_high"], digits)


def _find(recs: list[dict], metric: str, cls: str, how: str | None = None) -> dict | None:
    for r in recs:
        if r["metric"] == metric and r["class"] == cls and (how is None or (how in r["ci_method"])):
            return r
    return None


def _compact(recs: Any) -> list[dict]:
    """The pooled records as summary.json's ``tasks`` section lists them."""
    keys = ("class", "metric", "value", "ci_low", "ci_high", "ci_method")
    return [{k: r[k] for k in keys} for r in recs]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# --- multilabel ----------------------------------------------------------------------------------------


def _op_records(y: np.ndarray, p: np.ndarray, thr: np.ndarray, g: np.ndarray, *, head: str, label: str,
                level: float, scope: str, subgroup: str = "all", note: str = "", fold: str = "pooled"
                ) -> list[dict]:
    """Metrics at the operating point of one label (rows with the label known)."""
    op = (p >= thr).astype(np.int8)
    yi = y.astype(np.int8)
    common = dict(subgroup=subgroup, head=head, cls=label, n=len(yi), n_pos=int(yi.sum()), fold=fold)
    tm = metrics_from_counts(confusion_counts(yi, op))
    recs = []
    for name, value in tm.as_dict().items():
        why = "; ".join(x for x in (note, tm.reasons.get(name, "")) if x)
        if name in _RATIOS and math.isfinite(value):
            rows, success = _RATIOS[name](yi, op)
            res = clustered_proportion_interval(success[rows].astype(np.int8), g[rows], level)
            recs.append(_interval_record(scope, name, value, res, why, common))
        else:
            recs.append(_record(scope, name, value, note=why, **common))
    return recs


def _multilabel(task: MultilabelTask, preds: pd.DataFrame, cfg: Config, run_dir: Any, seed: int
                ) -> tuple[list[dict], TaskSection, dict]:
    ev = cfg.evaluate
    cols = list(task.columns)
    _need(preds, [f"y_{c}" for c in cols] + [f"p_{c}" for c in cols], task)
    y = preds[[f"y_{c}" for c in cols]].to_numpy(np.float64)
    s = preds[[f"p_{c}" for c in cols]].to_numpy(np.float64)
    g = preds["patient_id"].astype(str).to_numpy()
    fold = preds["fold"].to_numpy().astype(int)
    kw = dict(labels=cols, n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
    pooled = multilabel_metrics(y, s, g, **kw)
    recs = multilabel_records(pooled, scope="pooled", head=task.name)
    for k in sorted(set(fold)):
        m = fold == k
        try:
            part, _ = _quiet(multilabel_metrics, y[m], s[m], g[m], **kw)
        except DataError as exc:  # a fold of one patient: no interval
            recs.append(_record("fold", "auroc", math.nan, fold=int(k), head=task.name, cls="macro",
                                n=int(m.sum()), note=str(exc)))
            continue
        recs += multilabel_records(part, scope="fold", head=task.name, fold=str(int(k)))

    thresholds = label_thresholds(run_dir, task, sorted(int(k) for k in set(fold)))
    op_recs, cal_recs, cal_figs, thr_from = [], [], [], {}
    for j, c in enumerate(cols):
        known = ~np.isnan(y[:, j])
        by_fold = thresholds[thresholds["label"] == c].set_index("fold")
        thr = by_fold["threshold"].reindex(fold).to_numpy(np.float64)
        sources = sorted(set(by_fold["source"]))
        note = (f"threshold per fold from its {_CAL_FILE}" if sources == [_CAL_FILE] else
                f"threshold {DEFAULT_THRESHOLD:g} (no threshold in any fold's {_CAL_FILE})"
                if _CAL_FILE not in sources else
                f"threshold from {_CAL_FILE} where the fold has one, else {DEFAULT_THRESHOLD:g}")
        thr_from[c] = (_CAL_FILE if sources == [_CAL_FILE] else f"{DEFAULT_THRESHOLD:g}"
                       if _CAL_FILE not in sources else f"{_CAL_FILE} or {DEFAULT_THRESHOLD:g}")
        op_recs += _op_records(y[known, j], s[known, j], thr[known], g[known], head=task.name, label=c,
                               level=ev.ci_level, scope="pooled", note=note)
        yk, pk, gk = y[known, j].astype(np.int8), s[known, j], g[known]
        versions = {}
        if f"logit_{c}" in preds.columns:
            versions["uncalibrated (sigmoid of the logit)"] = _sigmoid(preds[f"logit_{c}"].to_numpy(
                np.float64)[known])
        versions["calibrated (used by this report)"] = pk
        curves = {}
        for version, p in versions.items():
            for r in calibration_records(yk, p, gk, cfg, version=version, cls=c, n_bins=ECE_BINS, seed=seed):
                r["head"] = task.name
                cal_recs.append(r)
            curves[version] = reliability_curve(yk, p, ECE_BINS)
        cal_figs.append(TaskFigure(reliability_versions_figure(curves, ECE_BINS), f"reliability diagram {c}",
                                   f"{c}: reliability, {ECE_BINS} equal-width bins, known cases only."))
    recs += op_recs + cal_recs
    sub_recs, sub_missing = _multilabel_subgroups(task, preds, cfg, seed)
    recs += sub_recs

    # the HTML
    rows = []
    for j, c in enumerate(cols):
        lab = pooled.per_label[j]
        thr_src = _find(op_recs, "sensitivity", c)
        rows.append({
            "label": c, "scans known / positive / unknown": f"{lab.n} / {lab.n_pos} / {lab.n_missing}",
            "prevalence": _cell(_find(recs, "prevalence", c)),
            "AUROC (bootstrap)": _cell(_find(recs, "auroc", c, "bootstrap")),
            "AUROC (DeLong)": _cell(_find(recs, "auroc", c, "DeLong")),
            "AP": _cell(_find(recs, "average_precision", c)),
            "sensitivity": _cell(thr_src), "specificity": _cell(_find(op_recs, "specificity", c)),
            "PPV": _cell(_find(op_recs, "ppv", c)), "NPV": _cell(_find(op_recs, "npv", c)),
            "threshold": thr_from[c],
        })
    for avg in ("macro", "micro"):
        rows.append({"label": f"{avg} average", "AUROC (bootstrap)": _cell(_find(recs, "auroc", avg)),
                     "AP": _cell(_find(recs, "average_precision", avg))})
    main = pd.DataFrame(rows)
    main = main.astype(object).where(main.notna(), "")
    thr_show = thresholds.assign(threshold=thresholds["threshold"].map(fmt))
    cal_rows = []
    for c in cols:
        for r in (x for x in cal_recs if x["class"] == c and x["metric"] == "brier"):
            ece = next(x for x in cal_recs if x["class"] == c and x["subgroup"] == r["subgroup"]
                       and x["metric"].startswith("ece_"))
            cal_rows.append({"label": c, "probabilities": r["subgroup"], "Brier": _cell(r),
                             f"ECE ({ECE_BINS} bins)": _cell(ece)})
    co = pooled.cooccurrence
    co_table = pd.DataFrame(
        [[f"{int(co.both_positive[i, j])}/{int(co.both_known[i, j])}"
          + (f" ({fmt(co.conditional[i, j], 2)})" if i != j else "") for j in range(len(cols))]
         for i in range(len(cols))], index=pd.Index(cols, name="given"), columns=cols)
    level = f"{ev.ci_level:.0%}"
    section = TaskSection(
        name=task.name, type="multilabel", anchor=f"task-{task.name}",
        description=f"multilabel: {', '.join(cols)}",
        tables=[
            TaskTable("Per label, pooled out-of-fold", table_html(main),
                      f"Intervals {level}, patients as the unit: AUROC and AP by the patient bootstrap "
                      f"({ev.bootstrap_resamples} resamples), AUROC also by DeLong (clustered), prevalence "
                      "and the metrics at the operating point Clopper-Pearson on n / design effect. A "
                      "label's unknown cells are left out of that label. Macro: the mean over labels; "
                      "micro: all known cells pooled."),
            TaskTable("Operating points per fold and label", table_html(thr_show),
                      f"Chosen on the fold's inner validation ({_CAL_FILE}); where a fold's file names "
                      f"none, {DEFAULT_THRESHOLD:g} is used, as the table says."),
            TaskTable("Calibration per label (pooled out-of-fold)", table_html(pd.DataFrame(cal_rows))),
            TaskTable("Co-occurrence", table_html(co_table, index=True),
                      "Row 'given' i, column j: scans positive for both / scans with both known, and in "
                      "brackets P(j | i); the diagonal: positives / known scans of the label."),
            TaskTable("Subgroups per label", table_html(_subgroup_table(sub_recs, "auroc")),
                      f"AUROC (patient bootstrap) per level of {', '.join(ev.subgroups)}; a level with fewer "
                      f"than {ev.min_positives} positive or negative known scans is not estimable. "
                      + " ".join(sub_missing)),
        ],
        figures=cal_figs,
    )
    summary = {"type": "multilabel", "columns": cols,
               "operating_points": thresholds.to_dict("records"),
               "cooccurrence": co.rows(), "pooled": _compact(r for r in recs if r["scope"] == "pooled")}
    return recs, section, summary


def _multilabel_subgroups(task: MultilabelTask, preds: pd.DataFrame, cfg: Config, seed: int
                          ) -> tuple[list[dict], list[str]]:
    ev = cfg.evaluate
    levels, missing = subgroup_levels(preds, ev.subgroups)
    recs = []
    for label, rows in levels:
        part = preds[rows]
        for c in task.columns:
            yc = part[f"y_{c}"].to_numpy(np.float64)
            known = ~np.isnan(yc)
            n, n_pos = int(known.sum()), int(np.nansum(yc))
            if n_pos < ev.min_positives or n - n_pos < ev.min_positives:
                recs.append(_record("subgroup", "auroc", math.nan, subgroup=label, head=task.name, cls=c,
                                    n=n, n_pos=n_pos,
                                    note=f"not estimable: {n_pos} positive and {n - n_pos} negative "
                                         f"known cases (minimum {ev.min_positives} of each)"))
                continue
            summ, note = _quiet(multilabel_metrics, yc[known, None], part[f"p_{c}"].to_numpy(
                np.float64)[known, None], part["patient_id"].astype(str).to_numpy()[known], labels=[c],
                n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
            recs += [r for r in multilabel_records(summ, scope="subgroup", head=task.name, subgroup=label)
                     if r["class"] == c and r["metric"] in ("prevalence", "auroc", "average_precision")]
    return recs, missing


def _subgroup_table(recs: list[dict], metric: str, how: str = "bootstrap") -> pd.DataFrame:
    rows = []
    for r in recs:
        if r["metric"] != metric or (r["ci_method"] and how not in r["ci_method"]):
            continue
        rows.append({"subgroup": r["subgroup"], "class": r["class"], "scans": r["n"], "positives": r["n_pos"],
                     metric.upper() if metric == "auroc" else metric: _cell(r) if math.isfinite(r["value"])
                     else "not estimable", "note": r["note"] if not math.isfinite(r["value"]) else ""})
    return pd.DataFrame(rows)


# --- regression ----------------------------------------------------------------------------------------


def _regression(task: RegressionTask, preds: pd.DataFrame, cfg: Config, seed: int
                ) -> tuple[list[dict], TaskSection, dict]:
    ev = cfg.evaluate
    col, t = task.column, task.name  # records' class: the manifest column; table columns: the task
    _need(preds, [f"y_{t}", f"pred_{t}"], task)
    nominal = float(getattr(task, "interval", None) or DEFAULT_INTERVAL)
    unit = task.unit or ""
    y_all = preds[f"y_{t}"].to_numpy(np.float64)
    p_all = preds[f"pred_{t}"].to_numpy(np.float64)
    known = np.isfinite(y_all) & np.isfinite(p_all)
    n_missing = int((~known).sum())
    df = preds[known]
    y, p = y_all[known], p_all[known]
    g = df["patient_id"].astype(str).to_numpy()
    has_pi = f"pred_{t}_lo" in df.columns and f"pred_{t}_hi" in df.columns
    lo = df[f"pred_{t}_lo"].to_numpy(np.float64) if has_pi else None
    hi = df[f"pred_{t}_hi"].to_numpy(np.float64) if has_pi else None
    unbounded = has_pi and not (np.isfinite(lo).all() and np.isfinite(hi).all())
    if unbounded:  # too few inner-validation cases for the level: the interval is the whole line
        lo = hi = None
    kw = dict(nominal=nominal, level=ev.ci_level, n_resamples=ev.bootstrap_resamples, seed=seed,
              n_bins=CAL_BINS)
    if len(np.unique(g)) < 2:  # e.g. a target never recorded: say so instead of failing the report
        why = (f"not estimable: {len(y)} cases of {len(np.unique(g))} patients have a known value "
               f"({n_missing} unknown); the statistics need at least 2 patients")
        rec = MetricRecord(scope="pooled", subgroup="all", fold="pooled", head=t, class_name=col,
                           metric="mae", value=math.nan, n=len(y), note=why).as_row()
        section = TaskSection(name=t, type="regression", anchor=f"task-{t}",
                              description=f"regression: {col}" + (f" ({unit})" if unit else ""), notes=[why])
        return [rec], section, {"type": "regression", "column": col, "unit": task.unit, "n": len(y),
                                "n_missing": n_missing, "note": why}
    summ, warn = _quiet(regression_summary, y, p, g, lo=lo, hi=hi, **kw)
    missing_note = "; ".join(x for x in (
        f"{n_missing} cases with the value unknown left out" if n_missing else "",
        "coverage not estimated: some prediction intervals are unbounded (too few inner-validation cases "
        "for the interval's level)" if unbounded else "") if x)
    recs = regression_records(summ, scope="pooled", head=task.name, class_name=col)
    for r in recs:
        r["note"] = "; ".join(x for x in (missing_note, r["note"]) if x)
    fold = df["fold"].to_numpy().astype(int)
    for k in sorted(set(fold)):
        m = fold == k
        try:
            part, _ = _quiet(regression_summary, y[m], p[m], g[m], lo=None if lo is None else lo[m],
                             hi=None if hi is None else hi[m], **kw)
        except DataError as exc:
            recs.append(_record("fold", "mae", math.nan, fold=int(k), head=task.name, cls=col, n=int(m.sum()),
                                note=str(exc)))
            continue
        recs += regression_records(part, scope="fold", head=task.name, fold=str(int(k)), class_name=col)
    sub_recs, sub_missing = _regression_subgroups(task, df, y, p, cfg, seed)
    recs += sub_recs

    def row(label: str, metric: str, how: str | None = None) -> dict:
        r = _find(recs, metric, col, how)
        return {"metric": label, "value [interval]": _cell(r, 4),
                "interval": (r or {}).get("ci_method", ""), "note": (r or {}).get("note", "")}

    rows = [row("MAE", "mae"), row("RMSE", "rmse"), row("R²", "r2"),
            row("Pearson r", "pearson_r", "Fisher"), row("Pearson r", "pearson_r", "bootstrap"),
            row("Lin's CCC", "ccc", "Fisher"), row("Lin's CCC", "ccc", "bootstrap"),
            row("bias (predicted - reference)", "bias", "t on"),
            row("lower limit of agreement", "loa_lower", "Carkeet"),
            row("upper limit of agreement", "loa_upper", "Carkeet"),
            row("calibration intercept (ideal 0)", "calibration_intercept"),
            row("calibration slope (ideal 1)", "calibration_slope")]
    if has_pi:
        rows.append(row(f"prediction-interval coverage (nominal {nominal:g})", "interval_coverage"))
    pooled = [r for r in recs if r["scope"] == "pooled"]
    ba, cal = summ.bland_altman, summ.calibration
    limits = {"bias": (ba.bias.value, ba.bias.ci_low, ba.bias.ci_high),
              "lower limit": (ba.lower.value, ba.lower.ci_low, ba.lower.ci_high),
              "upper limit": (ba.upper.value, ba.upper.ci_low, ba.upper.ci_high)}
    level = f"{ev.ci_level:.0%}"
    figs = [
        TaskFigure(figures.bland_altman_figure(ba.mean, ba.difference, limits, unit=unit, level=ev.ci_level),
                   f"Bland-Altman plot {col}",
                   f"Bland-Altman: bias and limits of agreement (bias ± {ba.k:g} SD) with their {level} "
                   "intervals (shaded)."),
        TaskFigure(figures.regression_calibration_figure(
            y, p, cal.mean_predicted, cal.mean_observed, cal.counts, intercept=cal.intercept.value,
            slope=cal.slope.value, unit=unit), f"calibration plot {col}",
            f"Reference against predicted: {cal.n_bins} predicted-quantile bins and the fitted line."),
    ]
    n_pat = len(np.unique(g))
    section = TaskSection(
        name=task.name, type="regression", anchor=f"task-{task.name}",
        description=f"regression: {col}" + (f" ({unit})" if unit else ""),
        tables=[
            TaskTable(f"Agreement, pooled out-of-fold ({len(y)} scans, {n_pat} patients)",
                      table_html(pd.DataFrame(rows)),
                      f"{level} intervals with patients as the unit. " + (missing_note + ". " if missing_note
                                                                           else "") + (warn or "")),
            TaskTable("Subgroups", table_html(_regression_subgroup_table(sub_recs)),
                      f"MAE and bias per level of {', '.join(ev.subgroups)} (patient bootstrap); a level "
                      f"with fewer than {ev.min_positives} known cases or 2 patients is not estimable. "
                      + " ".join(sub_missing)),
        ],
        figures=figs,
    )
    summary = {"type": "regression", "column": col, "unit": task.unit, "n": len(y), "n_missing": n_missing,
               "interval_level": nominal if has_pi else None,
               "pooled": _compact(pooled)}
    return recs, section, summary


def _regression_subgroups(task: RegressionTask, df: pd.DataFrame, y: np.ndarray, p: np.ndarray, cfg: Config,
                          seed: int) -> tuple[list[dict], list[str]]:
    ev = cfg.evaluate
    levels, missing = subgroup_levels(df, ev.subgroups)
    patients = df["patient_id"].astype(str).to_numpy()
    recs = []
    for label, m in levels:
        g = patients[m]
        n, n_pat = int(m.sum()), len(np.unique(g))
        common = dict(scope="subgroup", subgroup=label, fold="pooled", head=task.name,
                      class_name=task.column, n=n)
        if n < ev.min_positives or n_pat < 2:
            for metric in ("mae", "bias"):
                note = (f"not estimable: {n} known cases of {n_pat} patients (minimum "
                        f"{ev.min_positives} cases, 2 patients)")
                recs.append(MetricRecord(metric=metric, value=math.nan, note=note, **common).as_row())
            continue
        boot, _ = _quiet(regression_bootstrap, y[m], p[m], g, metrics=("mae", "rmse", "bias"),
                         n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
        for metric, res in boot.items():
            recs.append(MetricRecord(metric=metric, value=res.estimate, ci_low=res.ci_low,
                                     ci_high=res.ci_high, ci_method=res.ci_method, note=res.reason,
                                     **common).as_row())
    return recs, missing


def _regression_subgroup_table(recs: list[dict]) -> pd.DataFrame:
    rows: dict[str, dict] = {}
    for r in recs:
        row = rows.setdefault(r["subgroup"], {"subgroup": r["subgroup"], "scans": r["n"]})
        if r["metric"] in ("mae", "bias"):
            row["MAE" if r["metric"] == "mae" else "bias"] = (
                _cell(r, 4) if math.isfinite(r["value"]) else "not estimable")
    return pd.DataFrame(list(rows.values()))


# --- the held-out test split (manifest split = test) ---------------------------------------------------

#: the ``fold`` of the mean of the fold models on the test split (as the single-label head's records)
TEST_ENSEMBLE_FOLD = "mean of folds"


def _test_parts(test: pd.DataFrame, mean_columns: list[str], first_columns: list[str]
                ) -> list[tuple[str, str, pd.DataFrame]]:
    """``(scope, fold, rows)``: each fold's model on the test split (scope ``test``), then the mean of the
    fold models' outputs per case (scope ``test_ensemble``, fold `TEST_ENSEMBLE_FOLD`)."""
    folds = sorted(int(k) for k in pd.unique(test["fold"]))
    parts = [("test", str(k), test[test["fold"].astype(int) == k]) for k in folds]
    agg = {"patient_id": "first", **{c: "first" for c in first_columns}, **{c: "mean" for c in mean_columns}}
    ens = test.groupby("case_id", sort=False).agg(agg).reset_index()
    return parts + [("test_ensemble", TEST_ENSEMBLE_FOLD, ens)]


def _model_name(scope: str, fold: str) -> str:
    return f"fold {fold} model" if scope == "test" else "mean of the fold models"


def _multilabel_test(task: MultilabelTask, test: pd.DataFrame, cfg: Config, run_dir: Any, seed: int
                     ) -> tuple[list[dict], TaskTable]:
    ev = cfg.evaluate
    cols = list(task.columns)
    _need(test, [f"y_{c}" for c in cols] + [f"p_{c}" for c in cols], task)
    folds = sorted(int(k) for k in pd.unique(test["fold"]))
    thresholds = label_thresholds(run_dir, task, folds)
    thr = {(int(r.fold), r.label): float(r.threshold) for r in thresholds.itertuples()}
    recs, rows = [], []
    for scope, fold, df in _test_parts(test, [f"p_{c}" for c in cols], [f"y_{c}" for c in cols]):
        y = df[[f"y_{c}" for c in cols]].to_numpy(np.float64)
        s = df[[f"p_{c}" for c in cols]].to_numpy(np.float64)
        g = df["patient_id"].astype(str).to_numpy()
        part: list[dict] = []
        try:
            summ, _ = _quiet(multilabel_metrics, y, s, g, labels=cols, n_resamples=ev.bootstrap_resamples,
                             level=ev.ci_level, seed=seed)
            part += multilabel_records(summ, scope=scope, head=task.name, fold=fold)
        except DataError as exc:  # e.g. one patient: no interval
            part.append(_record(scope, "auroc", math.nan, fold=fold, head=task.name, cls="macro", n=len(df),
                                note=str(exc)))
        for j, c in enumerate(cols):
            cut = thr[(int(fold), c)] if scope == "test" else float(np.mean([thr[(k, c)] for k in folds]))
            how = "the fold's threshold" if scope == "test" else "the mean of the folds' thresholds"
            known = ~np.isnan(y[:, j])
            ops = _op_records(y[known, j], s[known, j], np.full(int(known.sum()), cut), g[known],
                              head=task.name, label=c, level=ev.ci_level, scope=scope, fold=fold,
                              note=f"{how} {fmt(cut)}")
            part += ops
            rows.append({"model": _model_name(scope, fold), "label": c,
                         "scans known / positive": f"{int(known.sum())} / {int(np.nansum(y[:, j]))}",
                         "AUROC": _cell(_find(part, "auroc", c, "bootstrap")),
                         "AP": _cell(_find(part, "average_precision", c)), "threshold": fmt(cut),
                         "sensitivity": _cell(_find(ops, "sensitivity", c)),
                         "specificity": _cell(_find(ops, "specificity", c))})
        rows.append({"model": _model_name(scope, fold), "label": "macro average",
                     "AUROC": _cell(_find(part, "auroc", "macro"))})
        recs += part
    table = pd.DataFrame(rows)
    note = (f"Scans of the manifest's split = test, never used in cross-validation, predicted by each fold's "
            f"model at its own operating point (from its {_CAL_FILE}, else {DEFAULT_THRESHOLD:g}); the mean "
            "of the fold models averages their calibrated probabilities per scan and uses the mean of their "
            f"thresholds. {ev.ci_level:.0%} intervals with patients as the unit, as above.")
    return recs, TaskTable("Held-out test set (manifest split = test)",
                           table_html(table.astype(object).where(table.notna(), "")), note)


def _regression_test(task: RegressionTask, test: pd.DataFrame, cfg: Config, seed: int
                     ) -> tuple[list[dict], TaskTable]:
    ev = cfg.evaluate
    col, t = task.column, task.name
    _need(test, [f"y_{t}", f"pred_{t}"], task)
    nominal = float(getattr(task, "interval", None) or DEFAULT_INTERVAL)
    bounds = [c for c in (f"pred_{t}_lo", f"pred_{t}_hi") if c in test.columns]
    recs, rows = [], []
    for scope, fold, df in _test_parts(test, [f"pred_{t}", *bounds], [f"y_{t}"]):
        y, p = df[f"y_{t}"].to_numpy(np.float64), df[f"pred_{t}"].to_numpy(np.float64)
        known = np.isfinite(y) & np.isfinite(p)
        g = df["patient_id"].astype(str).to_numpy()[known]
        lo = df[bounds[0]].to_numpy(np.float64)[known] if len(bounds) == 2 else None
        hi = df[bounds[1]].to_numpy(np.float64)[known] if len(bounds) == 2 else None
        if lo is not None and not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            lo = hi = None  # unbounded intervals: no coverage
        part: list[dict] = []
        try:
            if len(np.unique(g)) < 2:
                raise DataError(f"not estimable: {int(known.sum())} cases of {len(np.unique(g))} patients "
                                "have a known value; the statistics need at least 2 patients")
            summ, _ = _quiet(regression_summary, y[known], p[known], g, lo=lo, hi=hi, nominal=nominal,
                             level=ev.ci_level, n_resamples=ev.bootstrap_resamples, seed=seed,
                             n_bins=CAL_BINS)
            part += regression_records(summ, scope=scope, head=t, fold=fold, class_name=col)
        except DataError as exc:
            part.append(_record(scope, "mae", math.nan, fold=fold, head=t, cls=col, n=int(known.sum()),
                                note=exc.reason))
        row = {"model": _model_name(scope, fold), "scans": int(known.sum())}
        for label, metric in (("MAE", "mae"), ("RMSE", "rmse"), ("bias (predicted - reference)", "bias")):
            row[label] = _cell(_find(part, metric, col, "bootstrap" if metric == "bias" else None), 4)
        if lo is not None:
            row[f"interval coverage (nominal {nominal:g})"] = _cell(_find(part, "interval_coverage", col), 3)
        row["note"] = next((r["note"] for r in part if r["metric"] == "mae"
                            and not math.isfinite(r["value"])), "")
        rows.append(row)
        recs += part
    note = ("Scans of the manifest's split = test, never used in cross-validation, predicted by each fold's "
            "model; the mean of the fold models averages their values (and interval bounds) per scan. "
            f"{ev.ci_level:.0%} intervals with patients as the unit.")
    table = pd.DataFrame(rows)
    return recs, TaskTable("Held-out test set (manifest split = test)",
                           table_html(table.astype(object).where(table.notna(), "")), note)


def holdout_task_records(test: pd.DataFrame | None, cfg: Config, *, run_dir: Any = None, seed: int = 0
                      ) -> tuple[list[dict], dict[str, TaskTable]]:
    """Records and one table per multilabel / regression task on the test split (``fold_k/
    test_predictions.parquet``, manifest ``split=test``): scope ``test`` per fold model (fold ``k``),
    ``test_ensemble`` for the mean of the fold models (fold `TEST_ENSEMBLE_FOLD`), as the single-label
    head's test records (`medres.report.aggregate.holdout_test_records`). None or no rows: nothing."""
    recs: list[dict] = []
    tables: dict[str, TaskTable] = {}
    if test is None or not len(test):
        return recs, tables
    for task in report_tasks(cfg):
        if isinstance(task, MultilabelTask):
            part, table = _multilabel_test(task, test, cfg, run_dir, seed)
        else:
            part, table = _regression_test(task, test, cfg, seed)
        recs += part
        tables[task.name] = table
    return recs, tables


# --- all tasks -----------------------------------------------------------------------------------------


def task_report(preds: pd.DataFrame, cfg: Config, *, run_dir: Any = None, seed: int = 0,
                test: pd.DataFrame | None = None) -> TaskReport:
    """Records, sections and summary of every multilabel and regression task of ``cfg`` on the pooled
    out-of-fold ``preds`` (an empty `TaskReport` without ``tasks:``); with ``test`` (the fold models'
    test-split tables) also each task's test-split records and table (`holdout_task_records`)."""
    out = TaskReport()
    test_recs, test_tables = holdout_task_records(test, cfg, run_dir=run_dir, seed=seed)
    for task in report_tasks(cfg):
        if isinstance(task, MultilabelTask):
            recs, section, summary = _multilabel(task, preds, cfg, run_dir, seed)
        else:
            recs, section, summary = _regression(task, preds, cfg, seed)
        out.records += recs
        if task.name in test_tables:
            section.tables.append(test_tables[task.name])
            mine = [r for r in test_recs if r["head"] == task.name]
            out.records += mine
            summary["test"] = _compact(mine)
        out.sections.append(section)
        out.summary[task.name] = summary
        out.export_columns += [c for c in task_columns(task) if c in preds.columns]
    return out
