"""The built-in demo cohort: a deterministic synthetic chest-CT cohort with a manifest.

``generate_demo(out, n_patients=100, seed=0)`` writes about ``1.2 * n_patients`` scans (a fifth of the
patients have a follow-up study) from three sites with their own scanner, noise level, pixel size and
slice spacing. Site ``site_a`` is written as genuine DICOM series (CT Image Storage, one file per slice,
stored as unsigned integers with RescaleIntercept -1024, made-up patient fields such as ``DEMO^0001``
so privacy tests have something to find); the other sites as NIfTI (``.nii.gz``, int16 HU). Every scan
has a NIfTI mask in its own geometry (all zero for ``normal`` scans: annotated negatives).

Geometry: every scan covers a 240 mm cube (64x64x48 at 3.75x3.75x5 mm, 60x60x80 at 4x4x3 mm, 80x80x40
at 3x3x6 mm), so resampling to the shipped configs' 5 mm spacing gives 48^3 voxels, the patch size.
``grid="fullres"`` renders the same patients on a clinical grid instead (``FULLRES_SITES``: 0.7-0.9 mm
pixels, 1.25-2 mm slices, 150-200 slices over a ~250 mm field; ``configs/ct_chest_fullres.yaml``).
Anatomy (HU): air -1000, subcutaneous fat -100, soft tissue 40, lungs about -850 with a gravity
gradient, heart 45, spine 250-700, a table, and soft-tissue vessels in the lungs (distractors).
About a third of the patients have nodules (all their studies labelled ``nodule``; the follow-up's
nodule grown by 15%): two thirds of them a solid nodule of radius 12.5-30 mm (2.5-6 voxels at 5 mm,
-60..60 HU), the rest hard cases as exact quotas: part-solid (a -560 HU halo around a solid core),
ground-glass (-650..-550 HU) and small solid (6-11 mm); a fifth also carry a second, small nodule.
Noise (30, 45, 18 HU at the three sites, spatially correlated) and blur follow the sites.

The manifest's ``nodule_diameter_mm`` is a regression target: the largest diameter (2 x the largest
semi-axis, follow-up growth included) of the scan's largest nodule, blank for ``normal`` scans. Blank,
not 0: a diameter is a question about nodule scans only, and a blank (unknown) cell removes a normal scan
from that task rather than teaching it that nodules of 0 mm exist.

Output is byte-identical for a given (n_patients, seed); a folder that already holds a complete cohort
for the same settings is reused, not rewritten.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medres.data.demo.folder import partial_folder, replace_folder, written_files
from medres.errors import DataError

__all__ = ["generate_demo", "DEMO_VERSION", "SITES", "FULLRES_SITES", "demo_sites", "nodule_diameter_mm"]

DEMO_VERSION = 3  # bump when the output changes: older cohorts on disk are then regenerated (3: diameter)
_STAMP = "demo_cohort.json"
MANIFEST_COLUMNS = ["case_id", "patient_id", "study_uid", "image", "mask", "label", "site", "scanner",
                    "sex", "age", "nodule_diameter_mm"]


@dataclass(frozen=True)
class Site:
    """One acquisition site: scanner, storage format and grid (in-plane ``n`` x ``n`` x ``n_slices``)."""

    name: str
    manufacturer: str
    model: str
    fmt: str  # "dicom" or "nifti"
    pixel_mm: float
    n: int
    slice_mm: float
    n_slices: int
    noise_hu: float
    flips: tuple[int, int, int]  # signs of the RAS affine's diagonal

    @property
    def scanner(self) -> str:
        return f"{self.manufacturer} {self.model}"


SITES = (
    Site("site_a", "Acme Medical", "Voxa 64", "dicom", 3.75, 64, 5.0, 48, 30.0, (-1, -1, 1)),
    Site("site_b", "Nordlys Imaging", "Aurora 16", "nifti", 4.0, 60, 3.0, 80, 45.0, (-1, -1, 1)),
    Site("site_c", "Helix Systems", "Spiral 128", "nifti", 3.0, 80, 6.0, 40, 18.0, (1, 1, 1)),
)

# The full-resolution grid (``grid="fullres"``): the same anatomy, nodules and sites on a clinical chest-CT
# grid: 0.7-0.9 mm pixels, 278-357 pixels across a ~250 mm field, 1.25-2.0 mm slices, 150-200 slices
# (14-20 million voxels per scan; ~7 s each to render on one core, hence ``workers``).
FULLRES_SITES = (
    Site("site_a", "Acme Medical", "Voxa 64", "dicom", 0.78, 320, 1.25, 200, 30.0, (-1, -1, 1)),
    Site("site_b", "Nordlys Imaging", "Aurora 16", "nifti", 0.86, 290, 1.5, 168, 45.0, (-1, -1, 1)),
    Site("site_c", "Helix Systems", "Spiral 128", "nifti", 0.7, 357, 2.0, 150, 18.0, (1, 1, 1)),
)


def demo_sites(grid: str = "coarse", grid_scale: float = 1.0) -> tuple[Site, ...]:
    """The sites of a grid (``coarse``: the 240 mm cube at 3-6 mm; ``fullres``: clinical spacing), with
    every voxel ``grid_scale`` times larger and the field of view kept (``grid_scale > 1``: quick tests)."""
    if grid not in ("coarse", "fullres"):
        raise DataError(f"unknown demo grid {grid!r}", hint="use coarse or fullres")
    if not grid_scale > 0:
        raise DataError(f"demo grid_scale must be positive, got {grid_scale}", hint="use 1.0 (or more)")
    sites = SITES if grid == "coarse" else FULLRES_SITES
    if grid_scale == 1.0:
        return sites
    return tuple(replace(s, pixel_mm=s.pixel_mm * grid_scale, slice_mm=s.slice_mm * grid_scale,
                         n=max(8, round(s.n / grid_scale)), n_slices=max(8, round(s.n_slices / grid_scale)))
                 for s in sites)


# nodule kinds: (share of the nodule patients, radius range in mm); 12.5-30 mm is 2.5-6 voxels at 5 mm.
# Shares are exact quotas (not draws), so every cohort size and seed has the same mix of easy and hard.
_KINDS = (("solid", 0.67, (12.5, 30.0)), ("part_solid", 0.12, (12.0, 24.0)),
          ("ground_glass", 0.1, (12.0, 22.0)), ("small", 0.11, (6.0, 11.0)))


@dataclass
class _Nodule:
    center: np.ndarray  # RAS mm, in the patient's anatomical frame
    semi: np.ndarray  # semi-axes, mm
    kind: str
    hu: float


@dataclass
class _Patient:
    index: int
    sex: str
    age: int
    body: tuple[float, float]  # semi-axes a (left-right), b (anterior-posterior), mm
    lung_z: float
    nodules: list[_Nodule]
    vessels: list[tuple[np.ndarray, np.ndarray, float]]
    studies: list[int]  # site index per study


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def _plan(n_patients: int, seed: int) -> list[_Patient]:
    """Draw every patient's anatomy, nodules and studies (sites); pure function of the arguments."""
    g = _rng(seed, 1)
    n_nodule = max(1, round(n_patients / 3))
    n_follow = max(1, round(n_patients / 5))
    nodule_ids = g.permutation(n_patients)[:n_nodule].tolist()
    quota = [kind for kind, share, _ in _KINDS[1:] for _ in range(round(share * n_nodule))]
    quota = ["solid"] * (n_nodule - len(quota)) + quota
    kind_of = dict(zip(nodule_ids, g.permutation(quota).tolist()))
    follow_set = set(g.permutation(n_patients)[:n_follow].tolist())
    site_of = [int(s) for s in g.permutation(np.arange(n_patients) % len(SITES))]
    patients = []
    for i in range(n_patients):
        r = _rng(seed, 2, i)
        sex = "M" if r.random() < 0.5 else "F"
        scale = 1.0 if sex == "M" else 0.92
        a, b = scale * r.uniform(100, 112), scale * r.uniform(70, 82)
        lung_z = r.uniform(-15, 15)
        nodules = []
        if i in kind_of:
            nodules.append(_draw_nodule(r, a, b, lung_z, kind_of[i]))
            if r.random() < 0.2:  # a second, small nodule
                nodules.append(_draw_nodule(r, a, b, lung_z, "small"))
        vessels = []
        for side in (-1, 1):
            hilum = np.array([side * 0.22 * a, 0.0, lung_z])
            for _ in range(int(r.integers(4, 7))):
                end = _point_in_lung(r, side, a, b, lung_z, margin=0.85)
                vessels.append((hilum, end, r.uniform(2.0, 3.5)))
        studies = [site_of[i]]
        if i in follow_set:
            studies.append(site_of[i] if r.random() < 0.6 else int(r.integers(len(SITES))))
        patients.append(_Patient(i, sex, int(r.integers(35, 86)), (a, b), lung_z, nodules, vessels, studies))
    return patients


def _lung(side: int, a: float, b: float, lung_z: float) -> tuple[np.ndarray, np.ndarray]:
    return np.array([side * 0.46 * a, 0.05 * b, lung_z]), np.array([0.34 * a, 0.72 * b, 105.0])


def _point_in_lung(r: np.random.Generator, side: int, a: float, b: float, lung_z: float,
                   margin: float) -> np.ndarray:
    centre, semi = _lung(side, a, b, lung_z)
    u = r.normal(size=3)
    u *= r.random() ** (1 / 3) / np.linalg.norm(u)
    return centre + margin * semi * u


def _draw_nodule(r: np.random.Generator, a: float, b: float, lung_z: float, kind: str) -> _Nodule:
    lo, hi = {k: rng for k, _, rng in _KINDS}[kind]
    radius = r.uniform(lo, hi)
    semi = radius * r.uniform(0.85, 1.15, size=3)
    side = -1 if r.random() < 0.5 else 1
    centre, lung_semi = _lung(side, a, b, lung_z)
    margin = np.clip(1 - radius / lung_semi, 0.1, 0.8)
    u = r.normal(size=3)
    u *= r.random() ** (1 / 3) / np.linalg.norm(u)
    hu = {"solid": r.uniform(-60, 60), "small": r.uniform(-40, 60), "part_solid": r.uniform(-20, 50),
          "ground_glass": r.uniform(-650, -550)}[kind]
    pos = centre + margin * lung_semi * u
    pos[2] = np.clip(pos[2], -105 + radius, 105 - radius)  # stay inside the 240 mm field
    return _Nodule(pos, semi, kind, float(hu))


def _ellipsoid(xs, ys, zs, centre, semi) -> np.ndarray:  # noqa: ANN001 - broadcast coordinate arrays
    return (((xs - centre[0]) / semi[0]) ** 2 + ((ys - centre[1]) / semi[1]) ** 2
            + ((zs - centre[2]) / semi[2]) ** 2) <= 1.0


def _growth(study: int) -> float:
    return 1.0 + 0.15 * study  # the follow-up's nodule grown by 15%


def nodule_diameter_mm(p: _Patient, study: int) -> float | None:
    """The largest diameter (mm) of the largest nodule in a patient's study; None for a normal patient."""
    if not p.nodules:
        return None
    return 2.0 * max(float(np.max(n.semi)) for n in p.nodules) * _growth(study)


def _render(p: _Patient, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, growth: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """HU volume and nodule mask on the grid of RAS coordinates ``xs`` [X,1,1], ``ys`` [1,Y,1], ``zs``
    [1,1,Z] (mm, anatomical frame), before blur and noise. Returns float32 [X,Y,Z] and uint8 [X,Y,Z]."""
    a, b = p.body
    shape = (xs.shape[0], ys.shape[1], zs.shape[2])
    hu = np.full(shape, -1000.0, dtype=np.float32)
    table = (np.abs(xs) < 130) & (ys < -b - 12) & (ys > -b - 22)
    hu[np.broadcast_to(table, shape)] = 60.0
    body = (xs / a) ** 2 + (ys / b) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = -100.0
    inner = (xs / (a - 12)) ** 2 + (ys / (b - 12)) ** 2 <= 1.0
    hu[np.broadcast_to(inner, shape)] = 40.0
    for side in (-1, 1):
        centre, semi = _lung(side, a, b, p.lung_z)
        lung = _ellipsoid(xs, ys, zs, centre, semi)
        hu[lung] = np.broadcast_to(-870.0 - 50.0 * ys / b, shape)[lung]
    heart_c, heart_semi = np.array([0.08 * a, 0.25 * b, p.lung_z - 40]), np.array([0.3 * a, 0.45 * b, 55.0])
    heart = _ellipsoid(xs, ys, zs, heart_c, heart_semi)
    hu[heart] = 45.0
    spine_r2 = xs ** 2 + (ys + b - 26) ** 2
    hu[np.broadcast_to(spine_r2 <= 14.0 ** 2, shape)] = 700.0
    hu[np.broadcast_to(spine_r2 <= 10.0 ** 2, shape)] = 250.0
    for start, end, radius in p.vessels:
        d = end - start
        rx, ry, rz = xs - start[0], ys - start[1], zs - start[2]
        t = np.clip((rx * d[0] + ry * d[1] + rz * d[2]) / (d @ d), 0, 1)
        dist2 = (rx - t * d[0]) ** 2 + (ry - t * d[1]) ** 2 + (rz - t * d[2]) ** 2
        hu[dist2 <= radius ** 2] = 40.0
    mask = np.zeros(shape, dtype=np.uint8)
    for nod in p.nodules:
        inside = _ellipsoid(xs, ys, zs, nod.center, nod.semi * growth)
        if nod.kind == "ground_glass":
            hu[inside] = nod.hu
        elif nod.kind == "part_solid":
            hu[inside] = -560.0
            hu[_ellipsoid(xs, ys, zs, nod.center, 0.5 * nod.semi * growth)] = nod.hu
        else:
            hu[inside] = nod.hu
        mask[inside] = 1
    return hu, mask


def _scan(p: _Patient, study: int, seed: int, sites: tuple[Site, ...] = SITES
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Site]:
    """One study of a patient on its site's grid: (HU int16 [X,Y,Z], mask uint8 [X,Y,Z], RAS affine, site)."""
    site = sites[p.studies[study]]
    r = _rng(seed, 3, p.index, study)
    shift = r.uniform(-8, 8, size=3) if study else np.zeros(3)  # repositioned patient at follow-up
    growth = _growth(study)
    spacing = np.array([site.pixel_mm, site.pixel_mm, site.slice_mm])
    n = np.array([site.n, site.n, site.n_slices])
    flips = np.array(site.flips, dtype=float)
    origin = -flips * spacing * (n - 1) / 2  # field centred on the isocentre
    axes = [origin[d] + flips[d] * spacing[d] * np.arange(n[d]) - shift[d] for d in range(3)]
    xs, ys, zs = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    hu, mask = _render(p, xs, ys, zs, growth)
    if p.nodules and not mask.any():
        raise RuntimeError("a nodule fell outside the field; the cohort plan is inconsistent")
    from scipy.ndimage import gaussian_filter  # scipy and nibabel load here, so --help answers at once

    hu = gaussian_filter(hu, sigma=(0.7, 0.7, 0.5))  # partial volume / scanner blur
    noise = gaussian_filter(r.standard_normal(hu.shape, dtype=np.float32), sigma=0.6)
    hu += noise * (site.noise_hu / noise.std())
    affine = np.diag([*(flips * spacing), 1.0])
    affine[:3, 3] = origin
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), mask, affine, site


def _write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    # gzip with mtime 0 so the bytes depend only on the content (nibabel stamps the current time)
    path.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))


def _write_dicom_series(folder: Path, hu: np.ndarray, affine: np.ndarray, site: Site, p: _Patient,
                        study: int, uids: dict[str, str], seed: int) -> None:
    """Write ``hu`` [X,Y,Z] (RAS affine with flips -1,-1,+1, i.e. LPS voxel order) as one file per slice."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    r = _rng(seed, 4, p.index, study)
    date = (np.datetime64("2021-01-04") + int(r.integers(0, 700)) + 365 * study).astype(str).replace("-", "")
    lps_origin = np.array([-affine[0, 3], -affine[1, 3], affine[2, 3]])
    sx, sz = abs(affine[0, 0]), affine[2, 2]
    pid = f"{p.index + 1:04d}"
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid(entropy_srcs=[f"medres-demo-{seed}-{p.index}-{study}-{k}"])
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
        ds.FrameOfReferenceUID = uids["frame"]
        ds.Modality, ds.Manufacturer, ds.ManufacturerModelName = "CT", site.manufacturer, site.model
        ds.InstitutionName = "Demo Hospital"
        ds.PatientName, ds.PatientID = f"DEMO^{pid}", f"DEMO{pid}"
        ds.PatientBirthDate = f"{int(date[:4]) - p.age}0101"
        ds.PatientSex, ds.PatientAge = p.sex, f"{p.age + study:03d}Y"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = "093000"
        ds.AccessionNumber = f"ACC{pid}{study + 1}"
        ds.ReferringPhysicianName = "DEMO^REFERRER"
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = str(study + 1), 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        # what the CT IOD asks and dciodvfy checks (PS3.3 C.7.3.1, C.7.4.1, C.8.2.1): a chest is unpaired, so
        # no Laterality; the Type 2 position reference may be empty
        ds.BodyPartExamined, ds.PatientPosition, ds.PositionReferenceIndicator = "CHEST", "HFS", ""
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [float(v) for v in lps_origin + np.array([0.0, 0.0, k * sz])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = float(lps_origin[2] + k * sz)
        ds.PixelSpacing = [sx, sx]
        ds.SliceThickness = sz
        ds.KVP, ds.ConvolutionKernel = 120, "STANDARD"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = -600, 1500
        ds.PixelData = (hu[:, :, k].T.astype(np.int32) + 1024).astype("<u2").tobytes()  # rows = Y, cols = X
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)


def _is_complete(out: Path, n_patients: int, seed: int, grid: str = "coarse",
                 grid_scale: float = 1.0) -> bool:
    try:
        stamp = json.loads((out / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    if (stamp.get("version"), stamp.get("n_patients"), stamp.get("seed")) != (DEMO_VERSION, n_patients, seed):
        return False
    if (stamp.get("grid", "coarse"), float(stamp.get("grid_scale", 1.0))) != (grid, float(grid_scale)):
        return False
    return all((out / f).exists() for f in stamp.get("files", []))


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _scan_job(job: tuple[_Patient, int, int, tuple[Site, ...]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Site]:
    return _scan(*job)


def generate_demo(out: str | os.PathLike[str], *, n_patients: int = 100, seed: int = 0, grid: str = "coarse",
                  grid_scale: float = 1.0, workers: int = 1, progress: bool = False) -> Path:
    """Write the demo cohort under ``out`` and return the path of its ``manifest.csv``.

    ``grid``: ``coarse`` (the 240 mm cube at 3-6 mm, the shipped configs) or ``fullres`` (0.7-0.9 mm
    pixels, 1.25-2 mm slices: ``configs/ct_chest_fullres.yaml``), see :func:`demo_sites`; patients,
    anatomy and nodule quotas do not depend on the grid. ``workers`` > 1 renders scans in that many
    processes (the output is the same). ``progress``: show the scans written (medres.progress).

    Reuses ``out`` when it already holds a complete cohort for the same ``n_patients`` and ``seed``.
    Writing goes to a sibling temporary folder renamed into place at the end, so an interrupted or
    concurrent generation never leaves a half-written cohort behind.
    """
    out = Path(out)
    if n_patients < 4:
        raise DataError(f"the demo cohort needs at least 4 patients, got {n_patients}", path=out,
                        hint="use --n-patients 4 or more")
    sites = demo_sites(grid, grid_scale)
    if _is_complete(out, n_patients, seed, grid, grid_scale):
        return out / "manifest.csv"
    written_files(out)  # refused now, before generating, when the folder holds what the demo did not write
    tmp = partial_folder(out)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rows, files = [], []
    from pydicom.uid import generate_uid

    jobs = [(p, study, seed, sites) for p in _plan(n_patients, seed) for study in range(len(p.studies))]
    pool = ProcessPoolExecutor(min(workers, len(jobs))) if workers > 1 else None
    scans = pool.map(_scan_job, jobs) if pool is not None else map(_scan_job, jobs)
    from medres.progress import track

    shown = track(zip(jobs, scans), desc=f"demo cohort: writing {out.name}", total=len(jobs), unit="scans",
                  progress=progress)
    for (p, study, _, _), (hu, mask, affine, site) in shown:
        case = f"P{p.index + 1:04d}_S{study + 1}"
        uids = {k: str(generate_uid(entropy_srcs=[f"medres-demo-{seed}-{p.index}-{study}-{k}"]))
                for k in ("study", "series", "frame")}
        if site.fmt == "dicom":
            image = f"images/{case}"
            _write_dicom_series(tmp / image, hu, affine, site, p, study, uids, seed)
            files += [f"{image}/IM{k + 1:04d}.dcm" for k in range(hu.shape[2])]
        else:
            image = f"images/{case}.nii.gz"
            _write_nifti(tmp / image, hu, affine)
            files.append(image)
        mask_path = f"masks/{case}.nii.gz"
        _write_nifti(tmp / mask_path, mask, affine)
        files.append(mask_path)
        rows.append({"case_id": case, "patient_id": f"P{p.index + 1:04d}", "study_uid": uids["study"],
                     "image": image, "mask": mask_path, "label": "nodule" if p.nodules else "normal",
                     "site": site.name, "scanner": site.scanner, "sex": p.sex, "age": str(p.age + study),
                     "nodule_diameter_mm": _cell(nodule_diameter_mm(p, study))})
    with open(tmp / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    files.append("manifest.csv")
    if pool is not None:
        pool.shutdown()
    stamp = {"version": DEMO_VERSION, "n_patients": n_patients, "seed": seed, "n_scans": len(rows),
             "files": files}
    if (grid, float(grid_scale)) != ("coarse", 1.0):  # a coarse cohort's stamp stays as it was
        stamp.update(grid=grid, grid_scale=float(grid_scale))
    (tmp / _STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    if _is_complete(out, n_patients, seed, grid, grid_scale):  # a concurrent generation finished first
        shutil.rmtree(tmp)  # our own temporary folder
    else:  # an older demo cohort (other seed/size/version), only its own files, is replaced
        replace_folder(out, tmp)
    return out / "manifest.csv"
