"""The image grid of a source DICOM series, from headers only, exactly as
:func:`medres.data.readers.io.load_image`
places it.

Derived objects (SEG, RTSTRUCT) are converted onto, and written from, the ``[X, Y, Z]`` voxel grid that
medres's series reader gives the image (X: column index, Y: row index, Z: slices ordered by
ImagePositionPatient on the slice normal). The ordering, the geometry checks and the affine come from the
reader's own :func:`medres.data.readers.dicom_geometry.assemble`, fed one-pixel stand-ins for the slices, so a
mask built here always passes :func:`medres.data.readers.io.check_image_mask` against the loaded image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medres.data.readers.dicom_geometry import Frame, assemble
from medres.data.readers.limits import memory_error
from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.errors import DataError

__all__ = ["PLANE_ATOL_MM", "SourceSeries", "finite_floats", "read_headers", "series_in_folder",
           "source_series"]

#: annotation frames and contours must lie this close (mm) to a source slice plane and the image edges
PLANE_ATOL_MM = 0.01

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def finite_floats(value: object, n: int) -> np.ndarray | None:
    """A multi-valued DICOM number (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) as ``n``
    finite floats; None when it is absent, holds another count of values, or a non-number or NaN: the
    caller says which tag of which file, and what to do."""
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)  # type: ignore[attr-defined]
    except Exception:
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


@dataclass
class SourceSeries:
    """One single-frame image series in medres's slice order (``datasets[z]`` is slice ``z``)."""

    datasets: list[Dataset]
    paths: list[Path | None]
    affine: np.ndarray  # [4, 4] voxel (x=col, y=row, z=slice) -> RAS mm, as load_image gives it
    rows: int
    cols: int

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)`` = (columns, rows, slices), the shape of ``load_image(series)``."""
        return self.cols, self.rows, len(self.datasets)

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @property
    def lps_affine(self) -> np.ndarray:
        """Voxel index -> patient LPS mm (the DICOM patient coordinate system)."""
        return _LPS_TO_RAS @ self.affine

    def lps_to_voxel(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` LPS mm -> ``[N, 3]`` continuous voxel indices ``(x, y, z)``."""
        inv = np.linalg.inv(self.lps_affine)
        pts = np.asarray(points, dtype=np.float64)
        return pts @ inv[:3, :3].T + inv[:3, 3]

    @property
    def orientation(self) -> np.ndarray:
        """The slices' ImageOrientationPatient (six direction cosines, LPS)."""
        return np.asarray([float(v) for v in self.datasets[0].ImageOrientationPatient])

    @property
    def pixel_spacing(self) -> np.ndarray:
        """The slices' PixelSpacing (mm between rows, between columns)."""
        return np.asarray([float(v) for v in self.datasets[0].PixelSpacing])

    @property
    def normal(self) -> np.ndarray:
        """The unit slice normal in LPS (cross product of the ImageOrientationPatient vectors)."""
        iop = self.orientation
        n = np.cross(iop[:3], iop[3:])
        return n / np.linalg.norm(n)

    @property
    def slice_depths(self) -> np.ndarray:
        """Each slice's ImagePositionPatient projected on the normal (mm), ascending."""
        return np.array([np.asarray([float(v) for v in ds.ImagePositionPatient]) @ self.normal
                         for ds in self.datasets])

    def uid(self, keyword: str) -> str | None:
        value = self.datasets[0].get(keyword)
        return str(value) if value else None


def read_headers(paths: Sequence[Path]) -> list[tuple[Path, Dataset]]:
    """Parse the headers (no pixel data) of DICOM files; a damaged file is a DataError naming it."""
    out = []
    with quiet_pydicom():
        for path in paths:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                    ds.get("SOPInstanceUID")
            except OSError as exc:
                raise DataError(f"could not be read ({safe_message(exc)})", path=path,
                                hint="check that the file exists and is readable") from None
            except MemoryError:
                raise memory_error(path) from None
            except Exception as exc:
                raise DataError(f"is a damaged DICOM file ({safe_message(exc)})", path=path,
                                hint="re-export it from the source system") from None
            out.append((Path(path), ds))
    return out


def _floats(ds: Dataset, keyword: str, n: int, path: Path | None) -> np.ndarray:
    values = finite_floats(ds.get(keyword), n)
    if values is None:
        raise DataError(f"lacks a valid {keyword}, so its place in the series is unknown", path=path,
                        hint="re-export the source series with its geometry tags")
    return values


def source_series(items: Sequence[Dataset | Path | str], *, where: str | Path | None = None) -> SourceSeries:
    """The grid of a single-frame image series, given its files or parsed datasets (any order).

    Raises a DataError when the files are not one regular series (the reader's own checks: one
    orientation and size, even spacing, no duplicate or missing slice) or are multi-frame images.
    """
    pairs: list[tuple[Path | None, Dataset]] = []
    files = [Path(i) for i in items if not isinstance(i, Dataset)]
    parsed = dict(read_headers(files)) if files else {}
    for i in items:
        pairs.append((None, i) if isinstance(i, Dataset) else (Path(i), parsed[Path(i)]))
    if not pairs:
        raise DataError("no source image files were given", path=where,
                        hint="pass the files of the series the annotation references")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in pairs}
    if len(series) > 1:
        raise DataError(f"the source files belong to {len(series)} series, not one", path=where,
                        hint="pass the files of exactly one image series")
    frames = []
    for k, (path, ds) in enumerate(pairs):
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise DataError("is a multi-frame image; annotations on multi-frame sources are not supported",
                            path=path or where, hint="convert the source to single-frame slices")
        if "Rows" not in ds or "Columns" not in ds:
            raise DataError("is not an image (no Rows/Columns)", path=path or where,
                            hint="pass only the image files of the source series")
        spacing = _floats(ds, "PixelSpacing", 2, path or where)
        frames.append(Frame(
            pixels=np.full((1, 1), k, dtype=np.float64),  # a stand-in carrying the file's index
            position=_floats(ds, "ImagePositionPatient", 3, path or where),
            orientation=_floats(ds, "ImageOrientationPatient", 6, path or where),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            thickness=_positive(ds.get("SliceThickness")),
            source=path.name if path is not None else f"instance {k + 1}",
        ))
    sizes = {(int(ds.Rows), int(ds.Columns)) for _, ds in pairs}
    if len(sizes) > 1:
        raise DataError(f"the source slices differ in size ({sorted(sizes)})", path=where,
                        hint="pass the files of exactly one image series")
    stack, affine = assemble(frames, Path(where) if where is not None else Path("series"), volume=True)
    order = [int(v) for v in stack[0, 0, :]]
    rows, cols = sizes.pop()
    return SourceSeries(datasets=[pairs[i][1] for i in order], paths=[pairs[i][0] for i in order],
                        affine=affine, rows=rows, cols=cols)


def _positive(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except Exception:
        return None
    return out if np.isfinite(out) and out > 0 else None


def series_in_folder(folder: str | Path, *, series_uid: str | None = None) -> SourceSeries:
    """The image series in a folder (sub-folders not searched), read as :func:`read_dicom_series` would:
    non-DICOM files and non-image objects are skipped; several series need ``series_uid``."""
    from medres.data.readers.dicom import _sop_refusal, series_files

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("is not a folder of DICOM slices", path=folder,
                        hint="pass the source series folder")
    files = series_files(folder, hidden=False)  # counted and checked before any is parsed
    groups: dict[str, list[Dataset]] = {}
    for path in files:
        try:
            (_, ds), = read_headers([path])
        except DataError:
            continue
        if "SOPClassUID" not in ds or _sop_refusal(ds, path) is not None or "Rows" not in ds:
            continue
        ds.filename = str(path)
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append(ds)
    if series_uid is not None:
        groups = {k: v for k, v in groups.items() if k == series_uid}
    if not groups:
        raise DataError("holds no DICOM image slices", path=folder, hint="pass the source series folder")
    if len(groups) > 1:
        raise DataError(f"holds {len(groups)} image series", path=folder,
                        hint="put each series in its own folder, or pass its SeriesInstanceUID")
    out = source_series(next(iter(groups.values())), where=folder)
    out.paths = [Path(ds.filename) for ds in out.datasets]
    return out
