"""Loading scans: :func:`load_image`, the MONAI reader :class:`MedresReader`, image/mask agreement.

``load_image(path)`` returns a MONAI ``MetaTensor`` **without** a channel axis, as MONAI's ``LoadImage``
gives it: ``[X, Y]`` for a 2D image or one DICOM frame, ``[X, Y, Z]`` for a DICOM series folder, a
multi-frame DICOM file or a 3D NIfTI; a colour image or a 4D NIfTI keeps its extra axis last
(``[X, Y, 3]``, ``[X, Y, Z, T]``) with ``meta["original_channel_dim"] = -1`` so MONAI's
``EnsureChannelFirstd`` moves it to the front. ``meta`` holds:

- ``affine``: voxel index -> RAS mm (4x4; as MONAI's NibabelReader / PydicomReader compute it),
- ``spacing``: voxel size along each spatial axis in mm (1.0 for PNG/JPEG),
- ``spatial_shape``, ``original_channel_dim``, ``space`` ("RAS"), ``filename_or_obj``,
- the acquisition fields :data:`ACQUISITION_FIELDS` as strings ("" when unknown) — never patient names,
  ids, dates, institutions or UIDs.

Every failure is a :class:`medres.errors.DataError` with the true reason. Used as
``LoadImaged(keys, reader=MedresReader())`` MONAI cannot fall back to its other readers and hide the
error: :meth:`MedresReader.read` never raises, :meth:`MedresReader.get_data` raises the DataError.
(Inside a MONAI ``Compose``, MONAI wraps it in a ``RuntimeError`` whose ``__cause__`` is the DataError.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor

from medres.data.readers.dicom import ACQUISITION_FIELDS, read_dicom_file, read_dicom_series
from medres.data.readers.limits import check_declared, memory_error
from medres.data.readers.nifti import read_nifti
from medres.data.readers.radiograph import RadiographOptions, read_radiograph_if_any
from medres.data.readers.redact import safe_message
from medres.errors import DataError

__all__ = ["ACQUISITION_FIELDS", "MedresReader", "load_image", "check_image_mask", "SUFFIXES",
           "image_suffix"]

logger = logging.getLogger(__name__)

#: Suffixes :class:`MedresReader` claims (DICOM files often have none; folders are DICOM series).
SUFFIXES = (".dcm", ".dicom", ".ima", ".nii", ".nii.gz", ".png", ".jpg", ".jpeg")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
_NOT_SUPPORTED = {
    ".hdr": "an Analyze/NIfTI header (.hdr/.img pair)", ".img": "an Analyze/NIfTI image (.hdr/.img pair)",
    ".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD", ".mgz": "FreeSurfer MGH",
    ".mgh": "FreeSurfer MGH",
    ".npy": "a NumPy array", ".npz": "a NumPy archive", ".gz": "a gzip file that is not .nii.gz",
}


def image_suffix(path: Path) -> str:
    """The file's suffix as the readers choose by it: lower case, ``.nii.gz`` as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_pil(path: Path, max_voxels: int | None = None) -> tuple[np.ndarray, dict]:
    """PNG/JPEG -> ``[X, Y]`` (grayscale) or ``[X, Y, 3]`` (colour), identity affine as MONAI's PILReader.

    Pillow's own decompression-bomb guard stays on (``Image.MAX_IMAGE_PIXELS``); the header's width x
    height is also checked against ``max_voxels`` before decoding.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            check_declared([*img.size, len(img.getbands())], 1, path, max_voxels=max_voxels,
                           what="its image header")
            img.load()
            mode = img.mode
            if mode in ("1", "L", "LA", "P") and mode != "L":
                img = img.convert("RGB" if mode == "P" else "L")
            elif mode in ("RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            data = np.asarray(img)
    except DataError:
        raise
    except Image.DecompressionBombError as exc:
        raise DataError(f"its image header declares more pixels than Pillow's decompression-bomb guard "
                        f"allows ({safe_message(exc)}); refused before decoding", path=path,
                        hint="re-export the image at a sensible size") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"is not a readable PNG/JPEG image ({safe_message(exc)})", path=path,
                        hint="re-export the image") from None
    data = np.swapaxes(data, 0, 1)
    colour = data.ndim == 3
    meta = {"affine": np.eye(4), "spatial_shape": np.asarray(data.shape[:2]),
            "original_channel_dim": -1 if colour else float("nan"), "spacing": np.ones(2), "_colour": colour,
            "bits_per_sample": 8 if data.dtype == np.uint8 else 16}  # Pillow: 16-bit PNG -> I;16 or I
    return np.ascontiguousarray(data), meta


def _read_one(path: Path, series_uid: str | None, max_voxels: int | None = None,
              radiograph: RadiographOptions | None = None, max_files: int | None = None
              ) -> tuple[np.ndarray, dict]:
    suffix = image_suffix(path)
    if not path.exists():
        raise DataError("does not exist", path=path, hint="check the path and the data root")
    if suffix in (".nii", ".nii.gz"):
        return read_nifti(path, max_voxels=max_voxels)
    if path.is_dir():  # a folder holding one radiograph is that image, not a one-slice series
        return (read_radiograph_if_any(path, radiograph)
                or read_dicom_series(path, series_uid=series_uid, max_voxels=max_voxels, max_files=max_files))
    if suffix in _PIL_SUFFIXES:
        return _read_pil(path, max_voxels)
    if suffix in _NOT_SUPPORTED:
        raise DataError(f"is {_NOT_SUPPORTED[suffix]}, a format medres does not read", path=path,
                        hint="convert it to NIfTI (.nii.gz)")
    # DICOM files may have any suffix or none; CR/DX go through the grayscale display pipeline
    return read_radiograph_if_any(path, radiograph) or read_dicom_file(path, max_voxels=max_voxels)


def _check_ndim(data: np.ndarray, meta: dict, ndim: int | None, path: Path) -> np.ndarray:
    spatial = len(meta["spatial_shape"])
    colour = meta.get("_colour", False)
    if ndim is None or spatial == ndim and (data.ndim == ndim or colour):
        return data
    if ndim == 2 and spatial == 3 and data.shape[2] == 1:  # one slice of a volume
        meta["spatial_shape"] = np.asarray(data.shape[:2])
        meta["spacing"] = meta["spacing"][:2]
        return data[:, :, 0]
    what = f"{data.ndim}D (shape {tuple(data.shape)})"
    hint = "choose the file/series holding the expected volume, or change the configured dimensionality"
    if spatial == 2 and ndim == 3:
        hint = "a single slice cannot be a volume: list the series folder instead of one of its files"
    elif data.ndim > spatial and not colour:
        hint = "several volumes (time points or channels) in one file: split it, or list its volumes as " \
               "separate image_* columns"
    raise DataError(f"is {what} where a {ndim}D image was expected", path=path, hint=hint)


@dataclass
class _Loaded:
    """The result of :meth:`MedresReader.read`: arrays and metas, or the error to raise in get_data."""

    items: list[tuple[np.ndarray, dict]]
    error: DataError | None = None


class MedresReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM files/series folders, NIfTI and PNG/JPEG with medres's checks.

    Args:
        series_uid: the SeriesInstanceUID to keep when a folder holds several series.
        ndim: expected number of spatial dimensions (2 or 3); other shapes raise a DataError.
        max_voxels: the declared-size cap (``data.max_voxels``; :mod:`medres.data.readers.limits`).
        max_files: the entries a series folder may hold (``data.max_files_per_series``).
        radiograph: how CR/DX radiographs are read (VOI choice, FOR PROCESSING, views); see
            :mod:`medres.data.readers.radiograph`.

    Several paths at once (e.g. ``image_t1``, ``image_t2``) are stacked as channels ``[C, *spatial]``
    (``original_channel_dim = 0``) after checking they share shape and affine.
    """

    def __init__(self, series_uid: str | None = None, ndim: int | None = None,
                 max_voxels: int | None = None, radiograph: RadiographOptions | None = None,
                 max_files: int | None = None) -> None:
        super().__init__()
        self.max_files = max_files
        self.series_uid = series_uid or None
        self.ndim = ndim
        self.max_voxels = max_voxels
        self.radiograph = radiograph

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = [filename] if isinstance(filename, (str, Path)) else list(filename)
        return all(Path(n).is_dir() or image_suffix(Path(n)) in (*SUFFIXES, "") for n in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> _Loaded:
        """Load every path; never raises, so MONAI's LoadImage cannot swap in another reader."""
        paths = [data] if isinstance(data, (str, Path)) else list(data)
        items = []
        for p in paths:
            path = Path(p)
            try:
                array, meta = _read_one(path, self.series_uid, self.max_voxels, self.radiograph,
                                        self.max_files)
                array = _check_ndim(array, meta, self.ndim, path)
            except DataError as err:
                return _Loaded([], err)
            except MemoryError:
                return _Loaded([], memory_error(path))
            except Exception as exc:  # a reader failure medres does not know yet: still a DataError
                logger.debug("unexpected reader failure on %s", path, exc_info=True)
                return _Loaded([], DataError(f"could not be read: unexpected reader failure "
                                             f"({safe_message(exc)})", path=path,
                                             hint="check the file; please report this message to medres"))
            meta["filename_or_obj"] = str(path)
            items.append((array, meta))
        return _Loaded(items)

    def get_data(self, img: _Loaded) -> tuple[np.ndarray, dict]:
        """``(array, meta)`` for MONAI's LoadImage; raises the DataError recorded by :meth:`read`."""
        if img.error is not None:
            raise img.error
        if len(img.items) == 1:
            array, meta = img.items[0]
        else:
            array, meta = _stack_channels(img.items)
        meta = {**{k: "" for k in ACQUISITION_FIELDS}, **meta, "space": "RAS",
                "_colour": None,
                "original_affine": np.array(meta["affine"], copy=True)}
        del meta["_colour"]
        return array, meta


def _stack_channels(items: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
    first, meta0 = items[0]
    for array, meta in items[1:]:
        problem = _geometry_mismatch(meta0, meta, atol=1e-3)
        if array.shape != first.shape:
            problem = f"shape {tuple(array.shape)} differs from {tuple(first.shape)}"
        if problem:
            raise DataError(f"cannot be stacked as a channel with {meta0['filename_or_obj']}: {problem}",
                            path=meta["filename_or_obj"], hint="resample the channels onto one grid")
    meta = dict(meta0, original_channel_dim=0)
    return np.stack([a for a, _ in items], axis=0), meta


def load_image(path: str | Path | Sequence[str | Path], *, series_uid: str | None = None,
               ndim: int | None = None, dtype: Any = np.float32,
               max_voxels: int | None = None, radiograph: RadiographOptions | None = None,
               max_files: int | None = None) -> MetaTensor:
    """Load a DICOM file, DICOM series folder, NIfTI or PNG/JPEG as a ``MetaTensor`` (no channel axis added).

    Shapes: ``[X, Y]``, ``[X, Y, Z]``, colour/4D with the extra axis last; a list of paths gives
    ``[C, *spatial]``. Builds the tensor the way MONAI's ``LoadImage`` does, so the result equals what a
    ``LoadImaged(reader=MedresReader())`` pipeline gets (without constructing MONAI's other readers).
    ``max_voxels`` caps the size a header may declare (:mod:`medres.data.readers.limits`), ``max_files`` the
    entries of a series folder.
    Raises :class:`DataError` on any problem.
    """
    names = [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]
    reader = MedresReader(series_uid=series_uid, ndim=ndim, max_voxels=max_voxels, radiograph=radiograph,
                          max_files=max_files)
    array, meta = reader.get_data(reader.read(names))
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    meta["filename_or_obj"] = names[0]
    return MetaTensor.ensure_torch_and_prune_meta(array, meta)


def _affine_of(meta_or_tensor: Any) -> np.ndarray:
    aff = meta_or_tensor.get("affine") if isinstance(meta_or_tensor, dict) else meta_or_tensor.affine
    return np.asarray(aff.cpu() if isinstance(aff, torch.Tensor) else aff, dtype=np.float64)


def _geometry_mismatch(a: dict, b: dict, atol: float) -> str:
    """'' when two metas describe the same grid, else what differs."""
    shape_a = tuple(int(v) for v in np.asarray(a["spatial_shape"]))
    shape_b = tuple(int(v) for v in np.asarray(b["spatial_shape"]))
    if shape_a != shape_b:
        return f"shape {shape_b} differs from {shape_a}"
    aff_a, aff_b = _affine_of(a), _affine_of(b)
    n = len(shape_a)
    sp_a, sp_b = np.linalg.norm(aff_a[:3, :n], axis=0), np.linalg.norm(aff_b[:3, :n], axis=0)
    if not np.allclose(sp_a, sp_b, rtol=0, atol=atol):
        return f"spacing {np.round(sp_b, 4).tolist()} mm differs from {np.round(sp_a, 4).tolist()} mm"
    if not np.allclose(aff_a, aff_b, rtol=0, atol=atol):
        diff = float(np.abs(aff_a - aff_b).max())
        return f"affine (orientation/origin) differs by up to {diff:.4g} (tolerance {atol})"
    return ""


def _distinct_values(t: torch.Tensor) -> torch.Tensor:
    """Sorted distinct values; integer tensors are counted with bincount (torch.unique sorts the whole
    mask, which cost about as much as resampling the scan), other dtypes and huge ranges use unique."""
    flat = t.reshape(-1)
    if flat.numel() == 0 or flat.dtype.is_floating_point or flat.dtype == torch.bool:
        return torch.unique(flat)
    lo, hi = (int(v) for v in torch.aminmax(flat))
    if hi - lo > 65535:
        return torch.unique(flat)
    counts = torch.bincount(flat if flat.dtype == torch.uint8 else flat.to(torch.int64) - lo)
    present = torch.nonzero(counts).flatten()
    return present if flat.dtype == torch.uint8 else present + lo


def check_image_mask(image: MetaTensor, mask: MetaTensor, *, labels: Iterable[int] | None = None,
                     atol: float = 1e-3) -> None:
    """Raise a DataError unless ``mask`` lies on ``image``'s grid and holds only ``labels``.

    Call it on freshly loaded tensors (no channel axis yet; see :func:`load_image`), before any
    transform: MONAI's crops and ``Spacingd`` would silently carry a misaligned mask along.

    Args:
        image: ``[*spatial]`` or ``[*spatial, C]`` as loaded.
        mask: ``[*spatial]`` integer labels.
        labels: allowed mask values (e.g. ``range(num_seg_classes)``); None skips the value check.
        atol: tolerance on spacing and on every affine entry (mm).
    """
    path = mask.meta.get("filename_or_obj")
    if mask.ndim != len(mask.meta.get("spatial_shape", mask.shape)):
        raise DataError(f"a mask must be one label image, but it has {mask.ndim} axes "
                        f"(shape {tuple(mask.shape)})", path=path, hint="save the mask as a single label map")
    problem = _geometry_mismatch(dict(image.meta, affine=image.affine), dict(mask.meta, affine=mask.affine),
                                 atol)
    if problem:
        raise DataError(f"mask does not match its image: {problem}",
                        path=path, hint="resample the mask onto the image grid (nearest neighbour) or "
                                        "fix the manifest pairing")
    values = _distinct_values(mask.as_tensor())
    if values.is_floating_point() and not torch.all(values == torch.round(values)):
        bad = values[values != torch.round(values)][:3].tolist()
        raise DataError(f"mask holds non-integer values (e.g. {bad}): a probability map, or resampled "
                        "with linear interpolation?", path=path, hint="save integer labels; resample "
                                                                     "masks with nearest neighbour")
    if labels is not None:
        allowed = {int(v) for v in labels}
        extra = sorted({int(v) for v in values.tolist()} - allowed)
        if extra:
            raise DataError(f"mask holds values {extra[:10]} that are not labels of the configuration "
                            f"(allowed: {sorted(allowed)})", path=path,
                            hint="relabel the mask or add the classes to data.mask_labels")
