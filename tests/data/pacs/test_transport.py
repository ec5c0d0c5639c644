"""Transport errors against the real Orthanc and local sockets, each a DataError naming the server and
what to check, never the credentials (message and log): 401, 404, connection refused, a read timeout,
DIMSE to a silent port; TLS: ``--ca-bundle`` and ``--insecure`` reach the session, and a local HTTPS
server with a self-signed certificate is refused without the bundle and answers with it (also where
$REQUESTS_CA_BUNDLE names another bundle)."""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest
from pydicom.uid import generate_uid

from medres.data.pacs.auth import Credentials
from medres.data.pacs.dicomweb import DicomWeb
from medres.data.pacs.dimse import Dimse
from medres.data.pull import main
from medres.errors import DataError
from tests.data.pacs.conftest import Orthanc, _free_port

WRONG = "wrong-Pa55word-not-shown"


def _web(url: str, password: str | None = None, **kw: object) -> DicomWeb:
    cred = Credentials("medres-test", password, source="test") if password else None
    return DicomWeb(url, cred, timeout_s=kw.pop("timeout_s", 10), retries=0, **kw)  # type: ignore[arg-type]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_401_and_404_from_orthanc_name_the_server_not_the_secret(orthanc: Orthanc,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DataError) as err:
        _web(orthanc.dicomweb, WRONG).find_studies({"AccessionNumber": "X"}, limit=2)
    text = str(err.value)
    assert "HTTP 401" in text and orthanc.dicomweb in text and "check the credentials" in text
    web = _web(orthanc.dicomweb, orthanc.password)
    with pytest.raises(DataError) as err:
        list(web.retrieve(generate_uid(), generate_uid(), None, where="study s1, series r1"))
    text = str(err.value)
    assert "HTTP 404" in text and orthanc.dicomweb in text and "study s1, series r1" in text
    assert "still exists" in text
    for secret in (WRONG, orthanc.password):
        assert secret not in caplog.text and secret not in str(err.value)


def test_refused_and_timeout_are_clear_errors(silent_port: int, orthanc: Orthanc,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    closed = f"http://127.0.0.1:{_free_port()}/dicom-web"
    with pytest.raises(DataError, match="cannot connect to the server") as err:
        _web(closed, WRONG).find_studies({}, limit=1)
    assert closed in str(err.value) and "is up and reachable" in str(err.value)
    hung = f"http://127.0.0.1:{silent_port}/dicom-web"
    with pytest.raises(DataError, match="did not answer in time") as err:
        _web(hung, WRONG, timeout_s=1).find_studies({}, limit=1)
    assert hung in str(err.value) and "--timeout" in str(err.value)
    assert WRONG not in caplog.text and WRONG not in str(err.value)
    # DIMSE: a silent port is an association that never comes, naming host, port and AE titles
    dimse = Dimse(f"127.0.0.1:{silent_port}", called_aet=orthanc.aet, calling_aet="MEDRES", timeout_s=1)
    with pytest.raises(DataError, match="association for searching studies") as err:
        dimse.find_studies({}, limit=1)
    assert f"127.0.0.1:{silent_port}" in str(err.value) and "'MEDRES'" in str(err.value)


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _EmptyQido(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    cert, key = _certificate(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EmptyQido)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", cert
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_ca_bundle_and_insecure(https_server: tuple[str, Path], caplog: pytest.LogCaptureFixture,
                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert = https_server
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # a site-wide bundle must not win
    with pytest.raises(DataError, match="TLS verification failed") as err:
        _web(url).find_studies({}, limit=1)
    assert url in str(err.value) and "--ca-bundle" in str(err.value)
    trusted = _web(url, ca_bundle=str(cert))
    assert trusted.client._session.verify == str(cert)
    assert trusted.find_studies({}, limit=1) == []
    caplog.set_level(logging.WARNING)
    insecure = _web(url, insecure=True)
    assert insecure.client._session.verify is False and "NOT verified" in caplog.text
    assert insecure.find_studies({}, limit=1) == []
    # the CLI passes both options through; a missing bundle is refused before any request
    code = main(["--dicomweb", url, "--out", str(tmp_path / "o"), "--query", "AccessionNumber=X",
                 "--ca-bundle", str(tmp_path / "absent.pem"), "--no-progress"])
    assert code == 2 and not (tmp_path / "o").exists()
