"""The evaluation stage: a run folder in, the report bundle out.

``evaluate_run`` scores the predicted masks per case (:mod:`medres.evaluation.cases`), draws the
worst-case gallery with Grad-CAM (:mod:`medres.evaluation.gallery`, which loads scans and the fold's
model) and hands everything to :func:`medres.report.build_bundle`, which itself never imports torch.
``python -m medres.evaluate`` is its command line.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from medres.evaluation.cases import add_spacing, segmentation_cases
from medres.evaluation.gallery import gallery
from medres.report import build_bundle, load_run, provenance

__all__ = ["evaluate_run", "segmentation_cases", "add_spacing"]

log = logging.getLogger("medres.evaluate")


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
        gallery_note=note,
    )
    log.info("report written to %s", out / "report.html")
    return out / "report.html"
