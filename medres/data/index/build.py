"""From a hospital export to a manifest: ``python -m medres.data.index ROOT --out DIR [--labels L.csv]``.

Walks ROOT at any depth and recognises DICOM files by content (see :mod:`medres.data.index.headers`;
DICOMDIRs and other files are skipped and counted), reads headers only in worker processes, groups the
instances by SeriesInstanceUID (never by folder), describes every series and chooses the ones to train
on by the ``data.index`` rules. Writes:

- ``DIR/manifest.csv``: one row per chosen series, ready for ``medres.data.check`` and ``medres.train``;
  its ``image`` is ``series/<case_id>``, a folder holding links to exactly that series' files (so a
  series spread over folders, mixed with others in one folder, or one geometry part of a series loads
  through the ordinary series reader); ``mask`` is ``masks/<case_id>.nii.gz`` when a SEG/RTSTRUCT
  annotates it, else empty (not annotated);
- ``DIR/index.csv``: every series, annotation object, skipped file and unmatched labels row, with its
  verdict and reason;
- ``DIR/private/``: the header cache, ``files.csv`` (index file position -> path), ``series.csv``
  (index row -> its files' positions), ``pseudonyms.csv``
  (original ids and series descriptions -> pseudonyms). Only this folder holds anything identifying;
- ``DIR/.medres_written.json``: every file this command wrote in DIR (:mod:`medres.files`' one
  written-files list): the only files a later run replaces or removes (an index from before the list:
  its ``private/written.json``, read once and replaced by the list).

``--out`` is a new or empty folder, or one this command wrote; never the export, a folder inside it or
one around it (:func:`medres.files.check_output`), and a ``series/<case_id>`` folder medres did not
write is refused, never deleted. Copies and hard links are made only to the very file the walk saw
(same device and inode, opened without following a link); a folder of the export with more than
``data.max_files_per_series`` entries, and every further name of a hard-linked file, are skipped
unread and listed in ``index.csv`` with the reason.

Pseudonyms are HMAC-SHA256 of the original ids under a project key (``MEDRES_PROJECT_KEY`` or the key
file, generated on first use, never written to DIR), so one project's runs agree and nobody without the
key can link them back. The labels file is matched on ``--labels-key`` in the same keyed space.
Messages name files by their position in ``private/files.csv``, never by path (a folder may be named
after a patient).
"""

from __future__ import annotations

import csv
import errno
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medres.data.index.annotations import attach_annotations
from medres.data.index.headers import read_header
from medres.data.index.series import Instance, Series, describe, group_series, select_series
from medres.data.project_key import project_key, write_link_roots
from medres.data.readers.limits import DEFAULT_MAX_FILES_PER_SERIES
from medres.errors import ConfigError, DataError
from medres.files import (
    WRITTEN_LIST,
    FileChanged,
    check_output,
    check_replace,
    copy_checked,
    foreign_entries,
    link_checked,
    remove_written,
    save_written,
    written_list,
)
from medres.layout import check_distinct_files
from medres.safe_text import csv_cell

__all__ = ["index_dicom", "IndexResult", "project_key"]

log = logging.getLogger("medres.index")

CACHE_VERSION = 4  # 3: ViewPosition and ImagerPixelSpacing (radiographs); 4: Label Map SEGs, links
_ID_FIELDS = {"patient": "patient_id", "accession": "accession", "study": "study_uid", "series": "series_uid",
              "sop": "sop_uid", "for": "for_uid"}
_LABEL_KEYS = {"AccessionNumber": "accession", "PatientID": "patient", "StudyInstanceUID": "study"}
INDEX_COLUMNS = ["row", "kind", "verdict", "reason", "case_id", "patient_id", "study_id", "part", "modality",
                 "sop_class", "image_type", "orientation", "slices", "rows", "cols", "pixel_spacing",
                 "thickness", "gap", "regular", "contrast", "kernel", "series_number", "files", "folders",
                 "annotation_rows", "source_row", "label", "file", "view"]


@dataclass
class IndexResult:
    """What :func:`index_dicom` did: output paths and counts."""

    out: Path
    manifest: Path
    index: Path
    files: int = 0
    read: int = 0
    cached: int = 0
    skipped_files: Counter = field(default_factory=Counter)
    series: int = 0
    kept: int = 0
    seconds: float = 0.0


class _Pseudonyms:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.fingerprint = hmac.new(key, b"medres-index-fingerprint", hashlib.sha256).hexdigest()[:16]

    def __call__(self, field_name: str, value: str) -> str:
        if not value:
            return ""
        return hmac.new(self.key, f"{field_name}\0{value}".encode(), hashlib.sha256).hexdigest()[:16]

    def path_key(self, rel: str) -> str:
        return hashlib.blake2b(rel.encode("utf-8", "surrogateescape"), key=self.key[:64],
                               digest_size=12).hexdigest()


_LINK_OUT = "link_outside_export"  # a file status: a symbolic link that leaves the export (not followed)
_TOO_MANY = "folder_too_large"  # a folder past the per-folder bound: none of its entries read
_HARD_LINK = "hard_link_seen"  # another name of a file already listed: read (and linked) once


def _leaves(link: str, real_root: str) -> str:
    """Why the symbolic link ``link`` leads out of the export (its target resolved), or ""."""
    target = os.path.realpath(link)
    if os.path.commonpath([target, real_root]) == real_root:
        return ""
    what = "folder" if os.path.isdir(target) else "file"
    return f"a symbolic link to a {what} outside the export: not followed"


#: what the walk saw of a file it lists: (st_dev, st_ino, st_nlink, the resolved target of a link in the
#: export, "" for a plain file); the copy and the hard link are made only to that same file
_Seen = tuple[int, int, int, str]


def _walk(root: Path, skip: Path, skipped: dict[str, tuple[str, str]] | None = None,
          max_files: int = DEFAULT_MAX_FILES_PER_SERIES, seen: dict[str, _Seen] | None = None
          ) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file under root, sorted; ``skip`` (the output) left out.

    Folder links are not descended. Listed with size -1 and (status, reason) in ``skipped``, never read:
    a link whose target (resolved) lies outside the export; a folder of more than ``max_files`` entries
    (one row; the listing stops there, so a folder of millions costs nothing); every name of a
    hard-linked file but its first (sorted), so 20,000 links to one slice are read once. ``seen``, when
    given, gets each listed file's identity (:data:`_Seen`).
    """
    out: list[tuple[str, int, int]] = []
    skipped = {} if skipped is None else skipped
    keep = seen is not None  # every file's identity wanted (else only hard-linked files')
    seen = {} if seen is None else seen
    real_root = os.path.realpath(root)
    skip_s = str(skip)
    stack = [str(root)]
    root_len = len(str(root)) + 1
    while stack:
        folder = stack.pop()
        if folder == skip_s:
            continue
        here: list[tuple[str, int, int]] = []
        here_dirs, here_skipped, here_seen = [], {}, {}
        try:
            with os.scandir(folder) as it:
                for n, e in enumerate(it, start=1):
                    if n > max_files:
                        raise _TooMany
                    try:
                        rel = e.path[root_len:]
                        if e.name == WRITTEN_LIST:  # medres's own list of a pulled export: not data
                            continue
                        if e.is_dir(follow_symlinks=False):
                            here_dirs.append(e.path)
                            continue
                        link = e.is_symlink()
                        if link and (why := _leaves(e.path, real_root)):
                            here.append((rel, -1, e.stat(follow_symlinks=False).st_mtime_ns))
                            here_skipped[rel] = (_LINK_OUT, why)
                        elif e.is_file():
                            st = e.stat()
                            here.append((rel, st.st_size, st.st_mtime_ns))
                            if keep or (st.st_nlink > 1 and not link):
                                here_seen[rel] = (st.st_dev, st.st_ino, st.st_nlink,
                                                  os.path.realpath(e.path) if link else "")
                    except OSError:
                        continue
        except _TooMany:
            rel = folder[root_len:] or "."
            out.append((rel, -1, 0))
            skipped[rel] = (_TOO_MANY, f"a folder of more than {max_files} entries "
                                       "(data.max_files_per_series): none of them read")
            continue
        except OSError:
            continue
        out += here
        stack += here_dirs
        skipped.update(here_skipped)
        seen.update(here_seen)
    out.sort()
    named = [rel for rel, ident in seen.items() if ident[2] > 1 and not ident[3]]  # hard-linked files
    if named:  # the first name in sorted order is read, the others listed
        position = {rel: k for k, (rel, _, _) in enumerate(out)}
        first: dict[tuple[int, int], int] = {}
        for k in sorted(position[rel] for rel in named if rel in position):
            rel, _, mtime = out[k]
            n = first.setdefault(seen[rel][:2], k)
            if n != k:
                out[k] = (rel, -1, mtime)
                skipped[rel] = (_HARD_LINK, f"another name (a hard link) of file {n + 1}: read once")
    return out


class _TooMany(Exception):
    pass


def _load_cache(path: Path, fingerprint: str) -> dict[str, list]:
    """path key -> [size, mtime_ns, entry]; {} when absent, damaged, older or made under another key."""
    try:
        data = json.loads(path.read_text())
        if data.get("version") != CACHE_VERSION or data.get("key") != fingerprint:
            return {}
        ftab, ktab = data["fields"], data["keys"]
        out = {}
        for pk, (size, mtime, status, reason, fid, kid, ipp, sop, annotation) in data["files"].items():
            entry: dict[str, Any] = {"status": status, "reason": reason}
            if fid is not None:
                entry["fields"] = {**ftab[fid], "ipp": ipp}
                entry["keys"] = {**ktab[kid], "sop": sop}
            if annotation is not None:
                entry["annotation"] = annotation
            out[pk] = [size, mtime, entry]
        return out
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def _save_cache(path: Path, fingerprint: str, files: list[tuple[str, int, int]], path_keys: list[str],
                entries: list[dict[str, Any]]) -> None:
    """The header cache, with the fields and ids a series shares stored once (much faster to load)."""
    ftab: dict[str, int] = {}
    ktab: dict[str, int] = {}
    rows = {}
    for (_, size, mtime), pk, e in zip(files, path_keys, entries):
        fid = kid = ipp = sop = None
        if "fields" in e:
            f = {k: v for k, v in e["fields"].items() if k != "ipp"}
            fid = ftab.setdefault(json.dumps(f, sort_keys=True), len(ftab))
            keys = {k: v for k, v in e["keys"].items() if k != "sop"}
            kid = ktab.setdefault(json.dumps(keys, sort_keys=True), len(ktab))
            ipp, sop = e["fields"]["ipp"], e["keys"]["sop"]
        rows[pk] = [size, mtime, e["status"], e["reason"], fid, kid, ipp, sop, e.get("annotation")]
    data = {"version": CACHE_VERSION, "key": fingerprint, "fields": [json.loads(f) for f in ftab],
            "keys": [json.loads(k) for k in ktab], "files": rows}
    tmp = _new_temp(path)
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def series_identity(ids: dict[str, str]) -> dict[str, str]:
    """A series' identifying fields as ``private/pseudonyms.csv`` keeps them (read from a header's ids)."""
    return {"PatientID": ids["patient_id"], "AccessionNumber": ids["accession"],
            "StudyInstanceUID": ids["study_uid"], "SeriesInstanceUID": ids["series_uid"],
            "SeriesDescription": ids["description"]}


def _hashed(record: dict[str, Any], pseudo: _Pseudonyms) -> dict[str, Any]:
    """The cacheable part of a header record: fields, ids as pseudonyms, annotation references hashed."""
    out = {"status": record["status"], "reason": record.get("reason", "")}
    if record["status"] == "dicom":
        ids = record["ids"]
        out["fields"] = record["fields"]
        out["keys"] = {k: pseudo(k, ids.get(v, "")) for k, v in _ID_FIELDS.items()}
        if "annotation" in record:
            a = record["annotation"]
            out["annotation"] = {"kind": a["kind"], "series": pseudo("series", a.get("ref_series", "")),
                                 "sops": sorted(pseudo("sop", u) for u in a.get("ref_sops", [])),
                                 "for": pseudo("for", a.get("ref_for", ""))}
    return out


def _read_all(root: Path, paths: list[str], workers: int, progress: bool) -> list[dict[str, Any]]:
    full = [str(root / p) for p in paths]
    if workers <= 1 or len(full) < 64:
        return [read_header(p) for p in _progress(full, progress)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(_progress(pool.map(read_header, full, chunksize=64), progress, total=len(full)))


def _progress(it: Any, enabled: bool, total: int | None = None) -> Any:
    from medres.progress import track

    return track(it, desc="medres index: headers", total=total, unit="files", progress=enabled)


def _labels(path: Path | None, key_name: str, columns: list[str], pseudo: _Pseudonyms
            ) -> tuple[dict[str, list[int]], list[dict[str, str]]]:
    """Labels file rows keyed by the pseudonym of ``key_name`` (matched before any other hashing)."""
    if path is None:
        return {}, []
    try:  # every cell as text (ids like 00123 stay as written); csv, not pandas: starts in milliseconds
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            records = list(reader)
            header = list(reader.fieldnames or [])
    except (OSError, ValueError, csv.Error) as exc:  # ValueError: undecodable text, a NUL in the path
        raise DataError(f"the labels file cannot be read as CSV ({type(exc).__name__})", path=path,
                        hint="save it as UTF-8 CSV with a header row") from None
    missing = [c for c in [key_name, *columns] if c not in header]
    if missing:
        raise DataError(f"the labels file lacks the column(s) {missing} (it has {header})",
                        path=path, hint="name the key column as --labels-key and the label column 'label'")
    by_key: dict[str, list[int]] = defaultdict(list)
    rows = []
    for i, rec in enumerate(records):
        if any(rec.get(c) is None for c in [key_name, *columns]):
            raise DataError(f"labels row {i + 1} has fewer cells than the header", path=path,
                            hint="fix the row (or quote cells holding commas)")
        rows.append({c: rec[c].strip() for c in columns})
        by_key[pseudo(_LABEL_KEYS[key_name], rec[key_name].strip())].append(i + 1)
    return by_key, rows


_CASE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_SERIES_FILE = re.compile(r"series/([A-Za-z0-9._-]+)/([0-9]{5}\.dcm)")
_MARKERS = ("written.json", "links.json", "state.json", "header_cache.json")  # private/: an index output
#: the files an index run may write besides series/ and masks/ (all listed in the written-files list)
_OWN_FILES = ("manifest.csv", "index.csv", "private/header_cache.json", "private/state.json",
              "private/files.csv", "private/series.csv", "private/pseudonyms.csv", "private/masks.json",
              "private/links.json", "private/link_roots.txt")


def _series_files(n: int) -> list[str]:
    """The names medres gives the links of a series folder holding ``n`` files."""
    return [f"{k + 1:05d}.dcm" for k in range(n)]


def _claim_out(out: Path) -> tuple[dict[str, list[str]], set[str]]:
    """What medres wrote in ``out`` before: (case id -> the files it wrote in ``series/<case id>/``,
    every path the folder's written-files list names). The list is ``out/.medres_written.json``
    (:data:`medres.files.WRITTEN_LIST`); an index from before it is read from ``private/written.json``
    (or ``private/links.json``) and the names an index writes. ``({}, set())`` for a new or empty
    folder. A folder holding anything else, or whose ``series``/``masks``/``private`` is a symbolic
    link, is refused: medres never writes into (or prunes) a folder it did not write."""
    if not out.exists() and not out.is_symlink():
        return {}, set()
    if not out.is_dir():
        raise DataError("exists and is not a folder", path=out, hint="choose a new folder for --out")
    if not any(out.iterdir()):
        return {}, set()
    linked = [n for n in ("series", "masks", "private") if (out / n).is_symlink()]
    has_list = (out / WRITTEN_LIST).is_file()
    listed = set(written_list(out)) if has_list else set()
    ours = "index.csv" in listed if has_list else any((out / "private" / m).is_file() for m in _MARKERS)
    if linked or not ours:
        why = f"its {linked[0]}/ is a symbolic link" if linked else "it holds files and no medres index"
        raise DataError(f"--out must be a new or empty folder, or one medres.data.index wrote ({why}); "
                        "medres never writes into or deletes from a folder it did not write", path=out,
                        hint="choose a new folder for --out")
    if not has_list:
        listed = {*_OWN_FILES, "private/written.json"}
        try:  # a case id is one file name ([A-Za-z0-9._-], as the index makes them): nothing else is claimed
            old = _load_links(out / "private" / "written.json").get("series")
            if not isinstance(old, dict):
                old = {k: len(v) for k, v in _load_links(out / "private" / "links.json").items()}
            listed |= {f"series/{k}/{name}" for k, v in old.items() for name in _series_files(int(v))}
            masks = _load_links(out / "private" / "masks.json")
            listed |= {str(m["mask"]) for m in masks.values() if isinstance(m, dict) and m.get("mask")}
        except (AttributeError, TypeError, ValueError):
            pass
    series: dict[str, list[str]] = defaultdict(list)
    match = _SERIES_FILE.fullmatch
    for f in listed:
        if f.startswith("series/") and (m := match(f)) and m[1] not in (".", ".."):
            series[m[1]].append(m[2])
    return dict(series), listed


def _link_series(s: Series, root: Path, out: Path, how: str, previous: list[str] | None,
                 written: list[str], seen: dict[str, _Seen] | None) -> None:
    """``out/series/<case id>/`` holding the series' files (``how``: symlink, hardlink or copy). A copy
    or a hard link is made only to the file the walk saw (:func:`medres.files.copy_checked`).

    Raises:
        FileChanged: a file was swapped (for a link or another file) since the walk.
    """
    folder = out / "series" / s.case_id
    wanted = [i.path for i in s.instances]
    if previous == wanted and folder.is_dir() and not folder.is_symlink():
        return
    left = remove_written(folder, written) if written else foreign_entries(folder, ())
    if left:
        raise DataError(f"series/{s.case_id} holds {len(left)} file(s) medres did not write; medres will "
                        "not delete them", path=folder, hint="move them away or choose a new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    for k, inst in enumerate(s.instances):
        src, dst = os.path.abspath(root / inst.path), folder / f"{k + 1:05d}.dcm"
        if how == "symlink":
            os.symlink(src, dst)
            continue
        dev, ino, _, real = seen[inst.path]  # type: ignore[index]  (given for copy and hardlink)
        what = f"file {inst.position} of the export (private/files.csv)"
        if how == "hardlink":
            link_checked(real or src, dst, (dev, ino), what=what)
        else:
            copy_checked(real or src, dst, (dev, ino), what=what)


def _new_temp(path: Path) -> Path:
    """A new, empty temporary file beside ``path`` (``O_EXCL``: a link planted under a fixed temporary
    name would be written through)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:  # mode 0o666 less the umask, as open() would give the file itself
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))
            return tmp
        except FileExistsError:
            continue


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]], *, exact: bool = False) -> None:
    """A CSV for people (text cells made inert for spreadsheets: ``medres.safe_text.csv_cell``), or with
    ``exact`` one that medres reads back (the manifest: its labels and ids must stay as written)."""
    cell = (lambda v: v) if exact else csv_cell
    tmp = _new_temp(path)
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if r.get(k) is None else cell(r.get(k))) for k in columns})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fmt(value: Any) -> Any:
    return f"{value:.4g}" if isinstance(value, float) else value


def _os_errors_as_data_errors(index: Any) -> Any:
    """``index_dicom`` with an operating-system error (a full disk above all) as a DataError naming the
    output folder and its free space, never a traceback; the temporary files are removed where made."""

    @functools.wraps(index)
    def wrapped(root: str | os.PathLike[str], out: str | os.PathLike[str], **kw: Any) -> IndexResult:
        try:
            return index(root, out, **kw)
        except OSError as exc:
            raise _write_error(exc, Path(out).absolute()) from None
    return wrapped


def _write_error(exc: OSError, out: Path) -> DataError:
    name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    what = f"{name}: {exc.strerror or 'operating-system error'}"
    folder = next((p for p in (out, *out.parents) if p.exists()), Path(os.sep))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MB free on its disk"
    except OSError:
        free = "free space unknown"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DataError(f"the index could not be written ({what}; {free})", path=out,
                         hint="free disk space (or raise the quota / file-size limit, or choose an --out "
                              "with room) and run the index again: what it had finished is reused")
    return DataError(f"the index could not be written or its export read ({what}; {free})", path=out,
                     hint="check that the output folder is writable and the export readable, then run again")


@_os_errors_as_data_errors
def index_dicom(root: str | os.PathLike[str], out: str | os.PathLike[str], *,
                labels: str | os.PathLike[str] | None = None, labels_key: str | None = None,
                rules: Any = None, mask_labels: dict[int, str] | None = None,
                key_file: str | os.PathLike[str] | None = None, progress: bool = False,
                max_files_per_folder: int = DEFAULT_MAX_FILES_PER_SERIES) -> IndexResult:
    """Index a DICOM export and write ``out/manifest.csv``, ``out/index.csv`` and ``out/private/``.

    Args:
        root: the export's top folder (any layout).
        out: the output folder: new, empty, or one this command wrote; never the export, inside it or
            around it (:func:`medres.files.check_output`). Only files its written-files list
            (``out/.medres_written.json``, :mod:`medres.files`) names are ever replaced or removed.
        labels: optional CSV with a key column and the ``label_columns`` of the rules.
        labels_key: AccessionNumber, PatientID or StudyInstanceUID (default: the rules').
        rules: a :class:`medres.config.IndexConfig` (default: its defaults).
        mask_labels: ``data.mask_labels`` (index -> name) for SEG/RTSTRUCT conversion.
        key_file: project key file (``$MEDRES_PROJECT_KEY`` wins).
        progress: show a progress bar on stderr.
        max_files_per_folder: a folder of the export with more entries is listed as skipped, unread
            (``data.max_files_per_series``).
    """
    from medres.config import IndexConfig

    start = time.perf_counter()
    rules = rules or IndexConfig()
    root, out = Path(root).absolute(), Path(out).absolute()
    if not root.is_dir():
        raise DataError("the export folder does not exist or is not a folder", path=root)
    pseudo = _Pseudonyms(project_key(key_file or rules.key_file))  # a weak key is refused before any write
    check_output(out, inputs={"export folder": root, "labels file": labels}, what="output folder (--out)")
    has_list = (out / WRITTEN_LIST).is_file()
    written, listed = _claim_out(out)
    check_replace(out, _OWN_FILES, what="output folder (--out)", before_list=listed, listed=listed)
    saved = set(listed) if has_list else None

    def save_list(names: set[str]) -> None:  # rewritten only when it changes (an unchanged rerun: never)
        nonlocal saved
        if names != saved:
            save_written(out, names)
            saved = set(names)

    listed |= set(_OWN_FILES)
    save_list(listed)  # listed before anything is written: a crash leaves nothing unlisted
    private = out / "private"
    private.mkdir(parents=True, exist_ok=True)
    key_name = labels_key or rules.labels_key
    if key_name not in _LABEL_KEYS:
        raise ConfigError(f"labels key {key_name!r} is not one of {list(_LABEL_KEYS)}")
    label_index, label_rows = _labels(Path(labels) if labels else None, key_name, list(rules.label_columns),
                                      pseudo)
    result = IndexResult(out=out, manifest=out / "manifest.csv", index=out / "index.csv")

    skipped: dict[str, tuple[str, str]] = {}
    seen: dict[str, _Seen] | None = {} if rules.link != "symlink" else None  # copies: the file checked
    files = _walk(root, out, skipped, max_files_per_folder, seen)
    state_path = private / "state.json"
    state = _state_digest(files, rules, labels, mask_labels, pseudo.fingerprint, key_name)
    if _unchanged(state_path, state, out):  # nothing changed since the last run: its outputs stand
        saved = json.loads(state_path.read_text())["result"]
        result.files, result.cached, result.series, result.kept = len(files), len(files), saved["series"], \
            saved["kept"]
        result.skipped_files = Counter(saved["skipped_files"])
        result.seconds = time.perf_counter() - start
        return result
    state_path.unlink(missing_ok=True)
    cache_path = private / "header_cache.json"
    cache = _load_cache(cache_path, pseudo.fingerprint)
    entries: list[dict[str, Any]] = [None] * len(files)  # type: ignore[list-item]
    todo = []
    path_keys = [pseudo.path_key(rel) for rel, _, _ in files]
    for k, ((rel, size, mtime), pk) in enumerate(zip(files, path_keys)):
        hit = cache.get(pk)
        if size < 0:
            entries[k] = {"status": skipped[rel][0], "reason": skipped[rel][1]}
        elif hit is not None and hit[0] == size and hit[1] == mtime:
            entries[k] = hit[2]
        else:
            todo.append(k)
    workers = rules.workers or min(os.cpu_count() or 1, 8)
    fresh = _read_all(root, [files[k][0] for k in todo], workers, progress)
    identities: dict[str, dict[str, str]] = {}
    for k, record in zip(todo, fresh):
        entries[k] = _hashed(record, pseudo)
        if record["status"] == "dicom":
            identities[entries[k]["keys"]["series"]] = series_identity(record["ids"])
    result.files, result.read, result.cached = len(files), len(todo), len(files) - len(todo)
    if todo or len(cache) != len(files):
        _save_cache(cache_path, pseudo.fingerprint, files, path_keys, entries)

    images, annotations, file_rows = [], [], []
    for k, e in enumerate(entries):
        if e["status"] != "dicom":
            result.skipped_files[e["status"]] += 1
            file_rows.append({"kind": "file", "verdict": "skipped", "reason": e["reason"], "file": k + 1})
            continue
        inst = Instance(position=k + 1, path=files[k][0], fields=e["fields"], keys=e["keys"],
                        stamp=f"{files[k][1]}:{files[k][2]}")
        (annotations if "annotation" in e else images).append((inst, e.get("annotation")))
    series = group_series([i for i, _ in images], lambda key: f"c{key[:12]}")
    for s in series:
        describe(s, rules.oblique_deg)
    series.sort(key=lambda s: (s.keys["patient"], s.keys["study"], str(s.info["series_number"]).zfill(6),
                               s.case_id))
    for r, s in enumerate(series):
        s.row = r + 1
    # series/<case_id> and masks/<case_id>.nii.gz: two series never share a folder or a mask
    check_distinct_files(((s.case_id, s.case_id, s.row) for s in series), what="series folder")
    select_series(series, rules)
    _apply_labels(series, label_index, label_rows, _LABEL_KEYS[key_name], key_name, bool(labels))
    first_free = len(series) + 1
    masks_path = private / "masks.json"
    previous_masks = _load_links(masks_path)
    mask_names = {f"masks/{s.case_id}.nii.gz" for s in series if s.verdict == "kept"}
    check_replace(out, mask_names, what="output folder (--out)")
    listed |= mask_names
    save_list(listed)
    annotation_rows, masks_done = attach_annotations(series, annotations, first_free, root, out, rules,
                                                     mask_labels, previous_masks)
    if masks_done != previous_masks:
        masks_path.write_text(json.dumps(masks_done))
    extra_rows = []
    r = first_free + len(annotation_rows)
    for row in file_rows:
        row["row"] = r
        r += 1
        extra_rows.append(row)
    if labels:
        used = {n for s in series for n in s.label.get("_rows", [])}
        for n in range(1, len(label_rows) + 1):
            if n not in used and not any(n in rows for rows in label_index.values() if len(rows) > 1):
                extra_rows.append({"row": r, "kind": "labels", "verdict": "unmatched", "source_row": n,
                                   "reason": f"labels row {n} matches no study in the export "
                                             f"({key_name})"})
                r += 1

    previous_links = _load_links(private / "links.json")
    kept = [s for s in series if s.verdict == "kept"]
    foreign = [s.case_id for s in kept if s.case_id not in written
               and os.path.lexists(out / "series" / s.case_id)]
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise DataError(f"series/{foreign[0]}{more} exists but medres did not write it; medres will not "
                        "delete it", path=out / "series" / foreign[0],
                        hint="move it away or choose a new --out folder")
    # the files about to be written are listed before they exist, so a crash leaves nothing unlisted
    listed |= {f"series/{s.case_id}/{name}" for s in kept for name in _series_files(len(s.instances))}
    save_list(listed)
    links = {}
    for s in kept:
        try:
            _link_series(s, root, out, rules.link, previous_links.get(s.case_id), written.get(s.case_id, []),
                         seen)
        except FileChanged as err:  # swapped since the walk: the series is not used, nothing of it kept
            remove_written(out / "series" / s.case_id, _series_files(len(s.instances)))
            s.verdict, s.reason = "skipped", f"{err.reason}; run the index again"
            continue
        links[s.case_id] = [i.path for i in s.instances]
    kept = [s for s in kept if s.verdict == "kept"]
    _drop_stale(out / "series", {k: names for k, names in written.items() if k not in links})
    if rules.link == "symlink":  # read_manifest follows links into this export only (manifest.link_roots)
        write_link_roots(private / "link_roots.txt", [os.path.realpath(root)], pseudo.key)  # signed
    if links != previous_links:
        (private / "links.json").write_text(json.dumps(links))

    index_rows = [_series_row(s) for s in series] + annotation_rows + extra_rows
    _write_csv(out / "index.csv", INDEX_COLUMNS, index_rows)
    man_cols = ["case_id", "patient_id", "study_id", "image", "mask", *rules.label_columns, "modality",
                "orientation", "slices", "thickness", "kernel", "contrast", "index_row"]
    if any(s.info["orientation"] == "projection" for s in kept):  # radiographs: the view, a subgroup column
        man_cols.insert(man_cols.index("modality") + 1, "view")
    _write_csv(result.manifest, man_cols, [
        {"case_id": s.case_id, "patient_id": f"p{s.keys['patient'][:12]}",
         "study_id": f"s{s.keys['study'][:12]}", "image": f"series/{s.case_id}", "mask": s.mask,
         **{c: s.label.get(c, "") for c in rules.label_columns},
         "index_row": s.row, **{k: _fmt(s.info[k]) for k in _MANIFEST_INFO}} for s in kept], exact=True)
    _write_csv(private / "series.csv", ["row", "case_id", "files"],
               [{"row": s.row, "case_id": s.case_id, "files": " ".join(str(i.position) for i in s.instances)}
                for s in series])
    if todo:
        _write_csv(private / "files.csv", ["file", "path"], [{"file": k + 1, "path": rel}
                                                            for k, (rel, _, _) in enumerate(files)])
    _merge_pseudonyms(private / "pseudonyms.csv", identities, series)
    result.series, result.kept = len(series), len(kept)
    state_path.write_text(json.dumps({"digest": state, "result": {
        "series": result.series, "kept": result.kept, "skipped_files": dict(result.skipped_files)}}))
    # the list names what is there now: this run's links, its own names, and medres's other files still there
    others = {f for f in listed if not f.startswith("series/") and os.path.lexists(out / f)}
    save_list({f"series/{s.case_id}/{name}" for s in kept for name in _series_files(len(s.instances))}
              | set(_OWN_FILES) | others)
    (private / "written.json").unlink(missing_ok=True)  # the list of an index from before the one list
    result.seconds = time.perf_counter() - start
    return result


def _state_digest(files: list[tuple[str, int, int]], rules: Any, labels: Any, mask_labels: Any,
                  fingerprint: str, key_name: str) -> str:
    """A digest of everything an index run depends on: the files' paths, sizes and mtimes, the rules,
    the labels file, the mask labels and the project key (by its fingerprint)."""
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, rules.model_dump(mode="json"), sorted((mask_labels or {}).items()),
                         fingerprint, key_name]).encode())
    if labels:
        h.update(Path(labels).read_bytes())
    h.update("\n".join(f"{rel}\0{size}\0{mtime}" for rel, size, mtime in files)
             .encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _unchanged(state_path: Path, digest: str, out: Path) -> bool:
    try:
        saved = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return False
    if saved.get("digest") != digest or not all((out / n).exists() for n in ("manifest.csv", "index.csv")):
        return False
    try:  # the outputs must be those this run wrote (not edited or replaced since)
        return all(os.path.getmtime(out / name) <= os.path.getmtime(state_path)
                   for name in ("manifest.csv", "index.csv"))
    except OSError:
        return False


def _apply_labels(series: list[Series], by_key: dict[str, list[int]], rows: list[dict[str, str]],
                  key_field: str, key_name: str, have_labels: bool) -> None:
    if not have_labels:
        return
    for s in series:
        matches = by_key.get(s.keys.get(key_field, ""), [])
        if s.verdict != "kept":
            s.label = {"_rows": matches}
            continue
        if not matches:
            s.verdict, s.reason = "skipped", f"no row of the labels file matches its {key_name}"
        elif len(matches) > 1:
            s.verdict, s.reason = "skipped", f"its {key_name} matches labels rows {matches}: which applies?"
            s.label = {"_rows": matches}
        else:
            s.label = {**rows[matches[0] - 1], "_rows": matches}


_MANIFEST_INFO = ("modality", "view", "orientation", "slices", "thickness", "kernel", "contrast")


def _series_row(s: Series) -> dict[str, Any]:
    i = s.info
    kind = ("image" if s.split == "image" else "part") if s.part else "series"
    return {"row": s.row, "kind": kind, "verdict": s.verdict, "reason": s.reason,
            "case_id": s.case_id, "patient_id": f"p{s.keys['patient'][:12]}" if s.keys["patient"] else "",
            "study_id": f"s{s.keys['study'][:12]}", "part": s.part,
            **{k: _fmt(i[k]) for k in ("modality", "sop_class", "image_type", "orientation", "slices", "rows",
                                       "cols", "pixel_spacing", "thickness", "gap", "regular", "contrast",
                                       "kernel", "series_number", "files", "folders")},
            "annotation_rows": " ".join(str(r) for r in s.annotation_rows), "label": s.label.get("label", ""),
            "view": i.get("view", "")}


def _load_links(path: Path) -> dict[str, list[str]]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _drop_stale(folder: Path, stale: dict[str, list[str]]) -> None:
    """Remove the links medres wrote for series no longer chosen (and their folders once empty); what
    else such a folder holds is left where it is."""
    for case_id, names in stale.items():
        left = remove_written(folder / case_id, names)
        if left:
            log.warning("series/%s: %d file(s) medres did not write are left in place", case_id, len(left))


def _merge_pseudonyms(path: Path, identities: dict[str, dict[str, str]], series: list[Series]) -> None:
    """private/pseudonyms.csv: original ids -> pseudonyms, kept across runs (the cache holds no ids)."""
    cols = ["case_id", "patient_id", "study_id", "PatientID", "AccessionNumber", "StudyInstanceUID",
            "SeriesInstanceUID", "SeriesDescription"]
    rows: dict[str, dict[str, str]] = {}
    if path.exists():
        with open(path, newline="", encoding="utf-8") as fh:
            rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    if not identities and rows:
        return
    for s in series:
        ident = identities.get(s.keys["series"])
        if ident is not None:
            rows[s.case_id] = {"case_id": s.case_id, "patient_id": f"p{s.keys['patient'][:12]}",
                               "study_id": f"s{s.keys['study'][:12]}", **ident}
    _write_csv(path, cols, list(rows.values()))
