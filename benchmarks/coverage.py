"""Coverage of the intervals the report prints, by simulation of clustered data.

Patients have 1-3 scans (uniform) whose outcomes are correlated within the patient (intra-class
correlation ``icc``). Each draw runs exactly the functions the report's records use
(`medres.report.aggregate.classification_records` calls them):

- proportions (sensitivity; specificity, PPV, NPV and prevalence use the same function):
  `medres.metrics.proportions.clustered_proportion_interval` on the positive scans of ``positives``
  patients; patient p_i ~ Beta with mean ``true`` and ICC ``icc``, each scan Bernoulli(p_i).
- AUROC: `medres.metrics.delong.auroc_score_interval` on ``positives`` positive and twice as many
  negative patients; scan score = mu * y + sqrt(icc) * u_patient + sqrt(1 - icc) * e_scan (standard
  normals), so the scan-level AUROC is Phi(mu / sqrt(2)).
- average precision: the report's AP record (`medres.report.aggregate.average_precision_record`:
  Clopper-Pearson on the effective number of positive scans, the design effect from the patient
  bootstrap) on the AUROC draws; the true AP is the population value of the same binormal model at the
  expected scan prevalence 1/3, integrated numerically (precision over recall).

A cell's coverage is the share of draws whose interval holds the true value; with D draws its
Monte-Carlo SE is about sqrt(0.95 * 0.05 / D) (0.5 points at D = 2000).

    python benchmarks/coverage.py --draws 2000             # the tables in BENCHMARKS.md (11 min shared)
    python benchmarks/coverage.py --draws 500 --baseline   # the percentile bootstrap used before
    python benchmarks/coverage.py --draws 200 --quick      # a smoke run
    python benchmarks/coverage.py --draws 200 --recalibration   # recalibration kept on evidence or not
    python benchmarks/coverage.py --draws 500 --ap              # average precision only
"""

from __future__ import annotations

import argparse
import functools
import time
import zlib

import numpy as np
from scipy.stats import norm

from medres.metrics.delong import auroc_score_interval
from medres.metrics.proportions import clustered_proportion_interval

PROPORTION_TRUE = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
PROPORTION_POSITIVES = (5, 10, 20, 50)
AUROC_TRUE = (0.8, 0.9, 0.95, 0.99)
AUROC_POSITIVES = (5, 10, 20, 40)
ICCS = (0.0, 0.3, 0.7)


def scans_per_patient(rng: np.random.Generator, patients: int) -> np.ndarray:
    """Patient index per scan, 1-3 scans each."""
    return np.repeat(np.arange(patients), rng.integers(1, 4, patients))


def proportion_draw(rng: np.random.Generator, true: float, patients: int, icc: float):
    g = scans_per_patient(rng, patients)
    if icc > 0:
        a, b = true * (1 - icc) / icc, (1 - true) * (1 - icc) / icc
        p = rng.beta(a, b, patients)
    else:
        p = np.full(patients, true)
    return (rng.uniform(size=g.size) < p[g]).astype(np.int8), g


def auroc_draw(rng: np.random.Generator, true: float, positives: int, icc: float):
    g = scans_per_patient(rng, 3 * positives)
    y = (g < positives).astype(np.int8)
    mu = np.sqrt(2) * norm.ppf(true)
    u = rng.standard_normal(3 * positives)
    s = mu * y + np.sqrt(icc) * u[g] + np.sqrt(1 - icc) * rng.standard_normal(g.size)
    return y, s, g


def proportion_cell(true: float, patients: int, icc: float, draws: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    hits, width = 0, 0.0
    for _ in range(draws):
        success, g = proportion_draw(rng, true, patients, icc)
        r = clustered_proportion_interval(success, g)
        hits += r.ci_low <= true <= r.ci_high
        width += r.ci_high - r.ci_low
    return hits / draws, width / draws


def auroc_cell(true: float, positives: int, icc: float, draws: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    hits, width = 0, 0.0
    for _ in range(draws):
        y, s, g = auroc_draw(rng, true, positives, icc)
        r = auroc_score_interval(y, s, g)
        hits += r.ci_low <= true <= r.ci_high
        width += r.ci_high - r.ci_low
    return hits / draws, width / draws


def true_average_precision(auroc: float, prevalence: float = 1 / 3) -> float:
    """Population AP of the binormal model: positives N(mu, 1), negatives N(0, 1), AUROC = Phi(mu/sqrt 2)."""
    mu = np.sqrt(2) * norm.ppf(auroc)
    t = np.linspace(mu + 9, -9, 400_001)  # thresholds from high to low: recall rises from 0 to 1
    tpr, fpr = norm.sf(t - mu), norm.sf(t)
    precision = prevalence * tpr / np.maximum(prevalence * tpr + (1 - prevalence) * fpr, 1e-300)
    return float(np.sum(precision[1:] * np.diff(tpr)))


def ap_cell(true_auroc: float, positives: int, icc: float, draws: int, seed: int) -> tuple[float, float]:
    """Coverage of the report's AP interval; the true AP follows from the AUROC column's binormal model."""
    from types import SimpleNamespace

    from medres.report.aggregate import average_precision_record

    true = true_average_precision(true_auroc)
    ev = SimpleNamespace(bootstrap_resamples=2000, ci_level=0.95)
    rng = np.random.default_rng(seed)
    hits, width = 0, 0.0
    for i in range(draws):
        y, s, g = auroc_draw(rng, true_auroc, positives, icc)
        r = average_precision_record("all", y, s, g, ev, seed=i, common={})
        hits += r["ci_low"] <= true <= r["ci_high"]
        width += r["ci_high"] - r["ci_low"]
    return hits / draws, width / draws


def bootstrap_cell(metric: str, true: float, k: int, icc: float, draws: int,
                   seed: int) -> tuple[float, float]:
    """The interval the report printed before: the percentile patient bootstrap (500 resamples)."""
    from medres.metrics import patient_bootstrap_ci

    rng = np.random.default_rng(seed)
    hits, width = 0, 0.0
    for i in range(draws):
        if metric == "auroc":
            y, s, g = auroc_draw(rng, true, k, icc)
        else:
            success, g = proportion_draw(rng, true, k, icc)
            y, s = np.ones_like(success), success.astype(float)
        r = patient_bootstrap_ci(metric, y, s, g, n_resamples=500, seed=i,
                                 **({} if metric == "auroc" else {"threshold": 0.5}))
        hits += r.ci_low <= true <= r.ci_high
        width += r.ci_high - r.ci_low
    return hits / draws, width / draws


def recalibration(draws: int) -> None:
    """Out-of-sample Brier of three policies for a map fitted on the inner validation: never recalibrate,
    always keep the fitted temperature, keep it on evidence (`choose_calibration`, what medres does)."""
    from scipy.special import softmax

    from medres.metrics.calibration import apply_calibration, choose_calibration, fit_calibration

    def sample(rng: np.random.Generator, n: int, t_true: float):
        z = rng.normal(0, 2.5, (n, 2))  # logits; labels drawn from softmax(z / t_true)
        return z, (rng.uniform(size=n) < softmax(z / t_true, axis=1)[:, 1]).astype(int)

    print(f"\nrecalibration: mean Brier on 2,000 new cases, {draws} draws per cell (share of draws kept)")
    print("| true temperature | inner-validation patients | none | always fit | on evidence (kept) |")
    print("|---|---|---|---|---|")
    for t_true in (0.7, 1.0, 1.5, 2.5):
        for n_inner in (20, 60):
            rng = np.random.default_rng(zlib.crc32(repr(("recal", t_true, n_inner)).encode()))
            brier = {"none": [], "always": [], "rule": []}
            kept = 0
            for _ in range(draws):
                zi, yi = sample(rng, n_inner, t_true)
                zo, yo = sample(rng, 2000, t_true)
                rule = choose_calibration(zi, yi)
                kept += rule["method"] != "none"
                for name, cal in (("none", None), ("always", fit_calibration(zi, yi)), ("rule", rule)):
                    brier[name].append(np.mean((apply_calibration(zo, cal)[:, 1] - yo) ** 2))
            mean = {k: float(np.mean(v)) for k, v in brier.items()}
            print(f"| {t_true} | {n_inner} | {mean['none']:.4f} | {mean['always']:.4f} | "
                  f"{mean['rule']:.4f} ({kept / draws:.2f}) |", flush=True)


def table(name: str, cell, trues, positives, iccs, draws: int) -> float:
    print(f"\n{name}: coverage of the 95% interval (mean width), {draws} draws per cell")
    print("| ICC | positive patients | " + " | ".join(f"true {t}" for t in trues) + " |")
    print("|---|---|" + "---|" * len(trues))
    worst = 1.0
    for icc in iccs:
        for k in positives:
            cells = [cell(t, k, icc, draws, seed=zlib.crc32(repr((name, icc, k, t)).encode()))
                     for t in trues]
            worst = min(worst, *(c for c, _ in cells))
            print(f"| {icc} | {k} | " + " | ".join(f"{c:.3f} ({w:.2f})" for c, w in cells) + " |", flush=True)
    print(f"lowest coverage: {worst:.3f}")
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=1000, help="draws per cell")
    ap.add_argument("--quick", action="store_true", help="one ICC (0.3) only")
    ap.add_argument("--baseline", action="store_true",
                    help="only the percentile patient bootstrap the report used before, in a few cells")
    ap.add_argument("--ap", action="store_true", help="only average precision (true AP from the AUROC model)")
    ap.add_argument("--recalibration", action="store_true",
                    help="only the out-of-sample effect of recalibration policies (Brier)")
    args = ap.parse_args()
    if args.recalibration:
        recalibration(args.draws)
        return
    if args.baseline:
        for metric, trues, ks in (("sensitivity", (0.9, 0.99), (5, 20)), ("auroc", (0.9, 0.99), (5, 20))):
            table(f"{metric}, percentile patient bootstrap", functools.partial(bootstrap_cell, metric),
                  trues, ks, (0.3,), args.draws)
        return
    iccs = (0.3,) if args.quick else ICCS
    start = time.perf_counter()
    if args.ap:
        print("true AP at scan prevalence 1/3: "
              + ", ".join(f"AUROC {t} -> {true_average_precision(t):.3f}" for t in AUROC_TRUE))
        table("average precision (report's AP record)", ap_cell, AUROC_TRUE, AUROC_POSITIVES, iccs,
              args.draws)
        print(f"\n{time.perf_counter() - start:.0f} s")
        return
    table("sensitivity (clustered_proportion_interval)", proportion_cell, PROPORTION_TRUE,
          PROPORTION_POSITIVES, iccs, args.draws)
    table("AUROC (auroc_score_interval)", auroc_cell, AUROC_TRUE, AUROC_POSITIVES, iccs, args.draws)
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
