"""Scans in, safely: manifests, DICOM/NIfTI loading with geometry checks, MONAI pipelines, the demo cohort."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "read_manifest": "medres.data.manifest",
    "load_image": "medres.data.readers.io",
    "MedresReader": "medres.data.readers.io",
    "check_image_mask": "medres.data.readers.io",
    "ACQUISITION_FIELDS": "medres.data.readers.io",
    "validate_manifest": "medres.data.manifest",
    "check_cohort": "medres.data.check",
    "generate_demo": "medres.data.demo",
    "build_transforms": "medres.data.pipeline.transforms",
    "Case": "medres.data.records",
    "manifest_to_records": "medres.data.pipeline.datasets",
    "build_dataset": "medres.data.pipeline.datasets",
    "build_loader": "medres.data.pipeline.datasets",
    # a hospital DICOM export -> manifest.csv + index.csv (python -m medres.data.index)
    "index_dicom": "medres.data.index",
    # DICOM annotation objects in (SEG, RTSTRUCT -> NIfTI masks) and predictions out (DICOM SEG)
    "annotation_references": "medres.data.dicom_objects.annotations",
    "annotation_to_mask": "medres.data.dicom_objects.annotations",
    "write_rtstruct": "medres.data.dicom_objects.annotations",
    "write_dicom_seg": "medres.data.dicom_objects.seg_write",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medres.data' has no attribute {name!r}")
