"""Weighted ROC/PR kernels shared by the point estimates and the vectorised bootstrap.

Every resample of a cluster bootstrap is a vector of patient multiplicities ``counts [R, P]``. One
class (the "column" class) is grouped once into its distinct score levels ``K``; each case of the
other class is placed by binary search either on a column level (a tie) or in the gap below one.
Sparse maps ``patient -> level`` (``col``, ``gap``, ``tie``, each [P, K]) then give, for all R
resamples at once, the weighted column cases per level, the weighted other cases strictly below
each level (a cumulative sum over gaps) and those tied with it. AUROC and AP follow in O(R K),
ties counting 1/2 (the Mann-Whitney form). A point estimate is the case ``counts = ones [1, P]``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import sparse


class LevelWeights(NamedTuple):
    """Weighted counts per column level for R resamples."""

    col: np.ndarray  # [R, K] column-class weight at each level
    below: np.ndarray  # [R, K] other-class weight strictly below each level
    tie: np.ndarray  # [R, K] other-class weight tied with each level
    col_total: np.ndarray  # [R]
    other_total: np.ndarray  # [R]


class LevelMatrices:
    """Sparse maps from patients to the column class's score levels.

    Args:
        y: labels [N] in {0, 1}; the positives are the column class.
        score: scores [N] (higher = more likely positive).
        cluster: patient index [N] in 0..P-1.
        n_clusters: P.
        flip: use the negatives (scores negated) as the column class; AUROC is unchanged by this
            relabelling, and it pays when the negatives have fewer distinct scores.
    """

    def __init__(self, y: np.ndarray, score: np.ndarray, cluster: np.ndarray, n_clusters: int,
                 *, flip: bool = False) -> None:
        col = (y == 0) if flip else (y == 1)
        s = -score if flip else score
        levels = np.unique(s[col])
        self.n_levels = k = max(levels.size, 1)
        other_s, other_c = s[~col], cluster[~col]
        gap = np.searchsorted(levels, other_s, side="left")  # number of column levels below
        tied = (gap < levels.size) & (levels[np.minimum(gap, levels.size - 1)] == other_s) \
            if levels.size else np.zeros(other_s.size, bool)

        def matrix(rows: np.ndarray, cols: np.ndarray, width: int) -> sparse.csr_matrix:
            m = sparse.csr_matrix((np.ones(rows.size), (cols, rows)), shape=(width, n_clusters))
            m.sum_duplicates()
            return m

        self._col = matrix(cluster[col], np.searchsorted(levels, s[col]), k)
        self._gap = matrix(other_c[~tied], gap[~tied], k + 1)
        self._tie = matrix(other_c[tied], gap[tied], k)

    def weights(self, counts: np.ndarray) -> LevelWeights:
        """Weighted level counts for patient multiplicities ``counts [R, P]``."""
        counts_t = np.ascontiguousarray(counts.T, dtype=np.float64)
        col = (self._col @ counts_t).T
        gap = (self._gap @ counts_t).T
        tie = (self._tie @ counts_t).T
        below = np.cumsum(gap[:, :-1], axis=1) + np.cumsum(tie, axis=1) - tie  # ties at lower levels too
        return LevelWeights(col, below, tie, col.sum(axis=1), gap.sum(axis=1) + tie.sum(axis=1))


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def auroc_from_levels(w: LevelWeights) -> np.ndarray:
    """AUROC [R]; NaN where a class has no weight. Orientation-free: valid for flipped matrices."""
    num = np.einsum("rk,rk->r", w.col, w.below + 0.5 * w.tie)
    return _safe_divide(num, w.col_total * w.other_total)


def average_precision_from_levels(w: LevelWeights) -> np.ndarray:
    """Average precision [R] (scikit-learn's step sum over distinct thresholds); NaN without positives.

    Needs the positives as the column class (``flip=False``): at positive level k, TP = positives
    scoring >= k, FP = negatives scoring >= k = all negatives - those strictly below.
    """
    tp = np.cumsum(w.col[:, ::-1], axis=1)[:, ::-1]
    fp = w.other_total[:, None] - w.below
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(w.col > 0, tp / np.where(w.col > 0, tp + fp, 1.0), 0.0)
    return _safe_divide(np.einsum("rk,rk->r", w.col, precision), w.col_total)


def ranking_matrices(metric: str, y: np.ndarray, score: np.ndarray, cluster: np.ndarray,
                     n_clusters: int) -> LevelMatrices:
    """Level matrices for ``"auroc"`` (fewer distinct scores as columns) or ``"average_precision"``."""
    flip = False
    if metric == "auroc":
        flip = np.unique(score[y == 0]).size < np.unique(score[y == 1]).size
    return LevelMatrices(y, score, cluster, n_clusters, flip=flip)


def point_estimate(metric: str, y: np.ndarray, score: np.ndarray) -> float:
    """AUROC or AP on the whole sample (every row its own cluster, weight 1)."""
    n = y.size
    w = ranking_matrices(metric, y, score, np.arange(n), n).weights(np.ones((1, n)))
    kernel = auroc_from_levels if metric == "auroc" else average_precision_from_levels
    return float(kernel(w)[0])
