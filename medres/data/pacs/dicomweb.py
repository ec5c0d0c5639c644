"""DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through ``dicomweb-client``, with medres's errors.

Every call has a timeout; connection errors and 5xx answers are retried with backoff by the session
(:func:`medres.data.pacs.auth.http_session`); what still fails becomes a :class:`medres.DataError` that
names the server (never the credentials) and what to check.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydicom.dataset import Dataset

from medres.data.pacs.auth import Credentials, ServerUnavailable, http_session, server_name
from medres.errors import ConfigError, DataError

__all__ = ["DicomWeb", "from_json"]

_STUDY_FIELDS = ("StudyInstanceUID", "AccessionNumber", "ModalitiesInStudy", "NumberOfStudyRelatedSeries")
_SERIES_FIELDS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "SeriesNumber",
                  "NumberOfSeriesRelatedInstances")


def _read_timed_out(exc: BaseException) -> bool:
    """Whether a ``requests`` connection error is a read timeout that urllib3's retries gave up on."""
    from urllib3.exceptions import ReadTimeoutError

    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, (ReadTimeoutError, TimeoutError))


def from_json(item: dict[str, Any]) -> Dataset:
    """A DICOM JSON object (QIDO answer) as a pydicom Dataset (bulk data left out)."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")


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
        self.client = DICOMwebClient(self.url, session=session, timeout=(min(10.0, timeout_s), timeout_s))
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
        """The instances ``sop_uids`` of a series (None: all): one streamed WADO-RS series request when
        several are asked (the others the series holds are dropped), else one instance request."""
        if sop_uids is None or len(sop_uids) > 1:
            wanted = None if sop_uids is None else set(sop_uids)
            with self.errors("retrieving a series", where):
                stream = self.client.iter_series(study_uid, series_uid)
            while True:
                with self.errors("retrieving a series", where):
                    ds = next(stream, None)
                if ds is None:
                    return
                if not isinstance(ds, Dataset):
                    raise DataError(f"the server sent something that is not DICOM ({where})", path=self.name,
                                    hint="check the server; rerun to fetch it again")
                if wanted is None or str(ds.get("SOPInstanceUID", "")) in wanted:
                    yield ds
        for sop in sop_uids:
            with self.errors("retrieving an instance", where):
                ds = self.client.retrieve_instance(study_uid, series_uid, sop)
            if not isinstance(ds, Dataset) or str(ds.get("SOPInstanceUID", "")) != sop:
                raise DataError(f"the server sent something other than the instance asked for ({where})",
                                path=self.name, hint="check the server; rerun to fetch it again")
            yield ds

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
