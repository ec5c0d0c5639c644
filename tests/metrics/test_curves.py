"""ROC / PR curves against scikit-learn; the ROC band's resampled curves against explicit resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medres.errors import DataError
from medres.metrics import auroc
from medres.metrics.curves import precision_recall_curve, roc_band, roc_curve


def _sample(seed: int, n: int = 200):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    s = np.round(y + rng.normal(size=n), 1)  # ties
    return y, s


def _interp_top(grid, fpr, tpr):
    """Linear interpolation of the ROC path; where the grid hits a vertical step, its top."""
    return np.array([tpr[fpr == g].max() if np.any(fpr == g) else np.interp(g, fpr, tpr) for g in grid])


@pytest.mark.parametrize("seed", range(3))
def test_curves_match_sklearn(seed):
    y, s = _sample(seed)
    fpr, tpr, thr = roc_curve(y, s)
    ref_fpr, ref_tpr, ref_thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    np.testing.assert_allclose(thr[1:], ref_thr[1:])
    precision, recall, thresholds = precision_recall_curve(y, s)
    ref_p, ref_r, ref_t = skm.precision_recall_curve(y, s, drop_intermediate=False)
    keep = ref_t >= s.min()
    np.testing.assert_allclose(precision, ref_p[:-1][keep][::-1])
    np.testing.assert_allclose(recall, ref_r[:-1][keep][::-1])
    np.testing.assert_allclose(thresholds, ref_t[keep][::-1])


def test_band_curve_is_the_roc_of_the_resampled_patients():
    y, s = _sample(4, n=120)
    groups = np.arange(120) // 3 * 5  # 40 patients with 3 scans each
    grid = np.linspace(0, 1, 51)
    full = roc_band(y, s, groups, fpr_grid=grid, n_resamples=1, seed=9)
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(full.tpr, _interp_top(grid, fpr, tpr), atol=1e-12)
    patients = np.unique(groups)
    drawn = patients[np.random.default_rng(9).integers(0, patients.size, patients.size)]
    rows = np.concatenate([np.flatnonzero(groups == g) for g in drawn])
    fpr_r, tpr_r, _ = skm.roc_curve(y[rows], s[rows], drop_intermediate=False)
    np.testing.assert_allclose(full.tpr_low, _interp_top(grid, fpr_r, tpr_r), atol=1e-12)


def test_band_brackets_the_curve_and_integrates_to_auroc():
    y, s = _sample(5, n=400)
    band = roc_band(y, s, n_resamples=300, fpr_grid=np.linspace(0, 1, 2001))
    assert np.trapezoid(band.tpr, band.fpr) == pytest.approx(auroc(y, s), abs=1e-3)
    inside = (band.tpr_low <= band.tpr + 1e-12) & (band.tpr <= band.tpr_high + 1e-12)
    assert inside.mean() > 0.98 and band.n_valid == 300
    middle = (band.fpr > 0.05) & (band.fpr < 0.5)
    assert np.all(band.tpr_high[middle] - band.tpr_low[middle] > 0.02)


def test_one_class_has_no_curve():
    with pytest.raises(DataError, match="one class"):
        roc_curve([0, 0, 0], [0.1, 0.2, 0.3])
