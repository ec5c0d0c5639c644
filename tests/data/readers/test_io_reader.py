"""MedresReader inside MONAI's LoadImaged (no fallback to other readers hiding the DataError), channel
stacking, the ndim check, and image/mask agreement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

from medres.data.readers.io import MedresReader, check_image_mask, load_image
from medres.errors import DataError
from tests.data.conftest import write_nifti
from tests.data.dicom_factory import write_series


def test_loadimaged_gives_what_load_image_gives(tmp_path, dicom_files):
    write_series(tmp_path / "s", 3)
    nii = write_nifti(tmp_path / "a.nii.gz", np.random.default_rng(0).random((5, 6, 7), dtype=np.float32))
    for path in [dicom_files / "CT_small.dcm", tmp_path / "s", nii]:
        d = LoadImaged(keys="image", reader=MedresReader())({"image": str(path)})
        direct = load_image(path)
        assert d["image"].shape == direct.shape and d["image"].dtype == direct.dtype
        np.testing.assert_array_equal(d["image"].numpy(), direct.numpy())
        np.testing.assert_array_equal(d["image"].affine.numpy(), direct.affine.numpy())
        assert set(d["image"].meta) == set(direct.meta)


def test_a_monai_pipeline_runs_on_the_reader(tmp_path):
    write_series(tmp_path / "s", 4)
    pipeline = Compose([LoadImaged(keys="image", reader=MedresReader(ndim=3)),
                        EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS")])
    out = pipeline({"image": str(tmp_path / "s")})["image"]
    assert tuple(out.shape) == (1, 128, 128, 4)
    assert np.all(np.diag(out.affine.numpy())[:3] > 0)  # RAS after Orientationd


@pytest.mark.parametrize("make,reason", [
    (lambda p, files: (p / "x.nii.gz").mkdir() or p / "x.nii.gz", "is a folder, not a NIfTI file"),
    (lambda p, files: files / "no_meta.dcm", "is not a DICOM file"),
    (lambda p, files: files / "rtplan.dcm", "RT Plan Storage"),
])
def test_loadimaged_does_not_fall_back_and_hide_the_error(tmp_path, dicom_files, make, reason):
    """MONAI's LoadImage tries its other readers when a named one raises; MedresReader's error survives."""
    path = make(tmp_path, dicom_files)
    with pytest.raises(DataError, match=reason):
        LoadImaged(keys="image", reader=MedresReader())({"image": str(path)})
    # inside Compose MONAI wraps it; the DataError is the cause
    with pytest.raises(RuntimeError) as info:
        Compose([LoadImaged(keys="image", reader=MedresReader())])({"image": str(path)})
    assert isinstance(info.value.__cause__, DataError) and reason in info.value.__cause__.reason


def test_reader_claims_its_formats():
    reader = MedresReader()
    assert reader.verify_suffix("a.nii.gz") and reader.verify_suffix("IM0001")
    assert reader.verify_suffix("x.dcm") and reader.verify_suffix(["a.png", "b.jpg"])
    assert not reader.verify_suffix("a.mha")


def test_several_paths_become_channels(tmp_path):
    rng = np.random.default_rng(1)
    a = write_nifti(tmp_path / "t1.nii.gz", rng.random((5, 6, 7), dtype=np.float32))
    b = write_nifti(tmp_path / "t2.nii.gz", rng.random((5, 6, 7), dtype=np.float32))
    img = load_image([a, b])
    assert tuple(img.shape) == (2, 5, 6, 7) and img.meta["original_channel_dim"] == 0
    np.testing.assert_array_equal(img[1].numpy(), load_image(b).numpy())
    d = LoadImaged(keys="image", reader=MedresReader())({"image": [str(a), str(b)]})
    np.testing.assert_array_equal(d["image"].numpy(), img.numpy())
    moved = write_nifti(tmp_path / "moved.nii.gz", rng.random((5, 6, 7), dtype=np.float32),
                        np.diag([1.5, 1.5, 2.0, 1.0]))
    with pytest.raises(DataError, match="cannot be stacked as a channel.*spacing"):
        load_image([a, moved])


def _pair(tmp_path, mask_data=None, mask_affine=None, shape=(8, 8, 6)):
    affine = np.array([[-0.8, 0, 0, 10], [0, -0.8, 0, 20], [0, 0, 2.5, -30], [0, 0, 0, 1]])
    image = load_image(write_nifti(tmp_path / "img.nii.gz", np.zeros(shape, np.int16), affine))
    mask_data = np.zeros(shape, np.uint8) if mask_data is None else mask_data
    mask = load_image(write_nifti(tmp_path / "mask.nii.gz", mask_data,
                                  affine if mask_affine is None else mask_affine))
    return image, mask, affine


def test_matching_mask_passes(tmp_path):
    data = np.zeros((8, 8, 6), np.uint8)
    data[2:4, 2:4, 1:3] = 1
    image, mask, _ = _pair(tmp_path, data)
    check_image_mask(image, mask, labels=[0, 1])


def test_mask_of_another_shape(tmp_path):
    image, mask, _ = _pair(tmp_path, np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(DataError, match=r"mask does not match its image: shape \(8, 8, 5\) differs from "
                                        r"\(8, 8, 6\)") as info:
        check_image_mask(image, mask)
    assert info.value.path.endswith("mask.nii.gz")


def test_mask_with_other_spacing_or_origin(tmp_path):
    _, _, affine = _pair(tmp_path)
    spaced = affine.copy()
    spaced[2, 2] = 3.0
    image, mask, _ = _pair(tmp_path, mask_affine=spaced)
    with pytest.raises(DataError, match="spacing .* differs"):
        check_image_mask(image, mask)
    shifted = affine.copy()
    shifted[0, 3] += 0.5
    image, mask, _ = _pair(tmp_path, mask_affine=shifted)
    with pytest.raises(DataError, match="affine .* differs by up to 0.5"):
        check_image_mask(image, mask)
    check_image_mask(image, mask, atol=0.6)  # within an explicit tolerance


def test_mask_values_must_be_configured_labels(tmp_path):
    data = np.zeros((8, 8, 6), np.uint8)
    data[0, 0, 0], data[1, 1, 1] = 3, 7
    image, mask, _ = _pair(tmp_path, data)
    with pytest.raises(DataError, match=r"mask holds values \[3, 7\] that are not labels"):
        check_image_mask(image, mask, labels=[0, 1, 2])
    check_image_mask(image, mask, labels=range(8))
    soft = np.full((8, 8, 6), 0.25, np.float32)
    image, mask, _ = _pair(tmp_path, soft)
    with pytest.raises(DataError, match="non-integer values"):
        check_image_mask(image, mask, labels=[0, 1])


def test_four_d_mask_is_refused(tmp_path):
    image, mask, _ = _pair(tmp_path, np.zeros((8, 8, 6, 2), np.uint8))
    with pytest.raises(DataError, match="one label image"):
        check_image_mask(image, mask)


@pytest.mark.parametrize("values", [
    torch.tensor([3, 1, 1, 0], dtype=torch.uint8), torch.tensor([-5, 2, 2, -5], dtype=torch.int16),
    torch.tensor([0, 70000]), torch.tensor([0.0, 1.5, 1.5]), torch.tensor([True, False]),
    torch.zeros(0, dtype=torch.int32)])
def test_distinct_mask_values_match_torch_unique(values):
    # check_image_mask counts integer labels with bincount; it must agree with torch.unique
    from medres.data.readers.io import _distinct_values
    assert _distinct_values(values).tolist() == torch.unique(values).tolist()
