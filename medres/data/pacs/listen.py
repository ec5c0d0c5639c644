"""A C-STORE SCP (pynetdicom) that files what a PACS sends into the pull's export layout: the library
behind ``python -m medres.data.listen`` and the temporary Storage SCP of a C-MOVE pull.

Each instance is written as ``OUT/<study pseudonym>/<series pseudonym>/<SOPInstanceUID>.dcm`` through
the pull's writer (a temporary file, then a rename), so a file with its final name is complete. Only
the calling AE titles (and addresses) on the allow-list may associate; others are rejected at
association time and logged by address and AE title only. Past ``max_bytes`` in the export or below
``min_free_bytes`` on its disk, a C-STORE is refused with an out-of-resources status (0xA700).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from medres.data.pacs.pull import DiskFull, _claim_export, _save_list, _series_folder, _Writer, pseudonym
from medres.errors import ConfigError, DataError

__all__ = ["Allowed", "Listener", "parse_allow", "OUT_OF_RESOURCES", "NOT_AUTHORIZED", "CANNOT_UNDERSTAND",
           "DEFAULT_MIN_FREE"]

log = logging.getLogger("medres.data.pacs")
SUCCESS, OUT_OF_RESOURCES, NOT_AUTHORIZED, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0x0124, 0xC000
DEFAULT_MIN_FREE = 1 << 30  # 1 GiB left on the export's disk


@dataclass(frozen=True)
class Allowed:
    """One allow-list entry: a calling AE title, optionally bound to one address (IP or host name)."""

    aet: str
    address: str | None = None

    def admits(self, aet: str, address: str) -> bool:
        if aet.strip() != self.aet:
            return False
        return self.address is None or address in _addresses(self.address)


def _addresses(host: str) -> set[str]:
    """``host``'s IP addresses (a literal address is itself; a name is resolved)."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


def parse_allow(items: Sequence[str]) -> list[Allowed]:
    """``AET`` or ``AET@ADDRESS`` entries as :class:`Allowed` (none is refused: no one could send)."""
    allowed = []
    for item in items:
        aet, _, address = str(item).partition("@")
        aet = aet.strip()
        if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise ConfigError(f"--allow {item!r}: {aet!r} is not an AE title (1-16 ASCII characters)",
                              hint="e.g. --allow PACS@10.0.0.5 or --allow MODALITY1")
        allowed.append(Allowed(aet, address.strip() or None))
    if not allowed:
        raise ConfigError("no --allow entry: no PACS could send", hint="e.g. --allow PACS@10.0.0.5")
    return allowed


def _export_bytes(out: Path) -> int:
    """The size of the DICOM files already in the export."""
    total = 0
    for root, _, files in os.walk(out):
        for name in files:
            if name.endswith(".dcm"):
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(root, name)).st_size
    return total


class Listener:
    """A Storage SCP on ``host:port`` with AE title ``aet``, accepting only the ``allow`` list.

    By default each instance is written into ``out`` (see the module's text); ``sink(ds)`` instead
    receives every instance (the C-MOVE pull keeps them in memory) and returns a C-STORE status.
    """

    def __init__(self, out: str | os.PathLike[str] | None, *, aet: str = "MEDRES", host: str = "127.0.0.1",
                 port: int = 11112, allow: Sequence[Allowed | str] = (), max_bytes: int | None = None,
                 min_free_bytes: int = DEFAULT_MIN_FREE, key: bytes | None = None,
                 sink: Callable[[Dataset], int] | None = None) -> None:
        if not aet or len(aet) > 16 or not aet.isascii() or "\\" in aet:
            raise ConfigError(f"--aet {aet!r} is not an AE title (1-16 ASCII characters)")
        if out is None and sink is None:
            raise ConfigError("a listener needs an export folder (--out)")
        self.allow = [a if isinstance(a, Allowed) else parse_allow([a])[0] for a in allow]
        if not self.allow:
            parse_allow([])
        self.aet, self.host, self.port = aet, host, int(port)
        self.max_bytes, self.min_free_bytes = max_bytes, int(min_free_bytes)
        self.sink = sink
        self.out = Path(out) if out is not None else None
        self.received = 0
        self.refused = 0
        self._busy = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._server: Any = None
        self._ae: Any = None
        if self.out is not None:
            from medres.data.project_key import project_key

            self.key = key or project_key()
            self._listed, _ = _claim_export(self.out)
            self.out.mkdir(parents=True, exist_ok=True)
            self._writer = _Writer(f"{aet}@{host}:{port}", self.out)
            self._bytes = _export_bytes(self.out)
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its own log lines name ids

    @property
    def name(self) -> str:
        return f"dicom://{self.host}:{self.port} (AE {self.aet})"

    # -- events -------------------------------------------------------------------------------------
    def _on_requested(self, event: Any) -> None:
        requestor = event.assoc.requestor  # its ae_title is set only once the association is accepted
        aet, address = str(requestor.primitive.calling_ae_title or "").strip(), str(requestor.address)
        if self._stopping or not any(a.admits(aet, address) for a in self.allow):
            why = "stopping" if self._stopping else "not on the allow-list"
            log.warning("listener %s: association from AE %r at %s rejected (%s)", self.name, aet, address,
                        why)
            event.assoc.acse.send_reject(0x02 if self._stopping else 0x01, 0x01,
                                         0x01 if self._stopping else 0x03)

    def _on_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        if not any(a.admits(str(requestor.ae_title).strip(), str(requestor.address)) for a in self.allow):
            self.refused += 1
            return NOT_AUTHORIZED
        with self._cond:
            if self._stopping:
                self.refused += 1
                return OUT_OF_RESOURCES
            self._busy += 1
        try:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
            except Exception:  # noqa: BLE001 - what arrived does not decode: refuse it, keep serving
                self.refused += 1
                log.warning("listener %s: an instance that does not decode was refused", self.name)
                return CANNOT_UNDERSTAND
            status = self.sink(ds) if self.sink is not None else self._write(ds, event)
            if status == SUCCESS:
                self.received += 1
            else:
                self.refused += 1
            return status
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def _write(self, ds: Dataset, event: Any) -> int:
        assert self.out is not None
        study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
        if not study or not series:
            log.warning("listener %s: an instance without study or series UID was refused", self.name)
            return CANNOT_UNDERSTAND
        s_name = f"s{pseudonym(self.key, 'study', study)[:12]}"
        r_name = f"r{pseudonym(self.key, 'series', series)[:12]}"
        where = f"study {s_name}, series {r_name}"
        size = len(event.request.DataSet.getvalue()) if event.request.DataSet is not None else 0
        with self._cond:
            if self.max_bytes is not None and self._bytes + size > self.max_bytes:
                log.warning("listener %s: refused an instance (%s): the export would pass --max-bytes %d",
                            self.name, where, self.max_bytes)
                return OUT_OF_RESOURCES
            try:
                free = shutil.disk_usage(self.out).free
            except OSError:
                free = 0
            if free - size < self.min_free_bytes:
                log.warning("listener %s: refused an instance (%s): under %d bytes free on the export's disk",
                            self.name, where, self.min_free_bytes)
                return OUT_OF_RESOURCES
            self._bytes += size
        try:
            folder = _series_folder(self.out, s_name, r_name)
            target = folder / f"{ds.SOPInstanceUID}.dcm"
            if target.is_file():  # sent again: what is there is complete (written by rename)
                with self._cond:
                    self._bytes -= size
                return SUCCESS
            self._writer.write(ds, folder, where)
        except DiskFull as err:
            log.warning("listener %s: %s", self.name, err)
            return OUT_OF_RESOURCES
        except DataError as err:
            log.warning("listener %s: %s", self.name, err)
            return CANNOT_UNDERSTAND
        return SUCCESS

    def _on_closed(self, event: Any) -> None:
        self.save_list()

    def save_list(self) -> None:
        """Write the export's list of written files (after each association and at the stop)."""
        if self.out is not None:
            with self._writer.lock:
                names = self._listed | self._writer.written
            _save_list(self.out, names)

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self) -> Listener:
        """Start serving in background threads (returns at once)."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        ae.maximum_associations = 8
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_RELEASED, self._on_closed), (evt.EVT_ABORTED, self._on_closed)]
        try:
            self._server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise DataError(f"cannot listen on {self.host}:{self.port} ({why})", path=self.name,
                            hint="choose a free port (--port) or stop what listens there"
                            ) from None
        self._ae = ae
        self.port = int(self._server.server_address[1])
        return self

    def stop(self, wait_s: float = 30.0) -> None:
        """Refuse new associations, let the C-STOREs under way finish (up to ``wait_s``), close the
        associations and the socket, and save the written-files list."""
        with self._cond:
            self._stopping = True
            deadline = time.monotonic() + wait_s
            while self._busy and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
        if self._ae is not None:
            time.sleep(0.2)  # the answer to the last C-STORE goes out before the associations are closed
            self._ae.shutdown()  # aborts the associations still open, closes the socket
            self._ae = None
        self.save_list()

    def __enter__(self) -> Listener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _transfer_syntaxes() -> list[str]:
    from pynetdicom import ALL_TRANSFER_SYNTAXES as syntaxes

    return list(syntaxes)


ALL_TRANSFER_SYNTAXES = _transfer_syntaxes()
