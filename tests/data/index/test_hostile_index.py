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


@pytest.mark.parametrize("link", ["copy", "hardlink"])
def test_a_file_swapped_for_a_link_after_the_walk_is_never_copied(tmp_path: Path, link: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the walk (which saw a plain file inside the export) and the copy, a slice becomes a
    symbolic link to a file outside (or another file under its name): the index copies or links nothing
    of it and leaves the series out, saying why; the outside file is never read into series/."""
    from medres.data.index import build

    root = tmp_path / "export"
    slices = write_series(root / "ct", 5, edit=_patient("IN"))
    secret = write_series(tmp_path / "elsewhere", 5, edit=_patient("OUT"))[2]
    other = write_series(root / "ct2", 5, edit=_patient("IN2"))
    read_all = build._read_all

    def read_then_swap(*args, **kw):  # noqa: ANN002, ANN003, ANN202 - after the header phase
        records = read_all(*args, **kw)
        slices[2].unlink()
        os.symlink(secret, slices[2])  # now a link out of the export
        os.link(other[1], tmp_path / "kept_alive")  # so the new file cannot reuse the old inode
        (tmp_path / "new").write_bytes(other[0].read_bytes())
        os.replace(tmp_path / "new", other[1])  # another file (inode) under a checked name
        return records

    monkeypatch.setattr(build, "_read_all", read_then_swap)
    out = tmp_path / "out"
    result = index_dicom(root, out, rules=IndexConfig(min_slices=4, link=link, workers=1))
    assert result.kept == 0 and _rows(out / "manifest.csv") == []
    reasons = [r["reason"] for r in _rows(out / "index.csv") if r["kind"] == "series"]
    assert len(reasons) == 2 and all("changed after it was checked" in r for r in reasons)
    assert any("symbolic link" in r for r in reasons) and any("another file" in r for r in reasons)
    assert not (out / "series").exists() or list((out / "series").rglob("*")) == []
    assert os.stat(secret).st_nlink == 1  # never hard-linked


def test_a_huge_folder_is_listed_unread_and_hard_links_are_read_once(tmp_path: Path) -> None:
    """A folder past the per-folder bound costs one row (none of its files read); 300 hard links to one
    slice are one file read and 299 rows naming the first (no path, no id)."""
    root = tmp_path / "export"
    write_series(root / "ct", 5, edit=_patient("IN"))
    crowd = write_series(root / "crowd", 1, edit=_patient("CROWD"))[0]
    for k in range(300):  # 30 folders of 10 names, each under the bound
        (root / "crowd" / f"d{k // 10:02d}").mkdir(exist_ok=True)
        os.link(crowd, root / "crowd" / f"d{k // 10:02d}" / f"L{k:03d}")
    write_series(root / "big", 41, edit=_patient("BIG"))
    out = tmp_path / "out"
    result = index_dicom(root, out, rules=IndexConfig(min_slices=4, workers=1), max_files_per_folder=40)
    assert result.read == 5 + 1  # the series and one name of the slice; nothing of the big folder
    assert result.skipped_files["hard_link_seen"] == 300 and result.skipped_files["folder_too_large"] == 1
    rows = {r["file"]: r for r in _rows(out / "index.csv") if r["kind"] == "file"}
    paths = {r["file"]: r["path"] for r in _rows(out / "private" / "files.csv")}
    big = [r for f, r in rows.items() if paths[f] == "big"]
    assert len(big) == 1 and "more than 40 entries" in big[0]["reason"]
    first = next(f for f, p in paths.items() if p == "crowd/" + crowd.name)
    linked = [r for r in rows.values() if "hard link" in r["reason"]]
    assert len(linked) == 300 and {r["reason"] for r in linked} == {
        f"another name (a hard link) of file {first}: read once"}
    assert len(_rows(out / "manifest.csv")) == 1


def test_an_index_folder_from_before_the_one_list_keeps_working(tmp_path: Path) -> None:
    """An index written with private/written.json (no .medres_written.json) is rerun: its links are
    replaced and pruned as its own, a file it never wrote is refused, and the one list replaces the old."""
    import json

    from medres.files import WRITTEN_LIST, written_list

    root = tmp_path / "export"
    write_series(root / "a", 5, edit=_patient("A"))
    write_series(root / "b", 6, edit=_patient("B"))
    out = tmp_path / "out"
    index_dicom(root, out, rules=IndexConfig(min_slices=4))
    cases = {r["case_id"]: int(r["slices"]) for r in _rows(out / "manifest.csv")}
    assert len(cases) == 2
    listed = set(written_list(out))
    assert {"manifest.csv", "index.csv", "private/header_cache.json"} <= listed
    assert {f"series/{c}/{k:05d}.dcm" for c, n in cases.items() for k in range(1, n + 1)} <= listed
    (out / WRITTEN_LIST).unlink()  # as an older medres left it
    (out / "private" / "written.json").write_text(json.dumps({"version": 1, "series": cases}))
    (out / "private" / "state.json").unlink()
    index_dicom(root, out, rules=IndexConfig(min_slices=6))  # a's 5 slices are dropped: its links go
    kept = [r["case_id"] for r in _rows(out / "manifest.csv")]
    assert len(kept) == 1 and sorted(p.name for p in (out / "series").iterdir()) == kept
    assert not (out / "private" / "written.json").exists()
    assert {f"series/{kept[0]}/{k:05d}.dcm" for k in range(1, 7)} <= set(written_list(out))
    assert not any(f.startswith("series/") and kept[0] not in f for f in written_list(out))
    # a file the list does not name is never replaced
    files = json.loads((out / WRITTEN_LIST).read_text())
    files["files"].remove("manifest.csv")
    (out / WRITTEN_LIST).write_text(json.dumps(files))
    (out / "manifest.csv").write_text("mine\n")
    with pytest.raises(DataError, match="holds manifest.csv, a file medres did not write"):
        index_dicom(root, out, rules=IndexConfig(min_slices=4))
    assert (out / "manifest.csv").read_text() == "mine\n"


def test_links_planted_in_the_output_are_never_written_through(tmp_path: Path) -> None:
    """Links under the index's own names (a private/ file, a fixed temporary name) pointing elsewhere:
    the rerun refuses the first and never writes through the second."""
    root, out = tmp_path / "export", tmp_path / "out"
    write_series(root / "ct", 5, edit=_patient("IN"))
    index_dicom(root, out, rules=IndexConfig(min_slices=4))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    for name in ("index.csv.tmp", "manifest.csv.tmp", "private/header_cache.tmp"):
        (out / name).symlink_to(victim)
    (out / "private" / "state.json").unlink()
    index_dicom(root, out, rules=IndexConfig(min_slices=3))
    assert victim.read_text() == "precious" and len(_rows(out / "manifest.csv")) == 1
    (out / "private" / "links.json").unlink()
    (out / "private" / "links.json").symlink_to(victim)
    with pytest.raises(DataError, match="holds private/links.json, a file medres did not write"):
        index_dicom(root, out, rules=IndexConfig(min_slices=4))
    assert victim.read_text() == "precious"
