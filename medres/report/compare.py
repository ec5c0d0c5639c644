"""``--compare``: two runs on the same cases, paired DeLong test and paired patient-bootstrap differences."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medres.errors import DataError
from medres.metrics.bootstrap import paired_bootstrap_ci
from medres.metrics.delong import delong_roc_test
from medres.report.aggregate import BinaryTask, _quiet, _record
from medres.report.html import fmt, fmt_ci, fmt_p, table_html
from medres.report.run_folder import RunData

__all__ = ["comparison", "missing_folds"]


def missing_folds(run: RunData) -> list[int]:
    """The folds of ``cv.folds`` that have no held-out predictions in the run folder (not finished)."""
    done = {int(f) for f in run.predictions["fold"].unique()}
    return [k for k in range(run.config.cv.folds) if k not in done]


def _describe(run: RunData) -> str:
    p = run.predictions
    missing = missing_folds(run)
    text = f"{run.run_dir.name}: {len(p)} cases of {p['patient_id'].nunique()} patients"
    if missing:
        text += f", folds {missing} of {run.config.cv.folds} without predictions (not finished)"
    return text


def comparison(run: RunData, other: RunData, task: BinaryTask, seed: int) -> tuple[list[dict], dict]:
    """Paired DeLong test and paired patient-bootstrap differences on the cases both runs predicted."""
    ev = run.config.evaluate
    a = run.predictions.set_index("case_id")
    b = other.predictions.set_index("case_id")
    common = a.index.intersection(b.index)
    shared = a.loc[common, "patient_id"].nunique()
    if shared < 2:  # nothing to pair: say why instead of an empty bootstrap
        raise DataError(
            f"the runs to compare share {len(common)} cases of {shared} patients, and a paired comparison "
            f"needs at least 2 patients predicted by both ({_describe(run)}; {_describe(other)})",
            path=other.run_dir,
            hint="compare runs trained on the same cohort (same manifest and case ids), each with all "
            "of its folds predicted (finish them with python -m medres.train --resume)",
        )
    note = (
        f"{len(common)} cases of {shared} patients predicted by both runs (of {len(a)} and {len(b)}); "
        "differences are this run minus the other."
    )
    for r in (run, other):
        if missing_folds(r):
            note += f" {r.run_dir.name}: folds {missing_folds(r)} have no predictions yet (not finished)."
    a, b = a.loc[common], b.loc[common]
    if (a["y_true"].to_numpy() != b["y_true"].to_numpy()).any():
        note += " WARNING: the runs disagree on some labels; this run's labels are used."
    y = (a["y_true"].to_numpy() == task.index).astype(np.int8)
    sa, sb = a[task.score_col].to_numpy(float), b[task.score_col].to_numpy(float)
    g = a["patient_id"].to_numpy()
    recs = []
    test, tnote = _quiet(delong_roc_test, y, sa, sb, ev.ci_level, g)
    recs.append(
        _record(
            "comparison",
            "auroc_difference",
            test.difference,
            ci=(test.ci_low, test.ci_high),
            ci_method=f"paired DeLong, Obuchowski clustered (z={fmt(test.z, 2)}, p={fmt_p(test.p_value)})",
            n=len(y),
            n_pos=int(y.sum()),
            note=tnote or test.reason,
        )
    )
    rows = [
        {
            "comparison": "AUROC, paired DeLong",
            "this run": fmt(test.auroc_a),
            "other run": fmt(test.auroc_b),
            "difference [CI]": fmt_ci(test.difference, test.ci_low, test.ci_high),
            "z": fmt(test.z, 2),
            "p": fmt_p(test.p_value),
        }
    ]
    for metric in ("auroc", "average_precision", "brier"):
        res, bnote = _quiet(
            paired_bootstrap_ci,
            metric,
            y,
            sa,
            sb,
            g,
            n_resamples=ev.bootstrap_resamples,
            level=ev.ci_level,
            seed=seed,
        )
        recs.append(
            _record(
                "comparison",
                f"{metric}_difference",
                res.estimate,
                ci=(res.ci_low, res.ci_high),
                ci_method="paired " + res.ci_method,
                n=len(y),
                n_pos=int(y.sum()),
                note="; ".join(x for x in (bnote, res.reason) if x),
            )
        )
        rows.append(
            {
                "comparison": f"{metric}, paired patient bootstrap",
                "this run": "",
                "other run": "",
                "difference [CI]": fmt_ci(res.estimate, res.ci_low, res.ci_high),
                "z": "",
                "p": "",
            }
        )
    return recs, {"other_name": other.run_dir.name, "note": note, "table": table_html(pd.DataFrame(rows))}
