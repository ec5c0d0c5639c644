"""medres.data.index on the real trees shipped in pydicom (``dicomdirtests``: three patients, CT, MR
and CR series, localizers, mixed orientations, DICOMDIRs, a file set without pixel data), every series'
verdict and reason checked by hand against the files (dumped with pydicom)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from medres.config import IndexConfig
from medres.data.index import index_dicom
from tests.data.dicom_factory import TEST_FILES

TREE = TEST_FILES / "dicomdirtests"


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """Index with open rules (any modality/orientation, one slice enough, derived allowed) so every
    series is described, then with the shipped CT defaults."""
    out = tmp_path_factory.mktemp("dicomdirtests")
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDRES_PROJECT_KEY", "dicomdirtests-key-0123456789")
    try:
        index_dicom(TREE, out / "open", rules=IndexConfig(modalities=[], orientations=[], min_slices=1,
                                                           original_only=False, per_study="all"))
        index_dicom(TREE, out / "ct", rules=IndexConfig(min_slices=5))
    finally:
        mp.undo()
    result = {}
    for name in ("open", "ct"):
        files = {r["file"]: r["path"] for r in _read(out / name / "private" / "files.csv")}
        members = {r["row"]: r["files"].split() for r in _read(out / name / "private" / "series.csv")}
        rows = _read(out / name / "index.csv")
        for r in rows:
            paths = [files[f] for f in members.get(r["row"], [])] or [files.get(r["file"], "")]
            r["folders_"] = " ".join(sorted({p.rsplit("/", 1)[0] if "/" in p else "." for p in paths}))
            r["paths_"] = paths
        result[name] = rows
    return result


def test_every_series_described_as_the_files_say(indexed: dict) -> None:
    rows = [r for r in indexed["open"] if r["kind"] in ("series", "part")]
    got = sorted((r["folders_"], r["kind"], r["modality"], r["orientation"], r["slices"], r["verdict"])
                 for r in rows)
    expected = sorted([
        # 77654033: three single CR radiographs (no plane geometry) and a 4-slice CT with a 202.5 mm gap
        ("77654033/CR1", "series", "CR", "projection", "1", "kept"),
        ("77654033/CR2", "series", "CR", "projection", "1", "kept"),
        ("77654033/CR3", "series", "CR", "projection", "1", "kept"),
        ("77654033/CT2", "series", "CT", "axial", "4", "skipped"),
        # 98892001: CT2N is a localizer series of two planes (split into parts), CT5N 5 regular slices
        ("98892001/CT2N", "part", "CT", "sagittal", "1", "skipped"),
        ("98892001/CT2N", "part", "CT", "coronal", "1", "skipped"),
        ("98892001/CT5N", "series", "CT", "axial", "5", "kept"),
        # 98892003: MR folders mixing series; MR2 and MR700 hold series with several planes (parts)
        ("98892003/MR1", "series", "MR", "sagittal", "1", "kept"),
        ("98892003/MR1", "series", "MR", "sagittal", "1", "kept"),
        ("98892003/MR1", "series", "MR", "sagittal", "1", "kept"),
        ("98892003/MR2", "series", "MR", "sagittal", "1", "kept"),
        *[("98892003/MR2", "part", "MR", o, "1", "kept") for o in ("axial", "coronal", "sagittal") * 2],
        *[("98892003/MR700", "part", "MR", o, "1", "kept")
          for o in ("oblique", "oblique", "oblique", "oblique", "coronal", "sagittal", "sagittal")],
        # TINY_ALPHA: pydicom's minimal file set, 50 CT "instances" without Rows or pixel data
        ("TINY_ALPHA/PT000000/ST000000/SE000000", "series", "CT", "unknown", "50", "skipped"),
    ])
    assert got == expected


def test_reasons_by_hand(indexed: dict) -> None:
    rows = indexed["open"]
    reason = {r["folders_"]: r["reason"] for r in rows if r["kind"] == "series"}
    assert reason["77654033/CT2"] == ("irregular geometry: 161 slice(s) missing "
                                      "(gaps of 1.25 mm up to 202.50 mm)")
    assert reason["TINY_ALPHA/PT000000/ST000000/SE000000"].startswith("no pixel data (CT Image Storage")
    localizer = [r for r in rows if r["folders_"] == "98892001/CT2N"]
    assert all(r["reason"].endswith("a localizer (ImageType LOCALIZER)") for r in localizer)
    assert {r["part"] for r in localizer} == {"1/2", "2/2"}
    mr700 = [r for r in rows if r["folders_"] == "98892003/MR700"]
    assert {r["image_type"] for r in mr700} == {"DERIVED\\SECONDARY\\PROJECTION IMAGE"}


def test_dicomdirs_and_other_files_are_counted(indexed: dict) -> None:
    files = [r for r in indexed["open"] if r["kind"] == "file"]
    dicomdirs = sorted(r["paths_"][0] for r in files if r["reason"].startswith("a DICOMDIR"))
    assert dicomdirs == ["DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-empty.dcm", "DICOMDIR-implicit",
                         "DICOMDIR-nooffset", "DICOMDIR-nopatient", "DICOMDIR-reordered",
                         "TINY_ALPHA/DICOMDIR"]
    others = sorted(r["paths_"][0] for r in files if r["reason"].startswith("not a DICOM file"))
    assert others == ["README.txt", "TINY_ALPHA/README"]


def test_ct_defaults_keep_only_the_regular_axial_ct(indexed: dict) -> None:
    kept = [r for r in indexed["ct"] if r["verdict"] == "kept"]
    assert [(r["folders_"], r["slices"], r["thickness"]) for r in kept] == [("98892001/CT5N", "5", "2.5")]
    reason = {r["folders_"]: r["reason"] for r in indexed["ct"] if r["kind"] == "series"}
    assert reason["77654033/CR1"] == "modality CR is not one of ['CT']"
    assert reason["98892003/MR2"] == "modality MR is not one of ['CT']"


def test_radiograph_rules_index_pydicoms_crs_one_image_per_row(tmp_path: Path, monkeypatch) -> None:
    """``data.modality: XR`` (configs/cxr.yaml) gives the index radiograph defaults: CR/DX of any ImageType
    (pydicom's CRs are DERIVED\\PRIMARY), one image per row, the config's views (CR1 is LL, CR2/CR3 AP, as
    pydicom reads them), the view and ImagerPixelSpacing in index.csv, a view column in the manifest; each
    kept row loads as its radiograph."""
    import numpy as np
    import pydicom

    from medres.config import load_config
    from medres.data.readers.io import load_image

    monkeypatch.setenv("MEDRES_PROJECT_KEY", "dicomdirtests-key-0123456789")
    rules = load_config(Path(__file__).parents[3] / "configs" / "cxr.yaml").data.index
    assert rules.modalities == ["CR", "DX"] and rules.views == ["PA", "AP"] and not rules.original_only
    index_dicom(TREE, tmp_path, rules=rules)
    files = {r["file"]: r["path"] for r in _read(tmp_path / "private" / "files.csv")}
    members = {r["row"]: [files[f] for f in r["files"].split()]
               for r in _read(tmp_path / "private" / "series.csv")}
    rows = {members[r["row"]][0].split("/")[1]: r for r in _read(tmp_path / "index.csv")
            if r["kind"] == "series" and r["modality"] == "CR"}
    for name, r in rows.items():
        ds = pydicom.dcmread(TREE / members[r["row"]][0], stop_before_pixels=True)
        assert r["view"] == ds.ViewPosition and r["pixel_spacing"] == "0.1x0.1", name
    assert rows["CR1"]["verdict"] == "skipped"
    assert "a LL view, not one of ['PA', 'AP']" in rows["CR1"]["reason"]
    assert rows["CR2"]["verdict"] == rows["CR3"]["verdict"] == "kept"
    manifest = _read(tmp_path / "manifest.csv")
    got = [(m["modality"], m["view"], m["orientation"]) for m in manifest]
    assert got == [("CR", "AP", "projection")] * 2
    for m in manifest:
        image = load_image(tmp_path / m["image"])
        assert tuple(image.shape) == (16, 16) and image.meta["ViewPosition"] == "AP"
        assert np.allclose(np.abs(np.diag(np.asarray(image.affine))[:2]), 0.1)
