"""DIMSE (C-FIND, C-GET, C-STORE) through ``pynetdicom``, with medres's errors.

The same operations as :class:`medres.data.pacs.dicomweb.DicomWeb`, so the pull and the push take
either. Every association has connection, ACSE, DIMSE and network timeouts; a refused association, an
abort or a failure status is a :class:`medres.DataError` naming the server (host, port, AE title).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from pydicom.dataset import Dataset

from medres.data.pacs.auth import ServerUnavailable
from medres.errors import ConfigError, DataError

__all__ = ["Dimse", "parse_address"]

log = logging.getLogger("medres.data.pacs")
_SUCCESS, _PENDING = 0x0000, (0xFF00, 0xFF01)


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port)."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{address!r} is not HOST:PORT", hint="e.g. --dimse pacs.hospital.org:104")
    return host.strip("[]"), int(port)


class Dimse:
    """One DIMSE peer: C-FIND (study root), C-GET (the SCP role for the objects' storage classes), C-STORE."""

    batch = "series"  # the pull retrieves a series' missing instances with one C-GET

    def __init__(self, address: str, *, called_aet: str = "ANY-SCP", calling_aet: str = "MEDRES",
                 timeout_s: float = 60.0) -> None:
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            raise ConfigError("DIMSE needs the pynetdicom package",
                              hint="pip install 'medres[pacs]'") from None
        for what, aet in (("--called-aet", called_aet), ("--calling-aet", calling_aet)):
            if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
                raise ConfigError(f"{what} {aet!r} is not an AE title (1-16 ASCII characters)")
        self.host, self.port = parse_address(address)
        self.called_aet, self.calling_aet, self.timeout_s = called_aet, calling_aet, float(timeout_s)
        self.name = f"dicom://{self.host}:{self.port} (AE {called_aet})"
        self._classes: dict[str, dict[str, str]] = {}  # series UID -> {SOP instance UID: SOP class UID}
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own log lines name ids

    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = min(10.0, self.timeout_s)
        return ae

    def _associate(self, ae: Any, doing: str, **kw: Any) -> Any:
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, **kw)
        if not assoc.is_established:
            why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            raise ServerUnavailable(f"the association for {doing} was {why}", path=self.name,
                            hint=f"check the address, that the server is up, that it knows medres's AE title "
                                 f"{self.calling_aet!r} (and this host) and allows this operation")
        return assoc

    def _status(self, status: Dataset | None, doing: str, where: str) -> int:
        if status is None or "Status" not in status:
            raise DataError(f"the server did not answer in time while {doing}{where}", path=self.name,
                            hint="check that it is up; then rerun")
        return int(status.Status)

    # -- C-FIND -------------------------------------------------------------------------------------
    def _find(self, level: str, keys: dict[str, str], doing: str, where: str = "", limit: int | None = None
              ) -> list[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        where = f" ({where})" if where else ""
        query = Dataset()
        query.QueryRetrieveLevel = level
        for k, v in keys.items():
            setattr(query, k, v)
        ae = self._ae()
        ae.add_requested_context(FIND)
        assoc = self._associate(ae, doing)
        found = []
        try:
            for status, identifier in assoc.send_c_find(query, FIND):
                code = self._status(status, doing, where)
                if code in _PENDING and identifier is not None:
                    found.append(identifier)
                    if limit is not None and len(found) >= limit:  # enough to decide: stop the search
                        assoc.abort()
                        return found
                elif code != _SUCCESS:
                    raise DataError(f"the server answered C-FIND status 0x{code:04X} while {doing}{where}",
                                    path=self.name, hint="check that medres's AE may query this server")
        finally:
            if assoc.is_established:
                assoc.release()
        return found

    def find_studies(self, filters: dict[str, str], limit: int) -> list[Dataset]:
        keys = {"StudyInstanceUID": "", "AccessionNumber": "", "ModalitiesInStudy": "", **filters}
        return self._find("STUDY", keys, "searching studies", limit=max(1, limit))

    def find_series(self, study_uid: str, where: str = "") -> list[Dataset]:
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": "", "Modality": "",
                "SeriesDescription": "", "SeriesNumber": "", "NumberOfSeriesRelatedInstances": ""}
        return self._find("SERIES", keys, "searching the series of a study", where)

    def find_instances(self, study_uid: str, series_uid: str, where: str = "") -> list[str]:
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": "",
                "SOPClassUID": ""}
        found = self._find("IMAGE", keys, "searching the instances of a series", where)
        classes = {str(x.SOPInstanceUID): str(x.get("SOPClassUID", ""))
                   for x in found if "SOPInstanceUID" in x}
        self._classes[series_uid] = classes
        return list(classes)

    def has_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> bool:
        keys = {"StudyInstanceUID": study_uid, "SeriesInstanceUID": series_uid, "SOPInstanceUID": sop_uid}
        return bool(self._find("IMAGE", keys, "searching an instance"))

    # -- C-GET --------------------------------------------------------------------------------------
    def header(self, study_uid: str, series_uid: str, sop_uid: str, where: str = "") -> Dataset:
        return next(iter(self.retrieve(study_uid, series_uid, [sop_uid], where=where)))

    def retrieve(self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, where: str = ""
                 ) -> Iterator[Dataset]:
        """The instances ``sop_uids`` of a series with one C-GET (the series level when all are asked)."""
        if sop_uids is None:
            sop_uids = self.find_instances(study_uid, series_uid, where)
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        classes = self._classes.get(series_uid) or {}
        wanted = set(sop_uids)
        sop_classes = sorted({classes.get(s, "") for s in wanted} - {""})
        if not sop_classes:
            self.find_instances(study_uid, series_uid, where)
            sop_classes = sorted({self._classes[series_uid].get(s, "") for s in wanted} - {""})
        if len(sop_classes) > 100:
            raise DataError(f"a series of {len(sop_classes)} SOP classes ({where})", path=self.name,
                            hint="pull it over DICOMweb")
        received: list[Dataset] = []
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            with lock:
                received.append(ds)
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(GET)
        roles = []
        for uid in sop_classes:
            ae.add_requested_context(uid)
            roles.append(build_role(uid, scp_role=True))
        doing = "retrieving a series (C-GET)"
        assoc = self._associate(ae, doing, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        query = Dataset()
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        if wanted == set(classes):
            query.QueryRetrieveLevel = "SERIES"
        else:
            query.QueryRetrieveLevel = "IMAGE"
            query.SOPInstanceUID = sorted(wanted)
        failed = 0
        try:
            for status, _ in assoc.send_c_get(query, GET):
                code = self._status(status, doing, f" ({where})")
                if code not in _PENDING and code != _SUCCESS:
                    failed = int(status.get("NumberOfFailedSuboperations", 0) or 0) or 1
        finally:
            assoc.release()
        got = [ds for ds in received if str(ds.get("SOPInstanceUID", "")) in wanted]
        if failed and not got:
            raise DataError(f"C-GET failed ({where})", path=self.name,
                            hint="check that the server allows C-GET from medres's AE title; rerun")
        yield from got

    # -- C-STORE ------------------------------------------------------------------------------------
    def store(self, datasets: Sequence[Dataset], where: str = "") -> None:
        ae = self._ae()
        for uid in sorted({str(ds.SOPClassUID) for ds in datasets}):
            syntaxes = [str(ds.file_meta.TransferSyntaxUID) for ds in datasets if str(ds.SOPClassUID) == uid]
            ae.add_requested_context(uid, list(dict.fromkeys([*syntaxes, "1.2.840.10008.1.2.1"])))
        assoc = self._associate(ae, f"storing ({where})")
        try:
            for ds in datasets:
                code = self._status(assoc.send_c_store(ds), "storing", f" ({where})")
                if code not in (_SUCCESS, 0xB000, 0xB007, 0xB006):
                    raise DataError(f"the server answered C-STORE status 0x{code:04X} ({where})",
                                    path=self.name, hint="check that it accepts storage from medres's AE")
        finally:
            assoc.release()
