"""medres: ResNets with classification and segmentation heads for CT/MR research cohorts.

Public names are imported lazily, so ``import medres`` (and ``medres.config``) stays light and
configurations validate without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from medres._startup import install as _defer_foreign_startup_cost
from medres.errors import ConfigError, DataError, MedresError

_defer_foreign_startup_cost()  # before anything imports monai (medres._startup says why)
__version__ = "0.1.0"

_LAZY = {
    "load_config": "medres.config",
    "create_model": "medres.models",
    "list_models": "medres.models",
    "register_model": "medres.models",
    "load_pretrained": "medres.models",
    "DualHeadResNet": "medres.models",
    "DualOutput": "medres.models",
    "read_manifest": "medres.data",
    "load_image": "medres.data",
    "generate_demo": "medres.data",
    "make_folds": "medres.cv",
    "audit_folds": "medres.cv",
    "read_folds": "medres.cv",
    "config_hash": "medres.config",
    "Predictor": "medres.inference.predictor",
    "Prediction": "medres.inference.predictor",
    "delong_roc_ci": "medres.metrics",
    "delong_roc_test": "medres.metrics",
    "patient_bootstrap_ci": "medres.metrics",
}

__all__ = ["ConfigError", "DataError", "MedresError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medres' has no attribute {name!r}")
