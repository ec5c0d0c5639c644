"""Feeding the training device: batches copied ahead on a side stream, random spatial augmentation on it.

- :class:`DeviceBatches` wraps a training DataLoader: each batch's tensors go to the device with
  ``non_blocking`` copies from pinned memory, the next batch's copy issued on a separate CUDA stream
  while the current one trains (on the CPU it is a plain pass-through that still augments).
- :class:`DeviceAugment` is ``data.augment``'s flips and small rotation / zoom applied to a whole batch
  on the device (``data.augment_on_device``): one batched ``affine_grid`` + ``grid_sample`` instead of
  a per-sample MONAI ``RandAffined`` in every worker, which for a 96^3 patch is most of a worker's time.
  Image bilinear with border padding, mask nearest with zeros (MONAI's ``RandAffined`` choices).
  Every draw comes from a CPU generator seeded with ``item_seed(seed, epoch, -(position + 2))``, where
  ``position`` is the sample's place in the epoch, so a run (and its mid-epoch resume) augments alike
  on any device; the draws differ from the CPU-side pipeline's, the augmentation's distribution does not.
- :func:`host_data_config` is the ``data`` section the workers then run (flips and affine switched off).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from medres.config import AugmentConfig, DataConfig
from medres.data.pipeline.datasets import item_seed

if TYPE_CHECKING:  # the resolved speed settings (medres.training.precision); only attributes are used
    from medres.training.precision import ComputeSettings

__all__ = ["DeviceAugment", "DeviceBatches", "host_data_config", "device_batches"]

_MOVED = ("image", "mask", "label")


def host_data_config(data_cfg: DataConfig) -> DataConfig:
    """``data_cfg`` with the spatial augmentation left to the device when ``augment_on_device`` is set."""
    if not (data_cfg.augment_on_device and data_cfg.augment.enabled) or data_cfg.modality == "natural":
        return data_cfg  # natural images keep their own recipe (random-resized crop, horizontal flip)
    aug = data_cfg.augment.model_copy(update={"flip_prob": 0.0, "affine_prob": 0.0})
    return data_cfg.model_copy(update={"augment": aug})


def _rotation(angles: Tensor) -> Tensor:
    """Rotation matrices [3, 3] from three angles (radians) about the three axes."""
    out = torch.eye(3, dtype=torch.float64)
    for axis, a in enumerate(angles.tolist()):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = torch.eye(3, dtype=torch.float64)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


class DeviceAugment:
    """Random flips and affine of a batch ``image`` [B, C, *S], ``mask`` [B, 1, *S] (2D or 3D), per sample.

    Args:
        cfg: ``data.augment`` (``flip_prob``, ``flip_axes``, ``affine_prob``, ``rotate_deg``, ``scale``).
        spatial_dims: 2 or 3.
    """

    def __init__(self, cfg: AugmentConfig, spatial_dims: int) -> None:
        self.cfg, self.dims = cfg, spatial_dims
        self.flip_axes = cfg.flip_axes if cfg.flip_axes is not None else list(range(spatial_dims))

    def draw(self, seed: int) -> tuple[list[int], Tensor | None]:
        """One sample's flips (spatial axes) and affine ``theta`` [dims, dims + 1] (None: no affine)."""
        a = self.cfg
        g = torch.Generator().manual_seed(seed)
        flips = [ax for ax in self.flip_axes if float(torch.rand((), generator=g)) < a.flip_prob]
        if not (float(torch.rand((), generator=g)) < a.affine_prob and (a.rotate_deg > 0 or a.scale > 0)):
            return flips, None
        rot = math.radians(a.rotate_deg)
        angles = (torch.rand(3, generator=g, dtype=torch.float64) * 2 - 1) * rot
        zoom = 1 + (torch.rand(self.dims, generator=g, dtype=torch.float64) * 2 - 1) * a.scale
        if self.dims == 3:
            r = _rotation(angles)
        else:  # one in-plane angle: a rotation about the third axis
            r = _rotation(torch.tensor([0.0, 0.0, float(angles[0])], dtype=torch.float64))[:2, :2]
        theta = torch.zeros(self.dims, self.dims + 1, dtype=torch.float64)
        theta[:, : self.dims] = r @ torch.diag(1 / zoom)  # output -> input sampling: zoom in by `zoom`
        return flips, theta

    def __call__(self, image: Tensor, mask: Tensor | None, seeds: list[int]) -> tuple[Tensor, Tensor | None]:
        draws = [self.draw(s) for s in seeds]
        image, mask = image.clone(), None if mask is None else mask.clone()
        for b, (flips, _) in enumerate(draws):
            if flips:
                dims = [d + 1 for d in flips]  # sample tensors are [C, *S]
                image[b] = image[b].flip(dims)
                if mask is not None:
                    mask[b] = mask[b].flip(dims)
        sel = [b for b, (_, theta) in enumerate(draws) if theta is not None]
        if sel:
            theta = torch.stack([draws[b][1] for b in sel]).to(image.device, torch.float32)
            idx = torch.tensor(sel, device=image.device)
            x = image.index_select(0, idx)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            image[idx] = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                       align_corners=False).to(image.dtype)
            if mask is not None:
                m = mask.index_select(0, idx).float()
                mask[idx] = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros",
                                          align_corners=False).round().to(mask.dtype)
        return image, mask


class DeviceBatches:
    """Batches of ``loader`` with ``image``, ``mask``, ``label`` on ``fast.device`` (copied one batch
    ahead on a side stream with CUDA), augmented there when ``augment`` is given.

    ``epoch``, ``first_batch`` (batches skipped by a mid-epoch resume), ``seed`` and ``batch_size`` fix
    each sample's position in the epoch, hence its augmentation seed.
    """

    def __init__(self, loader: Iterable[Mapping[str, Any]], fast: ComputeSettings, *,
                 augment: DeviceAugment | None, seed: int, epoch: int, first_batch: int = 0,
                 batch_size: int = 1) -> None:
        self.loader, self.fast, self.augment = loader, fast, augment
        self.seed, self.epoch, self.first_batch, self.batch_size = seed, epoch, first_batch, batch_size

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def _copy(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(batch)
        for k in _MOVED:
            if k in out:
                v = out[k]
                v = v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)
                out[k] = v.to(self.fast.device, non_blocking=self.fast.pin_memory)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        it = iter(self.loader)  # created now, as the loop expects (it restores RNG state right after)
        return self._batches(it)

    def _batches(self, it: Iterator[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        cuda = self.fast.device.type == "cuda"
        stream = torch.cuda.Stream(self.fast.device) if cuda else None
        position = self.first_batch * self.batch_size

        def fetch() -> dict[str, Any] | None:
            batch = next(it, None)
            if batch is None:
                return None
            if stream is None:
                return self._copy(batch)
            with torch.cuda.stream(stream):
                return self._copy(batch)

        nxt = fetch()
        while nxt is not None:
            batch = nxt
            if stream is not None:
                torch.cuda.current_stream(self.fast.device).wait_stream(stream)
                for k in _MOVED:
                    if isinstance(batch.get(k), Tensor):
                        batch[k].record_stream(torch.cuda.current_stream(self.fast.device))
            nxt = fetch()  # the next copy overlaps this batch's step
            n = len(batch["image"])
            if self.augment is not None:
                seeds = [item_seed(self.seed, self.epoch, -(position + j + 2)) for j in range(n)]
                batch["image"], mask = self.augment(batch["image"], batch.get("mask"), seeds)
                if mask is not None:
                    batch["mask"] = mask
            position += n
            yield batch


def device_batches(loader: Iterable[Mapping[str, Any]], data_cfg: DataConfig, fast: ComputeSettings, *,
                   seed: int, epoch: int, first_batch: int, batch_size: int) -> Iterable[Mapping[str, Any]]:
    """The training loader as the loop should read it: unchanged on the CPU without device augmentation,
    else a :class:`DeviceBatches` (CUDA prefetch and/or ``data.augment_on_device``)."""
    on_device = data_cfg.augment_on_device and data_cfg.augment.enabled and data_cfg.modality != "natural"
    if fast.device.type != "cuda" and not on_device:
        return loader
    augment = DeviceAugment(data_cfg.augment, data_cfg.spatial_dims) if on_device else None
    return DeviceBatches(loader, fast, augment=augment, seed=seed, epoch=epoch, first_batch=first_batch,
                         batch_size=batch_size)
