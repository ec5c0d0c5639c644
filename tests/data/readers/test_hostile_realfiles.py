"""Issue 12 §4: defects found by loading real files from nibabel's shipped test data."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medres.data.readers.io import check_image_mask, load_image
from medres.errors import DataError

NIB = Path(nib.__file__).parent
ANATOMICAL = NIB / "tests" / "data" / "anatomical.nii"  # big-endian int16
MOSAIC = [NIB / "nicom" / "tests" / "data" / f"{i}.dcm" for i in (0, 1)]  # Siemens MOSAIC


def test_big_endian_nifti_loads_as_stored_with_native_byte_order():
    assert nib.load(ANATOMICAL).get_data_dtype().byteorder == ">"
    img = load_image(ANATOMICAL, dtype=None)  # how masks are loaded
    assert img.dtype == torch.int16
    np.testing.assert_array_equal(img.numpy(), np.asanyarray(nib.load(ANATOMICAL).dataobj))


def test_big_endian_mask_passes_the_image_mask_check(tmp_path):
    mask = (np.arange(4 * 5 * 6).reshape(4, 5, 6) % 2).astype(">i2")
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(">i2")
    nib.save(nib.Nifti1Image(mask, np.eye(4), hdr), tmp_path / "m.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), np.eye(4)), tmp_path / "i.nii")
    mask_img = load_image(tmp_path / "m.nii", dtype=None)
    check_image_mask(load_image(tmp_path / "i.nii"), mask_img, labels=[0, 1])


def test_siemens_mosaic_is_refused_with_the_reason(tmp_path):
    with pytest.raises(DataError) as info:
        load_image(MOSAIC[0])
    assert "Siemens MOSAIC" in info.value.reason and "48 slices" in info.value.reason
    assert "dcm2niix" in info.value.hint
    for f in MOSAIC:
        shutil.copy(f, tmp_path / f.name)
    with pytest.raises(DataError) as info:  # a folder of mosaics is not a 256x256x2 volume
        load_image(tmp_path)
    assert "Siemens MOSAIC" in info.value.reason
