"""Build DICOM series for tests from copies of pydicom's shipped ``CT_small.dcm`` with edited tags.

``write_series(folder, n)`` writes ``n`` slices of one series, slice ``k`` at ``k * spacing`` mm along the
slice normal and with its stored pixels raised by ``k * SLICE_STEP`` so a test can tell the slices
apart after loading (voxel ``[:, :, k]`` of a correctly ordered volume equals the CT_small slice in HU
plus ``k * SLICE_STEP``). Edits (missing slice, duplicate position, tilt, ...) are made by the caller
through ``positions``, ``orientations``, ``instance_numbers`` or ``edit``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
SLICE_STEP = 10  # stored-value offset between consecutive slices
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_small() -> Dataset:
    """A fresh copy of CT_small (128x128 int16, RescaleSlope 1, RescaleIntercept -1024)."""
    return pydicom.dcmread(CT_SMALL)


def ct_small_hu() -> np.ndarray:
    """CT_small's pixels in HU, ``[rows, cols]``, computed with pydicom alone (the reference)."""
    ds = ct_small()
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def write_series(
    folder: str | Path,
    n: int = 5,
    *,
    spacing: float = 2.5,
    origin: Sequence[float] = (-158.0, -179.0, -75.0),
    orientation: Sequence[float] = AXIAL,
    positions: Sequence[Sequence[float]] | None = None,
    orientations: Sequence[Sequence[float]] | None = None,
    instance_numbers: Sequence[int] | None = None,
    series_uid: str | None = None,
    series_number: int = 3,
    description: str = "AXIAL 2.5",
    edit: Callable[[int, Dataset], None] | None = None,
    name: str = "IM{:04d}.dcm",
) -> list[Path]:
    """Write ``n`` slices of one series into ``folder``; returns their paths in slice order ``k``.

    Slice ``k`` sits at ``origin + k * spacing * normal`` unless ``positions`` gives them, has
    ``InstanceNumber = k + 1`` unless ``instance_numbers`` gives them, and stored pixels
    ``CT_small + k * SLICE_STEP``. ``edit(k, ds)`` may change anything before writing.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = ct_small()
    pixels = base.pixel_array.astype(np.int16)
    orientation = np.asarray(orientation, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    series_uid = series_uid or generate_uid()
    paths = []
    for k in range(n):
        ds = copy.deepcopy(base)
        pos = positions[k] if positions is not None else np.asarray(origin) + k * spacing * normal
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        iop = orientations[k] if orientations is not None else orientation
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.InstanceNumber = instance_numbers[k] if instance_numbers is not None else k + 1
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SliceThickness = spacing
        ds.PixelData = (pixels + k * SLICE_STEP).astype(np.int16).tobytes()
        if edit is not None:
            edit(k, ds)
        path = folder / name.format(k)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_enhanced_multiframe(path: str | Path, order: Sequence[int] = (2, 0, 1), *, spacing: float = 3.0,
                              slope: float = 2.0, intercept: float = -1000.0) -> Path:
    """An Enhanced-CT-style multi-frame file: frame ``i`` holds slice ``order[i]`` (at ``order[i] * spacing``
    mm) with stored pixels ``CT_small + order[i] * SLICE_STEP``; geometry and rescale live only in the
    functional groups (per-frame positions, shared orientation, spacing and rescale)."""
    ds = ct_small()
    pixels = ds.pixel_array.astype(np.int16)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                    "RescaleIntercept", "SliceLocation"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.NumberOfFrames = len(order)
    ds.PixelData = b"".join((pixels + k * SLICE_STEP).astype(np.int16).tobytes() for k in order)
    shared = Dataset()
    plane = Dataset()
    plane.ImageOrientationPatient = list(AXIAL)
    shared.PlaneOrientationSequence = DicomSequence([plane])
    measures = Dataset()
    measures.PixelSpacing = [0.5, 0.75]
    measures.SliceThickness = spacing
    shared.PixelMeasuresSequence = DicomSequence([measures])
    transform = Dataset()
    transform.RescaleSlope = slope
    transform.RescaleIntercept = intercept
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-100.0, -120.0, -50.0 + k * spacing]
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
