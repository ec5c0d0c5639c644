"""Segmentation metrics against docs/reference.md §5 values and MONAI's metric functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medres.errors import DataError
from medres.metrics.segmentation import (
    binary_segmentation_metrics,
    segmentation_metrics,
    summarise_segmentation,
    surface_distances,
)


def _cross_case():
    ref = np.zeros((11, 11), bool)
    ref[3:8, 3:8] = True
    pred = ref.copy()
    pred[5, 1:10] = True
    pred[1:10, 5] = True
    return pred, ref


def test_reference_values_cross():
    pred, ref = _cross_case()
    m = binary_segmentation_metrics(pred, ref, nsd_tolerance_mm=1.0)
    assert m.dice == pytest.approx(25 / 29)
    assert m.hd == pytest.approx(2.0) and m.hd95 == pytest.approx(2.0)
    assert m.assd == pytest.approx(0.4444, abs=1e-4)
    assert m.nsd == pytest.approx(0.8889, abs=1e-4)
    assert binary_segmentation_metrics(pred, ref, nsd_tolerance_mm=2.0).nsd == pytest.approx(1.0)
    assert m.iou == pytest.approx(25 / 33)
    assert m.ref_volume_ml == pytest.approx(25e-3) and m.pred_volume_ml == pytest.approx(33e-3)


def test_reference_values_outlier():
    ref = np.zeros((14, 14), bool)
    ref[1, 1] = True
    ref[9:12, 9:12] = True
    pred = np.zeros_like(ref)
    pred[9:12, 9:12] = True
    m = binary_segmentation_metrics(pred, ref)
    assert m.hd == pytest.approx(11.3137, abs=1e-4)
    assert m.hd95 == pytest.approx(6.7882, abs=1e-4)


def _blobs(seed: int, shape=(24, 28, 20)):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = np.array(shape) / 2
    ref = ((grid - centre[:, None, None, None]) ** 2 / np.array([36, 49, 25])[:, None, None, None]).sum(0) < 1
    noise = rng.normal(size=shape)
    shift = (rng.integers(-2, 3, 3) + centre)[:, None, None, None]
    pred = (((grid - shift) ** 2 / np.array([30, 55, 20])[:, None, None, None]).sum(0) + 0.15 * noise) < 1
    pred[rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(0, shape[2])] = True  # a speck
    return pred, ref


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.9, 2.5)])
def test_matches_monai(seed, spacing):
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    pred, ref = _blobs(seed)
    m = binary_segmentation_metrics(pred, ref, spacing, nsd_tolerance_mm=1.5)
    yp = torch.from_numpy(pred[None, None].astype(np.float32))
    yr = torch.from_numpy(ref[None, None].astype(np.float32))
    kw = dict(include_background=True, spacing=list(spacing))
    assert m.dice == pytest.approx(compute_dice(yp, yr, include_background=True).item(), rel=1e-6)
    assert m.hd == pytest.approx(compute_hausdorff_distance(yp, yr, **kw).item(), rel=1e-5)
    assert m.hd95 == pytest.approx(compute_hausdorff_distance(yp, yr, percentile=95, **kw).item(), rel=1e-5)
    assert m.assd == pytest.approx(compute_average_surface_distance(yp, yr, symmetric=True, **kw).item(),
                                   rel=1e-5)
    assert m.nsd == pytest.approx(compute_surface_dice(yp, yr, [1.5], **kw).item(), rel=1e-6)


def test_spacing_scales_distances_and_volumes():
    pred, ref = _blobs(4)
    one = binary_segmentation_metrics(pred, ref, 1.0)
    two = binary_segmentation_metrics(pred, ref, 2.0)
    assert two.hd95 == pytest.approx(2 * one.hd95) and two.assd == pytest.approx(2 * one.assd)
    assert two.dice == one.dice and two.ref_volume_ml == pytest.approx(8 * one.ref_volume_ml)
    d_pr, d_rp = surface_distances(pred, ref, (1.0, 1.0, 3.0))
    assert d_pr.min() >= 0 and np.isclose(max(d_pr.max(), d_rp.max()),
                                          binary_segmentation_metrics(pred, ref, (1, 1, 3)).hd)


def test_empty_mask_policy_and_n_valid():
    pred, ref = _cross_case()
    empty = np.zeros_like(ref)
    both = binary_segmentation_metrics(empty, empty)
    assert both.empty == "both" and both.dice == 1 and both.iou == 1 and both.nsd == 1
    assert math.isnan(both.hd95) and "both masks empty" in both.reasons["hd95"]
    missed = binary_segmentation_metrics(empty, ref)
    assert missed.empty == "prediction" and missed.dice == 0 and missed.nsd == 0
    assert math.isnan(missed.hd) and math.isnan(missed.assd) and missed.ref_volume_ml == pytest.approx(0.025)
    false_alarm = binary_segmentation_metrics(pred, empty)
    assert false_alarm.empty == "reference" and false_alarm.dice == 0
    summary = summarise_segmentation([binary_segmentation_metrics(pred, ref), both, missed, false_alarm])
    assert summary["dice"].n_valid == 4 and summary["dice"].n == 4
    assert summary["hd95"].n_valid == 1 and summary["hd95"].mean == pytest.approx(2.0)
    assert summary["dice"].mean == pytest.approx((25 / 29 + 1 + 0 + 0) / 4)


def test_label_maps_per_class():
    labels_ref = np.zeros((11, 11), int)
    labels_ref[3:8, 3:8] = 1
    labels_ref[0, 0:3] = 2
    pred, _ = _cross_case()
    labels_pred = pred.astype(int)
    out = segmentation_metrics(labels_pred, labels_ref, 0.5, classes={1: "lesion", 2: "vessel"})
    assert out["lesion"].dice == pytest.approx(25 / 29) and out["lesion"].hd == pytest.approx(1.0)
    assert out["vessel"].empty == "prediction" and out["vessel"].ref_volume_ml == pytest.approx(3 * 0.25e-3)


def test_bad_inputs():
    with pytest.raises(DataError, match="differ in shape"):
        binary_segmentation_metrics(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(DataError, match="spacing"):
        binary_segmentation_metrics(np.zeros((3, 3)), np.zeros((3, 3)), (1.0, 0.0))
