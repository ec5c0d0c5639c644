"""A sharded index for very large exports: ``--num-parts K --part-id i`` reads the headers of the i-th
share of the files into ``DIR/parts/i/``; ``--merge DIR`` then indexes the whole export from them.

The split is by a SHA-256 of each file's folder (relative to the export), so a series folder is read by
one part and the shares are stable across runs and machines. Only the header reading (the cost of an
index: one open and parse per file) is split; grouping into series, choosing series, attaching SEG and
RTSTRUCT masks and matching labels need the whole export and run in the merge, from the parts' headers.
So a series spread over several folders, or a mask filed in another folder than its images, indexes
exactly as in a one-part run: the merge's manifest.csv and index.csv are those of ``index_dicom``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from medres.data.index.build import (
    _OWN_FILES,
    IndexResult,
    _hashed,
    _load_cache,
    _merge_pseudonyms,
    _Pseudonyms,
    _read_all,
    _save_cache,
    _walk,
    _write_csv,
    index_dicom,
    series_identity,
)
from medres.data.project_key import project_key
from medres.data.readers.limits import DEFAULT_MAX_FILES_PER_SERIES
from medres.errors import ConfigError, DataError
from medres.files import WRITTEN_LIST, atomic_write, check_output, save_written, written_list

__all__ = ["PartResult", "part_of", "index_part", "merge_parts", "PARTS"]

PARTS = "parts"
_PART_FILE = "part.json"
_FORMAT = "medres index part"


@dataclass
class PartResult:
    """What :func:`index_part` did."""

    folder: Path
    files: int = 0  # this part's share
    read: int = 0
    cached: int = 0
    seconds: float = 0.0


def part_of(rel: str, num_parts: int) -> int:
    """The part (0..num_parts-1) that reads file ``rel`` (relative to the export): a hash of its folder."""
    folder = rel.replace(os.sep, "/").rpartition("/")[0]
    digest = hashlib.sha256(folder.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % num_parts


def _check_split(num_parts: int, part_id: int) -> None:
    if num_parts < 1:
        raise ConfigError(f"--num-parts {num_parts} must be at least 1")
    if not 0 <= part_id < num_parts:
        raise ConfigError(f"--part-id {part_id} is not one of 0..{num_parts - 1}",
                          hint="parts are numbered from 0 (a scheduler's array index)")


def _part_folder(out: Path, part_id: int) -> Path:
    """``out/parts/<part_id>``, made; refused when it (or ``out``) holds what no part wrote."""
    if out.exists() and not out.is_dir():
        raise DataError("exists and is not a folder", path=out, hint="choose a new folder for --out")
    folder = out / PARTS / str(part_id)
    for p in (out / PARTS, folder):
        if p.is_symlink() or (p.exists() and not p.is_dir()):
            raise DataError("is a symbolic link or a file; medres writes only into folders it made", path=p,
                            hint="move it away or choose a new --out folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / _PART_FILE).is_file():
        raise DataError("holds files and no index part", path=folder, hint="choose a new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def index_part(root: str | os.PathLike[str], out: str | os.PathLike[str], *, num_parts: int, part_id: int,
               rules: Any = None, key_file: str | os.PathLike[str] | None = None, progress: bool = False,
               max_files_per_folder: int = DEFAULT_MAX_FILES_PER_SERIES) -> PartResult:
    """Read the headers of part ``part_id`` of ``num_parts`` of the export ``root`` into
    ``out/parts/<part_id>/`` (its header cache, the ids behind its pseudonyms and ``part.json``).

    Parts run independently (a scheduler's array job); each writes only its own folder. A rerun of a
    part reads only the files that changed since.
    """
    from medres.config import IndexConfig

    start = time.perf_counter()
    _check_split(num_parts, part_id)
    rules = rules or IndexConfig()
    root, out = Path(root).absolute(), Path(out).absolute()
    if not root.is_dir():
        raise DataError("the export folder does not exist or is not a folder", path=root)
    pseudo = _Pseudonyms(project_key(key_file or rules.key_file))
    check_output(out, inputs={"export folder": root}, what="output folder (--out)")
    folder = _part_folder(out, part_id)
    files = [f for f in _walk(root, out, {}, max_files_per_folder, {}) if f[1] >= 0
             and part_of(f[0], num_parts) == part_id]
    cache = _load_cache(folder / "header_cache.json", pseudo.fingerprint)
    identities = _load_json(folder / "identities.json")
    path_keys = [pseudo.path_key(rel) for rel, _, _ in files]
    entries: list[dict[str, Any]] = [{}] * len(files)
    todo = []
    for k, ((_, size, mtime), pk) in enumerate(zip(files, path_keys)):
        hit = cache.get(pk)
        if hit is not None and hit[0] == size and hit[1] == mtime:
            entries[k] = hit[2]
        else:
            todo.append(k)
    workers = rules.workers or min(os.cpu_count() or 1, 8)
    for k, record in zip(todo, _read_all(root, [files[k][0] for k in todo], workers, progress)):
        entries[k] = _hashed(record, pseudo)
        if record["status"] == "dicom":
            identities[entries[k]["keys"]["series"]] = series_identity(record["ids"])
    (folder / _PART_FILE).unlink(missing_ok=True)  # a part is complete only once part.json is back
    _save_cache(folder / "header_cache.json", pseudo.fingerprint, files, path_keys, entries)
    _atomic_json(folder / "identities.json", identities)
    _atomic_json(folder / _PART_FILE, {"format": _FORMAT, "num_parts": num_parts, "part_id": part_id,
                                       "root": str(root), "key": pseudo.fingerprint, "files": len(files)})
    return PartResult(folder=folder, files=len(files), read=len(todo), cached=len(files) - len(todo),
                      seconds=time.perf_counter() - start)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _atomic_json(path: Path, data: Any) -> None:
    text = json.dumps(data)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _parts(out: Path) -> tuple[Path, str, list[Path]]:
    """(the export root, the key fingerprint, the part folders) of ``out``'s parts, all present."""
    found = []
    for p in sorted((out / PARTS).iterdir(), key=lambda p: p.name) if (out / PARTS).is_dir() else []:
        meta = _load_json(p / _PART_FILE)
        if meta.get("format") == _FORMAT:
            found.append((p, meta))
    if not found:
        raise DataError(f"holds no finished index part (no {PARTS}/<i>/{_PART_FILE})", path=out,
                        hint="run python -m medres.data.index ROOT --out DIR --num-parts K --part-id i "
                             "for every i first")
    first = found[0][1]
    k = int(first["num_parts"])
    for what in ("num_parts", "root", "key"):
        if len({str(m[what]) for _, m in found}) > 1:
            raise DataError(f"its parts disagree on {what} (they come from different runs)", path=out / PARTS,
                            hint="rerun every part with the same export, --num-parts and project key")
    missing = sorted(set(range(k)) - {int(m["part_id"]) for _, m in found})
    if missing:
        ids = ", ".join(str(i) for i in missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{len(missing)} of {k} parts are missing or unfinished (--part-id {ids})",
                        path=out / PARTS, hint="run (or rerun) those parts, then merge again")
    return Path(first["root"]), str(first["key"]), [p for p, _ in found]


def merge_parts(out: str | os.PathLike[str], root: str | os.PathLike[str] | None = None, *,
                labels: str | os.PathLike[str] | None = None, labels_key: str | None = None,
                rules: Any = None,
                mask_labels: dict[int, str] | None = None, key_file: str | os.PathLike[str] | None = None,
                progress: bool = False, max_files_per_folder: int = DEFAULT_MAX_FILES_PER_SERIES
                ) -> IndexResult:
    """Index the export into ``out`` (manifest.csv, index.csv, series/, masks/, private/) from the
    headers its parts read: the same outputs as :func:`medres.data.index.index_dicom` on the export."""
    from medres.config import IndexConfig

    rules = rules or IndexConfig()
    out = Path(out).absolute()
    part_root, fingerprint, folders = _parts(out)
    if root is not None and Path(root).absolute() != part_root:
        raise ConfigError("the export given is not the one the parts indexed", path=str(root),
                          hint="merge with the parts' export (or without naming it)")
    pseudo = _Pseudonyms(project_key(key_file or rules.key_file))
    if pseudo.fingerprint != fingerprint:
        raise ConfigError("the parts were made under another project key", path=str(out / PARTS),
                          hint="merge with the key the parts used ($MEDRES_PROJECT_KEY or the key file)")
    check_output(out, inputs={"export folder": part_root, "labels file": labels},
                 what="output folder (--merge)")
    cache: dict[str, list] = {}
    identities: dict[str, dict[str, str]] = {}
    for folder in folders:
        cache.update(_load_cache(folder / "header_cache.json", fingerprint))
        identities.update(_load_json(folder / "identities.json"))
    # out holds parts/ and (from an earlier merge) an index: list the index's own files before they exist,
    # as index_dicom does, so that it takes out as the index it writes
    others = [e.name for e in out.iterdir() if e.name not in (PARTS, WRITTEN_LIST)]
    has_list = (out / WRITTEN_LIST).is_file()
    if (others and not has_list) or (has_list and "index.csv" not in written_list(out)) \
            or (out / "private").is_symlink():
        raise DataError(f"holds entries besides {PARTS}/ that are not a medres index", path=out,
                        hint="run the parts with a new --out folder, then merge there")
    if not has_list:
        save_written(out, set(_OWN_FILES))
    private = out / "private"
    private.mkdir(exist_ok=True)
    rows = sorted(cache.items())
    _save_cache(private / "header_cache.json", fingerprint, [("", v[0], v[1]) for _, v in rows],
                [pk for pk, _ in rows], [v[2] for _, v in rows])
    fresh = not (private / "files.csv").is_file()
    result = index_dicom(part_root, out, labels=labels, labels_key=labels_key, rules=rules,
                         mask_labels=mask_labels, key_file=key_file, progress=progress,
                         max_files_per_folder=max_files_per_folder)
    if result.read == result.files and result.files:  # nothing came from the parts: index_dicom wrote all
        return result
    files = _walk(part_root, out, {}, max_files_per_folder, {})
    if fresh or not (private / "files.csv").is_file():
        _write_csv(private / "files.csv", ["file", "path"], [{"file": k + 1, "path": rel}
                                                            for k, (rel, _, _) in enumerate(files)])
    # private/pseudonyms.csv: the ids behind the series the parts read (the cache holds no ids)
    by_position = {k + 1: pseudo.path_key(rel) for k, (rel, _, _) in enumerate(files)}
    series = []
    with open(private / "series.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            first = int(str(r["files"]).split()[0])
            hit = cache.get(by_position.get(first, ""))
            if hit is not None and "keys" in hit[2]:
                series.append(SimpleNamespace(case_id=r["case_id"], keys=hit[2]["keys"]))
    _merge_pseudonyms(private / "pseudonyms.csv", identities, series)  # type: ignore[arg-type]
    return result
