"""``python -m medres.data.pull`` over DICOMweb against a real Orthanc: what arrives equals what was
uploaded (SOPInstanceUIDs and pixels, read with pydicom), a rerun fetches nothing, a lost file is
fetched again, the series filter keeps localizers off the disk, and a wrong password, a down server, an
open credentials file and an oversized query are clear errors without the secret."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medres.data.pacs.auth import Credentials, read_credentials
from medres.data.pacs.dicomweb import DicomWeb
from medres.data.pacs.pull import main, pseudonym, pull
from medres.errors import ConfigError, DataError
from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc

KEY = "pacs-pull-test-key-0123456789abcdef"


def _study(folder: Path, accession: str, *, localizer: bool = True) -> dict[str, list[Path]]:
    """A study: a 4-slice axial series and (optionally) a one-image localizer series."""
    study_uid, patient = generate_uid(), f"PAT-{accession}"

    def tags(k: int, ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.AccessionNumber, ds.PatientID = study_uid, accession, patient

    def scout(k: int, ds: pydicom.Dataset) -> None:
        tags(k, ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    series = {"axial": write_series(folder / "axial", 4, edit=tags)}
    if localizer:
        series["scout"] = write_series(folder / "scout", 1, edit=scout, series_number=1, description="SCOUT")
    return series


@pytest.fixture
def cohort(empty_orthanc: Orthanc, tmp_path: Path) -> dict[str, dict[str, list[Path]]]:
    studies = {"ACC1": _study(tmp_path / "src1", "ACC1"), "ACC2": _study(tmp_path / "src2", "ACC2",
                                                                         localizer=False)}
    for series in studies.values():
        for paths in series.values():
            empty_orthanc.upload(paths)
    return studies


def _web(server: Orthanc, password: str | None = None) -> DicomWeb:
    return DicomWeb(server.dicomweb, Credentials(server.user, password or server.password, source="test"),
                    timeout_s=20, retries=1)


def _on_disk(out: Path) -> dict[str, Path]:
    return {p.stem: p for p in out.rglob("*.dcm")}


def test_pull_by_accession_equals_the_upload_and_resumes(orthanc: Orthanc, cohort: dict, tmp_path: Path
                                                         ) -> None:
    out = tmp_path / "export"
    key = KEY.encode()
    result = pull(_web(orthanc), out, accessions=["ACC1", "ACC2", "NOPE"], key=key, workers=3,
                  progress=False)
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): p for s in cohort.values() for ps in s.values()
               for p in ps}
    got = _on_disk(out)
    assert set(got) == set(sources) and result.fetched == len(sources) == 9
    assert result.accessions_not_found == 1 and result.short == []
    for sop, path in got.items():
        mine, theirs = pydicom.dcmread(path), pydicom.dcmread(sources[sop])
        np.testing.assert_array_equal(mine.pixel_array, theirs.pixel_array)
        study = f"s{pseudonym(key, 'study_uid', str(theirs.StudyInstanceUID))[:12]}"
        series = f"r{pseudonym(key, 'series_uid', str(theirs.SeriesInstanceUID))[:12]}"
        assert path.relative_to(out).parts == (study, series, f"{sop}.dcm")  # no ids in the path
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary file left

    again = pull(_web(orthanc), out, accessions=["ACC1", "ACC2"], key=key, progress=False)
    assert again.fetched == 0 and {s.status for s in again.series} == {"complete"}
    lost = sorted(got)[0]
    got[lost].unlink()
    third = pull(_web(orthanc), out, accessions=["ACC1", "ACC2"], key=key, progress=False)
    assert third.fetched == 1 and lost in _on_disk(out)


def test_series_filter_fetches_only_what_the_index_could_keep(orthanc: Orthanc, cohort: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY)
    monkeypatch.setenv("MEDRES_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDRES_PACS_PASSWORD", orthanc.password)
    config = tmp_path / "rules.yaml"
    config.write_text("data:\n  index:\n    min_slices: 1\n")
    out = tmp_path / "export"
    code = main(["--dicomweb", orthanc.dicomweb, "--out", str(out), "--query", "AccessionNumber=ACC1",
                 "--series-filter", str(config), "--no-progress"])
    assert code == 0
    axial = {str(pydicom.dcmread(p).SOPInstanceUID) for p in cohort["ACC1"]["axial"]}
    assert set(_on_disk(out)) == axial  # the localizer was never downloaded


def test_wrong_password_down_server_and_limits_are_clear_errors(orthanc: Orthanc, cohort: dict,
                                                               tmp_path: Path) -> None:
    wrong = "not-the-Password-42"
    with pytest.raises(DataError) as err:
        pull(_web(orthanc, wrong), tmp_path / "a", accessions=["ACC1"], key=KEY.encode(), progress=False)
    text = str(err.value)
    assert "401" in text and orthanc.dicomweb in text and wrong not in text and "credentials" in text
    port = orthanc.http_port + 1 if orthanc.http_port < 65000 else orthanc.http_port - 1
    down = DicomWeb(f"http://127.0.0.1:{port}/dicom-web", timeout_s=5, retries=0)
    with pytest.raises(DataError, match="cannot connect"):
        pull(down, tmp_path / "b", filters={"Modality": "CT"}, key=KEY.encode(), progress=False)
    with pytest.raises(DataError, match="more than --max-studies 1"):
        pull(_web(orthanc), tmp_path / "c", filters={"Modality": "CT"}, max_studies=1, key=KEY.encode(),
             progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_credentials_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "pacs.cred"
    path.write_text("user=alice\npassword=Hunter2-secret\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_credentials(path)
    path.chmod(0o600)
    cred = read_credentials(path)
    assert (cred.user, cred.password) == ("alice", "Hunter2-secret") and "Hunter2" not in repr(cred)


def test_the_module_runs_and_refuses_a_bad_query(orthanc: Orthanc, tmp_path: Path) -> None:
    env = {**os.environ, "MEDRES_PROJECT_KEY": KEY}
    r = subprocess.run([sys.executable, "-m", "medres.data.pull", "--dicomweb", orthanc.dicomweb, "--out",
                        str(tmp_path / "o"), "--query", "Modalty=CT"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "Modality" in r.stderr and "Traceback" not in r.stderr
