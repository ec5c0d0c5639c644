"""RT Structure Sets (RTSTRUCT) to and from medres's label maps, with scikit-image and pydicom.

Writing: each class's mask, slice by slice, is traced with ``skimage.measure.find_contours`` at level 0.5
(marching squares), so every contour runs half-way between a voxel inside and one outside; holes and
islands become separate contours of the same ROI. Reading (:func:`rasterise_contours`): a voxel belongs
to an ROI when its centre lies inside an odd number of the ROI's contours on that slice (even-odd rule,
so holes are holes: PS3.3 C.8.8.6.3's "XOR" technique) or on a contour line, within 0.01 mm (the same
section: "points lying along the path defined by the contour are considered to be part of the ROI", so
contours traced through the centres of boundary voxels, as rt-utils writes them, keep their boundary).
The two are exact inverses.

Contour points are patient coordinates (LPS mm) mapped onto the source grid of
:mod:`medres.data.source_series`.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medres.errors import DataError

from .source_series import PLANE_ATOL_MM, SourceSeries, series_in_folder

__all__ = ["RTSTRUCT_SOP_CLASS", "write_rtstruct", "trace_slice", "rasterise_contours"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # the retired Detached Study Management class
_CLOSED = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")  # PS3.3 C.8.8.6.1; both are combined by XOR here
_COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 200, 200)]
# identifying what the structure set is about: the patient and study it belongs to (PS3.3 C.7.1.1, C.7.2.1)
_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                  "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName")


def trace_slice(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``[N, 2]`` (x=column, y=row, in voxels) around the True voxels of ``mask2d[x, y]``."""
    from skimage import measure

    padded = np.pad(np.asarray(mask2d, dtype=np.float32), 1)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = measure.approximate_polygon(contour, tolerance=0.05)[:-1] - 1.0  # drop the repeat
        if len(contour) >= 3:
            out.append(contour)  # find_contours gives (axis0, axis1) = (x, y) for a [x, y] array
    return out


def rasterise_contours(polygons: Sequence[np.ndarray], shape: tuple[int, int], *,
                       spacing: tuple[float, float] = (1.0, 1.0), atol_mm: float = 1e-6) -> np.ndarray:
    """``[X, Y]`` bool: voxel centres inside an odd number of ``polygons`` (``[N, 2]`` x, y in voxels) or
    within ``atol_mm`` of one's outline (``spacing``: mm per voxel along x and y)."""
    from skimage import draw

    inside = np.zeros(shape, dtype=bool)
    edge = np.zeros(shape, dtype=bool)
    for poly in polygons:
        rr, cc = draw.polygon(poly[:, 0], poly[:, 1], shape=shape)
        filled = np.zeros(shape, dtype=bool)
        filled[rr, cc] = True
        inside ^= filled
        edge |= _on_outline(poly, shape, np.asarray(spacing, dtype=np.float64), atol_mm)
    return inside | edge


def _on_outline(poly: np.ndarray, shape: tuple[int, int], spacing: np.ndarray, atol_mm: float) -> np.ndarray:
    """Voxel centres within ``atol_mm`` of the polygon's edges."""
    out = np.zeros(shape, dtype=bool)
    reach = atol_mm / spacing  # voxels
    for a, b in zip(poly, np.roll(poly, -1, axis=0)):
        lo = np.maximum(np.floor(np.minimum(a, b) - reach), 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a, b) + reach), np.array(shape) - 1).astype(int)
        if np.any(hi < lo):
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
        pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
        a_mm, b_mm, p_mm = a * spacing, b * spacing, pts * spacing
        d = b_mm - a_mm
        length2 = float(d @ d)
        t = np.clip(((p_mm - a_mm) @ d) / length2, 0, 1) if length2 > 0 else np.zeros(len(pts))
        dist = np.linalg.norm(p_mm - (a_mm + t[:, None] * d), axis=1)
        hit = pts[dist <= atol_mm].astype(int)
        out[hit[:, 0], hit[:, 1]] = True
    return out


def _copy(ds: Dataset, src: Dataset, keywords: Sequence[str]) -> None:
    for keyword in keywords:
        setattr(ds, keyword, src.get(keyword, ""))


def _contour_image(grid: SourceSeries, z: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = grid.datasets[z].SOPClassUID
    item.ReferencedSOPInstanceUID = grid.datasets[z].SOPInstanceUID
    return item


def write_rtstruct(mask: np.ndarray, source_series_dir: str | Path, mask_labels: Sequence[str],
                   out_path: str | Path, *, include_empty: bool = False,
                   structure_set_label: str = "MEDRES") -> Path:
    """Write a label map ``[X, Y, Z]`` on the grid of the series in ``source_series_dir`` as an RTSTRUCT.

    One ROI per foreground class (``mask_labels[k]`` for value ``k``; 0 is background) present in the
    mask, or every class with ``include_empty`` (an empty class is an ROI without contours). The
    structure set references the study, series, slices (ContourImageSequence) and FrameOfReferenceUID of
    the source, and carries its patient and study identification, nothing else from it.
    """
    out_path = Path(out_path)
    grid = series_in_folder(source_series_dir)
    mask = np.asarray(mask)
    if mask.ndim == 2:
        mask = mask[:, :, None]
    if tuple(mask.shape) != grid.shape:
        raise DataError(f"the mask's shape {tuple(mask.shape)} is not the source series' grid {grid.shape} "
                        "(columns, rows, slices)", path=out_path,
                        hint="pass a mask on the source image's grid, as load_image gives it")
    src = grid.datasets[0]
    frame_uid = grid.uid("FrameOfReferenceUID")
    if not frame_uid:
        raise DataError("the source series has no FrameOfReferenceUID, which contours must refer to",
                        path=source_series_dir, hint="re-export the source series with its full header")
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = src.get("SpecificCharacterSet", "ISO_IR 100")
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    _copy(ds, src, _PATIENT_STUDY)
    ds.FrameOfReferenceUID = frame_uid  # the Frame of Reference module (PS3.3 C.7.4.1)
    ds.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 9902
    ds.InstanceNumber = 1
    ds.OperatorsName = ""
    ds.Manufacturer = "medres"
    ds.StructureSetLabel = structure_set_label
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = grid.uid("SeriesInstanceUID")
    series_ref.ContourImageSequence = DicomSequence([_contour_image(grid, z) for z in range(grid.shape[2])])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    study_ref.ReferencedSOPInstanceUID = grid.uid("StudyInstanceUID")
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    lps = grid.lps_affine
    rois, contours, observations = [], [], []
    for value, name in enumerate(mask_labels):
        if value == 0:
            continue
        present = mask == value
        if not present.any() and not include_empty:
            continue
        number = len(rois) + 1
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = str(name)[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)
        item = Dataset()
        item.ROIDisplayColor = list(_COLOURS[(number - 1) % len(_COLOURS)])
        item.ReferencedROINumber = number
        planar = []
        for z in np.flatnonzero(present.any(axis=(0, 1))):
            for poly in trace_slice(present[:, :, z]):
                voxels = np.column_stack([poly, np.full(len(poly), float(z)), np.ones(len(poly))])
                points = (voxels @ lps.T)[:, :3]
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([_contour_image(grid, int(z))])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(planar) + 1
                contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
                planar.append(contour)
        if planar:
            item.ContourSequence = DicomSequence(planar)
        contours.append(item)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = ""
        obs.ROIInterpreter = ""
        observations.append(obs)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    tmp.replace(out_path)
    return out_path


def _roi_names(ds: Dataset) -> dict[int, str]:
    out = {}
    for roi in ds.get("StructureSetROISequence") or []:
        try:
            out[int(roi.ROINumber)] = str(roi.get("ROIName", "") or f"ROI {roi.ROINumber}")
        except Exception:
            continue
    return out


def _contour_points(contour: Dataset, name: str, where: Path) -> np.ndarray:
    try:
        points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
    except Exception:
        raise DataError(f"ROI {name[:64]!r} has a contour with unreadable ContourData", path=where,
                        hint="re-export the structure set") from None
    if points.size == 0 or points.size % 3 or not np.all(np.isfinite(points)):
        raise DataError(f"ROI {name[:64]!r} has a contour whose ContourData is not x, y, z triplets",
                        path=where, hint="re-export the structure set")
    return points.reshape(-1, 3)


def rtstruct_layers(ds: Dataset, grid: SourceSeries, where: Path, mapping, warnings: list[str]
                    ) -> list[tuple[str, str, np.ndarray]]:
    """``(ROI name, label, [X, Y, Z] bool)`` for every ROI ``mapping(name)`` sends to a label.

    Checks each CLOSED_PLANAR (or CLOSEDPLANAR_XOR) contour of a mapped ROI: on one source slice (within
    0.01 mm of its plane), inside the image, and on the slice its ContourImageSequence names. POINT and
    OPEN contours are skipped with a warning (they enclose no area).
    """
    names = _roi_names(ds)
    depths = grid.slice_depths
    normal = grid.normal
    spacing = np.linalg.norm(grid.affine[:3, :2], axis=0)  # mm per voxel along x (columns) and y (rows)
    lo = -0.5 - PLANE_ATOL_MM / spacing
    hi = np.array(grid.shape[:2], dtype=float) - 0.5 + PLANE_ATOL_MM / spacing
    uid_to_z = {uid: z for z, uid in enumerate(grid.sop_uids)}
    unmapped: list[str] = []
    layers = []
    for item in ds.get("ROIContourSequence") or []:
        number = int(item.get("ReferencedROINumber", -1))
        name = names.get(number, f"ROI {number}")
        label = mapping(name)
        if label is None:
            unmapped.append(name)
            continue
        if label == "":
            continue
        layer = np.zeros(grid.shape, dtype=bool)
        per_slice: dict[int, list[np.ndarray]] = {}
        skipped = 0
        for contour in item.get("ContourSequence") or []:
            if str(contour.get("ContourGeometricType", "")).upper() not in _CLOSED:
                skipped += 1
                continue
            points = _contour_points(contour, name, where)
            depth = points @ normal
            z = np.abs(depth[:, None] - depths[None, :]).argmin(axis=1)
            off = np.abs(depth - depths[z])
            if off.max() > PLANE_ATOL_MM or len(set(z.tolist())) > 1:
                raise DataError(f"ROI {name[:64]!r} has a contour off the image's slice planes (up to "
                                f"{off.max():.3f} mm from the nearest slice; tolerance {PLANE_ATOL_MM} mm)",
                                path=where, hint="the structure set was drawn on another series or "
                                                 "reconstruction: pass that series, or re-contour")
            z0 = int(z[0])
            refs = [str(r.ReferencedSOPInstanceUID) for r in contour.get("ContourImageSequence") or []]
            if refs and refs[0] in uid_to_z and uid_to_z[refs[0]] != z0:
                raise DataError(f"ROI {name[:64]!r} has a contour lying on slice {z0 + 1} of the series that "
                                f"names slice {uid_to_z[refs[0]] + 1} as its image", path=where,
                                hint="the structure set's references are inconsistent: re-export it")
            voxels = grid.lps_to_voxel(points)[:, :2]
            if np.any(voxels < lo) or np.any(voxels > hi):
                raise DataError(f"ROI {name[:64]!r} has a contour outside the image (slice {z0 + 1}: voxel "
                                f"columns {voxels[:, 0].min():.1f}..{voxels[:, 0].max():.1f} of "
                                f"0..{grid.shape[0] - 1}, rows {voxels[:, 1].min():.1f}.."
                                f"{voxels[:, 1].max():.1f} of 0..{grid.shape[1] - 1})", path=where,
                                hint="the structure set belongs to another series, or the contour extends "
                                     "past the scan's field of view: fix or remove that contour")
            if len(voxels) >= 3:
                per_slice.setdefault(z0, []).append(voxels)
        for z0, polygons in per_slice.items():
            layer[:, :, z0] = rasterise_contours(polygons, grid.shape[:2], spacing=tuple(spacing),
                                                 atol_mm=PLANE_ATOL_MM)
        if skipped:
            warnings.append(f"ROI {name[:64]!r}: {skipped} POINT/OPEN contour(s) skipped (no area)")
        layers.append((name, label, layer))
    mapped = {n for n, _, _ in layers}
    for name in names.values():  # ROIs declared without an ROIContourSequence item are empty
        if name not in mapped and name not in unmapped and mapping(name) not in (None, ""):
            layers.append((name, mapping(name), np.zeros(grid.shape, dtype=bool)))
    if unmapped:
        shown = ", ".join(repr(n[:64]) for n in unmapped[:10])
        warnings.append(f"{len(unmapped)} ROI(s) map to no mask label and were ignored: {shown}")
    return layers
