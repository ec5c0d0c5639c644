"""The cohort report: aggregation into long-format records, figures, the HTML page and the bundle.

Imports only ``medres.metrics``, ``medres.config`` and ``medres.errors`` (no torch), so a report can
be rebuilt in a notebook from a run's saved predictions and the per-case tables the evaluation saved
in its report folder (`medres.report.evaluation_tables`)::

    from medres.report import build_saved_bundle, load_run
    build_saved_bundle(load_run("runs/ct_chest"), "runs/ct_chest/report")
"""

from medres.report.aggregate import (
    RECORD_FIELDS,
    BinaryTask,
    across_fold_records,
    binary_task,
    classification_records,
    holdout_test_records,
    one_vs_rest_records,
    operating_points,
)
from medres.report.bundle import Bundle, GalleryItem, build_bundle
from medres.report.cohort import cohort_table, split_audit
from medres.report.evaluation_tables import build_saved_bundle
from medres.report.guidelines import guideline_table
from medres.report.privacy import case_labels, pseudonymise
from medres.report.provenance import provenance
from medres.report.run_folder import RunData, load_run
from medres.report.seg_records import segmentation_records
from medres.report.subgroups import add_age_band, subgroup_records

__all__ = [
    "RECORD_FIELDS",
    "BinaryTask",
    "Bundle",
    "GalleryItem",
    "RunData",
    "across_fold_records",
    "add_age_band",
    "binary_task",
    "build_bundle",
    "build_saved_bundle",
    "case_labels",
    "classification_records",
    "holdout_test_records",
    "cohort_table",
    "guideline_table",
    "load_run",
    "one_vs_rest_records",
    "operating_points",
    "provenance",
    "pseudonymise",
    "segmentation_records",
    "split_audit",
    "subgroup_records",
]
