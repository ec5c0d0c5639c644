"""The XR pipeline (``data.modality: XR``): PNG exports with a manifest pixel_spacing, masks on the image's
pixels, and each bad input a DataError naming the manifest row, the file, what is wrong and what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medres.config import DataConfig
from medres.data.pipeline.datasets import CaseDataset, manifest_to_records
from medres.errors import DataError

CFG = DataConfig(modality="XR", spatial_dims=2, orientation=None, spacing=[2.0, 2.0], normalize="none",
                 patch_size=[32, 32], labels=["normal", "opacity"], cache="none", augment={"enabled": False},
                 mask_labels={0: "background", 1: "lung", 2: "opacity"}, radiograph={"views": ["PA", "AP"]})
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


def _png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return path.name


def _cohort(tmp_path: Path, **row_edits: dict) -> list[dict]:
    rows = []
    for i in range(3):
        img = np.full((40, 60), 30, np.uint8)
        img[5:35, 10:50] = 200
        mask = np.zeros((40, 60), np.uint8)
        mask[8:32, 12:48] = 1
        rows.append({"case_id": f"c{i}", "patient_id": f"p{i}", "label": "normal", "view": "PA",
                     "pixel_spacing": "0.5", "image": _png(tmp_path / f"c{i}.png", img),
                     "mask": _png(tmp_path / f"c{i}_mask.png", mask)})
    for i, edit in row_edits.items():
        rows[int(i[1:])].update(edit)
    df = pd.DataFrame(rows, dtype=str)
    df["image"] = [str(tmp_path / v) for v in df["image"]]
    df["mask"] = [str(tmp_path / v) if v else "" for v in df["mask"]]
    return manifest_to_records(df, CFG)


def test_png_export_takes_its_spacing_from_the_manifest_and_its_mask_the_image_grid(tmp_path):
    ds = CaseDataset(_cohort(tmp_path), CFG, train=False, cache="none")
    item = ds[0]
    image, mask = item["image"], item["mask"]
    assert tuple(image.shape) == (1, 16, 11)  # 60 x 40 pixels of 0.5 mm -> 2 mm pixels (X = columns)
    assert np.allclose(np.abs(np.diag(np.asarray(image.affine))[:2]), [2.0, 2.0])
    assert float(image.max()) == pytest.approx(200 / 255, abs=0.02) and tuple(mask.shape) == (1, 16, 11)
    assert image.meta["spacing_source"] == "manifest pixel_spacing"
    train = CaseDataset(_cohort(tmp_path), CFG.model_copy(
        update={"patch_size": [8, 8]}), train=True, cache="none")
    assert tuple(train[1]["image"].shape) == (1, 8, 8)  # 2D patches straight from the 2D image


def _raises(tmp_path: Path, match: str, cfg: DataConfig = CFG, **edits: dict) -> DataError:
    records = _cohort(tmp_path, **edits)
    ds = CaseDataset(records, cfg, train=False, cache="none")
    with pytest.raises(DataError, match=match) as info:
        ds[1]
    err = info.value
    assert err.row == 2 and err.case_id == "c1" and err.path is not None and err.hint, err
    return err


def test_mask_of_another_size(tmp_path):
    _png(tmp_path / "small.png", np.zeros((20, 30), np.uint8))
    err = _raises(tmp_path, "mask is \\(30, 20\\) pixels but its radiograph is \\(60, 40\\)",
                  r1={"mask": "small.png"})
    assert Path(err.path).name == "small.png" and "label map" in err.hint


def test_unknown_spacing_is_refused_when_the_config_resamples_in_mm(tmp_path):
    err = _raises(tmp_path, "unknown pixel spacing", r1={"pixel_spacing": ""})
    assert "pixel_spacing" in err.hint and "data.spacing: null" in err.hint
    ok = CaseDataset(_cohort(tmp_path, r1={"pixel_spacing": ""}), CFG.model_copy(update={"spacing": None}),
                     train=False, cache="none")
    assert ok[1]["image"].meta["spacing_source"] == "unknown"


def test_a_malformed_spacing_cell(tmp_path):
    _raises(tmp_path, "pixel_spacing 'half a mm'", r1={"pixel_spacing": "half a mm"})


def test_lateral_view_in_the_manifest_is_refused_by_the_views_rule(tmp_path):
    _raises(tmp_path, "LATERAL view", r1={"view": "LATERAL"})


def test_rgb_image_where_a_grayscale_radiograph_is_expected(tmp_path):
    _png(tmp_path / "rgb.png", np.zeros((40, 60, 3), np.uint8) + np.array([200, 10, 10], np.uint8))
    _raises(tmp_path, "colour .* where a grayscale radiograph is expected", r1={"image": "rgb.png"})


def test_a_ct_slice_is_not_a_radiograph(tmp_path):
    err = _raises(tmp_path, "is a CT image, not a projection radiograph", r1={"image": str(CT_SMALL),
                                                                             "mask": ""})
    assert Path(err.path).name == "CT_small.dcm"


def test_preflight_check_sizes_a_png_by_its_manifest_spacing(tmp_path):
    from medres.data.check import check_cohort

    records = _cohort(tmp_path)
    lines = ["case_id,patient_id,label,view,pixel_spacing,image,mask"]
    lines += [f"{r['case_id']},{r['patient_id']},normal,PA,0.5,{r['image']},{r['mask']}" for r in records]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    result = check_cohort(tmp_path / "m.csv", vocabulary=CFG.labels, mask_labels=[0, 1, 2], ndim=2,
                          spacing=[2.0, 2.0], patch_size=[32, 32],
                          radiograph={"require_spacing": True, "views": ["PA", "AP"]})
    assert result.ok, result.problems
    # 60 x 40 pixels of 0.5 mm (the manifest's, not the PNG's 1 mm default) -> [16, 11] at 2 mm, as training
    assert "after resampling: [16, 11]" in str(result.warnings[0]), result.warnings


def test_a_16_bit_png_is_scaled_by_its_bit_depth_not_its_maximum(tmp_path):
    dim = np.full((40, 60), 30, np.uint16)
    dim[5:35, 10:50] = 200  # a dark 16-bit export: every value below 256
    bright = dim * 300  # the same image using most of the 16 bits
    for i, img in enumerate((dim, bright)):
        Image.fromarray(img).save(tmp_path / f"deep{i}.png")
    records = _cohort(tmp_path, c0={"image": "deep0.png"}, c1={"image": "deep1.png"})
    ds = CaseDataset(records, CFG.model_copy(update={"spacing": None}), train=False, cache="none")
    assert float(ds[0]["image"].max()) == pytest.approx(200 / 65535, rel=1e-4)
    assert float(ds[1]["image"].max()) == pytest.approx(60000 / 65535, rel=1e-4)
    assert ds[0]["image"].meta["voi"] == "none (an export of 16 bits per pixel, divided by 65535)"


def test_a_grey_radiograph_saved_as_rgb_or_rgba_is_read_as_grey(tmp_path):
    grey = np.full((40, 60), 30, np.uint8)
    grey[5:35, 10:50] = 200
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb_grey.png")
    opaque = np.full_like(grey, 255)
    Image.fromarray(np.stack([grey] * 3 + [opaque], axis=-1)).save(tmp_path / "rgba_grey.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb_grey.jpg", quality=90)
    records = _cohort(tmp_path, c0={"image": "rgb_grey.png"}, c1={"image": "rgba_grey.png"},
                      c2={"image": "rgb_grey.jpg"})
    ds = CaseDataset(records, CFG.model_copy(update={"spacing": None}), train=False, cache="none")
    with Image.open(tmp_path / "rgb_grey.jpg") as jpg:  # the JPEG's grey as Pillow converts it
        jpeg_grey = np.asarray(jpg.convert("L"))
    for i, ref, atol in ((0, grey, 1e-6), (1, grey, 1e-6), (2, jpeg_grey, 1.01 / 255)):
        image = ds[i]["image"]
        assert tuple(image.shape) == (1, 60, 40), i
        assert np.allclose(np.asarray(image[0]), ref.T / 255.0, atol=atol), i
