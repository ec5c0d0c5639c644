"""The demo cohort as a hospital export, indexed: the manifest's scans and masks equal the built-in
cohort's voxel for voxel, the extra series are skipped with their reasons, nothing identifying leaks."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from medres.config import IndexConfig
from medres.data.check import check_cohort
from medres.data.demo import generate_demo
from medres.data.demo.export import generate_export
from medres.data.index import index_dicom
from medres.data.readers.io import load_image
from tests.data.annotation_factory import dciodvfy, dciodvfy_errors


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_export_indexes_back_to_the_builtin_cohort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDRES_PROJECT_KEY", "demo-export-test-key-0123456789")
    labels = generate_export(generate_demo(tmp_path / "builtin", n_patients=4), tmp_path)
    export = tmp_path / "export"
    names = [p.name for p in export.rglob("*") if p.is_file()]
    assert names and all(re.fullmatch(r"[0-9]+(\.[0-9]+)+", n) for n in names)  # SOP UIDs, no extension
    assert (export / "DEMO^0001").is_dir()  # patient-named folders, as some exports have
    if dciodvfy() is not None:  # every series of the demo export is valid DICOM (its first and last file)
        for folder in sorted({p.parent for p in export.rglob("*") if p.is_file()}):
            files = sorted(folder.iterdir())
            for path in {files[0], files[-1]}:
                assert dciodvfy_errors(path) == [], path.relative_to(export)
    out = tmp_path / "indexed"
    index_dicom(export, out, labels=labels, rules=IndexConfig(label_columns=["label", "site"]))
    builtin = {r["case_id"]: r for r in _read(tmp_path / "builtin" / "manifest.csv")}
    manifest = _read(out / "manifest.csv")
    assert len(manifest) == len(builtin)
    by_case = {r["case_id"]: r for r in _read(out / "private" / "pseudonyms.csv")}
    for row in manifest:
        accession = by_case[row["case_id"]]["AccessionNumber"]  # ACC<pid><study>
        ref = builtin[f"P{accession[3:7]}_S{accession[7:]}"]
        assert (row["label"], row["site"]) == (ref["label"], ref["site"])
        mine, theirs = load_image(out / row["image"]), load_image(tmp_path / "builtin" / ref["image"])
        np.testing.assert_array_equal(np.asarray(mine), np.round(np.asarray(theirs)))
        np.testing.assert_allclose(np.asarray(mine.affine), np.asarray(theirs.affine), atol=1e-4)
        mask = np.asarray(load_image(out / row["mask"]))
        np.testing.assert_array_equal(mask, np.asarray(load_image(tmp_path / "builtin" / ref["mask"])))
    assert len({r["patient_id"] for r in manifest}) == len({r["patient_id"] for r in builtin.values()})
    index = _read(out / "index.csv")
    reasons = " | ".join(r["reason"] for r in index)
    assert "a localizer (ImageType LOCALIZER)" in reasons and "not ORIGINAL" in reasons
    kinds = {r["kind"] for r in index}
    assert {"SEG", "RTSTRUCT"} <= kinds
    split = [r for r in index if r["kind"] == "series" and r["folders"] == "2"]
    assert len(split) == 1 and split[0]["verdict"] == "kept"
    assert check_cohort(out / "manifest.csv", vocabulary=["normal", "nodule"], mask_labels=[0, 1]).ok
    public = (out / "manifest.csv").read_text() + (out / "index.csv").read_text()
    for word in ("DEMO", "ACC0", "Demo Hospital", "2021010", "2022010", "2023010"):
        assert word not in public


def test_cli_export_layout_with_the_default_cohort_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """The README's ``python -m medres.data.demo --out X --layout export`` (no --n-patients) asks for the
    default 100 patients (it passed None and failed with a TypeError); the built-in cohort is made at 8
    here to keep the test short, the export from it for real. ``--kind cxr`` has no export layout."""
    import medres.data.demo.__main__ as demo

    asked = []

    def small_demo(out, *, n_patients, seed, **kwargs):
        asked.append(n_patients)
        return generate_demo(out, n_patients=8, seed=seed, **kwargs)

    monkeypatch.setattr(demo, "generate_demo", small_demo)
    assert demo.main(["--out", str(tmp_path / "x"), "--layout", "export"]) == 0
    assert asked == [100] and "next: python -m medres.data.index" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        demo.main(["--out", str(tmp_path / "y"), "--layout", "export", "--kind", "cxr"])
    assert info.value.code == 2 and "--kind ct_chest" in capsys.readouterr().err
