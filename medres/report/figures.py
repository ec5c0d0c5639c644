"""The report's figures, rendered by matplotlib (Agg canvas, no pyplot) to inline ``data:`` URIs.

Every function takes ready numbers (curves, records, image slices) and returns a PNG data URI, so
the HTML needs no external file. Colours come from matplotlib's colour-blind-safe ``tab10`` cycle.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.text import Text
from sklearn.metrics import precision_recall_curve, roc_curve

__all__ = [
    "to_data_uri",
    "roc_figure",
    "pr_figure",
    "reliability_figure",
    "decision_curve_figure",
    "forest_figure",
    "seg_distribution_figure",
    "gallery_figure",
    "bland_altman_figure",
    "regression_calibration_figure",
]

FPR_GRID = np.linspace(0, 1, 101)


def _subplots(*args, figsize: tuple[float, float], **kwargs):
    """``Figure(...).subplots(...)``: no pyplot, so the caller's backend (e.g. a notebook's) is untouched."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def to_data_uri(fig: Figure) -> str:
    """Render a figure to a base64 PNG ``data:`` URI and close it.

    Text from data (subgroup values, case and class names) is never parsed as markup: every text of the
    figure, and those made while drawing (tick labels), is drawn as written, without mathtext or TeX."""
    plain = {"text.usetex": False, "text.parse_math": False}
    for text in fig.findobj(Text):
        text.set_usetex(False)
        text.set_parse_math(False)
    buf = io.BytesIO()
    with rc_context(plain):
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def roc_figure(
    y: np.ndarray,
    s: np.ndarray,
    fold: np.ndarray,
    band: tuple[np.ndarray, np.ndarray],
    *,
    auroc: float,
    ci: tuple[float, float],
    level: float = 0.95,
) -> str:
    """Pooled out-of-fold ROC curve with its bootstrap band, and one thin curve per fold."""
    fig, ax = _subplots(figsize=(4.6, 4.4))
    for k in np.unique(fold):
        m = fold == k
        if 0 < y[m].sum() < m.sum():
            fpr, tpr, _ = roc_curve(y[m], s[m])
            ax.plot(fpr, tpr, lw=0.9, alpha=0.6, label=f"fold {int(k)}")
    ax.fill_between(
        FPR_GRID, band[0], band[1], color="0.6", alpha=0.35, label=f"{level:.0%} band (patient bootstrap)"
    )
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, color="k", lw=2, label=f"pooled AUROC {auroc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1)
    ax.set(
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="ROC, out-of-fold",
    )
    ax.legend(fontsize=7, loc="lower right")
    return to_data_uri(fig)


def pr_figure(y: np.ndarray, s: np.ndarray, fold: np.ndarray, *, ap: float) -> str:
    """Pooled precision-recall curve, per-fold curves and the prevalence (a useless model's AP)."""
    fig, ax = _subplots(figsize=(4.6, 4.4))
    for k in np.unique(fold):
        m = fold == k
        if y[m].sum() > 0:
            p, r, _ = precision_recall_curve(y[m], s[m])
            ax.step(r, p, where="post", lw=0.9, alpha=0.6, label=f"fold {int(k)}")
    p, r, _ = precision_recall_curve(y, s)
    ax.step(r, p, where="post", color="k", lw=2, label=f"pooled AP {ap:.3f}")
    prev = float(np.mean(y))
    ax.axhline(prev, ls=":", color="0.5", lw=1, label=f"prevalence {prev:.3f}")
    ax.set(
        xlabel="recall (sensitivity)",
        ylabel="precision (PPV)",
        xlim=(0, 1),
        ylim=(0, 1.01),
        title="Precision-recall, out-of-fold",
    )
    ax.legend(fontsize=7, loc="lower left")
    return to_data_uri(fig)


def reliability_figure(
    mean_predicted: np.ndarray, observed: np.ndarray, counts: np.ndarray, *, n_bins: int, ece: float
) -> str:
    """Reliability diagram: observed frequency against mean predicted probability per bin, with counts."""
    fig, (ax, axc) = _subplots(2, 1, figsize=(4.6, 5.0), height_ratios=[3, 1], sharex=True)
    ok = np.asarray(counts) > 0
    ax.plot([0, 1], [0, 1], ls=":", color="0.5", lw=1, label="perfect calibration")
    ax.plot(
        np.asarray(mean_predicted)[ok],
        np.asarray(observed)[ok],
        "o-",
        color="C0",
        label=f"model (ECE {ece:.3f}, {n_bins} equal-width bins)",
    )
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title="Reliability diagram")
    ax.legend(fontsize=7, loc="upper left")
    edges = np.linspace(0, 1, n_bins + 1)
    axc.bar(edges[:-1], counts, width=1 / n_bins, align="edge", color="C0", alpha=0.5, edgecolor="w")
    axc.set(xlabel="predicted probability", ylabel="cases")
    return to_data_uri(fig)


def decision_curve_figure(thresholds: np.ndarray, net_benefit: np.ndarray, treat_all: np.ndarray) -> str:
    """Net benefit of the model, of treating everyone and of treating no one across thresholds."""
    fig, ax = _subplots(figsize=(4.6, 4.0))
    ax.plot(thresholds, net_benefit, color="C0", lw=2, label="model")
    ax.plot(thresholds, treat_all, color="C1", lw=1, label="treat all")
    ax.axhline(0, color="0.3", lw=1, label="treat none")
    top = np.nanmax(np.concatenate([net_benefit, treat_all, [0.01]]))
    ax.set(
        xlabel="threshold probability",
        ylabel="net benefit",
        ylim=(-0.05 * top - 0.01, 1.15 * top),
        title="Decision curve",
    )
    ax.legend(fontsize=7)
    return to_data_uri(fig)


def forest_figure(records: pd.DataFrame, *, metric: str = "auroc", pooled: float = math.nan) -> str:
    """Subgroup forest plot: one row per subgroup level with its interval; "not estimable" rows marked."""
    df = records[records["metric"] == metric].reset_index(drop=True)
    fig, ax = _subplots(figsize=(6.2, 0.32 * len(df) + 1.2))
    ypos = np.arange(len(df))[::-1]
    for yi, (_, r) in zip(ypos, df.iterrows()):
        label = f"{r['subgroup']}  (n={r['n']}, pos={r['n_pos']})"
        ax.text(-0.02, yi, label, ha="right", va="center", fontsize=7, transform=ax.get_yaxis_transform())
        if math.isfinite(r["value"]):
            if math.isfinite(r["ci_low"]):
                ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color="C0", lw=1.5)
            ax.plot(r["value"], yi, "s", color="C0", ms=5)
        else:
            ax.text(0.5, yi, "not estimable", ha="center", va="center", fontsize=7, color="0.4")
    if math.isfinite(pooled):
        ax.axvline(pooled, color="k", ls="--", lw=1, label=f"pooled {pooled:.3f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.axvline(0.5, color="0.6", ls=":", lw=1)
    ax.set(
        xlim=(0, 1),
        ylim=(-0.8, len(df) - 0.2),
        yticks=[],
        xlabel=f"{metric.upper()} (95% CI)",
        title=f"Subgroups: {metric.upper()}",
    )
    return to_data_uri(fig)


def seg_distribution_figure(seg_cases: pd.DataFrame) -> str:
    """Per-case Dice and HD95 distributions by fold (box plots with every case as a dot)."""
    fig, axes = _subplots(1, 2, figsize=(8.0, 3.6))
    folds = sorted(seg_cases["fold"].unique())
    for ax, col, label in ((axes[0], "dice", "Dice"), (axes[1], "hd95", "HD95 (mm)")):
        data = [seg_cases.loc[seg_cases["fold"] == f, col].dropna().to_numpy() for f in folds]
        keep = [i for i, d in enumerate(data) if d.size]
        if keep:
            ax.boxplot([data[i] for i in keep], positions=[i + 1 for i in keep], widths=0.5, showfliers=False)
        for i, d in enumerate(data):
            jitter = np.random.default_rng(i).uniform(-0.12, 0.12, d.size)
            ax.plot(np.full(d.size, i + 1) + jitter, d, ".", color="C0", alpha=0.6, ms=4)
        ax.set_xticks(range(1, len(folds) + 1), [f"fold {int(f)}" for f in folds])
        n_valid = sum(d.size for d in data)
        ax.set(ylabel=label, title=f"{label} per case (n_valid={n_valid})")
    return to_data_uri(fig)


def gallery_figure(
    image: np.ndarray,
    reference: np.ndarray | None,
    predicted: np.ndarray | None,
    cam: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    title: str = "",
) -> str:
    """One worst case: a source slice [X, Y] (RAS axis order) with reference (green) and predicted (red) mask
    outlines, and beside it, when given, ``cam = (model-input slice, Grad-CAM map)`` on the model's grid.

    Slices are shown radiologically: anterior up, the patient's right on the viewer's left."""
    ncols = 2 if cam is not None else 1
    fig, axes = _subplots(1, ncols, figsize=(3.2 * ncols, 3.4), squeeze=False)
    ax = axes[0, 0]
    lo, hi = np.percentile(image, [1, 99])
    ax.imshow(image.T, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
    ax.invert_xaxis()  # radiological: the patient's right (high RAS x) on the viewer's left
    for mask, color, name in ((reference, "lime", "reference"), (predicted, "red", "predicted")):
        if mask is not None and mask.any() and not mask.all():
            ax.contour(mask.T.astype(float), levels=[0.5], colors=color, linewidths=1.2, origin="lower")
        ax.plot([], [], color=color, label=name)
    ax.legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=8)
    ax.set_title("source scan", fontsize=7)
    ax.axis("off")
    if cam is not None:
        background, heat = cam
        ax2 = axes[0, 1]
        blo, bhi = np.percentile(background, [1, 99])
        ax2.imshow(background.T, cmap="gray", vmin=blo, vmax=bhi if bhi > blo else blo + 1, origin="lower")
        ax2.imshow(heat.T, cmap="inferno", alpha=0.5, origin="lower")
        ax2.invert_xaxis()
        flat = not np.ptp(heat) > 0
        ax2.set_title("Grad-CAM, model grid" + (" (flat map)" if flat else ""), fontsize=7)
        ax2.axis("off")
    return to_data_uri(fig)


def bland_altman_figure(
    mean: np.ndarray,
    difference: np.ndarray,
    limits: dict[str, tuple[float, float, float]],
    *,
    unit: str = "",
    level: float = 0.95,
) -> str:
    """Bland-Altman plot: each case's difference (predicted - reference) against the pair's mean, with the
    bias and the limits of agreement (``limits``: name -> (value, ci_low, ci_high)) and their intervals."""
    fig, ax = _subplots(figsize=(5.2, 4.2))
    ax.plot(mean, difference, ".", color="C0", alpha=0.7, ms=5, label="cases")
    x = ax.get_xlim()
    for (name, (value, lo, hi)), style in zip(limits.items(), ("-", "--", "--")):
        if not math.isfinite(value):
            continue
        ax.axhline(value, color="k", ls=style, lw=1.2, label=f"{name} {value:.3g}")
        if math.isfinite(lo) and math.isfinite(hi):
            ax.fill_between(x, lo, hi, color="0.6", alpha=0.25, lw=0)
    ax.axhline(0, color="0.5", ls=":", lw=1)
    ax.set_xlim(x)
    suffix = f" ({unit})" if unit else ""
    ax.set(xlabel=f"mean of predicted and reference{suffix}", ylabel=f"predicted - reference{suffix}",
           title=f"Bland-Altman, shaded: {level:.0%} intervals")
    ax.legend(fontsize=7, loc="best")
    return to_data_uri(fig)


def regression_calibration_figure(
    y: np.ndarray,
    pred: np.ndarray,
    mean_predicted: np.ndarray,
    mean_observed: np.ndarray,
    counts: np.ndarray,
    *,
    intercept: float,
    slope: float,
    unit: str = "",
) -> str:
    """Observed against predicted: every case, the per-bin means (predicted quantile bins) and the fitted
    line ``observed = intercept + slope * predicted`` beside the identity."""
    fig, ax = _subplots(figsize=(4.8, 4.4))
    ax.plot(pred, y, ".", color="0.6", alpha=0.6, ms=4, label="cases")
    ok = np.asarray(counts) > 0
    ax.plot(np.asarray(mean_predicted)[ok], np.asarray(mean_observed)[ok], "o-", color="C0",
            label=f"bin means ({int(ok.sum())} bins)")
    both = np.concatenate([np.asarray(y, float), np.asarray(pred, float)])
    lo, hi = (float(np.min(both)), float(np.max(both))) if both.size else (0.0, 1.0)
    ax.plot([lo, hi], [lo, hi], ls=":", color="0.3", lw=1, label="identity")
    if math.isfinite(intercept) and math.isfinite(slope):
        ax.plot([lo, hi], [intercept + slope * lo, intercept + slope * hi], color="C1", lw=1.2,
                label=f"fit: {intercept:.3g} + {slope:.3g} x predicted")
    suffix = f" ({unit})" if unit else ""
    ax.set(xlabel=f"predicted{suffix}", ylabel=f"reference{suffix}",
           title="Calibration, predicted vs observed")
    ax.legend(fontsize=7, loc="upper left")
    return to_data_uri(fig)
