"""``python -m medres.data.pull`` over DICOMweb against a real Orthanc: what arrives equals what was
uploaded (SOPInstanceUIDs and pixels, read with pydicom; the files byte for byte), a rerun fetches
nothing, a lost file is fetched again, the series filter keeps localizers off the disk, and a wrong
password, a down server, an open credentials file and an oversized query are clear errors without the
secret; so are a 500, an answer that is not DICOM (or not of the series asked for) and one cut short."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from medres.data.pacs.auth import Credentials, read_credentials
from medres.data.pacs.dicomweb import DicomWeb
from medres.data.pacs.pull import pseudonym, pull
from medres.data.pull import main
from medres.errors import ConfigError, DataError
from medres.files import WRITTEN_LIST, written_list
from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc, _free_port

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
        study = f"s{pseudonym(key, 'study', str(theirs.StudyInstanceUID))[:12]}"
        series = f"r{pseudonym(key, 'series', str(theirs.SeriesInstanceUID))[:12]}"
        assert path.relative_to(out).parts == (study, series, f"{sop}.dcm")  # no ids in the path
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name != WRITTEN_LIST]  # no temp
    assert set(written_list(out)) == {p.relative_to(out).as_posix() for p in got.values()}  # the one list

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
    down = DicomWeb(f"http://127.0.0.1:{_free_port()}/dicom-web", timeout_s=5, retries=0)
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


def test_pull_then_index_and_an_ambiguous_accession(orthanc: Orthanc, cohort: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    for paths in _study(tmp_path / "dup", "ACC2", localizer=False).values():  # a second study, same accession
        orthanc.upload(paths)
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY)
    monkeypatch.setenv("MEDRES_PACS_USER", orthanc.user)
    monkeypatch.setenv("MEDRES_PACS_PASSWORD", orthanc.password)
    config, accessions, labels = tmp_path / "rules.yaml", tmp_path / "cohort.csv", tmp_path / "labels.csv"
    config.write_text("data:\n  index:\n    min_slices: 1\n")
    accessions.write_text("AccessionNumber\nACC1\nACC2\n")
    labels.write_text("AccessionNumber,label\nACC1,nodule\nACC2,normal\n")
    out, indexed = tmp_path / "export", tmp_path / "indexed"
    code = main(["--dicomweb", orthanc.dicomweb, "--out", str(out), "--accessions", str(accessions),
                 "--series-filter", str(config), "--index", str(indexed), "--labels", str(labels),
                 "--no-progress"])
    assert code == 0
    assert "matching several (skipped): 1" in capsys.readouterr().out
    axial = {str(pydicom.dcmread(p).SOPInstanceUID) for p in cohort["ACC1"]["axial"]}
    assert set(_on_disk(out)) == axial  # ACC2 is ambiguous: not pulled
    with open(indexed / "manifest.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    study = pydicom.dcmread(cohort["ACC1"]["axial"][0]).StudyInstanceUID
    assert row["label"] == "nodule"  # the export's folder is the index's study pseudonym
    assert row["study_id"] == f"s{pseudonym(KEY.encode(), 'study', study)[:12]}" == _on_disk(out)[
        next(iter(axial))].parent.parent.name


class _FaultyFront:
    """A real HTTP server on 127.0.0.1 in front of Orthanc that answers 500, a body that is not DICOM,
    the given bytes as the one part, or Orthanc's answer cut short, for the instances named in ``faults``
    (SOPInstanceUID -> "500" | "500-once" | "garbage" | bytes | "cut"): what Orthanc itself cannot be
    made to do."""

    def __init__(self, backend: str) -> None:
        import http.server
        import threading

        import requests

        relay = requests.Session()
        relay.trust_env = False  # forwards the client's Authorization as it came (no ~/.netrc of its own)
        self.faults: dict[str, str | bytes] = {}
        self.authorization: list[str] = []  # the Authorization headers received
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                front.authorization.append(self.headers.get("Authorization", ""))
                sop = self.path.split("/instances/")[-1].split("?")[0] if "/instances/" in self.path else ""
                fault = front.faults.get(sop, "")
                if fault in ("500", "500-once"):
                    if fault == "500-once":
                        front.faults.pop(sop)
                    self.send_response(500)
                    self.end_headers()
                    return
                if fault == "garbage" or isinstance(fault, bytes):
                    part = fault if isinstance(fault, bytes) else b"not a DICOM file"
                    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part + b"\r\n--b--"
                    self.send_response(200)
                    kind = 'multipart/related; type="application/dicom"; boundary=b'
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                r = relay.get(backend + self.path, headers={k: v for k, v in self.headers.items()
                                                               if k.lower() not in ("host",)}, timeout=20)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() in ("content-type",):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content[:len(r.content) // 2] if fault == "cut" else r.content)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_500_and_non_dicom_mid_pull_are_listed_and_a_rerun_completes(orthanc: Orthanc, cohort: dict,
                                                                      tmp_path: Path) -> None:
    front = _FaultyFront(orthanc.url)
    try:
        sops = sorted(str(pydicom.dcmread(p).SOPInstanceUID) for p in cohort["ACC1"]["axial"])
        web = DicomWeb(f"{front.url}/dicom-web", Credentials(orthanc.user, orthanc.password), timeout_s=20,
                       retries=2)
        out = tmp_path / "export"
        assert pull(web, out, accessions=["ACC1"], key=KEY.encode(), progress=False).fetched == 5
        for sop in sops[:3]:  # a resumed series is fetched instance by instance
            _on_disk(out)[sop].unlink()
        front.faults = {sops[0]: "500", sops[1]: "garbage", sops[2]: "500-once"}
        result = pull(web, out, accessions=["ACC1"], key=KEY.encode(), workers=2, progress=False)
        on_disk = set(_on_disk(out))
        assert sops[2] in on_disk  # one 500, then retried with backoff
        assert sops[0] not in on_disk and sops[1] not in on_disk
        assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.name != WRITTEN_LIST]
        (short,) = result.short
        assert short.status.startswith("failed: ")
        assert "HTTP 500" in short.status or "could not be read" in short.status
        front.faults = {}
        again = pull(web, out, accessions=["ACC1"], key=KEY.encode(), progress=False)
        assert again.fetched == 2 and again.short == [] and sops[0] in set(_on_disk(out))
    finally:
        front.close()


def test_a_full_disk_stops_the_pull_with_complete_files_only(orthanc: Orthanc, cohort: dict,
                                                             tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(small)],
                             capture_output=True, timeout=30).returncode == 0
    if not mounted:
        pytest.skip("mounting a small tmpfs needs root (the full-disk case runs where it can)")
    try:
        with pytest.raises(DataError, match="No space left on device") as err:
            pull(_web(orthanc), small / "export", accessions=["ACC1"], key=KEY.encode(), workers=1,
                 progress=False)
        assert "rerun" in str(err.value)
        files = [p for p in (small / "export").rglob("*") if p.is_file() and p.name != WRITTEN_LIST]
        assert all(not p.name.startswith(".") for p in files)  # no temporary file left behind
        for p in files:
            assert pydicom.dcmread(p).SOPInstanceUID == p.stem  # what is there is complete
    finally:
        subprocess.run(["umount", str(small)], capture_output=True, timeout=30)


def test_netrc_and_bearer_token_are_used_and_never_shown(orthanc: Orthanc, cohort: dict, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "home" / ".netrc"
    netrc.parent.mkdir()
    netrc.write_text(f"machine 127.0.0.1 login {orthanc.user} password {orthanc.password}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(netrc.parent))
    monkeypatch.setenv("NETRC", str(netrc))
    for name in ("MEDRES_PACS_USER", "MEDRES_PACS_PASSWORD", "MEDRES_PACS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    web = DicomWeb(orthanc.dicomweb, read_credentials(None), timeout_s=20)  # nothing given: ~/.netrc
    assert pull(web, tmp_path / "a", accessions=["ACC2"], key=KEY.encode(), progress=False).fetched == 4

    token = "tok-Secret-0123456789"
    monkeypatch.setenv("MEDRES_PACS_TOKEN", token)
    front = _FaultyFront(orthanc.url)
    try:
        web = DicomWeb(f"{front.url}/dicom-web", read_credentials(None), timeout_s=20, retries=0)
        with pytest.raises(DataError) as err:  # Orthanc takes HTTP basic only: the token is refused
            pull(web, tmp_path / "b", accessions=["ACC2"], key=KEY.encode(), progress=False)
    finally:
        front.close()
    assert front.authorization[0] == f"Bearer {token}"  # sent as a bearer token, .netrc not mixed in
    assert "401" in str(err.value) and token not in str(err.value) and "MEDRES_PACS_TOKEN" in str(err.value)


def test_a_series_that_grows_between_pulls_gets_its_new_instance(orthanc: Orthanc, cohort: dict,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "export"
    assert pull(_web(orthanc), out, accessions=["ACC2"], key=KEY.encode(), progress=False).fetched == 4
    first = pydicom.dcmread(cohort["ACC2"]["axial"][0])
    extra = tmp_path / "extra.dcm"
    first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    first.InstanceNumber = 5
    first.save_as(extra, enforce_file_format=True)
    orthanc.upload([extra])
    again = pull(_web(orthanc), out, accessions=["ACC2"], key=KEY.encode(), progress=False)
    (row,) = again.series
    assert again.fetched == 1 and (row.expected, row.on_disk, row.status) == (5, 5, "complete")
    assert str(first.SOPInstanceUID) in _on_disk(out)


def test_a_pull_writes_only_into_a_folder_it_made(orthanc: Orthanc, cohort: dict, tmp_path: Path) -> None:
    """An --out holding someone's files is refused before anything is fetched; a study folder that is a
    symbolic link (to somewhere outside) is refused, nothing written through it; a temporary name
    planted as a link is never written through."""
    key = KEY.encode()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds 1 entr"):
        pull(_web(orthanc), theirs, accessions=["ACC1"], key=key, progress=False)
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]

    out, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    first = pull(_web(orthanc), out, accessions=["ACC1"], key=key, progress=False)
    assert first.fetched > 0 and set(written_list(out)) == {
        p.relative_to(out).as_posix() for p in out.rglob("*.dcm")}
    study = next(p for p in out.iterdir() if p.is_dir())
    moved = tmp_path / "moved"
    study.rename(moved)
    elsewhere.mkdir()
    study.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(DataError, match="is a symbolic link"):
        pull(_web(orthanc), out, accessions=["ACC1"], key=key, progress=False)
    assert list(elsewhere.iterdir()) == []
    study.unlink()
    moved.rename(study)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    series = next(p for p in study.iterdir() if p.is_dir())
    lost = sorted(series.glob("*.dcm"))[0]
    lost.unlink()
    (series / f".{lost.stem}.dcm.part").symlink_to(victim)  # the old fixed temporary name
    again = pull(_web(orthanc), out, accessions=["ACC1"], key=key, progress=False)
    assert again.fetched == 1 and lost.is_file() and victim.read_text() == "precious"


def test_the_pull_writes_the_servers_bytes_unchanged(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    """Files whose file meta lacks the implementation UID and version (pydicom's encoder would add them)
    arrive byte for byte, streamed as a series and fetched one by one (a resumed series)."""
    paths = write_series(tmp_path / "src", 3)
    for p in paths:
        ds = pydicom.dcmread(p)
        del ds.file_meta.ImplementationClassUID, ds.file_meta.ImplementationVersionName
        pydicom.dcmwrite(p, ds, enforce_file_format=False)
    sources = {str(pydicom.dcmread(p).SOPInstanceUID): p.read_bytes() for p in paths}
    encoded = BytesIO()
    pydicom.dcmread(paths[0]).save_as(encoded, enforce_file_format=True)
    assert encoded.getvalue() != paths[0].read_bytes()  # decoding and re-encoding would change them
    empty_orthanc.upload(paths)
    study = str(pydicom.dcmread(paths[0]).StudyInstanceUID)
    out = tmp_path / "export"
    result = pull(_web(empty_orthanc), out, filters={"StudyInstanceUID": study}, key=KEY.encode(),
                  progress=False)
    assert result.fetched == 3 and {sop: p.read_bytes() for sop, p in _on_disk(out).items()} == sources
    for sop in sorted(sources)[:2]:
        _on_disk(out)[sop].unlink()
    again = pull(_web(empty_orthanc), out, filters={"StudyInstanceUID": study}, key=KEY.encode(),
                 progress=False)
    assert again.fetched == 2 and {sop: p.read_bytes() for sop, p in _on_disk(out).items()} == sources


def test_another_series_no_transfer_syntax_or_a_cut_answer_is_refused(orthanc: Orthanc, cohort: dict
                                                                       ) -> None:
    """Each a DataError naming the server, not the password: a part of another series (the instance's
    SOPInstanceUID), a DICOM file without a transfer syntax, an answer cut short."""
    path = cohort["ACC1"]["axial"][0]
    source = pydicom.dcmread(path)
    study, series = str(source.StudyInstanceUID), str(source.SeriesInstanceUID)
    sop = str(source.SOPInstanceUID)
    moved, bare = BytesIO(), BytesIO()
    elsewhere = pydicom.dcmread(path)
    elsewhere.SeriesInstanceUID = generate_uid()
    elsewhere.save_as(moved, enforce_file_format=True)
    no_syntax = pydicom.dcmread(path)
    del no_syntax.file_meta.TransferSyntaxUID
    pydicom.dcmwrite(bare, no_syntax, enforce_file_format=False)
    front = _FaultyFront(orthanc.url)
    try:
        web = DicomWeb(f"{front.url}/dicom-web", Credentials(orthanc.user, orthanc.password), timeout_s=20,
                       retries=0)
        for fault, message in ((moved.getvalue(), "an instance of another series"),
                               (bare.getvalue(), "could not be read"), ("cut", "broke off")):
            front.faults = {sop: fault}
            with pytest.raises(DataError, match=message) as err:
                list(web.receive(study, series, [sop], where="study s1, series r1"))
            text = str(err.value)
            assert front.url in text and "study s1, series r1" in text and orthanc.password not in text
        front.faults = {}
        (item,) = web.receive(study, series, [sop])
        assert item.sop_uid == sop and item.data == path.read_bytes()
    finally:
        front.close()
