"""Whole-volume inference: sliding windows, window aggregation, flip TTA, masks in the source geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, Spacingd
from scipy import ndimage
from torch import nn

from medres.config import Config, load_config
from medres.data.readers.io import MedresReader
from medres.errors import DataError
from medres.inference.predictor import mask_to_source, predict_cases, write_fold_predictions
from medres.inference.sliding import SlidingWindow, aggregate_windows, infer_volume
from medres.layout import case_file_stem
from medres.models import DualOutput, create_model

THRESHOLD = 0.5


class ThresholdModel(nn.Module):
    """A 'perfect' pointwise model: foreground where the image exceeds THRESHOLD; the case-level logit of
    'nodule' rises with the window's brightest voxel (so only windows that see the blob are positive)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> DualOutput:
        fg = (x[:, :1] - THRESHOLD) * self.scale
        peak = x.flatten(1).amax(1)
        cls = torch.stack([torch.zeros_like(peak), (peak - THRESHOLD) * self.scale], dim=1)
        return DualOutput(cls, torch.cat([-fg, fg], dim=1))


def blob_volume(shape=(40, 34, 18), centre=(27.0, 10.0, 5.0), radius=(7.0, 6.0, 3.0)) -> np.ndarray:
    """A smooth off-centre ellipsoid in [0, 1] (off-centre, so a missed flip or transpose shows)."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    r = np.sqrt(sum(((grid[i] - centre[i]) / radius[i]) ** 2 for i in range(3)))
    return (1.0 / (1.0 + np.exp((r - 1.0) * 6.0))).astype(np.float32)  # 0.5 exactly on the ellipsoid


# LPS-like, axes permuted, anisotropic (0.8, 2.0, 1.1 mm), with an origin: nothing like the RAS 1.5 mm grid.
SOURCE_AFFINE = np.array([[-0.8, 0.0, 0.0, 31.0],
                          [0.0, 0.0, -1.1, 12.5],
                          [0.0, 2.0, 0.0, -40.0],
                          [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src.nii.gz"
    nib.save(nib.Nifti1Image(blob_volume(), SOURCE_AFFINE), path)
    return path


def eval_pipeline(spacing=(1.5, 1.5, 1.5)) -> Compose:
    """An evaluation pipeline independent of medres.data.pipeline.transforms: reorient to RAS and resample."""
    return Compose([LoadImaged("image", reader=MedresReader(ndim=3)), EnsureChannelFirstd("image"),
                    Orientationd("image", "RAS"), Spacingd("image", spacing, mode="bilinear")])


def data_cfg(patch=(16, 16, 16)):
    return Config().data.model_copy(update={"patch_size": list(patch), "labels": ["normal", "nodule"]})


def test_aggregate_windows_by_hand():
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert torch.allclose(aggregate_windows(p, "max"), torch.tensor([0.2, 0.8]))
    logp = torch.log(p).mean(0)
    assert torch.allclose(aggregate_windows(p, "mean"), torch.exp(logp) / torch.exp(logp).sum())
    multi = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    assert torch.allclose(aggregate_windows(multi, "max"), multi[1])  # most abnormal window, a distribution
    with pytest.raises(ValueError):
        aggregate_windows(p, "median")


def test_single_window_equals_plain_forward():
    torch.manual_seed(0)
    model = create_model("dual_resnet10", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2,
                         base_channels=8).eval()
    x = torch.randn(1, 24, 24, 24)
    pred = infer_volume(model, x, SlidingWindow([24, 24, 24]))
    with torch.no_grad():
        out = model(x[None])
    torch.testing.assert_close(pred.seg_logits, out.seg_logits[0])
    torch.testing.assert_close(pred.cls_probs, torch.softmax(out.cls_logits[0], 0))


def test_sliding_windows_stitch_and_max_pool_a_small_finding():
    x = torch.from_numpy(blob_volume())[None]  # [1, 40, 34, 18], windows of 16^3
    model = ThresholdModel()
    pred = infer_volume(model, x, SlidingWindow([16, 16, 16], overlap=0.25))
    with torch.no_grad():
        full = model(x[None]).seg_logits[0]
    # a pointwise model gives the same logits whichever windows cover a voxel
    torch.testing.assert_close(pred.seg_logits, full, atol=1e-4, rtol=1e-4)
    windows = pred.window_probs[0]
    assert windows.shape[0] > 8 and (windows[:, 1] < 0.5).sum() > 0  # most windows miss the blob
    assert pred.cls_probs[1] == pytest.approx(float(windows[:, 1].max()))
    mean = infer_volume(model, x, SlidingWindow([16, 16, 16], cls_aggregate="mean")).cls_probs
    assert mean[1] < pred.cls_probs[1] - 0.2  # averaging dilutes the one window that sees the finding


def test_flip_tta_unflips_segmentation():
    x = torch.from_numpy(blob_volume())[None]
    model = ThresholdModel()
    plain = infer_volume(model, x, SlidingWindow([16, 16, 16]))
    tta = infer_volume(model, x, SlidingWindow([16, 16, 16], tta=True))
    assert tta.window_probs.shape[0] == 4  # identity + one flip per axis
    torch.testing.assert_close(tta.seg_logits, plain.seg_logits, atol=1e-4, rtol=1e-4)
    # Without un-flipping, the off-centre blob's average would move: check the test can fail.
    flipped = infer_volume(model, torch.flip(x, [1]), SlidingWindow([16, 16, 16])).seg_logits
    assert (flipped - plain.seg_logits).abs().max() > 1.0


def test_2d_model_on_a_volume_runs_slice_by_slice():
    x = torch.from_numpy(blob_volume())[None]  # [1, 40, 34, 18]
    model = ThresholdModel()
    pred = infer_volume(model, x, SlidingWindow([16, 16], tta=True))
    with torch.no_grad():
        full = model(x[None]).seg_logits[0]
    torch.testing.assert_close(pred.seg_logits, full, atol=1e-4, rtol=1e-4)
    assert pred.window_probs.shape[:2] == (3, 18 * 9)  # identity + 2 flips; 18 slices of 3x3 windows
    assert pred.cls_probs[1] > 0.9


def test_mask_overlays_source_after_reorient_and_resample(source, tmp_path):
    """A perfect model run on the RAS 1.5 mm grid gives back the thresholded SOURCE within 1 grid voxel."""
    sample = eval_pipeline()({"image": str(source)})
    image = sample["image"]
    assert tuple(image.shape[1:]) != blob_volume().shape  # the grid really differs from the source
    df = predict_cases(ThresholdModel(), [{"case_id": "c/1", "patient_id": "p1", "image": str(source),
                                           "mask": None, "label": 1, "site": "A"}],
                       data_cfg(), fold=3, seg_dir=tmp_path / "seg", seg_relative_to=tmp_path,
                       transform=eval_pipeline())
    assert df.loc[0, "seg_path"] == f"seg/{case_file_stem('c/1')}.nii.gz"
    out = nib.load(tmp_path / df.loc[0, "seg_path"])
    src = nib.load(source)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    pred = np.asarray(out.dataobj).astype(bool)
    ref = src.get_fdata() > THRESHOLD
    spacing = np.abs(SOURCE_AFFINE[:3, :3]).sum(0)
    # distance (mm) from each voxel to the nearest voxel of the other class in the reference
    to_other = np.where(ref, ndimage.distance_transform_edt(ref, sampling=spacing),
                        ndimage.distance_transform_edt(~ref, sampling=spacing))
    wrong = pred != ref
    assert ref.sum() > 200 and wrong.sum() < 0.2 * ref.sum()
    assert to_other[wrong].max() <= 1.5 + 1e-6  # disagreement only at the boundary (grid voxel 1.5 mm)
    np.testing.assert_allclose(ndimage.center_of_mass(pred), ndimage.center_of_mass(ref), atol=0.2)
    dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
    assert dice > 0.9


def test_mask_to_source_identity_is_exact():
    logits = torch.randn(3, 7, 6, 5)
    aff = torch.tensor(SOURCE_AFFINE)
    mask = mask_to_source(logits, aff, aff, (7, 6, 5))
    assert torch.equal(mask.as_tensor(), torch.argmax(logits, 0).to(torch.uint8))


def test_mask_to_source_takes_the_grid_affine_over_the_logits_own_meta():
    """A 2D model's output on a whole image keeps the input's MetaTensor meta: the grid affine given
    wins, silently (no MONAI 'this will be overwritten' warning per case), with the plain tensor's result."""
    import warnings

    from monai.data import MetaTensor

    logits = torch.randn(3, 8, 6, 1)
    grid = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    src = torch.diag(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    carried = MetaTensor(logits.clone(), affine=torch.eye(4) * 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mask_to_source(carried, grid, src, (16, 12))
    want = mask_to_source(logits, grid, src, (16, 12))
    assert got.shape == (16, 12) and torch.equal(got.as_tensor(), want.as_tensor())
    assert torch.equal(got.affine.float(), src)


def test_predictions_table_and_fold_files(source, tmp_path):
    # the default evaluation pipeline (medres.data.pipeline.transforms), intensities kept as they are
    cfg = Config()
    cfg.data = data_cfg().model_copy(update={"normalize": "none", "spacing": [1.5, 1.5, 1.5]})
    recs = [{"case_id": "a", "patient_id": "p1", "image": str(source), "mask": None, "label": 1,
             "site": "A", "sex": "F", "study_uid": "1.2.3"},
            {"case_id": "b", "patient_id": "p2", "image": str(source), "mask": str(source), "label": 0,
             "site": "B", "sex": "M", "study_uid": "1.2.4"}]
    df = write_fold_predictions(tmp_path / "run", 2, ThresholdModel(), recs, cfg)
    back = pd.read_parquet(tmp_path / "run" / "fold_2" / "predictions.parquet")
    assert list(back.columns) == ["case_id", "patient_id", "fold", "y_true", "p_normal", "p_nodule", "y_pred",
                                  "y_pred_argmax", "site", "sex", "image", "mask", "seg_path", "logit_normal",
                                  "logit_nodule"]
    pd.testing.assert_frame_equal(back, df)
    # the fold tables keep the case-level log-probabilities, from which calibration is fitted
    np.testing.assert_allclose(np.exp(back[["logit_normal", "logit_nodule"]]), back[["p_normal", "p_nodule"]],
                               atol=1e-12)
    assert back["y_true"].tolist() == [1, 0] and back["fold"].tolist() == [2, 2]
    assert back["y_pred"].tolist() == back["y_pred_argmax"].tolist() == [1, 1]  # no operating point yet
    assert np.allclose(back[["p_normal", "p_nodule"]].sum(axis=1), 1)
    assert back["mask"].tolist() == ["", str(source)]
    assert (tmp_path / "run" / back.loc[1, "seg_path"]).is_file()
    assert back.loc[0, "seg_path"] == f"fold_2/seg/{case_file_stem('a')}.nii.gz"
    write_fold_predictions(tmp_path / "run", 2, ThresholdModel(), recs[:1], cfg, name="test_predictions")
    assert len(pd.read_parquet(tmp_path / "run" / "fold_2" / "test_predictions.parquet")) == 1


def test_window_aggregation_set_in_a_config_file_reaches_the_fold_table(source, tmp_path):
    """``evaluate.cls_aggregate: mean`` in a YAML file changes the case probability the fold table holds:
    the mean over windows of a scan where one window sees the finding, as infer_volume computes it."""
    (tmp_path / "mean.yaml").write_text("evaluate:\n  cls_aggregate: mean\n")
    tables = {}
    for how, cfg in (("max", Config()), ("mean", load_config(tmp_path / "mean.yaml"))):
        cfg.data = data_cfg().model_copy(update={"normalize": "none", "spacing": [1.5, 1.5, 1.5]})
        recs = [{"case_id": "a", "patient_id": "p1", "image": str(source), "mask": None, "label": 1}]
        tables[how] = write_fold_predictions(tmp_path / how, 0, ThresholdModel(), recs, cfg, masks=False)
    x = eval_pipeline()({"image": str(source)})["image"]
    ref = {how: float(infer_volume(ThresholdModel(), x, SlidingWindow([16, 16, 16], cls_aggregate=how))
                      .cls_probs[1]) for how in ("max", "mean")}
    assert ref["mean"] < ref["max"] - 0.1  # the check can fail: the two aggregations differ on this scan
    for how in ("max", "mean"):
        assert tables[how]["p_nodule"].iloc[0] == pytest.approx(ref[how], abs=1e-4)


def test_fold_masks_of_ids_that_differ_only_in_unsafe_characters_are_distinct_files(tmp_path):
    """Training's ``fold_k/seg/``: ids that the old rule mapped to one name get a file each, and each file
    holds its own case's mask (two different sources: the masks differ)."""
    cfg = Config()
    cfg.data = data_cfg().model_copy(update={"normalize": "none", "spacing": [1.5, 1.5, 1.5]})
    sources = []
    for k, centre in enumerate(((27.0, 10.0, 5.0), (12.0, 22.0, 11.0))):
        path = tmp_path / f"src{k}.nii.gz"
        nib.save(nib.Nifti1Image(blob_volume(centre=centre), SOURCE_AFFINE), path)
        sources.append(path)
    ids = ["症例1", "病例1", "P1 S1", "P1_S1"]
    recs = [{"case_id": c, "patient_id": f"p{i}", "image": str(sources[i % 2]), "mask": None, "label": 1,
             "row": i + 1} for i, c in enumerate(ids)]
    df = write_fold_predictions(tmp_path / "run", 0, ThresholdModel(), recs, cfg)
    paths = df["seg_path"].tolist()
    assert len(set(paths)) == 4 and len({p.casefold() for p in paths}) == 4
    assert sorted(p.name for p in (tmp_path / "run" / "fold_0" / "seg").iterdir()) == sorted(
        Path(p).name for p in paths)
    masks = [np.asarray(nib.load(tmp_path / "run" / p).dataobj) for p in paths]
    for i in range(4):
        ref = nib.load(sources[i % 2]).get_fdata() > THRESHOLD
        assert (masks[i].astype(bool) & ref).sum() > 0.8 * ref.sum()
        assert not np.array_equal(masks[i], masks[(i + 1) % 4])


def test_a_repeated_case_id_is_refused_before_any_mask_is_written(tmp_path):
    recs = [{"case_id": "A1", "image": "unused", "row": 3}, {"case_id": "A1", "image": "unused", "row": 7}]
    with pytest.raises(DataError, match=r"case 'A1' \(row 3\) and case 'A1' \(row 7\) would share"):
        predict_cases(ThresholdModel(), recs, data_cfg(), seg_dir=tmp_path / "seg", transform=eval_pipeline())
    assert not (tmp_path / "seg").exists()


def test_unreadable_scan_is_a_data_error_naming_the_case(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not a scan")
    with pytest.raises(DataError, match="case 'x'.*bad.nii.gz"):
        predict_cases(ThresholdModel(), [{"case_id": "x", "image": str(bad)}], data_cfg(),
                      transform=eval_pipeline())


def test_a_dicom_radiographs_own_view_fills_the_view_subgroup(tmp_path):
    """ViewPosition from the DICOM header becomes the ``view`` column when the manifest has none; a
    manifest's own ``view`` cell wins."""
    from medres.config import DataConfig
    from tests.data.readers.test_radiograph import make_radiograph

    for name, view in (("ap.dcm", "AP"), ("pa.dcm", "PA")):
        make_radiograph(ViewPosition=view).save_as(tmp_path / name, enforce_file_format=True)
    cfg = DataConfig(modality="XR", spatial_dims=2, orientation=None, spacing=[1.0, 1.0], normalize="none",
                     patch_size=[32, 32], labels=["normal", "nodule"], cache="none",
                     augment={"enabled": False})
    recs = [{"case_id": "a", "patient_id": "p1", "image": str(tmp_path / "ap.dcm"), "label": 0, "site": "A"},
            {"case_id": "b", "patient_id": "p2", "image": str(tmp_path / "pa.dcm"), "label": 1, "site": "B"}]
    df = predict_cases(ThresholdModel(), recs, cfg)
    assert df["view"].tolist() == ["AP", "PA"]
    recs[0]["view"] = "LATERAL"  # the manifest says otherwise: its cell is kept
    assert predict_cases(ThresholdModel(), recs, cfg)["view"].tolist() == ["LATERAL", "PA"]
