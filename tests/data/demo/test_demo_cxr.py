"""The chest X-ray demo cohort: three detectors, masks on each image's grid, the same field in mm,
deterministic bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medres.config import DataConfig
from medres.data.demo.cxr import FIELD_MM, generate_cxr_demo
from medres.data.pipeline.transforms import build_transforms
from tests.data.demo.digest import content_digest

# The plain cohort (9 patients, seed 0) as cxr.yaml's results were made on: it must never change.
PLAIN_MANIFEST_SHA256 = "cb55383bd76d773a9cda0b0905dd9c9c2235a9d30d4908864216e608fc0ccf75"
PLAIN_FIRST_IMAGE_SHA256 = "21cdf2351d3171cff94c56c15f32dbbda25202a3a8c7870dfa9bdf3a8cae4565"  # a DICOM file
PLAIN_CONTENT_SHA256 = "867e04836c6f2cd082353ca65cc9daa9e9d68788f89d2f669904e1d6a48985d2"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cxr") / "demo"
    return generate_cxr_demo(out, n_patients=9, seed=0)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_three_sites_store_radiographs_as_their_detectors_do(cohort):
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert set(df["site"]) == {"site_a", "site_b", "site_c"} and set(df["view"]) == {"PA"}
    assert set(df["label"]) == {"normal", "opacity"}
    for _, r in df.iterrows():
        path = cohort.parent / r["image"]
        if r["site"] == "site_c":
            assert path.suffix == ".png" and float(r["pixel_spacing"]) == 1.0
            continue
        ds = pydicom.dcmread(path)
        assert r["pixel_spacing"] == "" and ds.PatientOrientation == ["L", "F"]
        if r["site"] == "site_a":
            assert ds.Modality == "CR" and ds.PhotometricInterpretation == "MONOCHROME1"
            assert "VOILUTSequence" in ds and "WindowCenter" not in ds
        else:
            assert ds.Modality == "DX" and ds.PhotometricInterpretation == "MONOCHROME2"
            assert ds.BitsStored == 12 and "PixelSpacing" not in ds and "ImagerPixelSpacing" in ds
            raw = np.frombuffer(ds.PixelData, dtype="<u2")
            assert "WindowCenter" in ds and (raw >> 12).any()  # junk in the unused high bits


def test_every_image_reads_to_the_same_field_in_mm_with_its_mask(cohort):
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    cfg = DataConfig(modality="XR", spatial_dims=2, orientation=None, spacing=[3.0, 3.0], normalize="none",
                     patch_size=[128, 128], mask_labels={0: "background", 1: "lung", 2: "opacity"},
                     labels=["normal", "opacity"])
    tf = build_transforms(cfg, train=False)
    for _, r in df.iterrows():
        sample = tf({"image": str(cohort.parent / r["image"]), "mask": str(cohort.parent / r["mask"]),
                     "pixel_spacing": r["pixel_spacing"]})
        image, mask = sample["image"], sample["mask"]
        assert tuple(image.shape) == (1, 128, 128) == tuple(mask.shape), r["case_id"]
        assert float(image.min()) >= 0 and float(image.max()) <= 1
        assert np.allclose(np.abs(np.diag(np.asarray(image.affine))[:2]) * 127, FIELD_MM, atol=1.0)
        values = set(np.unique(np.asarray(mask)).tolist())
        assert values == ({0, 1, 2} if r["label"] == "opacity" else {0, 1}), r["case_id"]
        lung = np.asarray(mask[0]) >= 1  # lungs are darker than the soft tissue around them
        assert float(image[0][lung].mean()) < float(image[0][~lung].mean()) - 0.1, r["case_id"]


def test_output_is_byte_identical_and_reused(cohort, tmp_path):
    again = generate_cxr_demo(tmp_path / "again", n_patients=9, seed=0)
    assert _digest(again.parent) == _digest(cohort.parent)
    before = again.stat().st_mtime_ns
    assert generate_cxr_demo(tmp_path / "again", n_patients=9, seed=0).stat().st_mtime_ns == before


def test_plain_cohort_is_pinned(cohort):
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    assert hashlib.sha256(cohort.read_bytes()).hexdigest() == PLAIN_MANIFEST_SHA256
    first = cohort.parent / df.loc[0, "image"]
    assert hashlib.sha256(first.read_bytes()).hexdigest() == PLAIN_FIRST_IMAGE_SHA256
    assert content_digest(cohort.parent) == PLAIN_CONTENT_SHA256  # every image, mask and the stamp


def test_preflight_check_passes_the_demo_and_names_a_mask_of_another_size(cohort, tmp_path):
    from medres.data.check import check_cohort

    settings = dict(vocabulary=["normal", "opacity"], mask_labels=[0, 1, 2], ndim=2,
                    radiograph={"require_spacing": True, "views": ["PA", "AP"]})
    result = check_cohort(cohort, spacing=[3.0, 3.0], patch_size=[128, 128], **settings)
    assert result.ok and not result.warnings  # 128 x 128 after resampling, as training gets (above)
    df = pd.read_csv(cohort, dtype=str, keep_default_na=False)
    other = int(np.flatnonzero(df["site"] != df.loc[0, "site"])[0])  # another detector: another size
    for col in ("image", "mask"):
        df[col] = [str(cohort.parent / v) for v in df[col]]
    df.loc[other, "mask"] = df.loc[0, "mask"]
    df.to_csv(tmp_path / "bad.csv", index=False)
    problems = check_cohort(tmp_path / "bad.csv", root=cohort.parent, **settings).problems
    assert [e.row for e in problems] == [other + 1] and "pixels but its radiograph is" in problems[0].reason


# --- the findings variant: effusion, cardiomegaly and the cardiothoracic ratio beside the opacity ---


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    from medres.data.demo.__main__ import main

    out = tmp_path_factory.mktemp("cxr_findings") / "demo"
    assert main(["--kind", "cxr_findings", "--out", str(out), "--n-patients", "12", "--quiet"]) == 0
    return out / "manifest.csv"


def _measured_ctr(p, step_mm=0.25):
    """The CTR measured on a fine raster of the generator's own heart and lung shapes (PA projection)."""
    from medres.data.demo.cxr import _heart, _lungs

    grid = np.arange(-FIELD_MM / 2, FIELD_MM / 2, step_mm)
    x, y = grid[None, :], grid[:, None]
    right, left = _lungs(x, y, p)

    def widest(region):
        rows = [np.flatnonzero(r) for r in region if r.any()]
        return max(r[-1] - r[0] + 1 for r in rows) * step_mm

    return widest(_heart(x, y, p)) / widest(right | left)


def test_the_ctr_is_the_heart_over_the_thorax_and_grows_with_the_heart():
    from medres.data.demo.cxr import _plan, cardiothoracic_ratio

    factors = np.linspace(0.6, 1.5, 19)
    ratios = [cardiothoracic_ratio(h) for h in factors]
    assert np.all(np.diff(ratios) > 0)
    p = _plan(6, 0, findings=True)[0]
    for h in (0.78, 1.0, 1.3):
        p.heart = h
        assert _measured_ctr(p) == pytest.approx(cardiothoracic_ratio(h), abs=0.004)
    p.scale = 0.9  # a smaller patient: the same ratio
    assert _measured_ctr(p) == pytest.approx(cardiothoracic_ratio(1.3), abs=0.004)


def test_findings_plan_for_150_patients_prevalence_range_and_unknown_cells():
    from medres.data.demo.cxr import _plan, _unlabelled_effusion, cardiothoracic_ratio

    plan = _plan(150, 0, findings=True)
    ctr = np.array([cardiothoracic_ratio(p.heart) for p in plan])
    assert ctr.min() >= 0.3 and ctr.max() <= 0.75
    enlarged, effusion = ctr > 0.5, np.array([any(p.effusion) for p in plan])
    opacity = np.array([bool(p.opacities) for p in plan])
    assert enlarged.sum() == effusion.sum() == opacity.sum() == 50  # a third each
    assert (enlarged & effusion).any() and (enlarged & opacity).any() and (effusion & opacity).any()
    assert (enlarged & effusion & opacity).any() and not (enlarged == effusion).all()
    both = [p for p in plan if all(p.effusion)]
    assert 5 <= len(both) <= 25  # some patients have an effusion on both sides
    cells = _unlabelled_effusion(plan, 0)
    values = sorted(cells.values())
    assert values.count("") == 5 and values.count("-1") == 7  # of 180 scans
    # the plain plan is untouched: same patients, sites and opacity quota
    plain = _plan(150, 0)
    assert [(p.sex, p.age, p.studies, bool(p.opacities)) for p in plain] == \
        [(p.sex, p.age, p.studies, bool(p.opacities)) for p in plan]
    assert not any(any(p.effusion) for p in plain)


def test_findings_manifest_columns(findings):
    from medres.data.demo.cxr import MANIFEST_COLUMNS

    df = pd.read_csv(findings, dtype=str, keep_default_na=False)
    assert list(df.columns) == [*MANIFEST_COLUMNS, "opacity", "effusion", "cardiomegaly", "ctr"]
    assert (df["opacity"] == (df["label"] == "opacity").map({True: "1", False: "0"})).all()
    ctr = df["ctr"].astype(float)
    assert ctr.between(0.3, 0.75).all()
    assert (df["cardiomegaly"] == (ctr > 0.5).map({True: "1", False: "0"})).all()  # iff, as radiologists
    assert set(df["effusion"]) <= {"0", "1", "-1", ""} and {"0", "1"} <= set(df["effusion"])
    assert df.groupby("patient_id")["ctr"].nunique().eq(1).all()  # follow-ups keep the heart
    stamp = json.loads((findings.parent / "demo_cohort.json").read_text())
    assert stamp["kind"] == "cxr_findings"


def _costophrenic(x, y, p, lung, side):
    """The lateral half of one lung's lowest 40 mm (bool), from the lung field with no fluid."""
    from medres.data.demo.cxr import _LUNG_CX

    lowest = np.max(np.broadcast_to(y, lung.shape)[lung])
    return lung & (side * (x - _LUNG_CX[side > 0] * p.scale) > 0) & (y > lowest - 40.0)


def test_an_effusion_is_a_dense_lateral_base_and_not_aerated_lung():
    from medres.data.demo.cxr import CXR_SITES, _lungs, _plan, _render

    site = CXR_SITES[2]
    plan = _plan(30, 0, findings=True)
    one_sided = [p for p in plan if any(p.effusion) and not all(p.effusion) and not p.opacities]
    assert len(one_sided) >= 3
    c = (np.arange(site.n) - (site.n - 1) / 2) * site.pixel_mm
    for p in one_sided:
        x, y = (c - p.shift[0])[None, :], (c - p.shift[1])[:, None]
        right, left = _lungs(x, y, p)
        wet = 0 if p.effusion[0] else 1
        density, label = _render(p, 0, site, 0)
        mean = [float(density[_costophrenic(x, y, p, lung, side)].mean())
                for lung, side in ((right, -1), (left, 1))]
        assert mean[wet] > mean[1 - wet] + 0.05, (p.index, p.effusion, mean)
        dry = dataclasses.replace(p, effusion=(0.0, 0.0))
        dry_density, dry_label = _render(dry, 0, site, 0)
        region = _costophrenic(x, y, p, (right, left)[wet], (-1, 1)[wet])
        assert float(density[region].mean()) > float(dry_density[region].mean()) + 0.05
        # the mask's lung is the aerated lung: smaller on the wet side, the same on the dry side
        wet_lung, dry_lung = (right, left)[wet], (right, left)[1 - wet]
        assert ((label == 1) & wet_lung).sum() < 0.97 * ((dry_label == 1) & wet_lung).sum()
        assert ((label == 1) & dry_lung).sum() == ((dry_label == 1) & dry_lung).sum()


def test_findings_cohort_is_deterministic_and_beside_the_plain_one(findings, cohort, tmp_path):
    again = generate_cxr_demo(tmp_path / "again", n_patients=12, seed=0, findings=True)
    assert _digest(again.parent) == _digest(findings.parent)
    assert content_digest(cohort.parent) == PLAIN_CONTENT_SHA256  # generating the variant changed nothing
    plain = generate_cxr_demo(tmp_path / "again", n_patients=12, seed=0)  # the other kind: replaced
    assert "ctr" not in pd.read_csv(plain).columns


def test_cli_writes_the_findings_cohort_to_its_default_folder(tmp_path, monkeypatch, capsys):
    from medres.data.demo.__main__ import main

    monkeypatch.chdir(tmp_path)
    assert main(["--kind", "cxr_findings", "--n-patients", "6", "--quiet"]) == 0
    manifest = tmp_path / "demo_data" / "cxr_findings" / "manifest.csv"
    assert str(Path("demo_data") / "cxr_findings" / "manifest.csv") in capsys.readouterr().out
    assert {"effusion", "cardiomegaly", "ctr"} <= set(pd.read_csv(manifest).columns)
