"""Multi-label findings (e.g. opacity, effusion, cardiomegaly on one radiograph): per-label and averages.

Inputs are ``y_true [N, L]`` with 1 (present), 0 (absent) or NaN (unknown: not read, uncertain), the
model's scores ``[N, L]`` and ``groups [N]``, the patient of every row. A label's unknown cells are left
out of that label's metrics and counted (``n_missing``); its scores may be NaN there.

- per label: AUROC with DeLong's interval (Obuchowski's clustered form when a patient has several
  rows) and the patient bootstrap, average precision with the bootstrap, prevalence with the clustered
  Clopper-Pearson interval;
- macro AUROC / AP (mean over labels) and micro AUROC / AP (all known cells pooled, as scikit-learn's
  ``average="micro"``), with patient-bootstrap intervals; every label, macro and micro value is
  evaluated on the same patient resamples, so their intervals are consistent;
- `cooccurrence`: counts of rows positive for both labels and the conditional prevalences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from medres.errors import DataError
from medres.metrics._validation import as_groups
from medres.metrics.bootstrap import (
    BootstrapResult,
    _check,
    _interval,
    _jackknife,
    _run,
    _Statistic,
    _undefined,
)
from medres.metrics.delong import DeLongCI, delong_roc_ci
from medres.metrics.proportions import ProportionInterval, clustered_proportion_interval
from medres.metrics.records import MetricRecord

__all__ = ["Cooccurrence", "LabelMetrics", "MultilabelSummary", "cooccurrence", "multilabel_metrics",
           "multilabel_records"]


def _label_names(labels: Sequence[str] | None, n_labels: int) -> tuple[str, ...]:
    if labels is None:
        return tuple(f"label_{j}" for j in range(n_labels))
    names = tuple(str(x) for x in labels)
    if len(names) != n_labels:
        raise DataError(f"{len(names)} label names for {n_labels} label columns",
                        hint="pass one name per column of y_true, in column order")
    return names


def _as_multilabel(y_true: ArrayLike, labels: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels [N, L] as float64 with values 0, 1 or NaN (unknown)."""
    y = np.asarray(y_true, dtype=np.float64)
    if y.ndim != 2:
        raise DataError(f"y_true must be [N, L] (one column per finding), got shape {y.shape}",
                        hint="one row per scan, one column per label; NaN where a label is unknown")
    names = _label_names(labels, y.shape[1])
    known = ~np.isnan(y)
    bad = known & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataError(f"label {names[cols[0]]!r} holds values other than 0, 1 or NaN "
                        f"(rows {rows[:5].tolist()})",
                        hint="encode present as 1, absent as 0, unknown as NaN")
    return y, names


def _as_multiscores(scores: ArrayLike, y: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise DataError(f"scores must have y_true's shape {y.shape}, got {s.shape}",
                        hint="one score column per label, in the same order")
    bad = ~np.isnan(y) & ~np.isfinite(s)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise DataError(f"scores of label {names[cols[0]]!r} are NaN or infinite where the label is known "
                        f"(rows {rows[:5].tolist()})", hint="check the model's output for these rows")
    return s


# --- co-occurrence ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cooccurrence:
    """Label co-occurrence over the rows where both labels are known.

    ``both_known[i, j]``: rows with labels i and j known; ``both_positive[i, j]``: of those, positive
    for both (the diagonal: positives of label i); ``conditional[i, j]``: P(label j | label i), i.e.
    ``both_positive[i, j]`` over the rows positive for i with j known (NaN without such rows).
    """

    labels: tuple[str, ...]
    both_known: np.ndarray
    both_positive: np.ndarray
    conditional: np.ndarray

    def rows(self) -> list[dict[str, Any]]:
        """One row per ordered pair of labels: label, given, n_both_known, n_both_positive, p_given."""
        out = []
        for i, a in enumerate(self.labels):
            for j, b in enumerate(self.labels):
                out.append({"label": b, "given": a, "n_both_known": int(self.both_known[i, j]),
                            "n_both_positive": int(self.both_positive[i, j]),
                            "p_given": float(self.conditional[i, j])})
        return out


def cooccurrence(y_true: ArrayLike, labels: Sequence[str] | None = None) -> Cooccurrence:
    """Co-occurrence counts and conditional prevalences of multi-label ``y_true [N, L]`` (NaN = unknown)."""
    y, names = _as_multilabel(y_true, labels)
    known = (~np.isnan(y)).astype(np.int64)
    pos = (y == 1).astype(np.int64)
    both_known = known.T @ known
    both_positive = pos.T @ pos
    positive_given_known = pos.T @ known  # [i, j]: rows positive for i with j known
    with np.errstate(invalid="ignore", divide="ignore"):
        conditional = np.where(positive_given_known > 0,
                               both_positive / np.maximum(positive_given_known, 1), np.nan)
    return Cooccurrence(names, both_known, both_positive, conditional)


# --- metrics ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMetrics:
    """One label's metrics over its known rows (``n`` of them; ``n_missing`` unknown ones left out)."""

    label: str
    n: int
    n_pos: int
    n_missing: int
    prevalence: ProportionInterval
    auroc: BootstrapResult
    auroc_delong: DeLongCI
    average_precision: BootstrapResult


@dataclass(frozen=True)
class MultilabelSummary:
    """Per-label metrics, macro and micro averages (same bootstrap resamples), and co-occurrence."""

    labels: tuple[str, ...]
    per_label: tuple[LabelMetrics, ...]
    macro_auroc: BootstrapResult
    micro_auroc: BootstrapResult
    macro_average_precision: BootstrapResult
    micro_average_precision: BootstrapResult
    cooccurrence: Cooccurrence
    n_rows: int
    n_clusters: int


def multilabel_metrics(y_true: ArrayLike, scores: ArrayLike, groups: ArrayLike | None = None, *,
                       labels: Sequence[str] | None = None, n_resamples: int = 2000, level: float = 0.95,
                       method: Literal["percentile", "bca"] = "percentile",
                       seed: int = 0) -> MultilabelSummary:
    """Per-label, macro and micro AUROC / AP of multi-label predictions with patient-bootstrap intervals.

    Args:
        y_true: [N, L] of 1, 0 or NaN (unknown, excluded from that label and counted).
        scores: [N, L] model scores (finite wherever the label is known).
        groups: patient per row [N]; ``None``: each row its own patient.
        labels: L names (default ``label_0``, ...).
        n_resamples, level, method, seed: the patient bootstrap (`medres.metrics.patient_bootstrap_ci`).

    Macro: the unweighted mean of the labels' values (a resample where some label's value is undefined,
    e.g. no positive patient drawn, is dropped and counted). Micro: every known (row, label) cell pooled
    into one ranking, the cell's patient being its row's.
    """
    _check(method, level, n_resamples)
    y, names = _as_multilabel(y_true, labels)
    s = _as_multiscores(scores, y, names)
    cluster, n_clusters = as_groups(groups, y.shape[0])
    if n_clusters < 2:
        raise DataError(f"a bootstrap needs at least 2 patients, got {n_clusters}",
                        hint="report the point estimates without intervals")
    known = ~np.isnan(y)
    n_labels = y.shape[1]
    stats: list[_Statistic] = []
    for metric in ("auroc", "average_precision"):
        for j in range(n_labels):
            rows = known[:, j]
            stats.append(_Statistic(metric, y[rows, j].astype(np.int8), s[rows, j], cluster[rows], n_clusters,
                                    None))
    cells = np.nonzero(known)
    y_micro, s_micro, c_micro = y[cells].astype(np.int8), s[cells], cluster[cells[0]]
    for metric in ("auroc", "average_precision"):
        stats.append(_Statistic(metric, y_micro, s_micro, c_micro, n_clusters, None))

    full = _evaluate(stats, np.ones((1, n_clusters)))[:, 0]
    dist = _run(stats, n_clusters, n_resamples, seed)
    jack_cache: list[np.ndarray] = []

    def jack() -> np.ndarray:
        if not jack_cache:
            jack_cache.append(_jackknife(stats, n_clusters))
        return jack_cache[0]

    def result(name: str, estimate: float, values: np.ndarray, jack_values: Callable[[], np.ndarray],
               y_ref: np.ndarray | None) -> BootstrapResult:
        if not math.isfinite(estimate):
            res = _undefined(name, y_ref, method, level, n_resamples, n_clusters, seed)
            if y_ref is None:  # a macro average: name the labels without a value
                missing = [names[j] for j in range(n_labels) if not math.isfinite(full[j])]
                res = replace(res, reason=f"{name} undefined: labels {missing} have no value "
                                          "(no known rows, or one class only)")
            return res
        return _interval(name, estimate, values, jack_values, method=method, level=level,
                         n_resamples=n_resamples, n_clusters=n_clusters, seed=seed)

    per_label = []
    for j, name in enumerate(names):
        rows = known[:, j]
        yj = y[rows, j].astype(np.int8)
        a, p = j, n_labels + j
        per_label.append(LabelMetrics(
            label=name, n=int(rows.sum()), n_pos=int(yj.sum()), n_missing=int((~rows).sum()),
            prevalence=clustered_proportion_interval(yj, cluster[rows], level),
            auroc=result("auroc", full[a], dist[a], lambda a=a: jack()[a], yj),
            auroc_delong=delong_roc_ci(yj, s[rows, j], level, cluster[rows]),
            average_precision=result("average_precision", full[p], dist[p], lambda p=p: jack()[p], yj)))

    def macro(block: slice) -> tuple[float, np.ndarray]:
        return float(np.mean(full[block])), dist[block].mean(axis=0)

    auroc_block, ap_block = slice(0, n_labels), slice(n_labels, 2 * n_labels)
    macro_au, macro_au_dist = macro(auroc_block)
    macro_ap, macro_ap_dist = macro(ap_block)
    m_au, m_ap = 2 * n_labels, 2 * n_labels + 1
    return MultilabelSummary(
        labels=names, per_label=tuple(per_label),
        macro_auroc=result("auroc_macro", macro_au, macro_au_dist,
                           lambda: jack()[auroc_block].mean(axis=0), None),
        micro_auroc=result("auroc_micro", full[m_au], dist[m_au], lambda: jack()[m_au], y_micro),
        macro_average_precision=result("average_precision_macro", macro_ap, macro_ap_dist,
                                       lambda: jack()[ap_block].mean(axis=0), None),
        micro_average_precision=result("average_precision_micro", full[m_ap], dist[m_ap],
                                       lambda: jack()[m_ap], y_micro),
        cooccurrence=cooccurrence(y, names), n_rows=y.shape[0], n_clusters=n_clusters)


def _evaluate(stats: list[_Statistic], counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.stack([stat(counts) for stat in stats])


def multilabel_records(summary: MultilabelSummary, *, scope: str, head: str, subgroup: str = "all",
                       fold: str = "pooled") -> list[dict[str, Any]]:
    """Long-format records (`medres.metrics.RECORD_COLUMNS`) of a `MultilabelSummary`; ``head`` = task name.

    Per label (``class`` = the label): prevalence, AUROC (patient bootstrap, then DeLong), average
    precision; ``n`` counts the label's known rows and the note its unknown ones. Averages have
    ``class`` ``"macro"`` / ``"micro"``; the micro ``n`` counts known cells.
    """
    common = dict(scope=scope, subgroup=subgroup, fold=str(fold), head=head)
    out: list[MetricRecord] = []

    def boot(metric: str, res: BootstrapResult, cls: str, n: int, n_pos: int, note: str = "") -> None:
        out.append(MetricRecord(metric=metric, value=res.estimate, ci_low=res.ci_low, ci_high=res.ci_high,
                                ci_method=res.ci_method, n=n, n_pos=n_pos, class_name=cls,
                                note="; ".join(x for x in (note, res.reason) if x), **common))

    for lab in summary.per_label:
        missing = f"{lab.n_missing} rows with this label unknown left out" if lab.n_missing else ""
        base = dict(class_name=lab.label, n=lab.n, n_pos=lab.n_pos, **common)
        prev = lab.prevalence
        out.append(MetricRecord(metric="prevalence", value=prev.estimate, ci_low=prev.ci_low,
                                ci_high=prev.ci_high, ci_method=prev.ci_method,
                                note="; ".join(x for x in (missing, prev.note) if x), **base))
        boot("auroc", lab.auroc, lab.label, lab.n, lab.n_pos, missing)
        dl = lab.auroc_delong
        out.append(MetricRecord(metric="auroc", value=dl.auroc, ci_low=dl.ci_low, ci_high=dl.ci_high,
                                ci_method=dl.ci_method, note="; ".join(x for x in (missing, dl.reason) if x),
                                **base))
        boot("average_precision", lab.average_precision, lab.label, lab.n, lab.n_pos, missing)
    n_cells = sum(lab.n for lab in summary.per_label)
    n_pos_cells = sum(lab.n_pos for lab in summary.per_label)
    n_missing = sum(lab.n_missing for lab in summary.per_label)
    cells = f"{n_cells} known cells of {summary.n_rows} rows x {len(summary.labels)} labels"
    cells += f" ({n_missing} unknown left out)" if n_missing else ""
    boot("auroc", summary.macro_auroc, "macro", n_cells, n_pos_cells, f"mean of {len(summary.labels)} labels")
    boot("auroc", summary.micro_auroc, "micro", n_cells, n_pos_cells, cells)
    boot("average_precision", summary.macro_average_precision, "macro", n_cells, n_pos_cells,
         f"mean of {len(summary.labels)} labels")
    boot("average_precision", summary.micro_average_precision, "micro", n_cells, n_pos_cells, cells)
    return [r.as_row() for r in out]
