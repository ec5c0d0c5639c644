"""The built-in demo cohort: determinism, manifest, DICOM tags, geometry through medres's loader."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medres.data import load_image, read_manifest
from medres.data.demo.__main__ import main
from medres.data.demo.ct import SITES, _plan, generate_demo
from medres.data.readers.io import check_image_mask
from medres.errors import DataError
from tests.data.annotation_factory import dciodvfy, dciodvfy_errors
from tests.data.demo.digest import content_digest
from tests.data.demo_cohort import N_PATIENTS, demo_manifest  # noqa: F401 - fixture

COLUMNS = ["case_id", "patient_id", "study_uid", "image", "mask", "label", "site", "scanner", "sex", "age",
           "nodule_diameter_mm"]
# Every image and mask of the 4-patient cohort at seed 0 (ct_chest.yaml's out-of-fold results depend on them)
IMAGES_MASKS_SHA256 = "660edf45f5eaabadf9124098f5caa86b8ad2dc8bf3fd5364cb1690d402021ee4"


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_columns_and_content(demo_manifest: Path) -> None:  # noqa: F811
    df = read_manifest(demo_manifest, vocabulary=["normal", "nodule"])  # medres's own validation passes
    assert list(df.columns) == COLUMNS
    assert len(df) == N_PATIENTS + round(N_PATIENTS / 5)  # a fifth of the patients have a follow-up
    assert df["patient_id"].nunique() == N_PATIENTS and df["case_id"].is_unique
    assert set(df["label"]) == {"normal", "nodule"}
    assert set(df["sex"]) <= {"F", "M"} and all(35 <= int(a) <= 86 for a in df["age"])
    assert set(df["site"]) <= {s.name for s in SITES}
    scanners = {s.name: s.scanner for s in SITES}
    assert all(scanners[site] == scanner for site, scanner in zip(df["site"], df["scanner"]))
    assert (df["mask"] != "").all()  # every scan is annotated (normal scans: all-zero masks)
    # a patient's studies share the label (follow-up of the same nodule)
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()


def test_images_and_masks_load_aligned_with_realistic_hu(demo_manifest: Path) -> None:  # noqa: F811
    df = pd.read_csv(demo_manifest, dtype=str)
    root = demo_manifest.parent
    formats = set()
    for row in df.itertuples():
        image, mask = load_image(root / row.image), load_image(root / row.mask)
        check_image_mask(image, mask, labels=[0, 1])  # same shape, spacing, affine; labels 0/1
        formats.add("dicom" if (root / row.image).is_dir() else "nifti")
        hu, m = image.numpy(), mask.numpy() > 0
        assert np.isclose(np.linalg.norm(image.affine[:3, :3].numpy(), axis=0) * hu.shape, 240, atol=1).all()
        assert hu.min() >= -1024 and np.median(hu[:4, :4]) < -950  # air in the corners
        assert (row.label == "nodule") == bool(m.any())
        if m.any():  # nodules: far denser than lung on average (ground-glass about -600 HU)
            assert hu[m].mean() > -700
    assert formats == {"dicom", "nifti"}


def test_nodule_diameter_is_twice_the_largest_semi_axis_and_blank_for_normal_scans(
        demo_manifest: Path) -> None:  # noqa: F811
    df = pd.read_csv(demo_manifest, dtype=str, keep_default_na=False)
    plan = _plan(N_PATIENTS, 0)
    assert (df.loc[df["label"] == "normal", "nodule_diameter_mm"] == "").all()  # unknown, not 0 mm
    nodules = df[df["label"] == "nodule"]
    assert len(nodules) and (nodules["nodule_diameter_mm"] != "").all()
    for row in nodules.itertuples():
        p = plan[int(row.patient_id[1:]) - 1]
        study = int(row.case_id.rsplit("_S", 1)[1]) - 1
        expected = 2 * max(float(n.semi.max()) for n in p.nodules) * (1.15 if study else 1.0)
        assert float(row.nodule_diameter_mm) == pytest.approx(expected, abs=0.005)
        if len(p.nodules) == 1:  # the mask's extent along the ellipsoid's axes agrees to a voxel or two
            mask = load_image(demo_manifest.parent / row.mask)
            spacing = np.linalg.norm(mask.affine[:3, :3].numpy(), axis=0)
            voxels = np.argwhere(mask.numpy() > 0)
            extent = (voxels.max(0) - voxels.min(0) + 1) * spacing
            assert abs(extent.max() - expected) <= 2 * spacing.max(), (row.case_id, extent, expected)


def test_a_cohort_from_before_the_diameter_column_is_regenerated(tmp_path: Path) -> None:
    manifest = generate_demo(tmp_path / "old", n_patients=4, seed=0)
    stamp_path = tmp_path / "old" / "demo_cohort.json"
    stamp = json.loads(stamp_path.read_text())
    stamp["version"] = 2  # as the version without the column wrote it
    stamp_path.write_text(json.dumps(stamp))
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df.drop(columns="nodule_diameter_mm").to_csv(manifest, index=False)
    assert "nodule_diameter_mm" in pd.read_csv(generate_demo(tmp_path / "old", n_patients=4, seed=0)).columns


def test_dicom_series_tags(demo_manifest: Path) -> None:  # noqa: F811
    df = pd.read_csv(demo_manifest, dtype=str)
    row = df[df["site"] == "site_a"].iloc[0]
    files = sorted((demo_manifest.parent / row["image"]).glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    ds = datasets[0]
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage
    assert str(ds.PatientName).startswith("DEMO^") and ds.PatientID.startswith("DEMO")
    assert ds.PatientID != row["patient_id"]  # the manifest uses a pseudonym, not the DICOM id
    assert ds.InstitutionName == "Demo Hospital" and len(ds.StudyDate) == 8
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1 and ds.PixelRepresentation == 0
    assert ds.StudyInstanceUID == row["study_uid"]
    assert len({d.SOPInstanceUID for d in datasets}) == len(datasets)
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    assert np.allclose(np.diff(z), float(ds.SliceThickness))
    # stored values + intercept = HU as medres loads them
    hu = load_image(demo_manifest.parent / row["image"]).numpy()
    assert np.array_equal(ds.pixel_array.T.astype(np.int32) - 1024, hu[:, :, 0].astype(np.int32))


def test_a_demo_ct_slice_is_valid_dicom(demo_manifest: Path) -> None:  # noqa: F811
    """dciodvfy (dicom3tools) reports no error on the demo's CT slices: the Type 2 attributes are there."""
    if dciodvfy() is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed")
    df = pd.read_csv(demo_manifest, dtype=str)
    folders = [demo_manifest.parent / i for i in df["image"] if (demo_manifest.parent / i).is_dir()]
    assert folders
    first = sorted(folders[0].glob("*.dcm"))
    for path in (first[0], first[-1]):
        assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(first[0], stop_before_pixels=True)
    assert (ds.PatientPosition, ds.BodyPartExamined, ds.AcquisitionNumber) == ("HFS", "CHEST", 1)
    assert "PositionReferenceIndicator" in ds and "Laterality" not in ds  # a chest is unpaired


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    first = generate_demo(tmp_path / "first", n_patients=4, seed=0)
    again = generate_demo(tmp_path / "again", n_patients=4, seed=0)
    assert _tree_bytes(again.parent) == _tree_bytes(first.parent)  # byte-identical, DICOM and gzip included
    assert content_digest(first.parent, skip=("manifest.csv", "demo_cohort.json")) == IMAGES_MASKS_SHA256
    other = generate_demo(tmp_path / "other", n_patients=4, seed=1)
    assert other.read_bytes() != first.read_bytes()


def test_reuse_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    manifest = generate_demo(out, n_patients=4, seed=0)
    stamp = json.loads((out / "demo_cohort.json").read_text())
    assert stamp["n_scans"] == len(pd.read_csv(manifest)) and len(list(out.glob(".*partial*"))) == 0
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["--out", str(out), "--n-patients", "4"]) == 0  # reused, not rewritten
    assert "manifest" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    (out / "masks" / sorted(stamp["files"])[-1].split("/")[-1]).unlink(missing_ok=True)
    generate_demo(out, n_patients=5, seed=0)  # other size: replaced
    assert json.loads((out / "demo_cohort.json").read_text())["n_patients"] == 5
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_demo(foreign, n_patients=4)
    with pytest.raises(DataError, match="at least 4"):
        generate_demo(tmp_path / "tiny", n_patients=2)


def test_full_size_plan() -> None:
    """The default cohort's design (drawn without rendering): ~120 scans, three sites, a third nodules."""
    patients = _plan(100, 0)
    scans = [(p, SITES[s]) for p in patients for s in p.studies]
    assert len(scans) == 120
    assert sum(1 for p in patients if p.nodules) == 33
    assert Counter(s.fmt for _, s in scans)["dicom"] >= 30
    main_kind = Counter(p.nodules[0].kind for p in patients if p.nodules)  # what makes a scan easy or hard
    assert 0.6 < main_kind["solid"] / 33 < 0.75  # most positives learnable, about a third hard
    assert min(main_kind[k] for k in ("small", "ground_glass", "part_solid")) >= 3
    radii = [float(np.mean(n.semi)) / 5.0 for p in patients for n in p.nodules]  # voxels at 5 mm
    solid = [float(np.mean(p.nodules[0].semi)) / 5.0 for p in patients
             if p.nodules and p.nodules[0].kind == "solid"]
    assert min(radii) > 1.0 and max(radii) < 6.5 and min(solid) > 2.2


def test_fullres_grid_same_cohort_on_a_finer_grid_and_parallel_rendering_is_identical(tmp_path):
    import nibabel as nib

    from medres.data.demo import FULLRES_SITES, demo_sites

    # the grid table: clinical spacing, same three sites
    assert [s.name for s in FULLRES_SITES] == [s.name for s in SITES]
    scaled = demo_sites("fullres", 6.0)
    for s, f in zip(scaled, FULLRES_SITES):  # larger voxels, the same field of view
        assert abs(s.pixel_mm * s.n - f.pixel_mm * f.n) < 6.0 * f.pixel_mm
    coarse = pd.read_csv(generate_demo(tmp_path / "coarse", n_patients=6, seed=0, grid_scale=2.0))
    one = generate_demo(tmp_path / "one", n_patients=6, seed=0, grid="fullres", grid_scale=6.0)
    two = generate_demo(tmp_path / "two", n_patients=6, seed=0, grid="fullres", grid_scale=6.0, workers=2)
    fine = pd.read_csv(one)
    # same patients, studies, labels and sites: only the grid differs
    cols = ["case_id", "patient_id", "label", "site", "sex", "age"]
    assert fine[cols].equals(coarse[cols])
    files = sorted(p.relative_to(one.parent) for p in one.parent.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.parent) for p in two.parent.rglob("*") if p.is_file())
    assert all((one.parent / f).read_bytes() == (two.parent / f).read_bytes() for f in files)
    row = fine[fine["site"] == "site_b"].iloc[0]
    zooms = nib.load(str(one.parent / row["mask"])).header.get_zooms()
    site_b = FULLRES_SITES[1]
    assert zooms == pytest.approx([site_b.pixel_mm * 6] * 2 + [site_b.slice_mm * 6], rel=1e-5)
    nodule = fine[fine["label"] == "nodule"].iloc[0]
    assert np.asarray(nib.load(str(one.parent / nodule["mask"])).dataobj).any()


def test_a_demo_folder_holding_foreign_files_is_never_replaced(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    generate_demo(out, n_patients=4, seed=0)
    (out / "images" / "my_scan.nii.gz").write_text("the user's")  # added beside the demo's files
    before = _tree_bytes(out)
    for argv in (["--out", str(out), "--n-patients", "5"],
                 ["--out", str(out), "--seed", "3", "--n-patients", "4"]):
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--quiet"])
        assert stop.value.code == 2 and "did not write" in capsys.readouterr().err
        assert _tree_bytes(out) == before
    assert not list(tmp_path.glob(".*partial*"))  # refused before anything was generated
    # a written-files list and stamp that list none of the folder's files (planted or damaged) claim nothing
    (out / "images" / "my_scan.nii.gz").unlink()
    (out / ".medres_written.json").write_text(json.dumps({"files": []}))
    (out / "demo_cohort.json").write_text(json.dumps({"version": 0, "files": []}))
    with pytest.raises(DataError, match="did not write"):
        generate_demo(out, n_patients=4, seed=0)
    assert (out / "manifest.csv").is_file()
    # a leftover temporary-looking folder beside it is not ours to delete
    stray = tmp_path / f".fresh.partial-{os.getpid()}"
    (stray / "x").mkdir(parents=True)
    generate_demo(tmp_path / "fresh", n_patients=4, seed=0)
    assert (stray / "x").is_dir()
