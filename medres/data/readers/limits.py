"""The size cap that refuses decompression bombs before anything is decompressed or allocated.

A scan declares its size in its header (NIfTI ``dim``, DICOM Rows x Columns x frames x files, a PNG/JPEG
header's width x height); the pixel data behind it may be compressed a thousandfold (an 18 MB
``.nii.gz`` can declare 4 GiB of int16). Readers call :func:`check_declared` with the declared voxel
count *before* decoding. More than ``data.max_voxels`` (default 2**31 = 2.1e9, far above any CT: a
512 x 512 x 2000 whole-body scan is 5.2e8), or more than the memory the machine has free right now, is
a DataError naming the declared shape.

"Free memory" is what this process may still use: the least of the machine's ``MemAvailable``, the room
left under the process's address-space limit (``RLIMIT_AS``, ``ulimit -v``) and under its cgroup's memory
limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``, as a SLURM or container job has):
:func:`memory_allowance`. A ``MemoryError`` met while reading anyway is reported by
:func:`memory_error` as what it is, never as a damaged file.
"""

from __future__ import annotations

import functools
import os
import resource
from collections.abc import Sequence
from pathlib import Path

from medres.errors import DataError

__all__ = ["DEFAULT_MAX_FILES_PER_SERIES", "DEFAULT_MAX_VOXELS", "available_memory", "check_declared",
           "memory_allowance", "memory_error", "patch_fits_none", "patch_misfit", "resampled_shape"]

#: Default for ``data.max_voxels``.
DEFAULT_MAX_VOXELS = 2**31

#: Default for ``data.max_files_per_series``: directory entries a series folder may hold (a 2000-slice
#: whole-body CT has 2000; a folder past this is refused before any file in it is read).
DEFAULT_MAX_FILES_PER_SERIES = 100_000

#: Bytes per voxel a load needs beyond the stored bytes: load_image converts to float32.
_WORK_BYTES = 4


def _machine_free() -> int | None:
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


def _address_space_room() -> int | None:
    """Bytes of address space left under ``RLIMIT_AS`` (the limit minus this process's VmSize), or None."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    except (ValueError, OSError, AttributeError):
        return None
    if soft == resource.RLIM_INFINITY or soft < 0:
        return None
    used = 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return max(soft - used, 0)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) -> None


def _cgroup_dirs() -> list[tuple[str, str]]:
    """``(version, folder)`` of this process's memory cgroup: its own path under the mount (when visible),
    then the mount's root (a container sees its own cgroup there)."""
    v2, v1 = [], []
    try:
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, rel = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    v2.append(f"/sys/fs/cgroup{rel}".rstrip("/"))
                elif "memory" in controllers.split(","):
                    v1.append(f"/sys/fs/cgroup/memory{rel}".rstrip("/"))
    except (OSError, ValueError):
        pass
    return ([("v2", d) for d in [*v2, "/sys/fs/cgroup"]]
            + [("v1", d) for d in [*v1, "/sys/fs/cgroup/memory"]])


@functools.lru_cache(maxsize=1)
def _cgroup_files() -> tuple[int, str, str] | None:
    """``(limit, usage file, stat file)`` of this process's memory cgroup when it has a limit; found once
    per process (the limit of a job does not change while it runs; its usage is read at each call)."""
    for version, folder in _cgroup_dirs():
        limit_file, usage_file = (("memory.max", "memory.current") if version == "v2"
                                  else ("memory.limit_in_bytes", "memory.usage_in_bytes"))
        limit = _read_int(f"{folder}/{limit_file}")
        if limit is None or limit >= 1 << 60:  # v1 writes "no limit" as a page-rounded 2**63
            continue
        return limit, f"{folder}/{usage_file}", f"{folder}/memory.stat"
    return None


def _cgroup_room() -> int | None:
    """Bytes left under the cgroup's memory limit (limit minus usage, reclaimable page cache counted as
    free: the kernel drops it before it kills), or None when there is no limit or none is visible."""
    found = _cgroup_files()
    if found is None:
        return None
    limit, usage_file, stat_file = found
    usage = _read_int(usage_file) or 0
    cache = 0
    try:
        with open(stat_file) as fh:
            for line in fh:
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file"):
                    cache = max(cache, int(value))
    except (OSError, ValueError):
        pass
    return max(limit - usage + min(cache, usage), 0)


def memory_allowance() -> tuple[int | None, str]:
    """``(bytes, what)``: the memory this process may still use and which limit that is (the least of
    the machine's free memory, the address-space limit and the cgroup's memory limit); ``(None, "")``
    when none is known."""
    found = [(room, what) for room, what in (
        (_machine_free(), "the memory free on the machine now"),
        (_address_space_room(), "the room left under the process's address-space limit (RLIMIT_AS, "
                                "ulimit -v)"),
        (_cgroup_room(), "the room left under the job's cgroup memory limit (memory.max)"),
    ) if room is not None]
    if not found:
        return None, ""
    return min(found, key=lambda item: item[0])


def available_memory() -> int | None:
    """Bytes this process may still use (:func:`memory_allowance`), or None if unknown."""
    return memory_allowance()[0]


def memory_error(path: str | Path, need: int | None = None) -> DataError:
    """The DataError for a ``MemoryError`` met while reading ``path``: how much was needed (when known)
    and how much the process may use, never 'damaged'."""
    room, what = memory_allowance()
    needs = f"needs about {need / 2**30:.1f} GiB" if need else "needs more memory than it could get"
    allowed = f"the process may use {room / 2**30:.1f} GiB now ({what})" if room is not None else \
        "the process's memory limit is unknown"
    return DataError(f"ran out of memory while reading: it {needs}, {allowed}", path=path,
                     hint="raise the limit (ulimit -v, the job's memory request) or use a machine with more "
                          "memory, or lower data.max_voxels so such scans are refused up front")


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
    free, limit = memory_allowance()
    need = voxels * (max(int(itemsize), 1) + _WORK_BYTES)
    if free is not None and need > free:
        raise DataError(f"{what} declares {dims} voxels ({need / 2**30:.1f} GiB to load), more than the "
                        f"process may use now: {free / 2**30:.1f} GiB ({limit}); refused before "
                        "decompressing", path=path,
                        hint="raise the limit or free memory, use a machine with more, or crop/resample the "
                             "scan")


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
