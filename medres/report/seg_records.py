"""Segmentation records: mean per-case metrics with patient-bootstrap intervals, per fold and pooled."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medres.config import Config
from medres.report.aggregate import _boot, _record

__all__ = ["segmentation_records"]


def segmentation_records(seg_cases: pd.DataFrame, config: Config, *, seed: int = 0) -> list[dict]:
    """Mean per-case segmentation metrics with patient-bootstrap intervals, per fold and pooled.

    ``seg_cases`` has one row per case and class: case_id, patient_id, fold, class, and metric
    columns (dice, iou, hd95, nsd, assd, ...). ``n`` counts the cases where the metric is defined
    (n_valid; see the declared empty-mask policy); undefined cases are left out of the mean. ``n_pos``
    counts the scans of the record whose reference mask holds the class (not empty).
    """
    ev = config.evaluate
    metric_cols = [
        c
        for c in ("dice", "iou", "hd95", "nsd", "assd", "ref_volume_ml", "pred_volume_ml")
        if c in seg_cases.columns
    ]
    recs = []
    scopes = [
        ("fold", str(int(f)), seg_cases[seg_cases["fold"] == f]) for f in sorted(seg_cases["fold"].unique())
    ]
    scopes.append(("pooled", "pooled", seg_cases))
    for scope, fold, part in scopes:
        groups = list(part.groupby("class", sort=False))
        if "empty" in part.columns:  # the same metrics on the cases whose reference holds the class
            present = part[~part["empty"].isin(["both", "reference"])]
            groups += [(f"{c} (reference present)", g) for c, g in present.groupby("class", sort=False)]
        for cls, grp in groups:
            n_pos = _reference_present(grp)
            for m in metric_cols:
                v = grp[m].to_numpy(np.float64)
                ok = np.isfinite(v)
                note = f"{int((~ok).sum())} of {v.size} cases undefined, left out" if (~ok).any() else ""
                if ok.sum() >= 2 and len(np.unique(grp["patient_id"][ok])) >= 2:
                    value, ci, how, bnote = _boot(
                        "mean", None, v[ok], grp["patient_id"].to_numpy()[ok], ev, seed
                    )
                    note = "; ".join(x for x in (note, bnote) if x)
                else:
                    value = float(v[ok].mean()) if ok.any() else math.nan
                    ci, how = (math.nan, math.nan), ""
                recs.append(
                    _record(
                        scope,
                        m,
                        value,
                        fold=fold,
                        head="segmentation",
                        cls=str(cls),
                        ci=ci,
                        ci_method=how,
                        n=int(ok.sum()),
                        n_pos=n_pos,
                        note=note,
                    )
                )
                if m in ("dice", "hd95"):
                    med = float(np.median(v[ok])) if ok.any() else math.nan
                    recs.append(
                        _record(
                            scope,
                            f"{m}_median",
                            med,
                            fold=fold,
                            head="segmentation",
                            cls=str(cls),
                            n=int(ok.sum()),
                            n_pos=n_pos,
                            note=note,
                        )
                    )
    return recs


def _reference_present(cases: pd.DataFrame) -> int:
    """Scans whose reference mask holds the class (``empty`` neither "both" nor "reference")."""
    if "empty" not in cases.columns:
        return 0
    return int(cases.loc[~cases["empty"].isin(["both", "reference"]), "case_id"].nunique())
