"""Library chatter (highdicom, MLflow, alembic) goes to the run's log file, not the terminal."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from medres.data.dicom_objects.seg_write import write_dicom_seg
from medres.logs import LIBRARY_LOGGERS, route_library_logs
from tests.data.dicom_factory import write_series


@pytest.fixture(autouse=True)
def _restore_loggers():
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n in (*LIBRARY_LOGGERS, "medres")
             for lg in [logging.getLogger(n)]}
    yield
    route_library_logs()  # close the test's log file
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        lg.handlers, lg.level, lg.propagate = handlers, level, propagate


def test_highdicom_seg_lines_go_to_the_log_file_and_warnings_still_print(tmp_path, capfd):
    logging.basicConfig(level=logging.INFO, force=True, stream=sys.stderr)  # as predict/evaluate do
    log_file = tmp_path / "run" / "train.log"
    route_library_logs(log_file)
    paths = write_series(tmp_path / "series", n=3)
    mask = np.zeros((128, 128, 3), np.uint8)
    mask[40:60, 40:60, 1] = 1
    write_dicom_seg(mask, paths, ["background", "nodule"], tmp_path / "seg.dcm", algorithm_version="1",
                    model_hash="x")
    logging.getLogger("highdicom.test").warning("a real problem")
    err = capfd.readouterr().err
    assert "copy attributes of module" not in err
    assert "a real problem" in err  # a library's warning still reaches the terminal
    text = log_file.read_text()
    assert text.count("copy attributes of module") >= 3 and "a real problem" in text
    route_library_logs()  # no log file: the chatter goes nowhere, the old file is closed and kept
    write_dicom_seg(mask, paths, ["background", "nodule"], tmp_path / "seg2.dcm", algorithm_version="1",
                    model_hash="x")
    assert "copy attributes" not in capfd.readouterr().err
    assert log_file.read_text() == text


def test_mlflow_store_lines_go_to_the_log_file(tmp_path, capfd):
    pytest.importorskip("mlflow")
    from medres.training.tracking import MetricsTracker

    log_file = tmp_path / "run" / "train.log"
    route_library_logs(log_file, medres_too=True)
    tracker = MetricsTracker(tmp_path / "run" / "fold_0", run_name="run/fold_0", params={"x": 1},
                             backends=("mlflow",))
    tracker.log_epoch({"epoch": 1, "step": 1, "loss": 0.5})
    tracker.close()
    err = capfd.readouterr().err
    assert "INFO mlflow" not in err and "Creating initial MLflow database" not in err
    assert "mlflow" in log_file.read_text()
    assert (tmp_path / "run" / "mlflow.db").is_file()


def test_tracking_can_be_turned_off(tmp_path):
    from medres.config import load_config
    from medres.training.tracking import MetricsTracker

    cfg = load_config("smoke.yaml", ["output.tracking=[]"])
    assert cfg.output.tracking == []
    tracker = MetricsTracker(tmp_path / "run" / "fold_0", backends=tuple(cfg.output.tracking))
    tracker.log_epoch({"epoch": 1, "step": 1, "loss": 0.5})
    tracker.close()
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == ["fold_0", "metrics.csv"]
