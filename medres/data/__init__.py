"""Scans in, safely: manifests, DICOM/NIfTI loading with geometry checks, MONAI pipelines, the demo cohort."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "read_manifest": "medres.data.manifest",
    "load_image": "medres.data.io",
    "MedresReader": "medres.data.io",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medres.data' has no attribute {name!r}")
