"""A compressed DICOM frame whose own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE segment count)
disagrees with the DICOM header is refused before any decoder allocates for it. The JPEG and JPEG 2000
streams are real ones written by Pillow; JPEG-LS and lossless-JPEG headers (no encoder here) are bytes
laid out as ITU-T T.87 / T.81 specify."""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pydicom
import pytest
from PIL import Image, features
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from medres.data.readers.dicom import read_dicom_file
from medres.data.readers.frame_headers import check_encapsulated_frames, frame_header
from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.dicom_factory import ct_small


def _pillow(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def _dicom(path, frames: list[bytes], syntax, *, rows: int = 8, cols: int = 8, bits: int = 8,
           samples: int = 1):
    ds = ct_small()
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _sof(marker: int, rows: int, cols: int, precision: int = 8, components: int = 1) -> bytes:
    """SOI, an APP0 segment, then a start-of-frame segment (T.81 B.2.2) and EOI."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + bytes(9)
    body = struct.pack(">BHHB", precision, rows, cols, components) + b"\x01\x11\x00" * components
    return b"\xff\xd8" + app0 + bytes([0xFF, marker]) + struct.pack(">H", 2 + len(body)) + body + b"\xff\xd9"


def test_a_real_2000px_jpeg_in_an_8x8_header_is_refused_before_decoding(tmp_path):
    jpeg = _pillow(np.full((2000, 2000), 100, np.uint8), "JPEG", quality=90)
    path = _dicom(tmp_path / "bomb.dcm", [jpeg], JPEGBaseline8Bit)
    assert path.stat().st_size < 100_000
    # the control: pydicom alone decodes the stream at its own size (4 MB) before noticing
    ds = pydicom.dcmread(path)
    tracemalloc.start()
    with pytest.raises(ValueError):  # the decoded 2000 x 2000 does not fit 8 x 8
        ds.pixel_array  # noqa: B018
    decoder_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert decoder_peak > 4_000_000
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
    err = info.value
    assert err.path == str(path)
    assert "JPEG frame declaring 2000 x 2000 pixels where the DICOM header says 8 x 8" in err.reason
    assert "refused before decoding" in err.reason


def test_a_matching_jpeg_still_decodes(tmp_path):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    path = _dicom(tmp_path / "ok.dcm", [_pillow(pixels, "JPEG", quality=100)], JPEGBaseline8Bit)
    data, _ = read_dicom_file(path)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(data, expected.T)  # [X, Y]: columns first


def _siz(rows: int, cols: int, components: int = 1, bits: int = 8) -> bytes:
    """SOC and a SIZ segment (T.800 A.5.1) with the image offset 4 x 2, then EOC."""
    body = struct.pack(">HIIIIIIIIH", 0, cols + 4, rows + 2, 4, 2, cols + 4, rows + 2, 0, 0, components)
    body += bytes([bits - 1, 1, 1]) * components
    return b"\xff\x4f\xff\x51" + struct.pack(">H", 2 + len(body)) + body + b"\xff\xd9"


def test_jpeg2000_siz_built_from_bytes(tmp_path):
    assert frame_header(_siz(16000, 12000, 3, 12)) == (16000, 12000, 3, 12, "JPEG 2000")
    jp2 = (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + struct.pack(">I4s", 20, b"ftyp") + b"jp2 " + bytes(8)
           + struct.pack(">I4s", 8 + len(_siz(9000, 8)), b"jp2c") + _siz(9000, 8))
    assert frame_header(jp2)[:2] == (9000, 8)
    path = _dicom(tmp_path / "siz.dcm", [_siz(16000, 12000)], JPEG2000Lossless)
    with pytest.raises(DataError, match="JPEG 2000 frame declaring 12000 x 16000 pixels"):
        read_dicom_file(path)


@pytest.mark.skipif(not features.check("jpg_2000"), reason="Pillow built without OpenJPEG")
def test_jpeg2000_siz_of_codestream_and_jp2(tmp_path):
    big = np.full((1024, 768), 7, np.uint8)
    for name, kw in (("j2k", {"irreversible": False}), ("jp2", {"irreversible": False})):
        stream = _pillow(big, "JPEG2000", **kw) if name == "jp2" else _pillow(big, "JPEG2000", no_jp2=True)
        assert frame_header(stream)[:4] == (1024, 768, 1, 8)
        path = _dicom(tmp_path / f"{name}.dcm", [stream], JPEG2000Lossless)
        with pytest.raises(DataError, match="JPEG 2000 frame declaring 768 x 1024 pixels"):
            read_dicom_file(path)
    small = np.arange(64, dtype=np.uint8).reshape(8, 8)
    path = _dicom(tmp_path / "ok.dcm", [_pillow(small, "JPEG2000", no_jp2=True)], JPEG2000Lossless)
    data, _ = read_dicom_file(path)
    np.testing.assert_allclose(data, (small.astype(np.float64) - 1024).T)  # lossless, CT_small's rescale


def test_jpeg_ls_sof55_is_read(tmp_path):
    stream = _sof(0xF7, 16000, 16000)
    assert frame_header(stream) == (16000, 16000, 1, 8, "JPEG-LS")
    path = _dicom(tmp_path / "ls.dcm", [stream], JPEGLSLossless)
    with pytest.raises(DataError, match="JPEG-LS frame declaring 16000 x 16000 pixels"):
        read_dicom_file(path)


def test_lossless_jpeg_precision_and_components_are_checked(tmp_path):
    deep = _dicom(tmp_path / "deep.dcm", [_sof(0xC3, 8, 8, precision=16)], JPEGLosslessSV1)
    with pytest.raises(DataError, match="16-bit samples where BitsAllocated is 8"):
        read_dicom_file(deep)
    colour = _dicom(tmp_path / "rgb.dcm", [_sof(0xC3, 8, 8, components=3)], JPEGLosslessSV1)
    with pytest.raises(DataError, match="3 component"):
        read_dicom_file(colour)


def test_every_frame_of_a_multiframe_file_is_checked(tmp_path):
    good = _pillow(np.zeros((8, 8), np.uint8), "JPEG")
    bad = _pillow(np.zeros((800, 8), np.uint8), "JPEG")
    path = _dicom(tmp_path / "multi.dcm", [good, good, bad], JPEGBaseline8Bit)
    with pytest.raises(DataError, match="JPEG frame 3 declaring 8 x 800 pixels"):
        read_dicom_file(path)


def test_rle_segment_count_must_match_the_header(tmp_path):
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    ds = ct_small()
    ds.Rows = ds.Columns = 8
    ds.PixelData = pixels.astype(np.int16).tobytes()
    ds.compress(RLELossless)  # pydicom's own RLE encoder: 2 segments for 16-bit samples
    ok = tmp_path / "ok.dcm"
    ds.save_as(ok, enforce_file_format=True)
    read_dicom_file(ok)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7  # the header now means one segment
    ds.save_as(tmp_path / "lie.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match="RLE frame of 2 segments where the header"):
        read_dicom_file(tmp_path / "lie.dcm")


def test_native_pixel_data_is_not_touched():
    ds = ct_small()
    check_encapsulated_frames(ds, "CT_small.dcm")  # uncompressed: nothing to check, no error
