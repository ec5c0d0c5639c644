"""Benchmark medres.metrics against its peers, in one process; prints times and ratios.

1. Patient-level bootstrap interval of AUROC, 10,000 cases (5,000 patients x 2 scans), 2,000
   resamples: medres's vectorised cluster bootstrap against ``scipy.stats.bootstrap`` calling
   scikit-learn's ``roc_auc_score``. scipy's bootstrap resamples the observations it is given and
   cannot cluster, so it is given the 5,000 patient indices and a statistic that expands each drawn
   patient into both of its scans: the same patient-level resampling, at scipy's cost.
2. DeLong's interval of AUROC on 1,000,000 cases (and the paired test of two models).
3. HD95 of a 256^3 mask pair: medres against MONAI's ``compute_hausdorff_distance(percentile=95)``,
   and all surface metrics (HD95, ASSD, NSD) against MONAI's three functions.

    python benchmarks/metrics.py            # the full run (a few minutes on 2 cores)
    python benchmarks/metrics.py --quick    # smaller sizes, a smoke test
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_bootstrap(n_patients: int, n_resamples: int) -> None:
    from scipy.stats import bootstrap
    from sklearn.metrics import roc_auc_score

    from medres.metrics import patient_bootstrap_ci

    rng = np.random.default_rng(0)
    y_patient = (rng.random(n_patients) < 0.3).astype(int)
    y = np.repeat(y_patient, 2)  # rows 2i and 2i+1 are patient i's two scans
    groups = np.repeat(np.arange(n_patients), 2)
    score = np.repeat(rng.normal(size=n_patients), 2) + 0.8 * y + rng.normal(size=y.size)
    print(f"\n[1] patient bootstrap of AUROC: {y.size} cases, {n_patients} patients, {n_resamples} resamples")

    t_ours, ours = _timed(lambda: patient_bootstrap_ci("auroc", y, score, groups, n_resamples=n_resamples,
                                                       method="percentile", seed=0), repeat=3)
    t_bca, bca = _timed(lambda: patient_bootstrap_ci("auroc", y, score, groups, n_resamples=n_resamples,
                                                     method="bca", seed=0))

    def statistic(patients: np.ndarray) -> float:
        rows = (2 * patients[:, None] + np.arange(2)).ravel()
        return roc_auc_score(y[rows], score[rows])

    t_scipy, ref = _timed(lambda: bootstrap((np.arange(n_patients),), statistic, vectorized=False,
                                            n_resamples=n_resamples, method="percentile",
                                            rng=np.random.default_rng(1)))
    lo, hi = ref.confidence_interval
    se = ref.standard_error
    # Monte-Carlo SD of a 2.5 % bootstrap quantile: se * sqrt(q (1 - q) / B) / phi(z_q)
    mc = se * np.sqrt(0.025 * 0.975 / n_resamples) / 0.0584
    print(f"  medres percentile  {t_ours:8.3f} s  AUROC {ours.estimate:.4f}  95% CI [{ours.ci_low:.4f}, "
          f"{ours.ci_high:.4f}]  SE {ours.standard_error:.5f}")
    print(f"  medres BCa         {t_bca:8.3f} s  95% CI [{bca.ci_low:.4f}, {bca.ci_high:.4f}] "
          f"(incl. a {n_patients}-patient jackknife)")
    print(f"  scipy + sklearn    {t_scipy:8.3f} s  AUROC {statistic(np.arange(n_patients)):.4f}  95% CI "
          f"[{lo:.4f}, {hi:.4f}]  SE {se:.5f}")
    print(f"  endpoint differences: {abs(ours.ci_low - lo):.5f}, {abs(ours.ci_high - hi):.5f} "
          f"(Monte-Carlo SD of one endpoint ~ {mc:.5f}; two independent runs differ by ~{mc * 1.41:.5f})")
    print(f"  ratio (scipy / medres percentile): {t_scipy / t_ours:.1f}x   (BCa: {t_scipy / t_bca:.1f}x)")


def bench_delong(n: int) -> None:
    from medres.metrics import delong_roc_ci, delong_roc_test

    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.3).astype(int)
    a = y + rng.normal(size=n)
    b = a + rng.normal(size=n)
    print(f"\n[2] DeLong (Sun & Xu) on {n:,} cases")
    t_ci, ci = _timed(lambda: delong_roc_ci(y, a), repeat=2)
    t_test, test = _timed(lambda: delong_roc_test(y, a, b))
    print(f"  delong_roc_ci    {t_ci:7.3f} s  AUROC {ci.auroc:.5f} [{ci.ci_low:.5f}, {ci.ci_high:.5f}]")
    print(f"  delong_roc_test  {t_test:7.3f} s  diff {test.difference:.5f}  z {test.z:.2f}")


def _mask_pair(size: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.ogrid[:size, :size, :size]
    c = size / 2
    r = size / 4
    ref = ((grid[0] - c) / r) ** 2 + ((grid[1] - c) / (0.8 * r)) ** 2 + ((grid[2] - c) / (1.1 * r)) ** 2 < 1
    rng = np.random.default_rng(0)
    wobble = 0.04 * np.sin(grid[0] / 5.0) * np.cos(grid[1] / 7.0) + 0.02 * rng.standard_normal(ref.shape)
    pred = ((grid[0] - c - 3) / r) ** 2 + ((grid[1] - c) / (0.83 * r)) ** 2 + ((grid[2] - c + 2) / r) ** 2 \
        + wobble < 1
    return pred, ref


def bench_hd95(size: int) -> None:
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    from medres.metrics import binary_segmentation_metrics, surface_distances

    torch.set_num_threads(2)
    pred, ref = _mask_pair(size)
    spacing = (0.8, 0.8, 1.5)
    print(f"\n[3] surface metrics on a {size}^3 mask pair (spacing {spacing} mm, "
          f"{int(ref.sum()):,} / {int(pred.sum()):,} voxels)")

    def ours_hd95() -> float:
        d_pr, d_rp = surface_distances(pred, ref, spacing)
        return max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))

    yp = torch.from_numpy(pred[None, None])
    yr = torch.from_numpy(ref[None, None])
    kw = dict(include_background=True, spacing=list(spacing))
    t_ours, hd95 = _timed(ours_hd95, repeat=2)
    t_monai, hd95_monai = _timed(
        lambda: compute_hausdorff_distance(yp, yr, percentile=95, **kw).item(), repeat=2)
    print(f"  HD95  medres {t_ours:7.3f} s ({hd95:.4f} mm)   MONAI {t_monai:7.3f} s ({hd95_monai:.4f} mm)   "
          f"ratio {t_monai / t_ours:.2f}x")

    t_all, m = _timed(lambda: binary_segmentation_metrics(pred, ref, spacing, nsd_tolerance_mm=1.0))

    def monai_all() -> tuple[float, float, float]:
        return (compute_hausdorff_distance(yp, yr, percentile=95, **kw).item(),
                compute_average_surface_distance(yp, yr, symmetric=True, **kw).item(),
                compute_surface_dice(yp, yr, [1.0], **kw).item())

    t_monai_all, (h, a, n) = _timed(monai_all)
    print(f"  HD95+ASSD+NSD+Dice+volumes  medres {t_all:7.3f} s (ASSD {m.assd:.4f}, NSD {m.nsd:.4f})   "
          f"MONAI HD95+ASSD+NSD {t_monai_all:7.3f} s (ASSD {a:.4f}, NSD {n:.4f})   "
          f"ratio {t_monai_all / t_all:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args()
    import os
    import platform

    import monai
    import scipy
    import sklearn

    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
          f"scikit-learn {sklearn.__version__}, monai {monai.__version__}, {os.cpu_count()} CPUs")
    if args.quick:
        bench_bootstrap(500, 200)
        bench_delong(10_000)
        bench_hd95(64)
    else:
        bench_bootstrap(5000, 2000)
        bench_delong(1_000_000)
        bench_hd95(256)


if __name__ == "__main__":
    main()
