"""Pull a cohort from a PACS (DICOMweb or DIMSE) into a pseudonymous export: the library behind
``python -m medres.data.pull`` (:mod:`medres.data.pull`, whose text describes what it does)."""

from __future__ import annotations

import csv
import errno
import hashlib
import hmac
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom.dataset import Dataset

from medres.data.pacs.auth import ServerUnavailable
from medres.data.pacs.dicomweb import Received
from medres.errors import ConfigError, DataError, did_you_mean
from medres.files import WRITTEN_LIST, save_written, written_list

__all__ = ["PullResult", "SeriesResult", "Server", "pull", "pseudonym", "parse_query", "read_accessions",
           "load_rules", "summary"]

log = logging.getLogger("medres.data.pacs")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_PROJECTION = {"CR", "DX", "MG", "IO", "PX", "XA", "RF"}
_ANNOTATIONS = {"SEG", "RTSTRUCT"}  # never filtered out: the index reads them as masks
_STUDY = re.compile(r"s[0-9a-f]{12}")  # the pull's study folders (pseudonyms)


class Server(Protocol):
    """What the pull needs of a PACS (DICOMweb and DIMSE give the same). A server that also has
    ``receive`` (same arguments as ``retrieve``, yielding :class:`Received`: the bytes as sent, header
    checked) is read through it, and those bytes are written unchanged."""

    name: str
    batch: str  # "instance": a resumed series' instances are retrieved one by one; "series": together

    def find_studies(self, filters: dict[str, str], limit: int) -> list[Dataset]: ...
    def find_series(self, study_uid: str, where: str = "") -> list[Dataset]: ...
    def find_instances(self, study_uid: str, series_uid: str, where: str = "") -> list[str]: ...
    def header(self, study_uid: str, series_uid: str, sop_uid: str, where: str = "") -> Dataset: ...
    def retrieve(self, study_uid: str, series_uid: str, sop_uids: Sequence[str] | None, where: str = ""
                 ) -> Iterable[Dataset]: ...


def pseudonym(key: bytes, field_name: str, value: str) -> str:
    """The index's pseudonym of an id (HMAC-SHA256 under the project key, 16 hex digits)."""
    return hmac.new(key, f"{field_name}\0{value}".encode(), hashlib.sha256).hexdigest()[:16]


@dataclass
class SeriesResult:
    study: str  # pseudonyms only
    series: str
    expected: int = 0  # NumberOfSeriesRelatedInstances (or the instance list's length)
    listed: int = 0
    on_disk: int = 0
    fetched: int = 0
    status: str = ""  # "complete", "short", "skipped: <reason>", "failed: <reason>"


@dataclass
class PullResult:
    out: Path
    studies: int = 0
    series: list[SeriesResult] = field(default_factory=list)
    accessions_not_found: int = 0
    accessions_ambiguous: int = 0

    @property
    def short(self) -> list[SeriesResult]:
        return [s for s in self.series if s.status.startswith(("short", "failed"))]

    @property
    def fetched(self) -> int:
        return sum(s.fetched for s in self.series)


def parse_query(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` filters (DICOM keywords, e.g. ``Modality=CT StudyDate=20210101-20211231``)."""
    from pydicom.datadict import dictionary_keyword, keyword_dict

    filters: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--query {item!r} is not KEY=VALUE", hint="e.g. --query Modality=CT")
        if key not in keyword_dict:
            raise ConfigError(f"--query: {key!r} is not a DICOM keyword{did_you_mean(key, keyword_dict)}",
                              hint="use the keyword as the DICOM standard spells it, e.g. StudyDate")
        filters[dictionary_keyword(keyword_dict[key])] = value.strip()
    return filters


def read_accessions(path: str | os.PathLike[str]) -> list[str]:
    """The ``AccessionNumber`` column of a CSV (empty cells left out, order kept, duplicates once)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "AccessionNumber" not in (reader.fieldnames or []):
                raise DataError("has no AccessionNumber column", path=path,
                                hint="a CSV with a header row naming the column AccessionNumber")
            values = [str(r["AccessionNumber"] or "").strip() for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot be read ({type(exc).__name__})", path=path,
                        hint="a UTF-8 CSV with an AccessionNumber column") from None
    return list(dict.fromkeys(v for v in values if v))


def load_rules(config: str | None) -> Any:
    """The ``data.index`` rules of a config file (or a shipped config's name)."""
    from medres.config import load_config

    return load_config(config).data.index


def _skip_reason(series: Dataset, rules: Any) -> str:
    """Why a series (its QIDO/C-FIND attributes) cannot be kept under ``rules``, before any download."""
    modality = str(series.get("Modality", "") or "")
    if modality in _ANNOTATIONS:  # the index turns them into the kept series' masks
        return ""
    if rules.modalities and modality not in rules.modalities:
        return f"modality {modality or '(none)'} is not one of {list(rules.modalities)}"
    count = series.get("NumberOfSeriesRelatedInstances")
    if modality not in _PROJECTION and count not in (None, "") and int(count) < rules.min_slices:
        return f"{int(count)} instance(s), fewer than the {rules.min_slices} slices required"
    return ""


def _header_reason(header: Dataset, rules: Any) -> str:
    """Why a series cannot be kept, from one instance's header (ImageType, orientation)."""
    from medres.data.index.series import orientation_of

    image_type = [str(x).upper() for x in (header.get("ImageType") or [])]
    if rules.exclude_localizers and "LOCALIZER" in image_type:
        return "a localizer (ImageType LOCALIZER)"
    if rules.original_only and image_type and image_type[0] != "ORIGINAL":
        return "not ORIGINAL (ImageType " + "\\".join(image_type) + ")"
    iop = header.get("ImageOrientationPatient")
    if rules.orientations and iop and str(header.get("Modality", "")) not in _PROJECTION:
        orientation = orientation_of([float(v) for v in iop], rules.oblique_deg)
        if orientation not in rules.orientations:
            return f"{orientation} orientation, not {'/'.join(rules.orientations)}"
    return ""


class DiskFull(DataError):
    """The export's disk is full or read-only: the pull stops."""


def _os_cause(exc: OSError) -> OSError:
    """The first OSError with an errno in ``exc``'s chain (``exc`` itself when none has one)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


class _Writer:
    """Writes instances into ``folder`` atomically (a new temporary file, then a rename) and keeps the
    names it wrote (relative to the export) for the export's written-files list."""

    def __init__(self, server_name: str, out: Path) -> None:
        self.server_name = server_name
        self.out = out
        self.lock = threading.Lock()
        self.written: set[str] = set()

    def write(self, item: Dataset | Received, folder: Path, where: str) -> Path:
        """``item`` as ``folder/<SOPInstanceUID>.dcm``: a :class:`Received`'s bytes as the server sent
        them, a Dataset encoded as a DICOM file."""
        sop = item.sop_uid if isinstance(item, Received) else str(item.get("SOPInstanceUID", ""))
        if not _UID.fullmatch(sop):
            raise DataError(f"the server sent an instance without a valid SOPInstanceUID ({where})",
                            path=self.server_name, hint="check the server's data")
        target = folder / f"{sop}.dcm"
        tmp = None
        try:  # a new file (O_EXCL): a link planted under a temporary name is never written through
            fd, name = tempfile.mkstemp(prefix=f".{sop}.", suffix=".dcm.part", dir=folder)
            tmp = Path(name)
            if isinstance(item, Received):
                with os.fdopen(fd, "wb") as fh:
                    fh.write(item.data)
            else:
                os.close(fd)
                item.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, target)
            with self.lock:
                self.written.add(target.relative_to(self.out).as_posix())
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            cause = _os_cause(exc)  # pydicom re-raises a write error with the tag and without errno
            if cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # no later write can succeed: stop
                raise DiskFull(f"cannot write an instance ({where}): {cause.strerror}", path=folder,
                               hint="free disk space (or pull to another disk), then rerun: what is complete "
                                    "is kept") from None
            raise DataError(f"cannot write an instance ({where}): {cause.strerror or type(exc).__name__}",
                            path=folder, hint="free disk space or fix permissions, then rerun (what is "
                                              "complete is kept)") from None
        except Exception as exc:  # pydicom cannot encode what arrived
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise DataError(f"an instance could not be written as DICOM ({where}: {type(exc).__name__})",
                            path=self.server_name, hint="check the server's data") from None
        return target


def _claim_export(out: Path) -> tuple[set[str], bool]:
    """(what earlier pulls wrote in ``out``, whether its :data:`medres.files.WRITTEN_LIST` exists). A
    new or empty folder, or an export a pull wrote (its list, or, from before the list, nothing but
    study-pseudonym folders); anything else, or a link, is refused before anything is written."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError("the export folder (--out) is a symbolic link or a file", path=out,
                        hint="choose a new folder (or one an earlier pull wrote) for --out")
    if not out.exists():
        return set(), False
    if (out / WRITTEN_LIST).is_file():
        return set(written_list(out)), True
    foreign = [e for e in out.iterdir() if e.is_symlink() or not e.is_dir() or not _STUDY.fullmatch(e.name)]
    if foreign:
        raise DataError(f"the export folder (--out) holds {len(foreign)} entr(ies) no pull wrote; medres "
                        "pulls only into a new or empty folder or one it pulled into", path=out,
                        hint="choose a new folder for --out")
    return set(), False


def _series_folder(out: Path, study: str, series: str) -> Path:
    """``out/study/series``, made; never reached through a symbolic link (that would write elsewhere)."""
    folder = out / study / series
    for part in (out / study, folder):
        if part.is_symlink() or (part.exists() and not part.is_dir()):
            raise DataError(f"{part.relative_to(out).as_posix()} in the export is a symbolic link or a "
                            "file; medres writes only into folders it made", path=out,
                            hint="move it away (or pull into a new folder)")
        part.mkdir(exist_ok=True)
    return folder


def _save_list(out: Path, names: set[str]) -> None:
    """Write the export's written-files list; a disk too full for it is a warning (the error that
    stopped the pull is the one to report), and the next pull lists what it finds of its own again."""
    if not out.is_dir() or (not names and not (out / WRITTEN_LIST).exists()):
        return
    try:
        save_written(out, names)
    except OSError as exc:
        log.warning("the export's list of written files could not be saved (%s)", exc.strerror)


def _present(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p.name[:-4] for p in folder.iterdir() if p.name.endswith(".dcm") and not p.name.startswith(".")}


def _studies(server: Server, accessions: Sequence[str] | None, filters: dict[str, str], max_studies: int,
             result: PullResult) -> list[Dataset]:
    if "Modality" in filters:  # at study level the modality is ModalitiesInStudy
        filters["ModalitiesInStudy"] = filters.pop("Modality")
    if accessions is None:
        if not filters:
            raise ConfigError("neither --accessions nor --query was given",
                              hint="pass a CSV with an AccessionNumber column or filters such as "
                                   "--query Modality=CT StudyDate=20210101-20211231")
        found = server.find_studies(filters, limit=max_studies + 1)
        if len(found) > max_studies:
            raise DataError(f"the query matches more than --max-studies {max_studies} studies",
                            path=server.name, hint="narrow the query (e.g. a StudyDate range) or raise "
                                                   "--max-studies")
        return found
    if len(accessions) > max_studies:
        raise DataError(f"{len(accessions)} accession numbers, more than --max-studies {max_studies}",
                        path=server.name, hint="raise --max-studies")
    studies: dict[str, Dataset] = {}
    for n, acc in enumerate(accessions, start=1):
        found = server.find_studies({**filters, "AccessionNumber": acc}, limit=3)
        if not found:
            result.accessions_not_found += 1
            log.warning("accession on row %d of the accessions file matches no study on %s", n, server.name)
        elif len(found) > 1:
            result.accessions_ambiguous += 1
            log.warning("accession on row %d of the accessions file matches %d studies on %s: skipped "
                        "(pull them with --query StudyInstanceUID=... if both are wanted)", n, len(found),
                        server.name)
        else:
            studies[str(found[0].StudyInstanceUID)] = found[0]
    return list(studies.values())


def pull(server: Server, out: str | os.PathLike[str], *, accessions: Sequence[str] | None = None,
         filters: dict[str, str] | None = None, rules: Any = None, workers: int = 4, max_studies: int = 1000,
         key: bytes | None = None, progress: bool = True) -> PullResult:
    """Pull the matching studies' series from ``server`` into ``out`` (see the module's text).

    Args:
        accessions: accession numbers (one study each; none or several matches are listed, not pulled).
        filters: study-level attribute filters (DICOM keywords).
        rules: a ``data.index`` config: series it could not keep are not downloaded; None keeps all.
        key: the project key (default: :func:`medres.data.project_key.project_key`).
    """
    from medres.data.project_key import project_key
    from medres.progress import track

    out = Path(out)
    key = key or project_key(getattr(rules, "key_file", None))
    listed, has_list = _claim_export(out)
    result = PullResult(out=out)
    studies = _studies(server, accessions, dict(filters or {}), max_studies, result)
    result.studies = len(studies)
    if not studies:
        raise DataError("no study matches", path=server.name,
                        hint="check the accession numbers or the --query filters")
    writer = _Writer(server.name, out)
    jobs: list[tuple[SeriesResult, str, str, list[str] | None, Path]] = []
    for study in studies:
        study_uid = str(study.StudyInstanceUID)
        s_name = f"s{pseudonym(key, 'study', study_uid)[:12]}"
        for series in server.find_series(study_uid, where=f"study {s_name}"):
            series_uid = str(series.SeriesInstanceUID)
            r_name = f"r{pseudonym(key, 'series', series_uid)[:12]}"
            where = f"study {s_name}, series {r_name}"
            count = series.get("NumberOfSeriesRelatedInstances")
            row = SeriesResult(s_name, r_name, expected=int(count) if count not in (None, "") else 0)
            result.series.append(row)
            reason = _skip_reason(series, rules) if rules is not None else ""
            folder = out / s_name / r_name
            present = _present(folder)
            # a new series over DICOMweb is streamed whole without listing its instances first
            stream_all = not reason and rules is None and not present and server.batch == "instance" \
                and row.expected > 0
            sops = [] if reason or stream_all else server.find_instances(study_uid, series_uid, where=where)
            row.listed = len(sops)
            row.expected = row.expected or row.listed
            image = str(series.get("Modality", "")) not in _ANNOTATIONS
            if not reason and rules is not None and sops and image:
                reason = _header_reason(server.header(study_uid, series_uid, sops[0], where=where), rules)
            if reason:
                row.status = f"skipped: {reason}"
                continue
            out.mkdir(parents=True, exist_ok=True)
            _series_folder(out, s_name, r_name)
            if not has_list:  # an export from before the list: what a pull left in its own layout
                listed |= {f"{s_name}/{r_name}/{p}.dcm" for p in present}
            missing = None if stream_all else [s for s in sops if s not in present]
            if missing is None or missing:
                jobs.append((row, study_uid, series_uid, missing, folder))
    tasks: list[tuple[SeriesResult, Callable[[], int]]] = []
    fetch = getattr(server, "receive", server.retrieve)  # the bytes as sent where the server can
    for row, study_uid, series_uid, missing, folder in jobs:
        where = f"study {row.study}, series {row.series}"
        # a whole series in one streamed request; a resumed one instance by instance (DICOMweb)
        whole = missing is None or len(missing) == row.listed
        batches = [[s] for s in missing] if missing and server.batch == "instance" and not whole \
            else [missing]
        for batch in batches:
            def task(study_uid: str = study_uid, series_uid: str = series_uid,
                     batch: list[str] | None = batch, folder: Path = folder, where: str = where) -> int:
                n = 0
                for item in fetch(study_uid, series_uid, batch, where=where):
                    writer.write(item, folder, where)
                    n += 1
                return n
            tasks.append((row, task))
    total = sum(row.expected if missing is None else len(missing) for row, _, _, missing, _ in jobs)
    try:
        if tasks:
            with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
                pending: dict[Future, SeriesResult] = {}
                queue = iter(tasks)
                done_count = iter(track(range(total), desc=f"pull from {server.name}", unit="instances",
                                        progress=progress))
                for row, task in queue:  # at most 2 x workers queued: memory stays bounded
                    pending[pool.submit(task)] = row
                    if len(pending) >= 2 * max(1, workers):
                        _drain(pending, done_count)
                while pending:
                    _drain(pending, done_count)
                for _ in done_count:
                    pass
    finally:  # the export's one written-files list (medres.files): what every pull into it wrote
        _save_list(out, listed | writer.written)
    for row in result.series:
        if row.status:
            continue
        row.on_disk = len(_present(out / row.study / row.series))
        if row.on_disk >= row.expected and row.on_disk >= row.listed:
            row.status = "complete"
        else:
            row.status = f"short: {row.on_disk} of {row.expected} instance(s) on disk"
    return result


def _drain(pending: dict[Future, SeriesResult], counter: Any) -> None:
    """Collect the tasks that finished: count their instances, note a failed series, stop on a dead server."""
    done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
    for fut in done:
        row = pending.pop(fut)
        try:
            n = fut.result()
        except (ServerUnavailable, DiskFull):
            for other in pending:
                other.cancel()
            raise
        except DataError as err:
            if not row.status:  # one line per series, not per instance
                row.status = f"failed: {err.reason}"
                log.warning("%s", err)
            continue
        row.fetched += n
        for _ in range(n):
            next(counter, None)


def summary(result: PullResult) -> str:
    """What a pull did, in a few lines (pseudonyms only)."""
    kept = [s for s in result.series if not s.status.startswith("skipped")]
    lines = [f"medres pull: {result.studies} stud(ies), {len(result.series)} series ({len(kept)} pulled, "
             f"{len(result.series) - len(kept)} skipped by the series filter); {result.fetched} instance(s) "
             f"fetched -> {result.out}"]
    if result.accessions_not_found or result.accessions_ambiguous:
        lines.append(f"  accessions matching no study: {result.accessions_not_found}; matching several "
                     f"(skipped): {result.accessions_ambiguous}")
    for s in result.series:
        if s.status.startswith("skipped"):
            lines.append(f"  {s.study}/{s.series}: {s.status}")
    for s in result.short:
        lines.append(f"  INCOMPLETE {s.study}/{s.series}: {s.status} (rerun to fetch what is missing)")
    return "\n".join(lines)
