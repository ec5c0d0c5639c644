"""The per-case tables the evaluation stage saves in a report folder, and the bundle built from them.

`medres.evaluation` (which reads scans and may load the model) scores every predicted mask, measures
each scan's spacing and draws the worst-case gallery, and saves the results under
``private/evaluation/`` of the report folder: they name cases and patients, so they sit with the case
keys, apart from the shareable files. :func:`build_saved_bundle` reads them back and renders the
bundle without torch, so a report can be rebuilt in a notebook::

    from medres.report import build_saved_bundle, load_run
    build_saved_bundle(load_run("runs/ct_chest"), "runs/ct_chest/report")
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medres.errors import DataError
from medres.report.bundle import Bundle, GalleryItem, build_bundle
from medres.report.cohort import SPACING_COLUMNS
from medres.report.provenance import provenance
from medres.report.run_folder import RunData
from medres.runfolder import EVALUATION_FILES, ReportFolder

__all__ = ["EvaluationTables", "read_evaluation", "with_spacing", "build_saved_bundle"]


@dataclass
class EvaluationTables:
    """What the evaluation computed from the scans: the per-case tables and the drawn gallery.

    ``seg_cases`` and ``test_seg_cases``: one row per case and class (``test_seg_cases``'s ensemble rows
    have ``fold`` -1); ``spacing``: ``case_id`` and the spacing columns (no columns when the predictions
    name no images); ``gallery``: ready images (data URIs) with ``gallery_note`` explaining them.
    """

    seg_cases: pd.DataFrame = field(default_factory=pd.DataFrame)
    test_seg_cases: pd.DataFrame = field(default_factory=pd.DataFrame)
    spacing: pd.DataFrame = field(default_factory=pd.DataFrame)
    gallery: list[GalleryItem] = field(default_factory=list)
    gallery_note: str = ""


def _damaged(path: Path, exc: Exception) -> DataError:
    return DataError(f"cannot read the saved evaluation table: {type(exc).__name__}", path=path,
                     hint="the file is damaged; run python -m medres.evaluate --run RUN again to rewrite it")


def read_evaluation(report_dir: str | Path) -> EvaluationTables:
    """The tables `medres.evaluation.evaluate_run` saved in ``report_dir`` (DataError if there are none).

    The file names are ``medres.runfolder.EVALUATION_FILES`` (`ReportFolder.saved_seg_cases`, ...)."""
    folder = ReportFolder(Path(report_dir))
    missing = [name for name in EVALUATION_FILES if not (folder.dir / name).is_file()]
    if missing:
        raise DataError(f"the report folder holds no saved evaluation table {missing[0]}", path=folder.dir,
                        hint="evaluate the run first: python -m medres.evaluate --run RUN [--output DIR]")
    tables = {}
    for path, key in ((folder.saved_seg_cases, "seg_cases"), (folder.saved_test_seg_cases, "test_seg_cases"),
                      (folder.saved_spacing, "spacing")):
        try:
            tables[key] = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
            raise _damaged(path, exc) from None
    try:
        drawn = json.loads(folder.saved_gallery.read_text(encoding="utf-8"))
        items = [GalleryItem(str(i["case_id"]), str(i["src"]), str(i["caption"])) for i in drawn["items"]]
        note = str(drawn["note"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _damaged(folder.saved_gallery, exc) from None
    return EvaluationTables(**tables, gallery=items, gallery_note=note)


def with_spacing(predictions: pd.DataFrame, spacing: pd.DataFrame) -> pd.DataFrame:
    """``predictions`` with each case's ``spacing_x_mm``, ``spacing_y_mm``, ``spacing_z_mm`` from
    ``spacing`` (NaN for a case it lacks); unchanged when ``spacing`` has no such columns."""
    if not all(c in spacing.columns for c in ("case_id", *SPACING_COLUMNS)):
        return predictions
    by_case = spacing.set_index(spacing["case_id"].astype(str))[list(SPACING_COLUMNS)]
    values = by_case.reindex(predictions["case_id"].astype(str)).to_numpy(dtype="float64")
    out = predictions.copy()
    out[list(SPACING_COLUMNS)] = values
    return out


def build_saved_bundle(
    run: RunData,
    report_dir: str | Path,
    output: str | Path | None = None,
    *,
    compare: RunData | list[RunData] | None = None,
) -> Bundle:
    """The report bundle of ``run`` from the evaluation tables saved in ``report_dir``, written into
    ``output`` (default ``report_dir``). ``compare``: other runs, as for `build_bundle`."""
    tables = read_evaluation(report_dir)
    run = dataclasses.replace(run, predictions=with_spacing(run.predictions, tables.spacing))
    prov = provenance(run.config, run.run_dir, run.checkpoints, report_seed=run.config.train.seed)
    return build_bundle(
        run,
        Path(report_dir) if output is None else output,
        seg_cases=tables.seg_cases if len(tables.seg_cases) else None,
        gallery=tables.gallery,
        provenance=prov,
        compare=compare or None,
        gallery_note=tables.gallery_note,
        test_seg_cases=tables.test_seg_cases,
    )
