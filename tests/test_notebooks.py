"""The notebooks run top to bottom (nbclient, the ``python3`` kernel) and are stored without outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, cwd: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> nbformat.NotebookNode:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # the kernel spec runs `python`: make it this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # the checkout's medres, whether or not it is pip-installed
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH", "")])
    )
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}
    )
    client.execute()
    return nb


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_cohort_analysis.ipynb"])
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.mark.slow
def test_cohort_analysis_notebook(tmp_path, monkeypatch):
    from tests.report.synthetic_run import write_synthetic_run

    run = write_synthetic_run(tmp_path, with_seg=False, bootstrap_resamples=100)
    nb = _execute("02_cohort_analysis.ipynb", tmp_path, monkeypatch, MEDRES_RUN=str(run))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "site=" in text and "AUROC" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert (run / "report" / "summary.json").is_file()


@pytest.mark.slow
def test_quickstart_notebook(tmp_path, monkeypatch):
    nb = _execute("01_quickstart.ipynb", NOTEBOOKS, monkeypatch, MEDRES_NOTEBOOK_OUT=str(tmp_path))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "cls_logits (1, 2)" in text and "seg_logits (1, 2, 24, 24, 24)" in text
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the scan and the prediction overlay
    _check_real_report(tmp_path / "runs" / "smoke")


def _check_real_report(run_dir: Path) -> None:
    """The report of a real (smoke) training run: numbers agree, Grad-CAM drawn, no patient id shown."""
    import json
    import re

    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from medres.report import load_run

    run = load_run(run_dir)
    html = (run_dir / "report" / "report.html").read_text()
    records = pd.DataFrame(json.loads((run_dir / "report" / "summary.json").read_text())["records"])
    auroc = records[
        (records.scope == "pooled")
        & (records.metric == "auroc")
        & ~records.ci_method.str.contains("DeLong")
    ]["value"].item()
    preds = run.predictions
    assert auroc == pytest.approx(roc_auc_score(preds.y_true == 1, preds.p_nodule))
    assert f'id="pooled-auroc">{auroc:.3f}<' in html
    assert "Right: Grad-CAM (MONAI)" in html and "Grad-CAM not shown" not in html
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # figures' bytes are not text
    leaked = [p for p in preds.patient_id.unique() if p in text]
    assert leaked == [], "patient ids in report.html"
