"""Issue 8 item 3: scans whose header declares a huge size are refused before anything is decompressed
or allocated (NIfTI, DICOM file and series, PNG), with the declared shape and the cap in the message."""

from __future__ import annotations

import copy
import gzip
import resource
import struct
import zlib

import nibabel as nib
import numpy as np
import pytest

from medres.data.readers import limits
from medres.data.readers.io import load_image
from medres.data.readers.nifti import _gzip_holds
from medres.errors import DataError
from tests.data.dicom_factory import ct_small, write_series

#: peak RSS may grow by at most this much while a bomb is refused (the bombs declare >= 4 GiB)
_SLACK_KIB = 300 * 1024


def _peak_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _nifti_bomb(path, shape=(2048, 2048, 512)):
    """A small .nii.gz whose header declares ``shape`` int16 (4 GiB) over a few KiB of zeros."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), code=1)
    hdr.set_qform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\x00" * 4 + bytes(1 << 16))
    return path


def test_nifti_bomb_is_refused_before_allocation(tmp_path):
    bomb = _nifti_bomb(tmp_path / "bomb.nii.gz", (2048, 2048, 1024))
    assert bomb.stat().st_size < 100_000
    before = _peak_kib()
    with pytest.raises(DataError) as info:
        load_image(bomb)
    assert _peak_kib() - before < _SLACK_KIB
    err = info.value
    assert err.path == str(bomb)
    assert "2048 x 2048 x 1024" in err.reason and "data.max_voxels" in err.reason
    assert "before decompressing" in err.reason


def test_nifti_at_the_cap_is_streamed_not_loaded(tmp_path, monkeypatch):
    # 2**31 int16 voxels (4 GiB, the gzip trailer reads 0): the stream is counted in chunks, not loaded
    monkeypatch.setattr(limits, "memory_allowance", lambda: (None, ""))
    bomb = _nifti_bomb(tmp_path / "bomb.nii.gz", (2048, 2048, 512))
    before = _peak_kib()
    with pytest.raises(DataError, match="is truncated: the header promises 4294967648 bytes"):
        load_image(bomb)
    assert _peak_kib() - before < _SLACK_KIB


def test_nifti_cap_is_configurable(tmp_path):
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), path)
    assert tuple(load_image(path).shape) == (8, 8, 8)
    with pytest.raises(DataError, match="more than data.max_voxels"):
        load_image(path, max_voxels=100)


def test_the_cap_never_exceeds_free_memory(tmp_path, monkeypatch):
    path = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.int16), np.eye(4)), path)
    monkeypatch.setattr(limits, "memory_allowance", lambda: (1 << 20, "the memory free on the machine now"))
    with pytest.raises(DataError, match="memory free"):
        load_image(path)


def test_gzip_size_is_counted_without_keeping_the_data(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(bytes(3 << 20))
    assert _gzip_holds(path, 10 << 20) == 3 << 20
    assert _gzip_holds(path, 1000) == 1000


def test_dicom_file_bomb_is_refused_before_decoding(tmp_path):
    ds = copy.deepcopy(ct_small())
    ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 4
    ds.save_as(tmp_path / "bomb.dcm")
    before = _peak_kib()
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "bomb.dcm")
    assert _peak_kib() - before < _SLACK_KIB
    assert "65535 x 65535 x 4" in info.value.reason and "data.max_voxels" in info.value.reason


def test_dicom_series_bomb_counts_every_file(tmp_path):
    def huge(k, ds):
        ds.Rows = ds.Columns = 30000  # 9e8 voxels per file: each alone passes, three together do not

    write_series(tmp_path / "s", 3, edit=huge)
    before = _peak_kib()
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "s")
    assert _peak_kib() - before < _SLACK_KIB
    assert info.value.path == str(tmp_path / "s")
    assert "30000 x 30000 x 3" in info.value.reason and "3 DICOM headers" in info.value.reason


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(4096))) + \
        chunk(b"IEND", b"")


def test_png_bomb_is_refused_by_pillows_guard(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png(100_000, 100_000))
    before = _peak_kib()
    with pytest.raises(DataError) as info:
        load_image(tmp_path / "bomb.png")
    assert _peak_kib() - before < _SLACK_KIB
    assert "decompression-bomb guard" in info.value.reason


def test_png_cap_is_checked_before_decoding(tmp_path):
    (tmp_path / "img.png").write_bytes(_png(9000, 9000))  # under Pillow's guard, over a cap of 1e6
    with pytest.raises(DataError, match="9000 x 9000 x 1 = 8.1e.07 voxels, more than data.max_voxels"):
        load_image(tmp_path / "img.png", max_voxels=10**6)


def test_max_voxels_is_a_config_field():
    import pydantic

    from medres.config import DataConfig

    assert DataConfig().max_voxels == 2**31
    with pytest.raises(pydantic.ValidationError):
        DataConfig(max_voxels=0)


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path, monkeypatch):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = copy.deepcopy(ct_small())
    ds.ImageComments = "x" * (8 << 20)  # 8 MiB of one letter: deflates to a few KiB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert (tmp_path / "deflated.dcm").stat().st_size < 200_000
    monkeypatch.setattr(limits, "available_memory", lambda: 8 << 20)  # 8 MiB free: inflating needs more
    with pytest.raises(DataError, match="inflates to more than"):
        load_image(tmp_path / "deflated.dcm")
