"""The evaluation stage: a run folder in, the report bundle out.

``evaluate_run`` scores the predicted masks per case (:mod:`medres.evaluation.cases`), draws the
worst-case gallery with Grad-CAM (:mod:`medres.evaluation.gallery`, which loads scans and the fold's
model) and hands everything to :func:`medres.report.build_bundle`, which itself never imports torch.
``python -m medres.evaluate`` is its command line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medres import runfolder
from medres.evaluation.cases import add_spacing, segmentation_cases
from medres.evaluation.gallery import gallery
from medres.files import claim_outputs
from medres.report import build_bundle, load_run, provenance
from medres.report.compare import missing_folds
from medres.report.test_split import test_segmentation_cases

__all__ = ["evaluate_run", "segmentation_cases", "add_spacing"]

log = logging.getLogger("medres.evaluate")

#: Every file :func:`medres.report.build_bundle` may write into the report folder: each is replaced only
#: when the folder's written-files list (:func:`medres.files.claim_outputs`) names it, as it does for a
#: report training or an earlier evaluate wrote there.
BUNDLE_FILES = runfolder.BUNDLE_FILES


def _check_output(out: Path, run: Any, compare: list[str | Path]) -> None:
    """The report folder never is, holds or lies inside the run being read or the compared run, except
    inside the run's own ``report/`` (the default); nor is or holds the run's manifest or its folder."""
    from medres.files import check_output

    own_report = runfolder.RunFolder(Path(run.run_dir).resolve()).report_dir
    target = out.resolve()
    manifest = getattr(getattr(run.config, "data", None), "manifest", None)
    compared = ({"compared run": compare[0]} if len(compare) == 1
                else {f"compared run {k + 1}": c for k, c in enumerate(compare)})
    check_output(out, inputs={"run folder": run.run_dir, **compared, "run's manifest": manifest,
                              "manifest's folder": Path(manifest).parent if manifest else None},
                 what="report folder (--output)", may_lie_inside={"manifest's folder"} | (
                     {"run folder"} if target == own_report or target.is_relative_to(own_report) else set()))


def evaluate_run(
    run_dir: str | Path,
    output: str | Path | None = None,
    compare: str | Path | list[str | Path] | None = None,
    *,
    gallery_size: int = 4,
    net_benefit_thresholds: list[float] | None = None,
) -> Path:
    """Write the report bundle of a run folder; returns the path of ``report.html``.

    ``net_benefit_thresholds``: replaces the run's ``evaluate.net_benefit_thresholds`` for this report.

    ``compare``: one or more other run folders; every pair of runs is compared (`medres.report.compare`)."""
    run = load_run(run_dir)
    if net_benefit_thresholds is not None:
        run.config.evaluate.net_benefit_thresholds = list(net_benefit_thresholds)
    missing = missing_folds(run)
    if missing:
        log.warning("folds %s of %d have no predictions yet (not finished): the report covers the other %d "
                    "only", missing, run.config.cv.folds, run.config.cv.folds - len(missing))
    out = Path(output) if output is not None else runfolder.RunFolder(run.run_dir).report_dir
    compare = [] if compare is None else [compare] if isinstance(compare, (str, Path)) else list(compare)
    _check_output(out, run, compare)
    # a run's own report/ written before medres kept the list: its report files are the report's
    own = BUNDLE_FILES if out.resolve() == runfolder.RunFolder(Path(run.run_dir).resolve()).report_dir else ()
    with claim_outputs(out, BUNDLE_FILES, what="report folder (--output)", before_list=own):
        run.predictions = add_spacing(run.predictions)
        seg = segmentation_cases(run) if run.has_seg else pd.DataFrame()
        test_seg = test_segmentation_cases(run, segmentation_cases)  # the test split: folds and ensemble
        items, note = gallery(run, seg, gallery_size)
        others = [load_run(c) for c in compare]
        prov = provenance(run.config, run.run_dir, run.checkpoints, report_seed=run.config.train.seed)
        build_bundle(
            run,
            out,
            seg_cases=seg if len(seg) else None,
            gallery=items,
            provenance=prov,
            compare=others or None,
            gallery_note=note,
            test_seg_cases=test_seg,
        )
    log.info("report written to %s", runfolder.ReportFolder(out).html)
    return runfolder.ReportFolder(out).html
