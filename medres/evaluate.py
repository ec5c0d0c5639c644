"""``python -m medres.evaluate --run runs/NAME [--output DIR] [--compare runs/OTHER]``: the report bundle.

Reads a run folder, computes per-case segmentation metrics (predicted masks against the manifest's
reference masks, in the source scan's geometry and spacing), the voxel spacing of every scan, the
worst-case gallery (with the classification head's Grad-CAM when the fold's checkpoint and the data
pipeline are available), and hands everything to `medres.report.build_bundle`. Written files:
``report.html``, ``summary.json``, ``predictions.csv``, ``seg_cases.csv``, ``cohort.csv`` in
``--output`` (default ``runs/NAME/report``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from medres._gallery import first_path, gallery, load_scan
from medres.errors import ConfigError, DataError
from medres.metrics.segmentation import segmentation_metrics
from medres.report import build_bundle, load_run, provenance
from medres.report.cohort import SPACING_COLUMNS
from medres.report.run_folder import RunData
from medres.report.test_split import test_segmentation_cases

__all__ = ["evaluate_run", "segmentation_cases", "add_spacing", "main"]

log = logging.getLogger("medres.evaluate")

SEG_POLICY = (
    "Empty-mask policy (medres.metrics.segmentation): reference and prediction both empty gives Dice = IoU = "
    "NSD = 1 and no distance; one of them empty gives Dice = IoU = NSD = 0 and no distance. Undefined "
    "values are left out of means and counted: n is the number of cases where a metric is defined. Rows "
    "marked '(reference present)' keep only cases whose reference mask holds the class. NSD tolerance: "
    "{tol} mm. Distances in mm from the voxel spacing of the source scan."
)


def segmentation_cases(run: RunData) -> pd.DataFrame:
    """Per case and foreground class: Dice, IoU, HD, HD95, ASSD, NSD, volumes, and the empty-mask flag.

    Uses the rows with a ``seg_path`` (relative to the run folder) and a reference ``mask``.
    """
    cfg = run.config
    classes = {int(k): v for k, v in cfg.data.mask_labels.items() if int(k) != 0}
    rows = []
    preds = run.predictions
    if "seg_path" not in preds.columns or "mask" not in preds.columns:
        return pd.DataFrame()
    for r in preds.itertuples(index=False):
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


def add_spacing(preds: pd.DataFrame) -> pd.DataFrame:
    """Add ``spacing_x_mm``, ``spacing_y_mm``, ``spacing_z_mm`` of each case's (first) image."""
    import nibabel as nib

    out = preds.copy()
    if "image" not in out.columns:
        return out
    values = []
    for path in out["image"]:
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
    out[list(SPACING_COLUMNS)] = np.asarray(values, dtype=np.float64)
    return out


def evaluate_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    compare: str | Path | None = None,
    *,
    gallery_size: int = 4,
) -> Path:
    """Write the report bundle of a run folder; returns the path of ``report.html``."""
    run = load_run(run_dir)
    out = Path(output) if output is not None else run.run_dir / "report"
    run.predictions = add_spacing(run.predictions)
    seg = segmentation_cases(run) if run.has_seg else pd.DataFrame()
    test_seg = test_segmentation_cases(run, segmentation_cases)  # issue 10: test split, folds and ensemble
    items, note = gallery(run, seg, gallery_size)
    other = load_run(compare) if compare is not None else None
    prov = provenance(run.config, run.run_dir, run.checkpoints, report_seed=run.config.train.seed)
    build_bundle(
        run,
        out,
        seg_cases=seg if len(seg) else None,
        gallery=items,
        provenance=prov,
        compare=other,
        seg_policy=SEG_POLICY.format(tol=run.config.evaluate.nsd_tolerance_mm),
        gallery_note=note,
        test_seg_cases=test_seg,
    )
    log.info("report written to %s", out / "report.html")
    return out / "report.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medres.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="the run folder (runs/NAME)")
    parser.add_argument("--output", help="where to write the bundle (default: RUN/report)")
    parser.add_argument(
        "--compare", help="another run folder: paired DeLong and paired bootstrap differences"
    )
    parser.add_argument("--gallery", type=int, default=4, help="number of worst cases shown (default 4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = evaluate_run(args.run, args.output, args.compare, gallery_size=args.gallery)
    except (DataError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
