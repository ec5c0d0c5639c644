"""Assembling DICOM frames into one regular volume: slice order, spacing and orientation checks, affine.

Slices are ordered by ImagePositionPatient projected on the slice normal (the cross product of the two
ImageOrientationPatient vectors), never by InstanceNumber or file name. Frames that do not form one
regular grid (several sizes or orientations, duplicate, missing or unevenly spaced slices, positions
drifting within the slice plane as with gantry tilt) raise a :class:`medres.errors.DataError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medres.errors import DataError

__all__ = ["Frame", "assemble", "ORIENTATION_ATOL", "POSITION_ATOL_MM", "SPACING_RTOL", "GAP_ATOL_MM"]

logger = logging.getLogger("medres.data.readers.dicom")

ORIENTATION_ATOL = 1e-3  # direction cosines
POSITION_ATOL_MM = 0.05  # slice positions off the stacking line / duplicates
SPACING_RTOL = 0.01  # slice gaps must agree to 1% of the smallest gap ...
GAP_ATOL_MM = 0.02  # ... or 0.02 mm, whichever is larger (positions are often rounded to 0.01 mm)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Frame:
    """One 2D frame: pixels ``[rows, cols(, 3)]`` plus its plane geometry (LPS mm) when present."""

    pixels: np.ndarray
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None  # (between rows, between columns)
    thickness: float | None
    source: str


def _affine(orientation: np.ndarray, pixel_spacing: tuple[float, float], slice_step: np.ndarray,
            origin: np.ndarray) -> np.ndarray:
    """RAS affine of ``[X, Y, Z]`` voxels (X: column index, Y: row index), as MONAI's PydicomReader."""
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * pixel_spacing[1]
    lps[:3, 1] = orientation[3:] * pixel_spacing[0]
    lps[:3, 2] = slice_step
    lps[:3, 3] = origin
    return _LPS_TO_RAS @ lps


def assemble(frames: list[Frame], path: Path, *, volume: bool) -> tuple[np.ndarray, np.ndarray]:
    """Check and stack frames into ``[X, Y(, Z)](, 3)`` and its RAS affine."""
    sizes: dict[tuple[int, ...], list[str]] = {}
    for f in frames:
        sizes.setdefault(f.pixels.shape, []).append(f.source)
    if len(sizes) > 1:
        listing = "; ".join(f"{'x'.join(map(str, s))}: {len(v)} slice(s) (e.g. {v[0]})"
                            for s, v in sizes.items())
        raise DataError(f"slices differ in size or colour ({listing})", path=path,
                        hint="keep one series per folder, or choose one with series_uid")
    geometric = [f for f in frames if f.position is not None and f.orientation is not None]
    if len(frames) == 1 and not volume:
        f = frames[0]
        orientation = f.orientation if f.orientation is not None else np.array([1.0, 0, 0, 0, 1, 0])
        normal = np.cross(orientation[:3], orientation[3:])
        origin = f.position if f.position is not None else np.zeros(3)
        affine = _affine(orientation, f.pixel_spacing or (1.0, 1.0), normal, origin)
        return np.swapaxes(f.pixels, 0, 1), affine
    if len(geometric) != len(frames):
        if len(geometric) == 0 and len(frames) > 1 and not volume:
            # frames of one file without positions (cine, secondary capture): keep the file's order
            logger.info("%s: frames carry no positions; stacked in file order with 1 mm steps", path.name)
            stack = np.stack([np.swapaxes(f.pixels, 0, 1) for f in frames], axis=2)
            return stack, _affine(np.array([1.0, 0, 0, 0, 1, 0]), frames[0].pixel_spacing or (1.0, 1.0),
                                  np.array([0.0, 0.0, 1.0]), np.zeros(3))
        missing = [f.source for f in frames if f.position is None or f.orientation is None]
        raise DataError(f"{len(missing)} slice(s) lack ImagePositionPatient/ImageOrientationPatient "
                        f"(e.g. {missing[0]}), so the slices cannot be ordered", path=path,
                        hint="re-export the series with its geometry tags")
    ref = frames[0].orientation
    tilted = [f.source for f in frames if np.max(np.abs(f.orientation - ref)) > ORIENTATION_ATOL]
    if tilted:
        raise DataError(f"{len(tilted)} of {len(frames)} slices have another orientation (tilted or "
                        f"re-oriented; e.g. {tilted[0]}): a volume needs one ImageOrientationPatient",
                        path=path, hint="remove the localizer/reformatted slices or split the series")
    if any(f.pixel_spacing is None for f in frames):
        raise DataError("slices lack PixelSpacing", path=path, hint="re-export the series with its geometry")
    spacing = frames[0].pixel_spacing
    if any(not np.allclose(f.pixel_spacing, spacing, rtol=1e-3, atol=0) for f in frames):
        raise DataError("slices differ in PixelSpacing", path=path, hint="keep one series per folder")
    row, col = ref[:3], ref[3:]
    normal = np.cross(row, col)
    if not np.isclose(np.linalg.norm(normal), 1.0, atol=1e-2):
        raise DataError("has an ImageOrientationPatient whose vectors are not orthonormal", path=path)
    normal = normal / np.linalg.norm(normal)
    depth = np.array([f.position @ normal for f in frames])
    order = np.argsort(depth, kind="stable")
    frames = [frames[i] for i in order]
    depth = depth[order]
    gaps = np.diff(depth)
    dup = np.flatnonzero(gaps < POSITION_ATOL_MM)
    if dup.size:
        i = dup[0]
        raise DataError(f"{dup.size} duplicate slice position(s): e.g. {frames[i].source} and "
                        f"{frames[i + 1].source} both lie at {depth[i]:.2f} mm along the slice normal",
                        path=path, hint="remove duplicate files, or split echoes/phases/acquisitions into "
                                        "their own series")
    if len(frames) > 1:
        tol = max(SPACING_RTOL * float(gaps.min()), GAP_ATOL_MM)
        # the series' step: the smallest gap when it is the common one, else the median gap
        common_min = 2 * np.sum(gaps - gaps.min() <= tol) >= len(gaps)
        step = float(gaps.min()) if common_min else float(np.median(gaps))
        off = np.abs(gaps - step) > tol
        if off.any():
            ratios = gaps / step
            whole = np.round(ratios)
            multiple = off & (ratios > 1.5) & (np.abs(gaps - whole * step) <= tol * whole)
            if (multiple == off).all():
                i = int(np.flatnonzero(multiple)[0])
                n_missing = int(np.sum(np.round(ratios[multiple]) - 1))
                raise DataError(f"{n_missing} slice(s) missing: the gap between {frames[i].source} and "
                                f"{frames[i + 1].source} is {gaps[i]:.2f} mm where the series steps "
                                f"{step:.2f} mm", path=path,
                                hint="re-export the complete series (a slice file is missing)")
            i = int(np.flatnonzero(off & ~multiple)[0])
            raise DataError(f"uneven slice spacing: gaps between slices range from {gaps.min():.2f} to "
                            f"{gaps.max():.2f} mm (e.g. {gaps[i]:.2f} mm between {frames[i].source} and "
                            f"{frames[i + 1].source}, where the series steps {step:.2f} mm)", path=path,
                            hint="resample the series to even spacing (e.g. dcm2niix) and use the NIfTI")
        slice_step = (frames[-1].position - frames[0].position) / (len(frames) - 1)
        drift = [np.linalg.norm((f.position - frames[0].position) - (d - depth[0]) * normal)
                 for f, d in zip(frames, depth)]
        if max(drift) > POSITION_ATOL_MM:
            raise DataError(f"slice positions drift within the slice plane by up to {max(drift):.2f} mm "
                            "(gantry tilt or a shifted slice)", path=path,
                            hint="resample the series (e.g. dcm2niix corrects gantry tilt) and use the NIfTI")
        slice_step = normal * float(slice_step @ normal)
    else:
        slice_step = normal * (frames[0].thickness or 1.0)
    stack = np.stack([np.swapaxes(f.pixels, 0, 1) for f in frames], axis=2)
    return stack, _affine(ref, spacing, slice_step, frames[0].position)
