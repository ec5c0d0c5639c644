"""Render the report: record tables formatted for reading, and the jinja2 template filled in.

The page is self-contained: inline CSS, figures as ``data:`` URIs, no script and no external URL.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd
from markupsafe import Markup

__all__ = [
    "fmt",
    "fmt_ci",
    "fmt_p",
    "table_html",
    "fold_table",
    "holdout_test_table",
    "subgroup_table",
    "segmentation_table",
    "render_html",
    "delong_note",
    "summary_cards",
]

TEMPLATES = Path(__file__).parent / "templates"
CLS_COLUMNS = (
    ("auroc", "AUROC"),
    ("average_precision", "AP"),
    ("brier", "Brier"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("f1", "F1"),
    ("mcc", "MCC"),
)
SEG_COLUMNS = (
    ("dice", "Dice"),
    ("dice_median", "Dice median"),
    ("hd95", "HD95 (mm)"),
    ("hd95_median", "HD95 median"),
    ("nsd", "NSD"),
    ("ref_volume_ml", "reference mL"),
    ("pred_volume_ml", "predicted mL"),
)


def fmt(value: float, digits: int = 3) -> str:
    """A number for a table: ``n/a`` for NaN, ``inf`` for infinity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    """A p-value: four decimals, ``<0.0001`` below that, ``n/a`` when undefined."""
    if p is None or math.isnan(p):
        return "n/a"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_ci(value: float, lo: float, hi: float, digits: int = 3) -> str:
    """``0.871 [0.802, 0.925]``, or the value alone without an interval."""
    text = fmt(value, digits)
    if text != "n/a" and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{fmt(lo, digits)}, {fmt(hi, digits)}]"
    return text


def table_html(df: pd.DataFrame, *, index: bool = False) -> Markup:
    """A DataFrame as an HTML table, every cell escaped."""
    return Markup(df.to_html(index=index, escape=True, na_rep="n/a", border=0, classes="data"))


def _cell(rec: pd.Series, digits: int = 3) -> str:
    return fmt_ci(rec["value"], rec["ci_low"], rec["ci_high"], digits)


def seg_cells(by_metric: pd.DataFrame) -> dict[str, str]:
    """One segmentation table row's cells (value, interval, n) from its records indexed by metric."""
    cells = {}
    for key, name in SEG_COLUMNS:
        if key in by_metric.index:
            r = by_metric.loc[key]
            digits = 3 if key in ("dice", "dice_median", "iou", "nsd") else 2
            cells[name] = f"{_cell(r, digits)} (n={int(r['n'])})"
    return cells


def _metric_row(label: str, part: pd.DataFrame, threshold: str) -> dict[str, object]:
    by = part.set_index("metric")
    first = part.iloc[0] if len(part) else None
    row: dict[str, object] = {
        "": label,
        "scans": int(first["n"]) if first is not None else 0,
        "positives": int(first["n_pos"]) if first is not None else 0,
    }
    for key, name in CLS_COLUMNS:
        row[name] = _cell(by.loc[key]) if key in by.index else "n/a"
    row["threshold"] = threshold
    return row


def _classification(records: pd.DataFrame) -> pd.DataFrame:
    return records[(records["head"] == "classification") & ~records["ci_method"].str.contains("DeLong")]


def fold_table(records: pd.DataFrame, thresholds: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows: each fold, pooled out-of-fold, mean ± SD across folds; columns: n, n_pos and metrics."""
    cls = _classification(records)
    thr = {} if thresholds is None else dict(zip(thresholds["fold"].astype(str), thresholds["threshold"]))
    rows = []
    for f in sorted(cls.loc[cls["scope"] == "fold", "fold"].unique(), key=int):
        part = cls[(cls["scope"] == "fold") & (cls["fold"] == f)]
        rows.append(_metric_row(f"fold {f}", part, fmt(float(thr.get(f, math.nan)))))
    rows.append(_metric_row("pooled out-of-fold", cls[cls["scope"] == "pooled"], "per fold"))
    mean = cls[cls["scope"] == "fold_mean"].set_index("metric")
    sd = cls[cls["scope"] == "fold_sd"].set_index("metric")
    row = {"": "mean ± SD across folds", "scans": "", "positives": ""}
    for key, name in CLS_COLUMNS:
        row[name] = (
            f"{fmt(mean.loc[key, 'value'])} ± {fmt(sd.loc[key, 'value'])}"
            if key in mean.index and key in sd.index
            else "n/a"
        )
    row["threshold"] = ""
    rows.append(row)
    return pd.DataFrame(rows)


def holdout_test_table(records: pd.DataFrame, thresholds: pd.DataFrame) -> pd.DataFrame:
    """The held-out test set: each fold's model (its own threshold) and the mean of the fold models."""
    cls = _classification(records)
    thr = dict(zip(thresholds["fold"].astype(str), thresholds["threshold"]))
    rows = [
        _metric_row(
            f"fold {f} model",
            cls[(cls["scope"] == "test") & (cls["fold"] == f)],
            fmt(float(thr.get(f, math.nan))),
        )
        for f in sorted(cls.loc[cls["scope"] == "test", "fold"].unique(), key=int)
    ]
    ens = cls[cls["scope"] == "test_ensemble"]
    if len(ens):
        rows.append(_metric_row("mean of the fold models", ens, "mean of the fold thresholds"))
    return pd.DataFrame(rows)


def subgroup_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per subgroup level: n, n_pos, prevalence, AUROC, sensitivity, specificity, note."""
    rows = []
    for sub, part in records[records["scope"] == "subgroup"].groupby("subgroup", sort=False):
        by = part.set_index("metric")
        first = part.iloc[0]
        notes = "; ".join(dict.fromkeys(_short(n) for n in part["note"] if n))
        estimable = not notes.startswith("not estimable")
        row = {"subgroup": sub, "scans": int(first["n"]), "positives": int(first["n_pos"])}
        for key, name in (("auroc", "AUROC"), ("sensitivity", "sensitivity"), ("specificity", "specificity")):
            row[name] = _cell(by.loc[key]) if estimable and key in by.index else "not estimable"
        row["note"] = notes
        rows.append(row)
    return pd.DataFrame(
        rows, columns=["subgroup", "scans", "positives", "AUROC", "sensitivity", "specificity", "note"]
    )


def _short(note: str) -> str:
    if "resamples had an undefined metric" in note:
        return "some bootstrap resamples held one class only and were dropped (counts in summary.json)"
    return note


def segmentation_table(records: pd.DataFrame) -> pd.DataFrame:
    """Rows: each fold and pooled, per class; mean [CI] (n_valid) of each per-case metric."""
    seg = records[records["head"] == "segmentation"]
    rows = []
    for (scope, fold, cls), part in seg.groupby(["scope", "fold", "class"], sort=False):
        if scope not in ("fold", "pooled"):
            continue
        by = part.set_index("metric")
        row = {"": f"fold {fold}" if scope == "fold" else "pooled", "class": cls}
        row.update(seg_cells(by))
        rows.append(row)
    return pd.DataFrame(rows)


def render_html(context: dict[str, Any]) -> str:
    """Fill ``templates/report.html`` (autoescaped; tables come in as `Markup`)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return env.get_template("report.html").render(**context)


def delong_note(rec: pd.DataFrame) -> str:
    d = rec[(rec["scope"] == "pooled") & rec["ci_method"].str.contains("DeLong")]
    if d.empty:
        return ""
    r = d.iloc[0]
    return (
        f"For comparison, the pooled AUROC's {r['ci_method']} interval: "
        f"{fmt_ci(r['value'], r['ci_low'], r['ci_high'])}."
    )


def summary_cards(rec: pd.DataFrame, task, preds: pd.DataFrame, seg_recs: list[dict]) -> list[dict]:
    pooled = rec[
        (rec["scope"] == "pooled")
        & (rec["head"] == "classification")
        & ~rec["ci_method"].str.contains("DeLong")
    ].set_index("metric")

    def ci(m: str) -> str:
        r = pooled.loc[m]
        return fmt_ci(r["value"], r["ci_low"], r["ci_high"])

    cards = [
        {
            "label": "patients / scans",
            "value": f"{preds['patient_id'].nunique()} / {len(preds)}",
            "detail": f"{int(pooled.loc['auroc', 'n_pos'])} scans {task.positive}",
            "id": "",
        },
        {
            "label": "AUROC",
            "value": fmt(pooled.loc["auroc", "value"]),
            "id": "pooled-auroc",
            "detail": ci("auroc"),
        },
        {
            "label": "average precision",
            "value": fmt(pooled.loc["average_precision", "value"]),
            "id": "",
            "detail": f"prevalence {fmt(pooled.loc['prevalence', 'value'])}",
        },
    ]
    if "sensitivity" in pooled.index and math.isfinite(pooled.loc["sensitivity", "value"]):
        cards.append(
            {
                "label": "sensitivity / specificity at the operating point",
                "id": "",
                "value": f"{fmt(pooled.loc['sensitivity', 'value'])} / "
                f"{fmt(pooled.loc['specificity', 'value'])}",
                "detail": f"{ci('sensitivity')} / {ci('specificity')}",
            }
        )
    seg = [r for r in seg_recs if r["scope"] == "pooled" and r["metric"] == "dice"]
    present = [r for r in seg if r["class"].endswith("(reference present)")]
    seg = present or seg  # Dice over scans that hold the structure, when both-empty scans exist
    for r in seg:
        cards.append(
            {
                "label": f"Dice ({r['class']}), mean",
                "value": fmt(r["value"]),
                "id": "",
                "detail": f"{fmt_ci(r['value'], r['ci_low'], r['ci_high'])}, n={r['n']}",
            }
        )
    return cards
