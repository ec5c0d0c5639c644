"""medres.data.index on export-shaped trees built from pydicom's CT_small: grouping by UID, rules,
pseudonyms, labels matching, the header cache, bad input as index rows, and the manifest loading."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medres.config import IndexConfig
from medres.data.check import check_cohort
from medres.data.index import index_dicom
from medres.data.index.__main__ import main
from medres.data.index.headers import RTSTRUCT_CLASS, SEG_CLASS, _from_pydicom, _record, _scan, read_header
from medres.data.readers.io import load_image
from medres.errors import DataError
from tests.data.dicom_factory import CT_SMALL, TEST_FILES, write_series

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
KEY = "a-test-project-key-0123456789"
IDENTIFYING = ["DOE^JOHN", "HOSP-4711", "ACC-0001", "ACC-0002", "AXIAL THIN John", "General Hospital"]


@pytest.fixture(autouse=True)
def _project_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _ids(accession: str, patient: str = "HOSP-4711", study: str | None = None):  # noqa: ANN202
    study = study or pydicom.uid.generate_uid()

    def edit(k: int, ds: pydicom.Dataset) -> None:
        ds.PatientName, ds.PatientID, ds.AccessionNumber = "DOE^JOHN", patient, accession
        ds.StudyInstanceUID, ds.InstitutionName = study, "General Hospital"
    return edit


def _export(tmp_path: Path) -> Path:
    """DOE^JOHN/ with two studies: a thin axial series split over two folders and sharing one of them
    with a thick series, a localizer, a coronal reformat; a second study; junk files."""
    root = tmp_path / "export"
    pat = root / "DOE^JOHN"
    uid = pydicom.uid.generate_uid()
    study = pydicom.uid.generate_uid()
    edit = _ids("ACC-0001", study=study)
    write_series(pat / "a", 8, spacing=1.25, series_uid=uid, description="AXIAL THIN John", edit=edit,
                 series_number=2)
    for p in sorted((pat / "a").iterdir())[4:]:  # the second half of the thin series moves to folder b
        (pat / "b").mkdir(exist_ok=True)
        shutil.move(p, pat / "b" / p.name.replace("IM", "X"))
    write_series(pat / "b", 3, spacing=5.0, series_number=3, edit=edit, name="T{:04d}")
    scout = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    write_series(pat / "loc", 1, edit=lambda k, ds: (edit(k, ds), setattr(ds, "ImageType", scout)),
                 series_number=1)
    write_series(pat / "cor", 6, orientation=CORONAL, edit=lambda k, ds: (edit(k, ds), setattr(
        ds, "ImageType", ["DERIVED", "SECONDARY", "REFORMATTED"])), series_number=4)
    write_series(pat / "second", 6, spacing=2.0, edit=_ids("ACC-0002"), name="{:d}")
    (pat / "notes.txt").write_text("scanned by Dr. Who\n")
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", root / "DICOMDIR")
    data = CT_SMALL.read_bytes()
    (pat / "cut").write_bytes(data[: len(data) - 5000])
    return root


def _rules(**kw: object) -> IndexConfig:
    return IndexConfig(min_slices=4, **kw)


def test_header_scanner_agrees_with_pydicom_on_shipped_files() -> None:
    checked = 0
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            fast = _scan(str(path))
        except Exception:
            continue  # left to pydicom by design
        if int(fast.get("frames") or 1) > 1 or fast.get("truncated") or fast.get("sop_class") in (
                SEG_CLASS, RTSTRUCT_CLASS):
            continue  # multi-frame files go to pydicom; pydicom does not see truncation before the pixels
        slow = _from_pydicom(str(path))
        assert _record(fast) == _record(slow), path.name
        checked += 1
    assert checked > 50


def test_truncated_and_foreign_files_get_reasons(tmp_path: Path) -> None:
    assert read_header(str(TEST_FILES / "MR_truncated.dcm"))["status"] == "unreadable"
    (tmp_path / "x").write_bytes(b"not dicom at all" * 20)
    assert read_header(str(tmp_path / "x"))["status"] == "not_dicom"
    assert read_header(str(TEST_FILES / "dicomdirtests" / "DICOMDIR"))["status"] == "dicomdir"
    ds = pydicom.dcmread(CT_SMALL)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "bare", ds, implicit_vr=True, little_endian=True)  # no preamble, no meta
    assert (tmp_path / "bare").read_bytes()[128:132] != b"DICM"
    bare = read_header(str(tmp_path / "bare"))  # recognised by content
    assert bare["status"] == "dicom" and bare["fields"]["modality"] == "CT" and bare["fields"]["rows"] == 128


def test_index_export_chooses_thin_axial_and_writes_a_loadable_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _export(tmp_path)
    out = tmp_path / "out"
    labels = tmp_path / "labels.csv"
    labels.write_text("AccessionNumber,label\nACC-0001,nodule\nACC-0002,normal\nACC-9999,normal\n")
    assert main([str(root), "--out", str(out), "--labels", str(labels), "--no-progress",
                 "--set", "data.index.min_slices=4"]) == 0
    printed = capsys.readouterr()
    index = _rows(out / "index.csv")
    series = [r for r in index if r["kind"] == "series"]
    by_slices = {(r["orientation"], r["slices"]): r for r in series}
    thin = by_slices[("axial", "8")]
    assert thin["verdict"] == "kept" and thin["folders"] == "2" and thin["thickness"] == "1.25"
    thick = by_slices[("axial", "3")]
    assert thick["verdict"] == "skipped" and thick["reason"] == "3 slice(s), fewer than the 4 required"
    assert "LOCALIZER" in by_slices[("axial", "1")]["reason"]
    assert "ORIGINAL" in by_slices[("coronal", "6")]["reason"]
    assert by_slices[("axial", "6")]["verdict"] == "kept"
    files = [r for r in index if r["kind"] == "file"]
    reasons = sorted(r["reason"].split(" ")[0] for r in files)
    assert reasons == ["a", "not", "truncated:"]  # DICOMDIR, notes.txt, the cut file
    unmatched = [r for r in index if r["kind"] == "labels"]
    assert [r["source_row"] for r in unmatched] == ["3"]
    manifest = _rows(out / "manifest.csv")
    assert sorted(r["label"] for r in manifest) == ["nodule", "normal"]
    assert len({r["patient_id"] for r in manifest}) == 1
    result = check_cohort(out / "manifest.csv", vocabulary=["normal", "nodule"])
    assert result.ok, [str(e) for e in result.problems]
    row = next(r for r in manifest if r["label"] == "nodule")
    volume = load_image(out / row["image"])
    assert tuple(volume.shape) == (128, 128, 8)
    reference = np.stack([pydicom.dcmread(p).pixel_array for p in sorted(
        [*(root / "DOE^JOHN" / "a").iterdir(), *(root / "DOE^JOHN" / "b").glob("X*")],
        key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))], axis=-1)
    np.testing.assert_array_equal(np.asarray(volume) + 1024, np.swapaxes(reference, 0, 1))
    public = (out / "manifest.csv").read_text() + (out / "index.csv").read_text() + printed.out + printed.err
    for word in [*IDENTIFYING, "DOE"]:
        assert word not in public
    private = (out / "private" / "pseudonyms.csv").read_text()
    assert "HOSP-4711" in private and "AXIAL THIN John" in private
    cache = (out / "private" / "header_cache.json").read_text()
    for word in [*IDENTIFYING, "DOE", KEY]:
        assert word not in cache
    for path in out.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert KEY not in path.read_text(errors="ignore")


def test_reindex_reads_only_changed_files(tmp_path: Path) -> None:
    root = _export(tmp_path)
    first = index_dicom(root, tmp_path / "out", rules=_rules())
    assert first.read == first.files and first.cached == 0
    before = (tmp_path / "out" / "index.csv").read_text()
    second = index_dicom(root, tmp_path / "out", rules=_rules())
    assert second.read == 0 and second.cached == first.files
    assert (tmp_path / "out" / "index.csv").read_text() == before
    target = sorted((root / "DOE^JOHN" / "second").iterdir())[0]
    os.utime(target, ns=(1, 1))
    third = index_dicom(root, tmp_path / "out", rules=_rules())
    assert third.read == 1


def test_pseudonyms_depend_on_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _export(tmp_path)
    index_dicom(root, tmp_path / "o1", rules=_rules())
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "another-project-key-987654321")
    index_dicom(root, tmp_path / "o2", rules=_rules())
    a, b = _rows(tmp_path / "o1" / "manifest.csv"), _rows(tmp_path / "o2" / "manifest.csv")
    assert len(a) == len(b) == 2
    assert {r["patient_id"] for r in a}.isdisjoint({r["patient_id"] for r in b})


def test_key_file_is_generated_outside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDRES_PROJECT_KEY")
    root = _export(tmp_path)
    key_file = tmp_path / "keys" / "project.key"
    index_dicom(root, tmp_path / "out", rules=_rules(key_file=str(key_file)))
    key = key_file.read_text().strip()
    assert len(key) == 64 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert key not in path.read_text(errors="ignore")


def test_one_uid_with_two_geometries_is_split_into_parts(tmp_path: Path) -> None:
    uid = pydicom.uid.generate_uid()
    write_series(tmp_path / "x", 5, series_uid=uid, edit=_ids("A1"))
    write_series(tmp_path / "x", 4, series_uid=uid, orientation=CORONAL, name="C{:04d}", edit=_ids("A1"))
    index_dicom(tmp_path / "x", tmp_path / "out", rules=_rules(per_study="all"))
    parts = [r for r in _rows(tmp_path / "out" / "index.csv") if r["kind"] == "part"]
    assert sorted((r["part"], r["orientation"], r["slices"]) for r in parts) == [
        ("1/2", "axial", "5"), ("2/2", "coronal", "4")]
    kept = next(r for r in parts if r["verdict"] == "kept")
    assert kept["orientation"] == "axial"
    assert "coronal orientation" in next(r for r in parts if r["verdict"] == "skipped")["reason"]
    manifest = _rows(tmp_path / "out" / "manifest.csv")
    assert load_image(tmp_path / "out" / manifest[0]["image"]).shape[-1] == 5


def test_study_matching_two_label_rows_is_skipped_with_reason(tmp_path: Path) -> None:
    write_series(tmp_path / "x", 5, edit=_ids("A1"))
    labels = tmp_path / "labels.csv"
    labels.write_text("AccessionNumber,label\nA1,normal\n A1 ,nodule\n")
    index_dicom(tmp_path / "x", tmp_path / "out", labels=labels, rules=_rules())
    row = _rows(tmp_path / "out" / "index.csv")[0]
    assert row["verdict"] == "skipped" and "matches labels rows [1, 2]" in row["reason"]
    assert _rows(tmp_path / "out" / "manifest.csv") == []


def test_missing_series_and_no_label_row(tmp_path: Path) -> None:
    write_series(tmp_path / "exp" / "x", 5, edit=_ids("A1"))
    irregular = [(0, 0, z) for z in (0.0, 2.5, 5.0, 9.0, 12.5)]
    write_series(tmp_path / "exp" / "y", 5, positions=irregular, edit=_ids("A2"))
    labels = tmp_path / "labels.csv"
    labels.write_text("PatientID,label\nSOMEONE-ELSE,normal\n")
    index_dicom(tmp_path / "exp", tmp_path / "out", labels=labels, labels_key="PatientID", rules=_rules())
    rows = _rows(tmp_path / "out" / "index.csv")
    reasons = sorted(r["reason"] for r in rows if r["kind"] == "series")
    assert reasons[0].startswith("irregular geometry: uneven slice spacing")
    assert reasons[1] == "no row of the labels file matches its PatientID"
    assert [r["kind"] for r in rows].count("labels") == 1


def test_rtstruct_without_its_source_series_is_a_row(tmp_path: Path) -> None:
    write_series(tmp_path / "x" / "ct", 5, edit=_ids("A1"))
    shutil.copy(TEST_FILES / "rtstruct.dcm", tmp_path / "x" / "rs")
    index_dicom(tmp_path / "x", tmp_path / "out", rules=_rules())
    rows = _rows(tmp_path / "out" / "index.csv")
    rt = next(r for r in rows if r["kind"] == "RTSTRUCT")
    assert rt["verdict"] == "skipped" and rt["reason"] == "its source series is not in the export"
    assert _rows(tmp_path / "out" / "manifest.csv")[0]["mask"] == ""


def test_missing_root_is_a_data_error(tmp_path: Path) -> None:
    from medres.errors import DataError

    with pytest.raises(DataError, match="does not exist"):
        index_dicom(tmp_path / "nope", tmp_path / "out")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_out_around_on_or_inside_the_export_is_refused_and_the_export_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "data" / "series" / "ct_export"
    write_series(export / "a", 5, edit=_ids("A1"))
    (export / "series" / "x").mkdir(parents=True)  # an export that holds a series/ folder of its own
    (export / "series" / "x" / "notes.txt").write_text("the hospital's")
    before = _snapshot(tmp_path / "data")
    for out in (tmp_path / "data", export, export / "indexed", export / "a" / ".." / ".."):
        assert main([str(export), "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert str(export) in err and str(out) in err and "export folder" in err
        assert _snapshot(tmp_path / "data") == before
    assert not (export / "indexed").exists()
    labels = tmp_path / "data" / "labels.csv"
    labels.write_text("AccessionNumber,label\nA1,normal\n")
    with pytest.raises(DataError, match="is the labels file"):
        index_dicom(export, labels, labels=labels, rules=_rules())
    assert labels.read_text() == "AccessionNumber,label\nA1,normal\n"


def test_an_out_holding_what_medres_did_not_write_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "exp" / "a", 5, edit=_ids("A1"))
    out = tmp_path / "out"
    (out / "series" / "mine").mkdir(parents=True)
    (out / "series" / "mine" / "scan.dcm").write_text("the user's")
    with pytest.raises(DataError, match="new or empty folder"):
        index_dicom(tmp_path / "exp", out, rules=_rules())
    assert (out / "series" / "mine" / "scan.dcm").read_text() == "the user's"
    assert not (out / "private").exists()


def test_a_reindex_removes_only_the_links_it_wrote(tmp_path: Path) -> None:
    root = tmp_path / "exp"
    write_series(root / "thin", 8, spacing=1.25, edit=_ids("A1"))
    write_series(root / "other", 5, edit=_ids("A2"))
    out = tmp_path / "out"
    index_dicom(root, out, rules=_rules())
    cases = {r["image"].split("/")[1]: int(r["slices"]) for r in _rows(out / "manifest.csv")}
    assert sorted(cases.values()) == [5, 8]
    short = min(cases, key=cases.get)
    (out / "series" / short / "notes.txt").write_text("the user's")  # planted beside medres's links
    (out / "series" / "mine").mkdir()
    (out / "series" / "mine" / "00001.dcm").write_text("the user's")
    index_dicom(root, out, rules=IndexConfig(min_slices=6))  # the 5-slice series is no longer chosen
    long = max(cases, key=cases.get)
    assert [r["image"] for r in _rows(out / "manifest.csv")] == [f"series/{long}"]
    assert sorted(p.name for p in (out / "series" / short).iterdir()) == ["notes.txt"]
    assert (out / "series" / "mine" / "00001.dcm").read_text() == "the user's"
    assert len(list((out / "series" / long).iterdir())) == 8
    # chosen again, its folder now holds only the user's file: refused, not emptied
    with pytest.raises(DataError, match="did not write"):
        index_dicom(root, out, rules=_rules())
    assert sorted(p.name for p in (out / "series" / short).iterdir()) == ["notes.txt"]


def test_index_tables_for_people_hold_no_spreadsheet_formula(tmp_path: Path) -> None:
    """Header text (a kernel, a series description) reaches index.csv and private/pseudonyms.csv quoted
    for spreadsheets; manifest.csv, which medres reads back, keeps the exact value."""
    root = tmp_path / "export"

    def edit(k: int, ds: pydicom.Dataset) -> None:
        _ids("=1+1")(k, ds)
        ds.ConvolutionKernel = "@SUM(A1)"

    write_series(root / "s", 6, spacing=2.0, description="=HYPERLINK(\"http://x\")", edit=edit)
    out = tmp_path / "out"
    assert main([str(root), "--out", str(out), "--no-progress", "--set", "data.index.min_slices=4"]) == 0
    kept = [r for r in _rows(out / "index.csv") if r["kind"] == "series"]
    assert [r["kernel"] for r in kept] == ["'@SUM(A1)"]
    private = _rows(out / "private" / "pseudonyms.csv")
    assert [r["SeriesDescription"] for r in private] == ["'=HYPERLINK(\"http://x\")"]
    assert [r["AccessionNumber"] for r in private] == ["'=1+1"]
    assert [r["kernel"] for r in _rows(out / "manifest.csv")] == ["@SUM(A1)"]


def test_images_without_pixel_data_or_without_rows_are_told_apart(tmp_path: Path) -> None:
    """A slice with Rows/Columns but no PixelData is "without pixel data", read by the fast scanner (a
    file with a preamble) or by pydicom (one without); one without Rows/Columns says that."""
    from medres.data.index.headers import read_header

    root = tmp_path / "export"
    for name, drop, preamble in (("nopix", ("PixelData",), True), ("nopix_raw", ("PixelData",), False),
                                 ("norows", ("PixelData", "Rows", "Columns"), True)):
        for k, path in enumerate(write_series(root / name, 5, spacing=2.0, edit=_ids(f"ACC-{name}"))):
            ds = pydicom.dcmread(path)
            for keyword in drop:
                delattr(ds, keyword)
            if not preamble:
                ds.preamble = None
            ds.save_as(path, enforce_file_format=preamble)
            assert (path.read_bytes()[128:132] == b"DICM") == preamble  # which reader: scanner or pydicom
            fields = read_header(str(path))["fields"]
            assert not fields["pixels"] and bool(fields["rows"]) == ("Rows" not in drop), (name, k)
    out = tmp_path / "out"
    main([str(root), "--out", str(out), "--no-progress", "--set", "data.index.min_slices=4"])  # none kept
    reasons = sorted(r["reason"] for r in _rows(out / "index.csv") if r["kind"] == "series")
    assert len(reasons) == 3
    assert sum(r.startswith("without pixel data (CT Image Storage with Rows/Columns, no PixelData)")
               for r in reasons) == 2
    assert sum("without Rows/Columns" in r for r in reasons) == 1


def test_a_planted_written_list_claims_nothing_outside_series(tmp_path: Path) -> None:
    import json

    write_series(tmp_path / "exp" / "a", 5, edit=_ids("A1"))
    out = tmp_path / "out"
    index_dicom(tmp_path / "exp", out, rules=_rules())
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "00001.dcm").write_text("precious")
    written = json.loads((out / ".medres_written.json").read_text())
    written["files"] += ["series/../../victim/00001.dcm", "series/../00001.dcm", "../victim/00001.dcm"]
    (out / ".medres_written.json").write_text(json.dumps(written))
    index_dicom(tmp_path / "exp", out, rules=IndexConfig(min_slices=6))  # its series dropped: links go
    assert (victim / "00001.dcm").read_text() == "precious"
    assert _rows(out / "manifest.csv") == [] and list((out / "series").iterdir()) == []
    assert not any(".." in f for f in json.loads((out / ".medres_written.json").read_text())["files"])
