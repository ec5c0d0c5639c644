"""Reading the header fields an index needs from one file, fast: :func:`read_header`.

pydicom parses every element of a header in Python, whether or not ``specific_tags``/``stop_before_pixels``
are given, which makes indexing a large export slow.
The common case (a file with the ``DICM`` preamble, little-endian implicit or explicit VR, one frame)
is read here by a small element scanner that jumps over every value it does not need and stops early
when the file ends with pixel data of the expected length: about a quarter of pydicom's CPU time
(docs/reference.md §8). Everything else (no preamble, big-endian or deflated files, multi-frame images
with functional groups, SEG/RTSTRUCT objects, anything the scanner does not understand) goes through
``pydicom.dcmread(stop_before_pixels=True)``. The tests compare both paths
field by field on pydicom's shipped files.

The record splits in two: ``fields`` (acquisition facts, safe to cache) and ``ids`` (patient id,
accession number, UIDs, description: identifying, hashed or kept in ``private/`` by the index).
"""

from __future__ import annotations

import os
import struct
import warnings
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from medres.data.dicom_objects.rtstruct import RTSTRUCT_SOP_CLASS
from medres.data.dicom_objects.seg_read import SEG_SOP_CLASSES
from medres.data.readers.radiograph import code_string
from medres.data.readers.redact import quiet_pydicom, safe_message

__all__ = ["read_header", "DICOMDIR_CLASS", "SEG_CLASS", "RTSTRUCT_CLASS", "ANNOTATION_CLASSES"]

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"  # (binary/fractional) Segmentation Storage
RTSTRUCT_CLASS = RTSTRUCT_SOP_CLASS
# the annotation objects the index attaches: exactly the classes the SEG and RTSTRUCT readers read
ANNOTATION_CLASSES = frozenset(SEG_SOP_CLASSES) | {RTSTRUCT_SOP_CLASS}
_FAST_SYNTAXES_IMPLICIT = {"1.2.840.10008.1.2"}
_SLOW_SYNTAXES = {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}  # big endian, deflated
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_HH, _H = struct.Struct("<HH").unpack_from, struct.Struct("<H").unpack_from
_L = struct.Struct("<L").unpack_from
_PIXEL_TAG = 0x7FE00010

# tag -> (record key, kind): kind "s" text, "m" multi-valued text, "f" floats, "u" unsigned short, "i" int
_WANTED = {
    0x00080005: ("charset", "m"), 0x00080008: ("image_type", "m"), 0x00080016: ("sop_class", "s"),
    0x00080018: ("sop_uid", "s"), 0x00080050: ("accession", "s"), 0x00080060: ("modality", "s"),
    0x0008103E: ("description", "s"), 0x00100020: ("patient_id", "s"), 0x00180010: ("contrast", "s"),
    0x00180050: ("thickness", "f"), 0x00181210: ("kernel", "m"), 0x0020000D: ("study_uid", "s"),
    0x0020000E: ("series_uid", "s"), 0x00200011: ("series_number", "s"), 0x00200032: ("ipp", "f"),
    0x00200037: ("iop", "f"), 0x00200052: ("for_uid", "s"), 0x00280008: ("frames", "i"),
    0x00280010: ("rows", "u"), 0x00280011: ("cols", "u"), 0x00280030: ("spacing", "f"),
    0x00280002: ("samples", "u"), 0x00280100: ("bits", "u"),
    0x00181164: ("imager_spacing", "f"), 0x00185101: ("view", "s"),  # radiographs
}
_LAST_WANTED = max(_WANTED)
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_ID_KEYS = ("patient_id", "accession", "study_uid", "series_uid", "sop_uid", "for_uid", "description")
_TEXT_KEYS = ("charset", "description", "patient_id", "accession", "contrast")


class _NeedPydicom(Exception):
    """The fast scanner met something it leaves to pydicom."""


class _Buffer:
    """A file read in growing chunks, so a header is read without its pixel data."""

    def __init__(self, fh: Any, size: int) -> None:
        self.fh, self.size = fh, size
        self.data = fh.read(min(size, 16384))

    def need(self, end: int) -> bytes:
        if end > len(self.data):
            if end > self.size:
                raise _NeedPydicom("past the end of the file")
            self.data += self.fh.read(max(end - len(self.data), 65536))
        return self.data


def _skip_items(buf: _Buffer, pos: int, explicit: bool) -> int:
    """Skip an undefined-length sequence starting at ``pos`` (after its header); returns the end."""
    while True:
        data = buf.need(pos + 8)
        group, elem, length = struct.unpack_from("<HHL", data, pos)
        pos += 8
        if group != 0xFFFE:
            raise _NeedPydicom("unexpected element in a sequence")
        if elem == 0xE0DD:  # sequence delimiter
            return pos
        if elem != 0xE000:
            raise _NeedPydicom("unexpected delimiter")
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: elements until the item delimiter
            data = buf.need(pos + 8)
            group, elem = struct.unpack_from("<HH", data, pos)
            if group == 0xFFFE and elem == 0xE00D:
                pos += 8
                break
            _, pos, length, vr_explicit = _element_header(buf, pos, explicit)
            pos = _skip_items(buf, pos, vr_explicit) if length == _UNDEFINED else pos + length


def _element_header(buf: _Buffer, pos: int, explicit: bool) -> tuple[int, int, int, bool]:
    """(tag, value offset, length, explicit-inside) of the element at ``pos``."""
    data = buf.need(pos + 12)
    group, elem = struct.unpack_from("<HH", data, pos)
    tag = (group << 16) | elem
    if not explicit or group == 0xFFFE:
        return tag, pos + 8, struct.unpack_from("<L", data, pos + 4)[0], explicit
    vr = data[pos + 4:pos + 6]
    if vr in _LONG_VRS:
        length = struct.unpack_from("<L", data, pos + 8)[0]
        # an undefined-length UN holds an implicit-VR sequence
        return tag, pos + 12, length, not (vr == b"UN" and length == _UNDEFINED)
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise _NeedPydicom("not a VR")
    return tag, pos + 8, struct.unpack_from("<H", data, pos + 6)[0], explicit


def _decode(raw: bytes, kind: str) -> Any:
    if kind == "u":
        return struct.unpack_from("<H", raw)[0] if len(raw) >= 2 else None
    text = raw.decode("latin-1").strip(" \x00")
    if kind == "s":
        return text
    parts = [p.strip(" \x00") for p in text.split("\\")]
    if kind == "m":
        return parts
    if kind == "i":
        return int(parts[0]) if parts[0] else None
    return [float(p) for p in parts] if text else None


def _scan(path: str) -> dict[str, Any]:
    """The wanted elements of a preamble-DICM little-endian file, or _NeedPydicom."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        buf = _Buffer(fh, size)
        data = buf.need(132)
        if data[128:132] != b"DICM":
            raise _NeedPydicom("no preamble")
        pos, out = 132, {}
        while True:  # the file meta group: always explicit VR little endian
            tag, vpos, length, _ = _element_header(buf, pos, True)
            if tag >> 16 != 0x0002:
                break
            if tag in (0x00020002, 0x00020010):
                out["media_class" if tag == 0x00020002 else "syntax"] = _decode(
                    buf.need(vpos + length)[vpos:vpos + length], "s")
            pos = vpos + length
        syntax = out.get("syntax", "")
        if syntax in _SLOW_SYNTAXES or not syntax:
            raise _NeedPydicom("syntax")
        explicit = syntax not in _FAST_SYNTAXES_IMPLICIT
        native, peeked = syntax in _NATIVE, False
        data = buf.data
        n = len(data)
        while True:  # _element_header inlined: this loop runs for every element of every file
            if pos + 12 > n:
                if pos + 8 > size:
                    out["no_pixels"] = True
                    return out
                data = buf.need(min(pos + 12, size))
                n = len(data)
            group, elem = _HH(data, pos)
            tag = (group << 16) | elem
            if explicit and group != 0xFFFE:
                vr = data[pos + 4:pos + 6]
                if vr in _LONG_VRS:
                    length, vpos = _L(data, pos + 8)[0], pos + 12
                    inner_explicit = not (vr == b"UN" and length == _UNDEFINED)
                else:
                    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                        raise _NeedPydicom("not a VR")
                    length, vpos, inner_explicit = _H(data, pos + 6)[0], pos + 8, True
            else:
                length, vpos, inner_explicit = _L(data, pos + 4)[0], pos + 8, explicit
            if tag == _PIXEL_TAG:
                out["truncated"] = length != _UNDEFINED and vpos + length > size
                return out
            if tag > _LAST_WANTED and native and out.get("rows") and tag < _PIXEL_TAG and not peeked:
                # uncompressed pixel data is usually the last element: when the file ends with a pixel
                # data element of the expected length, nothing is cut and the private groups before it
                # need not be scanned; otherwise scan on to the pixel data
                peeked = True
                if _ends_with_pixels(fh, size, out, explicit):
                    out["truncated"] = False
                    return out
            if tag in _WANTED:
                if length == _UNDEFINED:
                    raise _NeedPydicom("undefined length value")
                key, kind = _WANTED[tag]
                if vpos + length > n:
                    data = buf.need(vpos + length)
                    n = len(data)
                value = data[vpos:vpos + length]
                out[key] = value if key in _TEXT_KEYS and key != "charset" else _decode(value, kind)
            if length == _UNDEFINED:
                pos = _skip_items(buf, vpos, inner_explicit)
                data = buf.data
                n = len(data)
            else:
                pos = vpos + length


def _ends_with_pixels(fh: Any, size: int, out: dict[str, Any], explicit: bool) -> bool:
    expected = (out["rows"] * (out.get("cols") or 0) * (out.get("samples") or 1)
                * ((out.get("bits") or 16) // 8) * int(out.get("frames") or 1))
    expected += expected & 1
    if expected <= 0:
        return False
    length = struct.pack("<L", expected)
    patterns = [b"\xe0\x7f\x10\x00" + vr + b"\x00\x00" + length for vr in (b"OW", b"OB")] if explicit \
        else [b"\xe0\x7f\x10\x00" + length]
    header = len(patterns[0])
    last = size - expected - header  # the latest the pixel element can start; trailing padding may follow
    start = max(132, last - 4096)
    if last < 132:
        return False
    fh.seek(start)
    window = fh.read(last - start + header)
    return any(window.rfind(p) >= 0 for p in patterns)


def _text(value: Any, charset: list[str] | None) -> str:
    if isinstance(value, bytes):
        value = pydicom.charset.decode_bytes(value, pydicom.charset.convert_encodings(charset or []), set())
    return "" if value is None else str(value).strip()


def _headers(path: str, force: bool = False) -> tuple[pydicom.Dataset, bool]:
    """The dataset up to its pixel data, and whether a pixel data element follows (pydicom stops reading
    before one, short of the file's end; with none it reads to the end)."""
    with open(path, "rb") as fh:
        ds = pydicom.dcmread(fh, stop_before_pixels=True, force=force)
        return ds, fh.tell() < os.fstat(fh.fileno()).st_size


def _from_pydicom(path: str) -> dict[str, Any]:
    """Read with pydicom (any file the scanner leaves), recognising DICOM by content."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds, pixels = _headers(path)
        except InvalidDicomError:
            ds, pixels = _headers(path, force=True)
            if "SOPClassUID" not in ds or ("SeriesInstanceUID" not in ds
                                           and "DirectoryRecordSequence" not in ds):
                return {"status": "not_dicom", "reason": "not a DICOM file (no 'DICM' marker and no "
                                                        "readable dataset)"}
        meta = getattr(ds, "file_meta", None)
        media = str(meta.get("MediaStorageSOPClassUID", "") or "") if meta is not None else ""
        out: dict[str, Any] = {"media_class": media, "syntax": str(meta.get("TransferSyntaxUID", "") or "")
                               if meta is not None else ""}
        for tag, (key, kind) in _WANTED.items():
            elem = ds.get(tag)
            if elem is None or elem.value is None or elem.value == "":
                continue
            value = elem.value
            if kind in ("s", "m"):
                if isinstance(value, pydicom.multival.MultiValue):
                    value = [str(v).strip() for v in value]
                value = [str(value)] if kind == "m" and not isinstance(value, list) else value
                out[key] = value if kind == "m" else str(value)
            elif kind == "f":
                out[key] = [float(v) for v in (value if isinstance(value, (list, pydicom.multival.MultiValue))
                                               else [value])]
            else:
                out[key] = int(value)
        if int(out.get("frames") or 1) > 1 and "PerFrameFunctionalGroupsSequence" in ds:
            _functional_geometry(ds, out)
        sop = out.get("sop_class", "")
        if sop in ANNOTATION_CLASSES:
            out["annotation"] = _annotation(ds)
    out["no_pixels"] = not ds.get("Rows") or not pixels  # Rows/Columns alone are no image
    return out


def _functional_geometry(ds: pydicom.Dataset, out: dict[str, Any]) -> None:
    """Per-frame positions and the first orientation/spacing of an enhanced multi-frame image."""
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    positions = []
    for item in ds.PerFrameFunctionalGroupsSequence:
        for group in (item, shared):
            if group is None:
                continue
            pos = (group.get("PlanePositionSequence") or [None])[0]
            if pos is not None and "ImagePositionPatient" in pos:
                positions.append([float(v) for v in pos.ImagePositionPatient])
                break
        for key, seq, kw in (("iop", "PlaneOrientationSequence", "ImageOrientationPatient"),
                             ("spacing", "PixelMeasuresSequence", "PixelSpacing"),
                             ("thickness", "PixelMeasuresSequence", "SliceThickness")):
            if key in out:
                continue
            for group in (item, shared):
                sub = (group.get(seq) or [None])[0] if group is not None else None
                if sub is not None and sub.get(kw) is not None:
                    value = sub.get(kw)
                    out[key] = [float(v) for v in (value if key != "thickness" else [value])]
                    break
    if len(positions) == int(out.get("frames") or 1):
        out["ipp_frames"] = positions


def _annotation(ds: pydicom.Dataset) -> dict[str, Any]:
    try:
        from medres.data.dicom_objects.annotations import annotation_references
    except ImportError:  # the SEG/RTSTRUCT converter is not installed in this tree
        annotation_references = _references
    kind, series, sops, frame = annotation_references(ds)
    return {"kind": kind, "ref_series": series or "", "ref_sops": sorted(sops), "ref_for": frame or ""}


def _references(ds: pydicom.Dataset) -> tuple[str, str | None, set[str], str | None]:
    """The source series, instances and frame of reference a SEG or RTSTRUCT names (header only)."""
    kind = "SEG" if str(ds.get("SOPClassUID", "")) in SEG_SOP_CLASSES else "RTSTRUCT"
    series, sops = None, set()
    for item in ds.get("ReferencedSeriesSequence") or []:
        series = series or str(item.get("SeriesInstanceUID", "") or "") or None
        sops |= {str(i.ReferencedSOPInstanceUID) for i in item.get("ReferencedInstanceSequence") or []}
    for ref in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in ref.get("RTReferencedStudySequence") or []:
            for s in study.get("RTReferencedSeriesSequence") or []:
                series = series or str(s.get("SeriesInstanceUID", "") or "") or None
                sops |= {str(i.ReferencedSOPInstanceUID) for i in s.get("ContourImageSequence") or []}
    frame = str(ds.get("FrameOfReferenceUID", "") or "") or None
    return kind, series, sops, frame


def read_header(path: str) -> dict[str, Any]:
    """One file's header as ``{"status", "reason", "fields", "ids", "annotation"}``.

    ``status``: ``dicom`` (an image or another DICOM object), ``dicomdir``, ``not_dicom`` or
    ``unreadable`` (``reason`` says why, in words without values from the file). Never raises.
    """
    try:
        try:
            raw = _scan(path)
            if raw.get("sop_class") in ANNOTATION_CLASSES or int(raw.get("frames") or 1) > 1:
                raise _NeedPydicom("needs the whole header")
        except (_NeedPydicom, struct.error, ValueError, UnicodeDecodeError, IndexError):
            with quiet_pydicom():
                raw = _from_pydicom(path)
    except OSError as exc:
        return {"status": "unreadable", "reason": f"could not be read ({safe_message(exc)})"}
    except MemoryError:
        return {"status": "unreadable", "reason": "ran out of memory reading its header (the process's "
                                                  "memory limit is too low for it)"}
    except Exception as exc:  # pydicom raises many types on damaged files
        return {"status": "unreadable", "reason": f"damaged DICOM file ({safe_message(exc)})"}
    if raw.get("status"):
        return raw
    return _record(raw)


def _record(raw: dict[str, Any]) -> dict[str, Any]:
    charset = raw.get("charset")
    sop = raw.get("sop_class") or ""
    if raw.get("media_class") == DICOMDIR_CLASS or sop == DICOMDIR_CLASS:
        return {"status": "dicomdir", "reason": "a DICOMDIR (media index), not an image"}
    if not sop:
        return {"status": "unreadable", "reason": "damaged DICOM header: no SOP Class UID"}
    if not raw.get("series_uid"):
        return {"status": "unreadable", "reason": "damaged DICOM header: no SeriesInstanceUID"}
    if raw.get("truncated"):
        return {"status": "unreadable", "reason": "truncated: the pixel data is shorter than its header says"}
    ipp = raw.get("ipp")
    positions = raw.get("ipp_frames") or ([ipp] if ipp and len(ipp) == 3 else [])
    iop = raw.get("iop")
    spacing = raw.get("spacing")
    thickness = raw.get("thickness")
    contrast = _text(raw.get("contrast"), charset)
    fields = {
        "sop_class": sop, "modality": raw.get("modality") or "",
        "image_type": "\\".join(raw.get("image_type") or []),
        "iop": iop if iop and len(iop) == 6 else None, "ipp": positions,
        "spacing": spacing if spacing and len(spacing) == 2 else None,
        "thickness": thickness[0] if thickness else None,
        "rows": raw.get("rows"), "cols": raw.get("cols"), "frames": int(raw.get("frames") or 1),
        "contrast": "yes" if contrast and contrast.lower() not in ("none", "no", "0") else "no",
        "kernel": "\\".join(raw.get("kernel") or []), "series_number": raw.get("series_number") or "",
        "pixels": not raw.get("no_pixels", False),
        "view": code_string(raw.get("view") or ""),
        "imager_spacing": (raw.get("imager_spacing") if raw.get("imager_spacing")
                           and len(raw["imager_spacing"]) == 2 else None),
    }
    ids = {k: _text(raw.get(k), charset) for k in _ID_KEYS}
    out = {"status": "dicom", "reason": "", "fields": fields, "ids": ids}
    if "annotation" in raw:
        out["annotation"] = raw["annotation"]
    return out
