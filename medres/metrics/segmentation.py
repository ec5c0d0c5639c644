"""Segmentation metrics per case and class, in millimetres: Dice, IoU, HD, HD95, ASSD, NSD, volumes.

Conventions (Metrics Reloaded, Maier-Hein et al. 2024; MONAI):
- boundary voxels: the mask minus its binary erosion (scipy's cross-shaped structuring element,
  outside the array counts as background), as MONAI's ``get_mask_edges``;
- distances: Euclidean, voxel spacing in mm applied per axis, from every boundary voxel of one mask
  to the nearest boundary voxel of the other (the two directed distance sets);
- HD = the largest distance; HD95 = the larger of the two directed 95th percentiles (linear
  interpolation; MONAI's ``compute_hausdorff_distance(percentile=95)``, not medpy's pooled form);
- ASSD = mean of both directed sets pooled; NSD at tolerance tau = the share of boundary voxels of
  both masks within tau mm of the other boundary (MONAI's ``compute_surface_dice``).

Empty-mask policy (one policy, recorded as ``empty`` and ``reasons`` in every result):
- both masks empty (a correct "nothing there"): Dice = IoU = NSD = 1; HD, HD95, ASSD are undefined
  (NaN, not valid: there is no boundary) -- Metrics Reloaded's convention for overlap metrics;
- one mask empty: Dice = IoU = NSD = 0; HD, HD95, ASSD are NaN and not valid (MONAI returns inf / NaN).
  Metrics Reloaded substitutes a worst-case value when aggregating; we leave the value missing and
  count it: every summary carries ``n_valid`` per metric, so a reader sees how many cases a mean
  covers.

Distances are computed once per class and all surface metrics read from them. MONAI's functions
compute the same numbers (the tests check), but take one-hot tensors, redo the edges and the
nearest-neighbour search for each metric and use other empty-mask values, hence this direct scipy
implementation (no torch).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage
from scipy.spatial import cKDTree

from medres.errors import DataError

__all__ = ["EMPTY_MASK_POLICY", "empty_mask_policy",
           "SEGMENTATION_METRICS", "SegmentationResult", "SegmentationSummary", "binary_segmentation_metrics",
           "boundary", "segmentation_metrics", "summarise_segmentation", "surface_distances"]

#: The empty-mask policy above, as the report states it (``{tol}``: the NSD tolerance in mm). The one
#: text: the evaluation and a report rebuilt in a notebook both print it.
EMPTY_MASK_POLICY = (
    "Empty-mask policy (medres.metrics.segmentation): reference and prediction both empty gives Dice = IoU = "
    "NSD = 1 and no distance; one of them empty gives Dice = IoU = NSD = 0 and no distance. Undefined "
    "values are left out of means and counted: n is the number of cases where a metric is defined. Rows "
    "marked '(reference present)' keep only cases whose reference mask holds the class. NSD tolerance: "
    "{tol} mm. Distances in mm from the voxel spacing of the source scan."
)


def empty_mask_policy(nsd_tolerance_mm: float) -> str:
    """:data:`EMPTY_MASK_POLICY` for a run's NSD tolerance (``evaluate.nsd_tolerance_mm``)."""
    return EMPTY_MASK_POLICY.format(tol=nsd_tolerance_mm)


SEGMENTATION_METRICS = ("dice", "iou", "hd", "hd95", "assd", "nsd", "ref_volume_ml", "pred_volume_ml")


@dataclass(frozen=True)
class SegmentationResult:
    """Metrics of one class in one case. ``empty`` is "", "both", "reference" or "prediction"."""

    dice: float
    iou: float
    hd: float
    hd95: float
    assd: float
    nsd: float
    ref_volume_ml: float
    pred_volume_ml: float
    nsd_tolerance_mm: float
    empty: str = ""
    reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Metric values by name (`SEGMENTATION_METRICS` order)."""
        return {name: getattr(self, name) for name in SEGMENTATION_METRICS}


def _check(pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float | None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p, r = np.asarray(pred), np.asarray(ref)
    if p.shape != r.shape:
        raise DataError(f"prediction {p.shape} and reference {r.shape} masks differ in shape",
                        hint="resample the prediction onto the reference grid first")
    if p.ndim < 1:
        raise DataError("masks must have at least one spatial axis")
    sp = np.broadcast_to(np.asarray(1.0 if spacing is None else spacing, dtype=np.float64), (p.ndim,))
    if not (np.isfinite(sp).all() and (sp > 0).all()):
        raise DataError(f"voxel spacing must be positive and finite per axis, got {tuple(sp)}",
                        hint="pass spacing in mm, one value per spatial axis")
    return p.astype(bool, copy=False), r.astype(bool, copy=False), sp.copy()


def boundary(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a boolean mask: the mask minus its erosion (cross structure, background outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_distances(pred: ArrayLike, ref: ArrayLike, spacing: Sequence[float] | float | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: pred -> ref [n_pred boundary voxels], ref -> pred [n_ref].

    Both masks must be non-empty. Works on the bounding box of the two masks (plus one voxel) and
    queries a KD-tree only for boundary voxels the other boundary does not share (those are at 0).
    """
    p, r, sp = _check(pred, ref, spacing)
    if not p.any() or not r.any():
        raise DataError("surface distances need two non-empty masks")
    box = tuple(slice(max(lo - 1, 0), hi + 2) for lo, hi in
                zip(np.argwhere(p | r).min(axis=0), np.argwhere(p | r).max(axis=0)))
    edge_p, edge_r = boundary(p[box]), boundary(r[box])
    return _directed(edge_p, edge_r, sp), _directed(edge_r, edge_p, sp)


def _directed(source: np.ndarray, target: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    shared = source & target
    out = np.zeros(int(source.sum()))
    todo = (source & ~target)[source]  # boundary voxels in source order needing a search
    if todo.any():
        tree = cKDTree(np.argwhere(target) * spacing)
        out[todo] = tree.query(np.argwhere(source & ~shared) * spacing, k=1)[0]
    return out


def binary_segmentation_metrics(pred: ArrayLike, ref: ArrayLike,
                                spacing: Sequence[float] | float | None = None, *,
                                nsd_tolerance_mm: float = 1.0) -> SegmentationResult:
    """All metrics for one binary prediction against its reference, both ``[*spatial]``.

    Args:
        pred: predicted mask (nonzero = foreground), e.g. [D, H, W].
        ref: reference mask of the same shape.
        spacing: voxel size in mm per axis (a number for isotropic voxels; None = 1 mm).
        nsd_tolerance_mm: tau of the normalised surface distance.
    """
    p, r, sp = _check(pred, ref, spacing)
    voxel_ml = float(np.prod(sp)) / 1000.0
    n_p, n_r = int(p.sum()), int(r.sum())
    inter = int(np.sum(p & r))
    vols = dict(ref_volume_ml=n_r * voxel_ml, pred_volume_ml=n_p * voxel_ml,
                nsd_tolerance_mm=nsd_tolerance_mm)
    nan = math.nan
    if n_p == 0 or n_r == 0:
        both = n_p == 0 and n_r == 0
        empty = "both" if both else ("prediction" if n_p == 0 else "reference")
        why = ("both masks empty: no boundary, distances undefined" if both
               else f"{empty} mask empty: no boundary to measure to")
        overlap = 1.0 if both else 0.0
        return SegmentationResult(dice=overlap, iou=overlap, hd=nan, hd95=nan, assd=nan, nsd=overlap,
                                  empty=empty, reasons={"hd": why, "hd95": why, "assd": why}, **vols)
    d_pr, d_rp = surface_distances(p, r, sp)
    both = np.concatenate([d_pr, d_rp])
    return SegmentationResult(
        dice=2 * inter / (n_p + n_r), iou=inter / (n_p + n_r - inter),
        hd=float(both.max()),
        hd95=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        assd=float(both.mean()),
        nsd=float(np.mean(both <= nsd_tolerance_mm)),
        **vols)


def segmentation_metrics(pred_labels: ArrayLike, ref_labels: ArrayLike,
                         spacing: Sequence[float] | float | None = None, *,
                         classes: Mapping[int, str] | Sequence[int], nsd_tolerance_mm: float = 1.0
                         ) -> dict[str, SegmentationResult]:
    """Per-class metrics of label maps ``[*spatial]`` (integer labels, 0 = background).

    Args:
        classes: the label values to evaluate, or ``{label value: class name}``.

    Returns:
        ``{class name: SegmentationResult}`` (names are ``str(value)`` when not given).
    """
    p, r = np.asarray(pred_labels), np.asarray(ref_labels)
    named = dict(classes) if isinstance(classes, Mapping) else {int(c): str(c) for c in classes}
    return {name: binary_segmentation_metrics(p == value, r == value, spacing,
                                              nsd_tolerance_mm=nsd_tolerance_mm)
            for value, name in named.items()}


@dataclass(frozen=True)
class SegmentationSummary:
    """One metric over cases: statistics of the valid values and how many there were."""

    metric: str
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    n_valid: int
    n: int


def summarise_segmentation(results: Sequence[SegmentationResult]) -> dict[str, SegmentationSummary]:
    """Mean, SD, median and IQR per metric over cases, NaN values excluded and counted in ``n_valid``."""
    out = {}
    for name in SEGMENTATION_METRICS:
        values = np.array([getattr(r, name) for r in results], dtype=np.float64)
        valid = values[np.isfinite(values)]
        if valid.size:
            q1, med, q3 = np.percentile(valid, [25, 50, 75])
            sd = float(valid.std(ddof=1)) if valid.size > 1 else math.nan
            out[name] = SegmentationSummary(name, float(valid.mean()), sd, float(med), float(q1), float(q3),
                                            int(valid.size), len(results))
        else:
            out[name] = SegmentationSummary(name, *(math.nan,) * 5, 0, len(results))
    return out
