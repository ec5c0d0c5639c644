"""Build the report bundle from a run's saved predictions: report.html, summary.json and the CSV tables.

``build_bundle`` needs no torch: it takes the run's DataFrames (`load_run`), optional per-case
segmentation metrics and ready gallery images, and writes

- ``report.html``: self-contained (inline CSS and PNG figures, no script, no external URL);
- ``summary.json``: the long-format metric records (``records``) with the operating points and task
  (a non-finite value is null there, with ``value_nonfinite`` "inf", "-inf" or "nan"); with ``tasks:``
  also a ``tasks`` section, and report.html a section per multilabel / regression task (`report.tasks`);
- ``predictions.csv``: the out-of-fold predictions with the operating point, patient ids replaced by
  pseudonymous keys (``patient-0001`` ...) and no file paths;
- ``seg_cases.csv``: per-case segmentation metrics (same keys); ``cohort.csv``: the cohort table.

No patient identifier leaves the run folder: the report shows counts of patients, never the
manifest's ``patient_id`` values, and names cases by their case ids -- unless a case id contains its
patient id (as ``P0001_S1`` does), then by keys ``case-0001`` ... (`case_labels`), with the map in
``private/case_keys.csv``, which is not meant for sharing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import medres.report.figures as figures
from medres.config.tasks import task_layout
from medres.metrics.calibration import calibration_intercept_slope, reliability_curve
from medres.metrics.curves import roc_band
from medres.metrics.decision import decision_curve
from medres.metrics.segmentation import empty_mask_policy
from medres.report.aggregate import (
    _quiet,
    _record,
    across_fold_records,
    binary_task,
    classification_records,
    holdout_test_records,
    one_vs_rest_records,
    operating_points,
)
from medres.report.calibration import calibration_section
from medres.report.cohort import cohort_table, split_audit
from medres.report.compare import comparisons as compare_runs
from medres.report.conformal import SET_COLUMN, conformal_section, conformal_test_split_section
from medres.report.external import external_group_table, external_records, external_test_table
from medres.report.guidelines import guideline_table
from medres.report.html import (
    delong_note,
    fmt,
    fmt_ci,
    fold_table,
    holdout_test_table,
    render_html,
    segmentation_table,
    subgroup_table,
    summary_cards,
    table_html,
)
from medres.report.privacy import case_labels, export_predictions, pseudonymise
from medres.report.run_folder import RunData
from medres.report.seg_classes import class_empty_counts
from medres.report.seg_records import segmentation_records
from medres.report.subgroups import subgroup_records
from medres.report.tasks import task_report
from medres.report.test_split import test_segmentation_records, test_segmentation_table
from medres.runfolder import ReportFolder
from medres.safe_text import csv_safe

__all__ = ["Bundle", "GalleryItem", "build_bundle", "ECE_BINS"]

ECE_BINS = 10


@dataclass
class GalleryItem:
    """One worst case, drawn by the caller: ``src`` is a data URI (see `figures.gallery_figure`)."""

    case_id: str
    src: str
    caption: str


@dataclass
class _Figure:
    src: str
    alt: str
    caption: str = ""


@dataclass
class Bundle:
    """What `build_bundle` computed, for callers that want more than the files."""

    output: Path
    records: pd.DataFrame
    predictions: pd.DataFrame
    thresholds: pd.DataFrame
    extras: dict = field(default_factory=dict)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return _json_safe(float(value))
    return value


def _json_tree(value):
    """``value`` with every float made JSON-safe (non-finite: null), through dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _json_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_tree(v) for v in value]
    return _json_safe(value)


def _json_record(record: dict) -> dict:
    """A metric record for summary.json. JSON has no infinity: a non-finite ``value`` is written as null
    with ``value_nonfinite`` saying which ("inf", "-inf" or "nan"; null when finite) and the note why,
    so an infinite LR+ (no false positives) is told apart from an undefined one."""
    out = {k: _json_safe(v) for k, v in record.items()}
    value = record.get("value")
    kind = None
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        kind = "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    out["value_nonfinite"] = kind
    return out


def build_bundle(
    run: RunData,
    output: str | Path,
    *,
    seg_cases: pd.DataFrame | None = None,
    gallery: list[GalleryItem] | None = None,
    provenance: dict[str, str] | None = None,
    compare: RunData | list[RunData] | None = None,
    seg_policy: str | None = None,
    gallery_note: str = "",
    test_seg_cases: pd.DataFrame | None = None,
) -> Bundle:
    """Compute every record, table and figure of a run and write the bundle into ``output``.

    ``seg_policy``: the segmentation section's note; by default the one empty-mask policy of
    :mod:`medres.metrics.segmentation` at the run's NSD tolerance."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cfg, ev = run.config, run.config.evaluate
    seed = cfg.train.seed
    if cfg.tasks is not None and task_layout(cfg).single_label is None:  # no p_<class> / y_true to report
        return _build_tasks_only(run, output, seg_cases=seg_cases, gallery=gallery, provenance=provenance,
                                 seg_policy=seg_policy, gallery_note=gallery_note,
                                 test_seg_cases=test_seg_cases)
    task = binary_task(cfg)
    labels, ids_shown = case_labels(run.predictions)
    preds, thresholds = operating_points(
        run.predictions, run.inner_val, task, method=ev.threshold, target=ev.threshold_target
    )

    records: list[dict] = []
    fold_recs: list[dict] = []
    for f in sorted(preds["fold"].unique()):
        fold_recs += classification_records(
            preds[preds["fold"] == f], task, cfg, scope="fold", fold=int(f), seed=seed
        )
    records += fold_recs
    pooled = classification_records(preds, task, cfg, scope="pooled", seed=seed, with_delong=True)
    records += pooled
    y = (preds["y_true"].to_numpy() == task.index).astype(np.int8)
    p = preds[task.score_col].to_numpy(np.float64)
    rc = reliability_curve(y, p, ECE_BINS)
    fit, fit_note = _quiet(calibration_intercept_slope, y, p)
    common = dict(cls=task.positive, n=len(y), n_pos=int(y.sum()))
    records += [
        _record("pooled", f"ece_{ECE_BINS}_bins", rc.ece, note=f"{ECE_BINS} equal-width bins", **common),
        _record("pooled", "calibration_intercept", fit.intercept, note=fit_note or fit.reason, **common),
        _record("pooled", "calibration_slope", fit.slope, note=fit_note or fit.reason, **common),
    ]
    recal = calibration_section(preds, cfg, positive=task.positive, n_bins=ECE_BINS, seed=seed,
                                run_dir=run.run_dir)
    records += recal[0]
    if len(cfg.data.labels) > 2:
        for f in sorted(preds["fold"].unique()):
            records += one_vs_rest_records(
                preds[preds["fold"] == f], cfg, scope="fold", fold=int(f), seed=seed
            )
        records += one_vs_rest_records(preds, cfg, scope="pooled", seed=seed)
    sub_recs, sub_missing = subgroup_records(preds, task, cfg, seed=seed)
    seg_recs = (
        segmentation_records(seg_cases, cfg, seed=seed) if seg_cases is not None and len(seg_cases) else []
    )
    records += across_fold_records(fold_recs + [r for r in seg_recs if r["scope"] == "fold"])
    records += sub_recs + seg_recs
    has_test = run.test is not None and len(run.test) > 0
    if has_test:
        records += holdout_test_records(run.test, thresholds, task, cfg, seed=seed)
    test_conf_recs, test_conformal = conformal_test_split_section(preds, run.test, cfg, seed=seed)
    records += test_conf_recs
    ext_recs = external_records(preds, run.inner_val, run.test, task, cfg, seed=seed)  # held-out sites
    records += ext_recs
    conf_recs, conf_sets, conformal = conformal_section(preds, run.inner_val, cfg, seed=seed)
    records += conf_recs
    if conf_sets is not None:  # each held-out case's prediction set, in predictions.csv
        preds[SET_COLUMN] = conf_sets
    test_seg_recs = test_segmentation_records(test_seg_cases, cfg, seed=seed)  # test split: folds + ensemble
    records += test_seg_recs
    comparison = None
    if compare is not None:  # one run or several: every pair, on the cases all of them predicted
        others = list(compare) if isinstance(compare, (list, tuple)) else [compare]
        comp_recs, comparison = compare_runs([run, *others], task, seed)
        records += comp_recs
    rec_df = pd.DataFrame(records)
    tasks = task_report(preds, cfg, run_dir=run.run_dir, seed=seed, test=run.test)  # multilabel / regression

    # figures
    g = preds["patient_id"].to_numpy()
    fold = preds["fold"].to_numpy()
    by = rec_df[(rec_df["scope"] == "pooled") & (rec_df["head"] == "classification")]
    boot = by[~by["ci_method"].str.contains("DeLong")].set_index("metric")
    au = boot.loc["auroc"]
    roc = roc_band(y, p, g, fpr_grid=figures.FPR_GRID, n_resamples=min(ev.bootstrap_resamples, 500),
                   level=ev.ci_level, seed=seed)
    band = (roc.tpr_low, roc.tpr_high)
    dc = decision_curve(y, p)
    cls_figures = [
        _Figure(
            figures.roc_figure(
                y, p, fold, band, auroc=au["value"], ci=(au["ci_low"], au["ci_high"]), level=ev.ci_level
            ),
            "ROC curve",
            "Pooled out-of-fold ROC (black) with its pointwise patient-bootstrap band, "
            "and each fold's curve.",
        ),
        _Figure(
            figures.pr_figure(y, p, fold, ap=boot.loc["average_precision", "value"]),
            "precision-recall curve",
            "Precision-recall; dotted: the prevalence, the AP of a model that ranks at random.",
        ),
        _Figure(
            figures.reliability_figure(
                rc.mean_predicted, rc.observed, rc.counts, n_bins=ECE_BINS, ece=rc.ece
            ),
            "reliability diagram",
            f"Reliability diagram, {ECE_BINS} equal-width bins, with cases per bin.",
        ),
        _Figure(
            figures.decision_curve_figure(dc.thresholds, dc.model, dc.treat_all),
            "decision curve",
            "Net benefit across threshold probabilities (Vickers and Elkin 2006).",
        ),
    ]
    sub_df = pd.DataFrame(sub_recs)
    forest = (
        figures.forest_figure(sub_df, metric="auroc", pooled=au["value"])
        if len(sub_df) and (sub_df["metric"] == "auroc").any()
        else ""
    )

    seg_ctx = None
    if seg_recs:
        seg_ctx = {
            "policy": seg_policy or empty_mask_policy(run.config.evaluate.nsd_tolerance_mm),
            "table": table_html(segmentation_table(rec_df)),
            "classes": table_html(class_empty_counts(seg_cases)),  # per foreground class: empty masks
            "figures": [
                _Figure(
                    figures.seg_distribution_figure(seg_cases),
                    "Dice and HD95 distributions",
                    "Per-case Dice and HD95 by fold; undefined cases left out.",
                )
            ],
        }

    audit = split_audit(preds, run.folds, run.inner_val, run.test)
    cohort = cohort_table(preds, cfg.data.labels)
    cards = summary_cards(rec_df, task, preds, seg_recs)
    cal = pd.DataFrame(
        [
            {
                "metric": m,
                "value": fmt(
                    rec_df.loc[(rec_df["scope"] == "pooled") & (rec_df["metric"] == k), "value"].iloc[0]
                ),
            }
            for m, k in (
                ("Brier", "brier"),
                (f"ECE ({ECE_BINS} bins)", f"ece_{ECE_BINS}_bins"),
                ("calibration intercept (ideal 0)", "calibration_intercept"),
                ("calibration slope (ideal 1)", "calibration_slope"),
            )
        ]
    )
    thr_show = thresholds.assign(threshold=thresholds["threshold"].map(fmt))
    ovr = rec_df[rec_df["metric"].isin(["auroc_ovr", "auroc_macro"])]
    context = {
        "tasks_only": False,
        "run_name": run.run_dir.name,
        "task_description": f"{task.positive} vs rest (classes: {', '.join(cfg.data.labels)})",
        "n_folds": int(preds["fold"].nunique()),
        "positive": task.positive,
        "audit_failed": not bool(audit["passed"].all()),
        "cards": cards,
        "n_resamples": ev.bootstrap_resamples,
        "seed": seed,
        "ci_level": f"{ev.ci_level:.0%}",
        "privacy_note": _privacy_note(ids_shown),
        "cohort_table": table_html(cohort, index=True),
        "audit": audit.to_dict("records"),
        "fold_table": table_html(fold_table(rec_df, thresholds)),
        "holdout_test_table": table_html(holdout_test_table(rec_df, thresholds)) if has_test else "",
        "test_seg_table": table_html(test_segmentation_table(rec_df)) if test_seg_recs else "",
        "external": {"design": cfg.cv.strategy,
                     "groups": table_html(external_group_table(rec_df))
                     if (rec_df.get("scope", pd.Series(dtype=str)) == "external_group").any() else "",
                     "test": table_html(external_test_table(rec_df))
                     if (rec_df.get("scope", pd.Series(dtype=str)) == "external_test").any() else ""},
        "threshold_method": ev.threshold
        + (f" (target {ev.threshold_target})" if ev.threshold in ("sensitivity", "specificity") else ""),
        "delong_note": delong_note(rec_df),
        "threshold_table": table_html(thr_show),
        "ovr_table": table_html(ovr[["scope", "fold", "class", "value", "ci_low", "ci_high", "n", "n_pos"]])
        if len(ovr)
        else "",
        "calibration_table": table_html(cal),
        "recalibration": {"table": table_html(recal[1]), "figure": recal[2], "note": recal[3]},
        "cls_figures": cls_figures,
        "subgroup_columns": ", ".join(ev.subgroups),
        "min_positives": ev.min_positives,
        "subgroup_missing": " ".join(sub_missing),
        "subgroup_table": table_html(subgroup_table(rec_df)),
        "forest": forest,
        "seg": seg_ctx,
        "gallery": gallery or [],
        "gallery_note": gallery_note,
        "comparison": comparison,
        "conformal": conformal,
        "test_conformal": test_conformal,
        "guideline_table": table_html(guideline_table()),
        "provenance": {"medres_version": (provenance or {}).get("medres version", "")},
        "provenance_rows": list((provenance or {}).items()),
        "tasks": tasks.sections,
    }
    bundle = ReportFolder(output)
    bundle.html.write_text(render_html(context), encoding="utf-8")

    keys = pseudonymise(preds["patient_id"])
    key_of = dict(zip(preds["patient_id"], keys))
    exported = export_predictions(preds, list(ev.subgroups), keys, labels, ids_shown)
    if tasks.export_columns:
        exported = exported.join(preds[[c for c in tasks.export_columns if c not in exported]])
    csv_safe(exported).to_csv(bundle.predictions_csv, index=False)
    if seg_cases is not None:
        sc = seg_cases.drop(
            columns=[c for c in ("case_id", "patient_id", "image", "mask", "seg_path") if c in seg_cases]
        )
        sc.insert(0, "case_id" if ids_shown else "case_key", seg_cases["case_id"].map(labels).to_numpy())
        sc.insert(1, "patient_key", seg_cases["patient_id"].map(key_of).to_numpy())
        csv_safe(sc).to_csv(bundle.seg_cases, index=False)
    if not ids_shown:  # the key -> case id map stays out of the shareable files
        bundle.case_keys.parent.mkdir(exist_ok=True)
        keys_table = pd.DataFrame({"case_key": preds["case_id"].map(labels), "case_id": preds["case_id"]})
        csv_safe(keys_table).to_csv(bundle.case_keys, index=False)
    csv_safe(cohort).to_csv(bundle.cohort)
    summary = {
        "run": run.run_dir.name,
        "task": {"positive_class": task.positive, "score_column": task.score_col, "labels": cfg.data.labels},
        "operating_points": [{k: _json_safe(v) for k, v in r.items()} for r in thresholds.to_dict("records")],
        "split_audit": audit.to_dict("records"),
        "records": [_json_record(r) for r in records + tasks.records],
    }
    if tasks.summary:
        summary["tasks"] = {name: _json_tree(part) for name, part in tasks.summary.items()}
    bundle.summary.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
    if tasks.records:
        rec_df = pd.concat([rec_df, pd.DataFrame(tasks.records)], ignore_index=True)
    return Bundle(output, rec_df, preds, thresholds)


def _task_cards(preds: pd.DataFrame, task_records: list[dict], cfg) -> list[dict]:
    """Summary cards of a run without a single-label task: the cohort, each label's AUROC and each
    regression task's MAE (pooled out of fold)."""
    recs = pd.DataFrame(task_records)
    cards = [{"label": "patients / scans", "value": f"{preds['patient_id'].nunique()} / {len(preds)}",
              "detail": "held out once each", "id": ""}]
    if recs.empty:
        return cards
    pooled = recs[recs["scope"] == "pooled"]
    for task in cfg.tasks:
        metric = "auroc" if task.type == "multilabel" else "mae"
        for col in task.target_columns():
            rec = pooled[(pooled["head"] == task.name) & (pooled["class"] == col)
                         & (pooled["metric"] == metric)]
            if len(rec):
                r = rec.iloc[0]
                cards.append({"label": f"{task.name}: {col} {metric.upper()}", "value": fmt(r["value"]),
                              "detail": fmt_ci(r["value"], r["ci_low"], r["ci_high"]), "id": ""})
    return cards


def _build_tasks_only(
    run: RunData,
    output: str | Path,
    *,
    seg_cases: pd.DataFrame | None,
    gallery: list[GalleryItem] | None,
    provenance: dict[str, str] | None,
    seg_policy: str | None,
    gallery_note: str,
    test_seg_cases: pd.DataFrame | None,
) -> Bundle:
    """`build_bundle` for a run whose tasks are multilabel and regression only: the cohort, the split
    audit, the segmentation and a section per task; no classification section (there is no single-label
    ``y_true`` or ``p_<class>`` to score)."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    cfg, ev = run.config, run.config.evaluate
    seed = cfg.train.seed
    labels, ids_shown = case_labels(run.predictions)
    preds = run.predictions.copy()
    thresholds = pd.DataFrame(columns=["fold", "threshold", "method"])
    seg_recs = (
        segmentation_records(seg_cases, cfg, seed=seed) if seg_cases is not None and len(seg_cases) else []
    )
    records = across_fold_records([r for r in seg_recs if r["scope"] == "fold"]) + seg_recs
    test_seg_recs = test_segmentation_records(test_seg_cases, cfg, seed=seed)
    records += test_seg_recs
    rec_df = pd.DataFrame(records)
    tasks = task_report(preds, cfg, run_dir=run.run_dir, seed=seed, test=run.test)
    seg_ctx = None
    if seg_recs:
        seg_ctx = {
            "policy": seg_policy or empty_mask_policy(cfg.evaluate.nsd_tolerance_mm),
            "table": table_html(segmentation_table(rec_df)),
            "classes": table_html(class_empty_counts(seg_cases)),
            "figures": [_Figure(figures.seg_distribution_figure(seg_cases), "Dice and HD95 distributions",
                                "Per-case Dice and HD95 by fold; undefined cases left out.")],
        }
    audit = split_audit(preds, run.folds, run.inner_val, run.test)
    cohort = cohort_table(preds, [])
    context = {
        "tasks_only": True,
        "run_name": run.run_dir.name,
        "task_description": "tasks: " + ", ".join(f"{t.name} ({t.type})" for t in cfg.tasks),
        "n_folds": int(preds["fold"].nunique()),
        "audit_failed": not bool(audit["passed"].all()),
        "cards": _task_cards(preds, tasks.records, cfg),
        "n_resamples": ev.bootstrap_resamples,
        "seed": seed,
        "ci_level": f"{ev.ci_level:.0%}",
        "privacy_note": _privacy_note(ids_shown),
        "cohort_table": table_html(cohort, index=True),
        "audit": audit.to_dict("records"),
        "test_seg_table": table_html(test_segmentation_table(rec_df)) if test_seg_recs else "",
        "seg": seg_ctx,
        "gallery": gallery or [],
        "gallery_note": gallery_note,
        "comparison": None,
        "guideline_table": table_html(guideline_table()),
        "provenance": {"medres_version": (provenance or {}).get("medres version", "")},
        "provenance_rows": list((provenance or {}).items()),
        "tasks": tasks.sections,
    }
    bundle = ReportFolder(output)
    bundle.html.write_text(render_html(context), encoding="utf-8")
    keys = pseudonymise(preds["patient_id"])
    key_of = dict(zip(preds["patient_id"], keys))
    exported = export_predictions(preds, list(ev.subgroups), keys, labels, ids_shown)
    exported = exported.drop(columns=[c for c in ("y_true", "y_pred", "y_pred_argmax") if c in exported])
    if tasks.export_columns:
        exported = exported.join(preds[[c for c in tasks.export_columns if c not in exported]])
    csv_safe(exported).to_csv(bundle.predictions_csv, index=False)
    if seg_cases is not None:
        sc = seg_cases.drop(
            columns=[c for c in ("case_id", "patient_id", "image", "mask", "seg_path") if c in seg_cases]
        )
        sc.insert(0, "case_id" if ids_shown else "case_key", seg_cases["case_id"].map(labels).to_numpy())
        sc.insert(1, "patient_key", seg_cases["patient_id"].map(key_of).to_numpy())
        csv_safe(sc).to_csv(bundle.seg_cases, index=False)
    if not ids_shown:
        bundle.case_keys.parent.mkdir(exist_ok=True)
        keys_table = pd.DataFrame({"case_key": preds["case_id"].map(labels), "case_id": preds["case_id"]})
        csv_safe(keys_table).to_csv(bundle.case_keys, index=False)
    csv_safe(cohort).to_csv(bundle.cohort)
    summary = {
        "run": run.run_dir.name,
        "task": None,
        "operating_points": [],
        "split_audit": audit.to_dict("records"),
        "records": [_json_record(r) for r in records + tasks.records],
        "tasks": {name: _json_tree(part) for name, part in tasks.summary.items()},
    }
    bundle.summary.write_text(json.dumps(summary, indent=1, allow_nan=False), encoding="utf-8")
    if tasks.records:
        rec_df = pd.concat([rec_df, pd.DataFrame(tasks.records)], ignore_index=True)
    return Bundle(output, rec_df, preds, thresholds)


def _privacy_note(ids_shown: bool) -> str:
    """What the report says about patient identifiers (both report kinds)."""
    if ids_shown:
        return ("Patient identifiers are not shown: the report counts patients and names cases by their "
                "manifest case id only.")
    return ("Patient identifiers are not shown: the report counts patients. The manifest's case ids contain "
            "patient ids, so cases are named by keys (case-0001, ...); the key-to-case map is in "
            "private/case_keys.csv next to this report: do not share that file.")
