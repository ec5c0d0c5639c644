"""Issue 8: ``--quiet`` silences MLflow's/alembic's INFO lines and MONAI's per-scan warnings, not medres's
own warnings."""

from __future__ import annotations

import logging
import warnings

from medres.train import quiet_libraries


def test_quiet_silences_library_noise_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "x")
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")  # restored (removed) by monkeypatch afterwards
    saved = {n: logging.getLogger(n).level for n in ("mlflow", "alembic", "monai")}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_libraries()
            warnings.warn_explicit("per-scan noise", UserWarning, "x.py", 1, module="monai.transforms.x")
            warnings.warn_explicit("medres warning", UserWarning, "y.py", 1, module="medres.data.readers.io")
        assert [str(w.message) for w in caught] == ["medres warning"]
        assert not logging.getLogger("alembic").isEnabledFor(logging.INFO)
        assert not logging.getLogger("mlflow").isEnabledFor(logging.INFO)
        assert logging.getLogger("mlflow").isEnabledFor(logging.WARNING)
        import os

        assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
