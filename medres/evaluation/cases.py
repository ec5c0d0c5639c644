"""Per-case measurements of a run folder for the report: segmentation metrics of every predicted mask
against its reference (in the source scan's geometry and spacing), held-out and on the test split, and
each scan's voxel spacing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from medres.errors import DataError
from medres.evaluation.scans import first_path, load_scan
from medres.layout import check_distinct_files
from medres.metrics.segmentation import segmentation_metrics
from medres.report.cohort import SPACING_COLUMNS
from medres.report.run_folder import RunData
from medres.report.test_split import load_ensemble_test

__all__ = ["segmentation_cases", "test_segmentation_cases", "scan_spacing", "check_mask_files"]


def segmentation_cases(run: RunData, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per case and foreground class: Dice, IoU, HD, HD95, ASSD, NSD, volumes, and the empty-mask flag.

    Scores ``table`` (default: the held-out ``run.predictions``): the rows with a ``seg_path`` (relative
    to the run folder) and a reference ``mask``.
    """
    cfg = run.config
    classes = {int(k): v for k, v in cfg.data.mask_labels.items() if int(k) != 0}
    rows = []
    preds = run.predictions if table is None else table
    if "seg_path" not in preds.columns or "mask" not in preds.columns:
        return pd.DataFrame()
    check_mask_files(preds, run.run_dir)
    from medres.progress import progress_wanted, track

    for r in track(preds.itertuples(index=False), desc="scoring masks", total=len(preds), unit="scans",
                   progress=progress_wanted(), final=False):
        seg_path, mask_path = first_path(r.seg_path), first_path(r.mask)
        if seg_path is None or mask_path is None:
            continue
        pred = load_scan(run.run_dir / seg_path)[0]
        ref, spacing, _ = load_scan(mask_path)
        if pred.shape != ref.shape:
            raise DataError(
                f"predicted mask {pred.shape} and reference mask {ref.shape} differ in shape",
                path=run.run_dir / seg_path,
                case_id=r.case_id,
                hint="predicted masks must be written in the source scan's geometry; re-run inference",
            )
        results = segmentation_metrics(
            np.rint(pred).astype(np.int64),
            np.rint(ref).astype(np.int64),
            spacing,
            classes=classes,
            nsd_tolerance_mm=cfg.evaluate.nsd_tolerance_mm,
        )
        for name, res in results.items():
            rows.append(
                {
                    "case_id": r.case_id,
                    "patient_id": r.patient_id,
                    "fold": int(r.fold),
                    "class": name,
                    **res.as_dict(),
                    "empty": res.empty,
                }
            )
    return pd.DataFrame(rows)


def check_mask_files(table: pd.DataFrame, run_dir: Path) -> None:
    """Refuse a table in which two cases point at one predicted mask file (a run whose mask names could
    clash): scoring would compare a case's reference with another case's prediction."""
    if "seg_path" not in table.columns:
        return
    check_distinct_files(
        ((str(r.case_id), os.path.normpath(run_dir / p), None)
         for r in table.itertuples(index=False) if (p := first_path(r.seg_path)) is not None),
        what="predicted mask file",
        hint="the run's masks were written under names that can clash; train the run again with this "
             "version of medres (it names each case's mask by its exact id)")


def test_segmentation_cases(run: RunData) -> pd.DataFrame:
    """Per-case segmentation metrics of the test split (manifest ``split=test``): each fold model's masks
    (``fold`` k) and the fold ensemble's (``fold`` -1), as :func:`segmentation_cases` scores them."""
    frames = []
    for table in (run.test, load_ensemble_test(run.run_dir)):
        if table is None or not len(table) or "seg_path" not in table.columns:
            continue
        frames.append(segmentation_cases(run, table))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def scan_spacing(preds: pd.DataFrame) -> pd.DataFrame:
    """``case_id`` and the ``spacing_x_mm``, ``spacing_y_mm``, ``spacing_z_mm`` of each case's (first)
    image (NaN where unreadable); no columns when the table names no images."""
    import nibabel as nib

    if "image" not in preds.columns:
        return pd.DataFrame()
    values = []
    for path in preds["image"]:
        first = first_path(path)
        try:
            if first is None:
                sp = np.array([])
            elif first.endswith((".nii", ".nii.gz")):  # the header alone
                sp = np.asarray(nib.load(first).header.get_zooms()[:3], dtype=np.float64)
            else:
                sp = load_scan(first)[1]
        except (DataError, OSError):
            sp = np.array([])
        values.append(list(sp[:3]) + [np.nan] * (3 - min(3, sp.size)))
    out = pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(-1, 3), columns=list(SPACING_COLUMNS))
    out.insert(0, "case_id", preds["case_id"].astype(str).to_numpy())
    return out
