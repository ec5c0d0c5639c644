"""Pipelines from DataConfig: values against numpy references, geometry, alignment, reproducibility."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from medres.config import Config, DataConfig
from medres.data.pipeline.intensity import CTWindows, CTWindowsd
from medres.data.pipeline.spatial import RandResizedCrop
from medres.data.pipeline.transforms import (
    build_transforms,
    input_channels,
    natural_crop,
    preprocess_transforms,
    to_source_geometry,
)
from medres.errors import DataError

WINDOWS = [{"name": "lung", "center": -600, "width": 1500},
           {"name": "mediastinum", "center": 40, "width": 400}]
NO_AUG = {"enabled": False}


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return str(path)


def _window_ref(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    return np.clip((hu - (center - width / 2)) / width, 0, 1)


def test_ct_windows_against_formula() -> None:
    hu = torch.tensor([[-1500.0, -1350.0, -600.0, 0.0, 40.0, 240.0, 3000.0]])
    out = CTWindows([(-600, 1500), (40, 400)])(hu)
    assert out.shape == (2, 7)
    for k, (c, w) in enumerate([(-600, 1500), (40, 400)]):
        np.testing.assert_allclose(out[k].numpy(), _window_ref(hu[0].numpy(), c, w), atol=1e-6)
    two = torch.stack([hu[0], hu[0] + 100])  # two input channels -> channel-major, window-minor
    d = CTWindowsd("image", [(0, 100), (50, 10)])({"image": two})
    assert d["image"].shape == (4, 7)
    np.testing.assert_allclose(d["image"][2].numpy(), _window_ref(hu[0].numpy() + 100, 0, 100), atol=1e-6)
    with pytest.raises(ValueError):
        CTWindows([(0, 0)])


def test_ct_pipeline_orients_resamples_and_windows(tmp_path: Path) -> None:
    """A non-RAS NIfTI (LPS voxel order, 2x2x4 mm) of known HU blocks -> RAS, 4 mm, two windows."""
    hu = np.full((16, 16, 8), -1000, dtype=np.int16)
    hu[:8] = 40  # voxel i < 8: soft tissue; with x flipped these are the RIGHT-most world positions
    affine = np.diag([-2.0, -2.0, 4.0, 1.0])
    affine[:3, 3] = [15.0, 15.0, -14.0]
    mask = (hu > 0).astype(np.uint8)
    cfg = DataConfig(windows=WINDOWS, spacing=[4, 4, 4], augment=NO_AUG)
    out = build_transforms(cfg, train=False)({"image": _nifti(tmp_path / "i.nii.gz", hu, affine),
                                              "mask": _nifti(tmp_path / "m.nii.gz", mask, affine)})
    image, m = out["image"], out["mask"]
    assert image.shape == (2, 8, 8, 8) and m.shape == (1, 8, 8, 8) and m.dtype == torch.long
    assert np.allclose(np.diag(image.affine.numpy())[:3], [4, 4, 4])  # RAS: positive diagonal
    assert image.meta["spacing"] == [4.0, 4.0, 4.0] and out["has_mask"] is True
    # after RAS reorientation the soft tissue sits at the high-x end
    np.testing.assert_allclose(image[:, -2:].numpy()[0], _window_ref(np.float32(40), -600, 1500), atol=1e-5)
    np.testing.assert_allclose(image[:, -2:].numpy()[1], _window_ref(np.float32(40), 40, 400), atol=1e-5)
    np.testing.assert_allclose(image[0, :2].numpy(), 350 / 1500, atol=1e-6)  # air: (-1000 + 1350) / 1500
    np.testing.assert_allclose(image[1, :2].numpy(), 0.0, atol=1e-6)  # below the mediastinal window
    assert torch.equal(m[0, :4], torch.zeros_like(m[0, :4])) and bool(m[0, 4:].all())
    assert input_channels(cfg) == image.shape[0] == Config(data=cfg).resolved().model.in_channels


def test_missing_mask_gives_zeros_and_flag(tmp_path: Path) -> None:
    hu = np.zeros((8, 8, 8), dtype=np.int16)
    cfg = DataConfig(patch_size=[8, 8, 8], augment=NO_AUG)  # default: one window, -1000..400 HU
    record = {"image": _nifti(tmp_path / "i.nii", hu, np.eye(4)), "mask": None}
    out = build_transforms(cfg, train=True)(record)
    assert out["has_mask"] is False and out["mask"].shape == (1, 8, 8, 8) and not out["mask"].any()
    np.testing.assert_allclose(out["image"].numpy(), 1000 / 1400, atol=1e-6)
    assert input_channels(cfg) == 1 == Config(data=cfg).resolved().model.in_channels


def test_misaligned_mask_is_a_data_error_before_any_transform(tmp_path: Path) -> None:
    hu = np.zeros((8, 8, 8), dtype=np.int16)
    shifted = np.eye(4)
    shifted[0, 3] = 3.0
    record = {"image": _nifti(tmp_path / "i.nii", hu, np.eye(4)),
              "mask": _nifti(tmp_path / "m.nii", hu.astype(np.uint8), shifted)}
    with pytest.raises(RuntimeError) as info:  # MONAI's Compose wraps it; the cause is medres's DataError
        build_transforms(DataConfig(), train=False)(record)
    cause = info.value.__cause__
    assert isinstance(cause, DataError) and "does not match its image" in str(cause)


def _blob_record(tmp_path: Path) -> tuple[dict, DataConfig]:
    """A smooth ellipsoid-like blob in HU and the mask = blob above a threshold."""
    g = np.mgrid[:40, :40, :40].astype(np.float32)
    r2 = ((g[0] - 22) / 9) ** 2 + ((g[1] - 17) / 6) ** 2 + ((g[2] - 20) / 11) ** 2
    hu = (-1000 + 1040 * np.exp(-r2)).astype(np.float32)
    mask = (hu > -480).astype(np.uint8)  # 0.5 of the blob height
    rec = {"image": _nifti(tmp_path / "b.nii.gz", hu, np.eye(4)), "mask": _nifti(tmp_path / "bm.nii.gz", mask,
                                                                                  np.eye(4))}
    cfg = DataConfig(windows=[{"name": "wide", "center": -480, "width": 1200}], patch_size=[24, 24, 24],
                     pos_fraction=1.0, augment={"flip_prob": 0.5, "affine_prob": 1.0, "rotate_deg": 15,
                                                "scale": 0.15, "intensity_prob": 0.0})
    return rec, cfg


def test_image_and_mask_stay_aligned_through_random_spatial_transforms(tmp_path: Path) -> None:
    rec, cfg = _blob_record(tmp_path)
    pipeline = build_transforms(cfg, train=True)
    dices = []
    for seed in range(6):
        out = pipeline.set_random_state(seed)(dict(rec))
        image, mask = out["image"][0], out["mask"][0].bool()
        assert out["image"].shape == (1, 24, 24, 24) and not isinstance(out["image"], type(None))
        thresholded = image > 0.5  # the window maps -480 HU (the mask threshold) to 0.5
        inter = (thresholded & mask).sum().item()
        dices.append(2 * inter / (thresholded.sum().item() + mask.sum().item()))
        assert mask.any()  # pos_fraction 1: the patch is centred on foreground
    assert min(dices) > 0.9, dices  # misalignment by one voxel would drop far below that


def test_augmentation_reproducible_from_seed(tmp_path: Path) -> None:
    rec, cfg = _blob_record(tmp_path)
    cfg = cfg.model_copy(update={"augment": cfg.augment.model_copy(update={"intensity_prob": 1.0,
                                                                           "noise_std": 0.05}),
                                 "pos_fraction": 0.5})
    a = build_transforms(cfg, train=True).set_random_state(7)(dict(rec))
    b = build_transforms(cfg, train=True).set_random_state(7)(dict(rec))
    c = build_transforms(cfg, train=True).set_random_state(8)(dict(rec))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], c["image"])
    assert type(a["image"]) is torch.Tensor  # training samples: plain tensors, no metadata


def test_mr_zscore_over_two_image_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t1 = rng.normal(300, 50, (12, 12, 12)).astype(np.float32)
    t2 = rng.normal(1000, 200, (12, 12, 12)).astype(np.float32)
    t1[:3] = 0  # background: excluded from the statistics (nonzero=True)
    paths = [_nifti(tmp_path / "t1.nii.gz", t1, np.eye(4)), _nifti(tmp_path / "t2.nii.gz", t2, np.eye(4))]
    cfg = DataConfig(modality="MR", normalize="zscore", image_columns=["image_t1", "image_t2"],
                     mask_column=None, augment=NO_AUG)
    image = build_transforms(cfg, train=False)({"image": paths})["image"]
    assert image.shape == (2, 12, 12, 12) and input_channels(cfg) == 2
    fg = t1 != 0
    np.testing.assert_allclose(image[0].numpy()[fg], (t1[fg] - t1[fg].mean()) / t1[fg].std(), atol=1e-4)
    np.testing.assert_allclose(image[1].numpy(), (t2 - t2.mean()) / t2.std(), atol=1e-4)
    assert (image[0].numpy()[~fg] == 0).all()


def test_natural_images_imagenet_recipe(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)  # rows=40, cols=60
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    cfg = DataConfig(spatial_dims=2, modality="natural", normalize="imagenet", orientation=None,
                     mask_column=None, patch_size=[32, 32], augment={"random_resized_crop": True})
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pre = preprocess_transforms(cfg)
    from monai.transforms import Compose

    full = Compose(pre)({"image": str(path)})["image"]
    assert full.shape == (3, 60, 40)  # MONAI convention: [C, X (columns), Y (rows)]
    ref = (rgb.transpose(2, 1, 0) / 255.0 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(full.numpy(), ref, atol=1e-5)
    train = build_transforms(cfg, train=True).set_random_state(0)({"image": str(path)})
    evaluation = build_transforms(cfg, train=False)({"image": str(path)})
    assert train["image"].shape == (3, 32, 32) and evaluation["image"].shape == (3, 32, 32)


def test_small_images_pad_and_crop(tmp_path: Path) -> None:
    """``random_resized_crop: auto`` on a 32 x 32 patch: He et al. 2016's CIFAR augmentation (4 px of black
    padding, a random 32 x 32 crop) for training, the whole image for evaluation; at 64 px and above the
    Inception-style crop stays."""
    grey = np.random.default_rng(2).integers(1, 256, (32, 32), dtype=np.uint8)  # no black pixel inside
    path = tmp_path / "d.png"
    Image.fromarray(grey).save(path)
    cfg = DataConfig(spatial_dims=2, modality="natural", normalize="imagenet", orientation=None,
                     mask_column=None, patch_size=[32, 32],
                     augment={"random_resized_crop": "auto", "flip_prob": 0.0, "intensity_prob": 0.0})
    assert natural_crop(cfg) == "pad"
    assert natural_crop(cfg.model_copy(update={"patch_size": [64, 64]})) == "random_resized"
    assert natural_crop(cfg.model_copy(update={"augment": cfg.augment.model_copy(
        update={"random_resized_crop": True})})) == "random_resized"
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    black = (0 - mean) / std
    whole = grey.T[None].repeat(3, 0) / 255.0
    whole = (whole - mean[:, None, None]) / std[:, None, None]
    evaluation = build_transforms(cfg, train=False)({"image": str(path)})["image"].numpy()
    np.testing.assert_allclose(evaluation, whole, atol=1e-5)  # the single view of the whole image
    padded = np.broadcast_to(black[:, None, None], (3, 40, 40)).copy()
    padded[:, 4:36, 4:36] = whole  # 4 px of black each side, cut at one of the 9 x 9 offsets
    candidates = {(a, b): padded[:, a:a + 32, b:b + 32] for a in range(9) for b in range(9)}
    pipeline = build_transforms(cfg, train=True).set_random_state(0)
    shifts = set()
    for _ in range(40):
        out = pipeline({"image": str(path)})["image"].numpy()
        assert out.shape == (3, 32, 32)
        hits = [k for k, c in candidates.items() if np.allclose(out, c, atol=1e-5)]
        assert len(hits) == 1, "not the image padded by 4 px of black and cut to 32 x 32"
        shifts.add(hits[0])
    assert len(shifts) > 10  # the crop moves


def test_random_resized_crop_box_statistics() -> None:
    crop = RandResizedCrop([8, 8])
    crop.set_random_state(0)
    areas, ratios = [], []
    for _ in range(300):
        crop.randomize([100, 200])
        top, left, h, w = crop._box
        assert top >= 0 and top + h <= 100 and left >= 0 and left + w <= 200
        areas.append(h * w / 20000)
        ratios.append(w / h)
    assert min(areas) > 0.07 and max(areas) <= 1.0 and np.median(areas) < 0.6
    assert min(ratios) > 0.7 and max(ratios) < 1.4
    assert crop(torch.rand(3, 100, 200)).shape == (3, 8, 8)


def test_2d_slices_from_volumes(tmp_path: Path) -> None:
    rec, cfg = _blob_record(tmp_path)
    cfg = cfg.model_copy(update={"spatial_dims": 2, "patch_size": [20, 20]})
    out = build_transforms(cfg, train=True).set_random_state(0)(dict(rec))
    assert out["image"].shape == (1, 20, 20) and out["mask"].shape == (1, 20, 20) and out["mask"].any()


def test_prediction_back_to_source_geometry(tmp_path: Path) -> None:
    """A mask through orientation + resampling, then back: equal to the source mask."""
    mask = np.zeros((12, 10, 8), dtype=np.uint8)
    mask[2:8, 4:10, 2:6] = 1
    affine = np.diag([-2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [20, -5, 7]
    rec = {"image": _nifti(tmp_path / "i.nii.gz", mask.astype(np.int16) * 100, affine),
           "mask": _nifti(tmp_path / "m.nii.gz", mask, affine)}
    cfg = DataConfig(spacing=[1.0, 1.0, 1.5], augment=NO_AUG)
    out = build_transforms(cfg, train=False)(rec)
    assert out["mask"].shape == (1, 23, 19, 15)  # MONAI: (n - 1) * factor + 1 voxel centres
    pred = out["mask"].float()
    back = to_source_geometry(pred)
    assert back.shape == (1, 12, 10, 8)
    np.testing.assert_allclose(back.affine.numpy(), affine, atol=1e-6)
    assert np.array_equal(back[0].numpy().astype(np.uint8), mask)


@pytest.mark.parametrize(("values", "dtype", "expected"), [((0, 1, 2), np.uint8, "values [2]"),
                                                          ((-1, 0, 1), np.int16, "values [-1]"),
                                                          ((0, 0.5, 1), np.float32, "non-integer")])
def test_mask_values_outside_the_labels_are_refused(tmp_path: Path, values: tuple, dtype: type,
                                                    expected: str) -> None:
    mask = np.zeros((6, 6, 6), dtype=dtype)
    mask[0, 0, :3] = values
    record = {"image": _nifti(tmp_path / "i.nii", np.zeros((6, 6, 6), np.int16), np.eye(4)),
              "mask": _nifti(tmp_path / "m.nii", mask, np.eye(4))}
    with pytest.raises(RuntimeError) as info:
        build_transforms(DataConfig(), train=False)(record)
    assert isinstance(info.value.__cause__, DataError) and expected in str(info.value.__cause__)


def test_inconsistent_settings_are_config_errors() -> None:
    from medres.errors import ConfigError

    with pytest.raises(ConfigError, match="CT only") as info:
        build_transforms(DataConfig(modality="MR", normalize="window"), train=False)
    assert info.value.field == "data.normalize"
    with pytest.raises(ConfigError, match="spatial_dims") as info:
        build_transforms(DataConfig(patch_size=[32, 32]), train=True)
    assert info.value.field == "data.patch_size"


def test_building_a_pipeline_prints_no_gpu_reader_noise(caplog, recwarn):
    # MONAI's LoadImage builds its nvImageCodec DICOM reader too; without CUDA that warns and logs on
    # every pipeline build. medres reads with MedresReader only, so none of that may reach the user.
    caplog.set_level("DEBUG")
    build_transforms(DataConfig(windows=[{"name": "lung", "center": -600, "width": 1500}]), train=True)
    assert not [w for w in recwarn if "nvImageCodec" in str(w.message)]
    assert "nvImageCodec" not in caplog.text
