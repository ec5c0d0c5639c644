"""NIfTI faults MONAI loads silently or with the wrong reason: no valid affine, NaN/inf voxels, 4D where
3D is expected, truncated or mislabelled files."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.conftest import write_nifti


def _volume(shape=(6, 5, 4), dtype=np.float32):
    return np.arange(np.prod(shape), dtype=dtype).reshape(shape)


def test_valid_nifti_roundtrip(tmp_path):
    affine = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 20], [0, 1.25, 0, 5], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "a.nii.gz", _volume(), affine)
    img = load_image(path, ndim=3)
    np.testing.assert_array_equal(img.numpy(), _volume())
    np.testing.assert_allclose(img.affine.numpy(), affine)
    np.testing.assert_allclose(img.meta["spacing"], [1.5, 1.25, 2.0])


def test_sform_only_and_qform_only_are_valid(tmp_path):
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    for q, s in [(0, 2), (1, 0)]:
        path = write_nifti(tmp_path / f"q{q}s{s}.nii", _volume(), affine, qform_code=q, sform_code=s)
        img = load_image(path)
        np.testing.assert_allclose(img.affine.numpy(), affine)


def test_no_valid_affine(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _volume(), qform_code=0, sform_code=0)
    with pytest.raises(DataError, match="qform_code and sform_code are both 0"):
        load_image(path)


@pytest.mark.parametrize("bad,expected", [(np.nan, "2 NaN and 0 infinite"),
                                          (np.inf, "0 NaN and 2 infinite")])
def test_non_finite_voxels(tmp_path, bad, expected):
    data = _volume()
    data[1, 2, 3] = data[0, 0, 0] = bad
    with pytest.raises(DataError, match=expected):
        load_image(write_nifti(tmp_path / "a.nii", data))


def test_four_d_where_three_d_is_expected(tmp_path):
    path = write_nifti(tmp_path / "a.nii.gz", _volume((6, 5, 4, 2)))
    assert tuple(load_image(path).shape) == (6, 5, 4, 2)  # no ndim: kept, time/channel last
    with pytest.raises(DataError, match=r"is 4D \(shape \(6, 5, 4, 2\)\) where a 3D image was expected"):
        load_image(path, ndim=3)
    single = write_nifti(tmp_path / "b.nii.gz", _volume((6, 5, 4, 1)))  # trailing singleton: really 3D
    assert tuple(load_image(single, ndim=3).shape) == (6, 5, 4)


def test_truncated_files(tmp_path):
    full = write_nifti(tmp_path / "a.nii", _volume((20, 20, 20)))
    cut = tmp_path / "cut.nii"
    cut.write_bytes(full.read_bytes()[:10_000])
    with pytest.raises(DataError, match="is truncated: the header promises 32352 bytes of data, the file "
                                        "holds 10000"):
        load_image(cut)
    gz = tmp_path / "cut.nii.gz"
    gz.write_bytes(gzip.compress(full.read_bytes())[:3_000])
    with pytest.raises(DataError, match="damaged or truncated voxel data|is truncated|damaged gzip"):
        load_image(gz)
    (tmp_path / "short.nii").write_bytes(full.read_bytes()[:200])
    with pytest.raises(DataError, match="too short for a NIfTI header"):
        load_image(tmp_path / "short.nii")
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not gzip-compressed.*an empty file"):
        load_image(tmp_path / "empty.nii.gz")


def test_mislabelled_files_name_what_they_are(tmp_path, dicom_files):
    plain = write_nifti(tmp_path / "a.nii", _volume())
    shutil.copy(plain, tmp_path / "plain.nii.gz")
    with pytest.raises(DataError, match="named .gz but is not gzip-compressed: its bytes look like an "
                                        "uncompressed NIfTI-1 file"):
        load_image(tmp_path / "plain.nii.gz")
    shutil.copy(dicom_files / "CT_small.dcm", tmp_path / "ct.nii")
    with pytest.raises(DataError, match="is not a NIfTI file: its bytes look like a DICOM file"):
        load_image(tmp_path / "ct.nii")
    (tmp_path / "notes.nii").write_text("subject 7, scanned twice\n" * 20)
    with pytest.raises(DataError, match="look like text"):
        load_image(tmp_path / "notes.nii")


def test_folder_named_like_nifti(tmp_path):
    (tmp_path / "x.nii.gz").mkdir()
    with pytest.raises(DataError, match="is a folder, not a NIfTI file"):
        load_image(tmp_path / "x.nii.gz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "nope.nii.gz")


def test_cifti_is_not_an_image(nibabel_files):
    with pytest.raises(DataError, match="CIFTI-2"):
        load_image(nibabel_files / "row_major.dconn.nii")


def test_singular_affine(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(_volume(), None)
    img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # a voxel size of 0 along y
    path = tmp_path / "a.nii"
    nib.save(img, path)
    with pytest.raises(DataError, match="singular or non-finite affine"):
        load_image(path)
