"""The memory a reader may use is the process's own: RLIMIT_AS and the cgroup limit count, and a
MemoryError met while reading is reported as one (how much was needed, how much is allowed), never as a
damaged file. Each case runs a real reader in a child process under a real ``setrlimit(RLIMIT_AS)``."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from medres.data.readers import limits

_REPO = Path(__file__).resolve().parents[3]

#: the child reads NIfTI with medres.data.readers.nifti only (numpy + nibabel: ~150 MB of address space)
_CHILD = """
import json, sys
from medres.data.readers import nifti
from medres.errors import DataError
if sys.argv[2] == "skip-check":  # the up-front check passed (e.g. other allocations since): read anyway
    nifti.check_declared = lambda *a, **k: None
try:
    nifti.read_nifti(sys.argv[1])
    print(json.dumps({"ok": True}))
except DataError as err:
    print(json.dumps({"reason": err.reason, "hint": err.hint}))
"""


def _nifti(path: Path, shape: tuple[int, ...], data_bytes: int) -> Path:
    """A .nii.gz declaring ``shape`` int16 whose gzip stream holds ``data_bytes`` of zeros."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(hdr.binaryblock + b"\x00" * 4)
        chunk = bytes(1 << 22)
        for start in range(0, data_bytes, len(chunk)):
            fh.write(chunk[: min(len(chunk), data_bytes - start)])
    return path


def _read_under_limit(path: Path, limit: int, mode: str = "") -> tuple[dict, float]:
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, PYTHONPATH=str(_REPO), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode or "-"], capture_output=True,
                          text=True, env=env, preexec_fn=preexec, timeout=120)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), elapsed


def test_address_space_limit_refuses_before_decompressing(tmp_path):
    # 2**28 int16 voxels (1.5 GiB to load as float32) under a 512 MiB address space; the file is ~70 KB
    path = _nifti(tmp_path / "big.nii.gz", (1024, 1024, 256), 1 << 16)
    out, elapsed = _read_under_limit(path, 512 << 20)
    assert "RLIMIT_AS" in out["reason"], out
    assert "refused before decompressing" in out["reason"] and "1024 x 1024 x 256" in out["reason"]
    assert "damaged" not in out["reason"] and "truncated" not in out["reason"]
    assert elapsed < 30


def test_memory_error_while_reading_is_reported_as_memory(tmp_path):
    # the check is bypassed in the child: 128 MiB of real voxels under a 256 MiB address space fail in
    # nibabel with a real MemoryError, which must not read as a damaged file
    path = _nifti(tmp_path / "real.nii.gz", (512, 512, 256), 2 * 512 * 512 * 256)
    out, _ = _read_under_limit(path, 256 << 20, "skip-check")
    assert "ran out of memory while reading" in out["reason"], out
    assert "RLIMIT_AS" in out["reason"]
    assert "needs about" in out["reason"] and "data.max_voxels" in out["hint"]
    assert "damaged" not in out["reason"] and "truncated" not in out["reason"]


def test_allowance_is_the_least_of_the_limits(monkeypatch):
    monkeypatch.setattr(limits, "_machine_free", lambda: 8 << 30)
    monkeypatch.setattr(limits, "_address_space_room", lambda: 3 << 30)
    monkeypatch.setattr(limits, "_cgroup_room", lambda: 5 << 30)
    room, what = limits.memory_allowance()
    assert room == 3 << 30 and "RLIMIT_AS" in what
    monkeypatch.setattr(limits, "_cgroup_room", lambda: 1 << 30)
    room, what = limits.memory_allowance()
    assert room == 1 << 30 and "cgroup" in what
    assert limits.available_memory() == 1 << 30


def test_cgroup_files_are_read(tmp_path, monkeypatch):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text(f"{4 << 30}\n")
    (v2 / "memory.current").write_text(f"{3 << 30}\n")
    (v2 / "memory.stat").write_text(f"anon 1\ninactive_file {256 << 20}\n")
    monkeypatch.setattr(limits, "_cgroup_dirs", lambda: [("v2", str(v2))])
    limits._cgroup_files.cache_clear()
    assert limits._cgroup_room() == (1 << 30) + (256 << 20)
    (v2 / "memory.current").write_text(f"{(7 << 30) // 2}\n")  # usage is read at every call
    assert limits._cgroup_room() == (1 << 29) + (256 << 20)
    (v2 / "memory.max").write_text("max\n")  # v2 without a limit
    limits._cgroup_files.cache_clear()
    assert limits._cgroup_room() is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text(f"{2 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    monkeypatch.setattr(limits, "_cgroup_dirs", lambda: [("v2", str(v2)), ("v1", str(v1))])
    limits._cgroup_files.cache_clear()
    assert limits._cgroup_room() == 1 << 30
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    limits._cgroup_files.cache_clear()
    assert limits._cgroup_room() is None
    limits._cgroup_files.cache_clear()


def test_address_space_room_counts_what_the_process_maps():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        assert limits._address_space_room() is None
    vm = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    code = ("import resource; from medres.data.readers import limits; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({vm * 4}, {vm * 4})); "
            "print(limits._address_space_room())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(_REPO)))
    room = int(done.stdout.strip())
    assert 0 < room < vm * 4


def test_a_cache_entry_that_runs_out_of_memory_is_kept_not_recomputed(tmp_path, monkeypatch):
    # a MemoryError while mapping an entry is the process's limit, not a damaged entry: the entry stays
    import torch

    from medres.data.pipeline import disk_cache
    from medres.errors import DataError

    cache = disk_cache.MmapCache(tmp_path)
    cache.put("k", {"image": torch.zeros(4, 4), "image_meta": {}})
    assert cache.get("k") is not None
    files = sorted(p.name for p in (tmp_path / "k").iterdir())

    def no_memory(*args, **kwargs):  # what np.load raises when the mapping cannot be had
        raise MemoryError

    monkeypatch.setattr(disk_cache.np, "load", no_memory)
    try:
        cache.get("k")
    except DataError as err:
        assert "ran out of memory" in err.reason and "damaged" not in err.reason
    else:
        raise AssertionError("a MemoryError must be reported")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == files
