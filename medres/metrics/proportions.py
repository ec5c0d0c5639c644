"""Confidence intervals for a proportion (sensitivity, specificity, PPV, NPV as k of n)."""

from __future__ import annotations

import math

from scipy.stats import norm

__all__ = ["wilson_interval"]


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n`` (no continuity correction).

    Same values as ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; written out because
    binomtest also runs an exact test we do not need. It treats the n cases as independent: with
    several scans per patient use `patient_bootstrap_ci`. ``n == 0`` gives (NaN, NaN).
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return math.nan, math.nan
    z = float(norm.ppf(0.5 + level / 2))
    z2 = z * z
    p = successes / n
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
