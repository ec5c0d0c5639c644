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
:mod:`medres.data.readers.source_series`.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medres.data.readers.source_series import PLANE_ATOL_MM, SourceSeries, series_in_folder
from medres.errors import DataError

__all__ = ["MAX_CONTOUR_POINTS", "MAX_STRUCTURE_CONTOURS", "MAX_STRUCTURE_POINTS", "RTSTRUCT_SOP_CLASS",
           "write_rtstruct", "trace_slice", "rasterise_contours"]

RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # the retired Detached Study Management class
_CLOSED = ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR")  # PS3.3 C.8.8.6.1; both are combined by XOR here
_COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (255, 0, 255), (0, 200, 200)]
#: Reading bounds: points in one contour, and contours and points over the ROIs read from one structure
#: set (a 512 x 512 slice's outline has a few thousand points; a whole-body set a few million in all)
MAX_CONTOUR_POINTS = 100_000
MAX_STRUCTURE_CONTOURS = 200_000
MAX_STRUCTURE_POINTS = 5_000_000
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
    edge = np.zeros(shape, dtype=bool)
    for poly in polygons:
        _on_outline(poly, edge, np.asarray(spacing, dtype=np.float64), atol_mm)
    return _even_odd_fill(polygons, shape) | edge


def _even_odd_fill(polygons: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Voxel centres inside an odd number of ``polygons``: a scanline fill over all their edges at once.

    By hand because ``skimage.draw.polygon`` tests every pixel of the bounding box against every vertex
    (a 10^5-point contour took minutes); here time follows the edges' row crossings plus the slice. A
    centre exactly on an edge may go either way: the caller adds the outline itself.
    """
    nx, ny = int(shape[0]), int(shape[1])
    counts = np.zeros(nx * (ny + 1), dtype=np.int64)
    for poly in polygons:
        a_all = np.asarray(poly, dtype=np.float64)
        b_all = np.roll(a_all, -1, axis=0)
        lo_x, hi_x = np.minimum(a_all[:, 0], b_all[:, 0]), np.maximum(a_all[:, 0], b_all[:, 0])
        first = np.maximum(np.ceil(lo_x), 0).astype(np.int64)  # rows r with lo_x <= r < hi_x
        last = np.minimum(np.ceil(hi_x) - 1, nx - 1).astype(np.int64)
        n = np.maximum(last - first + 1, 0)
        start = 0
        while start < len(n):  # edges in groups of about _OUTLINE_CHUNK crossings
            stop = start + max(1, int(np.searchsorted(np.cumsum(n[start:]), _OUTLINE_CHUNK)))
            edges = np.repeat(np.arange(start, stop), n[start:stop])
            if edges.size:
                offset = np.repeat(np.cumsum(n[start:stop]) - n[start:stop], n[start:stop])
                r = first[edges] + (np.arange(edges.size) - offset)
                a, b = a_all[edges], b_all[edges]
                y = a[:, 1] + (r - a[:, 0]) * (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0])
                c = np.clip(np.floor(y) + 1, 0, ny).astype(np.int64)  # centres right of the crossing
                counts += np.bincount(r * (ny + 1) + c, minlength=counts.size)
            start = stop
    parity = np.cumsum(counts.reshape(nx, ny + 1), axis=1) % 2
    return parity[:, :ny].astype(bool)


#: candidate voxel centres examined at once when marking outlines (bounds the temporary arrays)
_OUTLINE_CHUNK = 1 << 20


def _on_outline(poly: np.ndarray, out: np.ndarray, spacing: np.ndarray, atol_mm: float) -> None:
    """Set ``out`` at the voxel centres within ``atol_mm`` of the polygon's edges.

    Within less than half a voxel of a segment, only the centres on the segment's major axis' whole
    steps, one either side of it on the other axis, can lie: those are measured exactly, in chunks, so
    time and memory follow the outline's length, not its bounding box.
    """
    reach = atol_mm / spacing  # voxels
    if np.any(reach >= 0.5):
        _on_outline_boxes(poly, out, spacing, atol_mm)
        return
    a_all = np.asarray(poly, dtype=np.float64)
    b_all = np.roll(a_all, -1, axis=0)
    major = (np.abs(b_all - a_all)[:, 1] > np.abs(b_all - a_all)[:, 0]).astype(int)  # 0: x, 1: y
    idx = np.arange(len(a_all))
    lo = np.ceil(np.minimum(a_all, b_all)[idx, major] - reach[major]).astype(np.int64)
    hi = np.floor(np.maximum(a_all, b_all)[idx, major] + reach[major]).astype(np.int64)
    counts = np.maximum(hi - lo + 1, 0)
    shape = np.asarray(out.shape)
    start = 0
    while start < len(a_all):  # edges in groups of about _OUTLINE_CHUNK candidate steps
        stop = start + max(1, int(np.searchsorted(np.cumsum(counts[start:]), _OUTLINE_CHUNK)))
        edges = np.repeat(np.arange(start, stop), counts[start:stop])
        if edges.size:
            first = np.repeat(np.cumsum(counts[start:stop]) - counts[start:stop], counts[start:stop])
            k = lo[edges] + (np.arange(edges.size) - first)
            a, b, m = a_all[edges], b_all[edges], major[edges]
            d = b - a
            dm, do = d[np.arange(edges.size), m], d[np.arange(edges.size), 1 - m]
            am, ao = a[np.arange(edges.size), m], a[np.arange(edges.size), 1 - m]
            with np.errstate(divide="ignore", invalid="ignore"):
                other = np.where(dm != 0, ao + (k - am) * do / np.where(dm != 0, dm, 1), ao)
            centre = np.rint(other).astype(np.int64)
            for step in (-1, 0, 1):
                o = centre + step
                pts = np.empty((edges.size, 2), dtype=np.float64)
                pts[np.arange(edges.size), m] = k
                pts[np.arange(edges.size), 1 - m] = o
                a_mm, d_mm, p_mm = a * spacing, d * spacing, pts * spacing
                length2 = np.einsum("ij,ij->i", d_mm, d_mm)
                t = np.where(length2 > 0, np.einsum("ij,ij->i", p_mm - a_mm, d_mm) / np.where(
                    length2 > 0, length2, 1), 0.0)
                t = np.clip(t, 0, 1)
                dist = np.linalg.norm(p_mm - (a_mm + t[:, None] * d_mm), axis=1)
                hit = pts[(dist <= atol_mm) & np.all(pts >= 0, axis=1) & np.all(pts < shape, axis=1)]
                hit = hit.astype(np.int64)
                out[hit[:, 0], hit[:, 1]] = True
        start = stop


def _on_outline_boxes(poly: np.ndarray, out: np.ndarray, spacing: np.ndarray, atol_mm: float) -> None:
    """:func:`_on_outline` for a reach of half a voxel or more: every centre in each edge's box."""
    shape = out.shape
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


def _values_in(contour: Dataset) -> int:
    """How many numbers a contour's ContourData holds, counted in its raw bytes when still unparsed."""
    try:
        elem = contour.get_item("ContourData")
    except Exception:
        return 0
    if elem is None:
        return 0
    value = elem.value
    if isinstance(value, (bytes, bytearray)):
        return value.count(b"\\") + 1 if value.strip(b" \x00") else 0
    return len(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else 1


def _contour_points(contour: Dataset, name: str, where: Path) -> np.ndarray:
    """``[N, 3]`` float64 from ContourData, parsed from its raw bytes (pydicom's DS objects cost ~100
    bytes per number and stay cached in the dataset)."""
    try:
        elem = contour.get_item("ContourData")
        raw = elem.value if elem is not None else None
        if isinstance(raw, (bytes, bytearray)):
            text = raw if raw.strip(b" \x00") else b""  # parsed in place: no copy of a large value
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # numpy warns, then stops, at a value it cannot read
                points = (np.fromstring(text, dtype=np.float64, sep="\\") if text
                          else np.zeros(0, dtype=np.float64))
            if text and points.size != text.count(b"\\") + 1:
                raise ValueError("unreadable value")
        else:
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
    except Exception:
        raise DataError(f"ROI {name[:64]!r} has a contour with unreadable ContourData", path=where,
                        hint="re-export the structure set") from None
    if points.size == 0 or points.size % 3 or not np.all(np.isfinite(points)):
        raise DataError(f"ROI {name[:64]!r} has a contour whose ContourData is not x, y, z triplets",
                        path=where, hint="re-export the structure set")
    return points.reshape(-1, 3)


def _nearest(depths: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest of ``depths`` for each value (O(n log slices), no n x slices array)."""
    if len(depths) == 1:
        return np.zeros(len(values), dtype=np.int64)
    order = np.argsort(depths, kind="stable")
    ranked = depths[order]
    right = np.clip(np.searchsorted(ranked, values), 1, len(ranked) - 1)
    left = right - 1
    return order[np.where(np.abs(values - ranked[left]) <= np.abs(values - ranked[right]), left, right)]


def _check_counts(ds: Dataset, names: dict[int, str], mapping, where: Path) -> None:  # noqa: ANN001
    """Refuse a structure set beyond the contour and point bounds before any contour is parsed."""
    contours = points = 0
    for item in ds.get("ROIContourSequence") or []:
        try:
            number = int(item.get("ReferencedROINumber", -1))
        except Exception:
            number = -1
        name = names.get(number, f"ROI {number}")
        if mapping(name) in (None, ""):
            continue
        for contour in item.get("ContourSequence") or []:
            n = _values_in(contour) // 3
            if n > MAX_CONTOUR_POINTS:
                raise DataError(f"ROI {name[:64]!r} has a contour of {n} points, more than the "
                                f"{MAX_CONTOUR_POINTS} medres reads in one contour; refused before reading "
                                "it", path=where, hint="re-export the structure set with simplified contours")
            contours += 1
            points += n
            if contours > MAX_STRUCTURE_CONTOURS or points > MAX_STRUCTURE_POINTS:
                raise DataError(f"the ROIs to read hold more than {MAX_STRUCTURE_CONTOURS} contours or "
                                f"{MAX_STRUCTURE_POINTS} points; refused before reading them", path=where,
                                hint="map only the ROIs you need (the name map), or simplify the contours")


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
    _check_counts(ds, names, mapping, where)
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
            z0 = int(_nearest(depths, depth[:1])[0])  # all points must lie on this slice's plane
            if np.abs(depth - depths[z0]).max() > PLANE_ATOL_MM:
                off = np.abs(depth - depths[_nearest(depths, depth)])
                raise DataError(f"ROI {name[:64]!r} has a contour off the image's slice planes (up to "
                                f"{off.max():.3f} mm from the nearest slice; tolerance {PLANE_ATOL_MM} mm)",
                                path=where, hint="the structure set was drawn on another series or "
                                                 "reconstruction: pass that series, or re-contour")
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
