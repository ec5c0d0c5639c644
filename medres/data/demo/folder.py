"""The folder a demo generator writes: a new temporary sibling, renamed into place; an older cohort
there is replaced only when every file in the folder is one its stamp lists, and then file by file
(shared by :mod:`medres.data.demo` and :mod:`medres.data.demo.cxr`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from medres.errors import DataError
from medres.files import (
    WRITTEN_LIST,
    check_output,
    foreign_entries,
    remove_written,
    save_written,
    written_list,
)

__all__ = ["written_files", "partial_folder", "replace_folder"]

_STAMP = "demo_cohort.json"


def written_files(out: Path, stamp_name: str = _STAMP) -> list[str]:
    """What an earlier demo generation wrote in ``out``: the files its stamp lists and the stamp ([] for
    a new or empty folder). A folder holding anything else is refused: a demo replaces only what it
    wrote, never a folder holding someone's files."""
    if not out.exists() and not out.is_symlink():
        return []
    if out.is_symlink() or not out.is_dir():
        raise DataError("exists and is not a folder the demo wrote", path=out,
                        hint="choose an empty or new folder for the demo cohort")
    if not any(out.iterdir()):
        return []
    listed = written_list(out)  # medres.files' one written-files list (a cohort from before it: the stamp)
    try:
        files = listed if stamp_name in listed else \
            [str(f) for f in json.loads((out / stamp_name).read_text())["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError("the folder is not empty and holds no demo cohort; medres will not overwrite it",
                        path=out, hint="choose an empty or new folder for the demo cohort") from None
    written = [*files, stamp_name, *([WRITTEN_LIST] if stamp_name in listed else [])]
    foreign = foreign_entries(out, written)
    if foreign:
        raise DataError(f"the folder holds a demo cohort and {len(foreign)} file(s) the demo did not write; "
                        "medres will not replace it", path=out,
                        hint="move those files away, or choose an empty or new folder for the demo cohort")
    return written


def partial_folder(out: Path) -> Path:
    """A new, empty sibling of ``out`` to write into (renamed into place by :func:`replace_folder`)."""
    check_output(out, inputs={}, what="demo folder (--out)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))


def replace_folder(out: Path, tmp: Path, stamp_name: str = _STAMP) -> None:
    """Move the finished ``tmp`` to ``out``, first removing the files an older demo wrote there (only
    those: anything else found there now is refused, and ``tmp``, ours, is removed)."""
    try:
        left = remove_written(out, written_files(out, stamp_name)) if out.exists() else []
        if left:
            raise DataError(f"the folder holds {len(left)} file(s) the demo did not write", path=out,
                            hint="move them away, or choose an empty or new folder for the demo cohort")
        save_written(tmp, [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if not p.is_dir()])
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
