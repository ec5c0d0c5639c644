"""``medres.data.listen`` against a real Orthanc: what Orthanc sends (REST ``/modalities/medres/store``)
lands in the pull's layout with the same pixels; an AE or address off the allow-list is rejected and
logged without patient data; a full quota is refused with 0xA700; SIGTERM stops the module cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from medres.data.pacs.listen import OUT_OF_RESOURCES, Listener
from medres.data.pacs.pull import pseudonym
from medres.errors import ConfigError
from medres.files import WRITTEN_LIST, written_list
from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc, _free_port

KEY = b"pacs-listen-test-key-0123456789abcdef"
PATIENT = "PAT-LISTEN-4711"


def _series(folder: Path, n: int = 3) -> list[Path]:
    study = generate_uid()

    def tags(k: int, ds: pydicom.Dataset) -> None:
        ds.StudyInstanceUID, ds.PatientID = study, PATIENT

    return write_series(folder, n, edit=tags)


def _send(paths: list[Path], port: int, calling: str = "MODALITY1", called: str = "MEDRES") -> list[int]:
    """C-STORE ``paths`` with pynetdicom's SCU; the statuses ([] when the association is rejected)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context(str(pydicom.dcmread(paths[0]).SOPClassUID), "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(pydicom.dcmread(p)).Status) for p in paths]
    finally:
        assoc.release()


def test_orthanc_store_lands_in_the_pull_layout(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    paths = _series(tmp_path / "src")
    empty_orthanc.upload(paths)
    out = tmp_path / "export"
    ids = empty_orthanc.rest("GET", "/instances").json()
    with Listener(out, aet=empty_orthanc.medres_aet, port=empty_orthanc.medres_port,
                  allow=[f"{empty_orthanc.aet}@127.0.0.1"], key=KEY, min_free_bytes=0) as listener:
        empty_orthanc.rest("POST", "/modalities/medres/store", json={"Resources": ids, "Synchronous": True})
        assert listener.received == 3
    got = {p.stem: p for p in out.rglob("*.dcm")}
    for source in paths:
        theirs = pydicom.dcmread(source)
        sop = str(theirs.SOPInstanceUID)
        study = f"s{pseudonym(KEY, 'study', str(theirs.StudyInstanceUID))[:12]}"
        series = f"r{pseudonym(KEY, 'series', str(theirs.SeriesInstanceUID))[:12]}"
        assert got[sop].relative_to(out).parts == (study, series, f"{sop}.dcm")
        np.testing.assert_array_equal(pydicom.dcmread(got[sop]).pixel_array, theirs.pixel_array)
    assert len(got) == 3 and not [p for p in out.rglob(".*") if p.name != WRITTEN_LIST]  # no temp files
    assert set(written_list(out)) == {p.relative_to(out).as_posix() for p in got.values()}


def test_allow_list_rejects_other_aes_and_addresses(empty_orthanc: Orthanc, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    paths = _series(tmp_path / "src", 2)
    out = tmp_path / "export"
    caplog.set_level(logging.WARNING, logger="medres.data.pacs")
    with Listener(out, port=_free_port(), allow=["MODALITY1@127.0.0.1"], key=KEY, min_free_bytes=0) as lis:
        assert _send(paths, lis.port, calling="STRANGER") == []
        assert _send(paths, lis.port, called="OTHERAE") == []  # not our AE title
        assert _send(paths, lis.port) == [0, 0]
    assert len(list(out.rglob("*.dcm"))) == 2
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert any("'STRANGER'" in m and "127.0.0.1" in m for m in rejected)
    assert PATIENT not in caplog.text and not any(str(pydicom.dcmread(p).StudyInstanceUID) in caplog.text
                                                  for p in paths)
    # Orthanc's own AE at an address not on the list: its C-STORE to medres fails, nothing is written
    empty_orthanc.upload(paths)
    elsewhere = tmp_path / "elsewhere"
    ids = empty_orthanc.rest("GET", "/instances").json()
    with Listener(elsewhere, aet=empty_orthanc.medres_aet, port=empty_orthanc.medres_port,
                  allow=[f"{empty_orthanc.aet}@10.255.255.1"], key=KEY, min_free_bytes=0), \
            pytest.raises(requests.HTTPError):
        empty_orthanc.rest("POST", "/modalities/medres/store", json={"Resources": ids, "Synchronous": True})
    assert not list(elsewhere.rglob("*.dcm"))


def test_quota_and_free_disk_refuse_with_out_of_resources(tmp_path: Path) -> None:
    paths = _series(tmp_path / "src", 3)
    one = paths[0].stat().st_size
    out = tmp_path / "export"
    with Listener(out, port=_free_port(), allow=["MODALITY1"], key=KEY, max_bytes=int(1.5 * one) + 1024,
                  min_free_bytes=0) as lis:
        assert _send(paths, lis.port) == [0, OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    assert len(list(out.rglob("*.dcm"))) == 1
    with Listener(out, port=_free_port(), allow=["MODALITY1"], key=KEY, min_free_bytes=1 << 62) as lis:
        assert _send(paths[1:], lis.port) == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    with Listener(out, port=_free_port(), allow=["MODALITY1"], key=KEY, min_free_bytes=0) as lis:
        assert _send(paths, lis.port) == [0, 0, 0]  # the one there already is accepted, not rewritten
    assert len(list(out.rglob("*.dcm"))) == 3
    with pytest.raises(ConfigError, match="AE title"):
        Listener(out, allow=["A-TITLE-LONGER-THAN-16"], key=KEY)


def test_the_module_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    paths = _series(tmp_path / "src", 2)
    out, port = tmp_path / "export", _free_port()
    env = {**os.environ, "MEDRES_PROJECT_KEY": KEY.decode()}
    proc = subprocess.Popen([sys.executable, "-m", "medres.data.listen", "--port", str(port), "--aet",
                             "MEDRES", "--out", str(out), "--allow", "MODALITY1@127.0.0.1",
                             "--min-free", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "medres listen:" in first and f"127.0.0.1:{port}" in first, first
        assert _send(paths, port) == [0, 0]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "2 instance(s) received" in rest, rest
    assert len(written_list(out)) == 2 and len(list(out.rglob("*.dcm"))) == 2
    # the port is free again: a new listener binds it
    with Listener(tmp_path / "again", port=port, allow=["MODALITY1"], key=KEY, min_free_bytes=0):
        pass


def test_stop_finishes_the_instance_being_stored(tmp_path: Path) -> None:
    paths = _series(tmp_path / "src", 2)
    entered, stored = threading.Event(), []

    def slow(ds: pydicom.Dataset) -> int:
        entered.set()
        time.sleep(1.0)
        stored.append(str(ds.SOPInstanceUID))
        return 0

    listener = Listener(None, port=_free_port(), allow=["MODALITY1"], sink=slow).start()
    sender = threading.Thread(target=_send, args=(paths, listener.port), daemon=True)
    sender.start()
    assert entered.wait(10)
    listener.stop()  # while the first instance is being stored
    sender.join(10)
    assert stored == [str(pydicom.dcmread(paths[0]).SOPInstanceUID)]  # finished; the second never taken
    assert listener.received == 1 and not sender.is_alive()
