"""Predicted masks back to the hospital as DICOM SEG (Segmentation Storage), written with highdicom.

A SEG written here references its source series (ReferencedSeriesSequence, one DerivationImage per
frame) and shares its FrameOfReferenceUID and patient/study modules (highdicom copies them from the
source, as a derived object going back to the same patient's record must), so a viewer (3D Slicer, OHIF)
overlays it on the scan. One segment per foreground class of ``mask_labels`` with a coded property
category/type (SNOMED CT where the class name is a known structure, a generic "Tissue" code otherwise),
and the algorithm identified by name, medres version and model hash. Each segment carries a recommended
display colour from a fixed palette (:func:`segment_colour`: the same label, the same colour in every SEG).

The mask is medres's ``[X, Y, Z]`` label map on the source grid (see
:mod:`medres.data.readers.source_series`); frame ``z`` of the SEG is source slice ``z``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from medres.data.readers.redact import quiet_pydicom, safe_message
from medres.data.readers.source_series import SourceSeries, series_in_folder, source_series
from medres.errors import DataError
from medres.layout import case_file_stems, check_distinct_files

__all__ = ["AFFINE_ATOL_MM", "PALETTE_RGB", "file_sha256", "segment_codes", "segment_colour",
           "segment_colours", "write_dicom_seg", "write_prediction_segs"]

log = logging.getLogger(__name__)

AFFINE_ATOL_MM = 1e-3  # a mask's affine must match the source grid this closely (as check_image_mask)

# class name (lower case, letters only) -> (category keyword, type keyword) in pydicom's SCT dictionary
# (DICOM PS3.16 CID 7150 "Segmentation Property Categories" and CID 7151 "Segmentation Property Types")
_ABNORMAL = "MorphologicallyAbnormalStructure"
_ANATOMY = "AnatomicalStructure"
_KNOWN = {
    "nodule": (_ABNORMAL, "Nodule"), "lungnodule": (_ABNORMAL, "Nodule"),
    "pulmonarynodule": (_ABNORMAL, "Nodule"), "lesion": (_ABNORMAL, "Lesion"),
    "tumor": (_ABNORMAL, "Neoplasm"), "tumour": (_ABNORMAL, "Neoplasm"),
    "neoplasm": (_ABNORMAL, "Neoplasm"), "mass": (_ABNORMAL, "Mass"),
    "lung": (_ANATOMY, "Lung"), "lungs": (_ANATOMY, "Lung"), "liver": (_ANATOMY, "Liver"),
    "kidney": (_ANATOMY, "Kidney"), "heart": (_ANATOMY, "Heart"), "spleen": (_ANATOMY, "Spleen"),
    "brain": (_ANATOMY, "Brain"), "prostate": (_ANATOMY, "Prostate"), "pancreas": (_ANATOMY, "Pancreas"),
    "bone": (_ANATOMY, "Bone"),
}
_GENERIC = ("Tissue", "Tissue")
# where the source scanner stands: left out of the SEG's Contributing Equipment (PS3.3 C.12.1.1.5)
_EQUIPMENT_SITE_FIELDS = ("InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                          "InstitutionalDepartmentTypeCodeSequence", "StationName", "DeviceSerialNumber")


# the colour a viewer should show a segment in (RecommendedDisplayCIELabValue, PS3.3 C.8.20.2): a known
# structure type has its own entry of matplotlib's colour-blind-safe tab10 cycle (and three of tab20);
# any other class name a colour generated from the SHA-256 of its lower-case name (hue, and one of a few
# lightness/saturation levels), so the same label gets the same colour in every SEG
PALETTE_RGB = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
               (174, 199, 232), (255, 187, 120), (152, 223, 138))
_TYPE_COLOUR = {"Lung": 0, "Kidney": 1, "Pancreas": 2, "Nodule": 3, "Neoplasm": 4, "Liver": 5, "Heart": 6,
                "Bone": 7, "Prostate": 8, "Brain": 9, "Lesion": 10, "Mass": 11, "Spleen": 12}
#: two segments of one SEG are kept at least this far apart (largest RGB channel difference)
MIN_COLOUR_DISTANCE = 24


def _known_colour(name: str) -> int | None:
    key = _KNOWN.get(re.sub(r"[^a-z]", "", name.lower()), _GENERIC)[1]
    return _TYPE_COLOUR.get(key)


def _generated_colour(text: str) -> tuple[int, int, int]:
    """A colour from the SHA-256 of ``text``: any of 3600 hues at one of 3 x 2 lightness/saturation
    levels (never near-white or near-black, so it shows on a grey scan)."""
    import colorsys
    import hashlib

    d = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    hue = int.from_bytes(d[:2], "big") % 3600 / 3600.0
    value = (0.95, 0.8, 0.65)[d[2] % 3]
    saturation = (0.85, 0.6)[d[3] % 2]
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, saturation, value))  # type: ignore


def segment_colour(name: str) -> tuple[int, int, int]:
    """The RGB colour of a class name in medres's SEGs: its structure type's entry of
    :data:`PALETTE_RGB` when the name is a known structure (``lung``/``lungs`` alike), else one generated
    from the SHA-256 of its lower-case name (the same name, the same colour, in every SEG)."""
    known = _known_colour(name)
    if known is not None:
        return PALETTE_RGB[known]
    return _generated_colour(name.strip().lower())


def _near(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b)) < MIN_COLOUR_DISTANCE


def segment_colours(names: Sequence[str]) -> list[tuple[int, int, int]]:
    """:func:`segment_colour` of each label (one per entry: two entries with one name are two labels),
    kept apart within one SEG: a label whose colour is taken (by a name of the same structure type, or
    one within :data:`MIN_COLOUR_DISTANCE`) takes the first free colour generated from its name and a
    counter. Labels are visited known structures first, then by name, then by position, so the result
    depends on the set of labels, not on their numbers, and any number of labels get distinct colours."""
    order = sorted(range(len(names)), key=lambda i: (_known_colour(names[i]) is None, names[i], i))
    chosen: dict[int, tuple[int, int, int]] = {}
    taken: set[tuple[int, int, int]] = set()
    for i in order:
        name, k = names[i].strip().lower(), 0
        rgb = segment_colour(names[i])
        # kept apart to the eye while a few hundred labels can be; beyond that, distinct values only
        while k < 64 and len(taken) < 256 and any(_near(rgb, c) for c in taken):
            k += 1
            rgb = _generated_colour(f"{name}#{k}")
        while rgb in taken:
            k += 1
            rgb = _generated_colour(f"{name}#{k}") if k < 100_000 else (k % 256, k // 256 % 256, k // 65536)
        chosen[i] = rgb
        taken.add(rgb)
    return [chosen[i] for i in range(len(names))]


def segment_codes(name: str) -> tuple[Any, Any]:
    """``(category, type)`` SNOMED CT codes for a class name; "Tissue"/"Tissue" when none is known."""
    from pydicom.sr.codedict import codes

    category, kind = _KNOWN.get(re.sub(r"[^a-z]", "", name.lower()), _GENERIC)
    return getattr(codes.SCT, category), getattr(codes.SCT, kind)


def _mask_array(mask: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(``[X, Y, Z]`` array, its affine or None) from a numpy array or a MONAI MetaTensor. A 2D mask
    (one DICOM file as load_image reads it) gets its slice axis back; its affine's third column, which
    then says nothing, is dropped (set to None in the comparison by :func:`_check_mask`)."""
    affine = getattr(mask, "affine", None)
    if affine is not None:
        affine = np.asarray(affine.cpu() if hasattr(affine, "cpu") else affine, dtype=np.float64)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    array = np.asarray(mask)
    if array.ndim == 2:
        array = array[:, :, None]
        if affine is not None:
            affine = affine.copy()
            affine[:3, 2] = np.nan
    return array, affine


def _check_mask(array: np.ndarray, affine: np.ndarray | None, grid: SourceSeries, n_labels: int,
                where: Path) -> np.ndarray:
    if array.ndim != 3 or tuple(array.shape) != grid.shape:
        raise DataError(f"the mask's shape {tuple(array.shape)} is not the source series' grid "
                        f"{grid.shape} (columns, rows, slices)", path=where,
                        hint="pass a mask on the source image's grid, as load_image gives it")
    known = ~np.isnan(affine) if affine is not None else None
    if affine is not None and not np.allclose(affine[known], grid.affine[known], rtol=0, atol=AFFINE_ATOL_MM):
        diff = float(np.abs(affine[known] - grid.affine[known]).max())
        raise DataError(f"the mask's affine differs from the source series' by up to {diff:.3g} mm",
                        path=where, hint="pass a mask on the source image's grid, as load_image gives it")
    if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
        raise DataError("the mask holds non-integer values", path=where, hint="pass integer labels")
    labels = array.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise DataError(f"the mask holds values outside 0..{n_labels - 1}", path=where,
                        hint="one value per mask_labels entry, 0 = background")
    return labels


def write_dicom_seg(mask: Any, source_datasets: Sequence[Dataset | Path | str], mask_labels: Sequence[str],
                    out_path: str | Path, *, algorithm_version: str, model_hash: str,
                    algorithm_name: str = "medres", series_number: int = 9901,
                    series_description: str = "medres segmentation") -> Path:
    """Write a label map ``[X, Y, Z]`` (or a MetaTensor on the source grid) as a binary DICOM SEG.

    Args:
        mask: integer labels ``0..len(mask_labels)-1`` on the source grid (value ``k`` = ``mask_labels[k]``;
            0 is background and gets no segment). A MetaTensor's affine is checked against the source.
        source_datasets: the source series' datasets or files (headers suffice), any order.
        mask_labels: class names, index = label value.
        out_path: the ``.dcm`` file to write (written atomically).
        algorithm_version: medres's version; model_hash: the model's fingerprint (e.g. checkpoint sha256).

    Every foreground class gets a segment (even if empty, so segment numbers equal label values).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    out_path = Path(out_path)
    grid = source_series(source_datasets, where=out_path)
    array, affine = _mask_array(mask)
    labels = _check_mask(array, affine, grid, len(mask_labels), out_path)
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0)).astype(np.uint16 if len(mask_labels) > 255
                                                                     else np.uint8)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=str(algorithm_version), family=codes.DCM.ArtificialIntelligence,
        source="medres", parameters={"model_sha256": str(model_hash)})
    descriptions = []
    colours = segment_colours([str(n) for n in mask_labels[1:]])
    for number, (name, rgb) in enumerate(zip(mask_labels[1:], colours), start=1):
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(name)[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, tracking_uid=hd.UID(),
            tracking_id=f"{algorithm_name} {name}"[:64], display_color=hd.color.CIELabColor.from_rgb(*rgb)))
    if not descriptions:
        raise DataError("mask_labels names no foreground class, so there is no segment to write",
                        path=out_path, hint="mask_labels[0] is background; add the classes after it")
    try:
        with quiet_pydicom():
            seg = hd.seg.Segmentation(
                source_images=grid.datasets, pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(),
                series_number=int(series_number), sop_instance_uid=hd.UID(), instance_number=1,
                manufacturer="medres", manufacturer_model_name=algorithm_name,
                software_versions=str(algorithm_version), device_serial_number="0",
                series_description=series_description, content_label="MEDRES",
                content_description=f"{algorithm_name} segmentation"[:64],
                content_creator_name="medres^algorithm",
                omit_empty_frames=bool(labels.any()))
    except DataError:
        raise
    except Exception as exc:  # highdicom raises ValueError/TypeError on header problems of the source
        raise DataError(f"the DICOM SEG could not be built from the source series ({safe_message(exc)})",
                        path=out_path, hint="check the source series' headers") from None
    for item in seg.get("ContributingEquipmentSequence") or []:  # highdicom records the scanner: keep
        for keyword in _EQUIPMENT_SITE_FIELDS:                      # its make and model, not the site
            if keyword in item:
                delattr(item, keyword)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    seg.save_as(tmp, enforce_file_format=True)
    tmp.replace(out_path)
    return out_path


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file, e.g. a checkpoint: the model hash a SEG's algorithm identification
    cites."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_prediction_segs(table: Any, out_dir: str | Path | None,
                          mask_labels: Sequence[str] | Mapping[int, str], *, model_hash: str | None = None,
                          checkpoint: str | Path | None = None, relative_to: str | Path | None = None
                          ) -> list[Path]:
    """``python -m medres.predict``'s hook: for each predicted case whose source is a DICOM series folder
    (or one single-frame DICOM file), write ``out_dir/<name>.dcm`` beside its NIfTI mask (``name`` from
    ``medres.layout.case_file_stem``, as the mask's). Two cases whose ``seg_path`` is one file, or whose SEG
    names would clash, are refused before anything is written: a SEG never carries one case's source
    headers with another case's mask.

    Args:
        table: the predictions table (``case_id``, ``image``, ``seg_path`` columns).
        out_dir: where the SEGs go (``seg/``, beside the NIfTI masks); None writes nothing.
        mask_labels: class names by value, a list or the config's ``{0: "background", 1: ...}``.
        model_hash: the model's fingerprint; default: the sha256 of ``checkpoint``.
        relative_to: the folder ``seg_path`` is relative to.

    NIfTI/PNG sources are skipped; a DICOM source that cannot take a SEG (e.g. a multi-frame image) is
    skipped with a log line naming the case only. Returns the SEGs written.
    """
    import nibabel as nib

    from medres import __version__
    from medres.data.readers.io import image_suffix

    written: list[Path] = []
    if out_dir is None or table is None or "seg_path" not in getattr(table, "columns", ()):
        return written
    if isinstance(mask_labels, Mapping):
        mask_labels = [str(mask_labels[k]) for k in sorted(mask_labels, key=int)]
    base = Path(relative_to) if relative_to is not None else Path()
    records = [r for r in table.to_dict("records") if isinstance(r.get("seg_path"), str) and r["seg_path"]]
    check_distinct_files(((str(r.get("case_id")), os.path.normpath(base / r["seg_path"]), r.get("row"))
                          for r in records), what="predicted mask",
                         hint="each case needs a mask of its own: predict again into an empty folder")
    stems = case_file_stems(records)
    for rec in records:
        image, seg_path = str(rec.get("image") or ""), rec["seg_path"]
        if not image or ";" in image:
            continue
        source = Path(image)
        if image_suffix(source) in (".nii", ".nii.gz", ".png", ".jpg", ".jpeg") or not source.exists():
            continue
        nifti = Path(seg_path) if Path(seg_path).is_absolute() else base / seg_path
        mask = nib.load(nifti)
        target = Path(out_dir) / f"{stems[str(rec.get('case_id'))]}.dcm"
        try:
            grid = series_in_folder(source) if source.is_dir() else source_series([source], where=source)
            if model_hash is None:
                model_hash = file_sha256(checkpoint) if checkpoint is not None else "unknown"
            write_dicom_seg(_OnGrid(np.asarray(mask.dataobj), mask.affine), grid.datasets, mask_labels,
                            target, algorithm_version=__version__, model_hash=model_hash)
        except DataError as err:
            log.warning("case %s: no DICOM SEG written: %s", rec.get("case_id"), err.reason)
            continue
        written.append(target)
    if written:
        log.info("%d DICOM SEG(s) -> %s", len(written), out_dir)
    return written


class _OnGrid:
    """A plain array with an affine (what :func:`_mask_array` reads from a MetaTensor)."""

    def __init__(self, array: np.ndarray, affine: np.ndarray) -> None:
        self.array, self.affine = array, np.asarray(affine, dtype=np.float64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.array if dtype is None else self.array.astype(dtype)
