"""Manifests: read a cohort CSV as text and validate every row at once.

A manifest has one row per scan (DESIGN.md): ``case_id`` (unique), ``patient_id`` (the unit of
splitting), ``image`` or several ``image_*`` columns (input channels), optional ``mask``, ``label``,
``series_uid``, ``split`` (``train``/``test``) or ``fold`` (integer), and any other columns (kept, e.g.
as report subgroups). Every column is read as text, so patient ``00123`` stays distinct from ``123``
and ``NA`` stays a string.

Path rules: relative paths are relative to the manifest's folder; the path (lexically normalised) must
lie inside the data root (default: the manifest's folder), so ``../`` and absolute paths elsewhere are
refused; and with every symbolic link followed (the path's own and, for a series folder, each of its
files') it must still lie inside the data root, so a link cannot lead out of it either. Links may also
lead into the folders the *user* names (``link_roots=``, ``data.link_roots``, ``--link-root``) and, for
manifests written by ``python -m medres.data.index`` (whose ``series/<case>/`` folders link into the
DICOM export it indexed), into the export named in ``<manifest folder>/private/link_roots.txt`` when
that file carries a valid signature under the project key (:mod:`medres.data.project_key`): a file the
data folder merely contains grants nothing, and ``/`` is never trusted. A path holding a NUL byte, a
component longer than 255 bytes or a leading ``~`` (not expanded) is refused with that reason. In the
returned frame the image and mask columns hold the **absolute** paths (mask ``""`` when a row has
none); ``df.attrs`` holds ``manifest``, ``root`` and ``image_columns``.

Row numbers count data rows from 1 (the header is not a row): row 3 is line 4 of the file.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medres.errors import ConfigError, DataError, DataErrors, did_you_mean

__all__ = ["read_manifest", "validate_manifest", "image_columns_of", "trusted_link_roots", "SPLITS"]

log = logging.getLogger("medres.data")

SPLITS = ("train", "test")
_REQUIRED = ("case_id", "patient_id")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = did_you_mean(word, choices)
    return f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(choices)}"


def image_columns_of(columns: Sequence[str]) -> list[str]:
    """The image columns of a manifest: ``image`` and every ``image_*`` column, in file order."""
    return [c for c in columns if c == "image" or c.startswith("image_")]


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` lies under ``root`` (both absolute; compared as written, lexically)."""
    return os.path.commonpath([path, root]) == root


LINK_ROOTS_FILE = Path("private") / "link_roots.txt"
_NAME_MAX = 255  # bytes in one path component (NAME_MAX of ext4, XFS, APFS)


def trusted_link_roots(manifest_dir: str | os.PathLike[str], link_roots: Sequence[str] = (),
                       key_file: str | os.PathLike[str] | None = None) -> tuple[list[str], str]:
    """The folders links may lead into besides the data root (real paths), and a note when the
    index's ``private/link_roots.txt`` beside the manifest is present but not trusted (else "").

    ``link_roots`` are the user's own (config or command line); the index's file counts only when its
    signature verifies under the project key (``key_file``; ``$MEDRES_PROJECT_KEY`` wins).
    """
    from medres.data.project_key import read_link_roots

    roots = []
    for folder in link_roots:
        real = os.path.realpath(os.path.abspath(os.fspath(folder)))
        if real == os.path.realpath(os.sep):
            raise ConfigError("data.link_roots names '/', which would let links lead anywhere",
                              field="data.link_roots", hint="name the export folder the links point into")
        if not os.path.isdir(real):
            raise ConfigError(f"data.link_roots names {os.fspath(folder)!r}, which is not a folder",
                              field="data.link_roots", hint="name an existing folder (an absolute path)")
        roots.append(real)
    signed, why = read_link_roots(Path(manifest_dir) / LINK_ROOTS_FILE, key_file)
    note = ""
    if why:
        note = f"{LINK_ROOTS_FILE} beside the manifest was ignored: {why}"
        log.warning("%s; links out of the data root are refused", note)
    return roots + signed, note


def _link_escape(full: str, root: str, real_root: str, trusted: Sequence[str] = ()) -> str | None:
    """Why ``full`` (lexically inside ``root``) leaves the data root through a symbolic link, or None.

    Every link on the way is followed (``Path.resolve(strict=True)``), for the path itself and, for a
    DICOM series folder, for each file in it: a link inside the root to a scan or a system file outside
    is refused before anything opens it. The reason names the link and where it points, relative to
    the root, never the file's contents.
    """
    candidates = [Path(full)]
    if os.path.isdir(full):
        # a regular file in a folder that resolves inside the root is inside too: only links need it
        try:
            with os.scandir(full) as entries:
                candidates += sorted(Path(e.path) for e in entries if e.is_symlink())
        except OSError:
            return None  # unreadable folders are reported by the reader
    for candidate in candidates:
        try:
            real = str(candidate.resolve(strict=True))
        except (OSError, RuntimeError):  # missing (reported as not found), a loop, unreadable
            if candidate.is_symlink():
                target = os.readlink(candidate)
                return (f"{os.path.relpath(candidate, root)} is a symbolic link to {target!r}, which does "
                        "not exist or loops")
            continue
        if not _inside(real, real_root) and not any(_inside(real, t) for t in trusted):
            link = _first_link(candidate, root)
            where = os.path.relpath(real, real_root)
            return (f"{os.path.relpath(link, root)} is a symbolic link to {where} (relative to the data "
                    "root), outside the data root")
    return None


def _first_link(path: Path, root: str) -> Path:
    """The first component of ``path`` below ``root`` that is a symbolic link (``path`` if none)."""
    current = Path(root)
    for part in Path(os.path.relpath(path, root)).parts:
        current = current / part
        if current.is_symlink():
            return current
    return path


_DELIMITERS = {";": "semicolons (';')", "\t": "tabs", "|": "vertical bars ('|')"}


def _check_header_line(path: Path, columns: list[str]) -> None:
    """Refuse a header pandas would silently mend: repeated column names (read as ``label`` and
    ``label.1``) and a file separated by something other than commas (read as one column)."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError):
        return
    header = next(csv.reader([first]), [])
    if len(columns) == 1:
        counts = {d: first.count(d) for d in _DELIMITERS}
        delimiter = max(counts, key=counts.get)
        if counts[delimiter] > 0:
            raise DataError(f"is separated by {_DELIMITERS[delimiter]}, not commas: its header "
                            f"{first.strip()[:120]!r} reads as one column", path=path,
                            hint="save the manifest as comma-separated CSV (Excel: 'CSV UTF-8 (Comma "
                                 "delimited)')")
    seen: dict[str, int] = {}
    for i, name in enumerate(header, start=1):
        key = name.strip()
        if key in seen:
            raise DataError(f"header names column {key!r} twice (columns {seen[key]} and {i}); pandas "
                            f"would read the second as {key + '.1'!r} without a word", path=path,
                            hint="rename or remove one of the two columns")
        seen[key] = i


def _path_problem(value: str) -> tuple[str, str] | None:
    """Why a manifest path cell cannot name a file on any system (reason, hint), or None."""
    if "\0" in value:
        return "holds a NUL byte, which no file name may contain", "remove the control character"
    if value.startswith("~"):
        return ("starts with '~', which medres does not expand to a home folder",
                "write the path relative to the manifest's folder (or absolute, under the data root)")
    longest = max((len(p.encode("utf-8", "surrogateescape")) for p in value.replace("\\", "/").split("/")),
                  default=0)
    if longest > _NAME_MAX:
        return (f"has a file or folder name of {longest} bytes; file systems allow at most {_NAME_MAX}",
                "shorten that name on disk and in the manifest")
    return None


def _shown(value: str, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_manifest(path: str | os.PathLike[str], *, vocabulary: Sequence[str] | None = None,
                      root: str | os.PathLike[str] | None = None,
                      image_columns: Sequence[str] | None = None,
                      check_files: bool = True, link_roots: Sequence[str] = (),
                      key_file: str | os.PathLike[str] | None = None) -> tuple[pd.DataFrame, list[DataError]]:
    """Read and check a manifest; returns the frame (paths resolved) and every problem found.

    The rows with problems stay in the frame; :func:`read_manifest` raises instead. ``check_files=False``
    skips the existence checks (e.g. for a manifest of another machine). ``link_roots``: folders outside
    the data root that symbolic links may lead into; ``key_file``: the project key file that verifies
    an index's ``private/link_roots.txt`` (see the module docstring).
    """
    path = Path(path)
    if "\0" in str(path):
        raise DataError("the manifest path holds a NUL byte, which no file name may contain",
                        path=repr(str(path)), hint="check the --manifest / data.manifest path")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("manifest not found", path=path, hint="check the --manifest / data.manifest path") \
            from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot be read as a CSV manifest ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})", path=path,
                        hint="save the manifest as UTF-8 CSV with a header row") from None
    _check_header_line(path, list(df.columns))
    base = os.path.abspath(path.parent)
    root_dir = os.path.abspath(root) if root is not None else base
    real_root = os.path.realpath(root_dir)
    trusted, untrusted_note = trusted_link_roots(base, link_roots, key_file)
    errors: list[DataError] = []

    def fail(reason: str, *, row: int | None = None, hint: str = "", where: str | None = None,
             case: str | None = None) -> None:
        line = f" (line {row + 1} of {path.name})" if row is not None else ""
        errors.append(DataError(reason + line, path=where if where is not None else path, row=row,
                                hint=hint, case_id=case or None))

    stripped = {c: c.strip() for c in df.columns}
    for c, s in stripped.items():
        if c != s:
            fail(f"column name {c!r} has surrounding spaces", hint=f"rename it to {s!r}")
    columns = list(df.columns)
    for required in _REQUIRED:
        if required not in columns:
            fail(f"required column {required!r} is missing", hint=_suggest(required, columns))
    images = list(image_columns) if image_columns is not None else image_columns_of(columns)
    if not images:
        fail("no image column: expected 'image' or columns named 'image_*'", hint=_suggest("image", columns))
    for c in images:
        if c not in columns:
            fail(f"image column {c!r} is missing", hint=_suggest(c, columns))
    if vocabulary is not None and "label" not in columns:
        fail("column 'label' is missing but a label vocabulary is configured",
             hint=_suggest("label", columns))
    if len(df) == 0:
        fail("has no data rows", hint="add one row per scan below the header")
    if errors:
        return df, errors

    vocab = list(vocabulary) if vocabulary is not None else None
    first_row: dict[str, int] = {}
    first_image: dict[str, int] = {}
    path_columns = [c for c in [*images, "mask"] if c in columns]
    resolved = {c: [""] * len(df) for c in path_columns}
    for i, rec in enumerate(df.to_dict("records")):
        row = i + 1
        case = rec["case_id"]
        if not case.strip():
            fail("case_id is empty", row=row, hint="give every row a unique case_id")
        elif case in first_row:
            fail(f"case_id {case!r} repeats row {first_row[case]}", row=row, case=case,
                 hint="case_id must be unique: one row per scan")
        else:
            first_row[case] = row
        if not rec["patient_id"].strip():
            fail("patient_id is empty", row=row, case=case,
                 hint="every scan needs its patient's id: folds are split by patient")
        for column in _REQUIRED:
            if rec[column].strip() and rec[column] != rec[column].strip():
                fail(f"{column} {rec[column]!r} has surrounding spaces", row=row, case=case,
                     hint=f"write {rec[column].strip()!r}: ids with stray spaces split one patient in two")
        if vocab is not None:
            label = rec["label"]
            if label not in vocab:
                what = "label is empty" if not label else f"label {label!r} is not in the vocabulary"
                fail(what, row=row, case=case,
                     hint=_suggest(label, vocab) if label else f"use one of {vocab}")
        if "split" in columns and rec["split"] not in SPLITS:
            fail(f"split {rec['split']!r} is not one of {list(SPLITS)}", row=row, case=case,
                 hint=_suggest(rec["split"], SPLITS))
        if "fold" in columns:
            try:
                ok = int(rec["fold"]) >= 0 and rec["fold"].strip() == rec["fold"]
            except ValueError:
                ok = False
            if not ok:
                fail(f"fold {rec['fold']!r} is not a non-negative integer", row=row, case=case,
                     hint="write folds as 0, 1, 2, ...")
        for c in path_columns:
            value = rec[c]
            if not value.strip():
                if c != "mask":
                    fail(f"{c} is empty", row=row, case=case, hint="give the scan's file or series folder")
                continue
            problem = _path_problem(value)
            if problem is not None:
                fail(f"{c} path {_shown(value)} {problem[0]}", row=row, case=case, hint=problem[1])
                continue
            full = os.path.abspath(os.path.join(base, value))
            if not _inside(full, root_dir):
                how = "an absolute path" if os.path.isabs(value) else "a path with '..'"
                fail(f"{c} path {_shown(value)} ({how}) leaves the data root {root_dir}", row=row, case=case,
                     hint="keep scans under the data root (or pass root= / --root / data.root)")
                continue
            try:
                escape = _link_escape(full, root_dir, real_root, trusted) if check_files else None
                found = os.path.exists(full) if check_files else True
            except (OSError, ValueError) as exc:  # e.g. a whole path past the system's length limit
                what = errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
                fail(f"{c} path {_shown(value)} cannot be looked up ({what}: "
                     f"{getattr(exc, 'strerror', None) or 'invalid path'})", row=row, case=case,
                     hint="shorten or fix the path")
                continue
            if escape is not None:
                hint = ("copy the scan under the data root, point the manifest at the real location (with "
                        "--root / data.root covering it), or name the folder the links lead into in "
                        "data.link_roots / --link-root; medres does not follow links out of the data root")
                fail(f"{c} path {_shown(value)} leaves the data root: {escape}", row=row, case=case,
                     hint=hint + (f" ({untrusted_note})" if untrusted_note else ""))
                continue
            resolved[c][i] = full
            if not found:
                fail(f"{c} file or folder not found", row=row, case=case, where=full,
                     hint="check the path (relative to the manifest's folder) and its spelling")
            if c != "mask":
                if full in first_image:
                    fail(f"{c} is the same scan as row {first_image[full]}", row=row, case=case, where=full,
                         hint="one row per scan: a scan listed twice can leak across folds")
                else:
                    first_image[full] = row
    df = df.copy()
    for c, values in resolved.items():
        df[c] = values
    df.attrs.update(manifest=str(os.path.abspath(path)), root=root_dir, image_columns=images)
    return df, errors


def read_manifest(path: str | os.PathLike[str], *, vocabulary: Sequence[str] | None = None,
                  root: str | os.PathLike[str] | None = None,
                  image_columns: Sequence[str] | None = None, link_roots: Sequence[str] = (),
                  key_file: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read a manifest CSV (all columns as text), validate it and resolve its paths.

    Args:
        path: the CSV file.
        vocabulary: the class names ``label`` must come from (None: labels not checked).
        root: the data root paths may not leave (default: the manifest's folder).
        image_columns: the image columns (default: ``image`` and every ``image_*`` column).
        link_roots: folders outside the data root that symbolic links may lead into (``data.link_roots``).
        key_file: the project key file verifying an index's ``private/link_roots.txt`` (default: the
            ``$MEDRES_PROJECT_KEY`` variable, else ``~/.config/medres/project.key``).

    Returns:
        The manifest with ``image``/``image_*``/``mask`` as absolute paths (see the module docstring).

    Raises:
        DataErrors: every problem found, each a DataError with its row (1-based data row).
    """
    df, errors = validate_manifest(path, vocabulary=vocabulary, root=root, image_columns=image_columns,
                                   link_roots=link_roots, key_file=key_file)
    if errors:
        raise DataErrors(errors, path=path)
    return df
