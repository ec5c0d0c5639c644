"""Manifests: read a cohort CSV as text and validate every row at once.

A manifest has one row per scan (DESIGN.md): ``case_id`` (unique), ``patient_id`` (the unit of
splitting), ``image`` or several ``image_*`` columns (input channels), optional ``mask``, ``label``,
``series_uid``, ``split`` (``train``/``test``) or ``fold`` (integer), and any other columns (kept, e.g.
as report subgroups). Every column is read as text, so patient ``00123`` stays distinct from ``123``
and ``NA`` stays a string.

Path rules: relative paths are relative to the manifest's folder; the resolved path (lexically
normalised, symlinks not followed) must lie inside the data root (default: the manifest's folder), so
``../`` and absolute paths elsewhere are refused. In the returned frame the image and mask columns hold
the **absolute** paths (mask ``""`` when a row has none); ``df.attrs`` holds ``manifest``, ``root`` and
``image_columns``.

Row numbers count data rows from 1 (the header is not a row): row 3 is line 4 of the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medres.errors import DataError, DataErrors
from medres.utils import did_you_mean

__all__ = ["read_manifest", "validate_manifest", "image_columns_of", "SPLITS"]

SPLITS = ("train", "test")
_REQUIRED = ("case_id", "patient_id")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = did_you_mean(word, choices)
    return f"did you mean {close[0]!r}?" if close else f"choose one of {sorted(choices)}"


def image_columns_of(columns: Sequence[str]) -> list[str]:
    """The image columns of a manifest: ``image`` and every ``image_*`` column, in file order."""
    return [c for c in columns if c == "image" or c.startswith("image_")]


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def validate_manifest(path: str | os.PathLike[str], *, vocabulary: Sequence[str] | None = None,
                      root: str | os.PathLike[str] | None = None,
                      image_columns: Sequence[str] | None = None,
                      check_files: bool = True) -> tuple[pd.DataFrame, list[DataError]]:
    """Read and check a manifest; returns the frame (paths resolved) and every problem found.

    The rows with problems stay in the frame; :func:`read_manifest` raises instead. ``check_files=False``
    skips the existence checks (e.g. for a manifest of another machine).
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError("manifest not found", path=path, hint="check the --manifest / data.manifest path") \
            from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"cannot be read as a CSV manifest ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160]})", path=path,
                        hint="save the manifest as UTF-8 CSV with a header row") from None
    base = os.path.abspath(path.parent)
    root_dir = os.path.abspath(root) if root is not None else base
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
            full = os.path.abspath(os.path.join(base, os.path.expanduser(value)))
            if not _inside(full, root_dir):
                how = "an absolute path" if os.path.isabs(value) else "a path with '..'"
                fail(f"{c} path {value!r} ({how}) leaves the data root {root_dir}", row=row, case=case,
                     hint="keep scans under the data root (or pass root= / --root / data.root)")
                continue
            resolved[c][i] = full
            if check_files and not os.path.exists(full):
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
                  image_columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a manifest CSV (all columns as text), validate it and resolve its paths.

    Args:
        path: the CSV file.
        vocabulary: the class names ``label`` must come from (None: labels not checked).
        root: the data root paths may not leave (default: the manifest's folder).
        image_columns: the image columns (default: ``image`` and every ``image_*`` column).

    Returns:
        The manifest with ``image``/``image_*``/``mask`` as absolute paths (see the module docstring).

    Raises:
        DataErrors: every problem found, each a DataError with its row (1-based data row).
    """
    df, errors = validate_manifest(path, vocabulary=vocabulary, root=root, image_columns=image_columns)
    if errors:
        raise DataErrors(errors, path=path)
    return df
