"""The learning curve: out-of-fold AUROC and Dice, with their intervals, against the training fraction.

Each fraction is a sub-run (``runs/<name>/learning_curve/frac_<f>/``) trained on the same folds with a
nested, stratified subset of each fold's training patients (``python -m medres.train --learning-curve``)
and evaluated like any run. This module reads the sub-runs' ``report/summary.json`` (no torch) and writes
``learning_curve.csv`` (long format, one row per fraction, metric and class) and ``learning_curve.png``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

from medres.errors import DataError
from medres.report.figures import _subplots, to_data_uri
from medres.runfolder import RunFolder

__all__ = ["learning_curve_table", "learning_curve_figure", "write_learning_curve"]

COLUMNS = ["fraction", "train_patients", "metric", "class", "value", "ci_low", "ci_high", "ci_method", "n",
           "n_pos"]


def learning_curve_table(sub_runs: dict[float, Path], train_patients: dict[float, int] | None = None
                         ) -> pd.DataFrame:
    """Pooled out-of-fold AUROC (the report's printed interval) and Dice per class of each sub-run.

    ``train_patients``: the training patients summed over the folds, per fraction (shown as is)."""
    rows = []
    for frac, run_dir in sorted(sub_runs.items()):
        path = RunFolder(run_dir).report.summary
        if not path.is_file():
            raise DataError("the learning-curve sub-run has no report", path=path,
                            hint="finish its folds with python -m medres.train --learning-curve ... --resume")
        recs = pd.DataFrame(json.loads(path.read_text(encoding="utf-8"))["records"])
        pooled = recs[recs["scope"] == "pooled"]
        auroc = pooled[(pooled["head"] == "classification") & (pooled["metric"] == "auroc")
                       & ~pooled["ci_method"].str.contains("DeLong")]
        dice = pooled[(pooled["head"] == "segmentation") & (pooled["metric"] == "dice")]
        for _, r in pd.concat([auroc, dice]).iterrows():
            rows.append({"fraction": frac, "train_patients": (train_patients or {}).get(frac),
                         "metric": r["metric"], "class": r["class"],
                         **{k: r[k] for k in ("value", "ci_low", "ci_high", "ci_method", "n", "n_pos")}})
    return pd.DataFrame(rows, columns=COLUMNS)


def learning_curve_figure(table: pd.DataFrame, level: float = 0.95):
    """AUROC and Dice against the fraction, each point with its interval (a matplotlib Figure)."""
    metrics = [m for m in ("auroc", "dice") if (table["metric"] == m).any()]
    fig, axes = _subplots(1, max(1, len(metrics)), figsize=(4.2 * max(1, len(metrics)), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        part = table[table["metric"] == metric]
        for cls, g in part.groupby("class", sort=False):
            g = g.sort_values("fraction")
            low = (g["value"] - g["ci_low"]).clip(lower=0).fillna(0)
            high = (g["ci_high"] - g["value"]).clip(lower=0).fillna(0)
            ax.errorbar(g["fraction"], g["value"], yerr=[low, high], marker="o", capsize=3,
                        label=str(cls) if metric == "dice" else None)
        ax.set_xlabel("fraction of each fold's training patients")
        ax.set_ylabel(f"out-of-fold {'AUROC' if metric == 'auroc' else 'mean Dice'}")
        ax.set_ylim(0, 1.02)
        ax.set_xlim(0, 1.05)
        ax.grid(alpha=0.3)
        if metric == "dice":
            ax.legend(fontsize=7)
    fig.suptitle(f"Learning curve (bars: {level:.0%} intervals, clustered by patient)", fontsize=9)
    return fig


def write_learning_curve(folder: str | Path, sub_runs: dict[float, Path],
                         train_patients: dict[float, int] | None = None, level: float = 0.95) -> Path:
    """Write ``learning_curve.csv`` and ``learning_curve.png`` into ``folder``; return the CSV's path."""
    folder = Path(folder)
    table = learning_curve_table(sub_runs, train_patients)
    table.to_csv(folder / "learning_curve.csv", index=False)
    png = to_data_uri(learning_curve_figure(table, level)).split(",", 1)[1]  # drawn as the report's figures
    (folder / "learning_curve.png").write_bytes(base64.b64decode(png))
    return folder / "learning_curve.csv"
