"""Long-format metric records, the rows of ``summary.json`` and the report's tables.

One row per (scope, subgroup, fold, head, class, metric) with its value, interval and counts, the
DESIGN.md contract ``(scope, subgroup, fold, head, class, metric, value, ci_low, ci_high, ci_method,
n, n_pos)``, plus ``note``: why a value is NaN/infinite or how its interval was limited.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medres.metrics.bootstrap import BootstrapResult
from medres.metrics.classification import ThresholdMetrics
from medres.metrics.delong import DeLongCI
from medres.metrics.segmentation import SegmentationSummary

__all__ = ["RECORD_COLUMNS", "MetricRecord", "to_records"]

RECORD_COLUMNS = ("scope", "subgroup", "fold", "head", "class", "metric", "value", "ci_low", "ci_high",
                  "ci_method", "n", "n_pos", "note")


@dataclass(frozen=True)
class MetricRecord:
    """One long-format metric row (``class_name`` is the ``class`` column)."""

    scope: str
    subgroup: str
    fold: str
    head: str
    class_name: str
    metric: str
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_method: str = ""
    n: int = 0
    n_pos: int = 0
    note: str = ""

    def as_row(self) -> dict[str, Any]:
        """The record keyed by `RECORD_COLUMNS`."""
        return {"scope": self.scope, "subgroup": self.subgroup, "fold": self.fold, "head": self.head,
                "class": self.class_name, "metric": self.metric, "value": self.value,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_method": self.ci_method,
                "n": self.n, "n_pos": self.n_pos, "note": self.note}


def to_records(results: Mapping[str, Any], *, scope: str, subgroup: str = "all", fold: str = "pooled",
               head: str = "classification", class_name: str = "", n: int = 0, n_pos: int = 0,
               notes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Turn ``{metric name: result}`` into record rows sharing scope, subgroup, fold, head and class.

    A result may be a number, a `BootstrapResult` (estimate and interval), a `DeLongCI` (AUROC and
    its DeLong interval), a `ThresholdMetrics` (one row per metric, named ``"<name>_<metric>"``,
    with its NaN/inf reasons as notes) or a `SegmentationSummary` (the mean of the valid values, ``n``
    = cases with a valid value, the note says how many of all). ``notes`` adds a note per metric name.

    Example:
        >>> to_records({"auroc": patient_bootstrap_ci("auroc", y, p, patients)}, scope="oof", n=len(y))
    """
    notes = dict(notes or {})
    common = dict(scope=scope, subgroup=subgroup, fold=str(fold), head=head, class_name=class_name,
                  n=int(n), n_pos=int(n_pos))
    out: list[MetricRecord] = []
    for name, result in results.items():
        note = notes.get(name, "")
        if isinstance(result, BootstrapResult):
            out.append(MetricRecord(metric=name, value=result.estimate, ci_low=result.ci_low,
                                    ci_high=result.ci_high, ci_method=result.ci_method,
                                    note="; ".join(x for x in (note, result.reason) if x), **common))
        elif isinstance(result, DeLongCI):
            out.append(MetricRecord(metric=name, value=result.auroc, ci_low=result.ci_low,
                                    ci_high=result.ci_high, ci_method="DeLong",
                                    note="; ".join(x for x in (note, result.reason) if x), **common))
        elif isinstance(result, ThresholdMetrics):
            for metric, value in result.as_dict().items():
                reason = result.reasons.get(metric, "")
                out.append(MetricRecord(metric=f"{name}_{metric}", value=float(value),
                                        note="; ".join(x for x in (note, reason) if x), **common))
        elif isinstance(result, SegmentationSummary):
            counted = f"mean of {result.n_valid} valid of {result.n} cases"
            seg = {**common, "n": result.n_valid}
            out.append(MetricRecord(metric=name, value=result.mean,
                                    note="; ".join(x for x in (note, counted) if x), **seg))
        else:
            out.append(MetricRecord(metric=name, value=float(result), note=note, **common))
    return [r.as_row() for r in out]
