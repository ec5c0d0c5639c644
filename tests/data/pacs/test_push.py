"""``python -m medres.predict --push URL`` against a real Orthanc: the SEG and the TID 1500 SR of a DICOM
series arrive in its study, the SEG references the series, the SR reads back with highdicom (the
probability of predictions.csv, the volume of the predicted mask, the SEG's segment) and passes
dciodvfy, and a second push of the same objects sends nothing."""

from __future__ import annotations

import csv
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from medres.data.dicom_objects.sr import PROBABILITY
from medres.data.pacs.auth import Credentials
from medres.data.pacs.dicomweb import DicomWeb
from medres.data.pacs.push import main as push_main
from medres.data.pacs.push import push_objects
from medres.predict import main
from tests.data.annotation_factory import dciodvfy, dciodvfy_errors
from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc


def _series_of(server: Orthanc, study: str, modality: str) -> list[pydicom.Dataset]:
    web = DicomWeb(server.dicomweb, Credentials(server.user, server.password), timeout_s=20)
    found = [s for s in web.find_series(study) if s.Modality == modality]
    return [ds for s in found for sop in web.find_instances(study, str(s.SeriesInstanceUID))
            for ds in web.retrieve(study, str(s.SeriesInstanceUID), [sop])]


@pytest.mark.slow
def test_predict_push_stores_seg_and_sr_in_the_source_study(empty_orthanc: Orthanc, checkpoint: Path,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    series = tmp_path / "series_1"
    paths = write_series(series, 4)
    empty_orthanc.upload(paths)
    source = pydicom.dcmread(paths[0])
    monkeypatch.setenv("MEDRES_PACS_USER", empty_orthanc.user)
    monkeypatch.setenv("MEDRES_PACS_PASSWORD", empty_orthanc.password)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(series), "--output", str(out),
                 "--push", empty_orthanc.dicomweb]) == 0
    with open(out / "push.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["kind"], r["status"]) for r in rows] == [("SEG", "stored"), ("SR", "stored")]

    study = str(source.StudyInstanceUID)
    (seg,) = _series_of(empty_orthanc, study, "SEG")
    (sr,) = _series_of(empty_orthanc, study, "SR")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    for ds in (seg, sr):
        assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)

    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    mask = nib.load(out / table.loc[0, "seg_path"])
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
    expected_ml = float((np.asarray(mask.dataobj) == 1).sum()) * voxel_ml
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (volumetric,) = report.content.get_volumetric_roi_measurement_groups()
    (volume,) = volumetric.get_measurements(name=hd.sr.CodedConcept("118565006", "SCT", "Volume"))
    assert volume.value == pytest.approx(expected_ml, rel=1e-6, abs=1e-9)
    ref = volumetric.referenced_segment
    assert (ref.referenced_sop_instance_uid, ref.referenced_segment_numbers) == (seg.SOPInstanceUID, [1])
    (finding,) = report.content.get_image_measurement_groups()
    (prob,) = finding.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
    assert prob.value == pytest.approx(float(table.loc[0, "p_nodule"]), abs=1e-6)
    (decision,) = finding.get_qualitative_evaluations()
    called = table.loc[0, "y_pred"] == 1
    assert decision.value.meaning == ("Present" if called else "Absent")
    if dciodvfy() is not None:
        assert dciodvfy_errors(out / "seg" / (Path(table.loc[0, "seg_path"]).name.split(".")[0] + ".sr.dcm")
                               ) == []

    again = push_objects(sorted((out / "seg").glob("*.dcm")), DicomWeb(
        empty_orthanc.dicomweb, Credentials(empty_orthanc.user, empty_orthanc.password)), relative_to=out)
    assert {r.status for r in again} == {"already on the server"}
    assert len(empty_orthanc.rest("GET", "/instances").json()) == 4 + 2

    # a push that fails is listed per object, without the secret, and the rerun sends what is missing
    empty_orthanc.rest("DELETE", f"/instances/{_orthanc_id(empty_orthanc, sr.SOPInstanceUID)}")
    monkeypatch.setenv("MEDRES_PACS_PASSWORD", "Wrong-pass-123")
    assert push_main(["--predictions", str(out), "--push", empty_orthanc.dicomweb]) == 2
    err = capsys.readouterr().err
    assert "401" in err and "push.csv" in err and "Wrong-pass-123" not in err
    with open(out / "push.csv", newline="") as fh:
        assert {r["status"] for r in csv.DictReader(fh)} == {"failed"}
    monkeypatch.setenv("MEDRES_PACS_PASSWORD", empty_orthanc.password)
    assert push_main(["--predictions", str(out), "--push", empty_orthanc.dicomweb]) == 0
    with open(out / "push.csv", newline="") as fh:
        assert sorted(r["status"] for r in csv.DictReader(fh)) == ["already on the server", "stored"]
    assert len(empty_orthanc.rest("GET", "/instances").json()) == 4 + 2


def _orthanc_id(server: Orthanc, sop: str) -> str:
    (found,) = server.rest("POST", "/tools/lookup", data=str(sop)).json()
    return str(found["ID"])


def test_a_push_that_cannot_work_is_refused_before_predicting(checkpoint: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    series = tmp_path / "series_1"
    write_series(series, 2)
    cred = tmp_path / "pacs.cred"
    cred.write_text("user=a\npassword=Open-secret-1\n")
    cred.chmod(0o644)
    base = ["--checkpoint", str(checkpoint), "--input", str(series)]
    cases = [(["--push", "http://127.0.0.1:9/dicom-web", "--no-masks"], "--no-masks"),
             (["--push", "http://u:Url-secret-2@127.0.0.1:9/dicom-web"], "process list"),
             (["--push", "http://127.0.0.1:9/dicom-web", "--credentials", str(cred)], "chmod 600"),
             (["--push-dimse", "127.0.0.1", "--called-aet", "PACS"], "HOST:PORT")]
    for k, (extra, expected) in enumerate(cases):
        out = tmp_path / f"out{k}"
        assert main([*base, "--output", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert expected in err and "secret" not in err and not (out / "predictions.csv").exists(), err


def test_a_push_csv_push_did_not_write_is_never_overwritten(tmp_path: Path, capsys) -> None:
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "x.dcm").write_bytes(b"never sent")
    (tmp_path / "push.csv").write_text("the user's own list\n")
    assert push_main(["--predictions", str(tmp_path), "--push", "http://127.0.0.1:9/dicom-web"]) == 2
    assert "holds push.csv, a file medres did not write there" in capsys.readouterr().err
    assert (tmp_path / "push.csv").read_text() == "the user's own list\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["push.csv", "seg"]


def test_predict_sr_writes_the_sr_beside_the_seg_without_a_server(checkpoint: Path, tmp_path: Path) -> None:
    series = tmp_path / "series_1"
    source = pydicom.dcmread(write_series(series, 4)[0])
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--input", str(series), "--output", str(out), "--sr"]) == 0
    table = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    stem = Path(table.loc[0, "seg_path"]).name.split(".")[0]
    seg, sr = pydicom.dcmread(out / "seg" / f"{stem}.dcm"), pydicom.dcmread(out / "seg" / f"{stem}.sr.dcm")
    assert not (out / "push.csv").exists() and sr.Modality == "SR"
    assert (sr.StudyInstanceUID, sr.PatientID) == (source.StudyInstanceUID, source.PatientID)
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    (volumetric,) = report.content.get_volumetric_roi_measurement_groups()
    assert volumetric.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    (finding,) = report.content.get_image_measurement_groups()
    (prob,) = finding.get_measurements(name=hd.sr.CodedConcept(*PROBABILITY))
    assert prob.value == pytest.approx(float(table.loc[0, "p_nodule"]), abs=1e-6)
    if dciodvfy() is not None:
        assert dciodvfy_errors(out / "seg" / f"{stem}.sr.dcm") == []
    assert main(["--checkpoint", str(checkpoint), "--input", str(series), "--output", str(tmp_path / "o2"),
                 "--sr", "--no-masks"]) == 2
