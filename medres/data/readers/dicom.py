"""DICOM files and series folders -> ``(array, meta)`` with geometry checks.

Arrays come out spatial-first like MONAI's ``PydicomReader``: ``[X, Y]`` for one frame, ``[X, Y, Z]`` for
a series or a multi-frame file (X along the rows, i.e. the column index; Z along the slice normal), with
a trailing colour axis ``[..., 3]`` for RGB. ``meta["affine"]`` maps voxel indices to RAS millimetres.

Files are parsed here (SOP class refusals, transfer-syntax decoders, multi-frame functional groups,
rescale to HU); frames are ordered and checked in :mod:`medres.data.readers.dicom_geometry` (slice order from
ImagePositionPatient on the slice normal, never InstanceNumber).

Only acquisition fields in :data:`ACQUISITION_FIELDS` leave this module; patient names, ids, dates,
institutions and UIDs never do.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
import zlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medres.data.readers.dicom_geometry import Frame, assemble
from medres.data.readers.frame_headers import check_encapsulated_frames
from medres.data.readers.limits import DEFAULT_MAX_FILES_PER_SERIES, check_declared, memory_error
from medres.data.readers.redact import decoder_message, quiet_pydicom, safe_message
from medres.errors import DataError

__all__ = ["ACQUISITION_FIELDS", "acquisition_meta", "read_dicom_file", "read_dicom_series"]

logger = logging.getLogger(__name__)

#: The only DICOM fields copied into a tensor's metadata (always present; "" when the file lacks one).
ACQUISITION_FIELDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "BodyPartExamined", "SliceThickness", "KVP",
    "ConvolutionKernel", "MagneticFieldStrength", "RepetitionTime", "EchoTime", "FlipAngle",
    "PhotometricInterpretation",
)

# SOP classes that hold no scan: refused with their name and what to do.
_NON_IMAGE_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.481.": ("a radiotherapy object", "medres reads scans; convert RT structures "
                                     "to a NIfTI mask (e.g. with rt-utils or platipy) for the `mask` column"),
    "1.2.840.10008.5.1.4.1.1.66": ("a segmentation, registration or raw-data object", "convert a DICOM "
                                   "SEG to NIfTI (e.g. with dcmqi or highdicom) for the `mask` column"),
    "1.2.840.10008.5.1.4.1.1.88.": ("a structured report", "point the manifest at the image series"),
    "1.2.840.10008.5.1.4.1.1.11.": ("a presentation state", "point the manifest at the image series"),
    "1.2.840.10008.5.1.4.1.1.9.": ("a waveform", "point the manifest at an image series"),
    "1.2.840.10008.5.1.4.1.1.104.": ("an encapsulated document", "point the manifest at an image series"),
    "1.2.840.10008.1.3.10": ("a DICOMDIR index", "point the manifest at the series folder it lists"),
}
_IMAGE_EXCEPTIONS = {"1.2.840.10008.5.1.4.1.1.481.1"}  # RT Image is a projection image

_VALID_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


def _sop_refusal(ds: Dataset, path: Path) -> DataError | None:
    sop = str(ds.get("SOPClassUID", "") or "")
    if not sop and "SOPClassUID" not in ds:  # e.g. a DICOMDIR names its class in the file meta only
        sop = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", "") or "")
    if sop and not _VALID_UID.fullmatch(sop):
        return DataError("has a damaged header: its SOP Class UID is not a valid UID", path=path,
                         hint="the file is corrupt: re-export or re-copy it")
    name = UID(sop).name if sop else "unknown SOP class"
    if sop == "1.2.840.10008.5.1.4.1.1.481.2":  # before the general radiotherapy rule, which it matches
        return DataError(f"is an RT Dose grid ({name}), not a scan", path=path,
                         hint="point the manifest at the CT/MR series the dose was planned on")
    if sop not in _IMAGE_EXCEPTIONS:
        for prefix, (what, hint) in _NON_IMAGE_PREFIXES.items():
            if sop.startswith(prefix):
                return DataError(f"is {what} ({name}), not an image", path=path, hint=hint)
    return None


def _check_not_mosaic(ds: Dataset, path: Path) -> None:
    """Refuse a Siemens MOSAIC frame: its slices are tiled side by side in one 2D image, so reading it as
    one slice (and a folder of them as a stack) gives a wrong volume with a wrong geometry."""
    image_type = ds.get("ImageType") or []
    kinds = [str(v).upper() for v in (image_type if isinstance(image_type, (list, tuple,
                                                                             pydicom.multival.MultiValue))
                                      else [image_type])]
    if "MOSAIC" in kinds:
        n = ds.get((0x0019, 0x100A))
        tiles = f" ({int(n.value)} slices tiled in one {ds.get('Rows')}x{ds.get('Columns')} frame)" \
            if n is not None and str(n.value).isdigit() else ""
        raise DataError(f"is a Siemens MOSAIC image{tiles}, which medres does not unpack", path=path,
                        hint="convert the series to NIfTI with dcm2niix (it unpacks mosaics with their "
                             "slice geometry) and list the .nii.gz")


def _check_pixels_present(ds: Dataset, path: Path, values: bool = True) -> None:
    """Refuse a file without pixel data; with ``values``, also one whose pixel data element is empty
    (this reads a deferred value)."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = str(ds.get("SOPClassUID", "") or "")
        name = UID(sop).name if sop else "unknown SOP class"
        raise DataError(f"holds no pixel data ({name}); if it should be an image, the file is truncated",
                        path=path, hint="point the manifest at an image file or series folder, or re-copy "
                                        "the file")
    if not values:
        return
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            try:
                value = ds[keyword].value
            except Exception:
                continue
            if value is None or (isinstance(value, (bytes, bytearray)) and len(value) == 0):
                raise DataError(f"has an empty {keyword} element (0 bytes): the image was not exported",
                                path=path, hint="re-export the file from the source system")


_DEFLATED = b"1.2.840.10008.1.2.1.99"


def _check_deflated(path: Path) -> None:
    """Refuse a Deflated Explicit VR file whose dataset inflates beyond the memory free now.

    pydicom inflates such a dataset whole, in memory, before parsing it (a few MiB can inflate a
    thousandfold); here the stream is inflated in 1 MiB steps and only counted.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if _DEFLATED not in head or head[128:132] != b"DICM":
        return
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        start = 132 + 12 + int(meta.get("FileMetaInformationGroupLength") or 0)
    except Exception:
        return  # _read_dataset reports the damaged header
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED.decode():
        return
    from medres.data.readers.limits import DEFAULT_MAX_VOXELS, available_memory

    free = available_memory()
    bound = min(DEFAULT_MAX_VOXELS, free // 2) if free is not None else DEFAULT_MAX_VOXELS
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(1 << 16):
            try:
                data = inflater.decompress(chunk, 1 << 20)
                while True:
                    total += len(data)
                    if total > bound:
                        raise DataError(f"is a deflated DICOM file whose dataset inflates to more than "
                                        f"{bound / 2**20:.0f} MiB; refused before inflating (a "
                                        "decompression bomb?)", path=path,
                                        hint="re-export it uncompressed or with a pixel-data compression")
                    if not inflater.unconsumed_tail:
                        break
                    data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
            except zlib.error:
                return  # damaged: pydicom's own error is reported by _read_dataset


#: What a series folder's files are first read for (grouping, refusals, the declared size): the header
#: elements below only, pixel data deferred (not read), so a file costs a few KiB until its series is chosen
_HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "ImageOrientationPatient",
                "ImageType", (0x0019, 0x0010), (0x0019, 0x100A), "Rows", "Columns", "NumberOfFrames",
                "SamplesPerPixel", "BitsAllocated", "PixelData", "FloatPixelData", "DoubleFloatPixelData"]


def _read_dataset(path: Path, header_only: bool = False) -> Dataset:
    """Parse a DICOM file; files without the 'DICM' marker are read only if they hold an image.

    ``header_only``: keep only :data:`_HEADER_TAGS`, with the pixel data deferred (never read here).
    """
    kw: dict = {"specific_tags": _HEADER_TAGS, "defer_size": 1024} if header_only else {}
    try:
        _check_deflated(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = pydicom.dcmread(path, **kw)
            except InvalidDicomError:
                ds = pydicom.dcmread(path, force=True, **kw)
                if "SOPClassUID" not in ds and ("Rows" not in ds or "PixelData" not in ds):
                    raise DataError(
                        "is not a DICOM file (no 'DICM' marker at byte 128 and no readable image elements)",
                        path=path, hint="check that the file is a DICOM image and not truncated") from None
                tsyntax = (pydicom.uid.ImplicitVRLittleEndian if ds.original_encoding[0]
                           else pydicom.uid.ExplicitVRLittleEndian if ds.original_encoding[1]
                           else pydicom.uid.ExplicitVRBigEndian)
                ds.file_meta = pydicom.dataset.FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = tsyntax
            # force the lazy parse of everything but the pixel data now, inside this guard
            for keyword in ("SOPClassUID", "Rows", "Columns", "NumberOfFrames", "SeriesInstanceUID"):
                ds.get(keyword)
    except DataError:
        raise
    except IsADirectoryError:
        raise DataError("is a folder where a DICOM file was expected", path=path) from None
    except OSError as exc:
        raise DataError(f"could not be read ({safe_message(exc)})", path=path,
                        hint="check that the file exists and is readable") from None
    except MemoryError:
        raise memory_error(path) from None
    except Exception as exc:  # pydicom raises many types on damaged files
        raise DataError(f"is a damaged DICOM file ({safe_message(exc)})", path=path,
                        hint="re-export it from the source system") from None
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        raise DataError("has no Transfer Syntax UID in its file meta header, so its pixel data cannot be "
                        "decoded", path=path, hint="re-export the file with a complete file meta header")
    return ds


def _declared(ds: Dataset, path: Path) -> tuple[list[int], int]:
    """The declared ``[Rows, Columns, frames, samples]`` and bytes per sample, read before decoding."""
    try:
        dims = [int(ds.get("Rows") or 0), int(ds.get("Columns") or 0), int(ds.get("NumberOfFrames") or 1),
                int(ds.get("SamplesPerPixel") or 1)]
        itemsize = max(1, (int(ds.get("BitsAllocated") or 8) + 7) // 8)
    except Exception:
        raise DataError("has an unreadable Rows/Columns/NumberOfFrames/BitsAllocated", path=path,
                        hint="the header is damaged: re-export the file") from None
    return dims, itemsize


def _check_size(datasets: list[tuple[Path, Dataset]], where: Path, max_voxels: int | None) -> None:
    """Refuse a file or series whose declared Rows x Columns x frames x files exceeds the cap."""
    per_file = [_declared(ds, p) for p, ds in datasets]
    (rows, cols, _, samples), itemsize = per_file[0]
    frames = sum(d[2] for d, _ in per_file)
    shape = [rows, cols, frames] + ([samples] if samples != 1 else [])
    biggest = max(d[0] * d[1] * d[3] for d, _ in per_file)  # files may disagree; take the largest
    if biggest > rows * cols * samples:
        shape = [biggest, frames]
    check_declared(shape, max(i for _, i in per_file), where, max_voxels=max_voxels,
                   what="its DICOM header" if len(datasets) == 1 else f"its {len(datasets)} DICOM headers")


def _decoded_pixels(ds: Dataset, path: Path) -> np.ndarray:
    """``ds.pixel_array`` with the missing-decoder case named; frames first when several."""
    tsyntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if not tsyntax.is_transfer_syntax:
        raise DataError("has a Transfer Syntax UID that is not a known transfer syntax (damaged file meta "
                        "header?)", path=path, hint="re-export the file")
    if tsyntax.is_compressed:
        try:
            decoder = pydicom.pixels.get_decoder(tsyntax)
        except Exception:  # NotImplementedError for known syntaxes without decoders, others for junk
            raise DataError(f"uses the transfer syntax {tsyntax.name}, which no installed DICOM decoder "
                            "supports", path=path, hint="re-export the series uncompressed") from None
        if not decoder.is_available:
            needs = "; or ".join(d.split(" - requires ")[-1] for d in decoder.missing_dependencies)
            raise DataError(f"is compressed as {tsyntax.name} and no decoder for it is installed (needs "
                            f"{needs})", path=path,
                            hint=f"pip install one of: {needs} (gdcm's pip package is python-gdcm)")
        check_encapsulated_frames(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
            if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
                pixels = pydicom.pixels.apply_color_lut(pixels, ds)
    except MemoryError:
        dims, itemsize = _declared(ds, path)
        raise memory_error(path, dims[0] * dims[1] * dims[2] * dims[3] * (itemsize + 4)) from None
    except Exception as exc:
        if "less than expected" in str(exc):
            raise DataError(f"pixel data truncated ({safe_message(exc)})", path=path,
                            hint="the file is cut short: re-copy or re-export it") from None
        hint = "re-export the file"
        if tsyntax.is_compressed:
            hint += "; python-gdcm decodes some files that pylibjpeg cannot"
        raise DataError(f"pixel data could not be decoded ({tsyntax.name}; {decoder_message(exc)})",
                        path=path, hint=hint) from None
    if pixels.dtype.byteorder == ">":
        pixels = pixels.astype(pixels.dtype.newbyteorder("="))
    return pixels


def _floats(value: object, n: int, what: str, path: Path) -> np.ndarray | None:
    if value is None or value == "":
        return None
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except Exception:
        raise DataError(f"has an unreadable {what}", path=path, hint="re-export the file") from None
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise DataError(f"has an invalid {what} ({out.size} values)", path=path, hint="re-export the file")
    return out


def _item(ds: Dataset, sequence: str) -> Dataset | None:
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _functional(groups: list[Dataset | None], sequence: str, keyword: str) -> object:
    """The first value of ``sequence[0].keyword`` found in per-frame then shared functional groups."""
    for group in groups:
        item = _item(group, sequence) if group is not None else None
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def _rescale(pixels: np.ndarray, slope: object, intercept: object, path: Path) -> np.ndarray:
    try:
        s = 1.0 if slope in (None, "") else float(slope)
        b = 0.0 if intercept in (None, "") else float(intercept)
    except Exception:
        raise DataError("has an unreadable RescaleSlope/RescaleIntercept", path=path) from None
    if not (np.isfinite(s) and np.isfinite(b)) or s == 0:
        raise DataError(f"has an invalid rescale (slope {s}, intercept {b})", path=path)
    if s == 1.0 and b == 0.0:
        return pixels
    return pixels.astype(np.float32) * np.float32(s) + np.float32(b)


def _monochrome1_to_monochrome2(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values of a MONOCHROME1 image (low = white) mirrored within the stored range, so that
    higher means brighter as in every other greyscale image; applied before the modality rescale."""
    bits = int(ds.get("BitsStored") or pixels.dtype.itemsize * 8)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    return ((lo + hi) - pixels.astype(np.int64)).astype(pixels.dtype)


def _frames(ds: Dataset, path: Path) -> list[Frame]:
    """Split a dataset into 2D frames with per-frame geometry and HU/rescale applied."""
    try:
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except Exception:
        raise DataError("has an unreadable NumberOfFrames", path=path) from None
    pixels = _decoded_pixels(ds, path)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        pixels = _monochrome1_to_monochrome2(pixels, ds)
    rgb = ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    if n_frames == 1 or pixels.ndim == (3 if rgb else 2):
        pixels = pixels[None]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    if per_frame and len(per_frame) != pixels.shape[0]:
        raise DataError(f"lists {len(per_frame)} per-frame groups for {pixels.shape[0]} frames", path=path)
    top_position = _floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path)
    top_orientation = _floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path)
    top_spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
    frames = []
    for i in range(pixels.shape[0]):
        groups = [per_frame[i] if per_frame else None, shared]
        position = _floats(_functional(groups, "PlanePositionSequence", "ImagePositionPatient"), 3,
                           "ImagePositionPatient", path)
        orientation = _floats(_functional(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6,
                              "ImageOrientationPatient", path)
        spacing = _floats(_functional(groups, "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing",
                          path)
        thickness = _functional(groups, "PixelMeasuresSequence", "SliceThickness")
        slope = _functional(groups, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(groups, "PixelValueTransformationSequence", "RescaleIntercept")
        if slope is None and intercept is None:
            slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if "ModalityLUTSequence" in ds and not per_frame:
            frame_pixels = pydicom.pixels.apply_modality_lut(pixels[i], ds)
        else:
            frame_pixels = _rescale(pixels[i], slope, intercept, path)
        frames.append(Frame(
            pixels=frame_pixels,
            position=position if position is not None else (top_position if n_frames == 1 else None),
            orientation=orientation if orientation is not None else top_orientation,
            pixel_spacing=tuple(spacing if spacing is not None else top_spacing)
            if (spacing is not None or top_spacing is not None) else None,
            thickness=_float_or_none(thickness if thickness is not None else ds.get("SliceThickness")),
            source=path.name if pixels.shape[0] == 1 else f"{path.name} frame {i + 1}",
        ))
    if n_frames > 1 and all(f.position is None for f in frames) and top_position is not None:
        # legacy multi-frame (e.g. NM): one position, frames stacked along the normal in file order
        gap = _float_or_none(ds.get("SpacingBetweenSlices")) or _float_or_none(ds.get("SliceThickness"))
        if top_orientation is not None and gap:
            normal = np.cross(top_orientation[:3], top_orientation[3:])
            for i, f in enumerate(frames):
                f.position = top_position + i * gap * normal
    return frames


def _float_or_none(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except Exception:
        return None
    return out if np.isfinite(out) and out > 0 else None


def acquisition_meta(ds: Dataset) -> dict[str, str]:
    """The whitelisted acquisition fields as strings ("" when absent); nothing patient-identifying."""
    out = {}
    for keyword in ACQUISITION_FIELDS:
        try:
            value = ds.get(keyword)
        except Exception:
            value = None
        if isinstance(value, pydicom.multival.MultiValue):
            value = "\\".join(str(v) for v in value)
        out[keyword] = "" if value is None else str(value)
    return out


def _result(stack: np.ndarray, affine: np.ndarray, ds: Dataset) -> tuple[np.ndarray, dict]:
    rgb = ds.get("SamplesPerPixel", 1) != 1 or ds.get("PhotometricInterpretation") == "PALETTE COLOR"
    spatial = stack.shape[:-1] if rgb else stack.shape
    meta = {"affine": affine, "spatial_shape": np.asarray(spatial),
            "original_channel_dim": -1 if rgb else float("nan"),
            "spacing": np.linalg.norm(affine[:3, : len(spatial)], axis=0), "_colour": rgb,
            **acquisition_meta(ds)}
    if meta.get("PhotometricInterpretation") == "MONOCHROME1":
        meta["PhotometricInterpretation"] = "MONOCHROME2"  # the pixels were inverted on reading
    return np.ascontiguousarray(stack), meta


def read_dicom_file(path: str | Path, *, max_voxels: int | None = None) -> tuple[np.ndarray, dict]:
    """One DICOM file: ``[X, Y]`` for one frame, ``[X, Y, F]`` for a multi-frame file (plus ``[..., 3]``
    for colour), and its metadata (RAS ``affine``, ``spacing``, acquisition fields). The declared size
    is checked against ``max_voxels`` (:mod:`medres.data.readers.limits`) before decoding."""
    path = Path(path)
    with quiet_pydicom():
        ds = _read_dataset(path)
        refusal = _sop_refusal(ds, path)
        if refusal is not None:
            raise refusal
        _check_pixels_present(ds, path)
        _check_not_mosaic(ds, path)
        _check_size([(path, ds)], path, max_voxels)
        stack, affine = assemble(_frames(ds, path), path, volume=False)
        return _result(stack, affine, ds)


def _orientation(ds: Dataset) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique' from ImageOrientationPatient ('' when absent)."""
    try:
        iop = np.asarray([float(v) for v in ds.get("ImageOrientationPatient") or []], dtype=np.float64)
    except Exception:
        return ""
    if iop.shape != (6,) or not np.all(np.isfinite(iop)):
        return ""
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        return ""
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) / norm < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


#: A series is named in messages by the end of its SeriesInstanceUID: enough to tell the folder's series
#: apart and to write into the manifest's ``series_uid`` column, never the whole UID.
_UID_TAIL = 8


def uid_tails(uids: list[str]) -> dict[str, str]:
    """For each UID the shortest tail (at least :data:`_UID_TAIL` characters) no other UID ends with."""
    out = {}
    for uid in uids:
        n = min(_UID_TAIL, len(uid))
        while n < len(uid) and any(o != uid and o.endswith(uid[-n:]) for o in uids):
            n += 1
        if n < len(uid) and uid[-n] == ".":
            n += 1  # '3.8.498.1', not '.8.498.1'
        out[uid] = uid[-n:]
    return out


def _describe(series: dict[str, list[tuple[Path, Dataset]]]) -> str:
    """Each series by what identifies no-one: index, modality, file count, orientation, UID tail."""
    ordered = _by_number(series)
    tails = uid_tails([uid for uid in series if uid])
    parts = []
    for index, (uid, items) in enumerate(ordered, start=1):
        ds = items[0][1]
        what = [str(ds.get("Modality") or "?"), f"{len(items)} file(s)"]
        if orientation := _orientation(ds):
            what.append(orientation)
        what.append(f"series_uid ending {tails[uid]!r}" if uid else "no SeriesInstanceUID")
        parts.append(f"series {index} of {len(ordered)} ({', '.join(what)})")
    return "; ".join(parts)


def _by_number(series: dict[str, list[tuple[Path, Dataset]]]
               ) -> list[tuple[str, list[tuple[Path, Dataset]]]]:
    def key(item: tuple[str, list[tuple[Path, Dataset]]]) -> tuple[float, str]:
        return (_float_or_none(item[1][0][1].get("SeriesNumber")) or 0.0, item[0][::-1])
    return sorted(series.items(), key=key)


def _choose(series: dict[str, list[tuple[Path, Dataset]]], wanted: str) -> list[tuple[Path, Dataset]] | None:
    """The series whose SeriesInstanceUID is ``wanted`` or ends with it (the tail shown in messages)."""
    wanted = wanted.strip().lstrip("…").strip("'\"")
    if wanted in series:
        return series[wanted]
    matches = [uid for uid in series if uid and len(wanted) >= 4 and uid.endswith(wanted)]
    return series[matches[0]] if len(matches) == 1 else None


def read_dicom_series(folder: str | Path, *, series_uid: str | None = None,
                      max_voxels: int | None = None, max_files: int | None = None) -> tuple[np.ndarray, dict]:
    """A folder holding one DICOM series -> ``[X, Y, Z](, 3)`` in slice-position order, and its metadata.

    Non-DICOM files (e.g. ``.DS_Store``, notes) and non-image objects (e.g. an RT Struct exported beside
    the slices) are skipped with a log line; sub-folders are not searched. Several image series need
    ``series_uid``: the SeriesInstanceUID to keep, or its ending as the error message lists it (series
    are described by index, modality, file count, orientation and UID ending, never by their free-text
    SeriesDescription, which scanners' users fill with patient names).

    The folder is listed and checked first (:func:`series_files`: at most ``max_files`` entries, no file
    under two names); every file's header is then read without its pixel data, and only the chosen
    series' files are read whole, after its declared size has passed ``max_voxels``.
    """
    with quiet_pydicom():
        return _read_series(Path(folder), series_uid, max_voxels, max_files)


def series_files(folder: Path, max_files: int | None = None, *, hidden: bool = True) -> list[Path]:
    """The files of a series folder, sorted; counted and checked before any is parsed.

    More than ``max_files`` directory entries (``data.max_files_per_series``; the listing stops there) or
    two names for one file (hard links, or symbolic links to one target: the same ``st_dev``/``st_ino``)
    are a DataError. ``hidden``: include names starting with '.'.
    """
    bound = DEFAULT_MAX_FILES_PER_SERIES if max_files is None else int(max_files)
    files: list[Path] = []
    seen: dict[tuple[int, int], str] = {}
    entries = 0
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                entries += 1
                if entries > bound:
                    raise DataError(f"holds more than {bound} entries, more than data.max_files_per_series "
                                    f"({bound}); refused before reading them", path=folder,
                                    hint="point the manifest at the folder of one series; if a series truly "
                                         "has this many files, raise data.max_files_per_series")
                if not hidden and entry.name.startswith("."):
                    continue
                try:
                    if not entry.is_file():
                        continue
                    st = entry.stat()
                except OSError:
                    continue
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    first, second = sorted((seen[key], entry.name))
                    raise DataError(f"holds the same file under two names ({first!r} and {second!r}: hard "
                                    "links or links to one file); refused before reading the folder",
                                    path=folder, hint="keep one name per slice in the series folder")
                seen[key] = entry.name
                files.append(Path(entry.path))
    except OSError as exc:
        raise DataError(f"could not be listed ({safe_message(exc)})", path=folder,
                        hint="check the folder's permissions") from None
    return sorted(files)


def _read_series(folder: Path, series_uid: str | None, max_voxels: int | None = None,
                 max_files: int | None = None) -> tuple[np.ndarray, dict]:
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped: list[DataError] = []
    files = series_files(folder, max_files)
    for file in files:
        try:
            ds = _read_dataset(file, header_only=True)
        except DataError as err:
            if "is not a DICOM file" not in err.reason:
                raise
            logger.warning("%s: skipping %s, which is not a DICOM file", folder, file.name)
            continue
        refusal = _sop_refusal(ds, file)
        if refusal is not None:
            logger.warning("%s: skipping %s: %s", folder, file.name, refusal.reason)
            skipped.append(refusal)
            continue
        _check_pixels_present(ds, file, values=False)
        _check_not_mosaic(ds, file)
        series.setdefault(str(ds.get("SeriesInstanceUID", "") or ""), []).append((file, ds))
    if not series:
        if skipped:
            raise DataError(f"holds no image slices, only non-image objects ({skipped[0].reason})",
                            path=folder, hint=skipped[0].hint)
        raise DataError(f"holds no DICOM files ({len(files)} other file(s))", path=folder,
                        hint="point the manifest at the folder that holds the .dcm slices")
    if series_uid is not None:
        found = _choose(series, series_uid)
        if found is None:
            raise DataError(f"holds no series whose SeriesInstanceUID is or ends with the requested "
                            f"series_uid; it holds {_describe(series)}", path=folder,
                            hint="write the SeriesInstanceUID, or the ending shown here, in the manifest's "
                                 "series_uid column")
        chosen = found
    elif len(series) > 1:
        raise DataError(f"holds {len(series)} image series: {_describe(series)}", path=folder,
                        hint="put each series in its own folder, or write the ending of the series_uid "
                             "to keep (as shown here) in the manifest's series_uid column")
    else:
        chosen = next(iter(series.values()))
    _check_size(chosen, folder, max_voxels)
    del series
    frames = []
    first = None
    for file, _ in chosen:  # the chosen files only, now whole
        ds = _read_dataset(file)
        _check_pixels_present(ds, file)
        frames.extend(_frames(ds, file))
        first = first if first is not None else ds
    stack, affine = assemble(frames, folder, volume=True)
    return _result(stack, affine, first)
