"""Classification metrics: AUROC, average precision, and the confusion-based metrics at a threshold.

Binary inputs are labels ``y_true [N]`` in {0, 1} (1 = the positive class) and scores ``[N]``
(probability or any monotone score; higher = more likely positive). A case is called positive when
``score >= threshold``. A metric that is undefined for the sample (one class only, an empty
denominator) is NaN together with a reason (a warning for the scalar functions, the ``reasons``
field of `ThresholdMetrics`), never a made-up value: AUROC of a one-class sample is not 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import DataError
from medres.metrics._ranking import point_estimate
from medres.metrics._validation import as_labels, as_scores
from medres.metrics.undefined import undefined

__all__ = [
    "THRESHOLD_METRICS",
    "ConfusionCounts",
    "ThresholdMetrics",
    "auroc",
    "average_precision",
    "class_balance_reason",
    "confusion_counts",
    "macro_average",
    "metrics_at_threshold",
    "metrics_from_counts",
    "one_vs_rest",
    "one_vs_rest_threshold_metrics",
    "prevalence",
]

THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "balanced_accuracy", "mcc", "f1",
                     "lr_positive", "lr_negative")


def class_balance_reason(y_true: ArrayLike) -> str:
    """Why a ranking metric is undefined for these labels, or "" when both classes are present."""
    y = as_labels(y_true)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return f"only one class present (n_pos={n_pos}, n_neg={y.size - n_pos}): the metric needs both"
    return ""


def auroc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve [N] -> float, ties counted 1/2 (Mann-Whitney); NaN if one class only."""
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    reason = class_balance_reason(y)
    if reason:
        return undefined(f"AUROC undefined: {reason}")
    return point_estimate("auroc", y, s)


def average_precision(y_true: ArrayLike, score: ArrayLike) -> float:
    """Average precision (scikit-learn's step sum, no interpolation); NaN without positives.

    Read it next to `prevalence`: a useless model's AP equals the prevalence, not 0.5.
    """
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    if y.sum() == 0:
        return undefined("average precision undefined: no positive cases")
    return point_estimate("average_precision", y, s)


def prevalence(y_true: ArrayLike) -> float:
    """Fraction of positive cases (NaN for an empty sample)."""
    y = as_labels(y_true)
    return float(y.mean()) if y.size else undefined("prevalence undefined: no cases")


@dataclass(frozen=True)
class ConfusionCounts:
    """The 2x2 table of a binary decision."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def n_pos(self) -> int:
        return self.tp + self.fn


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike) -> ConfusionCounts:
    """Counts of a binary decision ``y_pred [N]`` against ``y_true [N]`` (both 0/1)."""
    y = as_labels(y_true)
    d = as_labels(y_pred, name="y_pred")
    if d.size != y.size:
        raise DataError(f"y_pred has {d.size} cases, y_true {y.size}", hint="pass both in the same order")
    tp = int(np.sum((y == 1) & (d == 1)))
    fp = int(np.sum((y == 0) & (d == 1)))
    fn = int(np.sum((y == 1) & (d == 0)))
    return ConfusionCounts(tp=tp, fp=fp, tn=y.size - tp - fp - fn, fn=fn)


@dataclass(frozen=True)
class ThresholdMetrics:
    """Confusion-based metrics at one threshold; ``reasons`` explains every NaN or infinite value."""

    threshold: float
    counts: ConfusionCounts
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    balanced_accuracy: float
    mcc: float
    f1: float
    lr_positive: float
    lr_negative: float
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """The metric values by name (`THRESHOLD_METRICS` order)."""
        return {name: getattr(self, name) for name in THRESHOLD_METRICS}


def _ratio(num: float, den: float, reasons: dict[str, str], name: str, why: str) -> float:
    if den == 0:
        reasons[name] = why
        return math.nan
    return num / den


def metrics_from_counts(counts: ConfusionCounts, threshold: float = math.nan) -> ThresholdMetrics:
    """Sensitivity, specificity, PPV, NPV, balanced accuracy, MCC, F1, LR+ and LR- from a 2x2 table.

    Division by zero gives NaN with a reason (scikit-learn returns 0 for MCC and F1 there). LR+ is
    infinite when specificity is 1 and sensitivity above 0 (no false positives); LR- is infinite when
    specificity is 0 and sensitivity below 1; both are recorded in ``reasons``.
    """
    tp, fp, tn, fn = counts.tp, counts.fp, counts.tn, counts.fn
    r: dict[str, str] = {}
    sens = _ratio(tp, tp + fn, r, "sensitivity", "no positive cases")
    spec = _ratio(tn, tn + fp, r, "specificity", "no negative cases")
    ppv = _ratio(tp, tp + fp, r, "ppv", "no case called positive at this threshold")
    npv = _ratio(tn, tn + fn, r, "npv", "no case called negative at this threshold")
    bacc = (sens + spec) / 2
    if math.isnan(bacc):
        r["balanced_accuracy"] = "needs both sensitivity and specificity"
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = _ratio(float(tp) * tn - float(fp) * fn, den, r, "mcc",
                 "a row or column of the 2x2 table is empty (one true or one predicted class)")
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, r, "f1", "no positive cases and none called positive")
    lr_pos, lr_neg = _likelihood_ratios(sens, spec, r)
    return ThresholdMetrics(threshold=float(threshold), counts=counts, sensitivity=sens, specificity=spec,
                            ppv=ppv, npv=npv, balanced_accuracy=bacc, mcc=mcc, f1=f1,
                            lr_positive=lr_pos, lr_negative=lr_neg, reasons=r)


def _likelihood_ratios(sens: float, spec: float, r: dict[str, str]) -> tuple[float, float]:
    if math.isnan(sens) or math.isnan(spec):
        r["lr_positive"] = r["lr_negative"] = "needs both sensitivity and specificity"
        return math.nan, math.nan
    if spec == 1:
        lr_pos = math.inf if sens > 0 else math.nan
        r["lr_positive"] = ("infinite: no false positives" if sens > 0
                            else "undefined: no case called positive (0/0)")
    else:
        lr_pos = sens / (1 - spec)
    if spec == 0:
        lr_neg = math.inf if sens < 1 else math.nan
        r["lr_negative"] = ("infinite: every negative called positive" if sens < 1
                            else "undefined: every case called positive (0/0)")
    else:
        lr_neg = (1 - sens) / spec
    return lr_pos, lr_neg


def metrics_at_threshold(y_true: ArrayLike, score: ArrayLike, threshold: float) -> ThresholdMetrics:
    """Apply a fixed threshold (``score >= threshold`` is positive) and compute the confusion metrics.

    Choose the threshold on validation data (`medres.metrics.choose_threshold`) and pass it here
    unchanged for held-out data.
    """
    y = as_labels(y_true)
    s = as_scores(score, y.size)
    if not math.isfinite(threshold):
        raise DataError(f"threshold must be a finite number, got {threshold}",
                        hint="choose it with choose_threshold on validation data")
    return metrics_from_counts(confusion_counts(y, (s >= threshold).astype(np.int8)), threshold)


def one_vs_rest(metric: Callable[[np.ndarray, np.ndarray], float], y_true: ArrayLike,
                proba: ArrayLike) -> np.ndarray:
    """A binary metric per class, class c against the rest.

    Args:
        metric: ``metric(y_binary [N], score [N]) -> float``, e.g. `auroc`.
        y_true: class indices [N] in 0..C-1.
        proba: class scores [N, C].

    Returns:
        values [C]; NaN (with a warning) for classes absent from ``y_true``.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or y.ndim != 1:
        raise DataError(f"expected y_true [N] and proba [N, C], got {y.shape} and {p.shape}",
                        hint="one row of class scores per case")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1] or not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"y_true must hold class indices 0..{p.shape[1] - 1}",
                        hint="map class names to the column order of proba")
    return np.array([metric((y == c).astype(np.int8), p[:, c]) for c in range(p.shape[1])])


def one_vs_rest_threshold_metrics(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int
                                  ) -> list[ThresholdMetrics]:
    """Confusion metrics per class of a multi-class decision (class c against the rest).

    Args:
        y_true: class indices [N]; y_pred: predicted class indices [N] (e.g. the argmax of the
            probabilities); n_classes: C.

    Returns:
        C `ThresholdMetrics` (their ``threshold`` is NaN: the decision is the argmax). Macro forms:
        `macro_average` of a field, e.g. the macro sensitivity (= multi-class balanced accuracy).
    """
    y, d = np.asarray(y_true), np.asarray(y_pred)
    if y.shape != d.shape or y.ndim != 1:
        raise DataError(f"y_true {y.shape} and y_pred {d.shape} must be matching vectors [N]")
    for name, v in (("y_true", y), ("y_pred", d)):
        if v.size and (not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= n_classes):
            raise DataError(f"{name} must hold class indices 0..{n_classes - 1}",
                            hint="map class names to indices in the configuration's class order")
    return [metrics_from_counts(confusion_counts((y == c).astype(np.int8), (d == c).astype(np.int8)))
            for c in range(n_classes)]


def macro_average(values: ArrayLike) -> float:
    """Unweighted mean over classes; NaN (with the reason) if any class's value is undefined."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.isnan(v).any():
        missing = np.flatnonzero(np.isnan(v)).tolist()
        return undefined(f"macro average undefined: classes {missing} have no value")
    return float(v.mean())
