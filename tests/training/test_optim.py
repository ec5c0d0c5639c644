"""medres.training.optim: which parameters decay; learning rates against closed forms and torch's
schedulers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from medres.config import LossConfig, OptimConfig, ScheduleConfig
from medres.errors import ConfigError
from medres.training.losses import build_loss
from medres.training.optim import build_optimizer, build_scheduler, param_groups


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3)
        self.bn = nn.BatchNorm3d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.head = nn.Linear(2, 2, bias=False)
        self.tied = self.head  # the same weight reachable twice
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def lrs(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_no_decay_on_norms_biases_and_learned_task_weights():
    model = Tiny()
    loss = build_loss(LossConfig.model_validate({"task": {"mode": "uncertainty"}}))
    groups = {g["group"]: g for g in param_groups(model, 1e-4, extra_params=loss.parameters())}
    assert groups["decay"]["names"] == ["conv.weight", "fc.weight", "head.weight"]
    assert groups["no_decay"]["names"] == ["conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias",
                                           "fc.bias", "extra.0"]
    assert groups["decay"]["weight_decay"] == 1e-4 and groups["no_decay"]["weight_decay"] == 0.0
    everything = param_groups(model, 1e-4, decay_norm_and_bias=True)
    assert [g["group"] for g in everything] == ["decay"] and len(everything[0]["names"]) == 9
    by_dict = param_groups({"model": model, "loss": loss}, 1e-4)
    assert "loss.log_vars" in [n for g in by_dict if g["group"] == "no_decay" for n in g["names"]]


def test_adamw_decays_only_the_decay_group():
    model = Tiny()
    loss = build_loss(LossConfig.model_validate({"task": {"mode": "uncertainty", "init_log_var": 0.5}}))
    opt = build_optimizer(model, OptimConfig(name="adamw", lr=0.1, weight_decay=0.5),
                          extra_params=loss.parameters())
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    s_before = loss.log_vars.detach().clone()
    for g in opt.param_groups:  # zero gradients: only decoupled weight decay moves a parameter
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(model.named_parameters())
    torch.testing.assert_close(after["conv.weight"], before["conv.weight"] * (1 - 0.1 * 0.5))
    for name in ("conv.bias", "bn.weight", "gn.bias", "fc.bias"):
        assert torch.equal(after[name], before[name]), name
    assert torch.equal(loss.log_vars.detach(), s_before)


def test_sgd_settings():
    opt = build_optimizer(Tiny(), OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True,
                                              weight_decay=1e-4))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    with pytest.raises(ConfigError, match="Nesterov"):
        build_optimizer(Tiny(), OptimConfig(name="sgd", momentum=0.0, nesterov=True))


def test_imagenet_recipe_step_decay():
    spe, epochs = 3, 90
    opt = build_optimizer(Tiny(), OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4))
    sched = build_scheduler(opt, ScheduleConfig(name="step", step_size=30, gamma=0.1, warmup_epochs=0),
                            epochs=epochs, steps_per_epoch=spe)
    got = lrs(opt, sched, epochs * spe)
    at = {e: got[e * spe] for e in (0, 29, 30, 60, 89)}
    expected = {0: 0.1, 29: 0.1, 30: 0.01, 60: 0.001, 89: 0.001}
    for e in expected:
        assert at[e] == pytest.approx(expected[e], rel=1e-12), e
    # the same trajectory as torch's StepLR stepped per optimizer step
    ref_opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=30 * spe, gamma=0.1)
    assert got == pytest.approx(lrs(ref_opt, ref, epochs * spe), rel=1e-12)


def test_cosine_matches_torch_and_warmup_closed_form():
    spe, epochs, lr, min_lr = 4, 10, 0.5, 0.01
    opt = build_optimizer(Tiny(), OptimConfig(lr=lr))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", min_lr=min_lr), epochs=epochs,
                            steps_per_epoch=spe)
    ref_opt = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=lr)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(ref_opt, T_max=epochs * spe, eta_min=min_lr)
    assert lrs(opt, sched, epochs * spe) == pytest.approx(lrs(ref_opt, ref, epochs * spe), rel=1e-9)

    # warm-up of 1 epoch (10 steps) then cosine over the other 100 steps, by hand
    opt = build_optimizer(Tiny(), OptimConfig(lr=1.0))
    sched = build_scheduler(opt, ScheduleConfig(name="cosine", warmup_epochs=1, min_lr=0.1), epochs=11,
                            steps_per_epoch=10)
    got = lrs(opt, sched, 111)
    assert got[0] == pytest.approx(0.1) and got[4] == pytest.approx(0.5) and got[9] == pytest.approx(1.0)
    assert got[10] == pytest.approx(1.0)
    assert got[60] == pytest.approx(0.1 + 0.9 * 0.5)
    assert got[35] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert got[110] == pytest.approx(0.1)
    assert opt.param_groups[1]["lr"] == opt.param_groups[0]["lr"]  # both groups follow the schedule


def test_resume_follows_the_same_learning_rates():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, min_lr=1e-4)
    model = Tiny()
    opt = build_optimizer(model, OptimConfig(lr=3e-3))
    sched = build_scheduler(opt, cfg, epochs=6, steps_per_epoch=7)
    first = lrs(opt, sched, 17)
    saved = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    rest = lrs(opt, sched, 25)
    opt2 = build_optimizer(model, OptimConfig(lr=3e-3))
    sched2 = build_scheduler(opt2, cfg, epochs=6, steps_per_epoch=7)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert lrs(opt2, sched2, 25) == rest and len(first) == 17
    assert set(saved["scheduler"]) >= {"last_epoch", "base_lrs"}


def test_schedule_errors():
    opt = build_optimizer(Tiny(), OptimConfig())
    with pytest.raises(ConfigError, match="smaller than one batch"):
        build_scheduler(opt, ScheduleConfig(), epochs=5, steps_per_epoch=0)
    with pytest.raises(ConfigError, match="warm-up"):
        build_scheduler(opt, ScheduleConfig(warmup_epochs=8), epochs=5, steps_per_epoch=3)
