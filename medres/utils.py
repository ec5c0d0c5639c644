"""Small helpers used across medres, with no dependency beyond the standard library.

- :func:`flatten_dict`: nested mappings as ``{"a.b.c": value}`` (config diffs, tracker parameters).
- :func:`atomic_write`: every file medres writes for later (checkpoints, tables, masks, caches, the
  resolved config, metrics.csv) goes through it: temporary file, fsync, rename.
- :func:`did_you_mean`: the closest valid names for a misspelt one, with one cut-off everywhere.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["flatten_dict", "atomic_write", "did_you_mean"]

#: how close a valid name must be to a misspelt one to be suggested (``difflib`` ratio)
SUGGESTION_CUTOFF = 0.6


def flatten_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}``: dotted keys; an empty mapping is a value."""
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_dict(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 before_replace: Callable[[], object] | None = None) -> Path:
    """Write ``path`` so that a reader sees the old file or the whole new one, never a part.

    ``write(tmp)`` writes the content to a temporary file in the same folder (its name ends in the
    target's suffixes, so writers that read the format from the name, such as ``nibabel.save``, work);
    the file is then flushed to disk (fsync), ``before_replace()`` runs (e.g. keep the previous file),
    it is renamed over ``path`` (``os.replace``, atomic on POSIX and Windows) and the folder is synced.
    On any error the temporary file is removed and the target is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes),
                                dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows, where folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def did_you_mean(word: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Up to ``n`` of ``choices`` closest to ``word``, best first; empty when none is close. A choice equal
    to ``word`` but for case and surrounding spaces comes first; then ``difflib`` matches with the
    cut-off :data:`SUGGESTION_CUTOFF`."""
    choices = list(choices)
    folded = [c for c in choices if c.strip().casefold() == word.strip().casefold()]
    close = difflib.get_close_matches(word, choices, n=n, cutoff=SUGGESTION_CUTOFF)
    return (folded + [c for c in close if c not in folded])[:n]
