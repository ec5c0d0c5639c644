"""Augmentation on the device and the batch feeder: flips as torch.flip, image and mask moved alike,
draws a function of (seed, epoch, position) so a mid-epoch resume augments alike, CPU == CUDA."""

from __future__ import annotations

import pytest
import torch

from medres.config import AugmentConfig, DataConfig, TrainConfig
from medres.training.device_input import DeviceAugment, DeviceBatches, device_batches, host_data_config
from medres.training.precision import resolve_compute_settings

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _batch(b: int = 4, s: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 1, s, s, s, dtype=torch.long)
    for i in range(b):  # an off-centre block per sample, so flips and rotations move it
        lo = 2 + i
        mask[i, 0, lo:lo + 7, lo + 2:lo + 9, lo:lo + 5] = 1
    image = mask.float().repeat(1, 2, 1, 1, 1) + 0.01 * torch.randn(b, 2, s, s, s, generator=g)
    return image, mask


def test_flips_are_torch_flips_and_nothing_else_moves():
    image, mask = _batch()
    aug = DeviceAugment(AugmentConfig(flip_prob=1.0, affine_prob=0.0), 3)
    out, m = aug(image, mask, [1, 2, 3, 4])
    assert torch.equal(out, image.flip([2, 3, 4])) and torch.equal(m, mask.flip([2, 3, 4]))
    none = DeviceAugment(AugmentConfig(flip_prob=0.0, affine_prob=0.0), 3)
    assert torch.equal(none(image, mask, [1, 2, 3, 4])[0], image)


def test_affine_moves_image_and_mask_together_and_is_seeded():
    image, mask = _batch()
    aug = DeviceAugment(AugmentConfig(flip_prob=0.0, affine_prob=1.0, rotate_deg=20, scale=0.15), 3)
    out, m = aug(image, mask, [5, 6, 7, 8])
    assert not torch.equal(m, mask) and m.dtype == torch.long and set(m.unique().tolist()) <= {0, 1}
    agree = ((out[:, 0] > 0.5).long() == m[:, 0]).float().mean()
    assert agree > 0.97  # bilinear image vs nearest mask differ only at the block's edges
    again, m2 = aug(image, mask, [5, 6, 7, 8])
    assert torch.equal(again, out) and torch.equal(m2, m)
    assert not torch.equal(aug(image, mask, [9, 6, 7, 8])[0][0], out[0])


def test_batches_resume_mid_epoch_with_the_same_augmentation():
    image, mask = _batch(6)
    batches = [{"image": image[i:i + 2], "mask": mask[i:i + 2], "label": torch.tensor([0, 1]),
                "case_id": [f"c{i}", f"c{i + 1}"]} for i in (0, 2, 4)]
    cfg = DataConfig(augment_on_device=True, augment={"flip_prob": 0.5, "affine_prob": 0.5})
    fast = resolve_compute_settings(TrainConfig(device="cpu"), spatial_dims=3)
    whole = list(device_batches(batches, cfg, fast, seed=1, epoch=2, first_batch=0, batch_size=2))
    resumed = list(device_batches(batches[1:], cfg, fast, seed=1, epoch=2, first_batch=1, batch_size=2))
    assert len(whole) == 3 and len(resumed) == 2
    for a, b in zip(whole[1:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(whole[0]["image"], image[:2])  # something was augmented
    host = host_data_config(cfg)
    assert host.augment.flip_prob == 0 and host.augment.affine_prob == 0 and cfg.augment.flip_prob == 0.5
    plain = DataConfig()
    assert device_batches(batches, plain, fast, seed=1, epoch=0, first_batch=0, batch_size=2) is batches


@pytest.mark.gpu
@CUDA
def test_cuda_augmentation_matches_the_cpu():
    image, mask = _batch()
    aug = DeviceAugment(AugmentConfig(flip_prob=0.5, affine_prob=1.0, rotate_deg=15, scale=0.1), 3)
    cpu_img, cpu_mask = aug(image, mask, [1, 2, 3, 4])
    gpu_img, gpu_mask = aug(image.cuda(), mask.cuda(), [1, 2, 3, 4])
    torch.testing.assert_close(gpu_img.cpu(), cpu_img, atol=1e-4, rtol=1e-4)
    assert (gpu_mask.cpu() != cpu_mask).float().mean() < 1e-3  # nearest ties may round apart


@pytest.mark.gpu
@CUDA
def test_cuda_batches_arrive_on_the_gpu_from_pinned_memory():
    image, mask = _batch()
    batches = [{"image": image.pin_memory(), "mask": mask.pin_memory(), "label": torch.tensor([0, 1, 0, 1]),
                "case_id": list("abcd")}] * 3
    fast = resolve_compute_settings(TrainConfig(device="cuda"), spatial_dims=3)
    assert fast.pin_memory
    out = list(DeviceBatches(batches, fast, augment=None, seed=0, epoch=0))
    assert len(out) == 3 and all(b["image"].is_cuda and b["mask"].is_cuda for b in out)
    assert torch.equal(out[2]["image"].cpu(), image)
