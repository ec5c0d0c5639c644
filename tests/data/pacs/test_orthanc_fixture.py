"""The Orthanc fixture itself: it answers only with the test credentials and takes an upload."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.data.dicom_factory import write_series
from tests.data.pacs.conftest import Orthanc


def test_orthanc_needs_the_password_and_stores(empty_orthanc: Orthanc, tmp_path: Path) -> None:
    assert requests.get(f"{empty_orthanc.url}/system", timeout=10).status_code == 401
    empty_orthanc.upload(write_series(tmp_path / "s", 3))
    assert len(empty_orthanc.rest("GET", "/instances").json()) == 3
