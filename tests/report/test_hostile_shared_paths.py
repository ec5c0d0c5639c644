"""Issue 12 §4: what a report bundle is meant to share (report.html, summary.json, the CSV tables)
names no file path: hospital folders are often named after patients."""

from __future__ import annotations

import re

import pytest

from tests.report.synthetic_run import write_synthetic_run

FOLDER = "DOE_JOHN_MRN123456"  # a folder named after a patient, as hospital exports often are


@pytest.fixture(scope="module")
def shared_files(tmp_path_factory):
    from medres.evaluation import evaluate_run

    root = tmp_path_factory.mktemp("hostile") / FOLDER
    run = write_synthetic_run(root, n_test_patients=6)
    out = evaluate_run(run, root / "report").parent
    files = [p for p in out.rglob("*") if p.is_file() and "private" not in p.relative_to(out).parts]
    assert any(p.name == "summary.json" for p in files) and any(p.name == "report.html" for p in files)
    return root, files


def test_shared_files_carry_no_paths(shared_files):
    root, files = shared_files
    for path in files:
        if path.suffix not in (".html", ".json", ".csv", ".md", ".txt", ".tsv"):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for planted in (FOLDER, "DOE", "MRN123456", str(root), "images/", ".nii.gz", "manifest.csv"):
            assert planted not in text, f"{path.name} holds {planted!r}"
        # no absolute POSIX path of this machine either
        assert not re.search(r"(?<![\w.])/(tmp|home|work|data|mnt|Users)/", text), path.name
