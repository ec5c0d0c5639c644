"""The chest X-ray demo cohort: three detectors, masks on each image's grid, the same field in mm,
deterministic bytes."""

from __future__ import annotations

import hashlib

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
