"""Spatial and bookkeeping transforms medres adds to MONAI's.

- :class:`RandPatchCrop` / :class:`RandPatchCropd`: a patch centred on mask foreground with probability
  ``pos_fraction`` (MONAI's ``RandCropByPosNegLabel``), or a uniformly placed patch when the mask is empty
  or absent (MONAI's ``RandSpatialCrop``; ``RandCropByPosNegLabel`` alone warns on every empty mask).
- :class:`RandResizedCrop` / :class:`RandResizedCropd`: the ImageNet recipe's random-resized crop
  (torchvision's algorithm; torchvision is not a medres dependency).
- :class:`MaskOrZeros` / :class:`MaskOrZerosd`: an all-zero mask on the image grid for scans without one.
- :class:`CheckImageMaskd`: image/mask agreement (``medres.data.readers.io.check_image_mask``) as a
pipeline step.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    MapTransform,
    RandCropByPosNegLabel,
    Randomizable,
    RandSpatialCrop,
    Resize,
    SpatialCrop,
    Transform,
)

from medres.data.readers.io import check_image_mask

__all__ = ["RandPatchCrop", "RandPatchCropd", "RandResizedCrop", "RandResizedCropd", "MaskOrZeros",
           "MaskOrZerosd", "CheckImageMaskd"]


class RandPatchCrop(Randomizable, Transform):
    """Crop a ``spatial_size`` patch, centred on foreground of ``label`` with probability ``pos_fraction``.

    Shapes: ``img [C, *spatial]``, ``label [1, *spatial]`` -> ``[C, *spatial_size]``. The input must be at
    least ``spatial_size`` (pad first, e.g. ``SpatialPadd``). Call ``randomize(label, img_size)`` once and
    then ``__call__(..., randomize=False)`` to crop several tensors at the same place.
    """

    def __init__(self, spatial_size: Sequence[int], pos_fraction: float = 0.5) -> None:
        self.spatial_size = list(spatial_size)
        self.pos_neg = RandCropByPosNegLabel(self.spatial_size, pos=pos_fraction, neg=1.0 - pos_fraction,
                                             num_samples=1)
        self.uniform = RandSpatialCrop(self.spatial_size, random_size=False)
        self._foreground = False

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> RandPatchCrop:
        super().set_random_state(seed, state)
        self.pos_neg.set_random_state(state=self.R)
        self.uniform.set_random_state(state=self.R)
        return self

    def randomize(self, label: torch.Tensor | None, img_size: Sequence[int]) -> None:
        self._foreground = label is not None and bool((label > 0).any())
        if self._foreground:
            self.pos_neg.randomize(label)
        else:
            self.uniform.randomize(img_size)

    def __call__(self, img: torch.Tensor, label: torch.Tensor | None = None, randomize: bool = True
                 ) -> torch.Tensor:
        if randomize:
            self.randomize(label, img.shape[1:])
        if self._foreground:
            return self.pos_neg(img, randomize=False)[0]
        return self.uniform(img, randomize=False)


class RandPatchCropd(Randomizable, MapTransform):
    """Dictionary form of :class:`RandPatchCrop`: every key cut at one place, drawn from ``label_key``."""

    def __init__(self, keys: KeysCollection, label_key: str, spatial_size: Sequence[int],
                 pos_fraction: float = 0.5, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.cropper = RandPatchCrop(spatial_size, pos_fraction)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> RandPatchCropd:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        raise NotImplementedError("RandPatchCropd draws its patch inside __call__")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = d[self.first_key(d)]
        self.cropper.randomize(d.get(self.label_key), first.shape[1:])
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key], randomize=False)
        return d


class RandResizedCrop(Randomizable, Transform):
    """torchvision's ``RandomResizedCrop`` for ``[C, H, W]`` tensors: a crop of random area fraction
    ``scale`` and aspect ratio ``ratio`` (log-uniform), resized to ``size`` (bilinear, antialiased);
    after 10 failed draws, a centre crop at the nearest valid ratio. Shapes: ``[C, H, W] -> [C, *size]``.
    """

    def __init__(self, size: Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), mode: str = "bilinear") -> None:
        self.size, self.scale, self.ratio = list(size), scale, ratio
        self.resize = Resize(self.size, mode=mode, anti_aliasing=True)
        self._box: tuple[int, int, int, int] = (0, 0, 1, 1)

    def randomize(self, img_size: Sequence[int]) -> None:
        h, w = int(img_size[0]), int(img_size[1])
        area, log_ratio = h * w, (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                self._box = (int(self.R.randint(0, h - ch + 1)), int(self.R.randint(0, w - cw + 1)), ch, cw)
                return
        in_ratio = w / h
        if in_ratio < min(self.ratio):
            cw, ch = w, round(w / min(self.ratio))
        elif in_ratio > max(self.ratio):
            ch, cw = h, round(h * max(self.ratio))
        else:
            cw, ch = w, h
        self._box = ((h - ch) // 2, (w - cw) // 2, ch, cw)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(img.shape[1:])
        top, left, ch, cw = self._box
        crop = SpatialCrop(roi_start=(top, left), roi_end=(top + ch, left + cw))(img)
        return self.resize(crop)


class RandResizedCropd(Randomizable, MapTransform):
    """Dictionary form of :class:`RandResizedCrop` (the same box for every key)."""

    def __init__(self, keys: KeysCollection, size: Sequence[int], scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3 / 4, 4 / 3), allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandResizedCrop(size, scale, ratio)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None
                         ) -> RandResizedCropd:
        super().set_random_state(seed, state)
        self.cropper.set_random_state(state=self.R)
        return self

    def randomize(self, data: object = None) -> None:
        raise NotImplementedError("RandResizedCropd draws its box inside __call__")

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.cropper.randomize(d[self.first_key(d)].shape[1:])
        for key in self.key_iterator(d):
            d[key] = self.cropper(d[key], randomize=False)
        return d


class MaskOrZeros(Transform):
    """Return ``mask``, or an all-zero ``uint8`` mask ``[1, *spatial]`` on ``ref``'s grid when it is None."""

    def __call__(self, mask: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
        if mask is not None:
            return mask
        zeros = torch.zeros((1, *ref.shape[1:]), dtype=torch.uint8)
        if isinstance(ref, MetaTensor):
            return MetaTensor(zeros, affine=ref.affine.clone(), meta={"space": ref.meta.get("space", "RAS")})
        return zeros


class MaskOrZerosd(MapTransform):
    """Dictionary form of :class:`MaskOrZeros`; also sets ``has_mask`` (bool) so a loss can tell an
    annotated negative (a mask file of zeros) from a scan that was never annotated."""

    def __init__(self, keys: KeysCollection, ref_key: str = "image", flag_key: str = "has_mask") -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.ref_key, self.flag_key = ref_key, flag_key
        self.fill = MaskOrZeros()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.keys:
            present = d.get(key) is not None
            d.setdefault(self.flag_key, present)
            d[key] = self.fill(d.get(key), d[self.ref_key])
        return d


class CheckImageMaskd(MapTransform):
    """Raise a DataError unless each mask key lies on the image's grid and holds only ``labels``
    (:func:`medres.data.readers.io.check_image_mask`). Place it right after loading, before any channel or
    spatial transform."""

    def __init__(self, keys: KeysCollection, image_key: str = "image", labels: Iterable[int] | None = None,
                 atol: float = 1e-3) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.image_key, self.labels, self.atol = image_key, None if labels is None else list(labels), atol

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):  # compares meta spatial_shape and affine: channel axes do not matter
            check_image_mask(d[self.image_key], d[key], labels=self.labels, atol=self.atol)
        return d
