"""MONAI dictionary pipelines built from ``DataConfig``: keys ``image`` (channels first) and ``mask``.

A pipeline has two parts:

- :func:`load_transforms` — deterministic and geometric: load (``MedresReader``: DICOM series, NIfTI,
  PNG/JPEG with geometry checks), image/mask agreement check, channels first, RAS orientation,
  resampling to ``data.spacing`` (image bilinear, mask nearest). Datasets cache this part.
- :func:`sample_transforms` — after the cache: intensity normalization (:func:`intensity_transforms`:
  CT windows in HU -> one channel per window in [0, 1]; MR per-channel z-score over non-zero voxels;
  ImageNet mean/std), an all-zero mask for scans without one, then for training pad + a
  foreground-aware patch crop (``pos_fraction`` of the patches centred on mask foreground) and
  augmentation (flips, small rotation/zoom, intensity scale/shift/noise), or for evaluation the whole
  resampled volume (a ``MetaTensor`` with its affine, for sliding-window inference).

:func:`preprocess_transforms` is the deterministic whole (load + intensity), e.g. for inspection.

The 2D path: natural images (``modality: natural``) get torchvision's ImageNet recipe (random-resized
crop + horizontal flip for training; resize + centre crop for evaluation), or for small images with
``random_resized_crop: auto`` the CIFAR recipe of He et al. 2016 (pad + random crop; the whole image for
evaluation); see :func:`natural_crop`. With ``spatial_dims: 2`` and
CT/MR volumes, training samples are axial slices: a ``[*patch_size, 1]`` patch (foreground-aware like
3D) squeezed to 2D; evaluation returns the whole volume and the caller runs the 2D model slice by slice.

Every random draw comes from the transforms' random state: ``Compose.set_random_state(seed)`` makes a
sample's augmentation a pure function of the seed (see ``medres.data.pipeline.datasets``).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Hashable, Mapping
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPadd,
    CastToTyped,
    CenterSpatialCropd,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    Lambda,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

from medres.config import DEFAULT_CT_WINDOWS, DataConfig, ct_windows, input_channels
from medres.data.pipeline.intensity import CTWindowsd
from medres.data.pipeline.spatial import CheckImageMaskd, MaskOrZerosd, RandPatchCropd, RandResizedCropd
from medres.data.readers.io import MedresReader
from medres.data.readers.radiograph import RadiographGeometryd, RadiographOptions
from medres.errors import ConfigError

__all__ = ["build_transforms", "preprocess_transforms", "load_transforms", "intensity_transforms",
           "sample_transforms", "input_channels",
           "ct_windows", "preprocess_signature", "to_source_geometry", "DEFAULT_CT_WINDOWS",
           "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE, MASK = "image", "mask"
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _has_mask(cfg: DataConfig) -> bool:
    return cfg.mask_column is not None and cfg.modality != "natural"


def _drop_missing(data: Mapping[Hashable, object]) -> dict[Hashable, object]:
    """Remove keys whose value is None or "" (a scan without a mask), so LoadImaged skips them."""
    return {k: v for k, v in data.items() if not (k == MASK and v in (None, ""))}


def _load_imaged(*args: object, **kwargs: object) -> LoadImaged:
    """``LoadImaged`` without the noise of MONAI building its GPU DICOM reader on a machine without it.

    LoadImage instantiates every registered reader even when ``reader=`` names one; MONAI 1.6's
    NvImgCodecPydicomReader then warns and logs "nvImageCodec is not available" each time. medres reads
    with MedresReader only, so those lines would only confuse a user.
    """
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return LoadImaged(*args, **kwargs)
    finally:
        plugin_log.setLevel(level)


def load_transforms(cfg: DataConfig) -> list[Transform]:
    """The deterministic geometric part: load, check image/mask agreement, channels first, orient, resample.

    Output: ``image`` float32 MetaTensor ``[C_in, *spatial]`` in source units (HU for CT; one channel per
    image column), ``mask`` uint8 ``[1, *spatial]`` on the same grid when the record has one. Datasets cache
    this part (its settings: :func:`preprocess_signature`).
    """
    natural = cfg.modality == "natural"
    xray = cfg.modality == "XR"  # projection radiographs: 2D images in mm (medres.data.readers.radiograph)
    ndim = 2 if natural or xray else 3
    keys = [IMAGE, MASK] if _has_mask(cfg) else [IMAGE]
    r = cfg.radiograph
    options = RadiographOptions(voi=r.voi, allow_for_processing=r.allow_for_processing,
                                views=tuple(r.views) if r.views is not None else None)
    t: list[Transform] = [
        Lambda(_drop_missing),
        _load_imaged(IMAGE, reader=MedresReader(ndim=ndim, max_voxels=cfg.max_voxels, radiograph=options,
                                                max_files=cfg.max_files_per_series),
                     dtype=np.float32, image_only=True),
    ]
    if _has_mask(cfg):
        t.append(_load_imaged(MASK, reader=MedresReader(ndim=ndim, max_voxels=cfg.max_voxels,
                                                        max_files=cfg.max_files_per_series), dtype=None,
                              image_only=True, allow_missing_keys=True))
    if xray:
        t.append(RadiographGeometryd(require_spacing=bool(cfg.spacing), views=options.views))
    if _has_mask(cfg):
        t.append(CheckImageMaskd(MASK, IMAGE, labels=sorted(cfg.mask_labels)))
    t.append(EnsureChannelFirstd(keys, allow_missing_keys=True))
    if cfg.orientation and not natural and not xray:
        t.append(Orientationd(keys, axcodes=cfg.orientation, labels=_RAS_LABELS, allow_missing_keys=True))
    if cfg.spacing and not natural:
        t.append(Spacingd(keys, pixdim=cfg.spacing, mode=("bilinear", "nearest")[: len(keys)],
                          dtype=np.float32, allow_missing_keys=True))
    if _has_mask(cfg):
        small = max(cfg.mask_labels, default=0) < 256
        t.append(CastToTyped(MASK, dtype=torch.uint8 if small else torch.int16, allow_missing_keys=True))
    t.append(Lambda(_sync_spacing))
    return t


def intensity_transforms(cfg: DataConfig) -> list[Transform]:
    """The deterministic intensity part: CT windows in HU -> one channel per window in [0, 1] (float32),
    MR per-channel z-score over non-zero voxels, or ImageNet mean/std (greyscale repeated to RGB)."""
    if cfg.normalize == "window":
        if cfg.modality != "CT":
            raise ConfigError(f"normalize: window applies to CT only, but data.modality is {cfg.modality}",
                              field="data.normalize", hint="use zscore for MR, imagenet for natural images")
        return [CTWindowsd(IMAGE, ct_windows(cfg))]
    if cfg.normalize == "zscore":
        return [EnsureTyped(IMAGE, dtype=torch.float32), NormalizeIntensityd(IMAGE, nonzero=True,
                                                                             channel_wise=True)]
    if cfg.normalize == "imagenet":
        return [_GreyToRGBd(IMAGE), EnsureTyped(IMAGE, dtype=torch.float32),
                ScaleIntensityRanged(IMAGE, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0),
                NormalizeIntensityd(IMAGE, subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True)]
    return [EnsureTyped(IMAGE, dtype=torch.float32)]


def preprocess_transforms(cfg: DataConfig) -> list[Transform]:
    """The whole deterministic part, :func:`load_transforms` then :func:`intensity_transforms`.

    Output: ``image`` float32 MetaTensor ``[C, *spatial]`` (C = :func:`input_channels`), ``mask`` uint8
    ``[1, *spatial]`` when the record has one.
    """
    return [*load_transforms(cfg), *intensity_transforms(cfg)]


def _sync_spacing(data: Mapping[Hashable, object]) -> dict[Hashable, object]:
    """Set ``meta["spacing"]`` to the voxel size of the current affine (the loader's value predates
    resampling; distance metrics read it)."""
    d = dict(data)
    for key in (IMAGE, MASK):
        value = d.get(key)
        if isinstance(value, MetaTensor):
            n = value.ndim - 1
            value.meta["spacing"] = np.linalg.norm(np.asarray(value.affine)[:n, :n], axis=0).tolist()
    return d


class _GreyToRGBd(MapTransform):
    """Repeat a one-channel (greyscale) image to 3 channels for ImageNet-normalized models."""

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key].shape[0] == 1:
                d[key] = RepeatChanneld(key, repeats=3)({key: d[key]})[key]
        return d


def _augment(cfg: DataConfig, keys: list[str], spatial_dims: int, *, natural: bool = False
             ) -> list[Transform]:
    """Flips (all spatial axes by default; horizontal only for natural images), small affine (not for
    natural images, whose crop already zooms), intensity scale/shift/noise."""
    a = cfg.augment
    if not a.enabled:
        return []
    t: list[Transform] = []
    default_axes = [0] if natural else list(range(spatial_dims))
    flip_axes = a.flip_axes if a.flip_axes is not None else default_axes
    t += [RandFlipd(keys, prob=a.flip_prob, spatial_axis=ax) for ax in flip_axes if a.flip_prob > 0]
    if not natural and a.affine_prob > 0 and (a.rotate_deg > 0 or a.scale > 0):
        rot = math.radians(a.rotate_deg)
        t.append(RandAffined(keys, prob=a.affine_prob, rotate_range=[rot] * (1 if spatial_dims == 2 else 3),
                             scale_range=[a.scale] * spatial_dims, mode=("bilinear", "nearest")[: len(keys)],
                             padding_mode=("border", "zeros")[: len(keys)]))
    if a.intensity_prob > 0:
        if a.intensity_scale > 0:
            t.append(RandScaleIntensityd(IMAGE, factors=a.intensity_scale, prob=a.intensity_prob))
        if a.intensity_shift > 0:
            t.append(RandShiftIntensityd(IMAGE, offsets=a.intensity_shift, prob=a.intensity_prob))
        if a.noise_std > 0:
            t.append(RandGaussianNoised(IMAGE, std=a.noise_std, prob=a.intensity_prob))
    return t


def _pointwise_window(cfg: DataConfig) -> bool:
    """CT windows act voxel by voxel, so a training pipeline applies them to the patch, not the volume."""
    return cfg.modality == "CT" and cfg.normalize == "window"


#: ``random_resized_crop: auto`` keeps the Inception-style crop for patches at least this size a side
SMALL_IMAGE_SIDE = 64


def natural_crop(cfg: DataConfig) -> Literal["random_resized", "pad", "resize"]:
    """The training crop of a natural-image run: ``random_resized`` (Szegedy et al. 2015, torchvision's
    ImageNet reference: 8-100% of the area, aspect 3/4-4/3, resized to the patch), ``pad`` (He et al.
    2016, sec. 4.2, CIFAR-10: resize to the patch, pad patch/8 px a side with zeros, a random patch-size
    crop) or ``resize`` (none). ``random_resized_crop: auto`` picks ``pad`` when the patch's shorter side
    is under :data:`SMALL_IMAGE_SIDE` px: on a 32 x 32 image the 8% crop is 9 x 9 pixels, and with it the
    ImageNet recipe did not learn scikit-learn's digits (BENCHMARKS.md; docs/reference.md §7).
    Evaluation: the whole resized image after ``pad`` (as the paper), else torchvision's resize to
    patch / 0.875 + centre crop."""
    rrc = cfg.augment.random_resized_crop
    if rrc is False:
        return "resize"
    if rrc == "auto" and min(cfg.patch_size) < SMALL_IMAGE_SIDE:
        return "pad"
    return "random_resized"


def sample_transforms(cfg: DataConfig, *, train: bool) -> list[Transform]:
    """Everything after :func:`load_transforms` (i.e. after a dataset's cache): intensity normalization
    and the per-sample part.

    Training output: ``image`` float32 Tensor ``[C, *patch_size]``, ``mask`` int64 ``[1, *patch_size]``
    (zeros when the scan has no mask), ``has_mask`` bool. Evaluation output: ``image`` float32
    MetaTensor ``[C, *spatial]`` (whole resampled volume, affine in its meta), ``mask`` int64 MetaTensor
    ``[1, *spatial]``, ``has_mask``. Natural images: ``[C, *patch_size]`` in both.

    For CT windows in training the patch is cut first (padding with -1024 HU, air) and windowed after:
    the same values as windowing the whole volume, at the cost of a patch. A z-score needs the whole
    volume's statistics, so it always comes first.
    """
    patch = list(cfg.patch_size)
    intensity = intensity_transforms(cfg)
    if cfg.modality == "natural":
        crop = natural_crop(cfg)
        before: list[Transform] = []  # geometry ahead of the normalization
        if train and crop == "pad":  # padded before normalization: zeros are black, as in the paper
            before = [Resized(IMAGE, spatial_size=patch),
                      BorderPadd(IMAGE, spatial_border=[max(1, s // 8) for s in patch]),
                      RandSpatialCropd(IMAGE, roi_size=patch, random_size=False)]
            t = []
        elif train and crop == "random_resized":
            t = [RandResizedCropd(IMAGE, patch)]
        elif train or crop == "pad":  # no crop; after "pad": He et al.'s single view of the whole image
            t = [Resized(IMAGE, spatial_size=patch)]
        else:  # torchvision's eval recipe: resize to patch / 0.875 (256 for 224), centre crop
            t = [Resized(IMAGE, spatial_size=[round(s / 0.875) for s in patch]),
                 CenterSpatialCropd(IMAGE, patch)]
        if train:
            t += _augment(cfg, [IMAGE], 2, natural=True)
        return [*before, *intensity, *t, EnsureTyped(IMAGE, dtype=torch.float32, track_meta=not train)]
    keys = [IMAGE, MASK]
    if not train:
        return [*intensity, MaskOrZerosd(MASK, ref_key=IMAGE), EnsureTyped(IMAGE, dtype=torch.float32),
                EnsureTyped(MASK, dtype=torch.long)]
    late = _pointwise_window(cfg)
    t = [] if late else list(intensity)
    t.append(MaskOrZerosd(MASK, ref_key=IMAGE))
    slices = cfg.spatial_dims == 2 and cfg.modality != "XR"  # 2D model on volumes: axial slices
    crop_size = [*patch, 1] if slices else patch
    if len(crop_size) != (2 if cfg.modality == "XR" else 3):
        raise ConfigError(f"patch_size {patch} has {len(patch)} values but data.spatial_dims is "
                          f"{cfg.spatial_dims}", field="data.patch_size",
                          hint="give one size per spatial axis")
    t += [SpatialPadd(IMAGE, spatial_size=crop_size, value=-1024.0 if late else 0.0),
          SpatialPadd(MASK, spatial_size=crop_size),
          RandPatchCropd(keys, label_key=MASK, spatial_size=crop_size, pos_fraction=cfg.pos_fraction)]
    if slices:
        t.append(SqueezeDimd(keys, dim=3))
    if late:
        t += intensity
    t += _augment(cfg, keys, len(patch))
    t += [EnsureTyped(IMAGE, dtype=torch.float32, track_meta=False),
          EnsureTyped(MASK, dtype=torch.long, track_meta=False)]
    return t


def build_transforms(cfg: DataConfig, *, train: bool) -> Compose:
    """The whole pipeline for records of ``medres.data.pipeline.datasets.manifest_to_records``:
    :func:`load_transforms` then :func:`sample_transforms`.

    ``build_transforms(cfg, train=True).set_random_state(seed)`` fixes every random draw.
    """
    return Compose([*load_transforms(cfg), *sample_transforms(cfg, train=train)])


def preprocess_signature(cfg: DataConfig) -> str:
    """The settings :func:`load_transforms` depends on, as canonical JSON (part of every cache key)."""
    import monai

    fields = ["modality", "image_columns", "mask_column", "mask_labels", "orientation", "spacing",
              "radiograph"]
    spec = cfg.model_dump(include=set(fields), mode="json")
    spec["pipeline_version"] = 1
    spec["monai"] = monai.__version__
    return json.dumps(spec, sort_keys=True)


def to_source_geometry(pred: torch.Tensor, *, mode: str = "nearest") -> torch.Tensor:
    """Resample ``pred`` ``[C, *spatial]`` (a MetaTensor on the preprocessed grid, e.g. a predicted mask
    with the evaluation image's meta) back onto the source scan's grid, using the ``original_affine`` and
    ``spatial_shape`` the loader recorded. Returns a MetaTensor whose affine is the source affine."""
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    if not isinstance(pred, MetaTensor) or "original_affine" not in pred.meta:
        raise ValueError("to_source_geometry needs a MetaTensor carrying the loader's original_affine")
    dst = torch.as_tensor(np.asarray(pred.meta["original_affine"]), dtype=torch.float64)
    shape = [int(s) for s in np.asarray(pred.meta["spatial_shape"]).tolist()]
    return SpatialResample(mode=mode, padding_mode="zeros")(pred, dst_affine=dst, spatial_size=shape)
