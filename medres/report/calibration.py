"""The report's calibration section: ECE, Brier and the reliability diagram before and after recalibration.

Each fold's recalibration map (``medres.training.calibrate``) was fitted on that fold's inner
validation only and applied to its held-out cases. The run's tables keep both versions: ``p_<class>``
(calibrated; the probabilities every other section of the report uses) and ``logit_<class>``, whose
softmax is the uncalibrated model output. Runs without logits (older runs) show one column.

Intervals: patient bootstrap (as everywhere in the report); ECE through a weighted version of the
metric (``medres.metrics.calibration.weighted_ece``), Brier through the vectorised bootstrap.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from medres.config import Config
from medres.metrics.bootstrap import patient_bootstrap_ci
from medres.metrics.calibration import reliability_curve, weighted_ece
from medres.report.aggregate import _quiet, _record
from medres.report.figures import _subplots, to_data_uri
from medres.runfolder import RunFolder

__all__ = ["uncalibrated_scores", "calibration_records", "calibration_section"]


def uncalibrated_scores(df: pd.DataFrame, labels: list[str], positive: str) -> np.ndarray | None:
    """``softmax(logit_<class>)`` of the positive class, or None when the table has no logits."""
    cols = [f"logit_{c}" for c in labels]
    if not set(cols) <= set(df.columns):
        return None
    z = df[cols].to_numpy(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=1, keepdims=True))[:, labels.index(positive)]


def _ece_metric(n_bins: int):
    def ece(y, s, sample_weight=None) -> float:
        return weighted_ece(y, s, sample_weight, n_bins)

    ece.__name__ = f"ece_{n_bins}_bins"
    return ece


def calibration_records(y: np.ndarray, p: np.ndarray, groups: np.ndarray, config: Config, *, version: str,
                        cls: str, n_bins: int = 10, seed: int = 0) -> list[dict]:
    """Records (scope ``calibration``, subgroup ``version``) of Brier and ECE with patient-bootstrap CIs."""
    ev = config.evaluate
    recs = []
    common = dict(subgroup=version, cls=cls, n=len(y), n_pos=int(np.sum(y)))
    # the ECE bootstrap calls a Python metric per resample: a few hundred resamples are plenty
    resamples = {"brier": ev.bootstrap_resamples, "ece": min(ev.bootstrap_resamples, 500)}
    for name, metric in (("brier", "brier"), (f"ece_{n_bins}_bins", _ece_metric(n_bins))):
        n_res = resamples["brier" if name == "brier" else "ece"]
        if len(np.unique(groups)) < 2:
            value = float(np.mean((p - y) ** 2)) if name == "brier" else weighted_ece(y, p, None, n_bins)
            recs.append(_record("calibration", name, value, note="fewer than 2 patients: no interval",
                                **common))
            continue
        res, note = _quiet(patient_bootstrap_ci, metric, y, p, groups, n_resamples=n_res, level=ev.ci_level,
                           seed=seed)
        recs.append(_record("calibration", name, res.estimate, ci=(res.ci_low, res.ci_high),
                            ci_method=res.ci_method, note="; ".join(x for x in (note, res.reason) if x),
                            **common))
    return recs


def _figure(curves: dict[str, object], n_bins: int) -> str:
    fig, (ax, axc) = _subplots(2, 1, figsize=(4.6, 5.0), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1, label="perfect calibration")
    edges = np.linspace(0, 1, n_bins + 1)
    width = 1 / n_bins / max(len(curves), 1)
    for i, (name, rc) in enumerate(curves.items()):
        ok = rc.counts > 0
        ax.plot(rc.mean_predicted[ok], rc.observed[ok], "o-" if i == 0 else "s--", color=f"C{i}",
                label=f"{name} (ECE {rc.ece:.3f})")
        axc.bar(edges[:-1] + i * width, rc.counts, width=width, align="edge", color=f"C{i}", alpha=0.6)
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability, {n_bins} equal-width bins")
    ax.legend(fontsize=7, loc="upper left")
    axc.set(xlabel="predicted probability", ylabel="cases")
    return to_data_uri(fig)


def fold_maps(run_dir: str | Path | None) -> dict[int, dict]:
    """Each fold's fitted map (``fold_k/calibration.json``) by fold number."""
    out: dict[int, dict] = {}
    for fold in RunFolder(run_dir).folds() if run_dir is not None else []:
        try:
            out[int(fold.index)] = json.loads(fold.calibration.read_text())
        except (ValueError, OSError):
            continue
    return out


def _map_text(cal: dict) -> str:
    if cal.get("method") == "temperature":
        return f"temperature T = {cal['temperature']:.3g}"
    if cal.get("method") == "platt":
        return f"Platt a = {cal['a']:.3g}, b = {cal['b']:.3g}"
    return "identity"


def _describe(k: int, cal: dict) -> str:
    what = _map_text(cal)
    evidence = cal.get("evidence") or {}
    if cal.get("method") == "none":
        if "candidate" in cal:
            why = evidence.get("why") or "not kept"
            what += f" (the fitted {_map_text(cal['candidate'])} was {why})"
        else:
            what += " (" + (cal.get("note") or "none") + ")"
    elif evidence.get("why"):
        what += f", kept on evidence: {evidence['why']}"
    if cal.get("method") != "none" and cal.get("note"):
        what += f"; {cal['note']}"
    return f"fold {k}: {what}, {cal.get('n', 0)} inner-validation cases"


def calibration_section(preds: pd.DataFrame, config: Config, *, positive: str, n_bins: int = 10,
                        seed: int = 0, run_dir: str | Path | None = None
                        ) -> tuple[list[dict], pd.DataFrame, str, str]:
    """Records, the before/after table, the reliability figure (data URI) and the section's note
    (with each fold's fitted map, read from ``run_dir/fold_k/calibration.json``)."""
    labels = list(config.data.labels)
    y = (preds["y_true"].to_numpy() == labels.index(positive)).astype(np.int8)
    g = preds["patient_id"].astype(str).to_numpy()
    used = preds[f"p_{positive}"].to_numpy(np.float64)
    raw = uncalibrated_scores(preds, labels, positive)
    worse = ""
    if raw is not None:
        # the recalibrated probabilities are never shown as "calibrated" when, out of fold, they are
        # calibrated worse than the raw ones (Brier or ECE): the label and the note say so
        b_raw, b_used = float(np.mean((raw - y) ** 2)), float(np.mean((used - y) ** 2))
        e_raw, e_used = weighted_ece(y, raw, None, n_bins), weighted_ece(y, used, None, n_bins)
        if b_used > b_raw + 1e-12 or e_used > e_raw + 1e-12:
            worse = (" Out of fold the recalibrated probabilities are calibrated WORSE than the "
                     f"uncalibrated ones (Brier {b_used:.3f} vs {b_raw:.3f}, ECE {e_used:.3f} vs "
                     f"{e_raw:.3f}): the fitted maps did not carry over to the held-out cases. The "
                     "other sections still use the recalibrated probabilities (switching on the held-out "
                     "results would choose on test data); read their probabilities with this in mind.")
    label = ("recalibrated, worse out of fold (used by this report)" if worse
             else "calibrated (used by this report)")
    versions = {label: used}
    if raw is not None:
        versions = {"uncalibrated (softmax)": raw, **versions}
    recs, curves, rows = [], {}, []
    for version, p in versions.items():
        r = calibration_records(y, p, g, config, version=version, cls=positive, n_bins=n_bins, seed=seed)
        recs += r
        curves[version] = reliability_curve(y, p, n_bins)
        by = {x["metric"]: x for x in r}
        rows.append({"probabilities": version,
                     **{label: figures_cell(by[key]) for label, key in
                        (("Brier", "brier"), (f"ECE ({n_bins} bins)", f"ece_{n_bins}_bins"))}})
    method = config.evaluate.calibration
    if raw is None:
        note = ("This run's tables hold no logits, so only the probabilities as saved are shown (no "
                "recalibration record).")
    else:
        note = (f"Recalibration: {method} scaling, fitted per fold on that fold's inner-validation "
                "predictions only and applied unchanged to its held-out cases (see each fold's "
                "calibration.json). Every other section of this report (discrimination, operating points, "
                "decision curve, subgroups, test set) uses the calibrated probabilities; AUROC is unchanged "
                "by temperature scaling, which keeps each case's ranking.")
        maps = fold_maps(run_dir)
        if maps:
            note += (" A fitted map is kept only when a likelihood-ratio test against no recalibration "
                     "(scans of one patient counted as one) rejects at 5% on the inner validation; otherwise "
                     "the fold keeps its uncalibrated probabilities. Maps: "
                     + "; ".join(_describe(k, c) for k, c in maps.items()) + ".")
            if all(c.get("method") == "none" for c in maps.values()):
                note += " No fold kept a recalibration: the report's probabilities are the uncalibrated ones."
        note += worse
    return recs, pd.DataFrame(rows), _figure(curves, n_bins), note


def figures_cell(rec: dict) -> str:
    """``value [lo, hi]`` of a record."""
    from medres.report.html import fmt_ci

    lo, hi = rec["ci_low"], rec["ci_high"]
    return fmt_ci(rec["value"], lo if lo is not None else math.nan, hi if hi is not None else math.nan)
