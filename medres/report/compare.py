"""``--compare``: several runs on the same cases, every pair compared on the cases all of them predicted.

Per pair (i, j), differences are run i minus run j: the paired DeLong test of AUROC (Obuchowski's
clustered form), paired patient-bootstrap differences of AUROC, AP, Brier and of the net benefit at each
of ``evaluate.net_benefit_thresholds`` (the same resamples for both runs). With more than two runs the
DeLong p-values are Holm-adjusted across the pairs (statsmodels ``multipletests(method="holm")``); the
bootstrap intervals are not adjusted. Each pair's numbers equal those of comparing that pair alone
whenever all runs predicted the same cases.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from medres.errors import DataError
from medres.metrics.bootstrap import paired_bootstrap_ci
from medres.metrics.delong import delong_roc_test
from medres.report.aggregate import BinaryTask, _quiet, _record
from medres.report.html import fmt, fmt_ci, fmt_p, table_html
from medres.report.run_folder import RunData

__all__ = ["comparison", "comparisons", "missing_folds", "net_benefit_per_case"]


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


def net_benefit_per_case(y: np.ndarray, p: np.ndarray, threshold: float) -> np.ndarray:
    """Each case's share of the net benefit at ``threshold`` (their mean is Vickers and Elkin's net benefit,
    as `medres.metrics.decision_curve`): treated (``p >= threshold``) positives count 1, treated negatives
    ``-threshold / (1 - threshold)``, untreated cases 0."""
    treated = p >= threshold
    return np.where(treated, np.where(y == 1, 1.0, -threshold / (1 - threshold)), 0.0)


def _names(runs: list[RunData]) -> list[str]:
    names = [r.run_dir.name for r in runs]
    return [f"{n} ({k + 1})" if names.count(n) > 1 else n for k, n in enumerate(names)]


def _shared(runs: list[RunData]) -> pd.Index:
    """The case ids every run predicted; a DataError naming every run when fewer than 2 patients remain."""
    common = runs[0].predictions["case_id"]
    for r in runs[1:]:
        common = common[common.isin(r.predictions["case_id"])]
    common = pd.Index(common)
    first = runs[0].predictions.set_index("case_id")
    shared = first.loc[common, "patient_id"].nunique()
    if shared < 2:  # nothing to pair: say why instead of an empty bootstrap
        what = "the runs to compare" if len(runs) == 2 else f"the {len(runs)} runs to compare"
        raise DataError(
            f"{what} share {len(common)} cases of {shared} patients, and a paired comparison "
            f"needs at least 2 patients predicted by all of them ({'; '.join(_describe(r) for r in runs)})",
            path=runs[1].run_dir,
            hint="compare runs trained on the same cohort (same manifest and case ids), each with all "
            "of its folds predicted (finish them with python -m medres.train --resume)",
        )
    return common


def _pair(a: pd.DataFrame, b: pd.DataFrame, label: str, task: BinaryTask, ev, seed: int
          ) -> tuple[list[dict], list[dict], float]:
    """Records and table rows of run a minus run b on the same rows, and DeLong's p-value."""
    y = (a["y_true"].to_numpy() == task.index).astype(np.int8)
    sa, sb = a[task.score_col].to_numpy(float), b[task.score_col].to_numpy(float)
    g = a["patient_id"].to_numpy()
    common = dict(subgroup=label, n=len(y), n_pos=int(y.sum()))
    test, tnote = _quiet(delong_roc_test, y, sa, sb, ev.ci_level, g)
    zp = f"z={fmt(test.z, 2)}, p={fmt_p(test.p_value)}"
    recs = [
        _record("comparison", "auroc_difference", test.difference, ci=(test.ci_low, test.ci_high),
                ci_method=f"paired DeLong, Obuchowski clustered ({zp})",
                note=tnote or test.reason, **common),
        _record("comparison", "delong_p_value", test.p_value, ci_method="paired DeLong, two-sided",
                note=tnote or test.reason, **common),
    ]
    rows = [{"pair": label, "comparison": "AUROC, paired DeLong", "first": fmt(test.auroc_a),
             "second": fmt(test.auroc_b),
             "difference [CI]": fmt_ci(test.difference, test.ci_low, test.ci_high),
             "z": fmt(test.z, 2), "p": fmt_p(test.p_value)}]
    boot = dict(n_resamples=ev.bootstrap_resamples, level=ev.ci_level, seed=seed)
    measures = [(m, m, "paired patient bootstrap", y, sa, sb)
                for m in ("auroc", "average_precision", "brier")]
    for t in ev.net_benefit_thresholds:
        measures.append((f"net_benefit_at_{t:g}", "mean",
                         f"net benefit at p_t {t:g}, paired patient bootstrap",
                         None, net_benefit_per_case(y, sa, t), net_benefit_per_case(y, sb, t)))
    for name, metric, what, yy, xa, xb in measures:
        res, bnote = _quiet(paired_bootstrap_ci, metric, yy, xa, xb, g, **boot)
        recs.append(_record("comparison", f"{name}_difference", res.estimate, ci=(res.ci_low, res.ci_high),
                            ci_method="paired " + res.ci_method,
                            note="; ".join(x for x in (bnote, res.reason) if x), **common))
        rows.append({"pair": label, "comparison": what if metric == "mean" else f"{name}, {what}",
                     "first": "", "second": "",
                     "difference [CI]": fmt_ci(res.estimate, res.ci_low, res.ci_high),
                     "z": "", "p": ""})
    return recs, rows, test.p_value


def comparisons(runs: list[RunData], task: BinaryTask, seed: int) -> tuple[list[dict], dict]:
    """Every pair of ``runs`` (the first is the report's run) on the cases all runs predicted.

    ``evaluate`` settings (resamples, level, net-benefit thresholds) are the first run's. Returns the
    records (scope ``comparison``, subgroup ``"A - B"``) and the report section's context."""
    from statsmodels.stats.multitest import multipletests

    if len(runs) < 2:
        raise DataError("a comparison needs at least two runs", hint="pass --compare runs/OTHER ...")
    ev = runs[0].config.evaluate
    names = _names(runs)
    common = _shared(runs)
    tables = [r.predictions.set_index("case_id").loc[common] for r in runs]
    shared = tables[0]["patient_id"].nunique()
    note = (f"{len(common)} cases of {shared} patients predicted by all {len(runs)} runs "
            f"(of {', '.join(str(len(r.predictions)) for r in runs)}); differences are the first run of "
            "each pair minus the second.")
    for r in runs:
        if missing_folds(r):
            note += f" {r.run_dir.name}: folds {missing_folds(r)} have no predictions yet (not finished)."
    if any((t["y_true"].to_numpy() != tables[0]["y_true"].to_numpy()).any() for t in tables[1:]):
        note += f" WARNING: the runs disagree on some labels; {names[0]}'s labels are used."
        tables = [t.assign(y_true=tables[0]["y_true"]) for t in tables]
    recs, rows, pvals = [], [], []
    for i, j in itertools.combinations(range(len(runs)), 2):
        r, w, p = _pair(tables[i], tables[j], f"{names[i]} - {names[j]}", task, ev, seed)
        recs += r
        rows += w
        pvals.append(p)
    if len(pvals) > 1:
        finite = [k for k, p in enumerate(pvals) if math.isfinite(p)]
        adjusted = np.full(len(pvals), math.nan)
        if finite:
            adjusted[finite] = multipletests([pvals[k] for k in finite], method="holm")[1]
        pairs = [r for r in recs if r["metric"] == "delong_p_value"]
        delong_rows = [w for w in rows if w["comparison"] == "AUROC, paired DeLong"]
        for rec, adj, row in zip(pairs, adjusted, delong_rows):
            recs.append({**rec, "metric": "delong_p_holm", "value": float(adj),
                         "ci_method": f"paired DeLong, Holm-adjusted across {len(finite)} pairs",
                         "note": rec["note"] or ""})
            row["p (Holm)"] = fmt_p(float(adj))
        note += (f" The DeLong p-values are Holm-adjusted across the {len(pvals)} pairs (p (Holm)); the "
                 "bootstrap intervals are not adjusted.")
    nb = ", ".join(f"{t:g}" for t in ev.net_benefit_thresholds)
    if nb:
        note += f" Net benefit at threshold probabilities {nb} (evaluate.net_benefit_thresholds)."
    table = pd.DataFrame(rows).fillna("")
    return recs, {"other_name": ", ".join(names[1:]), "note": note, "table": table_html(table)}


def comparison(run: RunData, other: RunData, task: BinaryTask, seed: int) -> tuple[list[dict], dict]:
    """Two runs: `comparisons` of ``[run, other]``."""
    return comparisons([run, other], task, seed)
