"""Reading the scans and masks a run's predictions name, for per-case scoring and the gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medres.errors import DataError

__all__ = ["first_path", "load_scan", "to_ras"]


def first_path(value: object) -> str | None:
    """The first channel's path of a predictions ``image``/``mask`` value (channels are joined by ``;``)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = value[0] if len(value) else ""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).split(";")[0].strip()
    return text or None


def load_scan(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel array, spacing (mm per axis) and voxel-to-RAS affine [4, 4] of a scan or mask.

    NIfTI is read with nibabel directly (the array as stored, as medres's reader gives it, without
    importing MONAI); DICOM and the rest go through `medres.data.load_image`.
    """
    if str(path).endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"cannot read NIfTI: {type(exc).__name__}", path=path, hint="the file is damaged or not NIfTI"
            ) from None
        return data, np.asarray(img.header.get_zooms(), dtype=np.float64)[: data.ndim], np.asarray(img.affine)
    from medres.data import load_image

    img = load_image(path)
    spacing = np.asarray(img.meta.get("spacing", [1.0] * img.ndim), dtype=np.float64)[: img.ndim]
    affine = img.meta.get("affine", np.eye(4))
    return (
        np.asarray(img),
        spacing,
        np.asarray(affine.cpu() if hasattr(affine, "cpu") else affine, dtype=float),
    )


def to_ras(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a 3D volume's axes to RAS (nibabel's closest canonical) and return it with its new affine,
    so every gallery slice is axial with anterior up (displayed radiologically by the figure)."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    if volume.ndim != 3:
        return volume, affine
    ornt = io_orientation(affine)
    return apply_orientation(volume, ornt), affine @ inv_ornt_aff(ornt, volume.shape)
