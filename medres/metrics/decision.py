"""Decision curve analysis (Vickers and Elkin 2006): net benefit across threshold probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medres.metrics._validation import as_labels, as_probabilities

__all__ = ["DecisionCurve", "decision_curve"]


@dataclass(frozen=True)
class DecisionCurve:
    """Net benefit of the model, of treating everyone and of treating no one, per threshold.

    Attributes:
        thresholds: [T] threshold probabilities p_t in (0, 1).
        model: [T] ``TP / N - FP / N * p_t / (1 - p_t)``, treating cases with ``p >= p_t``.
        treat_all: [T] ``prevalence - (1 - prevalence) * p_t / (1 - p_t)``.
        treat_none: [T] zeros.
        prevalence: fraction of positive cases.
    """

    thresholds: np.ndarray
    model: np.ndarray
    treat_all: np.ndarray
    treat_none: np.ndarray
    prevalence: float


def decision_curve(y_true: ArrayLike, p: ArrayLike, thresholds: ArrayLike | None = None) -> DecisionCurve:
    """Net benefit [T] at each threshold probability (default 0.01, 0.02, ..., 0.99)."""
    y = as_labels(y_true)
    q = as_probabilities(p, y.size)
    pt = np.linspace(0.01, 0.99, 99) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    if pt.ndim != 1 or (pt.size and (pt.min() <= 0 or pt.max() >= 1)):
        raise ValueError("thresholds must be a 1-D array of probabilities strictly between 0 and 1")
    n = y.size
    order = np.sort(q)
    pos_sorted = np.sort(q[y == 1])
    treated = n - np.searchsorted(order, pt, side="left")  # cases with p >= p_t
    tp = pos_sorted.size - np.searchsorted(pos_sorted, pt, side="left")
    fp = treated - tp
    odds = pt / (1 - pt)
    prev = float(y.mean())
    return DecisionCurve(pt, tp / n - fp / n * odds, prev - (1 - prev) * odds, np.zeros_like(pt), prev)
