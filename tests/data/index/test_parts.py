"""A sharded index (``--num-parts K --part-id i``, then ``--merge``) equals a one-part index of the same
export: the demo export in 3 parts gives byte-identical manifest.csv and index.csv, and a series whose
files lie in folders read by different parts is still one series."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pydicom
import pytest

from medres.config import IndexConfig
from medres.data.demo import generate_demo
from medres.data.demo.export import generate_export
from medres.data.index import index_dicom
from medres.data.index.__main__ import main
from medres.data.index.parts import index_part, merge_parts, part_of
from medres.errors import DataError
from tests.data.dicom_factory import write_series

KEY = "index-parts-test-key-0123456789abcdef"


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", KEY)


def _same_outputs(a: Path, b: Path) -> None:
    for name in ("manifest.csv", "index.csv", "private/pseudonyms.csv", "private/files.csv",
                 "private/series.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert sorted(p.relative_to(a).as_posix() for p in (a / "series").rglob("*")) == \
        sorted(p.relative_to(b).as_posix() for p in (b / "series").rglob("*"))


@pytest.mark.slow
def test_demo_export_in_three_parts_equals_one_part(tmp_path: Path, keyed: None) -> None:
    labels = generate_export(generate_demo(tmp_path / "builtin", n_patients=4), tmp_path)
    export = tmp_path / "export"
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  index:\n    label_columns: [label, site]\n")
    index_dicom(export, tmp_path / "one", labels=labels, rules=IndexConfig(label_columns=["label", "site"]))
    sharded = tmp_path / "sharded"
    shares = [main([str(export), "--out", str(sharded), "--num-parts", "3", "--part-id", str(i),
                    "--no-progress"]) for i in (2, 0, 1)]
    assert shares == [0, 0, 0]
    files = [p for p in export.rglob("*") if p.is_file()]
    parts = {part_of(p.relative_to(export).as_posix(), 3) for p in files}
    assert parts == {0, 1, 2}  # every part had work
    assert main(["--merge", str(sharded), "--labels", str(labels), "--config", str(config),
                 "--no-progress"]) == 0
    _same_outputs(tmp_path / "one", sharded)
    with open(sharded / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) >= 3 and all(r["label"] for r in rows)
    # a second merge changes nothing
    assert main(["--merge", str(sharded), "--labels", str(labels), "--config", str(config),
                 "--no-progress"]) == 0
    _same_outputs(tmp_path / "one", sharded)


def test_studies_in_three_parts_equal_one_part(tmp_path: Path, keyed: None) -> None:
    export = tmp_path / "export"
    for n in range(6):  # 6 studies of an axial series and a localizer, in patient/study/series folders
        def tags(k: int, ds: pydicom.Dataset, n: int = n) -> None:
            ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.498.7.{n}"
            ds.PatientID, ds.AccessionNumber = f"P{n // 2}", f"A{n}"

        def scout(k: int, ds: pydicom.Dataset, n: int = n) -> None:
            tags(k, ds)
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

        write_series(export / f"P{n // 2}" / f"S{n}" / "ax", 3, edit=tags)
        write_series(export / f"P{n // 2}" / f"S{n}" / "scout", 1, edit=scout, series_number=1)
    rules = IndexConfig(min_slices=2)
    index_dicom(export, tmp_path / "one", rules=rules)
    out = tmp_path / "sharded"
    counts = [index_part(export, out, num_parts=3, part_id=i, rules=rules).files for i in range(3)]
    assert sum(counts) == 24 and min(counts) > 0
    merged = merge_parts(out, export, rules=rules)
    assert (merged.series, merged.kept, merged.read) == (12, 6, 0)
    _same_outputs(tmp_path / "one", out)


def test_a_series_across_parts_is_one_series_and_a_missing_part_is_named(tmp_path: Path, keyed: None
                                                                         ) -> None:
    export = tmp_path / "export"
    paths = write_series(tmp_path / "whole", 6, series_uid="1.2.826.0.1.3680043.8.498.1")
    names = [n for n in (f"f{k}" for k in range(100)) if part_of(f"{n}/x.dcm", 2) == 0][:1] + \
        [n for n in (f"f{k}" for k in range(100)) if part_of(f"{n}/x.dcm", 2) == 1][:1]
    for k, p in enumerate(paths):  # slices 0-2 in a folder of part 0, 3-5 in one of part 1
        target = export / names[k // 3] / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, target)
    rules = IndexConfig(min_slices=1)
    index_dicom(export, tmp_path / "one", rules=rules)
    out = tmp_path / "sharded"
    assert index_part(export, out, num_parts=2, part_id=0, rules=rules).files == 3
    with pytest.raises(DataError, match=r"1 of 2 parts are missing or unfinished \(--part-id 1\)"):
        merge_parts(out, rules=rules)
    assert index_part(export, out, num_parts=2, part_id=1, rules=rules).files == 3
    merged = merge_parts(out, rules=rules)
    assert merged.series == 1 and merged.kept == 1 and merged.read == 0  # every header came from the parts
    _same_outputs(tmp_path / "one", out)
    with open(out / "manifest.csv", newline="") as fh:
        assert [r["slices"] for r in csv.DictReader(fh)] == ["6"]
    foreign = tmp_path / "foreign"
    shutil.copytree(out / "parts", foreign / "parts")
    (foreign / "notes.txt").write_text("not medres's")
    with pytest.raises(DataError, match="not a medres index"):
        merge_parts(foreign, rules=rules)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt", "parts"]  # nothing written
    assert main([str(export), "--out", str(tmp_path / "x"), "--num-parts", "2", "--part-id", "2"]) == 2
