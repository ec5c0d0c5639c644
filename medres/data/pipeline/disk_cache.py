"""A persistent, memory-mapped cache of preprocessed volumes (``data.cache: mmap``).

Each entry is a folder named by the dataset's cache key (SHA-256 over the input files' identity and the
pipeline settings, see ``medres.data.pipeline.datasets``) holding ``image.npy`` (float16 HU for CT, as in the
in-memory cache; the pipeline's dtype otherwise), ``mask.npy`` (uint8 when the labels fit, else the
pipeline's dtype) and ``meta.pt`` (the whitelisted geometry and acquisition fields: plain types, loaded
with ``weights_only=True``; no file names or patient fields). Reads open the arrays with
``numpy.load(mmap_mode="c")``: nothing is copied into the process until a voxel is touched, the
operating system's page cache is shared by every DataLoader worker, fold and run on the machine, and an
epoch reads from RAM once the cohort fits in it (a 250 mm chest CT at 1.5 mm is ~9 MB in float16).

Why not the ``disk`` cache (one ``torch.save`` file per entry): each read there unpickles and copies the
whole entry in every worker; for the full-resolution configuration that is most of a worker's time.

An entry is written into a temporary sibling folder and renamed into place, so a reader never sees half
an entry and concurrent writers (DDP ranks, parallel folds) are safe: the first rename wins.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medres.data.readers.limits import memory_error
from medres.files import remove_written

__all__ = ["MmapCache"]

log = logging.getLogger(__name__)

_ARRAYS = ("image", "mask")
_ENTRY_FILES = (*(f"{k}.npy" for k in _ARRAYS), "meta.pt")  # everything put() writes in an entry
_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "uint8": torch.uint8,
           "int16": torch.int16, "int32": torch.int32, "int64": torch.int64, "bool": torch.bool}


def _storage(t: torch.Tensor, key: str) -> np.ndarray:
    """The array as stored: masks with integral labels in 0..255 as uint8 (a quarter of float32)."""
    a = t.detach().cpu().contiguous().numpy()
    integral = key == "mask" and a.size and a.dtype != np.uint8 and np.array_equal(a, np.round(a))
    if integral and np.all((a >= 0) & (a <= 255)):
        return a.astype(np.uint8)
    return a


class MmapCache:
    """Entries of a :class:`medres.data.pipeline.datasets.CaseDataset` under ``folder/<key>/``.

    ``get(key)`` returns the entry (``image`` / ``mask`` tensors backed by memory-mapped files, their
    ``*_meta`` dicts) or None when it is absent or unreadable; ``put(key, entry)`` stores one.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / key

    def get(self, key: str) -> dict[str, Any] | None:
        d = self.path(key)
        if not (d / "meta.pt").exists():
            return None
        try:
            # the cache's own entry, written by put() (a model's file is read by medres.checkpoint)
            meta = torch.load(d / "meta.pt", map_location="cpu", weights_only=True)
            entry: dict[str, Any] = {}
            for k in meta["arrays"]:
                arr = np.load(d / f"{k}.npy", mmap_mode="c", allow_pickle=False)
                t = torch.from_numpy(arr)
                want = _DTYPES[meta["dtypes"][k]]
                entry[k] = t if t.dtype == want else t.to(want)
                entry[f"{k}_meta"] = meta["meta"][k]
            return entry
        except MemoryError:  # not a damaged entry: say so, and keep the entry
            raise memory_error(d) from None
        except Exception as exc:  # a truncated or foreign entry: the caller recomputes and rewrites it
            log.warning("unreadable cache entry %s (%s); recomputing it", key[:12], type(exc).__name__)
            with contextlib.suppress(OSError):  # only an entry's own files: never a whole folder
                remove_written(d, _ENTRY_FILES)
            return None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.folder, prefix=".tmp-"))
        try:
            arrays = [k for k in _ARRAYS if k in entry]
            for k in arrays:
                np.save(tmp / f"{k}.npy", _storage(entry[k], k), allow_pickle=False)
            dtypes = {k: str(entry[k].dtype).removeprefix("torch.") for k in arrays}
            meta = {"arrays": arrays, "dtypes": dtypes, "meta": {k: entry[f"{k}_meta"] for k in arrays}}
            torch.save(meta, tmp / "meta.pt")  # written last: its presence marks a complete entry
            try:
                os.rename(tmp, self.path(key))
            except OSError:  # another process stored the same key first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
