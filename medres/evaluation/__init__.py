"""The evaluation stage: a run folder in, the report bundle out.

``evaluate_run`` scores the predicted masks per case, held-out and on the test split
(:mod:`medres.evaluation.cases`), measures each scan's spacing, draws the worst-case gallery with
Grad-CAM (:mod:`medres.evaluation.gallery`, which loads the fold's model), saves these tables in the
report folder (:mod:`medres.report.evaluation_tables`) and has the report, which never imports torch,
build the bundle from the saved tables. ``python -m medres.evaluate`` is its command line.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medres import runfolder
from medres.evaluation.cases import scan_spacing, segmentation_cases, test_segmentation_cases
from medres.evaluation.gallery import gallery
from medres.files import atomic_write, claim_outputs
from medres.report import load_run
from medres.report.compare import missing_folds
from medres.report.evaluation_tables import EvaluationTables, build_saved_bundle
from medres.report.run_folder import RunData
from medres.runfolder import EVALUATION_FILES, ReportFolder

__all__ = ["evaluate_run", "evaluation_tables", "write_evaluation", "segmentation_cases",
           "test_segmentation_cases", "scan_spacing"]

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


def evaluation_tables(run: RunData, gallery_size: int = 4) -> EvaluationTables:
    """Everything the report needs from the scans: per-case mask scores (held-out and test split), each
    held-out scan's spacing, and the worst-case gallery of ``gallery_size`` cases."""
    seg = segmentation_cases(run) if run.has_seg else pd.DataFrame()
    test_seg = test_segmentation_cases(run)  # the test split: each fold's model and the fold ensemble
    spacing = scan_spacing(run.predictions)
    items, note = gallery(run, seg, gallery_size)
    return EvaluationTables(seg, test_seg, spacing, items, note)


def write_evaluation(tables: EvaluationTables, report_dir: str | Path) -> None:
    """Save ``tables`` into ``report_dir`` (``medres.runfolder.EVALUATION_FILES``), where
    `medres.report.build_saved_bundle` reads them; each file whole or not at all (`atomic_write`)."""
    folder = ReportFolder(Path(report_dir))
    for path, table in ((folder.saved_seg_cases, tables.seg_cases),
                        (folder.saved_test_seg_cases, tables.test_seg_cases),
                        (folder.saved_spacing, tables.spacing)):
        atomic_write(path, lambda tmp, t=table: t.to_parquet(tmp, index=False))
    drawn = {"note": tables.gallery_note,
             "items": [{"case_id": i.case_id, "src": i.src, "caption": i.caption} for i in tables.gallery]}
    text = json.dumps(drawn, indent=1)
    atomic_write(folder.saved_gallery, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
    written = BUNDLE_FILES + EVALUATION_FILES
    own = written if out.resolve() == runfolder.RunFolder(Path(run.run_dir).resolve()).report_dir else ()
    with claim_outputs(out, written, what="report folder (--output)", before_list=own):
        write_evaluation(evaluation_tables(run, gallery_size), out)
        others = [load_run(c) for c in compare]
        build_saved_bundle(run, out, compare=others)  # the report reads the saved tables back
    log.info("report written to %s", runfolder.ReportFolder(out).html)
    return runfolder.ReportFolder(out).html
