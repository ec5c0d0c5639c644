"""DICOM SEG frames -> per-segment boolean layers on the source grid (highdicom decodes, medres checks).

highdicom parses the object and decodes each frame (bit-packed BINARY, FRACTIONAL, LABELMAP); the
geometry is checked here frame by frame against the source series of
:mod:`medres.data.readers.source_series`: same rows, columns, pixel spacing and orientation, and each frame's
ImagePositionPatient on a source slice within 0.01 mm (along the normal and in-plane). A SEG cropped,
resampled or drawn on another reconstruction is refused, not resampled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medres.data.readers.dicom_geometry import ORIENTATION_ATOL
from medres.data.readers.frame_headers import check_encapsulated_frames
from medres.data.readers.limits import memory_error
from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.data.readers.source_series import PLANE_ATOL_MM, SourceSeries, finite_floats
from medres.errors import DataError

__all__ = ["SEG_SOP_CLASSES", "seg_layers"]

# every SEG class this reader reads (Segmentation, Label Map Segmentation); the index attaches exactly
# these (medres.data.index.headers.ANNOTATION_CLASSES)
SEG_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})


def _group_value(groups: list[Dataset | None], sequence: str, keyword: str) -> object:
    for group in groups:
        seq = group.get(sequence) if group is not None else None
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _vector(value: object, n: int, what: str, where: Path) -> np.ndarray:
    out = finite_floats(value, n)
    if out is None:
        raise DataError(f"the SEG lacks a valid {what} for its frames", path=where,
                        hint="medres converts SEGs whose frames carry their plane geometry; re-export it")
    return out


def seg_layers(path: Path, grid: SourceSeries, mapping: Callable[[str], str | None], warnings: list[str]
               ) -> list[tuple[str, str, np.ndarray]]:
    """``(segment label, mask label, [X, Y, Z] bool)`` for every segment ``mapping`` sends to a label."""
    import highdicom as hd

    try:
        with quiet_pydicom():
            seg = hd.seg.segread(path)
    except MemoryError:
        raise memory_error(path) from None
    except Exception as exc:
        raise DataError(f"is not a readable DICOM SEG ({safe_message(exc)})", path=path,
                        hint="re-export the segmentation") from None
    check_encapsulated_frames(seg, path)  # compressed frames: their own size, before highdicom decodes
    kind = str(seg.get("SegmentationType", "BINARY")).upper()
    names: dict[int, str] = {}
    for item in seg.get("SegmentSequence") or []:
        label = str(item.get("SegmentLabel", "") or "")
        if not label and item.get("SegmentedPropertyTypeCodeSequence"):
            label = str(item.SegmentedPropertyTypeCodeSequence[0].get("CodeMeaning", ""))
        names[int(item.SegmentNumber)] = label or f"segment {int(item.SegmentNumber)}"
    targets: dict[int, str] = {}
    unmapped = []
    for number, name in names.items():
        target = mapping(name)
        if target is None and (item := _segment(seg, number)) is not None:
            codes = item.get("SegmentedPropertyTypeCodeSequence") or []
            target = mapping(str(codes[0].get("CodeMeaning", ""))) if codes else None
        if target is None:
            unmapped.append(name)
        elif target:
            targets[number] = target
    if unmapped:
        shown = ", ".join(repr(n[:64]) for n in unmapped[:10])
        warnings.append(f"{len(unmapped)} segment(s) map to no mask label and were ignored: {shown}")
    layers = {number: np.zeros(grid.shape, dtype=bool) for number in targets}
    if not targets:
        return []
    rows, cols = int(seg.Rows), int(seg.Columns)
    if (rows, cols) != (grid.rows, grid.cols):
        raise DataError(f"the SEG's frames are {rows} x {cols} pixels where the source slices are "
                        f"{grid.rows} x {grid.cols}: it is not on the source grid (cropped or resampled)",
                        path=path, hint="medres converts SEGs drawn on the source series' own grid")
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    per_frame = seg.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(seg.get("NumberOfFrames") or 1)
    if len(per_frame) != n_frames:
        raise DataError(f"the SEG lists {len(per_frame)} per-frame groups for {n_frames} frames", path=path,
                        hint="medres converts SEGs whose frames carry their plane geometry; re-export it")
    src_orientation, src_spacing = grid.orientation, grid.pixel_spacing
    normal, depths = grid.normal, grid.slice_depths
    positions = [np.asarray([float(v) for v in ds.ImagePositionPatient]) for ds in grid.datasets]
    uid_to_z = {uid: z for z, uid in enumerate(grid.sop_uids)}
    max_value = float(seg.get("MaximumFractionalValue") or 255)
    for i, group in enumerate(per_frame):
        groups = [group, shared]
        orientation = _vector(_group_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                              "ImageOrientationPatient", path)
        if np.max(np.abs(orientation - src_orientation)) > ORIENTATION_ATOL:
            raise DataError("the SEG's frames are oriented differently from the source slices", path=path,
                            hint="the SEG belongs to another series or reconstruction: pass that series")
        spacing = _vector(_group_value(groups, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing",
                          path)
        if np.max(np.abs(spacing - src_spacing)) * max(rows, cols) > PLANE_ATOL_MM:
            raise DataError(f"the SEG's pixel spacing {spacing.round(4).tolist()} mm differs from the "
                            f"source's {src_spacing.round(4).tolist()} mm", path=path,
                            hint="medres converts SEGs drawn on the source series' own grid")
        position = _vector(_group_value(groups, "PlanePositionSequence", "ImagePositionPatient"), 3,
                           "ImagePositionPatient", path)
        z = int(np.abs(depths - position @ normal).argmin())
        along = abs(float(depths[z] - position @ normal))
        shift = position - positions[z]
        across = float(np.linalg.norm(shift - (shift @ normal) * normal))
        if along > PLANE_ATOL_MM or across > PLANE_ATOL_MM:
            raise DataError(f"SEG frame {i + 1} lies off the image's slices ({along:.3f} mm from the nearest "
                            f"slice plane, shifted {across:.3f} mm within it; tolerance {PLANE_ATOL_MM} mm)",
                            path=path, hint="the SEG belongs to another series or reconstruction, or is "
                                            "cropped: pass its own source series")
        sources = [str(s.ReferencedSOPInstanceUID) for d in (group.get("DerivationImageSequence") or [])
                   for s in (d.get("SourceImageSequence") or [])]
        named = [uid_to_z[u] for u in sources if u in uid_to_z]
        if named and z not in named:
            raise DataError(f"SEG frame {i + 1} lies on slice {z + 1} of the series but references slice "
                            f"{named[0] + 1} as its source", path=path,
                            hint="the SEG's references are inconsistent: re-export it")
        try:
            with quiet_pydicom():
                frame = np.asarray(seg.get_stored_frame(i + 1)).T  # [rows, cols] -> [X, Y]
        except MemoryError:
            raise memory_error(path) from None
        except Exception as exc:
            raise DataError(f"SEG frame {i + 1} could not be decoded ({safe_message(exc)})", path=path,
                            hint="re-export the segmentation") from None
        if kind == "LABELMAP":
            for number, layer in layers.items():
                layer[:, :, z] |= frame == number
            continue
        number = _group_value(groups, "SegmentIdentificationSequence", "ReferencedSegmentNumber")
        if number is None:
            raise DataError(f"SEG frame {i + 1} names no segment", path=path,
                            hint="re-export the segmentation")
        number = int(number)
        if number not in names:
            raise DataError(f"SEG frame {i + 1} belongs to segment {number}, which the SEG does not describe",
                            path=path, hint="re-export the segmentation")
        if number in layers:
            on = frame >= max_value / 2 if kind == "FRACTIONAL" else frame > 0
            layers[number][:, :, z] |= on
    return [(names[n], targets[n], layer) for n, layer in layers.items()]


def _segment(seg: Dataset, number: int) -> Dataset | None:
    for item in seg.get("SegmentSequence") or []:
        if int(item.SegmentNumber) == number:
            return item
    return None
