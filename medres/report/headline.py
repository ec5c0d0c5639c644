"""The report's headline numbers as a few lines of text, printed at the end of training and evaluation.

Read back from the bundle's own files (``summary.json``, ``cohort.csv``), so the terminal shows exactly
the report's numbers: the out-of-fold AUROC with its interval, the Dice of each foreground class, the
operating point with sensitivity and specificity, the split audit, a comparison when there is one, and
the report's path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from medres.runfolder import ReportFolder

__all__ = ["headline"]

_WIDTH = 26


def _num(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _with_ci(rec: pd.Series) -> str:
    text = _num(rec["value"])
    lo, hi = _num(rec.get("ci_low")), _num(rec.get("ci_high"))
    return text + (f" [{lo}, {hi}]" if "n/a" not in (text, lo, hi) else "")


def _line(label: str, text: str) -> str:
    return f"  {label:<{_WIDTH}}{text}"


def _pick(records: pd.DataFrame, **where: str) -> pd.Series | None:
    """The first matching record: the report's primary one (a second, e.g. DeLong's, follows it)."""
    sel = records
    for key, value in where.items():
        sel = sel[sel[key] == value]
    return sel.iloc[0] if len(sel) else None


def _task_lines(pooled: pd.DataFrame, tasks: dict) -> list[str]:
    """Each multilabel task's AUROC per label and each regression task's MAE, with their intervals (the
    patient bootstrap's record first, as the report's tables show it)."""
    lines = []
    if not tasks or "head" not in pooled:
        return lines
    for name in tasks:
        recs = pooled[pooled["head"] == name]
        for metric, label in (("auroc", "AUROC"), ("mae", "MAE")):
            rows = recs[recs["metric"] == metric]
            for cls in dict.fromkeys(rows["class"]):
                if cls in ("macro", "micro"):
                    continue
                rec = _pick(rows, **{"class": cls})
                text = _with_ci(rec)
                if metric == "auroc" and "n_pos" in rec and pd.notna(rec["n_pos"]):
                    text += f"  ({int(rec['n_pos'])} of {int(rec['n'])} known scans positive)"
                elif pd.notna(rec.get("n")):
                    text += f"  (over {int(rec['n'])} scans with a value)"
                lines.append(_line(f"{label} {cls if metric == 'auroc' else name}", text))
    return lines


def headline(report_dir: str | Path, *, ci_level: float = 0.95) -> str:
    """The headline of the report bundle in ``report_dir`` (``summary.json``, ``cohort.csv``)."""
    bundle = ReportFolder(Path(report_dir))
    summary = json.loads(bundle.summary.read_text(encoding="utf-8"))
    records = pd.DataFrame(summary["records"])
    task = summary.get("task") or {}
    pos = task.get("positive_class")
    level = f"{ci_level:.0%} CI"
    cohort = bundle.cohort
    counts = ""
    if cohort.is_file():
        table = pd.read_csv(cohort, index_col=0, dtype=str)
        if {"scans", "patients"} <= set(table.index) and "all" in table.columns:
            n_folds = sum(c.startswith("fold ") for c in table.columns)
            counts = (f" ({table.loc['scans', 'all']} scans of {table.loc['patients', 'all']} patients, "
                      f"{n_folds} folds)")
    lines = [f"{summary['run']}: out-of-fold results{counts}, {level}s"]
    pooled = records[records["scope"] == "pooled"]
    cls = pooled[pooled["head"] == "classification"]
    auroc = _pick(cls, metric="auroc", **{"class": pos}) if pos is not None else None
    if auroc is not None:
        lines.append(_line(f"AUROC ({pos} vs rest)", f"{_with_ci(auroc)}  ({int(auroc['n_pos'])} of "
                                                     f"{int(auroc['n'])} scans {pos}; {auroc['ci_method']})"))
    lines += _task_lines(pooled, summary.get("tasks") or {})
    seg = pooled[(pooled["head"] == "segmentation") & (pooled["metric"] == "dice")]
    for name in dict.fromkeys(c for c in seg["class"] if not c.endswith("(reference present)")):
        present = _pick(seg, **{"class": f"{name} (reference present)"})
        every = _pick(seg, **{"class": name})
        if present is not None:
            text = f"{_with_ci(present)}  on the {int(present['n'])} scans whose reference holds it"
            if every is not None:
                text += f"; {_num(every['value'])} over all {int(every['n'])}"
        elif every is not None:
            text = f"{_with_ci(every)}  over {int(every['n'])} scans"
        else:
            continue
        lines.append(_line(f"Dice {name}", text))
    ops = pd.DataFrame(summary.get("operating_points") or [])
    if len(ops):
        thr = pd.to_numeric(ops["threshold"], errors="coerce").dropna()
        method = str(ops["method"].iloc[0])
        notes = [str(n) for n in ops.get("note", pd.Series(dtype=str)).fillna("") if str(n)]
        where = (f"p_{pos} >= {_num(thr.min())}" if len(thr) and thr.min() == thr.max() else
                 f"p_{pos} >= {_num(thr.min())}-{_num(thr.max())} by fold" if len(thr) else
                 "none chosen" + (f" ({notes[0]})" if notes else ""))
        lines.append(_line("operating point", f"{method} on each fold's inner validation: {where}"))
        parts = []
        for metric in ("sensitivity", "specificity"):
            rec = _pick(cls, metric=metric, **{"class": pos})
            if rec is not None and _num(rec["value"]) != "n/a":
                parts.append(f"{metric} {_with_ci(rec)}")
        if parts:
            lines.append(_line("", ", ".join(parts)))
    audit = summary.get("split_audit") or []
    failed = [a for a in audit if not a.get("passed")]
    if audit:
        lines.append(_line("split audit", "passed" if not failed else
                           "FAILED: " + "; ".join(f"{a['check']} ({a['detail']})" for a in failed)))
    comp = records[(records["scope"] == "comparison") & (records["metric"] == "auroc_difference")]
    delong = comp[comp["ci_method"].fillna("").str.startswith("paired DeLong")]
    if len(delong):
        rec = delong.iloc[0]
        lines.append(_line("AUROC difference", f"{_with_ci(rec)}  ({rec['ci_method']}; this run minus the "
                                               "other)"))
    lines.append(_line("report", str(bundle.html.resolve())))
    return "\n".join(lines)
