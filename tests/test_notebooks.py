"""The notebooks run top to bottom (nbclient, the ``python3`` kernel), each on its own from its folder and
with a user's run (``MEDRES_RUN``), and are stored without outputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _execute(name: str, cwd: Path, **env: str) -> nbformat.NotebookNode:
    """Run notebook ``name`` as Jupyter would from folder ``cwd`` (its working directory), with ``env``."""
    with pytest.MonkeyPatch.context() as mp:
        for key in ("MEDRES_RUN", "MEDRES_NOTEBOOK_OUT"):
            mp.delenv(key, raising=False)
        for key, value in env.items():
            mp.setenv(key, value)
        # the kernel spec runs `python`: make it this interpreter
        mp.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        # the checkout's medres, whether or not it is pip-installed
        mp.setenv("PYTHONPATH", os.pathsep.join([str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH", "")]))
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        client = nbclient.NotebookClient(
            nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()
    return nb


def _text(nb: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_cohort_analysis.ipynb"])
def test_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """Notebook 01 run on its own in an empty folder, as from notebooks/ in a fresh clone."""
    folder = tmp_path_factory.mktemp("notebooks")
    return _execute("01_quickstart.ipynb", folder), folder


@pytest.mark.slow
def test_quickstart_notebook_on_its_own(quickstart):
    nb, folder = quickstart
    text = _text(nb)
    assert "cls_logits (1, 2)" in text and "seg_logits (1, 2, 24, 24, 24)" in text
    assert _images(nb) >= 2  # the scan and the prediction overlay
    assert (folder / "demo_data" / "smoke" / "manifest.csv").is_file()  # beside the notebook
    _check_real_report(folder / "runs" / "smoke")


@pytest.mark.slow
def test_cohort_analysis_after_the_quickstart_in_its_folder(quickstart):
    _, folder = quickstart
    stamp = (folder / "runs" / "smoke" / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns
    nb = _execute("02_cohort_analysis.ipynb", folder)
    assert "smoke: " in _text(nb) and "site=" in _text(nb) and _images(nb) >= 1
    assert (folder / "runs" / "smoke" / "fold_0" / "checkpoint_best.pt").stat().st_mtime_ns == stamp  # reused


@pytest.mark.slow
def test_cohort_analysis_on_its_own_makes_the_smoke_run(tmp_path):
    nb = _execute("02_cohort_analysis.ipynb", tmp_path)
    assert "smoke: " in _text(nb) and "AUROC" in _text(nb)
    assert (tmp_path / "runs" / "smoke" / "report" / "summary.json").is_file()


@pytest.mark.slow
def test_cohort_analysis_of_a_users_run(tmp_path):
    from tests.report.synthetic_run import write_synthetic_run

    run = write_synthetic_run(tmp_path / "elsewhere", with_seg=False, bootstrap_resamples=100)
    (tmp_path / "nb").mkdir()
    nb = _execute("02_cohort_analysis.ipynb", tmp_path / "nb", MEDRES_RUN=str(run))
    text = _text(nb)
    assert f"{run.name}: " in text and "site=" in text and "AUROC" in text
    assert _images(nb) >= 1
    assert (run / "report" / "summary.json").is_file()
    assert not (tmp_path / "nb" / "runs").exists()  # nothing trained


@pytest.mark.slow
def test_quickstart_with_a_users_run_trains_nothing(quickstart, tmp_path):
    _, folder = quickstart
    nb = _execute("01_quickstart.ipynb", tmp_path, MEDRES_RUN=str(folder / "runs" / "smoke"))
    assert _images(nb) >= 2 and str(folder / "runs" / "smoke") in _text(nb)
    assert not (tmp_path / "runs").exists()


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
