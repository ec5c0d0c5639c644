"""NIfTI header extensions are bounded before nibabel reads them: a declared size (esize, vox_offset)
beyond the bound or past the voxel data is refused without reading the extension, and a large real
extension is refused without decompressing it."""

from __future__ import annotations

import gzip
import resource
import struct
import tracemalloc

import nibabel as nib
import numpy as np
import pytest

from medres.data.readers.io import load_image
from medres.data.readers.nifti import MAX_EXTENSION_BYTES, read_nifti
from medres.errors import DataError


def _one_voxel_header(vox_offset: int) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((1, 1, 1))
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = vox_offset
    return hdr.binaryblock


def _write(path, header: bytes, extensions: list[tuple[int, int, int]], tail: bytes = b"\x07\x00"):
    """``extensions``: (declared esize, ecode, real content bytes) each; the content is zeros."""
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header + b"\x01\x00\x00\x00")
        for esize, ecode, real in extensions:
            fh.write(struct.pack("<ii", esize, ecode))
            for start in range(0, real, 1 << 22):
                fh.write(bytes(min(1 << 22, real - start)))
        fh.write(tail)
    return path


def test_a_small_real_extension_still_loads(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment" * 100))
    nib.save(img, tmp_path / "ext.nii.gz")
    data, _ = read_nifti(tmp_path / "ext.nii.gz")
    np.testing.assert_array_equal(data, np.arange(24).reshape(2, 3, 4))


def test_a_lying_esize_is_refused_on_the_declared_size(tmp_path):
    # one 16-byte extension slot before the voxel, but its esize claims 2 GiB - 16
    path = _write(tmp_path / "lie.nii.gz", _one_voxel_header(368), [(2**31 - 16, 6, 8)])
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_image(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "header extension at byte 352 declaring 2147483632 bytes" in info.value.reason
    assert "refused before reading it" in info.value.reason
    assert peak < 16 << 20


def test_a_negative_esize_is_refused(tmp_path):
    # nibabel would read(-x): the whole remaining stream
    path = _write(tmp_path / "neg.nii.gz", _one_voxel_header(368), [(-64, 6, 8)])
    with pytest.raises(DataError, match="declaring -64 bytes"):
        read_nifti(path)


def test_a_huge_declared_vox_offset_is_refused_before_reading(tmp_path):
    # the header says 2 GiB of extensions lie before the voxel; the file is a few hundred bytes
    path = _write(tmp_path / "offset.nii.gz", _one_voxel_header(352 + 2**31), [(2**31 - 16, 6, 8)])
    assert path.stat().st_size < 1000
    with pytest.raises(DataError) as info:
        read_nifti(path)
    assert "MiB of header extensions" in info.value.reason and "2048 MiB" in info.value.reason


def test_a_large_real_extension_is_refused_without_decompressing_it(tmp_path):
    real = 4 * MAX_EXTENSION_BYTES  # 256 MiB of zeros: ~1 MB compressed
    path = _write(tmp_path / "real.nii.gz", _one_voxel_header(352 + 8 + real), [(8 + real, 6, real)])
    assert path.stat().st_size < 4 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match="256 MiB of header extensions"):
        read_nifti(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024


def test_extensions_before_a_bad_vox_offset_are_refused(tmp_path):
    # extension flag set but vox_offset 0: nibabel would read extensions until the end of the stream
    header = bytearray(_one_voxel_header(352))
    header[108:112] = struct.pack("<f", 0.0)
    path = _write(tmp_path / "zero.nii.gz", bytes(header), [(16, 6, 8)])
    with pytest.raises(DataError, match="lies before their start"):
        read_nifti(path)


def test_nifti2_extensions_are_bounded(tmp_path):
    img = nib.Nifti2Image(np.zeros((1, 1, 1), np.int16), np.eye(4))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"x" * 8))
    nib.save(img, tmp_path / "ok.nii")
    read_nifti(tmp_path / "ok.nii")
    raw = bytearray((tmp_path / "ok.nii").read_bytes())
    assert raw[540] == 1
    raw[544:548] = struct.pack("<i", 2**31 - 16)
    (tmp_path / "bad.nii").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="header extension at byte 544"):
        read_nifti(tmp_path / "bad.nii")
