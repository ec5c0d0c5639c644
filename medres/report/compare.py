"""``--compare``: two runs on the same cases, paired DeLong test and paired patient-bootstrap differences."""

from __future__ import annotations

import numpy as np
import pandas as pd

from medres.metrics.bootstrap import paired_bootstrap_ci
from medres.metrics.delong import delong_roc_test
from medres.report.aggregate import BinaryTask, _quiet, _record
from medres.report.html import fmt, fmt_ci, fmt_p, table_html
from medres.report.run_folder import RunData

__all__ = ["comparison"]


def comparison(run: RunData, other: RunData, task: BinaryTask, seed: int) -> tuple[list[dict], dict]:
    """Paired DeLong test and paired patient-bootstrap differences on the cases both runs predicted."""
    ev = run.config.evaluate
    a = run.predictions.set_index("case_id")
    b = other.predictions.set_index("case_id")
    common = a.index.intersection(b.index)
    note = (
        f"{len(common)} cases predicted by both runs (of {len(a)} and {len(b)}); "
        "differences are this run minus the other."
    )
    a, b = a.loc[common], b.loc[common]
    if (a["y_true"].to_numpy() != b["y_true"].to_numpy()).any():
        note += " WARNING: the runs disagree on some labels; this run's labels are used."
    y = (a["y_true"].to_numpy() == task.index).astype(np.int8)
    sa, sb = a[task.score_col].to_numpy(float), b[task.score_col].to_numpy(float)
    g = a["patient_id"].to_numpy()
    recs = []
    test, tnote = _quiet(delong_roc_test, y, sa, sb, ev.ci_level)
    recs.append(
        _record(
            "comparison",
            "auroc_difference",
            test.difference,
            ci=(test.ci_low, test.ci_high),
            ci_method=f"paired DeLong (z={fmt(test.z, 2)}, p={fmt_p(test.p_value)})",
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
