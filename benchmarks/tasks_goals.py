"""The goals of several questions per scan, measured on a finished ``configs/cxr_findings.yaml`` run folder.

- each finding's out-of-fold AUROC with its patient-bootstrap interval (the report's ``summary.json``
  records, checked against scikit-learn on the pooled table): goal >= 0.85 each;
- the cardiothoracic ratio's MAE with its interval beside a linear regression (scikit-learn) on hand-made
  features of the same images, fitted and scored on the SAME patient-level folds (``folds.csv``): for each
  fold k, fitted on the cases of the other folds and applied to fold k's held-out cases. Features, from
  each case's reference mask (lung and opacity labels: the aerated lung): the lungs' widest extent across
  the image, the gap between the two lungs per image row (its maximum, median and 90th percentile: the
  heart and mediastinum) and the three gaps over the width; the same features from the image alone
  (no annotation: the lungs as the dark regions below Otsu's threshold not touching the edge) and from the
  model's own predicted masks (``seg_path``, once every fold is in) as further baselines. Goal: the
  model's MAE no worse than the baseline; the paired patient-bootstrap interval of the difference is
  printed;
- the coverage of the regression intervals (``pred_ctr_lo`` .. ``pred_ctr_hi``) on the held-out cases with
  its clustered Clopper-Pearson interval, against the nominal level: goal within 3 points.

    python benchmarks/tasks_goals.py --run runs/cxr_findings            # the table in BENCHMARKS.md
    python benchmarks/tasks_goals.py --run runs/cxr_findings --json goals.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_auc_score

from medres.config.tasks import MultilabelTask, RegressionTask
from medres.data.demo.cxr import FIELD_MM
from medres.evaluation.scans import load_scan
from medres.metrics.regression import interval_coverage, regression_bootstrap
from medres.report.run_folder import RunData, load_run

FEATURES = ("thorax_mm", "gap_max_mm", "gap_median_mm", "gap_p90_mm", "gap_max_ratio", "gap_median_ratio",
            "gap_p90_ratio")


def mask_features(path: str | Path) -> dict[str, float]:
    """The hand-made width features of one label map (lung 1, opacity 2 drawn over lung); NaN when it
    does not hold two lungs."""
    labels = load_scan(path)[0]
    return width_features(np.isin(np.rint(labels), (1, 2)), path)


def image_features(path: str | Path) -> dict[str, float]:
    """The same width features from the image alone, no annotation: the lungs as the dark regions
    (below Otsu's threshold, scikit-image) that do not touch the image's edge (the air around the body)."""
    from skimage.filters import threshold_otsu

    img = load_scan(path)[0].astype(np.float64)
    lab, k = ndimage.label(img < threshold_otsu(img))
    edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    return width_features(np.isin(lab, np.setdiff1d(np.arange(1, k + 1), edge)), path)


def width_features(lung: np.ndarray, path: str | Path) -> dict[str, float]:
    """`FEATURES` of a 2D lung mask: the two largest regions are the lungs. Millimetres from the demo's
    field (every image spans ``FIELD_MM``)."""
    if lung.ndim != 2:
        raise ValueError(f"{path}: a 2D label map is expected, got shape {lung.shape}")
    n = lung.shape[0]  # medres's readers give [x, y]: axis 0 runs across the patient
    mm = FIELD_MM / (n - 1)
    lab, k = ndimage.label(lung)
    if k < 2:
        return dict.fromkeys(FEATURES, math.nan)
    sizes = ndimage.sum(lung, lab, range(1, k + 1))
    two = np.argsort(sizes)[::-1][:2] + 1
    centres = [ndimage.center_of_mass(lab == b)[0] for b in two]
    first, second = (lab == two[int(np.argmin(centres))]), (lab == two[int(np.argmax(centres))])
    x = np.arange(n)[:, None]
    both = first.any(0) & second.any(0)
    gap = ((np.where(second, x, n).min(0) - np.where(first, x, -1).max(0) - 1)[both] * mm)
    rows = lung.any(0)
    width = (np.where(lung, x, -1).max(0) - np.where(lung, x, n).min(0) + 1)[rows] * mm
    if not gap.size:
        return dict.fromkeys(FEATURES, math.nan)
    thorax = float(width.max())
    out = {"thorax_mm": thorax, "gap_max_mm": float(gap.max()), "gap_median_mm": float(np.median(gap)),
           "gap_p90_mm": float(np.percentile(gap, 90))}
    for key in ("max", "median", "p90"):
        out[f"gap_{key}_ratio"] = out[f"gap_{key}_mm"] / thorax
    return out


def fold_baseline(train: pd.DataFrame, test: pd.DataFrame, target: str) -> np.ndarray:
    """Predictions for ``test`` (columns ``fold`` and `FEATURES`) of a linear regression fitted, for each
    fold k, on the ``train`` cases (``fold``, `FEATURES`, ``target``) of the other folds with known values;
    NaN where a case has no features or its fold's fit has too few cases."""
    pred = np.full(len(test), np.nan)
    cols = list(FEATURES)
    ok_train = (train[cols].notna().all(axis=1) & train[target].notna()).to_numpy()
    ok_test = test[cols].notna().all(axis=1).to_numpy()
    for k in np.unique(test["fold"]):
        fit = ok_train & (train["fold"] != k).to_numpy()
        use = ok_test & (test["fold"] == k).to_numpy()
        if fit.sum() <= len(cols) or not use.any():
            continue
        model = LinearRegression().fit(train.loc[fit, cols].to_numpy(), train.loc[fit, target].to_numpy())
        pred[use] = model.predict(test.loc[use, cols].to_numpy())
    return pred


def reference_table(run: RunData, column: str, source: str = "mask") -> pd.DataFrame:
    """Every development case of the run's manifest with its fold (``folds.csv``), its target ``column``
    and the features of its reference mask (``source`` "mask") or of its image alone ("image"): the
    baseline's training cases."""
    manifest = Path(run.config.data.manifest)
    df = pd.read_csv(manifest, dtype={"patient_id": str, "case_id": str}, keep_default_na=True)
    if "split" in df:
        df = df[df["split"].fillna("").astype(str).str.lower() != "test"]
    folds = run.folds.assign(patient_id=run.folds["patient_id"].astype(str))
    df = df.merge(folds[["patient_id", "fold"]], on="patient_id", how="inner")
    files = df[source].map(lambda m: m if Path(m).is_absolute() else str(manifest.parent / m))
    features = mask_features if source == "mask" else image_features
    feats = pd.DataFrame([features(m) for m in files], index=df.index)
    return pd.concat([df[["case_id", "patient_id", "fold", column]], feats], axis=1)


def paired_mae_difference(y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: np.ndarray, *,
                          n_resamples: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """MAE(a) - MAE(b) with a paired patient-bootstrap percentile interval (same resamples for both)."""
    codes, g = np.unique(groups, return_inverse=True)
    n_pat = codes.size
    err = np.abs(a - y) - np.abs(b - y)
    sums, counts = np.bincount(g, err, n_pat), np.bincount(g, None, n_pat)
    rng = np.random.default_rng(seed)
    w = rng.multinomial(n_pat, np.full(n_pat, 1 / n_pat), size=n_resamples)
    dist = (w @ sums) / (w @ counts)
    alpha = (1 - level) / 2
    return float(err.mean()), float(np.quantile(dist, alpha)), float(np.quantile(dist, 1 - alpha))


def _mae(y: np.ndarray, p: np.ndarray, g: np.ndarray, n_resamples: int, seed: int) -> dict[str, float]:
    res = regression_bootstrap(y, p, g, metrics=("mae",), n_resamples=n_resamples, seed=seed)["mae"]
    return {"value": res.estimate, "ci_low": res.ci_low, "ci_high": res.ci_high, "n": int(y.size)}


def goals(run_dir: str | Path, *, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Every goal's figures for the run folder ``run_dir`` (its report written: ``report/summary.json``)."""
    run = load_run(run_dir)
    cfg, preds = run.config, run.predictions.reset_index(drop=True)
    summary = json.loads((Path(run_dir) / "report" / "summary.json").read_text(encoding="utf-8"))
    records = pd.DataFrame(summary["records"])
    pooled = records[(records["scope"] == "pooled") & (records["subgroup"] == "all")]
    out: dict = {"run": str(Path(run_dir).resolve()), "n_cases": len(preds),
                 "n_patients": int(preds["patient_id"].nunique()), "folds": int(preds["fold"].nunique()),
                 "auroc": {}, "regression": {}}
    g = preds["patient_id"].astype(str).to_numpy()
    for task in cfg.tasks or []:
        if isinstance(task, MultilabelTask):
            for c in task.columns:
                rec = pooled[(pooled["head"] == task.name) & (pooled["class"] == c)
                             & (pooled["metric"] == "auroc")
                             & pooled["ci_method"].str.contains("bootstrap")].iloc[0]
                known = preds[f"y_{c}"].notna()
                check = roc_auc_score(preds.loc[known, f"y_{c}"], preds.loc[known, f"p_{c}"])
                if not math.isclose(check, rec["value"], abs_tol=1e-9):
                    raise AssertionError(f"{c}: the report's AUROC {rec['value']} is not sklearn's {check}")
                out["auroc"][c] = {"value": rec["value"], "ci_low": rec["ci_low"], "ci_high": rec["ci_high"],
                                   "n": int(known.sum()), "n_pos": int(preds.loc[known, f"y_{c}"].sum()),
                                   "goal_met": bool(rec["value"] >= 0.85)}
        elif isinstance(task, RegressionTask):
            t = task.name
            known = preds[f"y_{t}"].notna() & preds[f"pred_{t}"].notna()
            table = preds[known].reset_index(drop=True)
            y, p, gk = (table[f"y_{t}"].to_numpy(np.float64), table[f"pred_{t}"].to_numpy(np.float64),
                        g[known.to_numpy()])
            entry: dict = {"model": _mae(y, p, gk, n_resamples, seed), "unit": task.unit}
            ref = reference_table(run, task.column)
            by_case = ref.set_index("case_id")
            held = by_case.loc[table["case_id"].astype(str), ["fold", *FEATURES]].reset_index(drop=True)
            baselines = {"reference masks": fold_baseline(ref, held, task.column)}
            img = reference_table(run, task.column, "image").set_index("case_id")
            held_img = img.loc[table["case_id"].astype(str), ["fold", *FEATURES]].reset_index(drop=True)
            baselines["the image alone (Otsu lungs)"] = fold_baseline(img.reset_index(), held_img,
                                                                     task.column)
            all_folds = set(range(cfg.cv.folds)) <= set(preds["fold"].astype(int))
            if "seg_path" in table and table["seg_path"].notna().all() and all_folds:
                # the model's own out-of-fold masks: fitted on the other folds' predicted masks
                pred_feats = pd.DataFrame([mask_features(run.run_dir / s) for s in table["seg_path"]])
                own = pd.concat([table[["fold"]], pred_feats], axis=1).assign(**{task.column: y})
                baselines["the model's predicted masks"] = fold_baseline(own, own, task.column)
            for name, base in baselines.items():
                ok = np.isfinite(base)
                if ok.sum() < 2:
                    entry[f"linear regression on {name}"] = {"note": f"{int(ok.sum())} cases with features"}
                    continue
                diff = paired_mae_difference(y[ok], p[ok], base[ok], gk[ok], n_resamples=n_resamples,
                                             seed=seed)
                entry[f"linear regression on {name}"] = {
                    **_mae(y[ok], base[ok], gk[ok], n_resamples, seed),
                    "model_minus_baseline": {"value": diff[0], "ci_low": diff[1], "ci_high": diff[2]},
                    "goal_met": bool(diff[0] <= 0)}
            lo, hi = table[f"pred_{t}_lo"].to_numpy(np.float64), table[f"pred_{t}_hi"].to_numpy(np.float64)
            if np.isfinite(lo).all() and np.isfinite(hi).all():
                cov = interval_coverage(y, lo, hi, gk, nominal=task.interval)
                entry["coverage"] = {"value": cov.coverage.estimate, "ci_low": cov.coverage.ci_low,
                                     "ci_high": cov.coverage.ci_high, "nominal": task.interval,
                                     "mean_width": cov.mean_width,
                                     "goal_met": bool(abs(cov.coverage.estimate - task.interval) <= 0.03)}
            out["regression"][t] = entry
    return out


def _ci(d: dict, digits: int = 3) -> str:
    return f"{d['value']:.{digits}f} ({d['ci_low']:.{digits}f}-{d['ci_high']:.{digits}f})"


def markdown(res: dict) -> str:
    """The goals as the rows of BENCHMARKS.md's table."""
    lines = ["| goal | measured (95% CI, patients) | met |", "|---|---|---|"]
    for c, a in res["auroc"].items():
        lines.append(f"| OOF AUROC {c} >= 0.85 ({a['n_pos']} of {a['n']} known scans positive) | {_ci(a)} | "
                     f"{'yes' if a['goal_met'] else '**no**'} |")
    for t, e in res["regression"].items():
        lines.append(f"| {t} MAE ({e['unit'] or 'units'}), model | {_ci(e['model'], 4)} | |")
        for key, b in e.items():
            if key.startswith("linear regression") and "note" in b:
                lines.append(f"| {t} MAE, {key} | not estimable: {b['note']} | |")
            elif key.startswith("linear regression"):
                d = b["model_minus_baseline"]
                lines.append(f"| {t} MAE, {key} (same folds) | {_ci(b, 4)}; model minus baseline "
                             f"{_ci(d, 4)} | {'yes' if b['goal_met'] else '**no**'} |")
        if "coverage" in e:
            cov = e["coverage"]
            met = "yes" if cov["goal_met"] else "**no**"
            lines.append(f"| {t} interval coverage within 3 points of {cov['nominal']:g} (mean width "
                         f"{cov['mean_width']:.3f}) | {_ci(cov)} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished cxr_findings run folder (runs/cxr_findings)")
    parser.add_argument("--resamples", type=int, default=2000, help="patient-bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    res = goals(args.run, n_resamples=args.resamples, seed=args.seed)
    print(f"{res['run']}: {res['n_cases']} scans of {res['n_patients']} patients, {res['folds']} folds")
    print(markdown(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
