"""medres.data.index on a hostile export: links that leave the export are skipped and listed, never
read, linked or copied; a full disk is a DataError naming the output folder, with no temp file left."""

from __future__ import annotations

import csv
import os
import resource
import signal
from pathlib import Path

import pydicom
import pytest

from medres.config import IndexConfig
from medres.data.index import index_dicom
from medres.errors import DataError
from tests.data.dicom_factory import write_series


@pytest.fixture(autouse=True)
def _project_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "hostile-index-test-key-0123456789")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _patient(patient: str):  # noqa: ANN202
    study = pydicom.uid.generate_uid()

    def edit(k: int, ds: pydicom.Dataset) -> None:
        ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber = patient, study, f"ACC-{patient}"
    return edit


@pytest.mark.parametrize("link", ["symlink", "copy", "hardlink"])
def test_links_out_of_the_export_are_skipped_and_listed(tmp_path: Path, link: str) -> None:
    root, elsewhere = tmp_path / "export", tmp_path / "elsewhere"
    write_series(root / "inside", 5, edit=_patient("IN"))
    outside_slices = write_series(elsewhere / "series", 5, edit=_patient("OUT"))
    write_series(elsewhere / "more", 5, edit=_patient("MORE"))
    (root / "linked").mkdir()
    for k, p in enumerate(outside_slices):  # file links into a series outside the export
        os.symlink(p, root / "linked" / f"S{k}")
    os.symlink(elsewhere / "more", root / "folder_link")  # a folder link out of the export
    os.symlink(tmp_path / "gone.dcm", root / "dangling")  # a link to nothing, outside

    out = tmp_path / "out"
    result = index_dicom(root, out, rules=IndexConfig(min_slices=4, link=link))

    manifest = _rows(out / "manifest.csv")
    assert len(manifest) == 1 and manifest[0]["slices"] == "5"
    rows = _rows(out / "index.csv")
    assert {r["patient_id"] for r in rows if r["kind"] == "series"} == {manifest[0]["patient_id"]}
    skipped = [r for r in rows if r["kind"] == "file" and "outside the export" in r["reason"]]
    assert len(skipped) == 7 and all(r["verdict"] == "skipped" for r in skipped)
    assert sum("a folder outside" in r["reason"] for r in skipped) == 1
    assert result.skipped_files["link_outside_export"] == 7
    listed = {r["file"]: r["path"] for r in _rows(out / "private" / "files.csv")}
    assert sorted(listed[r["file"]] for r in skipped) == sorted(
        ["dangling", "folder_link", *(f"linked/S{k}" for k in range(5))])
    # nothing from outside under series/: every file there is (or points at) a slice of the inside series
    held = list((out / "series").rglob("*.dcm"))
    assert len(held) == 5
    assert {pydicom.dcmread(p, stop_before_pixels=True).PatientID for p in held} == {"IN"}
    outside_inodes = {p.stat().st_ino for p in outside_slices}
    assert not outside_inodes & {p.stat().st_ino for p in held}


def test_a_link_inside_the_export_is_still_followed(tmp_path: Path) -> None:
    root = tmp_path / "export"
    slices = write_series(root / "real", 5, edit=_patient("IN"))
    (root / "alias").mkdir()
    os.symlink(slices[0], root / "alias" / "first")  # inside: followed (one slice twice: a duplicate)
    index_dicom(root, tmp_path / "out", rules=IndexConfig(min_slices=4))
    rows = _rows(tmp_path / "out" / "index.csv")
    assert not any("outside the export" in r["reason"] for r in rows)
    assert [r["reason"] for r in rows if r["kind"] == "series"] == [
        "irregular geometry: 1 duplicate slice position(s)"]


def test_a_full_disk_is_a_data_error_and_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "export"
    write_series(root / "ct", 5, edit=_patient("IN"))
    out = tmp_path / "out"
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256, hard))  # the OS refuses bytes past 256 (EFBIG)
    try:
        with pytest.raises(DataError) as info:
            index_dicom(root, out, rules=IndexConfig(min_slices=4, workers=1))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    err = info.value
    assert "could not be written" in err.reason and "free" in err.reason
    assert err.path == str(out)
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert leftovers == []


def test_the_manifest_reader_follows_the_indexs_signed_links_only(tmp_path: Path) -> None:
    """The index's symlinked series/ folders lead into the export, outside the manifest's folder: the
    signed private/link_roots.txt it writes lets them through; the same file unsigned does not."""
    from medres.data.manifest import read_manifest
    from medres.errors import DataErrors

    root, out = tmp_path / "export", tmp_path / "out"
    write_series(root / "ct", 5, edit=_patient("IN"))
    index_dicom(root, out, rules=IndexConfig(min_slices=4))
    listing = out / "private" / "link_roots.txt"
    assert listing.read_text().startswith("# medres.data.index link roots; hmac-sha256 ")
    assert len(read_manifest(out / "manifest.csv")) == 1
    listing.write_text("".join(line + "\n" for line in listing.read_text().splitlines()[1:]))  # unsigned
    with pytest.raises(DataErrors, match="outside the data root"):
        read_manifest(out / "manifest.csv")
