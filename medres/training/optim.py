"""Optimizers (SGD with momentum / Nesterov, AdamW) and per-step learning-rate schedules.

Weight decay applies to convolution and linear weights only: norm layers, biases, every other
parameter of one dimension or less, and the loss's learned task weights (``extra_params``) go to a
group with ``weight_decay=0`` (the usual recipe since Goyal et al. 2017; timm's
``param_groups_weight_decay`` does the same).

Schedules are one ``LambdaLR`` stepped once per optimizer step, whose factor is a closed form of the
step (linear warm-up, then step decay or cosine to ``min_lr``): its whole state is ``last_epoch``, so a
resumed run follows exactly the same learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from medres.config import OptimConfig, ScheduleConfig
from medres.errors import ConfigError

__all__ = ["param_groups", "build_optimizer", "lr_factor", "build_scheduler", "scaled_lr", "with_scaled_lr"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def _named(params: nn.Module | Iterable[Any]) -> list[tuple[str, nn.Parameter, bool]]:
    """(name, parameter, is_norm) for a module, a dict of modules, or (name, param) pairs / params."""
    if isinstance(params, nn.Module):
        norm_ids = {id(p) for m in params.modules() if isinstance(m, _NORMS) for p in m.parameters(False)}
        return [(n, p, id(p) in norm_ids) for n, p in params.named_parameters()]
    if isinstance(params, dict):
        out = []
        for prefix, module in params.items():
            out += [(f"{prefix}.{n}", p, norm) for n, p, norm in _named(module)]
        return out
    out = []
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) else (f"param{i}", item)
        out.append((name, p, False))
    return out


def param_groups(params: nn.Module | Iterable[Any], weight_decay: float, *, decay_norm_and_bias: bool = False,
                 extra_params: Iterable[nn.Parameter] = ()) -> list[dict[str, Any]]:
    """Split trainable parameters into a decay group and a no-decay group.

    Returns up to two groups ``{"params", "weight_decay", "group": "decay"|"no_decay", "names"}``
    (``names`` is popped by ``build_optimizer``; it is for logging and tests). Shared parameters are
    counted once; frozen ones are left out.
    """
    decay: list[tuple[str, nn.Parameter]] = []
    no_decay: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    extra = list(extra_params)
    extra_ids = {id(p) for p in extra}
    named = _named(params) + [(f"extra.{i}", p, False) for i, p in enumerate(extra)]
    for name, p, is_norm in named:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        plain = id(p) in extra_ids or (not decay_norm_and_bias and (is_norm or p.ndim <= 1
                                                                     or name.endswith(".bias")))
        (no_decay if plain else decay).append((name, p))
    groups = []
    for label, members, wd in (("decay", decay, weight_decay), ("no_decay", no_decay, 0.0)):
        if members:
            groups.append({"params": [p for _, p in members], "weight_decay": wd, "group": label,
                           "names": [n for n, _ in members]})
    return groups


def scaled_lr(optim_cfg: OptimConfig, *, batch_size: int, accumulate: int = 1, world_size: int = 1) -> float:
    """The learning rate for the actual total batch: ``lr * total / reference_batch_size`` with
    ``total = batch_size * accumulate * world_size`` (the linear scaling rule, Goyal et al. 2017; one of
    He et al. 2018's "Bag of Tricks"); ``lr`` itself when no reference batch is given."""
    if optim_cfg.reference_batch_size is None:
        return float(optim_cfg.lr)
    total = int(batch_size) * int(accumulate) * int(world_size)
    return float(optim_cfg.lr) * total / int(optim_cfg.reference_batch_size)


def with_scaled_lr(cfg: Any, *, world_size: int = 1) -> Any:
    """``cfg`` (a ``Config``) with ``optim.lr_scaled`` filled in (see :func:`scaled_lr`), logged."""
    import logging

    o, t = cfg.optim, cfg.train
    lr = scaled_lr(o, batch_size=t.batch_size, accumulate=t.accumulate, world_size=world_size)
    if o.reference_batch_size is not None:
        logging.getLogger("medres.training").info(
            "learning rate %.4g (optim.lr %.4g stated for a batch of %d, scaled to %d x %d x %d)", lr, o.lr,
            o.reference_batch_size, t.batch_size, t.accumulate, world_size)
    optim = o.model_copy(update={"lr_scaled": lr})
    out = cfg.model_copy(update={"optim": optim})
    out._source, out._original_paths = cfg._source, dict(cfg._original_paths)
    return out


def build_optimizer(params: nn.Module | Iterable[Any], optim_cfg: OptimConfig, *,
                    extra_params: Iterable[nn.Parameter] = (),
                    fused: bool | None = None) -> torch.optim.Optimizer:
    """SGD or AdamW over ``params`` (a model, ``{"model": m, "loss": l}``, or (name, param) pairs),
    with ``extra_params`` (e.g. ``loss.parameters()``: learned task weights) never decayed. The learning
    rate is ``optim.lr_scaled`` when the run filled it in (:func:`with_scaled_lr`), else ``optim.lr``.
    ``fused``: torch's fused kernel (one launch for all parameters; ``medres.training.compute``)."""
    extra = list(extra_params)
    groups = param_groups(params, optim_cfg.weight_decay, decay_norm_and_bias=optim_cfg.decay_norm_and_bias,
                          extra_params=extra)
    for g in groups:
        g.pop("names")
    if not groups:
        raise ConfigError("the model has no trainable parameters", field="model")
    lr = optim_cfg.lr_scaled if optim_cfg.lr_scaled is not None else optim_cfg.lr
    if optim_cfg.name == "sgd":
        if optim_cfg.nesterov and optim_cfg.momentum <= 0:
            raise ConfigError("Nesterov momentum needs optim.momentum > 0", field="optim.nesterov")
        return torch.optim.SGD(groups, lr=lr, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=fused)


def lr_factor(step: int, schedule_cfg: ScheduleConfig, *, epochs: int, steps_per_epoch: int,
              min_factor: float = 0.0) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based), in closed form.

    - warm-up: ``(step + 1) / W`` for ``step < W``, ``W = round(warmup_epochs * steps_per_epoch)``;
    - step: ``gamma ** (epoch // step_size)`` with ``epoch = step // steps_per_epoch``;
    - cosine: ``m + (1 - m) (1 + cos(pi t)) / 2``, ``t = (step - W) / (total - W)`` clipped to [0, 1],
      ``m = min_factor`` (= ``min_lr / lr``);
    - none: 1. Step decay is also floored at ``m``.
    """
    s = schedule_cfg
    warm = round(s.warmup_epochs * steps_per_epoch)
    total = epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    if s.name == "step":
        return max(min_factor, s.gamma ** ((step // steps_per_epoch) // s.step_size))
    if s.name == "cosine":
        t = min(1.0, max(0.0, (step - warm) / max(1, total - warm)))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_cfg: ScheduleConfig, *, epochs: int,
                    steps_per_epoch: int) -> LambdaLR:
    """A ``LambdaLR`` to step after every optimizer step; ``lr = group lr * lr_factor(step)``.

    ``min_lr`` is absolute: each group's floor factor is ``min_lr / its lr``.
    """
    if steps_per_epoch < 1 or epochs < 1:
        raise ConfigError(f"a schedule needs epochs >= 1 and steps per epoch >= 1; got {epochs}, "
                          f"{steps_per_epoch}", field="train.batch_size",
                          hint="the training set is smaller than one batch: lower train.batch_size")
    if schedule_cfg.warmup_epochs > epochs:
        raise ConfigError(f"warm-up ({schedule_cfg.warmup_epochs} epochs) is longer than training ({epochs})",
                          field="schedule.warmup_epochs")

    def make(base_lr: float):  # noqa: ANN202 - a closure: LambdaLR then saves only last_epoch
        floor = min(1.0, schedule_cfg.min_lr / base_lr) if base_lr > 0 else 0.0
        return lambda step: lr_factor(step, schedule_cfg, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                      min_factor=floor)

    lambdas = [make(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
    return LambdaLR(optimizer, lambdas)
