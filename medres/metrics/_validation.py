"""Input checks shared by the metric functions: 1-D arrays, binary labels, finite scores.

Problems with a user's predictions are `medres.DataError`s saying what is wrong and what to do.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import DataError


def as_labels(y_true: ArrayLike, *, name: str = "y_true") -> np.ndarray:
    """Binary labels as an int8 vector [N] of 0/1 (bools and 0/1 floats accepted)."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise DataError(f"{name} must be one-dimensional [N], got shape {y.shape}",
                        hint="pass one label per case")
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.isin(y, (0, 1)).all():
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise DataError(f"{name} must hold binary labels 0/1, found {bad.tolist()}",
                        hint="encode the positive class as 1; for several classes use the one-vs-rest forms")
    return y.astype(np.int8)


def as_scores(score: ArrayLike, n: int, *, name: str = "score") -> np.ndarray:
    """Scores as a float64 vector [N], finite, with the labels' length."""
    s = np.asarray(score, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise DataError(f"{name} must have shape [{n}] like the labels, got {s.shape}",
                        hint="pass one score per case, in the labels' order")
    if not np.isfinite(s).all():
        rows = np.flatnonzero(~np.isfinite(s))[:5].tolist()
        raise DataError(f"{name} holds NaN or infinite values (rows {rows})",
                        hint="check the model's output for these cases; a metric cannot rank missing scores")
    return s


def as_probabilities(p: ArrayLike, n: int, *, name: str = "p") -> np.ndarray:
    """Probabilities of the positive class as float64 [N] in [0, 1]."""
    s = as_scores(p, n, name=name)
    if s.size and (s.min() < 0 or s.max() > 1):
        raise DataError(f"{name} must be probabilities in [0, 1], got range [{s.min():g}, {s.max():g}]",
                        hint="apply a sigmoid/softmax to logits before calibration metrics")
    return s


def as_groups(groups: ArrayLike | None, n: int) -> tuple[np.ndarray, int]:
    """Cluster (patient) index per row [N] in 0..P-1, and P. ``None`` makes each row its own cluster."""
    if groups is None:
        return np.arange(n), n
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise DataError(f"groups must have shape [{n}] like the labels, got {g.shape}",
                        hint="pass the patient id of every row")
    _, index = np.unique(g, return_inverse=True)
    return index.ravel(), int(index.max()) + 1 if n else 0
