"""Calibration: Brier score, expected calibration error, the reliability curve, intercept and slope.

Inputs are labels ``y_true [N]`` (0/1) and predicted probabilities of the positive class ``p [N]``.
Bins are equal-width on [0, 1], right-closed like scikit-learn's ``calibration_curve``
((lo, hi], the first bin [0, hi]); the bin count is part of every ECE result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from medres.metrics._validation import as_labels, as_probabilities
from medres.metrics.classification import class_balance_reason
from medres.metrics.undefined import undefined

__all__ = ["CALIBRATION_METHODS", "CalibrationFit", "ReliabilityCurve", "apply_calibration", "brier",
           "calibration_intercept_slope", "choose_calibration", "ece", "fit_calibration", "reliability_curve",
           "weighted_ece"]

_EPS = 1e-12


def brier(y_true: ArrayLike, p: ArrayLike) -> float:
    """Mean squared difference between p and the 0/1 outcome (scikit-learn's binary form, in [0, 1];
    Metrics Reloaded's multi-class form is twice this)."""
    y = as_labels(y_true)
    q = as_probabilities(p, y.size)
    return float(np.mean((q - y) ** 2)) if y.size else undefined("Brier score undefined: no cases")


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin mean prediction and observed frequency; empty bins are NaN with count 0.

    Attributes:
        bin_edges: [B + 1] from 0 to 1.
        mean_predicted: [B] mean p in each bin.
        observed: [B] fraction of positives in each bin.
        counts: [B] cases per bin.
        n_bins: B.
        ece: sum over bins of counts / N * |observed - mean_predicted|.
    """

    bin_edges: np.ndarray
    mean_predicted: np.ndarray
    observed: np.ndarray
    counts: np.ndarray
    n_bins: int
    ece: float


def reliability_curve(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> ReliabilityCurve:
    """The reliability diagram's data with ``n_bins`` equal-width bins."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y = as_labels(y_true)
    q = as_probabilities(p, y.size)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], q, side="left")  # (lo, hi], like scikit-learn
    counts = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=q, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / np.maximum(counts, 1), np.nan)
        observed = np.where(counts > 0, sum_y / np.maximum(counts, 1), np.nan)
    gap = np.abs(sum_y - sum_p)  # = counts * |observed - mean_p|
    value = float(gap.sum() / y.size) if y.size else math.nan
    return ReliabilityCurve(edges, mean_p, observed, counts, n_bins, value)


def ece(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error of the positive class with ``n_bins`` equal-width bins.

    The value depends on ``n_bins``: report it with the count (e.g. metric name ``ece_10_bins``).
    """
    return reliability_curve(y_true, p, n_bins).ece


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of the predictions.

    Attributes:
        intercept: calibration-in-the-large, ``a`` in ``logit P(y=1) = a + logit(p)`` (logit(p) as an
            offset); 0 when the mean risk is right, > 0 when risks are underestimated.
        slope: ``b`` in ``logit P(y=1) = c + b * logit(p)``; 1 is ideal, < 1 means too extreme
            (over-fitted) predictions.
        reason: why a value is NaN (one class, separation, no convergence).
    """

    intercept: float
    slope: float
    reason: str = ""


def _log_likelihood(eta: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(y * eta - np.logaddexp(0.0, eta)))


def _newton(x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """Maximum-likelihood logistic regression ``y ~ x @ beta + offset`` by Newton's method with step
    halving (the likelihood is concave); None if it does not converge (e.g. separated classes)."""
    beta = np.zeros(x.shape[1])
    current = _log_likelihood(offset, y)
    for _ in range(max_iter):
        eta = x @ beta + offset
        mu = 1 / (1 + np.exp(-eta))
        hessian = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hessian, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):
            candidate = _log_likelihood(x @ (beta + step) + offset, y)
            if candidate >= current - 1e-12:
                break
            step = step / 2
        beta, current = beta + step, candidate
        if not np.isfinite(beta).all() or np.abs(beta).max() > 1e3:
            return None
        if np.abs(step).max() < 1e-10:
            return beta
    return None


def calibration_intercept_slope(y_true: ArrayLike, p: ArrayLike) -> CalibrationFit:
    """Calibration intercept (in the large, logit(p) as offset) and slope (coefficient of logit(p)).

    Fitted by Newton's method on the logistic likelihood (a 1- and a 2-parameter problem;
    statsmodels, which would fit a GLM with an offset, is not a dependency). ``p`` is clipped to
    [1e-12, 1 - 1e-12] before the logit.
    """
    y = as_labels(y_true)
    q = np.clip(as_probabilities(p, y.size), _EPS, 1 - _EPS)
    why = class_balance_reason(y)
    if why:
        nan = undefined(f"calibration intercept and slope undefined: {why}")
        return CalibrationFit(nan, nan, why)
    x = np.log(q / (1 - q))
    yf = y.astype(np.float64)
    itl = _newton(np.ones((y.size, 1)), yf, x)
    fit = _newton(np.column_stack([np.ones(y.size), x]), yf, np.zeros(y.size))
    reasons = []
    if itl is None:
        reasons.append("intercept: the fit did not converge")
    if fit is None:
        reasons.append("slope: the fit did not converge (are the classes perfectly separated?)")
    return CalibrationFit(math.nan if itl is None else float(itl[0]),
                          math.nan if fit is None else float(fit[1]), "; ".join(reasons))


# --- Post-hoc recalibration: temperature scaling and Platt scaling (fitted on inner validation) -------
#
# Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks") divides a model's
# logits by one scalar T > 0 fitted by maximum likelihood on held-back predictions: the ranking, and the
# argmax class, are unchanged, only how extreme the probabilities are. Platt scaling (Platt 1999) fits
# ``sigmoid(a * z + b)`` on the binary logit ``z``, with Platt's smoothed targets
# ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` so that separable data keep a finite fit. Temperature is
# fitted with scipy.optimize's bounded scalar search, Platt by Newton's method; both on log-probabilities
# (logits up to a per-case constant, which softmax ignores).

#: Bounds of the fitted temperature: a fit that reaches one says so in ``note``.
TEMPERATURE_BOUNDS = (0.05, 20.0)
CALIBRATION_METHODS = ("temperature", "platt", "none")


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _as_logits(logits: ArrayLike) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"expected logits of shape [cases, classes >= 2], got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or infinite values")
    return z


def fit_calibration(logits: ArrayLike, y_true: ArrayLike, method: str = "temperature", *,
                    positive: int = -1) -> dict:
    """Fit a recalibration map on (inner-validation) predictions; returns it as plain types.

    Args:
        logits: ``[N, K]`` class logits or log-probabilities of the cases it is fitted on.
        y_true: ``[N]`` class indices in ``0..K-1``.
        method: ``"temperature"`` (any K), ``"platt"`` (binary only) or ``"none"``.
        positive: the positive class for Platt scaling (default: the last).

    Returns a dict: ``method``, ``temperature`` (temperature) or ``a``, ``b``, ``positive`` (Platt),
    ``n``, ``nll_before``, ``nll_after`` (mean negative log-likelihood on the fitted cases) and
    ``note`` (why the identity map was kept, or that a bound was reached). With fewer than two classes
    among the cases the identity map is kept (``method`` ``"none"``) and ``note`` says why.
    """
    from scipy.optimize import minimize_scalar

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {CALIBRATION_METHODS}")
    z = _as_logits(logits)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    n, k = z.shape
    if y.size != n or (n and (y.min() < 0 or y.max() >= k)):
        raise ValueError(f"y_true must hold {n} class indices in 0..{k - 1}")
    rows = np.arange(n)

    def nll(zz: np.ndarray) -> float:
        return float(-_log_softmax(zz)[rows, y].mean()) if n else math.nan

    before = nll(z)
    identity = {"method": "none", "n": int(n), "nll_before": before, "nll_after": before}
    if method == "none":
        return {**identity, "note": "no recalibration configured"}
    if len(np.unique(y)) < 2:
        return {**identity, "note": f"not fitted: the {n} fitting case(s) hold fewer than two classes"}
    if method == "temperature":
        lo, hi = np.log(TEMPERATURE_BOUNDS)
        res = minimize_scalar(lambda lt: nll(z / np.exp(lt)), bounds=(lo, hi), method="bounded",
                              options={"xatol": 1e-6})
        t = float(np.exp(res.x))
        note = ""
        if abs(res.x - lo) < 1e-3:
            note = (f"temperature reached its lower bound {TEMPERATURE_BOUNDS[0]}: the fitting cases' logits "
                    "separate the classes, so sharpening always lowered the loss")
        elif abs(res.x - hi) < 1e-3:
            note = (f"temperature reached its upper bound {TEMPERATURE_BOUNDS[1]}: the fitting cases' logits "
                    "carry no signal about their labels (or contradict them), so flattening towards equal "
                    "probabilities lowered the loss")
        return {"method": "temperature", "temperature": t, "n": int(n), "nll_before": before,
                "nll_after": nll(z / t), "note": note}
    if k != 2:
        raise ValueError("Platt scaling is binary; use method='temperature' for more than two classes")
    pos = positive % k
    d = z[:, pos] - z[:, 1 - pos]
    yp = (y == pos).astype(np.float64)
    n_pos, n_neg = yp.sum(), n - yp.sum()
    target = np.where(yp == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    # the smoothed targets keep the likelihood strictly concave with a finite maximum: Newton's method
    # (exact gradient and Hessian) converges to the maximum-likelihood fit
    ab = _newton(np.column_stack([d, np.ones(n)]), target, np.zeros(n))
    if ab is None:
        return {**identity, "note": "not fitted: Platt scaling did not converge on the fitting cases"}
    a, b = float(ab[0]), float(ab[1])
    cal = {"method": "platt", "a": a, "b": b, "positive": int(pos), "n": int(n), "nll_before": before}
    cal["nll_after"] = nll(_log_softmax_from_platt(d, a, b, pos))
    cal["note"] = ""
    return cal


#: Level of the evidence rule: a fitted map is kept only when its likelihood-ratio test against no
#: recalibration rejects at this level.
EVIDENCE_LEVEL = 0.05


def choose_calibration(logits: ArrayLike, y_true: ArrayLike, groups: ArrayLike | None = None,
                       method: str = "temperature", *, positive: int = -1) -> dict:
    """Fit a recalibration map and keep it only where the fitting cases show it beats no recalibration.

    The evidence is a likelihood-ratio test of the fitted map against the identity (T = 1; for Platt
    a = 1, b = 0) on the fitting cases' labels: ``LR = 2 n (nll_identity - nll_fitted)`` with 1 degree
    of freedom (temperature) or 2 (Platt). Several scans of one patient are not independent evidence:
    ``LR`` is divided by the design effect of fully correlated scans, ``sum m_i^2 / n`` (m_i scans of
    patient i; 1 with one scan each). The map is kept when the chi-squared p-value is below
    `EVIDENCE_LEVEL`; otherwise the identity map is kept (``method`` ``"none"``) and the fitted one is
    recorded as ``candidate``: a map fitted on a few dozen cases is mostly noise and out of fold often
    calibrates worse than the raw probabilities.

    Returns `fit_calibration`'s dict (the map to apply) with ``evidence``: ``rule``, ``kept``,
    ``lr_statistic`` (after the design effect), ``df``, ``p_value``, ``design_effect``, ``patients`` and
    ``why``.
    """
    from scipy.stats import chi2

    z = _as_logits(logits)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    fitted = fit_calibration(z, y, method, positive=positive)
    rule = (f"kept when a likelihood-ratio test against no recalibration, on patients, has "
            f"p < {EVIDENCE_LEVEL:g}")
    if fitted["method"] == "none":
        return {**fitted, "evidence": {"rule": rule, "kept": False, "why": fitted["note"]}}
    n = y.size
    _, cluster = np.unique(np.arange(n) if groups is None else np.asarray(groups), return_inverse=True)
    m = np.bincount(cluster.ravel()).astype(np.float64)
    deff = float((m**2).sum() / n)
    df = 1 if fitted["method"] == "temperature" else 2
    lr = max(0.0, 2 * n * (fitted["nll_before"] - fitted["nll_after"])) / deff
    p_value = float(chi2.sf(lr, df))
    kept = p_value < EVIDENCE_LEVEL
    evidence = {"rule": rule, "kept": bool(kept), "lr_statistic": float(lr), "df": df, "p_value": p_value,
                "design_effect": deff, "patients": int(m.size)}
    summary = (f"log-loss {fitted['nll_after']:.4f} against {fitted['nll_before']:.4f} without "
               f"recalibration on {m.size} patients, likelihood ratio {lr:.2f} on {df} df, p = {p_value:.3g}")
    if kept:
        evidence["why"] = summary
        return {**fitted, "evidence": evidence}
    evidence["why"] = f"not kept: {summary}: no evidence that it beats no recalibration"
    candidate = {key: v for key, v in fitted.items() if key not in ("n", "nll_before")}
    return {"method": "none", "n": fitted["n"], "nll_before": fitted["nll_before"],
            "nll_after": fitted["nll_before"], "note": evidence["why"], "candidate": candidate,
            "evidence": evidence}


def _log_softmax_from_platt(d: np.ndarray, a: float, b: float, pos: int) -> np.ndarray:
    eta = a * d + b
    out = np.empty((d.size, 2))
    out[:, pos] = -np.logaddexp(0.0, -eta)
    out[:, 1 - pos] = -np.logaddexp(0.0, eta)
    return out


def apply_calibration(logits: ArrayLike, calibration: dict | None) -> np.ndarray:
    """Calibrated probabilities ``[N, K]`` from logits/log-probabilities ``[N, K]`` and a fitted map
    (:func:`fit_calibration`'s dict; None or ``method`` ``"none"``: plain softmax)."""
    z = np.asarray(logits, dtype=np.float64)
    single = z.ndim == 1
    z = _as_logits(z[None] if single else z)
    method = (calibration or {}).get("method", "none")
    if method == "temperature":
        out = _log_softmax(z / float(calibration["temperature"]))
    elif method == "platt":
        pos = int(calibration["positive"])
        out = _log_softmax_from_platt(z[:, pos] - z[:, 1 - pos], float(calibration["a"]),
                                      float(calibration["b"]), pos)
    elif method == "none":
        out = _log_softmax(z)
    else:
        raise ValueError(f"unknown calibration method {method!r}")
    p = np.exp(out)
    return p[0] if single else p


def weighted_ece(y_true: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None,
                 n_bins: int = 10) -> float:
    """:func:`ece` with case weights (a bootstrap resample's counts), for ``patient_bootstrap_ci``."""
    y = as_labels(y_true).astype(np.float64)
    q = as_probabilities(p, y.size)
    w = np.ones_like(q) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges[1:-1], q, side="left")
    gap = np.abs(np.bincount(idx, weights=w * y, minlength=n_bins) - np.bincount(idx, weights=w * q,
                                                                                  minlength=n_bins))
    total = w.sum()
    return float(gap.sum() / total) if total > 0 else math.nan
