"""Annotations delivered as DICOM objects (SEG, RTSTRUCT) -> NIfTI label maps on the source image's grid.

    refs = annotation_references(pydicom.dcmread(f, stop_before_pixels=True))   # which series it annotates
    result = annotation_to_mask(f, series_files, ["background", "nodule"], {"*nodule*": "nodule"},
                                out / "masks" / "case.nii.gz")

The label map is ``[X, Y, Z]`` on exactly the grid :func:`medres.data.readers.io.load_image` gives the source
series (same shape and affine), so :func:`medres.data.readers.io.check_image_mask` accepts the pair. Rules:

- **Linking**: the annotation must name the source series (ReferencedSeriesSequence /
  RTReferencedSeriesSequence), every SOP instance it references must be among the source files, and its
  FrameOfReferenceUID must be the source's. Each SEG frame and each contour must lie on a source slice
  (within :data:`PLANE_ATOL_MM` = 0.01 mm along the normal, and for SEG frames in-plane too) and
  contours inside the image.
- **Names**: a segment's label (SEG SegmentLabel, else its property type's meaning) or an ROI's name is
  mapped to one of ``mask_labels`` by ``name_map`` (``{pattern: label}``, fnmatch wildcards,
  case-insensitive, first matching pattern in the map's order wins; a target of ``""`` or
  ``mask_labels[0]`` ignores the structure); a name equal to a label (case-insensitive) maps to it. Other
  structures are ignored with a warning.
- **Overlaps**: several structures of one label are united; where structures of different labels
  overlap, the label later in ``mask_labels`` wins (the higher value), and the count is a warning.
- **Empty**: a mapped structure without any voxel is a DataError (an empty mask would claim "nothing
  here"); pass ``allow_empty=True`` to accept it.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medres.data.dicom_objects.rtstruct import RTSTRUCT_SOP_CLASS, rtstruct_layers, write_rtstruct
from medres.data.dicom_objects.seg_read import SEG_SOP_CLASSES, seg_layers
from medres.data.readers.limits import memory_error
from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.data.readers.source_series import PLANE_ATOL_MM, SourceSeries, source_series
from medres.errors import ConfigError, DataError

__all__ = ["AnnotationResult", "annotation_references", "annotation_to_mask", "map_name", "write_rtstruct",
           "PLANE_ATOL_MM"]


@dataclass
class AnnotationResult:
    """A converted annotation: the NIfTI written, the foreground labels it holds, what was noticed."""

    path: Path
    labels_found: list[str]
    warnings: list[str] = field(default_factory=list)
    kind: str = ""
    voxels: dict[str, int] = field(default_factory=dict)  # foreground label -> voxel count


def _read(ds_or_path: Dataset | str | Path, *, pixels: bool) -> Dataset:
    if isinstance(ds_or_path, Dataset):
        return ds_or_path
    try:
        with quiet_pydicom():
            return pydicom.dcmread(ds_or_path, stop_before_pixels=not pixels, force=True)
    except OSError as exc:
        raise DataError(f"could not be read ({safe_message(exc)})", path=ds_or_path,
                        hint="check that the file exists and is readable") from None
    except MemoryError:
        raise memory_error(ds_or_path) from None
    except Exception as exc:
        raise DataError(f"is a damaged DICOM file ({safe_message(exc)})", path=ds_or_path,
                        hint="re-export it from the source system") from None


def _kind(ds: Dataset) -> str | None:
    sop = str(ds.get("SOPClassUID", "") or "")
    if sop in SEG_SOP_CLASSES or (not sop and ds.get("Modality") == "SEG"):
        return "SEG"
    if sop == RTSTRUCT_SOP_CLASS or (not sop and ds.get("Modality") == "RTSTRUCT"):
        return "RTSTRUCT"
    return None


def _items(ds: Dataset | None, *path: str) -> list[Dataset]:
    """All items reached by following the sequence keywords ``path`` from ``ds``."""
    level = [ds] if ds is not None else []
    for keyword in path:
        level = [item for d in level for item in (d.get(keyword) or [])]
    return level


def annotation_references(ds: Dataset | str | Path) -> tuple[str, str | None, set[str], str | None]:
    """``(kind, referenced_series_uid, referenced_sop_uids, frame_of_reference_uid)`` of a SEG or RTSTRUCT
    from its header alone. ``kind`` is "SEG" or "RTSTRUCT"; the series is None when the object names none
    (when it names several, the first); the SOP set may be empty (many RTSTRUCTs reference only the series).
    """
    ds = _read(ds, pixels=False)
    kind = _kind(ds)
    if kind is None:
        raise DataError(f"is not a DICOM SEG or RTSTRUCT (Modality {str(ds.get('Modality', '?'))[:16]})",
                        path=getattr(ds, "filename", None), hint="pass a Segmentation or RT Structure Set")
    sops: set[str] = set()
    if kind == "SEG":
        series_items = _items(ds, "ReferencedSeriesSequence")
        for s in series_items:
            sops |= {str(i.ReferencedSOPInstanceUID) for i in _items(s, "ReferencedInstanceSequence")}
        for group in _items(ds, "PerFrameFunctionalGroupsSequence"):
            sops |= {str(i.ReferencedSOPInstanceUID) for i in
                     _items(group, "DerivationImageSequence", "SourceImageSequence")}
        sops |= {str(i.ReferencedSOPInstanceUID) for i in _items(ds, "SourceImageSequence")}
        frame = ds.get("FrameOfReferenceUID")
    else:
        refs = _items(ds, "ReferencedFrameOfReferenceSequence")
        series_items = _items(ds, "ReferencedFrameOfReferenceSequence", "RTReferencedStudySequence",
                              "RTReferencedSeriesSequence")
        for s in series_items:
            sops |= {str(i.ReferencedSOPInstanceUID) for i in _items(s, "ContourImageSequence")}
        for roi in _items(ds, "ROIContourSequence", "ContourSequence"):
            sops |= {str(i.ReferencedSOPInstanceUID) for i in _items(roi, "ContourImageSequence")}
        frame = ds.get("FrameOfReferenceUID") or (refs[0].get("FrameOfReferenceUID") if refs else None)
        if not frame:
            rois = _items(ds, "StructureSetROISequence")
            frame = rois[0].get("ReferencedFrameOfReferenceUID") if rois else None
    series = next((str(s.SeriesInstanceUID) for s in series_items if s.get("SeriesInstanceUID")), None)
    sops.discard("")
    return kind, series, sops, str(frame) if frame else None


def map_name(name: str, mask_labels: Sequence[str], name_map: Mapping[str, str] | None) -> str | None:
    """The label a structure name maps to; ``""`` when the map ignores it, None when nothing matches."""
    low = str(name).strip().lower()
    for pattern, target in (name_map or {}).items():
        if fnmatch.fnmatchcase(low, str(pattern).strip().lower()):
            return "" if not target or target == mask_labels[0] else target
    for label in mask_labels[1:]:
        if low == label.lower():
            return label
    return None


def _check_name_map(name_map: Mapping[str, str] | None, mask_labels: Sequence[str]) -> None:
    for pattern, target in (name_map or {}).items():
        if target and target not in mask_labels:
            raise ConfigError(f"name map entry {pattern!r} -> {target!r}: {target!r} is not one of the mask "
                              f"labels {list(mask_labels)}", field="name_map",
                              hint="map each pattern to a data.mask_labels name, or to '' to ignore it")


def _check_links(refs: tuple[str, str | None, set[str], str | None], grid: SourceSeries, where: Path) -> None:
    kind, series, sops, frame = refs
    if series is not None and series != grid.uid("SeriesInstanceUID"):
        raise DataError(f"the {kind} references another series than the {len(grid.datasets)} source file(s) "
                        "given", path=where, hint="pass the files of the series the annotation references "
                                                  "(its ReferencedSeriesSequence)")
    missing = sops - set(grid.sop_uids)
    if missing:
        raise DataError(f"{len(missing)} of the {len(sops)} source instance(s) the {kind} references are "
                        f"absent from the source series ({len(grid.datasets)} file(s) given)", path=where,
                        hint="export the complete source series with its annotation")
    if frame is not None and grid.uid("FrameOfReferenceUID") and frame != grid.uid("FrameOfReferenceUID"):
        raise DataError(f"the {kind}'s FrameOfReferenceUID differs from the source series'", path=where,
                        hint="the annotation was made on another acquisition: pass its own source series")


def _save(labels: np.ndarray, affine: np.ndarray, out_path: Path) -> Path:
    """A label map as NIfTI: its affine as sform and qform, nothing else (as medres writes masks)."""
    import nibabel as nib

    img = nib.Nifti1Image(labels, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    name = out_path.name
    tmp = out_path.with_name(f".{name}.tmp" + (".nii.gz" if name.endswith(".gz") else ".nii"))
    nib.save(img, tmp)
    tmp.replace(out_path)
    return out_path


def annotation_to_mask(annotation_file: str | Path | Sequence[str | Path], source_files: Sequence[str | Path],
                       mask_labels: Sequence[str], name_map: Mapping[str, str] | None, out_path: str | Path,
                       *, allow_empty: bool = False) -> AnnotationResult:
    """Convert one SEG or RTSTRUCT into a NIfTI label map on its source series' grid (see the module doc).

    Args:
        annotation_file: the SEG/RTSTRUCT file (a list of several is refused: choose one first).
        source_files: the files of the source series (any order; headers are read, not pixels).
        mask_labels: label names, index = value written (``mask_labels[0]`` is background).
        name_map: ``{fnmatch pattern: label}`` (case-insensitive) or None.
        out_path: the ``.nii.gz`` to write.
        allow_empty: accept mapped structures without voxels (default: DataError).

    Raises DataError (naming ``annotation_file``) for every linking, geometry or content problem.
    """
    if not isinstance(annotation_file, (str, Path)):
        files = list(annotation_file)
        if len(files) != 1:
            raise DataError(f"{len(files)} annotation objects were given for one series; medres converts one",
                            path=str(files[0]) if files else None,
                            hint="keep one annotation per series (e.g. the latest), or convert each into its "
                                 "own mask")
        annotation_file = files[0]
    where, out_path = Path(annotation_file), Path(out_path)
    mask_labels = [str(v) for v in mask_labels]
    if len(mask_labels) < 2:
        raise ConfigError("mask_labels needs background and at least one class", field="mask_labels")
    _check_name_map(name_map, mask_labels)
    ds = _read(where, pixels=False)  # an RTSTRUCT has no pixels; a SEG's frames are read by highdicom
    refs = annotation_references(ds)
    if not source_files:
        raise DataError(f"the {refs[0]}'s source series is absent (no source image files were given)",
                        path=where, hint="export the annotated image series together with its annotation")
    grid = source_series([Path(p) for p in source_files], where=where)
    _check_links(refs, grid, where)
    warnings: list[str] = []
    if refs[0] == "SEG":
        layers = seg_layers(where, grid, lambda n: map_name(n, mask_labels, name_map), warnings)
    else:
        layers = rtstruct_layers(ds, grid, where, lambda n: map_name(n, mask_labels, name_map), warnings)
    if not layers:
        raise DataError(f"none of the {refs[0]}'s structures maps to the mask labels {mask_labels[1:]}",
                        path=where, hint="add a name map entry (fnmatch pattern -> label) for the "
                                         "structure names listed in the warnings")
    empty = [name for name, _, layer in layers if not layer.any()]
    if empty and not allow_empty:
        raise DataError(f"{len(empty)} mapped structure(s) hold no voxels (e.g. {empty[0][:64]!r})",
                        path=where, hint="delete the empty structure from the annotation, or map its name to "
                                         "'' to ignore it")
    by_label: dict[str, np.ndarray] = {}
    for _, label, layer in layers:
        by_label[label] = by_label[label] | layer if label in by_label else layer
    out = np.zeros(grid.shape, dtype=np.uint8 if len(mask_labels) <= 256 else np.uint16)
    claimed = np.zeros(grid.shape, dtype=bool)
    for value, label in enumerate(mask_labels):
        layer = by_label.get(label)
        if value == 0 or layer is None:
            continue
        overlap = int(np.count_nonzero(claimed & layer))
        if overlap:
            warnings.append(f"{overlap} voxel(s) of {label!r} overlap an earlier label; {label!r} (later in "
                            "mask_labels) wins there")
        out[layer] = value
        claimed |= layer
    voxels = {label: int(np.count_nonzero(out == v)) for v, label in enumerate(mask_labels) if v}
    _save(out, grid.affine, out_path)
    return AnnotationResult(path=out_path, labels_found=[k for k, n in voxels.items() if n],
                            warnings=warnings, kind=refs[0], voxels=voxels)
