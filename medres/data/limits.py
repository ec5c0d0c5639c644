"""The size cap that refuses decompression bombs before anything is decompressed or allocated.

A scan declares its size in its header (NIfTI ``dim``, DICOM Rows x Columns x frames x files, a PNG/JPEG
header's width x height); the pixel data behind it may be compressed a thousandfold (an 18 MB
``.nii.gz`` can declare 4 GiB of int16). Readers call :func:`check_declared` with the declared voxel
count *before* decoding. More than ``data.max_voxels`` (default 2**31 = 2.1e9, far above any CT: a
512 x 512 x 2000 whole-body scan is 5.2e8), or more than the memory the machine has free right now, is
a DataError naming the declared shape.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medres.errors import DataError

__all__ = ["DEFAULT_MAX_VOXELS", "available_memory", "check_declared", "patch_fits_none", "patch_misfit",
           "resampled_shape"]

#: Default for ``data.max_voxels``.
DEFAULT_MAX_VOXELS = 2**31

#: Bytes per voxel a load needs beyond the stored bytes: load_image converts to float32.
_WORK_BYTES = 4


def available_memory() -> int | None:
    """Bytes the machine can give without swapping (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_declared(shape: Sequence[int], itemsize: int, path: str | Path, *,
                   max_voxels: int | None = None, what: str = "its header") -> None:
    """Raise a DataError when ``shape`` (as declared, before decoding) exceeds the cap or free memory.

    Args:
        shape: the declared dimensions (voxels x channels/frames/files).
        itemsize: bytes per stored value.
        path: the file or folder, for the message.
        max_voxels: the cap (``data.max_voxels``); None: :data:`DEFAULT_MAX_VOXELS`.
        what: where the size was declared, for the message.
    """
    cap = DEFAULT_MAX_VOXELS if max_voxels is None else int(max_voxels)
    voxels = 1
    for s in shape:
        voxels *= max(int(s), 0)
    dims = " x ".join(str(int(s)) for s in shape)
    if voxels > cap:
        raise DataError(f"{what} declares {dims} = {voxels:.3g} voxels, more than data.max_voxels "
                        f"({cap:.3g}); refused before decompressing (a damaged header or a "
                        "decompression bomb?)", path=path,
                        hint="if the scan is truly this large, raise data.max_voxels (and make sure the "
                             "memory is there); otherwise re-export the file")
    free = available_memory()
    need = voxels * (max(int(itemsize), 1) + _WORK_BYTES)
    if free is not None and need > free:
        raise DataError(f"{what} declares {dims} voxels ({need / 2**30:.1f} GiB to load), more than the "
                        f"{free / 2**30:.1f} GiB of memory free now; refused before decompressing",
                        path=path, hint="free memory or use a machine with more, or crop/resample the scan")


def resampled_shape(shape: Sequence[int], spacing: Sequence[float],
                    target: Sequence[float]) -> tuple[int, ...]:
    """The grid ``Spacingd(pixdim=target)`` gives: MONAI keeps the centres of the edge voxels, so an axis
    of ``n`` voxels of ``s`` mm becomes ``round((n - 1) * s / t + 1)`` (``compute_shape_offset``), not
    ``round(n * s / t)``, which is one short for a field of whole target pixels."""
    return tuple(max(1, round((n - 1) * s / t + 1.0)) for n, s, t in zip(shape, spacing, target))


def patch_fits_none(shapes: Sequence[Sequence[int]], patch: Sequence[int]) -> list[int] | None:
    """The largest size per axis of ``shapes`` when ``patch`` fits inside none of them (every crop would be
    padded: compute spent on padding), else None; None too when any shape has another dimensionality than
    the patch (2D patches from volumes). The one rule behind ``medres.data.check``'s warning and the
    training-time one (their words: :func:`patch_misfit`)."""
    patch = [int(v) for v in patch]
    same = [list(s) for s in shapes if len(s) == len(patch)]
    if not same or len(same) != len(shapes) or any(all(p <= n for p, n in zip(patch, s)) for s in same):
        return None
    return [max(s[i] for s in same) for i in range(len(patch))]


def patch_misfit(patch: Sequence[int], largest: Sequence[int], judged: str) -> tuple[str, str]:
    """``(reason, hint)`` of the warning for a patch larger than ``judged`` (e.g. "every image")."""
    largest = list(largest)
    return (f"data.patch_size {[int(v) for v in patch]} is larger than {judged} (the largest per axis, after "
            f"resampling: {largest}): every crop is padded, costing time for nothing",
            f"choose a patch_size of at most {largest}, or check data.spacing")
