"""Operating points chosen on validation data only, to be applied unchanged to held-out data.

Candidate thresholds lie halfway between adjacent distinct validation scores (as pROC does), plus
the lowest score (everything positive) and just above the highest (nothing positive), so a held-out
score equal to a validation score never sits exactly on the cut. A case is positive when
``score >= threshold``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import ConfigError, DataError
from medres.metrics._validation import as_labels, as_scores

__all__ = ["candidate_thresholds", "choose_threshold"]

Method = Literal["youden", "sensitivity", "specificity", "cost"]


def candidate_thresholds(y_true: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ascending thresholds [K+1] with the validation sensitivity [K+1] and specificity [K+1] at each."""
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    levels, level = np.unique(s, return_inverse=True)
    k = levels.size
    pos = np.bincount(level[y == 1], minlength=k)
    neg = np.bincount(level[y == 0], minlength=k)
    # called positive at threshold index i: every level >= i
    tp = np.append(np.cumsum(pos[::-1])[::-1], 0)
    fp = np.append(np.cumsum(neg[::-1])[::-1], 0)
    thresholds = np.concatenate([levels[:1], (levels[:-1] + levels[1:]) / 2,
                                 [np.nextafter(levels[-1], np.inf)]])
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return thresholds, tp / n_pos, 1 - fp / n_neg


def choose_threshold(y_val: ArrayLike, p_val: ArrayLike, method: Method = "youden", *,
                     target: float = 0.9, cost_ratio: float = 1.0) -> float:
    """Choose a decision threshold on validation predictions.

    Args:
        y_val: validation labels [N] (0/1).
        p_val: validation scores [N].
        method: ``"youden"`` maximises sensitivity + specificity - 1; ``"sensitivity"`` keeps
            sensitivity >= ``target`` with the highest specificity; ``"specificity"`` keeps specificity
            >= ``target`` with the highest sensitivity; ``"cost"`` minimises
            ``cost_ratio * FN + FP`` on the validation set (``cost_ratio`` = cost of a missed positive
            relative to a false alarm).
        target: the sensitivity or specificity to reach.
        cost_ratio: the FN:FP cost ratio for ``"cost"``.

    Returns:
        the threshold; pass it unchanged to `metrics_at_threshold` on held-out data. Ties between
        candidates go to the higher threshold.
    """
    y = as_labels(y_val)
    if y.sum() == 0 or y.sum() == y.size:
        raise DataError(f"choosing a threshold needs both classes in the validation set "
                        f"(n_pos={int(y.sum())}, n={y.size})",
                        hint="use a validation split that holds positive and negative cases")
    thresholds, sens, spec = candidate_thresholds(y, p_val)
    if method == "youden":
        objective = sens + spec - 1
    elif method in ("sensitivity", "specificity"):
        if not 0 < target <= 1:
            raise ConfigError(f"target must be in (0, 1], got {target}", field="target")
        reached = (sens if method == "sensitivity" else spec) >= target - 1e-12
        objective = np.where(reached, spec if method == "sensitivity" else sens, -math.inf)
    elif method == "cost":
        if not cost_ratio > 0:
            raise ConfigError(f"cost_ratio must be positive, got {cost_ratio}", field="cost_ratio")
        n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
        objective = -(cost_ratio * (1 - sens) * n_pos + (1 - spec) * n_neg)
    else:
        raise ConfigError(f"unknown threshold method {method!r}", field="method",
                          hint="one of youden, sensitivity, specificity, cost")
    best = np.flatnonzero(objective == objective.max())[-1]  # ties: the higher threshold
    return float(thresholds[best])
