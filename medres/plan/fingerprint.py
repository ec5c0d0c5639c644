"""The dataset fingerprint: what a plan is derived from, measured on every scan of a manifest.

``fingerprint_cohort(manifest)`` reads each row's image(s) and mask with medres's own readers
(``medres.data.readers.io.load_image``: the geometry checks and DataErrors of training apply) and records:

- per scan: voxel spacing and size along the RAS axes (the axes training resamples to), the
  orientation codes of the file, the field of view in mm, the label;
- intensities: percentiles, mean and standard deviation of a seeded sample of voxels inside the masks'
  foreground and over the body (CT: voxels above -500 HU with the enclosed air - the lungs - filled in,
  slice by slice; MR: non-zero voxels, per channel), as nnU-Net's fingerprint does for its CT scheme;
- class balance by patient (a patient counts once per label) and by scan;
- lesions: connected components of each mask (face connectivity), their volumes in mm^3 and
  bounding-box extents in mm along the RAS axes, and the share of foreground voxels per lesion scan.

The fingerprint carries no patient ids, case ids or paths: scans are keyed ``case-0001`` in manifest
order and only counts and measurements are kept, so ``fingerprint.json`` can be shared.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medres.errors import DataError

__all__ = ["fingerprint_cohort", "ras_geometry", "PERCENTILES"]

PERCENTILES = (0.5, 5.0, 25.0, 50.0, 75.0, 95.0, 99.5)
_SAMPLE = 20_000  # voxels sampled per scan and region (nnU-Net samples 10,000 foreground voxels per case)
_CT_BODY_HU = -500.0


def ras_geometry(affine: np.ndarray, shape: Sequence[int]) -> tuple[list[float], list[int], str]:
    """Spacing (mm) and size along the R, A, S axes, and the file's orientation codes (nibabel's).

    A voxel axis is assigned to the world axis its direction vector points along most (what
    ``Orientationd`` to RAS does before resampling).
    """
    import nibabel as nib

    aff = np.asarray(affine, dtype=np.float64)
    n = len(shape)
    cols = aff[:n, :n]
    spacing_vox = np.linalg.norm(cols, axis=0)
    world_of = np.abs(cols).argmax(axis=0)
    spacing = [0.0] * n
    size = [0] * n
    for vox, world in enumerate(world_of):
        spacing[int(world)] = float(spacing_vox[vox])
        size[int(world)] = int(shape[vox])
    codes = "".join(nib.orientations.aff2axcodes(aff)) if n == 3 else ""
    return [round(s, 5) for s in spacing], size, codes


def _body_mask(volume: np.ndarray, modality: str) -> np.ndarray:
    if modality == "MR":
        return volume != 0
    from scipy.ndimage import binary_fill_holes

    body = volume > _CT_BODY_HU
    out = np.empty_like(body)
    for z in range(body.shape[-1]):  # per slice: the lungs are enclosed in-plane, open along z
        out[..., z] = binary_fill_holes(body[..., z])
    return out


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if values.size <= _SAMPLE:
        return values.astype(np.float32)
    return values[rng.choice(values.size, _SAMPLE, replace=False)].astype(np.float32)


def _stats(samples: list[np.ndarray]) -> dict[str, Any] | None:
    if not samples:
        return None
    v = np.concatenate(samples).astype(np.float64)
    if v.size == 0:
        return None
    pct = np.percentile(v, PERCENTILES)
    return {"n_voxels_sampled": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "percentiles": {f"p{p:g}": round(float(x), 3) for p, x in zip(PERCENTILES, pct)}}


def _lesions(mask: np.ndarray, spacing_vox: np.ndarray, world_of: np.ndarray) -> list[dict[str, Any]]:
    from scipy.ndimage import find_objects, label

    comps, n = label(mask > 0)
    out = []
    voxel_mm3 = float(np.prod(spacing_vox))
    counts = np.bincount(comps.ravel(), minlength=n + 1)
    for i, box in enumerate(find_objects(comps), start=1):
        if box is None:
            continue
        extent_vox = [(s.stop - s.start) * float(spacing_vox[a]) for a, s in enumerate(box)]
        extent = [0.0] * len(extent_vox)
        for vox, world in enumerate(world_of):
            extent[int(world)] = round(extent_vox[vox], 3)
        out.append({"volume_mm3": round(int(counts[i]) * voxel_mm3, 3), "extent_mm": extent})
    return out


def _summary(values: Sequence[float]) -> dict[str, float] | None:
    if not len(values):
        return None
    v = np.asarray(values, dtype=np.float64)
    return {"min": float(v.min()), "p10": float(np.percentile(v, 10)), "median": float(np.median(v)),
            "p90": float(np.percentile(v, 90)), "p95": float(np.percentile(v, 95)), "max": float(v.max())}


def fingerprint_cohort(manifest: str | os.PathLike[str], *, modality: str | None = None,
                       image_columns: Sequence[str] | None = None, mask_column: str = "mask",
                       seed: int = 0) -> dict[str, Any]:
    """Measure every scan of ``manifest`` (see the module docstring); returns a JSON-ready dict.

    Args:
        manifest: the cohort CSV (``medres.data.read_manifest`` rules).
        modality: ``"CT"`` or ``"MR"``; None: CT when the body's 0.5th percentile is below -500 (HU
            air and lung), else MR.
        image_columns: the image columns (default: every ``image``/``image_*`` column, in file order).
        mask_column: the mask column (rows without a mask add no lesion statistics).
        seed: the voxel sampling's seed (the fingerprint is a pure function of files and seed).

    Raises:
        DataError: a row whose files cannot be read, or a mask off its image's grid, naming the row.
    """
    from medres.data.manifest import image_columns_of, read_manifest
    from medres.data.readers.io import load_image

    df = read_manifest(manifest)
    columns = list(image_columns) if image_columns else image_columns_of(list(df.columns))
    if not columns:
        raise DataError("the manifest has no image column", path=manifest,
                        hint="name the image column 'image' (or image_t1, image_t2, ... for channels)")
    has_mask = mask_column in df.columns
    rng = np.random.default_rng(seed)
    scans: list[dict[str, Any]] = []
    fg: dict[int, list[np.ndarray]] = defaultdict(list)
    body: dict[int, list[np.ndarray]] = defaultdict(list)
    lesions: list[dict[str, Any]] = []
    fg_fraction: list[float] = []
    mask_values: set[int] = set()
    patients_by_label: dict[str, set[str]] = defaultdict(set)
    scans_by_label: Counter[str] = Counter()
    guessed: list[str] = []
    read_seconds = 0.0
    for row, rec in enumerate(df.to_dict("records"), start=1):
        key = f"case-{row:04d}"
        t0 = time.perf_counter()
        try:
            loaded = [load_image(rec[c], dtype=np.float32) for c in columns]
            affine = np.asarray(loaded[0].affine, dtype=np.float64)
            channels = [t.numpy() for t in loaded]
            mask = None
            if has_mask and rec[mask_column]:
                mask = load_image(rec[mask_column], dtype=None).numpy()
                if mask.shape != channels[0].shape:
                    raise DataError(f"mask of shape {list(mask.shape)} is not on the image's grid "
                                    f"{list(channels[0].shape)}", path=rec[mask_column],
                                    hint="resample the mask onto its image")
        except DataError as e:
            raise e.located(row=row, case_id=str(rec.get("case_id"))) from None
        read_seconds += time.perf_counter() - t0
        shape = channels[0].shape
        spacing, size, codes = ras_geometry(affine, shape)
        spacing_vox = np.linalg.norm(affine[:3, :3], axis=0)
        world_of = np.abs(affine[:3, :3]).argmax(axis=0)
        label = str(rec.get("label", "") or "")
        scan = {"case": key, "spacing_mm": spacing, "size": size, "orientation": codes,
                "fov_mm": [round(a * b, 3) for a, b in zip(spacing, size)], "label": label or None,
                "has_mask": mask is not None}
        if modality is None:
            guessed.append("CT" if float(np.percentile(channels[0], 0.5)) < _CT_BODY_HU else "MR")
        mod = modality or guessed[-1]
        for c, vol in enumerate(channels):
            b = _body_mask(vol, mod)
            body[c].append(_sample(vol[b], rng))
            if mask is not None and (mask > 0).any():
                fg[c].append(_sample(vol[mask > 0], rng))
        if mask is not None:
            mask_values.update(int(v) for v in np.unique(mask))
            comps = _lesions(mask, spacing_vox, world_of)
            scan["lesions"] = len(comps)
            lesions += comps
            if comps:
                fg_fraction.append(float((mask > 0).mean()))
        scans.append(scan)
        if label:
            patients_by_label[label].add(str(rec["patient_id"]))
            scans_by_label[label] += 1
    if modality is None:
        modality = Counter(guessed).most_common(1)[0][0]
    spacings = np.asarray([s["spacing_mm"] for s in scans])
    sizes = np.asarray([s["size"] for s in scans])
    fovs = np.asarray([s["fov_mm"] for s in scans])
    return {
        "version": 1,
        "modality": modality,
        "modality_inferred": bool(guessed),
        "n_scans": len(scans),
        "n_patients": int(df["patient_id"].nunique()),
        "image_columns": columns,
        "mask_column": mask_column if has_mask else None,
        "orientations": dict(Counter(s["orientation"] for s in scans)),
        "spacing_mm": {"median": np.median(spacings, axis=0).round(5).tolist(),
                       "p10": np.percentile(spacings, 10, axis=0).round(5).tolist(),
                       "p90": np.percentile(spacings, 90, axis=0).round(5).tolist()},
        "size": {"median": np.median(sizes, axis=0).tolist(), "max": sizes.max(axis=0).tolist()},
        "fov_mm": {"median": np.median(fovs, axis=0).round(3).tolist(), "max": fovs.max(axis=0).tolist()},
        "intensity": {
            "foreground": [_stats(fg[c]) for c in range(len(columns))],
            "body": [_stats(body[c]) for c in range(len(columns))],
            "body_rule": ("CT: HU > -500, enclosed air filled per axial slice" if modality == "CT"
                          else "MR: non-zero voxels"),
        },
        "class_balance": {
            "patients_by_label": {k: len(v) for k, v in sorted(patients_by_label.items())},
            "scans_by_label": dict(sorted(scans_by_label.items())),
        },
        "mask_values": sorted(mask_values),
        "lesions": {
            "n": len(lesions),
            "scans_with_lesions": len(fg_fraction),
            "volume_mm3": _summary([x["volume_mm3"] for x in lesions]),
            "extent_mm": {axis: _summary([x["extent_mm"][i] for x in lesions])
                          for i, axis in enumerate("RAS")} if lesions else None,
            "max_extent_mm": _summary([max(x["extent_mm"]) for x in lesions]),
            "min_extent_mm": _summary([min(x["extent_mm"]) for x in lesions]),
            "foreground_fraction": _summary(fg_fraction),
        },
        "read_seconds_per_scan": round(read_seconds / max(len(scans), 1), 4),
        "scans": scans,
    }


def write_fingerprint(fp: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``fp`` as indented JSON (atomically)."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fp, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
