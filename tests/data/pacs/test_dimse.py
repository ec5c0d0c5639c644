"""DIMSE against a real Orthanc: C-FIND + C-GET (or C-MOVE) pull equals the upload (and resumes),
C-STORE stores once,
an unknown calling AE and a down server are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medres.data.pacs.dimse import Dimse
from medres.data.pacs.pull import pull
from medres.data.pacs.push import push_objects
from medres.data.pull import main
from medres.errors import DataError
from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc, _free_port

KEY = b"pacs-dimse-test-key-0123456789abcdef"


def _dimse(server: Orthanc, calling: str | None = None) -> Dimse:
    return Dimse(f"127.0.0.1:{server.dicom_port}", called_aet=server.aet,
                 calling_aet=calling or server.medres_aet, timeout_s=20)


def _upload_study(server: Orthanc, folder: Path, accession: str) -> list[Path]:
    study = generate_uid()

    def tags(k: int, ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.AccessionNumber = study, accession

    paths = write_series(folder / "a", 3, edit=tags)
    paths += write_series(folder / "b", 2, edit=tags, series_number=4)
    server.upload(paths)
    return paths


def test_dimse_pull_equals_the_upload_and_resumes(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    paths = _upload_study(empty_orthanc, tmp_path / "src", "DACC1")
    out = tmp_path / "export"
    result = pull(_dimse(empty_orthanc), out, accessions=["DACC1"], key=KEY, workers=2, progress=False)
    got = {p.stem: p for p in out.rglob("*.dcm")}
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in paths}
    assert set(got) == set(sources) and result.fetched == 5 and result.short == []
    for sop, path in got.items():
        theirs = pydicom.dcmread(sources[sop]).pixel_array
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array, theirs)
    lost = sorted(got)[0]
    got[lost].unlink()
    again = pull(_dimse(empty_orthanc), out, accessions=["DACC1"], key=KEY, progress=False)
    assert again.fetched == 1 and (out / got[lost].relative_to(out)).is_file()


def test_cli_over_dimse(empty_orthanc: Orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY.decode())
    _upload_study(empty_orthanc, tmp_path / "src", "DACC2")
    out = tmp_path / "export"
    assert main(["--dimse", f"127.0.0.1:{empty_orthanc.dicom_port}", "--called-aet", empty_orthanc.aet,
                 "--calling-aet", empty_orthanc.medres_aet, "--out", str(out),
                 "--query", "AccessionNumber=DACC2", "--no-progress"]) == 0
    assert len(list(out.rglob("*.dcm"))) == 5


def test_c_store_stores_once(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "s", 2)
    results = push_objects(paths, _dimse(empty_orthanc), relative_to=tmp_path)
    assert [r.status for r in results] == ["stored", "stored"]
    assert len(empty_orthanc.rest("GET", "/instances").json()) == 2
    assert [r.status for r in push_objects(paths, _dimse(empty_orthanc), relative_to=tmp_path)] == \
        ["already on the server"] * 2


def test_unknown_ae_and_down_server_are_clear_errors(orthanc: Orthanc, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="association for searching studies was") as err:
        pull(_dimse(orthanc, "STRANGER"), tmp_path / "a", filters={"AccessionNumber": "X"}, key=KEY,
             progress=False)
    assert f"127.0.0.1:{orthanc.dicom_port}" in str(err.value) and "STRANGER" in str(err.value)
    down = Dimse(f"127.0.0.1:{_free_port()}", called_aet=orthanc.aet, calling_aet="MEDRES", timeout_s=5)
    with pytest.raises(DataError, match="association"):
        pull(down, tmp_path / "b", filters={"AccessionNumber": "X"}, key=KEY, progress=False)


def test_c_move_pull_equals_the_upload_and_resumes(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    paths = _upload_study(empty_orthanc, tmp_path / "src", "DACC3")

    def mover() -> Dimse:
        return Dimse(f"127.0.0.1:{empty_orthanc.dicom_port}", called_aet=empty_orthanc.aet,
                     calling_aet=empty_orthanc.medres_aet, timeout_s=20, move_dest=empty_orthanc.medres_aet,
                     move_port=empty_orthanc.medres_port)

    out = tmp_path / "export"
    result = pull(mover(), out, accessions=["DACC3"], key=KEY, workers=2, progress=False)
    got = {p.stem: p for p in out.rglob("*.dcm")}
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in paths}
    assert set(got) == set(sources) and result.fetched == 5 and result.short == []
    assert {s.status for s in result.series} == {"complete"}
    for sop, path in got.items():
        np.testing.assert_array_equal(pydicom.dcmread(path).pixel_array,
                                      pydicom.dcmread(sources[sop]).pixel_array)
    lost = sorted(got)[0]
    got[lost].unlink()
    again = pull(mover(), out, accessions=["DACC3"], key=KEY, progress=False)
    assert again.fetched == 1 and got[lost].is_file() and again.short == []


def test_c_move_cli_and_an_unknown_destination(empty_orthanc: Orthanc, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY.decode())
    _upload_study(empty_orthanc, tmp_path / "src", "DACC4")
    base = ["--dimse", f"127.0.0.1:{empty_orthanc.dicom_port}", "--called-aet", empty_orthanc.aet,
            "--calling-aet", empty_orthanc.medres_aet, "--query", "AccessionNumber=DACC4", "--no-progress",
            "--move-port", str(empty_orthanc.medres_port)]
    assert main([*base, "--out", str(tmp_path / "a"), "--move-dest", empty_orthanc.medres_aet]) == 0
    assert len(list((tmp_path / "a").rglob("*.dcm"))) == 5
    unknown = Dimse(f"127.0.0.1:{empty_orthanc.dicom_port}", called_aet=empty_orthanc.aet,
                    calling_aet=empty_orthanc.medres_aet, timeout_s=20, move_dest="NOBODY",
                    move_port=empty_orthanc.medres_port)
    with pytest.raises(DataError, match="refused to send to the move destination AE 'NOBODY'") as err:
        pull(unknown, tmp_path / "b", accessions=["DACC4"], key=KEY, progress=False)
    assert f"port {empty_orthanc.medres_port}" in str(err.value)
    assert not list((tmp_path / "b").rglob("*.dcm"))


@pytest.mark.slow
def test_predict_push_dimse_stores_seg_and_sr(empty_orthanc: Orthanc, checkpoint: Path, tmp_path: Path
                                              ) -> None:
    from medres.predict import main as predict

    paths = write_series(tmp_path / "series_1", 4)
    empty_orthanc.upload(paths)
    out = tmp_path / "out"
    assert predict(["--checkpoint", str(checkpoint), "--input", str(tmp_path / "series_1"),
                    "--output", str(out), "--push-dimse", f"127.0.0.1:{empty_orthanc.dicom_port}",
                    "--called-aet", empty_orthanc.aet, "--calling-aet", empty_orthanc.medres_aet]) == 0
    modalities = sorted(empty_orthanc.rest("GET", f"/series/{s}").json()["MainDicomTags"]["Modality"]
                        for s in empty_orthanc.rest("GET", "/series").json())
    assert modalities == ["CT", "SEG", "SR"]
