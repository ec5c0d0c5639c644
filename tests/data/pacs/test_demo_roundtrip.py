"""The demo cohort as a hospital export, uploaded to a real Orthanc, pulled back over DICOMweb with the
index's rules as the series filter (localizers and reformats never downloaded, annotations kept) and
indexed: the manifest equals the one indexed straight from the export (same pseudonymous patients and
studies, labels, masks and voxels)."""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from medres.config import IndexConfig
from medres.data.demo import generate_demo
from medres.data.demo.export import generate_export
from medres.data.index import index_dicom
from medres.data.pacs.auth import Credentials
from medres.data.pacs.dicomweb import DicomWeb
from medres.data.pacs.pull import pull, read_accessions
from medres.data.readers.io import load_image
from tests.data.pacs.conftest import Orthanc

KEY = "demo-roundtrip-test-key-0123456789"


def _manifest(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with open(path, newline="") as fh:
        return {(r["patient_id"], r["study_id"]): r for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_demo_export_through_orthanc_indexes_as_the_export(empty_orthanc: Orthanc, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY)
    labels = generate_export(generate_demo(tmp_path / "builtin", n_patients=4), tmp_path)
    files = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: empty_orthanc.upload([p]), files))
    rules = IndexConfig(label_columns=["label", "site"])
    index_dicom(tmp_path / "export", tmp_path / "direct", labels=labels, rules=rules, progress=False)

    web = DicomWeb(empty_orthanc.dicomweb, Credentials(empty_orthanc.user, empty_orthanc.password))
    result = pull(web, tmp_path / "pulled", accessions=read_accessions(labels), rules=rules, workers=4,
                  progress=False)
    skipped = [s.status for s in result.series if s.status.startswith("skipped")]
    assert result.short == [] and skipped and 0 < result.fetched < len(files)  # localizers etc. not fetched
    index_dicom(tmp_path / "pulled", tmp_path / "via_pacs", labels=labels, rules=rules, progress=False)

    direct, via = _manifest(tmp_path / "direct" / "manifest.csv"), _manifest(tmp_path / "via_pacs" /
                                                                              "manifest.csv")
    assert set(via) == set(direct) and len(via) >= 4
    for k, row in via.items():
        assert (row["label"], row["site"], bool(row["mask"])) == (direct[k]["label"], direct[k]["site"],
                                                                  bool(direct[k]["mask"]))
        a = np.asarray(load_image(tmp_path / "via_pacs" / row["image"]))
        b = np.asarray(load_image(tmp_path / "direct" / direct[k]["image"]))
        np.testing.assert_array_equal(a, b)
