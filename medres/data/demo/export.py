"""The demo cohort in the shape of a hospital export: ``python -m medres.data.demo --out X --layout export``.

Writes the built-in demo cohort (:func:`medres.data.demo.generate_demo`, same patients, voxels and
labels) as a PACS export would deliver it::

    X/export/DEMO^0001/20210104_ACC00011/1_SCOUT/<SOP Instance UID>         (no extension)
                                        /2_AXIAL/<...>                      the scan (original grid, HU)
                                        /3_AXIAL_THICK/<...>                pairs of slices averaged
                                        /4_CORONAL_MPR/<...>                DERIVED reformat
                                        /90_SEG/<...> or /90_RTSTRUCT/<...> the annotation
    X/labels.csv                        AccessionNumber,label,site

Every study holds a localizer, the axial series, a thick-slice and a coronal reformat series; the first
study's axial series is split over two folders (``2_AXIAL`` and ``2_AXIAL_cont``); annotations are
DICOM SEG (highdicom) for sites ``site_a`` and ``site_c`` and RTSTRUCT for ``site_b`` (a nodule-free
scan has an annotation with an empty segment / ROI: an annotated negative, as the built-in all-zero
masks). Patient-named folders, names, ids, dates and an institution are there on purpose, so privacy
checks have something to find. ``python -m medres.data.index X/export --out X/indexed --labels
X/labels.csv`` then gives a manifest whose images and masks equal the built-in cohort's voxel for voxel.
"""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from medres.errors import DataError
from medres.files import check_output

__all__ = ["generate_export"]

_LPS = np.diag([-1.0, -1.0, 1.0])
_SEG_SITES = ("site_a", "site_c")


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["medres-demo-export", *map(str, parts)]))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _write_plane_series(folder: Path, planes: list[np.ndarray], origins: list[np.ndarray],
                        row_dir: np.ndarray, col_dir: np.ndarray, spacing: tuple[float, float],
                        thickness: float, common: dict, series: dict, image_type: list[str]) -> list[Path]:
    """Write 2D planes ``[cols, rows]`` (first axis along ``row_dir``) as CT slices; LPS geometry."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (plane, origin) in enumerate(zip(planes, origins)):
        sop = _uid(series["uid"], k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        for key, value in common.items():
            setattr(ds, key, value)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.SeriesInstanceUID, ds.SeriesNumber = series["uid"], series["number"]
        ds.SeriesDescription, ds.InstanceNumber = series["description"], k + 1
        ds.ImageType = image_type
        # what the CT IOD asks and dciodvfy checks (PS3.3 C.7.3.1, C.7.4.1, C.8.2.1): a chest is unpaired, so
        # no Laterality; the Type 2 position reference may be empty
        ds.BodyPartExamined, ds.PatientPosition, ds.PositionReferenceIndicator = "CHEST", "HFS", ""
        ds.AcquisitionNumber = 1
        ds.ImagePositionPatient = [round(float(v), 4) for v in origin]
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [round(spacing[0], 6), round(spacing[1], 6)]  # between rows, between columns
        ds.SliceThickness = round(thickness, 4)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape[1], plane.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        if "LOCALIZER" not in image_type:  # a localizer's values are not HU (PS3.3 C.8.2.1.1.7)
            ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(np.round(plane).T).astype("<i2").tobytes()
        path = folder / sop
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _study(study_dir: Path, hu: np.ndarray, mask: np.ndarray, affine: np.ndarray, common: dict, site: str,
           ids: tuple, split: bool) -> None:
    lin = affine[:3, :3]
    lps = _LPS @ lin
    di, dj, dk = (_unit(lps[:, a]) for a in range(3))
    si, sj, sk = (float(np.linalg.norm(lin[:, a])) for a in range(3))
    o = _LPS @ affine[:3, 3]
    nx, ny, nz = hu.shape
    axial = {"uid": _uid(*ids, "axial"), "number": 2, "description": "AXIAL"}
    planes = [hu[:, :, k] for k in range(nz)]
    origins = [o + k * sk * dk for k in range(nz)]
    files = _write_plane_series(study_dir / "2_AXIAL", planes, origins, di, dj, (sj, si), sk, common, axial,
                                ["ORIGINAL", "PRIMARY", "AXIAL"])
    if split:  # the second half of the axial series lands in another folder, as some exports do
        (study_dir / "2_AXIAL_cont").mkdir()
        for p in files[nz // 2:]:
            shutil.move(p, study_dir / "2_AXIAL_cont" / p.name)
        files = files[: nz // 2] + [study_dir / "2_AXIAL_cont" / p.name for p in files[nz // 2:]]
    thick = {"uid": _uid(*ids, "thick"), "number": 3, "description": "AXIAL THICK"}
    pairs = range(0, nz - 1, 2)
    _write_plane_series(study_dir / "3_AXIAL_THICK", [(hu[:, :, k] + hu[:, :, k + 1]) / 2 for k in pairs],
                        [o + (k + 0.5) * sk * dk for k in pairs], di, dj, (sj, si), 2 * sk, common, thick,
                        ["ORIGINAL", "PRIMARY", "AXIAL"])
    coronal = {"uid": _uid(*ids, "coronal"), "number": 4, "description": "CORONAL MPR"}
    rows_j = range(0, ny, 2)
    _write_plane_series(study_dir / "4_CORONAL_MPR", [hu[:, j, :] for j in rows_j],
                        [o + j * sj * dj for j in rows_j], di, dk, (sk, si), 2 * sj, common, coronal,
                        ["DERIVED", "SECONDARY", "REFORMATTED"])
    scout = {"uid": _uid(*ids, "scout"), "number": 1, "description": "SCOUT"}
    _write_plane_series(study_dir / "1_SCOUT", [hu.mean(axis=1)], [o], di, dk, (sk, si), float(ny * sj),
                        common, scout, ["ORIGINAL", "PRIMARY", "LOCALIZER"])
    labels = ["background", "nodule"]
    if site in _SEG_SITES:
        from medres import __version__
        from medres.data.dicom_objects.seg_write import write_dicom_seg

        (study_dir / "90_SEG").mkdir()
        write_dicom_seg(mask.astype(np.uint8), files, labels, study_dir / "90_SEG" / _uid(*ids, "seg"),
                        algorithm_version=str(__version__), model_hash="demo-ground-truth",
                        series_description="nodule annotation")
    else:
        from medres.data.dicom_objects.annotations import write_rtstruct

        with tempfile.TemporaryDirectory() as tmp:  # the writer reads the source series from one folder
            for p in files:
                os.symlink(p.absolute(), Path(tmp) / p.name)
            (study_dir / "90_RTSTRUCT").mkdir()
            write_rtstruct(mask.astype(np.uint8), tmp, labels, study_dir / "90_RTSTRUCT" / _uid(*ids, "rs"),
                           include_empty=True)


def generate_export(manifest: str | os.PathLike[str], out: str | os.PathLike[str], *, seed: int = 0,
                    progress: bool = False) -> Path:
    """Write ``out/export/`` (the built-in demo cohort of ``manifest``, from
    :func:`medres.data.demo.generate_demo`, as a hospital export) and ``out/labels.csv``; returns the
    labels file. ``python -m medres.data.demo --layout export`` puts the built-in cohort in
    ``out/builtin``. ``progress``: show the studies written (medres.progress)."""
    from medres.data.readers.io import load_image

    out, manifest = Path(out), Path(manifest)
    export = out / "export"
    if export.exists() or export.is_symlink():
        raise DataError("already holds an export; medres will not overwrite it", path=export,
                        hint="choose a new --out folder or delete the old export")
    if (out / "labels.csv").exists() or (out / "labels.csv").is_symlink():
        raise DataError("already holds a labels.csv; medres will not overwrite it", path=out / "labels.csv",
                        hint="choose a new --out folder")
    check_output(export, inputs={"demo cohort": manifest.parent}, what="export folder")
    with open(manifest, newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = []
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export.partial-", dir=out))  # new and ours
    from medres.progress import track

    shown = track(rows, desc="demo export: writing studies", unit="studies", progress=progress)
    for n, row in enumerate(shown):
        image = load_image(manifest.parent / row["image"])
        mask = np.asarray(load_image(manifest.parent / row["mask"]), dtype=np.uint8)
        hu, affine = np.asarray(image, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)
        pid = row["patient_id"].removeprefix("P")
        study = int(row["case_id"].rsplit("_S", 1)[1])
        accession = f"ACC{pid}{study}"
        date = f"{2021 + study}01{(int(pid) % 27) + 1:02d}"
        common = {"PatientName": f"DEMO^{pid}", "PatientID": f"DEMO{pid}", "PatientBirthDate": "19600101",
                  "PatientSex": row["sex"], "StudyDate": date, "SeriesDate": date, "StudyTime": "093000",
                  "AccessionNumber": accession, "StudyInstanceUID": _uid(seed, row["case_id"], "study"),
                  "FrameOfReferenceUID": _uid(seed, row["case_id"], "frame"), "StudyID": str(study),
                  "Modality": "CT", "Manufacturer": row["scanner"].split(" ")[0],
                  "InstitutionName": "Demo Hospital", "ReferringPhysicianName": "DEMO^REFERRER",
                  "KVP": 120, "ConvolutionKernel": "STANDARD"}
        study_dir = tmp / f"DEMO^{pid}" / f"{date}_{accession}"
        _study(study_dir, hu, mask, affine, common, row["site"], (seed, row["case_id"]), split=n == 0)
        labels.append({"AccessionNumber": accession, "label": row["label"], "site": row["site"]})
    with open(tmp / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["AccessionNumber", "label", "site"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(labels)
    os.replace(tmp / "labels.csv", out / "labels.csv")
    os.replace(tmp, export)
    return out / "labels.csv"
