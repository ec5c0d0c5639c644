"""Projection radiographs (CR, DX, DX-like secondary captures): the DICOM grayscale pipeline and spacing.

A radiograph's stored values are not what a radiologist sees. DICOM defines the display chain in order
(PS3.3 C.11; PS3.4 N.2): **Modality LUT** (RescaleSlope/RescaleIntercept, or a Modality LUT Sequence),
**VOI LUT** (WindowCenter/WindowWidth with VOILUTFunction LINEAR, LINEAR_EXACT or SIGMOID, or a VOI LUT
Sequence; the first of several unless :class:`RadiographOptions` names one), then the **presentation**:
MONOCHROME1 images and PresentationLUTShape INVERSE are inverted *after* the VOI step. Unused high bits
(above BitsStored) are masked first. :func:`display_values` returns the result scaled to ``[0, 1]``
(1 = white = dense bone in every file), so images of different detectors and bit depths are comparable.
The tests compare it with pydicom's ``apply_modality_lut`` / ``apply_voi_lut`` / ``apply_presentation_lut``.

Spacing (:func:`radiograph_spacing`): PixelSpacing (in the patient), else ImagerPixelSpacing (at the
detector) divided by EstimatedRadiographicMagnificationFactor when present, else unknown; the metadata's
``spacing_source`` says which. A projection has no slice geometry: the affine is the pixel grid with that
spacing (LPS -> RAS as for every DICOM image), and PatientOrientation / ViewPosition / ImageLaterality are
kept as text. FOR PROCESSING images (raw detector data) are refused unless allowed. See docs/radiographs.md.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medres.errors import DataError

__all__ = ["RadiographOptions", "RADIOGRAPH_META_FIELDS", "RADIOGRAPH_RECORD_KEYS", "is_radiograph",
           "is_radiograph_class", "display_values", "radiograph_spacing", "read_radiograph",
           "read_radiograph_if_any", "RadiographGeometryd", "parse_spacing", "code_string"]

logger = logging.getLogger(__name__)

#: Extra metadata a radiograph carries (always present as text; "" when unknown).
RADIOGRAPH_META_FIELDS = ("ViewPosition", "PatientOrientation", "ImageLaterality", "PresentationIntentType",
                          "spacing_source", "voi")
#: Manifest columns the radiograph pipeline reads beside ``image``/``mask``.
RADIOGRAPH_RECORD_KEYS = ("pixel_spacing", "view")

_CR = "1.2.840.10008.5.1.4.1.1.1"
_DX_PRESENTATION, _DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1"
_SC = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.2", "1.2.840.10008.5.1.4.1.1.7.3",
       "1.2.840.10008.5.1.4.1.1.7.4")
_MODALITIES = ("CR", "DX")
_UNKNOWN = "unknown"


@dataclass(frozen=True)
class RadiographOptions:
    """How radiographs are read (``data.radiograph`` in the configuration).

    Attributes:
        voi: which of several VOI transforms to apply: an index (0 = the first), or a name matched against
            WindowCenterWidthExplanation / LUTExplanation; None = the first.
        allow_for_processing: read PresentationIntentType FOR PROCESSING images (raw detector data,
            grey levels not comparable with processed images) instead of refusing them.
        views: ViewPosition values (e.g. PA, AP) to keep; any other view is refused. None keeps all.
    """

    voi: int | str | None = None
    allow_for_processing: bool = False
    views: tuple[str, ...] | None = None


def is_radiograph(ds: Dataset) -> bool:
    """True for CR and DX images and for secondary captures whose Modality is CR or DX."""
    return is_radiograph_class(str(ds.get("SOPClassUID", "") or ""), str(ds.get("Modality", "") or ""))


def is_radiograph_class(sop: str, modality: str) -> bool:
    """:func:`is_radiograph` on a SOP Class UID and Modality already read (the index's header records)."""
    if sop in (_CR, _DX_PRESENTATION, _DX_PROCESSING) or sop.startswith("1.2.840.10008.5.1.4.1.1.1.1"):
        return True
    return modality.upper() in _MODALITIES and (sop in _SC or not sop)


def _int(ds: Dataset, keyword: str, default: int | None, path: Path) -> int:
    value = ds.get(keyword, default)
    try:
        return int(value)  # type: ignore[arg-type]
    except Exception:
        raise DataError(f"has an unreadable {keyword} ({value!r})", path=path,
                        hint="re-export the radiograph from the source system") from None


def _bits(ds: Dataset, path: Path) -> tuple[int, int, bool]:
    """(BitsAllocated, BitsStored, signed) after checking they are consistent."""
    allocated = _int(ds, "BitsAllocated", 16, path)
    stored = _int(ds, "BitsStored", allocated, path)
    if not 1 <= stored <= allocated:
        raise DataError(f"BitsStored is {stored} but BitsAllocated is {allocated}: a pixel cannot store more "
                        "bits than it is allocated, so its grey levels are undefined", path=path,
                        hint="the header is damaged: re-export the radiograph from the source system")
    return allocated, stored, _int(ds, "PixelRepresentation", 0, path) == 1


def _mask_bits(pixels: np.ndarray, stored: int, signed: bool) -> np.ndarray:
    """Keep the low ``stored`` bits (overlays or junk can sit above them) and sign-extend when signed."""
    v = pixels.astype(np.int64)
    m = (1 << stored) - 1
    v &= m
    if signed:
        sign = 1 << (stored - 1)
        v = (v ^ sign) - sign
    return v


def _lut(item: Dataset, what: str, ds: Dataset, path: Path, signed_input: bool = False
         ) -> tuple[np.ndarray, int, int]:
    """(table, first mapped value, bits per entry) of a LUT item, after checking the descriptor.

    The first mapped value is US for unsigned input and SS for signed input (PS3.3 C.11.1.1.1,
    C.11.2.1.1), but files and pydicom often carry it as US: for signed input a value of 32768 or more
    is read as the negative number its 16 bits are (pydicom 3.0 leaves it as is and mis-indexes)."""
    hint = "re-export the radiograph with a valid LUT, or choose another data.radiograph.voi"
    desc = item.get("LUTDescriptor")
    if desc is None or "LUTData" not in item:
        raise DataError(f"has a malformed {what}: an item lacks its LUTDescriptor or LUTData", path=path,
                        hint=hint)
    try:
        desc = [int(v) for v in desc]
    except Exception:
        raise DataError(f"has a malformed {what}: unreadable LUTDescriptor", path=path, hint=hint) from None
    if len(desc) != 3:
        raise DataError(f"has a malformed {what}: its LUTDescriptor has {len(desc)} values, not 3", path=path,
                        hint=hint)
    n, first, bits = desc
    n = n or 65536
    if signed_input and first >= 1 << 15:
        first -= 1 << 16
    if not 8 <= bits <= 16:
        raise DataError(f"has a {what} with {bits} bits per entry (DICOM allows 8 to 16)", path=path,
                        hint=hint)
    elem = item["LUTData"]
    if elem.VR == "OW" or isinstance(elem.value, (bytes, bytearray)):
        raw = bytes(elem.value or b"")
        little = True
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "TransferSyntaxUID" in meta:
            little = meta.TransferSyntaxUID != "1.2.840.10008.1.2.2"
        if len(raw) % 2:
            raise DataError(f"has a malformed {what}: LUTData has an odd number of bytes", path=path,
                            hint=hint)
        data = np.asarray(struct.unpack(f"{'<' if little else '>'}{len(raw) // 2}H", raw), dtype=np.int64)
    else:
        values = elem.value
        data = np.asarray([values] if isinstance(values, int) else list(values or []), dtype=np.int64)
    if data.size != n:
        raise DataError(f"has a {what} whose LUTDescriptor promises {n} entries but whose LUTData holds "
                        f"{data.size}: the descriptor and the table disagree", path=path, hint=hint)
    if data.size and (data.min() < 0 or data.max() > (1 << bits) - 1):
        raise DataError(f"has a {what} with entries up to {int(data.max())}, more than its LUTDescriptor's "
                        f"{bits} bits allow: the descriptor lies about the table", path=path, hint=hint)
    return data, first, bits


def _apply_lut(values: np.ndarray, table: np.ndarray, first: int) -> np.ndarray:
    idx = np.clip(np.rint(values).astype(np.int64) - first, 0, table.size - 1)
    return table[idx]


def _choose(n: int, names: list[str], voi: int | str | None, what: str, path: Path) -> int:
    if voi is None:
        return 0
    if isinstance(voi, int):
        if 0 <= voi < n:
            return voi
        raise DataError(f"has {n} {what}(s), so data.radiograph.voi={voi} does not exist", path=path,
                        hint=f"choose an index from 0 to {n - 1}"
                        + (f" or a name of {names}" if any(names) else ""))
    for i, name in enumerate(names):
        if name.strip().upper() == voi.strip().upper():
            return i
    raise DataError(f"has no {what} named {voi!r} (it has {names})", path=path,
                    hint="set data.radiograph.voi to one of these names or to an index")


def _multi(value: object) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return list(value)  # type: ignore[arg-type]
    return [value]


def display_values(ds: Dataset, pixels: np.ndarray, path: str | Path, options: RadiographOptions | None = None
                   ) -> tuple[np.ndarray, str]:
    """Stored pixels ``[rows, cols]`` -> display values in ``[0, 1]`` (1 = white) and a description of
    the VOI step used. Raises a DataError for colour images and malformed LUTs."""
    path = Path(path)
    options = options or RadiographOptions()
    pi = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if _int(ds, "SamplesPerPixel", 1, path) != 1 or pi not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"is a colour image ({pi}) where a grayscale radiograph is expected (an RGB "
                        "secondary capture or a screenshot?)", path=path,
                        hint="export the radiograph from the source system as grayscale DICOM (CR/DX)")
    _, stored, signed = _bits(ds, path)
    values = _mask_bits(pixels, stored, signed)
    lo, hi = (-(1 << (stored - 1)), (1 << (stored - 1)) - 1) if signed else (0, (1 << stored) - 1)
    # Modality LUT: the output range follows it (as in pydicom's apply_windowing)
    if ds.get("ModalityLUTSequence"):
        table, first, bits = _lut(ds.ModalityLUTSequence[0], "Modality LUT Sequence", ds, path, signed)
        values = _apply_lut(values, table, first).astype(np.float64)
        lo, hi = 0.0, float((1 << bits) - 1)
    else:
        try:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        except Exception:
            raise DataError("has an unreadable RescaleSlope/RescaleIntercept", path=path,
                            hint="re-export the radiograph") from None
        if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
            raise DataError(f"has an invalid rescale (slope {slope}, intercept {intercept})", path=path,
                            hint="re-export the radiograph")
        values = values.astype(np.float64) * slope + intercept
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    # VOI LUT: a VOI LUT Sequence is preferred to windows (as pydicom's apply_voi_lut does)
    seq = ds.get("VOILUTSequence")
    centers, widths = _multi(ds.get("WindowCenter")), _multi(ds.get("WindowWidth"))
    if seq is not None and len(seq) == 0 and "VOILUTSequence" in ds and not centers:
        raise DataError("has an empty VOI LUT Sequence", path=path, hint="re-export the radiograph")
    if seq:
        names = [str(item.get("LUTExplanation", "") or "") for item in seq]
        k = _choose(len(seq), names, options.voi, "VOI LUT", path)
        table, first, bits = _lut(seq[k], "VOI LUT Sequence", ds, path, lo < 0)
        out = _apply_lut(values, table, first).astype(np.float64)
        y_lo, y_hi = 0.0, float((1 << bits) - 1)
        voi = f"VOI LUT {k + 1} of {len(seq)}" + (f" ({names[k]})" if names[k] else "")
    elif centers or widths:
        if len(centers) != len(widths):
            raise DataError(f"has {len(centers)} WindowCenter but {len(widths)} WindowWidth values",
                            path=path, hint="re-export the radiograph")
        names = [str(v) for v in _multi(ds.get("WindowCenterWidthExplanation"))]
        names += [""] * (len(centers) - len(names))
        k = _choose(len(centers), names, options.voi, "window", path)
        try:
            c, w = float(centers[k]), float(widths[k])
        except Exception:
            raise DataError("has an unreadable WindowCenter/WindowWidth", path=path,
                            hint="re-export the radiograph") from None
        func = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
        out = _window(values, c, w, func, lo, hi, path)
        y_lo, y_hi = lo, hi
        voi = f"window {k + 1} of {len(centers)} ({func}, centre {c:g}, width {w:g})"
    else:
        out, y_lo, y_hi = values, lo, hi
        voi = "none (the full output range of the modality step)"
    scaled = np.clip((out - y_lo) / max(y_hi - y_lo, 1e-12), 0.0, 1.0)
    if "PresentationLUTSequence" in ds:
        raise DataError("has a Presentation LUT Sequence, which medres does not apply", path=path,
                        hint="export the radiograph with PresentationLUTShape IDENTITY or INVERSE")
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if pi == "MONOCHROME1" or shape == "INVERSE":  # after the VOI step: bright = dense everywhere
        scaled = 1.0 - scaled
    return scaled, voi


def _window(x: np.ndarray, c: float, w: float, func: str, y_lo: float, y_hi: float, path: Path) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1 (SIGMOID)."""
    span = y_hi - y_lo
    if func in ("LINEAR", "LINEAR_EXACT"):
        if func == "LINEAR":
            if w < 1:
                raise DataError(f"has WindowWidth {w:g}; a LINEAR window needs at least 1", path=path,
                                hint="re-export the radiograph, or choose another window "
                                     "(data.radiograph.voi)")
            c, w = c - 0.5, w - 1
        elif w <= 0:
            raise DataError(f"has WindowWidth {w:g}; a LINEAR_EXACT window needs more than 0", path=path,
                            hint="re-export the radiograph")
        if w == 0:
            return np.where(x <= c, y_lo, y_hi).astype(np.float64)
        out = ((x - c) / w + 0.5) * span + y_lo
        out = np.where(x <= c - w / 2, y_lo, out)
        return np.where(x > c + w / 2, y_hi, out)
    if func == "SIGMOID":
        if w <= 0:
            raise DataError(f"has WindowWidth {w:g}; a SIGMOID window needs more than 0", path=path,
                            hint="re-export the radiograph")
        return span / (1 + np.exp(-4 * (x - c) / w)) + y_lo
    raise DataError(f"has VOILUTFunction {func!r}, which DICOM does not define (LINEAR, LINEAR_EXACT, "
                    "SIGMOID)",
                    path=path, hint="re-export the radiograph")


def _pair(value: object, what: str, path: Path) -> tuple[float, float] | None:
    items = _multi(value)
    if not items:
        return None
    try:
        out = tuple(float(v) for v in items)
    except Exception:
        raise DataError(f"has an unreadable {what}", path=path, hint="re-export the radiograph") from None
    if len(out) != 2 or not all(np.isfinite(v) and v > 0 for v in out):
        raise DataError(f"has an invalid {what} {list(out)}", path=path, hint="re-export the radiograph")
    return out  # type: ignore[return-value]


def radiograph_spacing(ds: Dataset, path: str | Path = "") -> tuple[tuple[float, float] | None, str]:
    """``((between rows, between columns) mm or None, source)``: PixelSpacing, else ImagerPixelSpacing
    divided by EstimatedRadiographicMagnificationFactor (when present), else ``(None, "unknown")``."""
    path = Path(path)
    pixel = _pair(ds.get("PixelSpacing"), "PixelSpacing", path)
    if pixel is not None:
        return pixel, "PixelSpacing"
    imager = _pair(ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing", path)
    if imager is None:
        return None, _UNKNOWN
    mag = ds.get("EstimatedRadiographicMagnificationFactor")
    try:
        factor = float(mag) if mag not in (None, "") else None
    except Exception:
        factor = None
    if factor is not None and np.isfinite(factor) and factor > 0:
        source = "ImagerPixelSpacing/EstimatedRadiographicMagnificationFactor"
        return (imager[0] / factor, imager[1] / factor), source
    return imager, "ImagerPixelSpacing"


def code_string(value: object) -> str:
    """A Code String (CS) value, or "" when it is not one: each of its values upper-case letters,
    digits, space or underscore, at most 16 characters (PS3.5 6.2). The fields medres keeps from a
    radiograph (view, orientation, laterality, intent) are all CS, so free text put there (a name with
    its ``^``, a sentence) never reaches metadata, logs or reports."""
    parts = [str(v).strip().upper() for v in _multi(value)]
    if not all(len(p) <= 16 and all(c.isascii() and (c.isalnum() or c in " _") for c in p) for p in parts):
        return ""
    return "\\".join(parts)


def _text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    return code_string(value)


def read_radiograph(ds: Dataset, path: str | Path, options: RadiographOptions | None = None
                    ) -> tuple[np.ndarray, dict]:
    """A parsed radiograph dataset -> ``[X, Y]`` float32 display values in [0, 1] and its metadata
    (``affine``, ``spacing``, the acquisition fields and :data:`RADIOGRAPH_META_FIELDS`)."""
    from medres.data.readers.dicom import _check_pixels_present, _decoded_pixels, acquisition_meta

    path = Path(path)
    options = options or RadiographOptions()
    intent = _text(ds, "PresentationIntentType").upper()
    if (intent == "FOR PROCESSING" or str(ds.get("SOPClassUID", "")) == _DX_PROCESSING) \
            and not options.allow_for_processing:
        raise DataError("is a FOR PROCESSING radiograph (raw detector data without the vendor's processing): "
                        "its grey levels are not comparable with FOR PRESENTATION images", path=path,
                        hint="export the FOR PRESENTATION image, or set "
                             "data.radiograph.allow_for_processing: true if the whole cohort is raw data")
    view = _text(ds, "ViewPosition").upper()
    if options.views is not None and view and view not in {v.upper() for v in options.views}:
        raise DataError(f"is a {view} view; the configuration keeps only {list(options.views)}", path=path,
                        hint="remove the row, or add the view to data.radiograph.views")
    frames = _int(ds, "NumberOfFrames", 1, path)
    if frames != 1:
        raise DataError(f"holds {frames} frames; a projection radiograph has one", path=path,
                        hint="export each image as its own file")
    _bits(ds, path)
    _check_pixels_present(ds, path)
    pixels = _decoded_pixels(ds, path)
    values, voi = display_values(ds, pixels, path, options)
    spacing, source = radiograph_spacing(ds, path)
    row_mm, col_mm = spacing if spacing is not None else (1.0, 1.0)
    affine = np.diag([-col_mm, -row_mm, 1.0, 1.0])  # rows/cols along LPS x/y, as MONAI's PydicomReader
    meta = {"affine": affine, "spatial_shape": np.asarray(values.shape[::-1]),
            "original_channel_dim": float("nan"),
            "spacing": np.asarray([col_mm, row_mm]), "_colour": False, **acquisition_meta(ds),
            "PhotometricInterpretation": "MONOCHROME2"}  # inverted on reading when it was MONOCHROME1
    meta.update({k: _text(ds, k) for k in RADIOGRAPH_META_FIELDS[:4]})
    meta["ViewPosition"] = view
    meta["spacing_source"], meta["voi"] = source, voi
    return np.ascontiguousarray(values.T.astype(np.float32)), meta


def _single_file(folder: Path) -> Path | None:
    """The folder's one visible file, or None; the listing stops at the second (a folder may be huge)."""
    found = None
    try:
        with os.scandir(folder) as listing:
            for entry in listing:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if found is not None:
                    return None
                found = Path(entry.path)
    except OSError:
        return None
    return found


def read_radiograph_if_any(path: Path, options: RadiographOptions | None = None
                           ) -> tuple[np.ndarray, dict] | None:
    """Read ``path`` (a DICOM file, or a folder holding exactly one file) as a radiograph when it is one;
    None otherwise, so the caller reads it as any other DICOM."""
    from medres.data.readers.dicom import _read_dataset, _sop_refusal
    from medres.data.readers.redact import quiet_pydicom

    file = _single_file(path) if path.is_dir() else path
    if file is None:
        return None
    with quiet_pydicom():
        try:
            ds = _read_dataset(file)
        except DataError:
            if path.is_dir():
                return None  # let the series reader explain the folder
            raise
        if _sop_refusal(ds, file) is not None or not is_radiograph(ds):
            return None
        return read_radiograph(ds, file, options)


def parse_spacing(text: object, path: object = None, row: int | None = None) -> tuple[float, float] | None:
    """A manifest ``pixel_spacing`` cell ("0.5", "0.5\\0.5", "0.5;0.5", "0.5 0.5"; mm between rows, then
    columns) -> two floats, or None when empty."""
    s = "" if text is None else str(text).strip()
    if not s or s.lower() == "nan":
        return None
    parts = [p for p in s.replace("\\", " ").replace(";", " ").replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"pixel_spacing {s!r} is not one or two positive numbers (mm)", path=path, row=row,
                        hint="write the pixel size in mm, e.g. 0.5 or 0.5\\0.5 (rows\\columns)")
    return values[0], values[1]


class RadiographGeometryd:
    """Pipeline step after loading a radiograph (``data.modality: XR``), before the image/mask check.

    - refuses colour images and non-radiograph DICOM (CT/MR slices) with a DataError; a PNG/JPEG whose
      three channels are equal (a grey radiograph saved as RGB/RGBA; JPEG: within 2 levels) is grey;
    - PNG/JPEG exports: grey levels scaled to [0, 1] by their bit depth, spacing from the record's
      ``pixel_spacing`` (manifest column), and the ``view`` column checked against ``views``;
    - ``require_spacing``: an image of unknown spacing is refused (the configuration resamples in mm);
    - the mask must have the image's size and then takes the image's pixel grid (a radiograph has no
      patient frame: a PNG label map on the image's pixels is aligned by construction).
    """

    def __init__(self, *, require_spacing: bool, views: tuple[str, ...] | None = None) -> None:
        self.require_spacing = require_spacing
        self.views = None if views is None else {v.upper() for v in views}

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        import torch

        d = dict(data)
        image = d["image"]
        meta = image.meta  # type: ignore[attr-defined]
        path = meta.get("filename_or_obj")
        is_dicom = bool(meta.get("spacing_source", ""))
        if not is_dicom and image.ndim == 3 and image.shape[-1] == 3:  # type: ignore[attr-defined]
            # a grey radiograph saved as RGB (common in public PNG/JPEG sets): equal channels, up to the
            # +-2 levels a JPEG's colour conversion leaves, are the grey image itself
            spread = (image.amax(dim=-1) - image.amin(dim=-1)).max()  # type: ignore[attr-defined]
            if float(spread) <= 2.0:
                d["image"] = image = image.mean(dim=-1)  # type: ignore[attr-defined]
                meta = image.meta
                meta["original_channel_dim"] = float("nan")  # no channel axis now (as for a grey PNG)
        if image.ndim != 2:  # type: ignore[attr-defined]
            raise DataError(f"is a colour or multi-frame image (shape {tuple(image.shape)}) where a "
                            "grayscale radiograph is expected", path=path,
                            hint="export it as a grayscale image")
        if not is_dicom:
            modality = str(meta.get("Modality", "") or "")
            if modality:
                raise DataError(f"is a {modality} image, not a projection radiograph (CR/DX)", path=path,
                                hint="list radiographs only, or use a CT/MR configuration for this cohort")
            bits = int(meta.get("bits_per_sample", 8))
            top = float((1 << bits) - 1)  # the file's bit depth, not its maximum
            d["image"] = image = image / top  # type: ignore[operator]
            meta = image.meta
            spacing = parse_spacing(d.get("pixel_spacing"), path)
            if spacing is not None:
                affine = torch.diag(torch.tensor([spacing[1], spacing[0], 1.0, 1.0], dtype=torch.float64))
                image.affine = affine
                meta["original_affine"] = affine.numpy().copy()
                meta["spacing"] = np.asarray([spacing[1], spacing[0]])
            meta["spacing_source"] = "manifest pixel_spacing" if spacing is not None else _UNKNOWN
            meta["voi"] = f"none (an export of {bits} bits per pixel, divided by {int(top)})"
            for key in RADIOGRAPH_META_FIELDS[:4]:
                meta.setdefault(key, "")
            view = str(d.get("view", "") or "").strip().upper()
            if view:
                meta["ViewPosition"] = view
        view = str(meta.get("ViewPosition", "") or "").upper()
        if self.views is not None and view and view not in self.views:
            raise DataError(f"is a {view} view; the configuration keeps only {sorted(self.views)}", path=path,
                            hint="remove the row, or add the view to data.radiograph.views")
        if self.require_spacing and meta.get("spacing_source") == _UNKNOWN:
            raise DataError("has an unknown pixel spacing (no PixelSpacing, ImagerPixelSpacing or manifest "
                            "pixel_spacing), but the configuration resamples to a physical pixel size",
                            path=path, hint="add a pixel_spacing column (mm) to the manifest, or set "
                                            "data.spacing: null to train on pixels")
        mask = d.get("mask")
        if mask is not None:
            if tuple(mask.shape) != tuple(image.shape):  # type: ignore[attr-defined]
                raise DataError(f"mask is {tuple(mask.shape)} pixels but its radiograph is "
                                f"{tuple(image.shape)}",
                                path=mask.meta.get("filename_or_obj"),  # type: ignore[attr-defined]
                                hint="save the mask as a label map on the radiograph's own pixel grid")
            mask.affine = image.affine.clone()  # type: ignore[attr-defined]
            mask.meta["original_affine"] = np.asarray(meta["original_affine"]).copy()  # type: ignore[attr-defined]
            mask.meta["spacing"] = np.asarray(meta["spacing"]).copy()  # type: ignore[attr-defined]
        return d
