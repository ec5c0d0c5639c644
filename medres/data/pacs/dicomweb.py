"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``, with medres's errors.

Every call has a timeout; connection errors and 5xx answers are retried with backoff by the session
(:func:`medres.data.pacs.auth.http_session`); what still fails becomes a :class:`medres.DataError` that
names the server (never the credentials) and what to check.

WADO-RS answers are read as the bytes the server sent (:meth:`DicomWeb.receive`): each part's header is
parsed to check that it is a DICOM file of the series (and the instance) asked for, and the pull writes
those bytes unchanged, without decoding and re-encoding every element.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urlsplit

from pydicom.dataset import Dataset

from medres.data.pacs.auth import Credentials, ServerUnavailable, http_session, server_name
from medres.errors import ConfigError, DataError

__all__ = ["DicomWeb", "Received", "from_json"]

_STUDY_FIELDS = ("StudyInstanceUID", "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries")
_SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# what dicomweb-client asks for: a series in the server's default transfer syntax, an instance in any
_ACCEPT_SERIES = 'multipart/related; type="application/dicom"'
_ACCEPT_INSTANCE = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _read_timed_out(exc: BaseException) -> bool:
    """Whether a ``requests`` connection error is a read timeout that urllib3's retries gave up on."""
    from urllib3.exceptions import ReadTimeoutError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (ReadTimeoutError, TimeoutError))


def from_json(item: dict[str, Any]) -> Dataset:
    """A DICOM JSON object (QIDO answer) as a pydicom Dataset (bulk data left out)."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")


@dataclass(frozen=True)
class Received:
    """One instance as the server sent it: its DICOM file's bytes and their header (no pixel data)."""

    header: Dataset
    data: bytes

    @property
    def sop_uid(self) -> str:
        return str(self.header.get("SOPInstanceUID", ""))


def _received(data: bytes) -> Received:
    """A WADO-RS part as a :class:`Received`; an InvalidDicomError (caught by :meth:`DicomWeb.errors`)
    when it is not a DICOM file (PS3.10: preamble, ``DICM``, file meta with the transfer syntax)."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    header = dcmread(BytesIO(data), stop_before_pixels=True)
    if not header.file_meta.get("TransferSyntaxUID"):
        raise InvalidDicomError("no transfer syntax in the file meta")
    return Received(header, data)


class DicomWeb:
    """One DICOMweb server: searches, retrieves and stores, each a DataError when the server refuses."""

    batch = "instance"  # a resumed series: one request per missing instance (WADO-RS), in parallel

    def __init__(self, url: str, credentials: Credentials | None = None, *, ca_bundle: str | None = None,
                 insecure: bool = False, timeout_s: float = 60.0, workers: int = 4, retries: int = 3) -> None:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise ConfigError("DICOMweb needs the dicomweb-client package",
                              hint="pip install 'medres[pacs]'") from None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"{server_name(url)!r} is not an http(s) URL",
                              hint="pass the server's DICOMweb root, e.g. https://pacs.example.org/dicom-web")
        if parts.username or parts.password:
            raise ConfigError(f"the URL of {server_name(url)} holds credentials, which any user sees in the "
                              "process list", hint="put them in --credentials FILE (mode 0600), "
                                                   "$MEDRES_PACS_USER/$MEDRES_PACS_PASSWORD or ~/.netrc")
        self.url = url.rstrip("/")
        self.name = server_name(self.url)
        self.credentials = credentials or Credentials()
        session = http_session(self.credentials, ca_bundle=ca_bundle, insecure=insecure, workers=workers,
                               retries=retries)
        self.session = session  # WADO-RS reads its answers' bytes through the same session
        self.timeout = (min(10.0, timeout_s), timeout_s)
        self.client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        self.client.set_http_retry_params(retry=False)  # one retry policy: the session's (with backoff)
        logging.getLogger("retrying").setLevel(logging.CRITICAL)  # it logs each failed try's traceback

    @contextlib.contextmanager
    def errors(self, doing: str, where: str = "") -> Iterator[None]:
        """Turn what ``requests``/``dicomweb-client`` raise while ``doing`` into a DataError."""
        import requests
        from pydicom.errors import InvalidDicomError

        where = f" ({where})" if where else ""
        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                hint = (f"check the credentials ({self.credentials.source}): --credentials FILE, "
                        "$MEDRES_PACS_USER/$MEDRES_PACS_PASSWORD, $MEDRES_PACS_TOKEN or ~/.netrc, and that "
                        "this user may read/write on the server")
                raise ServerUnavailable(f"the server refused {doing}{where}: HTTP {code} "
                                f"({'not authenticated' if code == 401 else 'not allowed'})",
                                path=self.name, hint=hint) from None
            if code == 404:
                raise DataError(f"the server has no such resource while {doing}{where} (HTTP 404)",
                                path=self.name, hint="check the URL's DICOMweb root (e.g. .../dicom-web) and "
                                                     "that the study or series still exists") from None
            raise DataError(f"the server answered HTTP {code} while {doing}{where}", path=self.name,
                            hint="it failed after retries; look at the server's log, then rerun (what "
                                 "arrived is kept)") from None
        except requests.exceptions.SSLError:
            raise ServerUnavailable(f"TLS verification failed while {doing}{where}", path=self.name,
                            hint="pass --ca-bundle with the CA that signed its certificate") from None
        except requests.Timeout:
            raise DataError(f"the server did not answer in time while {doing}{where}", path=self.name,
                            hint="check that it is up and reachable, then rerun") from None
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError):
            raise DataError(f"the connection broke off while {doing}{where}", path=self.name,
                            hint="check the server and the network, then rerun (what arrived is kept)"
                            ) from None
        except (requests.ConnectionError, requests.exceptions.RetryError) as exc:
            if _read_timed_out(exc):  # urllib3's retries end a read timeout as a ConnectionError
                raise DataError(f"the server did not answer in time (--timeout) while {doing}{where}",
                                path=self.name, hint="check that it is up and not overloaded, raise "
                                                     "--timeout for a slow server, then rerun") from None
            raise ServerUnavailable(f"cannot connect to the server while {doing}{where}", path=self.name,
                            hint="check the URL and that the server is up and reachable") from None
        except (ValueError, TypeError, KeyError, AttributeError, EOFError, InvalidDicomError) as exc:
            raise DataError(f"the server's answer could not be read while {doing}{where} "
                            f"({type(exc).__name__}: not DICOM / DICOM JSON?)", path=self.name,
                            hint="check that the URL is the server's DICOMweb root") from None

    # -- QIDO-RS ------------------------------------------------------------------------------------
    def find_studies(self, filters: dict[str, str], limit: int) -> list[Dataset]:
        with self.errors("searching studies"):
            found = self.client.search_for_studies(search_filters=dict(filters), fields=list(_STUDY_FIELDS),
                                                   limit=limit)
        return [from_json(x) for x in found]

    def find_series(self, study_uid: str, where: str = "") -> list[Dataset]:
        with self.errors("searching the series of a study", where):
            found = self.client.search_for_series(study_instance_uid=study_uid, fields=list(_SERIES_FIELDS))
        return [from_json(x) for x in found]

    def find_instances(self, study_uid: str, series_uid: str, where: str = "") -> list[str]:
        with self.errors("searching the instances of a series", where):
            found = self.client.search_for_instances(study_instance_uid=study_uid,
                                                     series_instance_uid=series_uid,
                                                     fields=["SOPInstanceUID"], get_remaining=True)
        return [str(x["00080018"]["Value"][0]) for x in found if x.get("00080018", {}).get("Value")]

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        with self.errors("searching an instance", ""):
            found = self.client.search_for_instances(study_instance_uid=study_uid,
                                                     series_instance_uid=series_uid,
                                                     search_filters={"SOPInstanceUID": sop_uid})
        return bool(found)

    # -- WADO-RS ------------------------------------------------------------------------------------
    def header(self, study_uid: str, series_uid: str, sop_uid: str, where: str = "") -> Dataset:
        """One instance's metadata (no pixel data)."""
        with self.errors("reading an instance's metadata", where):
            meta = self.client.retrieve_instance_metadata(study_uid, series_uid, sop_uid)
        return from_json(meta)

    def retrieve(self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, where: str = ""
                 ) -> Iterator[Dataset]:
        """The instances ``sop_uids`` of a series (None: all) as pydicom Datasets (see :meth:`receive`)."""
        from pydicom import dcmread

        for item in self.receive(study_uid, series_uid, sop_uids, where=where):
            with self.errors("reading an instance", where):
                ds = dcmread(BytesIO(item.data))
            yield ds

    def receive(self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, where: str = ""
                ) -> Iterator[Received]:
        """The instances ``sop_uids`` of a series (None: all) as the server sent them: one streamed
        WADO-RS series request when several are asked (the others the series holds are dropped), else
        one instance request. Each part must be a DICOM file of this series (and the instance asked for)."""
        for uid in (study_uid, series_uid, *(sop_uids or ())):
            if not _UID.fullmatch(uid):
                raise DataError(f"the server listed an invalid UID ({where})", path=self.name,
                                hint="check the server's data")
        series_url = f"{self.url}/studies/{study_uid}/series/{series_uid}"
        if sop_uids is None or len(sop_uids) > 1:
            wanted = None if sop_uids is None else set(sop_uids)
            for item in self._parts(series_url, _ACCEPT_SERIES, series_uid, "retrieving a series", where):
                if wanted is None or item.sop_uid in wanted:
                    yield item
            return
        for sop in sop_uids:
            got = list(self._parts(f"{series_url}/instances/{sop}", _ACCEPT_INSTANCE, series_uid,
                                   "retrieving an instance", where))
            if len(got) != 1 or got[0].sop_uid != sop:
                raise DataError(f"the server sent something other than the instance asked for ({where})",
                                path=self.name, hint="check the server; rerun to fetch it again")
            yield got[0]

    def _parts(self, url: str, accept: str, series_uid: str, doing: str, where: str) -> Iterator[Received]:
        """The parts of one streamed WADO-RS answer, each checked to be a DICOM file of ``series_uid``."""
        with self.errors(doing, where):
            response = self.session.get(url, headers={"Accept": accept}, stream=True, timeout=self.timeout)
        try:
            with self.errors(doing, where):
                response.raise_for_status()
                kind = response.headers.get("Content-Type", "")
                # a single part without the multipart envelope (some servers; dicomweb-client reads it too);
                # else dicomweb-client's own streaming multipart reader (its public calls give Datasets)
                parts = iter([response.content]) if kind.startswith("application/dicom") else \
                    self.client._decode_multipart_message(response, stream=True)
            while True:
                with self.errors(doing, where):
                    data = next(parts, None)
                    if data is None:
                        return
                    item = _received(bytes(data))
                if str(item.header.get("SeriesInstanceUID", "")) != series_uid:
                    raise DataError(f"the server sent an instance of another series ({where})",
                                    path=self.name, hint="check the server; rerun to fetch it again")
                yield item
        finally:
            response.close()

    # -- STOW-RS ------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], where: str = "") -> None:
        with self.errors("storing", where):
            answer = self.client.store_instances(list(datasets))
        failed = answer.get("FailedSOPSequence") if answer is not None else None
        if failed:
            reasons = sorted({str(x.get("FailureReason", "?")) for x in failed})
            raise DataError(f"the server did not store {len(failed)} object(s) ({where}); failure reason(s) "
                            f"{', '.join(reasons)}", path=self.name,
                            hint="look at the server's log; rerun the push (what arrived is not sent twice)")
