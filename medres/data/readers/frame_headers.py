"""The size each compressed DICOM frame declares in its own stream, checked against the DICOM header
before any decoder runs: :func:`check_encapsulated_frames`.

A decoder allocates for the size written in the compressed stream (a JPEG's SOF, a JPEG 2000 SIZ), not
for the DICOM header's Rows/Columns, so a 1 KB file declaring 8 x 8 can hold a JPEG that says
16000 x 16000. The frame headers are parsed here by hand because no decoder exposes them without
decoding: JPEG baseline/extended/progressive/lossless SOF (ITU-T T.81 B.2.2), JPEG-LS SOF55 (0xFFF7,
ITU-T T.87), the JPEG 2000 SIZ marker of a raw codestream or of the ``jp2c`` box of a JP2 file
(ITU-T T.800 A.5.1, I.5), and the RLE header's segment count (DICOM PS3.5 G.5). The frames come from
pydicom's ``pydicom.encaps.generate_frames``.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, RLELossless

from medres.errors import DataError

__all__ = ["FrameHeader", "check_encapsulated_frames", "frame_header"]

#: JPEG start-of-frame markers (T.81 Table B.1: C0-C3, C5-C7, C9-CB, CD-CF; not C4 DHT, C8 JPG, CC DAC)
#: and JPEG-LS SOF55 (T.87)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"

#: (rows, columns, samples per pixel, bits per sample, what the stream is)
FrameHeader = tuple[int, int, int, int, str]


def _jpeg(data: bytes) -> FrameHeader | None:
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI or SOS before any SOF
            return None
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker in _SOF:
            if pos + 10 > n:
                return None
            precision, rows, cols, components = struct.unpack_from(">BHHB", data, pos + 4)
            return rows, cols, components, precision, "JPEG-LS" if marker == 0xF7 else "JPEG"
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k(data: bytes, start: int = 0) -> FrameHeader | None:
    """A JPEG 2000 codestream's SIZ: it must follow SOC (FF4F) directly (T.800 A.5.1)."""
    if data[start:start + 4] != b"\xff\x4f\xff\x51" or start + 42 > len(data):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">IIII", data, start + 8)
    components = struct.unpack_from(">H", data, start + 40)[0]
    if start + 42 + 3 * components > len(data) or components == 0:
        return None
    bits = max((data[start + 42 + 3 * c] & 0x7F) + 1 for c in range(components))
    return max(ysiz - yosiz, 0), max(xsiz - xosiz, 0), components, bits, "JPEG 2000"


def _jp2(data: bytes) -> FrameHeader | None:
    """The codestream of a JP2 file's ``jp2c`` box (T.800 I.4: box length, type, contents)."""
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:  # a 64-bit length follows
            if pos + 16 > len(data):
                return None
            length, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        if kind == b"jp2c":
            return _j2k(data, pos + header)
        if length == 0 or length < header:
            return None
        pos += length
    return None


def frame_header(frame: bytes) -> FrameHeader | None:
    """What a compressed frame's own header declares, or None when it is none of JPEG, JPEG-LS, JPEG 2000."""
    if frame[:2] == b"\xff\xd8":
        return _jpeg(frame)
    if frame[:2] == b"\xff\x4f":
        return _j2k(frame)
    if frame[:12] == _JP2_SIGNATURE:
        return _jp2(frame)
    return None


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        return default if value in (None, "") else int(value)
    except Exception:
        return default


def _frames(ds: Dataset, n_frames: int, path: Path):  # noqa: ANN202 - an iterator of bytes
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        yield from generate_frames(ds.PixelData, number_of_frames=n_frames, extended_offsets=offsets)
    except (ValueError, TypeError, KeyError, IndexError, struct.error) as exc:
        raise DataError(f"has damaged encapsulated pixel data ({type(exc).__name__})", path=path,
                        hint="re-export the file") from None


def check_encapsulated_frames(ds: Dataset, path: str | Path) -> None:
    """Refuse a compressed frame whose own header declares another size, sample count or a greater bit
    depth than the DICOM header (Rows, Columns, SamplesPerPixel, BitsAllocated), or an RLE frame with
    another number of segments than SamplesPerPixel x bytes per sample; before any decoder runs.

    A frame whose stream is none of JPEG, JPEG-LS, JPEG 2000 or RLE is left to the decoder (which then
    reports it as undecodable). Does nothing for native (uncompressed) pixel data.
    """
    path = Path(path)
    syntax = UID(str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", "") or ""))
    if not syntax or not syntax.is_transfer_syntax or not syntax.is_encapsulated or "PixelData" not in ds:
        return
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    samples, bits = _int(ds, "SamplesPerPixel", 1), _int(ds, "BitsAllocated", 8)
    n_frames = max(_int(ds, "NumberOfFrames", 1), 1)
    expected_segments = samples * ((bits + 7) // 8)
    for index, frame in enumerate(_frames(ds, n_frames, path), start=1):
        where = f"frame {index}" if n_frames > 1 else "frame"
        if syntax == RLELossless:
            if len(frame) < 64:
                raise DataError(f"has an RLE {where} shorter than its 64-byte header", path=path,
                                hint="re-export the file")
            segments = struct.unpack_from("<I", frame)[0]
            offsets = struct.unpack_from("<15I", frame, 4)[:min(segments, 15)]
            if segments != expected_segments:
                raise DataError(f"has an RLE {where} of {segments} segments where the header "
                                f"(SamplesPerPixel {samples}, BitsAllocated {bits}) means "
                                f"{expected_segments}; refused before decoding", path=path,
                                hint="re-export the file")
            outside = offsets and (offsets[0] != 64 or offsets[-1] > len(frame))
            if list(offsets) != sorted(offsets) or outside:
                raise DataError(f"has an RLE {where} whose segment offsets lie outside it", path=path,
                                hint="re-export the file")
            continue
        header = frame_header(frame)
        if header is None:
            continue
        f_rows, f_cols, f_samples, f_bits, what = header
        problems = []
        if (f_rows, f_cols) != (rows, cols):
            problems.append(f"{f_cols} x {f_rows} pixels where the DICOM header says {cols} x {rows} "
                            "(Columns x Rows)")
        if f_samples != samples:
            problems.append(f"{f_samples} component(s) where SamplesPerPixel is {samples}")
        if f_bits > max(bits, 8):
            problems.append(f"{f_bits}-bit samples where BitsAllocated is {bits}")
        if problems:
            raise DataError(f"has a {what} {where} declaring {'; '.join(problems)}: refused before decoding "
                            "(the decoder would allocate for the stream's size)", path=path,
                            hint="the file is damaged or crafted: re-export it from the source system")
