"""External validation: held-out groups (leave-group-out, temporal folds) and external test sites.

**Held-out groups.** With ``cv.strategy: leave_group_out`` each fold's held-out cases are one group
(e.g. one site) the fold's model never saw: each is an external validation with its own discrimination
(AUROC, the report's score-type interval), calibration-in-the-large and calibration slope (logistic
recalibration fits with patient-clustered Wald intervals). The per-group AUROCs are pooled by a
random-effects meta-analysis on the logit AUROC scale (DerSimonian and Laird 1986), each group's
variance from DeLong's clustered (Obuchowski) variance by the delta method, with the between-group
variance tau², I² and the prediction interval for a new group (Riley et al. 2016, Debray et al. 2017).
With ``cv.strategy: temporal`` each fold's held-out period is shown the same way (not pooled: periods
are ordered, not exchangeable).

**External test sites.** Rows with ``split=test`` whose ``cv.group_column`` value (``site`` by default)
no development case carries are an external validation per site, scored with the fold models' mean
probability. The report shows the calibration drift there, and the effect of recalibration-in-the-large
(a new intercept, the slope kept) fitted on ``evaluate.external_recalibration_fraction`` of the site's
patients and evaluated only on the remaining patients.

Scopes of the records: ``external_group`` (fold = the held-out fold), ``external_pooled``,
``external_test`` (a site, all its cases), ``external_test_remaining`` and ``external_test_recalibrated``
(the patients not used for the refit, before and after it).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from scipy.stats import norm
from scipy.stats import t as student_t

from medres.config import Config
from medres.metrics.calibration import brier
from medres.metrics.delong import auroc_score_interval, delong_covariance
from medres.report.aggregate import BinaryTask, _record
from medres.report.html import fmt, fmt_ci

__all__ = ["RandomEffects", "random_effects_dl", "calibration_fits", "group_records", "external_records",
           "external_group_table", "external_test_table"]

_CAL_METHOD = "Wald, patient-clustered (sandwich) SE, logistic GLM (statsmodels)"
_EPS = 1e-12


@dataclass(frozen=True)
class RandomEffects:
    """A DerSimonian-Laird random-effects summary of ``k`` estimates (on their own scale)."""

    mean: float
    se: float
    ci_low: float
    ci_high: float
    tau2: float
    i2: float
    q: float
    k: int
    pi_low: float  # prediction interval for a new group (Higgins, Thompson and Spiegelhalter 2009)
    pi_high: float


def random_effects_dl(effects: np.ndarray, variances: np.ndarray, level: float = 0.95) -> RandomEffects:
    """DerSimonian-Laird pooling: tau² = max(0, (Q - (k-1)) / c), I² = max(0, (Q - (k-1)) / Q).

    Written out because statsmodels' ``combine_effects(method_re="dl")`` (0.14-0.15) does not truncate
    tau² at zero; where Q >= k - 1 the two agree (tests/report/test_external.py). The prediction
    interval is ``mean ± t(k-2) sqrt(tau² + se²)``, undefined for fewer than 3 groups.
    """
    y = np.asarray(effects, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    k = y.size
    nan = math.nan
    if k == 0:
        return RandomEffects(nan, nan, nan, nan, nan, nan, nan, 0, nan, nan)
    w = 1 / v
    fixed = float(w @ y / w.sum())
    q = float(w @ (y - fixed) ** 2)
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    i2 = max(0.0, (q - (k - 1)) / q) if k > 1 and q > 0 else 0.0
    ws = 1 / (v + tau2)
    mean = float(ws @ y / ws.sum())
    se = math.sqrt(1 / ws.sum())
    z = float(norm.ppf(0.5 + level / 2))
    pi = (nan, nan)
    if k >= 3:
        half = float(student_t.ppf(0.5 + level / 2, k - 2)) * math.sqrt(tau2 + se**2)
        pi = (mean - half, mean + half)
    return RandomEffects(mean, se, mean - z * se, mean + z * se, tau2, i2, q, k, *pi)


@dataclass(frozen=True)
class _Fit:
    value: float
    ci_low: float
    ci_high: float
    note: str = ""


def calibration_fits(y: np.ndarray, p: np.ndarray, groups: np.ndarray, level: float = 0.95
                     ) -> dict[str, _Fit]:
    """Calibration-in-the-large (intercept with logit(p) as offset) and calibration slope, each with a
    Wald interval from the patient-clustered sandwich variance (statsmodels GLM, binomial family)."""
    import statsmodels.api as sm

    y = np.asarray(y, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        why = _Fit(math.nan, math.nan, math.nan, "one class only: calibration undefined")
        return {"calibration_intercept": why, "calibration_slope": why}
    lp = logit(np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS))
    codes = pd.factorize(pd.Series(groups).astype(str))[0]
    z = float(norm.ppf(0.5 + level / 2))
    out = {}
    for name, design, offset, idx in (("calibration_intercept", np.ones((y.size, 1)), lp, 0),
                                      ("calibration_slope", np.column_stack([np.ones(y.size), lp]), None, 1)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # separation / no convergence: not a number to show
                res = sm.GLM(y, design, family=sm.families.Binomial(), offset=offset).fit(
                    cov_type="cluster", cov_kwds={"groups": codes})
            est, se = float(res.params[idx]), float(res.bse[idx])
            if not (math.isfinite(est) and math.isfinite(se)) or abs(est) > 1e3:
                raise ValueError("diverged")
            out[name] = _Fit(est, est - z * se, est + z * se)
        except Exception:  # statsmodels: PerfectSeparation*, convergence warnings, singular matrices
            out[name] = _Fit(math.nan, math.nan, math.nan, "the fit did not converge (separated classes?)")
    return out


def _logit_auroc(y: np.ndarray, s: np.ndarray, g: np.ndarray) -> tuple[float, float, str]:
    """(logit AUROC, its variance by the delta method from the clustered DeLong variance, why NaN)."""
    if len(np.unique(g[y == 1])) < 2 or len(np.unique(g[y == 0])) < 2:
        return math.nan, math.nan, "fewer than 2 patients of a class: no DeLong variance"
    aucs, cov = delong_covariance(y, s[None], g)
    a, var = float(aucs[0]), float(cov[0, 0])
    if not 0 < a < 1:
        return math.nan, math.nan, f"AUROC {a:g}: infinite on the logit scale, left out of the pooling"
    if not (math.isfinite(var) and var > 0):
        return math.nan, math.nan, "no DeLong variance"
    return float(logit(a)), var / (a * (1 - a)) ** 2, ""


def group_records(df: pd.DataFrame, task: BinaryTask, config: Config, *, scope: str, subgroup: str,
                  fold: int | str, score: np.ndarray | None = None) -> list[dict]:
    """AUROC (score interval), its logit with the DeLong variance (``auroc_logit``: ``ci_*`` the Wald
    interval, the variance in the note), Brier, calibration-in-the-large and slope of one set of cases."""
    level = config.evaluate.ci_level
    y = (df["y_true"].to_numpy() == task.index).astype(np.int8)
    s = df[task.score_col].to_numpy(np.float64) if score is None else np.asarray(score, np.float64)
    g = df["patient_id"].astype(str).to_numpy()
    common = dict(subgroup=subgroup, fold=fold, cls=task.positive, n=len(y), n_pos=int(y.sum()))
    recs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        au = auroc_score_interval(y, s, g, level)
    recs.append(_record(scope, "auroc", au.auroc, ci=(au.ci_low, au.ci_high), ci_method=au.ci_method,
                        note=au.note, **common))
    lg, var, why = _logit_auroc(y, s, g)
    zc = float(norm.ppf(0.5 + level / 2))
    ci = (lg - zc * math.sqrt(var), lg + zc * math.sqrt(var)) if math.isfinite(var) else (math.nan, math.nan)
    recs.append(_record(scope, "auroc_logit", lg, ci=ci, ci_method="Wald, DeLong clustered variance "
                        "(Obuchowski), delta method", note=why or f"variance {var:.6g}", **common))
    recs.append(_record(scope, "brier", brier(y, s) if len(y) else math.nan, **common))
    for name, fit in calibration_fits(y, s, g, level).items():
        recs.append(_record(scope, name, fit.value, ci=(fit.ci_low, fit.ci_high), ci_method=_CAL_METHOD,
                            note=fit.note, **common))
    return recs


def _period(cutoffs: list, k: int, column: str) -> str:
    return (f"{column} from {cutoffs[k]} to before {cutoffs[k + 1]}" if k + 1 < len(cutoffs)
            else f"{column} from {cutoffs[k]}")


def _pooled_records(parts: list[pd.DataFrame], task: BinaryTask, level: float) -> list[dict]:
    """The random-effects summary of the groups' AUROCs (logit scale, DeLong variances)."""
    per = []
    for part in parts:
        y = (part["y_true"].to_numpy() == task.index).astype(np.int8)
        lg, var, _ = _logit_auroc(y, part[task.score_col].to_numpy(np.float64),
                                  part["patient_id"].astype(str).to_numpy())
        per.append({"value": lg, "var": var, "n": len(y), "n_pos": int(y.sum())})
    ok = [r for r in per if math.isfinite(r["value"])]
    left = len(per) - len(ok)
    re = random_effects_dl(np.array([r["value"] for r in ok]), np.array([r["var"] for r in ok]), level)
    note = f"{re.k} of {len(per)} groups pooled" + (f"; {left} left out (see their notes)" if left else "")
    common = dict(subgroup="all held-out groups", fold="pooled", cls=task.positive,
                  n=sum(r["n"] for r in ok), n_pos=sum(r["n_pos"] for r in ok))
    method = "DerSimonian-Laird random effects on logit AUROC, back-transformed"
    if re.k < 2:
        return [_record("external_pooled", "auroc", math.nan, note=note + ": fewer than 2 groups to pool",
                        **common)]
    return [
        _record("external_pooled", "auroc", float(expit(re.mean)), ci=(expit(re.ci_low), expit(re.ci_high)),
                ci_method=method, note=note, **common),
        _record("external_pooled", "auroc_prediction_interval", float(expit(re.mean)),
                ci=(expit(re.pi_low), expit(re.pi_high)) if re.k >= 3 else (math.nan, math.nan),
                ci_method="mean ± t(k-2) sqrt(tau² + se²) on logit AUROC (Higgins et al. 2009)",
                note=note if re.k >= 3 else note + "; fewer than 3 groups: no prediction interval", **common),
        _record("external_pooled", "auroc_logit_tau2", re.tau2, ci_method="DerSimonian-Laird", note=note,
                **common),
        _record("external_pooled", "auroc_i2", re.i2, ci_method="DerSimonian-Laird", note=note, **common),
        _record("external_pooled", "auroc_q", re.q, ci_method="Cochran's Q", note=f"{re.k - 1} df", **common),
    ]


def _ensemble(test: pd.DataFrame, config: Config) -> pd.DataFrame:
    scores = [f"p_{c}" for c in config.data.labels]
    keep = [c for c in test.columns if c not in scores and c not in ("fold", "y_pred", "y_pred_argmax")]
    first = {c: "first" for c in keep if c != "case_id"}
    return test.groupby("case_id", sort=True).agg({**first, **{c: "mean" for c in scores}}).reset_index()


def _recalibration_records(part: pd.DataFrame, task: BinaryTask, config: Config, subgroup: str,
                           seed: int) -> list[dict]:
    """Recalibration-in-the-large fitted on a share of the site's patients, scored on the others."""
    fraction = config.evaluate.external_recalibration_fraction
    if fraction <= 0:
        return []
    patients = np.array(sorted(set(part["patient_id"].astype(str))))
    n_fit = int(round(fraction * len(patients)))
    common = dict(subgroup=subgroup, fold="mean of folds", cls=task.positive)
    if n_fit < 1 or len(patients) - n_fit < 2:
        return [_record("external_test_recalibrated", "recalibration_intercept_shift", math.nan,
                        note=f"{len(patients)} patients: too few to fit on {fraction:.0%} and score the rest",
                        n=len(part), **common)]
    chosen = set(np.random.default_rng(seed).permutation(patients)[:n_fit])
    in_fit = part["patient_id"].astype(str).isin(chosen).to_numpy()
    fit, rest = part[in_fit], part[~in_fit]
    y_fit = (fit["y_true"].to_numpy() == task.index).astype(np.float64)
    lp_fit = logit(np.clip(fit[task.score_col].to_numpy(np.float64), _EPS, 1 - _EPS))
    shift = calibration_fits(y_fit, expit(lp_fit), fit["patient_id"].to_numpy(),
                             config.evaluate.ci_level)["calibration_intercept"]
    label = (f"recalibrated in the large on {n_fit} of {len(patients)} patients "
             f"({fraction:.0%}, chosen at random, seed {seed}); scored on the other {len(patients) - n_fit}")
    recs = [_record("external_test_recalibrated", "recalibration_intercept_shift", shift.value,
                    ci=(shift.ci_low, shift.ci_high), ci_method=_CAL_METHOD, note=shift.note or label,
                    n=len(fit), n_pos=int(y_fit.sum()), **common)]
    recs += [{**r, "note": r["note"] or "before recalibration"} for r in
             group_records(rest, task, config, scope="external_test_remaining", subgroup=subgroup,
                           fold="mean of folds")]
    if math.isfinite(shift.value):
        lp = logit(np.clip(rest[task.score_col].to_numpy(np.float64), _EPS, 1 - _EPS))
        recs += [{**r, "note": "; ".join(x for x in (label, r["note"]) if x)} for r in
                 group_records(rest, task, config, scope="external_test_recalibrated", subgroup=subgroup,
                               fold="mean of folds", score=expit(lp + shift.value))]
    return recs


def external_records(preds: pd.DataFrame, inner_val: pd.DataFrame | None, test: pd.DataFrame | None,
                     task: BinaryTask, config: Config, *, seed: int = 0) -> list[dict]:
    """Every external-validation record of a run (module docstring); [] when there is none."""
    cv = config.cv
    recs: list[dict] = []
    if cv.strategy in ("leave_group_out", "temporal"):
        col = cv.group_column if cv.strategy == "leave_group_out" else str(cv.time_column)
        parts = []
        for k in sorted(preds["fold"].unique()):
            part = preds[preds["fold"] == k]
            parts.append(part)
            if cv.strategy == "temporal":
                name = _period(list(cv.temporal_cutoffs), int(k), col)
            elif col in part.columns and part[col].nunique() == 1:
                name = f"{col} = {part[col].iloc[0]}"
            else:
                name = f"fold {int(k)}"
            recs += group_records(part, task, config, scope="external_group", subgroup=name, fold=int(k))
        if cv.strategy == "leave_group_out":
            recs += _pooled_records(parts, task, config.evaluate.ci_level)
    col = cv.group_column
    if test is not None and len(test) and col in test.columns:
        seen = set(preds[col].astype(str)) if col in preds.columns else set()
        if inner_val is not None and col in inner_val.columns:
            seen |= set(inner_val[col].astype(str))
        ens = _ensemble(test, config)
        for site in sorted(set(ens[col].astype(str)) - seen - {"", "nan", "None"}):
            part = ens[ens[col].astype(str) == site]
            name = f"{col} = {site}"
            recs += group_records(part, task, config, scope="external_test", subgroup=name,
                                  fold="mean of folds")
            recs += _recalibration_records(part, task, config, name, seed)
    return recs


def _cells(by: pd.DataFrame) -> dict[str, str]:
    def cell(metric: str) -> str:
        return fmt_ci(*by.loc[metric, ["value", "ci_low", "ci_high"]]) if metric in by.index else "n/a"

    return {"AUROC": cell("auroc"), "calibration-in-the-large (ideal 0)": cell("calibration_intercept"),
            "calibration slope (ideal 1)": cell("calibration_slope"),
            "Brier": fmt(by.loc["brier", "value"]) if "brier" in by.index else "n/a"}


def external_group_table(records: pd.DataFrame) -> pd.DataFrame:
    """One row per held-out group (fold), then the random-effects summary."""
    if records is None or not len(records) or "scope" not in records.columns:
        return pd.DataFrame()
    groups = records[records["scope"] == "external_group"]
    rows = []
    for (fold, name), part in groups.groupby(["fold", "subgroup"], sort=False):
        by = part.set_index("metric")
        rows.append({"held out": name, "fold": fold, "scans": int(part["n"].iloc[0]),
                     "positives": int(part["n_pos"].iloc[0]), **_cells(by)})
    pooled = records[records["scope"] == "external_pooled"].set_index("metric")
    if "auroc" in pooled.index:
        row = {"held out": "random-effects summary (DerSimonian-Laird, logit AUROC)", "fold": "pooled",
               "scans": int(pooled.loc["auroc", "n"]), "positives": int(pooled.loc["auroc", "n_pos"]),
               "AUROC": fmt_ci(*pooled.loc["auroc", ["value", "ci_low", "ci_high"]])}
        if "auroc_i2" in pooled.index:
            pi = pooled.loc["auroc_prediction_interval"]
            row["calibration-in-the-large (ideal 0)"] = (
                f"prediction interval for a new group: [{fmt(pi['ci_low'])}, {fmt(pi['ci_high'])}]"
                if math.isfinite(pi["ci_low"]) else "prediction interval: needs 3 groups")
            row["calibration slope (ideal 1)"] = (f"I² {fmt(100 * pooled.loc['auroc_i2', 'value'], 1)}%, "
                                                  f"tau² {fmt(pooled.loc['auroc_logit_tau2', 'value'], 4)}")
            row["Brier"] = f"{pooled.loc['auroc', 'note']}"
        rows.append(row)
    return pd.DataFrame(rows)


def external_test_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per external test site: all its cases; then, on the patients not used for the refit, before and
    after recalibration-in-the-large."""
    if records is None or not len(records) or "scope" not in records.columns:
        return pd.DataFrame()
    titles = {"external_test": "all cases (fold models' mean probability)",
              "external_test_remaining": "patients not used for the refit: before",
              "external_test_recalibrated": "the same patients: recalibrated in the large (marked)"}
    part = records[records["scope"].isin(list(titles))]
    rows = []
    for site, by_site in part.groupby("subgroup", sort=False):
        for scope, title in titles.items():
            shown = by_site["metric"] != "recalibration_intercept_shift"
            sub = by_site[(by_site["scope"] == scope) & shown]
            if not len(sub):
                continue
            row = {"site": site, "cases": title, "scans": int(sub["n"].iloc[0]),
                   "positives": int(sub["n_pos"].iloc[0]), **_cells(sub.set_index("metric"))}
            shift = by_site[by_site["metric"] == "recalibration_intercept_shift"]
            if scope == "external_test_recalibrated" and len(shift):
                s = shift.iloc[0]
                row["cases"] += (f": intercept shift {fmt_ci(s['value'], s['ci_low'], s['ci_high'])} fitted "
                                 f"on {int(s['n'])} scans")
            rows.append(row)
        shift = by_site[by_site["metric"] == "recalibration_intercept_shift"]
        if len(shift) and not math.isfinite(shift.iloc[0]["value"]):
            rows.append({"site": site, "cases": shift.iloc[0]["note"]})
    return pd.DataFrame(rows)
