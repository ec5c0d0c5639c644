"""DIMSE (C-FIND, C-GET or C-MOVE, C-STORE) through ``pynetdicom``, with medres's errors.

The same operations as :class:`medres.data.pacs.dicomweb.DicomWeb`, so the pull and the push take
either. Every association has connection, ACSE, DIMSE and network timeouts; a refused association, an
abort or a failure status is a :class:`medres.DataError` naming the server (host, port, AE title).
"""

from __future__ import annotations

import contextlib
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
                 timeout_s: float = 60.0, move_dest: str | None = None, move_host: str = "127.0.0.1",
                 move_port: int = 11112) -> None:
        try:
            import pynetdicom  # noqa: F401
        except ImportError:
            raise ConfigError("DIMSE needs the pynetdicom package",
                              hint="pip install 'medres[pacs]'") from None
        for what, aet in (("--called-aet", called_aet), ("--calling-aet", calling_aet),
                          ("--move-dest", move_dest or "MEDRES")):
            if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
                raise ConfigError(f"{what} {aet!r} is not an AE title (1-16 ASCII characters)")
        self.host, self.port = parse_address(address)
        self.called_aet, self.calling_aet, self.timeout_s = called_aet, calling_aet, float(timeout_s)
        self.name = f"dicom://{self.host}:{self.port} (AE {called_aet})"
        self._classes: dict[str, dict[str, str]] = {}  # series UID -> {SOP instance UID: SOP class UID}
        # C-MOVE: the PACS sends to ``move_dest``, a Storage SCP medres runs on move_host:move_port while
        # retrievals are under way; what arrives is routed to the retrieval waiting for its series
        self.move_dest, self.move_host, self.move_port = move_dest, move_host, int(move_port)
        self._move_lock, self._life_lock = threading.Lock(), threading.Lock()
        self._move_users = 0
        self._listener: Any = None
        self._moved: dict[str, list[Dataset]] = {}  # series UID -> instances received for it
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
        """The instances ``sop_uids`` of a series with one C-GET, or C-MOVE when a move destination is
        set (the series level when all are asked)."""
        if sop_uids is None:
            sop_uids = self.find_instances(study_uid, series_uid, where)
        if self.move_dest:
            yield from self._retrieve_move(study_uid, series_uid, sop_uids, where)
            return
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

    # -- C-MOVE -------------------------------------------------------------------------------------
    def _sink(self, ds: Dataset) -> int:
        from medres.data.pacs.listen import NOT_AUTHORIZED, SUCCESS

        with self._move_lock:
            waiting = self._moved.get(str(ds.get("SeriesInstanceUID", "")))
            if waiting is None:
                log.warning("C-MOVE: %s sent an instance of a series no retrieval waits for: refused",
                            self.name)
                return NOT_AUTHORIZED
            waiting.append(ds)
        return SUCCESS

    @contextlib.contextmanager
    def _receiving(self, series_uid: str) -> Iterator[list[Dataset]]:
        """The list the temporary Storage SCP fills with ``series_uid``'s instances while the block runs
        (the SCP runs while any retrieval needs it)."""
        from medres.data.pacs.listen import Allowed, Listener

        with self._life_lock:  # start and stop under their own lock: the SCP's handler takes _move_lock
            with self._move_lock:
                if series_uid in self._moved:
                    raise DataError("a series is already being retrieved", path=self.name)
                self._moved[series_uid] = received = []
            if self._move_users == 0:
                assert self.move_dest is not None
                try:
                    pacs = [Allowed(self.called_aet, self.host)]  # the PACS sends with its own AE title
                    self._listener = Listener(None, aet=self.move_dest, host=self.move_host,
                                              port=self.move_port, allow=pacs, sink=self._sink,
                                              min_free_bytes=0).start()
                except BaseException:
                    with self._move_lock:
                        self._moved.pop(series_uid, None)
                    raise
            self._move_users += 1
        try:
            yield received
        finally:
            with self._move_lock:
                self._moved.pop(series_uid, None)
            with self._life_lock:
                self._move_users -= 1
                if self._move_users == 0:
                    listener, self._listener = self._listener, None
                    listener.stop(wait_s=self.timeout_s)

    def _retrieve_move(self, study_uid: str, series_uid: str, sop_uids: Sequence[str], where: str
                       ) -> Iterator[Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE

        wanted = set(sop_uids)
        ae = self._ae()
        ae.add_requested_context(MOVE)
        doing = "retrieving a series (C-MOVE)"
        query = Dataset()
        query.StudyInstanceUID, query.SeriesInstanceUID = study_uid, series_uid
        classes = self._classes.get(series_uid)
        if classes is not None and wanted == set(classes):
            query.QueryRetrieveLevel = "SERIES"
        else:
            query.QueryRetrieveLevel = "IMAGE"
            query.SOPInstanceUID = sorted(wanted)
        failed, unknown, refused = 0, False, 0
        with self._receiving(series_uid) as received:
            assoc = self._associate(ae, doing)
            try:
                for status, _ in assoc.send_c_move(query, self.move_dest, MOVE):
                    code = self._status(status, doing, f" ({where})")
                    if code not in _PENDING and code != _SUCCESS:
                        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0) or 1
                        tried = sum(int(status.get(f"Number{k}Suboperations", 0) or 0)
                                    for k in ("OfCompleted", "OfFailed", "OfWarning"))
                        # 0xA801: destination unknown; a failure before any sub-operation (Orthanc: 0xC000)
                        unknown = code == 0xA801 or (tried == 0 and code >= 0xA000)
                        refused = code
            finally:
                if assoc.is_established:
                    assoc.release()
            got = [ds for ds in received if str(ds.get("SOPInstanceUID", "")) in wanted]
        if unknown and not got:
            raise ServerUnavailable(f"the server refused to send to the move destination AE "
                                    f"{self.move_dest!r} (C-MOVE status 0x{refused:04X}, nothing sent)",
                                    path=self.name,
                                    hint=f"register medres in the PACS as AE {self.move_dest!r} at this "
                                         f"host, port {self.move_port} (or pull with C-GET: leave out "
                                         "--move-dest)")
        if failed and not got:
            raise DataError(f"C-MOVE failed ({where})", path=self.name,
                            hint=f"check that the server may send to AE {self.move_dest!r} at this host, "
                                 f"port {self.move_port}, and that nothing else listens there; rerun")
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
