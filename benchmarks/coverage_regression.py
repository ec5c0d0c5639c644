"""Coverage of the regression intervals (`medres.metrics.regression`) by simulation of clustered data.

Patients have 1-3 scans (uniform). The truth of scan j of patient i is ``y = sqrt(0.5) u_i + sqrt(0.5)
e_ij`` (standard normal, ICC 0.5); the prediction is ``p = b0 + b1 y + sigma (sqrt(icc) v_i +
sqrt(1 - icc) w_ij)``, so the errors are correlated within a patient at intra-class correlation
``icc``. With b0 = 0.2, b1 = 0.9, sigma = 0.5 every scan's (y, p) is bivariate normal with

- Pearson r = b1 / sqrt(b1^2 + sigma^2), CCC = 2 b1 / (1 + b1^2 + sigma^2 + b0^2);
- differences d = p - y ~ N(b0, (b1 - 1)^2 + sigma^2): limits of agreement b0 +- 1.96 SD;
- prediction intervals p +- h with h set so that P(|d| <= h) = 0.90, the true coverage.

Each draw runs `pearson_interval`, `ccc_interval`, `bland_altman` (exact and approximate) and
`interval_coverage` with the patients as groups. A cell's coverage is the share of draws whose 95%
interval holds the true value (Monte-Carlo SE about 0.007 at 1000 draws).

    python benchmarks/coverage_regression.py --draws 1000    # the table in BENCHMARKS.md
    python benchmarks/coverage_regression.py --draws 200     # a smoke run
    python benchmarks/coverage_regression.py --draws 1000 --baseline   # patients ignored; the bootstrap
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
import zlib

import numpy as np
from scipy.optimize import brentq
from scipy.stats import norm

from medres.metrics.regression import (
    bland_altman,
    ccc_interval,
    interval_coverage,
    pearson_interval,
    regression_bootstrap,
)

B0, B1, SIGMA = 0.2, 0.9, 0.5
PATIENTS = (20, 50, 200)
ICCS = (0.0, 0.5, 0.9)
K = 1.96


def truths() -> dict[str, float]:
    sd_d = math.sqrt((B1 - 1) ** 2 + SIGMA**2)
    h = brentq(lambda x: norm.cdf((x - B0) / sd_d) - norm.cdf((-x - B0) / sd_d) - 0.9, 0.0, 10.0)
    return {"pearson_r": B1 / math.sqrt(B1**2 + SIGMA**2),
            "ccc": 2 * B1 / (1 + B1**2 + SIGMA**2 + B0**2),
            "loa_lower": B0 - K * sd_d, "loa_upper": B0 + K * sd_d, "coverage": 0.9, "h": h}


def draw(rng: np.random.Generator, patients: int, icc: float):
    g = np.repeat(np.arange(patients), rng.integers(1, 4, patients))
    y = math.sqrt(0.5) * rng.standard_normal(patients)[g] + math.sqrt(0.5) * rng.standard_normal(g.size)
    err = math.sqrt(icc) * rng.standard_normal(patients)[g] + math.sqrt(1 - icc) * rng.standard_normal(g.size)
    return y, B0 + B1 * y + SIGMA * err, g


COLUMNS = ("pearson_r", "ccc", "loa_lower", "loa_upper", "loa_lower_approx", "loa_upper_approx", "coverage")
BASELINE = ("ccc_scans", "loa_upper_scans", "coverage_scans", "ccc_bootstrap", "loa_upper_bootstrap")


def intervals(y: np.ndarray, p: np.ndarray, g: np.ndarray, truth: dict[str, float]) -> dict[str, tuple]:
    """(interval, true value) of every column for one draw."""
    ba = bland_altman(y, p, g, k=K)
    approx = bland_altman(y, p, g, k=K, method="approximate")
    cov = interval_coverage(y, p - truth["h"], p + truth["h"], g).coverage
    return {"pearson_r": (pearson_interval(y, p, g), truth["pearson_r"]),
            "ccc": (ccc_interval(y, p, g), truth["ccc"]),
            "loa_lower": (ba.lower, truth["loa_lower"]), "loa_upper": (ba.upper, truth["loa_upper"]),
            "loa_lower_approx": (approx.lower, truth["loa_lower"]),
            "loa_upper_approx": (approx.upper, truth["loa_upper"]),
            "coverage": (cov, truth["coverage"])}


def baseline(y: np.ndarray, p: np.ndarray, g: np.ndarray, truth: dict[str, float]) -> dict[str, tuple]:
    """The same intervals with every scan counted as a patient, and the percentile patient bootstrap."""
    boot = regression_bootstrap(y, p, g, metrics=("ccc", "loa_upper"), n_resamples=500, k=K)
    cov = interval_coverage(y, p - truth["h"], p + truth["h"]).coverage
    return {"ccc_scans": (ccc_interval(y, p), truth["ccc"]),
            "loa_upper_scans": (bland_altman(y, p, k=K).upper, truth["loa_upper"]),
            "coverage_scans": (cov, truth["coverage"]),
            "ccc_bootstrap": (boot["ccc"], truth["ccc"]),
            "loa_upper_bootstrap": (boot["loa_upper"], truth["loa_upper"])}


def cell(patients: int, icc: float, draws: int, truth: dict[str, float], run=intervals,
         columns: tuple[str, ...] = COLUMNS) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(zlib.crc32(repr((patients, icc)).encode()))
    hits = {c: 0 for c in columns}
    width = {c: 0.0 for c in columns}
    for _ in range(draws):
        for name, (est, true) in run(*draw(rng, patients, icc), truth).items():
            hits[name] += est.ci_low <= true <= est.ci_high
            width[name] += est.ci_high - est.ci_low
    return {c: (hits[c] / draws, width[c] / draws) for c in columns}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=1000, help="draws per cell")
    ap.add_argument("--baseline", action="store_true",
                    help="scans counted as patients, and the percentile patient bootstrap (500 resamples)")
    args = ap.parse_args()
    run, columns = (baseline, BASELINE) if args.baseline else (intervals, COLUMNS)
    truth = truths()
    print("true values: " + ", ".join(f"{k} {v:.4f}" for k, v in truth.items()))
    print(f"\ncoverage of the 95% interval (mean width), {args.draws} draws per cell; 1-3 scans a patient")
    print("| error ICC | patients | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    start = time.perf_counter()
    worst: dict[str, float] = {c: 1.0 for c in columns}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for icc in ICCS:
            for patients in PATIENTS:
                res = cell(patients, icc, args.draws, truth, run, columns)
                for c in columns:
                    worst[c] = min(worst[c], res[c][0])
                print(f"| {icc} | {patients} | " + " | ".join(f"{res[c][0]:.3f} ({res[c][1]:.3f})"
                                                          for c in columns) + " |", flush=True)
    print("\nlowest coverage: " + ", ".join(f"{c} {worst[c]:.3f}" for c in columns))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
