"""medres.training.losses: every loss checked against a formula written out by hand (numpy) on a known
batch."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

from medres.config import LossConfig
from medres.errors import ConfigError, DataError
from medres.training.losses import (
    FocalLoss,
    SegmentationLoss,
    balanced_class_weights,
    build_loss,
)

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-1.0, 3.0, 0.0], [1.5, 1.5, -2.0],
                   [0.0, -0.5, 2.5]])
LABELS = np.array([0, 2, 1, 1, -1])  # the last sample is unlabelled


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def out(cls=None, seg=None):  # a DualOutput-like object
    return SimpleNamespace(cls_logits=None if cls is None else torch.tensor(cls, dtype=torch.float32),
                           seg_logits=None if seg is None else torch.tensor(seg, dtype=torch.float32))


def cfg(**sections) -> LossConfig:
    return LossConfig.model_validate(sections)


def test_balanced_weights_match_scikit_learn():
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    np.testing.assert_allclose(balanced_class_weights(np.bincount(y)).numpy(), expected, rtol=1e-6)
    with pytest.raises(DataError, match=r"class index\(es\) \[1\] have no sample"):
        balanced_class_weights([5, 0, 3])


def test_weighted_cross_entropy_with_label_smoothing_by_hand():
    w, eps, k = np.array([0.5, 2.0, 1.0]), 0.1, 3
    loss = build_loss(cfg(cls={"weights": list(w), "label_smoothing": eps}, seg={}), class_counts=[1, 1, 1],
                      seg_head=False)
    total, terms = loss(out(LOGITS), torch.tensor(LABELS), None, epoch=0)
    lp = log_softmax(LOGITS)[LABELS >= 0]
    y = LABELS[LABELS >= 0]
    # torch's definition: (1-eps) * weighted NLL + eps/K * sum_c w_c (-log p_c), both over sum_i w_{y_i}
    nll = -(w[y] * lp[np.arange(len(y)), y]).sum()
    smooth = -(lp * w).sum()
    expected = ((1 - eps) * nll + eps / k * smooth) / w[y].sum()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert terms["loss_cls"].item() == pytest.approx(expected, rel=1e-5) and "loss_seg" not in terms


def test_balanced_cross_entropy_uses_training_counts():
    counts = [30, 10, 5]
    loss = build_loss(cfg(cls={"weights": "balanced"}), class_counts=counts, seg_head=False)
    total, _ = loss(out(LOGITS), torch.tensor(LABELS), None)
    w = compute_class_weight("balanced", classes=np.arange(3), y=np.repeat(np.arange(3), counts))
    lp = log_softmax(LOGITS)
    keep = LABELS >= 0
    y = LABELS[keep]
    expected = -(w[y] * lp[keep][np.arange(len(y)), y]).sum() / w[y].sum()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigError, match="class counts"):
        build_loss(cfg(cls={"weights": "balanced"}))
    with pytest.raises(ConfigError, match="2 class weights for 3 classes"):
        build_loss(cfg(cls={"weights": [1, 2]}), num_classes=3)


def test_focal_loss_by_hand():
    gamma, alpha = 2.0, np.array([0.25, 1.0, 0.75])
    loss = build_loss(cfg(cls={"type": "focal", "focal_gamma": gamma, "weights": list(alpha)}),
                      seg_head=False)
    total, _ = loss(out(LOGITS), torch.tensor(LABELS), None)
    keep = LABELS >= 0
    y = LABELS[keep]
    lp_y = log_softmax(LOGITS)[keep][np.arange(len(y)), y]
    expected = np.mean(-alpha[y] * (1 - np.exp(lp_y)) ** gamma * lp_y)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 without alpha is plain cross-entropy
    ce = torch.nn.functional.cross_entropy(torch.tensor(LOGITS[keep]), torch.tensor(y))
    focal = FocalLoss(0.0)(torch.tensor(LOGITS), torch.tensor(LABELS))
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_unlabelled_batch_gives_zero_not_nan():
    loss = build_loss(cfg(), seg_head=False)
    logits = torch.tensor(LOGITS, dtype=torch.float32, requires_grad=True)
    total, _ = loss(SimpleNamespace(cls_logits=logits, seg_logits=None), torch.full((5,), -1), None)
    total.backward()
    assert total.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def seg_batch(k: int = 3):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, k, 4, 4)).astype(np.float32)
    mask = np.zeros((3, 1, 4, 4), dtype=np.int64)
    mask[0, 0, 1:3, 1:3] = 1
    mask[1, 0, 0, :] = k - 1  # sample 2 has an empty mask (a scan without a nodule)
    return logits, mask


def dice_ce_by_hand(logits, mask, w, batch, lambda_dice=1.0, lambda_ce=1.0):
    """MONAI's DiceCELoss(softmax, to_onehot_y, include_background=False, weight=w) written out."""
    k = logits.shape[1]
    lp = log_softmax(logits.transpose(0, 2, 3, 1).reshape(-1, k))
    p = np.exp(lp).reshape(logits.shape[0], 4, 4, k).transpose(0, 3, 1, 2)
    g = np.concatenate([mask == c for c in range(k)], axis=1).astype(np.float64)
    axes = (0, 2, 3) if batch else (2, 3)
    tp = (p * g).sum(axes)[..., 1:]  # foreground classes only
    denom = (p.sum(axes) + g.sum(axes))[..., 1:]
    dice = 1 - (2 * tp + 1e-5) / (denom + 1e-5)
    if k - 1 > 1:  # MONAI applies the Dice class weights only when more than one channel is left
        dice = dice * w[1:]
    y = mask.reshape(-1)
    ce = -(w[y] * lp[np.arange(len(y)), y]).sum() / w[y].sum()
    return lambda_dice * dice.mean() + lambda_ce * ce


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("w", [[0.2, 3.0], [0.2, 3.0, 0.5]])
def test_dice_ce_by_hand(batch, w):
    logits, mask = seg_batch(len(w))
    w = np.array(w)
    loss = build_loss(cfg(seg={"class_weights": list(w), "batch_dice": batch, "lambda_ce": 0.5}),
                      cls_head=False, seg_classes=len(w))
    total, terms = loss(out(seg=logits), None, torch.tensor(mask))
    expected = dice_ce_by_hand(logits, mask, w, batch, lambda_ce=0.5)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert set(terms) == {"loss_seg", "w_cls", "w_seg"}


def test_missing_masks_can_be_skipped():
    logits, mask = seg_batch(2)
    has = torch.tensor([True, True, False])
    skip = SegmentationLoss(skip_missing=True)
    keep_all = SegmentationLoss()
    ones = np.ones(2)
    assert skip(torch.tensor(logits), torch.tensor(mask), has).item() == pytest.approx(
        dice_ce_by_hand(logits[:2], mask[:2], ones, True), rel=1e-5)
    assert keep_all(torch.tensor(logits), torch.tensor(mask), has).item() == pytest.approx(
        dice_ce_by_hand(logits, mask, ones, True), rel=1e-5)
    assert skip(torch.tensor(logits), torch.tensor(mask), torch.zeros(3, dtype=torch.bool)).item() == 0.0


def test_task_weights_fixed_and_warmup():
    logits, mask = seg_batch()
    o = out(LOGITS[:3], logits)
    y = torch.tensor(LABELS[:3])
    fixed = build_loss(cfg(task={"cls": 0.3, "seg": 2.0}))
    total, t = fixed(o, y, torch.tensor(mask), epoch=0)
    assert total.item() == pytest.approx(0.3 * t["loss_cls"].item() + 2.0 * t["loss_seg"].item(), rel=1e-6)
    warm = build_loss(cfg(task={"mode": "warmup", "cls": 0.5, "warmup_epochs": 4}))
    for epoch, w in [(0, 0.0), (1, 0.125), (2, 0.25), (4, 0.5), (10, 0.5)]:
        total, t = warm(o, y, torch.tensor(mask), epoch=epoch)
        assert t["w_cls"].item() == pytest.approx(w)
        assert total.item() == pytest.approx(w * t["loss_cls"].item() + t["loss_seg"].item(), rel=1e-6)


def test_uncertainty_weighting_by_hand_and_its_gradients():
    logits, mask = seg_batch()
    loss = build_loss(cfg(task={"mode": "uncertainty", "init_log_var": 0.3}))
    params = dict(loss.named_parameters())
    assert list(params) == ["log_vars"]  # what the optimizer must be given (build_optimizer: no decay)
    total, t = loss(out(LOGITS[:3], logits), torch.tensor(LABELS[:3]), torch.tensor(mask), epoch=0)
    lc, ls, s = t["loss_cls"].item(), t["loss_seg"].item(), 0.3
    assert total.item() == pytest.approx(np.exp(-s) * lc + s + np.exp(-s) * ls + s, rel=1e-6)
    assert t["w_cls"].item() == pytest.approx(np.exp(-s))
    total.backward()
    # d/ds_i [exp(-s_i) L_i + s_i] = 1 - exp(-s_i) L_i
    np.testing.assert_allclose(params["log_vars"].grad.numpy(), [1 - np.exp(-s) * lc, 1 - np.exp(-s) * ls],
                               rtol=1e-5)
