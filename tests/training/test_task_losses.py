"""The per-task losses of a configuration with ``tasks:``, against formulas written out in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medres.config import load_config
from medres.config.tasks import task_layout
from medres.errors import DataError
from medres.models import DualOutput
from medres.training.losses import (
    MultilabelLoss,
    RegressionLoss,
    build_task_loss,
    fit_task_scales,
)

FINDINGS = {"name": "findings", "type": "multilabel", "columns": ["opacity", "effusion"]}
CTR = {"name": "ctr", "type": "regression", "column": "ctr", "loss": "huber"}
ABNORMAL = {"name": "abnormal", "type": "binary", "column": "abn"}

NAN = math.nan
X = np.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.5], [0.1, -2.2]])  # logits of 4 cases x 2 columns
Y = np.array([[1.0, 0.0], [NAN, 1.0], [0.0, NAN], [1.0, 1.0]])


def _bce(x: np.ndarray, y: np.ndarray, pw: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-x))
    return -(pw * y * np.log(p) + (1 - y) * np.log(1 - p))


def test_multilabel_bce_masks_unknown_cells_and_weights_positives():
    pw = np.array([2.0, 0.5])
    got = MultilabelLoss("bce", pos_weight=pw)(torch.tensor(X), torch.tensor(Y))
    known = ~np.isnan(Y)
    want = _bce(X, np.nan_to_num(Y), pw)[known].mean()  # mean over the 6 known cells
    assert float(got) == pytest.approx(want, rel=1e-6)
    plain = MultilabelLoss("bce")(torch.tensor(X), torch.tensor(Y))
    assert float(plain) == pytest.approx(_bce(X, np.nan_to_num(Y), np.ones(2))[known].mean(), rel=1e-6)


def test_multilabel_focal_by_hand():
    got = MultilabelLoss("focal", gamma=2.0)(torch.tensor(X), torch.tensor(Y))
    y = np.nan_to_num(Y)
    p = 1 / (1 + np.exp(-X))
    p_t = p * y + (1 - p) * (1 - y)
    want = ((1 - p_t) ** 2 * _bce(X, y, np.ones(2)))[~np.isnan(Y)].mean()
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_all_unknown_gives_zero_attached_to_the_graph():
    x = torch.tensor(X, requires_grad=True)
    loss = MultilabelLoss("bce")(x, torch.full((4, 2), NAN))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    pred = torch.zeros(4, 1, requires_grad=True)
    assert float(RegressionLoss("mse")(pred, torch.full((4, 1), NAN))) == 0.0


@pytest.mark.parametrize("kind", ["mse", "l1", "huber"])
def test_regression_on_standardised_targets(kind):
    pred = np.array([[0.2], [-1.5], [3.0], [0.0]])
    y = np.array([[0.55], [NAN], [0.40], [0.47]])
    mean, sd = 0.5, 0.05
    got = RegressionLoss(kind, mean, sd)(torch.tensor(pred), torch.tensor(y))
    keep = ~np.isnan(y[:, 0])
    r = pred[keep, 0] - (y[keep, 0] - mean) / sd  # residuals: 0.2-1, 3-(-2), 0-(-0.6)
    want = {"mse": np.mean(r ** 2), "l1": np.mean(np.abs(r)),
            "huber": np.mean(np.where(np.abs(r) <= 1, 0.5 * r ** 2, np.abs(r) - 0.5))}[kind]
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_fit_task_scales_from_the_training_targets():
    cfg = load_config({"tasks": [{**FINDINGS, "pos_weight": "balanced"}, CTR]})
    layout = task_layout(cfg)
    targets = np.array([[1, 0, 0.4], [0, 1, NAN], [0, 0, 0.6], [NAN, 0, 0.5], [0, 1, 0.9]], dtype=np.float32)
    scales = fit_task_scales(layout, targets)
    assert scales["findings"]["pos_weight"] == {"opacity": 3.0, "effusion": 1.5}  # negatives / positives
    ctr = np.array([0.4, 0.6, 0.5, 0.9], dtype=np.float32).astype(np.float64)
    assert scales["ctr"]["mean"] == pytest.approx(ctr.mean())
    assert scales["ctr"]["sd"] == pytest.approx(ctr.std(ddof=1))
    assert all(isinstance(v, float) for v in scales["ctr"].values())
    targets[:, 0] = np.where(np.isnan(targets[:, 0]), NAN, 0.0)  # no positive opacity left
    with pytest.raises(DataError, match="'opacity'.*0 positive"):
        fit_task_scales(layout, targets)
    with pytest.raises(DataError, match="no case of this training fold"):
        fit_task_scales(task_layout(load_config({"tasks": [CTR]})), np.full((3, 1), NAN))


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)  # findings 0:2, ctr 2:3, abnormal 3:5
    targets = torch.tensor([[1, 0, 0.55, 1], [NAN, 1, NAN, 0], [0, NAN, 0.40, NAN], [1, 1, 0.47, 1]])
    return logits, targets


@pytest.mark.parametrize("mode", ["fixed", "uncertainty"])
def test_multitask_loss_is_the_weighted_sum_of_the_task_losses(mode):
    cfg = load_config({"tasks": [{**FINDINGS, "weight": 0.5}, {**CTR, "weight": 2.0}, ABNORMAL],
                       "loss": {"task": {"mode": mode}}, "model": {"seg_head": False}})
    layout = task_layout(cfg)
    scales = {"findings": {"pos_weight": {"opacity": 1.0, "effusion": 1.0}}, "ctr": {"mean": 0.5, "sd": 0.05},
              "abnormal": {"pos_weight": {"abn": 1.0}}}
    loss_fn = build_task_loss(cfg.loss, layout, scales, seg_head=False)
    logits, targets = _batch()
    total, terms = loss_fn(DualOutput(logits, None), None, None, 0, targets=targets)
    x = logits.double().numpy()
    y = targets.double().numpy()
    findings = _bce(x[:, 0:2], np.nan_to_num(y[:, 0:2]), np.ones(2))[~np.isnan(y[:, 0:2])].mean()
    keep = ~np.isnan(y[:, 2])
    r = x[keep, 2] - (y[keep, 2] - 0.5) / 0.05
    ctr = np.mean(np.where(np.abs(r) <= 1, 0.5 * r ** 2, np.abs(r) - 0.5))
    known = ~np.isnan(y[:, 3])
    z = x[known, 3:5]
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    abnormal = -log_p[np.arange(known.sum()), y[known, 3].astype(int)].mean()
    losses = np.array([findings, ctr, abnormal])
    got = [float(terms[f"loss_{n}"]) for n in ("findings", "ctr", "abnormal")]
    assert got == pytest.approx(losses, rel=1e-5)
    if mode == "fixed":
        want = 0.5 * findings + 2.0 * ctr + 1.0 * abnormal
    else:  # Kendall et al.: sum exp(-s_t) L_t + s_t, with s = (0.3, -0.2, 0.1) set by hand
        with torch.no_grad():
            loss_fn.log_vars[:3] = torch.tensor([0.3, -0.2, 0.1])
        total, _ = loss_fn(DualOutput(logits, None), None, None, 0, targets=targets)
        s = np.array([0.3, -0.2, 0.1])
        want = float(np.sum(np.exp(-s) * losses + s))
        assert loss_fn.log_vars.shape == (4,)  # three tasks and segmentation
    assert float(total) == pytest.approx(want, rel=1e-5)
    per_case = loss_fn.task_losses(logits[1:2], targets[1:2])  # case 2: only effusion and abnormal known
    assert math.isnan(per_case["ctr"]) and not math.isnan(per_case["findings"])


def test_binary_pos_weight_becomes_class_weights():
    cfg = load_config({"tasks": [{**ABNORMAL, "pos_weight": "balanced"}], "model": {"seg_head": False}})
    layout = task_layout(cfg)
    scales = fit_task_scales(layout, np.array([[1], [0], [0], [0], [NAN]], dtype=np.float32))
    assert scales == {"abnormal": {"pos_weight": {"abn": 3.0}}}
    loss_fn = build_task_loss(cfg.loss, layout, scales, seg_head=False)
    assert loss_fn.task_fns[0].weight.tolist() == [1.0, 3.0]
    logits = torch.tensor([[0.2, -0.4], [1.0, 0.5], [-0.3, 0.3]])
    targets = torch.tensor([[1.0], [0.0], [NAN]])
    total, _ = loss_fn(DualOutput(logits, None), None, None, 0, targets=targets)
    ref = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([1, 0]), weight=torch.tensor([1.0, 3.0]))
    assert float(total) == pytest.approx(float(ref), rel=1e-6)
