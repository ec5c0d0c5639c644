"""Split conformal prediction sets for a classifier's probabilities, with their held-out coverage.

A set ``C(x) = {y : s(x, y) <= q}`` holds the true class with probability at least ``1 - alpha`` when
the calibration cases and the new case are exchangeable (Vovk, Gammerman and Shafer 2005; Angelopoulos
and Bates, "A gentle introduction to conformal prediction", arXiv:2107.07511, 2021). ``q`` is the
``ceil((n + 1)(1 - alpha))``-th smallest of the n calibration scores, i.e. their empirical quantile at
level ``ceil((n + 1)(1 - alpha)) / n`` (the finite-sample correction); when that rank exceeds n, q is
infinite and every set holds every class.

Scores (nonconformity of class y for case x, probabilities ``p``):

- ``lac`` (default): ``1 - p_y`` -- the least ambiguous set-valued classifier (Sadinle, Lei and
  Wasserman, JASA 2019), the smallest sets on average; a set may be empty.
- ``aps``: ``sum of p_j over the classes ranked at or above y`` (adaptive prediction sets, Romano,
  Sesia and Candes, NeurIPS 2020), without the randomisation, so coverage is at least, not exactly,
  ``1 - alpha``; never empty.

Mondrian (class-conditional) conformal fits one q per true class on that class's calibration cases,
so coverage holds within each class (Vovk 2005, ch. 4; Sadinle et al. 2019), at the price of
larger sets for rare classes. Written here because the rule is a few lines on saved probability
tables; the conformal libraries (MAPIE, crepes) wrap fitted estimators rather than tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import DataError
from medres.metrics.proportions import ProportionInterval, clustered_proportion_interval

__all__ = ["CONFORMAL_SCORES", "ConformalFit", "SetCoverage", "class_scores", "conformal_quantile",
           "fit_conformal", "prediction_sets", "set_coverage"]

CONFORMAL_SCORES = ("lac", "aps")
Score = Literal["lac", "aps"]


def _as_probs(probs: ArrayLike, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(f"{name} must have shape [N, C] with C >= 2 classes, got {p.shape}",
                        hint="pass one row of class probabilities per case (the p_<class> columns)")
    if not np.isfinite(p).all() or (p.size and (p.min() < 0 or p.max() > 1)):
        raise DataError(f"{name} must be finite probabilities in [0, 1]",
                        hint="apply a softmax to logits before conformal prediction")
    return p


def _as_classes(y: ArrayLike, n: int, n_classes: int) -> np.ndarray:
    t = np.asarray(y)
    if t.ndim != 1 or t.shape[0] != n:
        raise DataError(f"labels must have shape [{n}], got {t.shape}", hint="one class index per case")
    if t.size and (not np.issubdtype(t.dtype, np.integer) or t.min() < 0 or t.max() >= n_classes):
        raise DataError(f"labels must be class indices 0..{n_classes - 1}",
                        hint="pass y_true as the index of each case's class in data.labels")
    return t.astype(np.int64)


def class_scores(probs: ArrayLike, score: Score = "lac") -> np.ndarray:
    """The nonconformity score of every candidate class [N, C] (the module's ``lac`` / ``aps``)."""
    p = _as_probs(probs)
    if score == "lac":
        return 1.0 - p
    if score == "aps":
        # mass of the classes with a higher probability, plus the class's own
        higher = (p[:, None, :] > p[:, :, None]) * p[:, None, :]  # [N, y, j]: p_j where p_j > p_y
        return higher.sum(axis=2) + p
    raise DataError(f"unknown conformal score {score!r}", hint=f"use one of {', '.join(CONFORMAL_SCORES)}")


def conformal_quantile(scores: ArrayLike, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest score; ``inf`` when that rank exceeds n (n = 0 too)."""
    if not 0 < alpha < 1:
        raise DataError(f"alpha must be in (0, 1), got {alpha}", hint="e.g. 0.1 for 90% coverage")
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    rank = math.ceil((s.size + 1) * (1 - alpha) - 1e-12)  # guard (n + 1)(1 - alpha) landing a hair above
    return math.inf if rank > s.size else float(s[rank - 1])


@dataclass(frozen=True)
class ConformalFit:
    """A fitted set rule: class y is in the set when its score is <= ``thresholds[y]``.

    ``thresholds`` [C] are equal unless ``mondrian``; ``n_calibration`` [C] counts the calibration
    cases behind each (all cases, or that class's); ``note`` says where a threshold is infinite."""

    alpha: float
    score: str
    mondrian: bool
    thresholds: np.ndarray
    n_calibration: np.ndarray
    note: str = ""

    @property
    def method(self) -> str:
        """How the sets were made, for records and the report."""
        name = {"lac": "LAC score 1 - p_y", "aps": "APS score (non-randomised)"}[self.score]
        kind = "Mondrian (per true class)" if self.mondrian else "split"
        return f"{kind} conformal, {name}, alpha {self.alpha:g}"


def fit_conformal(probs: ArrayLike, y_true: ArrayLike, alpha: float = 0.1, *, score: Score = "lac",
                  mondrian: bool = False) -> ConformalFit:
    """Fit the set threshold(s) on calibration cases (never the cases the sets are for).

    Args:
        probs: calibration class probabilities [N, C]; y_true: their class indices [N].
        alpha: the error rate: sets hold the true class with probability >= 1 - alpha.
        score: ``"lac"`` or ``"aps"``; mondrian: one threshold per true class.
    """
    p = _as_probs(probs)
    y = _as_classes(y_true, p.shape[0], p.shape[1])
    s = class_scores(p, score)[np.arange(y.size), y]  # the score of each case's true class
    n_classes = p.shape[1]
    if mondrian:
        counts = np.bincount(y, minlength=n_classes)
        q = np.array([conformal_quantile(s[y == c], alpha) for c in range(n_classes)])
    else:
        counts = np.full(n_classes, y.size)
        q = np.full(n_classes, conformal_quantile(s, alpha))
    note = ""
    if np.isinf(q).any():
        need = math.ceil(1 / alpha - 1)
        where = " of class " + ", ".join(str(c) for c in np.flatnonzero(np.isinf(q))) if mondrian else ""
        note = (f"too few calibration cases{where} (at least {need} needed for alpha {alpha:g}): "
                "those sets hold every class")
    return ConformalFit(float(alpha), score, bool(mondrian), q, counts, note)


def prediction_sets(probs: ArrayLike, fit: ConformalFit) -> np.ndarray:
    """Membership [N, C] (bool): class y is in case i's set."""
    p = _as_probs(probs)
    if p.shape[1] != fit.thresholds.size:
        raise DataError(f"probabilities have {p.shape[1]} classes, the fit {fit.thresholds.size}",
                        hint="fit and apply the sets on the same classes")
    return class_scores(p, fit.score) <= fit.thresholds[None, :]


@dataclass(frozen=True)
class SetCoverage:
    """Held-out coverage (with its clustered interval) and the mean set size of some prediction sets."""

    coverage: ProportionInterval
    mean_size: float
    n: int


def set_coverage(sets: ArrayLike, y_true: ArrayLike, groups: ArrayLike | None = None,
                 level: float = 0.95) -> SetCoverage:
    """Share of cases whose set holds the true class, with `clustered_proportion_interval` (patients as
    clusters), and the mean number of classes per set."""
    m = np.asarray(sets, dtype=bool)
    if m.ndim != 2:
        raise DataError(f"sets must have shape [N, C], got {m.shape}", hint="pass prediction_sets' output")
    y = _as_classes(y_true, m.shape[0], m.shape[1])
    covered = m[np.arange(y.size), y]
    return SetCoverage(clustered_proportion_interval(covered, groups, level), float(m.sum(1).mean())
                       if y.size else math.nan, int(y.size))
