"""A real Orthanc (Debian packages ``orthanc`` and ``orthanc-dicomweb``) for the PACS tests.

One server per test session, from a generated configuration: HTTP and DICOM ports chosen free on
127.0.0.1, remote HTTP access off, a test user and password, storage in a temporary folder, the
DICOMweb plugin, medres's own AE registered at 127.0.0.1 (C-FIND/C-GET/C-MOVE/C-STORE from it only;
C-MOVE and ``/modalities/medres/store`` send to it at ``Orthanc.medres_port``). It is
stopped by its PID at the end. Without Orthanc the tests skip with the install command; under
``CI=true`` a missing Orthanc is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

PLUGINS = Path("/usr/share/orthanc/plugins")
INSTALL = "sudo apt-get install -y orthanc orthanc-dicomweb"
USER, PASSWORD = "medres-test", "s3cret-Pa55word-for-tests"
SERVER_AET, MEDRES_AET = "ORTHANCTEST", "MEDRES"


@dataclass
class Orthanc:
    """A running Orthanc: where it answers and how to log in."""

    http_port: int
    dicom_port: int
    user: str = USER
    password: str = PASSWORD
    aet: str = SERVER_AET
    medres_aet: str = MEDRES_AET
    medres_port: int = 0  # where Orthanc sends medres's AE (C-MOVE destination, /modalities/medres/store)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, **kw: object) -> requests.Response:
        """One REST call with the test credentials; raises on an HTTP error."""
        r = requests.request(method, f"{self.url}{path}", auth=(self.user, self.password), timeout=30,
                             **kw)  # type: ignore[arg-type]
        r.raise_for_status()
        return r

    def upload(self, paths: list[Path]) -> None:
        for p in paths:
            self.rest("POST", "/instances", data=p.read_bytes())

    def clear(self) -> None:
        for pid in self.rest("GET", "/patients").json():
            self.rest("DELETE", f"/patients/{pid}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def orthanc_binary() -> str | None:
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
    if found is None or not (PLUGINS / "libOrthancDicomWeb.so").is_file():
        return None
    return found


@contextlib.contextmanager
def running_orthanc(folder: Path, binary: str) -> Iterator[Orthanc]:
    """An Orthanc on free 127.0.0.1 ports with its storage in ``folder``, stopped by its PID at the end."""
    medres_port = _free_port()  # medres's own C-STORE port (C-MOVE destination); the tests listen there
    server = Orthanc(http_port=_free_port(), dicom_port=_free_port(), medres_port=medres_port)
    config = {
        "Name": "medres-test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
        "Plugins": [str(PLUGINS / "libOrthancDicomWeb.so")],
        "HttpServerEnabled": True, "HttpPort": server.http_port, "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True, "RegisteredUsers": {USER: PASSWORD},
        "DicomServerEnabled": True, "DicomPort": server.dicom_port, "DicomAet": SERVER_AET,
        "DicomCheckCalledAet": True, "DicomCheckModalityHost": True,
        "DicomAlwaysAllowEcho": False, "DicomAlwaysAllowStore": False, "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False, "DicomAlwaysAllowMove": False,
        "DicomModalities": {"medres": {"AET": MEDRES_AET, "Host": "127.0.0.1", "Port": medres_port,
                                       "AllowEcho": True, "AllowFind": True, "AllowGet": True,
                                       "AllowMove": True, "AllowStore": True}},
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                     "SeriesMetadata": "Full"},
        "HttpCompressionEnabled": False, "StableAge": 1, "ConcurrentJobs": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed at the end
    proc = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{server.url}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (folder / "orthanc.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Orthanc did not start (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = orthanc_binary()
    if binary is None:
        message = f"Orthanc with its DICOMweb plugin is not installed ({INSTALL})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    try:
        with running_orthanc(tmp_path_factory.mktemp("orthanc"), binary) as server:
            yield server
    except RuntimeError as err:
        pytest.fail(str(err))


@pytest.fixture
def empty_orthanc(orthanc: Orthanc) -> Orthanc:
    """The session's Orthanc with nothing stored."""
    orthanc.clear()
    return orthanc


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dual-head ResNet-10 with random weights (as tests/test_predict.py's), for predict --push."""
    from tests.tiny_checkpoint import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_best.pt")
