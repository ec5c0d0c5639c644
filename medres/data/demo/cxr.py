"""The chest X-ray demo cohort: deterministic synthetic PA chest radiographs with lung and opacity masks.

``generate_cxr_demo(out, n_patients=150, seed=0)`` writes about ``1.2 * n_patients`` posterior-anterior
chest radiographs (a fifth of the patients have a follow-up) from three sites whose detectors store
them differently, as real cohorts do:

- ``site_a`` — CR, MONOCHROME1 (low stored value = white), 12 bits stored, a VOI LUT Sequence (16-bit
  table) and no window tags, PixelSpacing 0.6 mm, 636 x 636;
- ``site_b`` — DX, MONOCHROME2, 12 bits stored in 16 with junk in the 4 unused high bits (as old overlay
  planes leave them), WindowCenter/WindowWidth (LINEAR), ImagerPixelSpacing 0.825 mm with
  EstimatedRadiographicMagnificationFactor 1.1 (0.75 mm in the patient) and no PixelSpacing, 508 x 508;
- ``site_c`` — an 8-bit PNG export (already windowed), 1.0 mm per pixel given in the manifest's
  ``pixel_spacing`` column, 382 x 382.

Every image covers the same 381 mm field (centre to centre of its edge pixels), shown as radiologists
read a PA film (PatientOrientation
``L\\F``: the patient's right on the image's left, head up). Anatomy in projected density (0 = air,
1 = dense bone): soft tissue of the trunk, two lungs with vessel texture, the heart shadow, mediastinum
and spine, ribs, clavicles and the diaphragm domes. A third of the patients (exact quota) have a focal
opacity of radius 15-40 mm and varying contrast in a lung, a fifth of them a second one; follow-ups keep
the opacity (grown 10%). Masks are PNG label maps on each image's pixel grid: 0 background, 1 lung,
2 opacity (opacity drawn over lung). Labels ``normal`` / ``opacity``; sex, age, view (PA), site, scanner.
DICOM files carry made-up patient fields (``DEMO^0001``) so privacy tests have something to find.

``generate_cxr_demo(out, findings=True)`` (``--kind cxr_findings``) writes the findings variant: the
same patients, sites and opacity quota, and beside them, independently and co-occurring, a pleural
effusion (a dense meniscus filling the lateral lung base, one or both sides, 25-90 mm high) in a third of
the patients and cardiomegaly (cardiothoracic ratio > 0.5) in a third. Its manifest adds 0/1 columns
``opacity``, ``effusion``, ``cardiomegaly`` and the number ``ctr`` (max horizontal heart width / max inner
thoracic width, from the generator's geometry in the PA projection); a few ``effusion`` cells are blank
(unknown) and a few ``-1`` (uncertain, CheXpert style); follow-ups keep the findings. Its mask's lung (1)
is the aerated lung. Its extra randomness comes from separate streams, so the plain cohort's bytes
do not depend on it.

Output is byte-identical for a given (n_patients, seed, findings); a folder holding the same cohort is
reused.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from medres.data.demo.folder import partial_folder, replace_folder, written_files
from medres.errors import DataError

__all__ = ["generate_cxr_demo", "CXR_DEMO_VERSION", "CXR_FINDINGS_VERSION", "CXR_SITES", "FIELD_MM",
           "FINDINGS_COLUMNS", "cardiothoracic_ratio"]

CXR_DEMO_VERSION = 1
CXR_FINDINGS_VERSION = 1  # the findings variant's own version: bumping it leaves the plain cohort alone
FIELD_MM = 381.0  # (n - 1) x pixel size at every site: 128 pixels of 3 mm after resampling
_STAMP = "demo_cohort.json"
MANIFEST_COLUMNS = ["case_id", "patient_id", "image", "mask", "label", "site", "scanner", "sex", "age",
                    "view", "pixel_spacing"]
FINDINGS_COLUMNS = ["opacity", "effusion", "cardiomegaly", "ctr"]
# the PA projection's geometry (mm at scale 1): the lung ellipses (centre x per side, centre y, semi-axes)
# and the heart ellipse (its x semi-axis times the patient's heart width factor)
_LUNG_CX = (-78.0, 80.0)
_LUNG_CY, _LUNG_AX, _LUNG_AY = -10.0, 60.0, 125.0
_HEART_CX, _HEART_CY, _HEART_AX, _HEART_AY = 22.0, 55.0, 68.0, 52.0
_CARDIOMEGALY_CTR = 0.5
_FLUID = 0.44  # pleural fluid's projected density: soft tissue, between the trunk (0.42) and heart (0.5)


@dataclass(frozen=True)
class CxrSite:
    name: str
    manufacturer: str
    model: str
    fmt: str  # "cr_mono1_voilut", "dx_mono2_window", "png8"
    n: int  # pixels per side
    pixel_mm: float  # pixel spacing in the patient
    noise: float  # in density units
    contrast: float  # detector/processing contrast
    blur_mm: float

    @property
    def scanner(self) -> str:
        return f"{self.manufacturer} {self.model}"


CXR_SITES = (
    CxrSite("site_a", "Acme Medical", "Lumen CR", "cr_mono1_voilut", 636, 0.6, 0.020, 1.0, 0.9),
    CxrSite("site_b", "Nordlys Imaging", "Aurora DR", "dx_mono2_window", 508, 0.75, 0.028, 0.9, 0.7),
    CxrSite("site_c", "Helix Systems", "Export PNG", "png8", 382, 1.0, 0.015, 1.1, 1.2),
)
_MAGNIFICATION = 1.1  # site_b: ImagerPixelSpacing = pixel spacing in the patient x magnification


@dataclass
class _Opacity:
    centre: tuple[float, float]  # (x, y) mm
    semi: tuple[float, float]
    angle: float
    contrast: float


@dataclass
class _Patient:
    index: int
    sex: str
    age: int
    scale: float
    shift: tuple[float, float]
    heart: float  # heart width factor
    opacities: list[_Opacity]
    studies: list[int]
    effusion: tuple[float, float] = (0.0, 0.0)  # fluid height (mm) in the right, left pleural space; 0: none


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, 13, *key])


def _lungs(x: np.ndarray, y: np.ndarray, p: _Patient) -> tuple[np.ndarray, np.ndarray]:
    """Right and left lung fields (bool [rows, cols]); x to the patient's left, y to the feet (mm)."""
    s = p.scale
    out = []
    for side, cx in zip((-1, 1), _LUNG_CX):
        cx, cy = cx * s, _LUNG_CY * s
        ax, ay = _LUNG_AX * s, _LUNG_AY * s
        ell = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0
        # diaphragm dome: the lung ends above a parabola (the right dome sits higher)
        dome = (85.0 if side < 0 else 95.0) * s + 0.006 * (x - cx) ** 2
        out.append(ell & (y < dome) & (side * x > 18.0 * s))
    return out[0], out[1]


def _heart(x: np.ndarray, y: np.ndarray, p: _Patient) -> np.ndarray:
    s = p.scale
    u, v = (x - _HEART_CX * s) / (_HEART_AX * s * p.heart), (y - _HEART_CY * s) / (_HEART_AY * s)
    return u ** 2 + v ** 2 <= 1.0


def cardiothoracic_ratio(heart: float) -> float:
    """Max horizontal heart width / max inner thoracic width (between the lungs' lateral margins) of a
    demo radiograph with heart width factor ``heart``; the patient's scale cancels."""
    thorax = (_LUNG_CX[1] + _LUNG_AX) - (_LUNG_CX[0] - _LUNG_AX)  # both lungs are widest at the same row
    return 2.0 * _HEART_AX * heart / thorax


def _fluid(x: np.ndarray, y: np.ndarray, p: _Patient, right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """How much of each pixel is pleural fluid (float [rows, cols] in [0, 1]): a meniscus resting on the
    lung's lower margin, thicker toward the lateral chest wall (the blunted costophrenic angle)."""
    s = p.scale
    out = np.zeros(np.broadcast_shapes(x.shape, y.shape), dtype=np.float32)
    for side, cx, lung, height in zip((-1, 1), _LUNG_CX, (right, left), p.effusion):
        if height <= 0:
            continue
        cx, ax = cx * s, _LUNG_AX * s
        lateral = np.clip(side * (x - cx) / ax, -1.0, 1.0)  # -1 medial margin, 0 centre, 1 lateral wall
        ellipse_floor = _LUNG_CY * s + _LUNG_AY * s * np.sqrt(np.maximum(1.0 - lateral ** 2, 0.0))
        dome = (85.0 if side < 0 else 95.0) * s + 0.006 * (x - cx) ** 2
        floor = np.minimum(ellipse_floor, dome)  # the lung's lower margin in this column
        top = floor - height * (0.3 + 0.7 * np.clip((lateral + 0.3) / 1.3, 0.0, 1.0) ** 2)
        out = np.maximum(out, np.clip((y - top) / 6.0 + 0.5, 0.0, 1.0) * lung)
    return out


def _plan(n_patients: int, seed: int, findings: bool = False) -> list[_Patient]:
    """Every patient's anatomy, opacities and studies. ``findings``: also effusion and a spread heart size,
    drawn from their own streams (keys 21, 22) so that the plain plan's draws are untouched."""
    g = _rng(seed, 1)
    quota = _findings_quota(n_patients, seed) if findings else None
    n_op = max(1, round(n_patients / 3))
    op_ids = set(g.permutation(n_patients)[:n_op].tolist())
    follow = set(g.permutation(n_patients)[:max(1, round(n_patients / 5))].tolist())
    site_of = [int(v) for v in g.permutation(np.arange(n_patients) % len(CXR_SITES))]
    patients = []
    grid = np.linspace(-FIELD_MM / 2, FIELD_MM / 2, 193)
    x, y = np.meshgrid(grid, grid)
    for i in range(n_patients):
        r = _rng(seed, 2, i)
        sex = "M" if r.random() < 0.5 else "F"
        p = _Patient(i, sex, int(r.integers(25, 90)), (1.0 if sex == "M" else 0.93) * r.uniform(0.95, 1.05),
                     (float(r.uniform(-10, 10)), float(r.uniform(-10, 10))), float(r.uniform(0.9, 1.15)), [],
                     [site_of[i]])
        if quota is not None:
            _add_findings(p, *quota, seed)
        if i in op_ids:
            right, left = _lungs(x, y, p)
            lung = (right | left) & ~_heart(x, y, p)
            if findings:
                lung &= _fluid(x, y, p, right, left) < 0.5  # opacities sit in aerated lung
            pts = np.argwhere(lung)
            for k in range(2 if r.random() < 0.2 else 1):
                radius = r.uniform(15.0, 40.0) if k == 0 else r.uniform(12.0, 22.0)
                yy, xx = pts[int(r.integers(len(pts)))]
                p.opacities.append(_Opacity((float(grid[xx]), float(grid[yy])),
                                            (radius * r.uniform(0.8, 1.2), radius * r.uniform(0.8, 1.2)),
                                            float(r.uniform(0, np.pi)), float(r.uniform(0.12, 0.32))))
        if i in follow:
            p.studies.append(site_of[i] if r.random() < 0.6 else int(r.integers(len(CXR_SITES))))
        patients.append(p)
    return patients


def _findings_quota(n_patients: int, seed: int) -> tuple[set[int], set[int]]:
    """Patients with an effusion and with cardiomegaly: a third each (exact quotas), drawn independently
    of each other and of the opacity quota, so the findings co-occur by chance."""
    g = _rng(seed, 21)
    n = max(1, round(n_patients / 3))
    return set(g.permutation(n_patients)[:n].tolist()), set(g.permutation(n_patients)[:n].tolist())


def _add_findings(p: _Patient, effusion_ids: set[int], enlarged_ids: set[int], seed: int) -> None:
    r = _rng(seed, 22, p.index)
    # the heart width factor spread so that the CTR, not the factor, decides cardiomegaly (> 0.5)
    ctr = r.uniform(0.51, 0.66) if p.index in enlarged_ids else r.uniform(0.38, 0.495)
    p.heart = float(ctr / cardiothoracic_ratio(1.0))
    sides = r.choice(3, p=[0.4, 0.3, 0.3])  # right, left, both
    heights = np.exp(r.uniform(np.log(25.0), np.log(90.0), 2))  # mm: small ones are subtle
    if p.index in effusion_ids:
        p.effusion = (float(heights[0] * (sides != 1)), float(heights[1] * (sides != 0)))


def _render(p: _Patient, study: int, site: CxrSite, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Display density in [0, 1] (float32 [rows, cols], 1 = white) and the label map (uint8)."""
    r = _rng(seed, 3, p.index, study)
    n, mm = site.n, site.pixel_mm
    c = ((np.arange(n) - (n - 1) / 2) * mm).astype(np.float32)
    shift = np.asarray(p.shift) + (r.uniform(-6, 6, 2) if study else 0.0)
    x = (c - np.float32(shift[0]))[None, :]  # [1, cols]: toward the patient's left
    y = (c - np.float32(shift[1]))[:, None]  # [rows, 1]: toward the feet
    s = np.float32(p.scale)
    trunk = ((x / (168.0 * s)) ** 2 + ((y - 40.0) / (300.0 * s)) ** 2 <= 1.0) & (y > -175.0 * s)
    neck = (np.abs(x) < 45.0 * s) & (y <= -150.0 * s)
    d = np.where(trunk | neck, np.float32(0.42), np.float32(0.04)).astype(np.float32)
    right, left = _lungs(x, y, p)
    lungs = right | left
    texture = gaussian_filter(r.standard_normal((n, n)).astype(np.float32), sigma=2.5 / mm)
    texture *= 0.045 / max(float(texture.std()), 1e-6)
    hila = np.float32(0.04) * (np.abs(x) < 45.0 * s)
    d = np.where(lungs, 0.16 + texture + hila, d)
    aerated = lungs
    if any(p.effusion):  # only the findings variant: the plain cohort's arithmetic stays as it was
        fluid = _fluid(x, y, p, right, left)
        d += fluid * (np.float32(_FLUID) - d)
        aerated = lungs & (fluid < 0.5)  # what the mask calls lung
    heart = _heart(x, y, p)
    d = np.where(heart, np.maximum(d, np.float32(0.5)), d)
    d += np.float32(0.12) * ((np.abs(x) < 20.0 * s) & (y > -170.0 * s) & trunk)  # mediastinum and spine
    below = trunk & (y > 95.0 * s + 0.006 * (x - np.sign(x) * 79.0 * s) ** 2) & ~lungs
    d += np.float32(0.1) * below  # abdomen below the domes
    # posterior ribs: nine curved bands across each hemithorax (one pass: distance to the nearest rib)
    t = (y + 120.0 * s - 0.0045 * (np.abs(x) - 30.0) ** 2) / (27.0 * s)
    k = np.rint(t)
    ribs = (np.abs(t - k) * 27.0 * s < 5.0 * s) & (k >= 0) & (k <= 8) & (np.abs(x) > 20.0 * s) \
        & (np.abs(x) < 150.0 * s) & trunk
    d += np.float32(0.07) * ribs
    ax = np.abs(x)  # clavicles
    tc = np.clip((ax - 15.0) / 125.0, 0, 1)
    clavicles = (np.abs(y + 135.0 * s + 18.0 * tc * s) < 7.0 * s) & (ax > 15.0) & (ax < 145.0 * s)
    d += np.float32(0.12) * clavicles
    field = aerated & ~heart
    label = field.astype(np.uint8)
    growth = 1.0 + 0.1 * study
    for op in p.opacities:
        ca, sa = np.cos(op.angle), np.sin(op.angle)
        dx, dy = x - op.centre[0], y - op.centre[1]
        u, v = (dx * ca + dy * sa) / (op.semi[0] * growth), (-dx * sa + dy * ca) / (op.semi[1] * growth)
        rho = u ** 2 + v ** 2
        d += (op.contrast * np.clip(1.25 - rho, 0, 1) ** 0.7 * field).astype(np.float32)
        label[(rho <= 1.0) & field] = 2
    d = gaussian_filter(d, sigma=site.blur_mm / mm)
    d = 0.5 + site.contrast * (d - 0.5)
    d += gaussian_filter(r.standard_normal((n, n)).astype(np.float32), 0.7) * np.float32(site.noise * 2.2)
    return np.clip(d, 0.0, 1.0).astype(np.float32), label


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _write_dicom(path: Path, density: np.ndarray, site: CxrSite, p: _Patient, study: int, seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr = site.fmt == "cr_mono1_voilut"
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if cr else "1.2.840.10008.5.1.4.1.1.1.1"
    key = f"medres-cxr-{seed}-{p.index}-{study}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[key, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, "series"])
    ds.Modality = "CR" if cr else "DX"
    ds.Manufacturer, ds.ManufacturerModelName = site.manufacturer, site.model
    ds.InstitutionName = "Demo Hospital"
    pid = f"{p.index + 1:04d}"
    ds.PatientName, ds.PatientID = f"DEMO^{pid}", f"DEMO{pid}"
    ds.PatientSex, ds.PatientAge = p.sex, f"{p.age + study:03d}Y"
    ds.StudyDate = ds.ContentDate = f"{2022 + study}0{1 + p.index % 9}1{p.index % 10}"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = density.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if cr:  # MONOCHROME1: low stored value = white; a VOI LUT Sequence maps stored values to display
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.PresentationLUTShape = "INVERSE"
        stored = np.rint(300 + 3400 * (1.0 - density)).astype(np.uint16)
        ds.PixelSpacing = [site.pixel_mm, site.pixel_mm]
        ds.ImagerPixelSpacing = [site.pixel_mm * 1.08, site.pixel_mm * 1.08]
        entries = np.arange(4096, dtype=np.float64)
        curve = 1.0 / (1.0 + np.exp(-(entries - 2000.0) / 700.0))  # a vendor's film-like S curve
        curve = (curve - curve[0]) / (curve[-1] - curve[0])
        item = Dataset()
        item.add_new("LUTDescriptor", "US", [4096, 0, 16])
        item.LUTExplanation = "DEMO S-CURVE"
        item.add_new("LUTData", "US", [int(v) for v in np.rint(curve * 65535)])
        ds.VOILUTSequence = Sequence([item])
        ds.PresentationIntentType = "FOR PRESENTATION"
    else:  # MONOCHROME2 12-bit with windows; junk in the unused high bits
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PresentationLUTShape = "IDENTITY"
        stored = np.rint(200 + 3600 * density).astype(np.uint16)
        junk = (_rng(seed, 5, p.index, study).random(density.shape) < 0.02).astype(np.uint16) << 13
        stored = stored | junk
        ds.ImagerPixelSpacing = [site.pixel_mm * _MAGNIFICATION, site.pixel_mm * _MAGNIFICATION]
        ds.EstimatedRadiographicMagnificationFactor = _MAGNIFICATION
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.WindowCenter, ds.WindowWidth = [2000, 1800], [3600, 2000]
        ds.WindowCenterWidthExplanation = ["DEFAULT", "BONE"]
        ds.VOILUTFunction = "LINEAR"
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _kind_version(findings: bool) -> tuple[str, int]:
    return ("cxr_findings", CXR_FINDINGS_VERSION) if findings else ("cxr", CXR_DEMO_VERSION)


def _is_complete(out: Path, n_patients: int, seed: int, findings: bool = False) -> bool:
    try:
        stamp = json.loads((out / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    if (stamp.get("kind"), stamp.get("version"), stamp.get("n_patients"), stamp.get("seed")) != (
            *_kind_version(findings), n_patients, seed):
        return False
    return all((out / f).exists() for f in stamp.get("files", []))


def _findings_cells(p: _Patient, study: int, unlabelled: dict[tuple[int, int], str]) -> dict[str, str]:
    effusion = "1" if any(p.effusion) else "0"
    ctr = cardiothoracic_ratio(p.heart)
    return {"opacity": "1" if p.opacities else "0", "effusion": unlabelled.get((p.index, study), effusion),
            "cardiomegaly": "1" if ctr > _CARDIOMEGALY_CTR else "0", "ctr": f"{ctr:.4f}"}


def _unlabelled_effusion(plan: list[_Patient], seed: int) -> dict[tuple[int, int], str]:
    """Scans whose ``effusion`` cell is blank (unknown, 3%) or -1 (uncertain, 4%): exact quotas of the
    scans, at least one each, drawn from their own stream (key 23)."""
    scans = [(p.index, study) for p in plan for study in range(len(p.studies))]
    order = _rng(seed, 23).permutation(len(scans))
    n_blank, n_uncertain = max(1, round(0.03 * len(scans))), max(1, round(0.04 * len(scans)))
    cells = {scans[k]: "" for k in order[:n_blank]}
    cells.update({scans[k]: "-1" for k in order[n_blank:n_blank + n_uncertain]})
    return cells


def generate_cxr_demo(out: str | os.PathLike[str], *, n_patients: int = 150, seed: int = 0,
                      findings: bool = False, progress: bool = False) -> Path:
    """Write the chest X-ray demo cohort under ``out``; return its ``manifest.csv`` (reused if complete).
    ``findings``: the variant with effusion, cardiomegaly and the cardiothoracic ratio (module docstring).
    ``progress``: show the patients written (medres.progress)."""
    out = Path(out)
    if n_patients < 6:
        raise DataError(f"the chest X-ray demo needs at least 6 patients, got {n_patients}", path=out,
                        hint="use --n-patients 6 or more")
    if _is_complete(out, n_patients, seed, findings):
        return out / "manifest.csv"
    written_files(out, _STAMP)  # refused now, before generating, when it holds what the demo did not write
    tmp = partial_folder(out)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    rows, files = [], []
    from medres.progress import track

    plan = _plan(n_patients, seed, findings)
    unlabelled = _unlabelled_effusion(plan, seed) if findings else {}
    for p in track(plan, desc=f"demo cohort: writing {out.name}", unit="patients", progress=progress):
        for study, site_index in enumerate(p.studies):
            site = CXR_SITES[site_index]
            density, label = _render(p, study, site, seed)
            case = f"P{p.index + 1:04d}_S{study + 1}"
            if site.fmt == "png8":
                shown = np.clip(density, 0, 1) ** 0.9  # the exporting workstation's own gamma
                image = f"images/{case}.png"
                _write_png(tmp / image, np.rint(shown * 255).astype(np.uint8))
                spacing = f"{site.pixel_mm:g}"
            else:
                image = f"images/{case}.dcm"
                _write_dicom(tmp / image, density, site, p, study, seed)
                spacing = ""
            mask = f"masks/{case}.png"
            _write_png(tmp / mask, label)
            files += [image, mask]
            extra = _findings_cells(p, study, unlabelled) if findings else {}
            rows.append({"case_id": case, "patient_id": f"P{p.index + 1:04d}", "image": image, "mask": mask,
                         "label": "opacity" if p.opacities else "normal", "site": site.name,
                         "scanner": site.scanner, "sex": p.sex, "age": str(p.age + study), "view": "PA",
                         "pixel_spacing": spacing, **extra})
    with open(tmp / "manifest.csv", "w", newline="") as f:
        columns = MANIFEST_COLUMNS + (FINDINGS_COLUMNS if findings else [])
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    files.append("manifest.csv")
    kind, version = _kind_version(findings)
    stamp = {"kind": kind, "version": version, "n_patients": n_patients, "seed": seed,
             "n_scans": len(rows), "files": files}
    (tmp / _STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
    if _is_complete(out, n_patients, seed, findings):
        shutil.rmtree(tmp)  # our own temporary folder
    else:  # an older demo cohort, only its own files, is replaced
        replace_folder(out, tmp, _STAMP)
    return out / "manifest.csv"
