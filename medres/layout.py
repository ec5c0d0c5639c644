"""How a case's files are named (a run folder's own paths are ``medres.runfolder``'s).

A case's files (``seg/<name>.nii.gz``, ``seg/<name>.dcm``) are named by :func:`case_file_stem`, the one
rule from a case id to a file name: a readable prefix plus a hash of the exact id, so two ids never share
a file (also on case-insensitive file systems); :func:`case_file_stems` checks a set of names at once.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

from medres.errors import DataError

__all__ = ["case_file_stem", "case_file_stems", "check_distinct_files"]

CASE_PREFIX_CHARS = 40  # the readable part of a case's file name
CASE_HASH_CHARS = 12  # hex digits of the SHA-256 of the exact case id (48 bits)


def case_file_stem(case_id: str) -> str:
    """The file name (without suffix) of a case's files: ``<prefix>-<hash>``.

    The prefix is the id with characters other than ASCII letters, digits and ``._-`` as ``_`` (cut to
    :data:`CASE_PREFIX_CHARS`, no leading dot); the hash is the first :data:`CASE_HASH_CHARS` hex digits of
    the SHA-256 of the id's exact UTF-8 bytes, so ``P1 S1`` and ``P1_S1``, ``症例1`` and ``病例1``, or
    ``A1`` and ``a1`` get different names.
    """
    text = str(case_id)
    prefix = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:CASE_PREFIX_CHARS].lstrip(".") or "case"
    return f"{prefix}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:CASE_HASH_CHARS]}"


def _where(case_id: str, row: Any) -> str:
    return f"case {case_id!r}" + (f" (row {row})" if row not in (None, "") else "")


def check_distinct_files(items: Iterable[tuple[str, str, Any]], *, what: str = "file",
                         hint: str = "") -> None:
    """Refuse two items that share one file: ``items`` are ``(case_id, file name or path, row)``.

    Names are compared case-folded (a case-insensitive file system stores ``A.nii.gz`` and ``a.nii.gz`` as
    one file). A DataError names both cases and rows: one would overwrite the other.
    """
    seen: dict[str, tuple[str, Any, str]] = {}
    for case_id, name, row in items:
        key = str(name).casefold()
        if key in seen:
            other, other_row, other_name = seen[key]
            raise DataError(
                f"{_where(other, other_row)} and {_where(str(case_id), row)} would share one {what} "
                f"({other_name!r} and {str(name)!r}); one would overwrite the other",
                hint=hint or "give every case an id of its own")
        seen[key] = (str(case_id), row, str(name))


def case_file_stems(records: Iterable[Any]) -> dict[str, str]:
    """``{case_id: case_file_stem(case_id)}`` for records (mappings with ``case_id`` and optional
    ``row``, or plain ids), checked with :func:`check_distinct_files` before any file is written."""
    items = []
    for rec in records:
        case_id = str(rec["case_id"]) if isinstance(rec, dict) or hasattr(rec, "keys") else str(rec)
        row = rec.get("row") if hasattr(rec, "get") else None
        items.append((case_id, case_file_stem(case_id), row))
    check_distinct_files(items, what="file name")
    return {case_id: name for case_id, name, _ in items}
