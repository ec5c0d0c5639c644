"""Files medres writes for later (checkpoints, tables, masks, caches, the resolved config, metrics.csv):
each through :func:`atomic_write` (temporary file, fsync, rename), so a crash, a kill or a full disk
leaves the old file or the whole new one, never a part.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


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
