"""Losses for the dual-head model: weighted classification, Dice + CE segmentation, task weighting.

``build_loss(cfg.loss, class_counts=...)`` gives a ``MultiTaskLoss`` whose forward takes the model's
``DualOutput`` (``cls_logits [B, K]`` and/or ``seg_logits [B, S, *spatial]``), the labels ``[B]``
(``-1`` = unlabelled, ignored by the classification term), the masks ``[B, 1, *spatial]`` and the epoch,
and returns ``(total, terms)``.

Conventions, stated once:

- ``balanced`` class weights are scikit-learn's ``compute_class_weight("balanced")``,
  ``w_c = N / (K * n_c)``, from the *training fold's* counts only.
- Cross-entropy is torch's (weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}``, torch's label
  smoothing). Focal loss (Lin et al., ICCV 2017) is ``-alpha_{y} (1 - p_y)^gamma log p_y`` averaged over
  the labelled samples, ``alpha`` = the class weights when given.
- Segmentation is MONAI's ``DiceCELoss`` (softmax, one-hot targets, ``weight`` = class weights for
  both the CE and the Dice terms; MONAI applies the Dice weights only when more than one channel is
  left after dropping the background, so for a binary mask they weight the CE alone). A scan with
  no mask file has an all-zero mask; with
  ``loss.seg.missing_mask: background`` that is its truth (nothing to segment), with ``skip`` the
  scan is left out of the segmentation term when the batch carries ``has_mask``.
- Task weights: ``fixed`` (``w_cls``, ``w_seg``), ``warmup`` (``w_cls * min(1, epoch / warmup_epochs)``,
  0-based epochs: the segmentation head trains alone in epoch 0), or ``uncertainty`` (Kendall, Gal and
  Cipolla, CVPR 2018): ``L = sum_i exp(-s_i) L_i + s_i`` with learnable ``s_i = log sigma_i^2``. This is
  twice Kendall's regression form ``L_i / (2 sigma^2) + log sigma`` (same minimiser ``s_i = log L_i``);
  the paper's classification form ``L_i / sigma^2 + log sigma`` would halve the ``s_i`` term. The
  ``s_i`` are parameters of the loss module: give ``loss.parameters()`` to the optimizer
  (``build_optimizer`` puts them in the no-weight-decay group).
- With ``tasks:`` (``medres.config.tasks.TaskLayout``) the classification term is ``sum_t w_t L_t`` over
  the tasks, each on its slice of ``cls_logits`` and of the batch's ``targets`` (NaN = unknown, left
  out): binary / multiclass as above; multilabel ``BCEWithLogits`` per column with ``pos_weight`` (or
  its focal form ``(1 - p_t)^gamma`` times that), the mean over known cells; regression ``mse`` | ``l1``
  | ``huber`` (delta 1) on ``(y - mean) / sd`` with the training fold's scales (:func:`fit_task_scales`).
  ``uncertainty`` learns one ``s_t`` per task and one for segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from torch import Tensor, nn

from medres.config import LossConfig
from medres.config.tasks import TaskLayout, TaskSlot
from medres.errors import ConfigError, DataError

__all__ = [
    "balanced_class_weights", "FocalLoss", "ClassificationLoss", "SegmentationLoss",
    "MultiTaskLoss", "build_loss", "MultilabelLoss", "RegressionLoss", "fit_task_scales", "build_task_loss",
]

IGNORE = -1


def balanced_class_weights(class_counts: Sequence[int]) -> Tensor:
    """``w_c = N / (K * n_c)`` from the training fold's class counts (scikit-learn's ``balanced``).

    Raises:
        DataError: a class has no training sample (its weight would be infinite).
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    if (counts <= 0).any():
        missing = [int(i) for i in np.flatnonzero(counts <= 0)]
        raise DataError(f"class index(es) {missing} have no sample in this training fold, so 'balanced' "
                        "weights are undefined",
                        hint="use explicit loss.cls.weights, fewer folds or more data")
    return torch.as_tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) for ``logits [B, K]`` and ``target [B]`` (``-1`` ignored):
    ``mean_i -alpha_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i}`` over labelled samples."""

    def __init__(self, gamma: float = 2.0, alpha: Tensor | None = None, ignore_index: int = IGNORE) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("alpha", None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32))

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        keep = target != self.ignore_index
        logits, target = logits[keep], target[keep]
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


class ClassificationLoss(nn.Module):
    """Cross-entropy (weighted, label smoothing) or focal loss over labelled samples.

    Returns 0 (still attached to the graph) for a batch with no labelled sample, never NaN.
    """

    def __init__(self, kind: str = "ce", weight: Tensor | None = None, label_smoothing: float = 0.0,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.kind = kind
        self.label_smoothing = label_smoothing
        weight = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        self.register_buffer("weight", weight)
        self.focal = FocalLoss(gamma, self.weight) if kind == "focal" else None

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``logits [B, K]``, ``target [B]`` long with ``-1`` for unlabelled."""
        target = target.long()
        if not bool((target != IGNORE).any()):
            return logits.sum() * 0.0
        if self.focal is not None:
            return self.focal(logits, target)
        return F.cross_entropy(logits.float(), target, weight=self.weight, ignore_index=IGNORE,
                               label_smoothing=self.label_smoothing)


class SegmentationLoss(nn.Module):
    """MONAI ``DiceCELoss`` on ``logits [B, S, *spatial]`` and ``mask [B, 1, *spatial]`` (class indices),
    optionally restricted to the samples whose ``has_mask`` is True."""

    def __init__(self, *, class_weights: Sequence[float] | None = None, include_background: bool = False,
                 lambda_dice: float = 1.0, lambda_ce: float = 1.0, batch_dice: bool = True,
                 skip_missing: bool = False) -> None:
        super().__init__()
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.dice_ce = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True,
                                  batch=batch_dice, weight=weight, lambda_dice=lambda_dice,
                                  lambda_ce=lambda_ce)
        self.skip_missing = skip_missing

    def forward(self, logits: Tensor, mask: Tensor, has_mask: Tensor | None = None) -> Tensor:
        if self.skip_missing and has_mask is not None:
            keep = has_mask.to(device=logits.device, dtype=torch.bool).reshape(-1)
            if not bool(keep.any()):
                return logits.sum() * 0.0
            logits, mask = logits[keep], mask[keep]
        return self.dice_ce(logits.float(), mask.long())


class MultilabelLoss(nn.Module):
    """Binary cross-entropy with logits per column (``pos_weight`` per column), or its focal form
    ``(1 - p_t)^gamma BCE``, averaged over the known cells of ``target [B, C]`` (NaN = unknown)."""

    def __init__(self, kind: str = "bce", pos_weight: Sequence[float] | None = None,
                 gamma: float = 2.0) -> None:
        super().__init__()
        self.kind, self.gamma = kind, gamma
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = target.to(device=logits.device, dtype=torch.float32)
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return logits.sum() * 0.0
        x, y = logits.float(), torch.where(known, target, torch.zeros_like(target))
        loss = F.binary_cross_entropy_with_logits(x, y, pos_weight=self.pos_weight, reduction="none")
        if self.kind == "focal":
            p = torch.sigmoid(x)
            loss = loss * (1 - (p * y + (1 - p) * (1 - y))) ** self.gamma
        return loss[known].mean()


class RegressionLoss(nn.Module):
    """``mse`` | ``l1`` | ``huber`` (delta 1) between the prediction ``[B, 1]`` (standardised) and
    ``(target - mean) / sd`` over the known targets (NaN = unknown)."""

    def __init__(self, kind: str = "mse", mean: float = 0.0, sd: float = 1.0) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("sd", torch.tensor(float(sd)))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        target = target.to(device=pred.device, dtype=torch.float32)
        known = ~torch.isnan(target)
        if not bool(known.any()):
            return pred.sum() * 0.0
        z = (target[known] - self.mean) / self.sd
        x = pred.float()[known]
        if self.kind == "l1":
            return F.l1_loss(x, z)
        if self.kind == "huber":
            return F.huber_loss(x, z, delta=1.0)
        return F.mse_loss(x, z)


def _known(slot: TaskSlot, target: Tensor) -> bool:
    return bool((target >= 0).any()) if slot.single_label else bool((~torch.isnan(target)).any())


def _slot_target(slot: TaskSlot, targets: Tensor, device: torch.device) -> Tensor:
    """The task's slice of ``targets``; a single-label task's as class indices with -1 unknown."""
    y = targets[:, slot.targets].to(device)
    if slot.single_label:
        return torch.where(torch.isnan(y), torch.full_like(y, IGNORE), y)[:, 0].long()
    return y



class MultiTaskLoss(nn.Module):
    """Combine the heads' losses: ``(total, terms)`` with terms ``loss_cls``, ``loss_seg``, ``w_cls``,
    ``w_seg`` (detached; ``loss_*`` only for the heads present). With ``tasks`` (pairs of a
    :class:`TaskSlot` and its loss module) the classification term is the tasks' weighted sum, and the
    terms are ``loss_<task>`` and ``w_<task>`` for each task instead of ``loss_cls`` / ``w_cls``."""

    def __init__(self, cls_loss: ClassificationLoss | None, seg_loss: SegmentationLoss | None, *,
                 mode: str = "fixed", w_cls: float = 1.0, w_seg: float = 1.0, warmup_epochs: int = 0,
                 init_log_var: float = 0.0,
                 tasks: Sequence[tuple[TaskSlot, nn.Module]] | None = None) -> None:
        super().__init__()
        self.cls_loss, self.seg_loss = cls_loss, seg_loss
        self.mode, self.w_cls, self.w_seg, self.warmup_epochs = mode, w_cls, w_seg, warmup_epochs
        self.slots: tuple[TaskSlot, ...] | None = None
        if tasks is not None:
            self.slots = tuple(slot for slot, _ in tasks)
            self.task_fns = nn.ModuleList([fn for _, fn in tasks])
        # s = log sigma^2 for (cls, seg), or for (each task..., seg); only a parameter when learned
        n = 2 if self.slots is None else len(self.slots) + 1
        self.log_vars = nn.Parameter(torch.full((n,), float(init_log_var))) if mode == "uncertainty" else None

    def task_weights(self, epoch: int) -> tuple[Tensor | float, Tensor | float]:
        """The factors applied to ``L_cls`` and ``L_seg`` at ``epoch`` (0-based)."""
        if self.mode == "uncertainty":
            w = torch.exp(-self.log_vars)
            return w[0], w[1]
        if self.mode == "warmup" and self.warmup_epochs > 0:
            return self.w_cls * min(1.0, epoch / self.warmup_epochs), self.w_seg
        return self.w_cls, self.w_seg

    def tasks_weights(self, epoch: int) -> list[Tensor | float]:
        """The factors applied to each task's loss, then segmentation's, at ``epoch`` (with tasks)."""
        assert self.slots is not None
        if self.mode == "uncertainty":
            return list(torch.exp(-self.log_vars).unbind())
        ramp = 1.0
        if self.mode == "warmup" and self.warmup_epochs > 0:
            ramp = min(1.0, epoch / self.warmup_epochs)
        return [s.task.weight * ramp for s in self.slots] + [self.w_seg]

    def task_losses(self, cls_logits: Tensor, targets: Tensor) -> dict[str, float]:
        """Each task's unweighted loss on this batch, NaN for a task without a known target in it
        (the inner validation's per-task losses)."""
        assert self.slots is not None
        out = {}
        for slot, fn in zip(self.slots, self.task_fns):
            y = _slot_target(slot, targets, cls_logits.device)
            out[slot.name] = float(fn(cls_logits[:, slot.logits], y)) if _known(slot, y) else math.nan
        return out

    def forward(self, output: Any, labels: Tensor | None, masks: Tensor | None, epoch: int = 0,
                has_mask: Tensor | None = None,
                targets: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``output``: anything with ``.cls_logits [B, K]`` and ``.seg_logits [B, S, *spatial]`` (either
        may be None); ``labels [B]`` long (-1 unlabelled); ``masks [B, 1, *spatial]`` long;
        ``has_mask [B]`` bool (only used with ``missing_mask: skip``); ``targets [B, n_targets]`` float
        (NaN unknown; needed with tasks)."""
        cls_logits = getattr(output, "cls_logits", None)
        seg_logits = getattr(output, "seg_logits", None)
        parts: list[Tensor] = []
        terms: dict[str, Tensor] = {}
        if self.slots is not None:
            weights = self.tasks_weights(epoch)
            w_seg = weights[-1]
            if cls_logits is not None:
                if targets is None:
                    raise ValueError("the tasks need the batch's targets")
                for i, (slot, fn) in enumerate(zip(self.slots, self.task_fns)):
                    y = _slot_target(slot, targets, cls_logits.device)
                    loss_t = fn(cls_logits[:, slot.logits], y)
                    learned = self.log_vars is not None and _known(slot, y)
                    parts.append(weights[i] * loss_t + (self.log_vars[i] if learned else 0.0))
                    terms[f"loss_{slot.name}"] = loss_t.detach()
                    terms[f"w_{slot.name}"] = torch.as_tensor(weights[i]).detach().float()
            self._add_seg(parts, terms, seg_logits, masks, has_mask, w_seg, len(self.slots))
            if not parts:
                raise ValueError("the model output has neither cls_logits nor seg_logits for this loss")
            total = torch.stack([p if isinstance(p, Tensor) else torch.tensor(p) for p in parts]).sum()
            terms["w_seg"] = torch.as_tensor(w_seg).detach().float()
            return total, terms
        w_cls, w_seg = self.task_weights(epoch)
        if cls_logits is not None and self.cls_loss is not None:
            if labels is None:
                raise ValueError("the classification head needs labels")
            labels = labels.to(cls_logits.device)
            loss_cls = self.cls_loss(cls_logits, labels)
            # s_cls is left alone when the batch has no labelled sample (its gradient would be pure drift)
            learned = self.log_vars is not None and bool((labels != IGNORE).any())
            parts.append(w_cls * loss_cls + (self.log_vars[0] if learned else 0.0))
            terms["loss_cls"] = loss_cls.detach()
        self._add_seg(parts, terms, seg_logits, masks, has_mask, w_seg, 1)
        if not parts:
            raise ValueError("the model output has neither cls_logits nor seg_logits for this loss")
        total = torch.stack([p if isinstance(p, Tensor) else torch.tensor(p) for p in parts]).sum()
        terms["w_cls"] = torch.as_tensor(w_cls).detach().float()
        terms["w_seg"] = torch.as_tensor(w_seg).detach().float()
        return total, terms


    def _add_seg(self, parts: list[Tensor], terms: dict[str, Tensor], seg_logits: Tensor | None,
                 masks: Tensor | None, has_mask: Tensor | None, w_seg: Tensor | float, index: int) -> None:
        """The weighted segmentation term (``log_vars[index]`` when learned) into ``parts`` / ``terms``."""
        if seg_logits is None or self.seg_loss is None:
            return
        if masks is None:
            raise ValueError("the segmentation head needs masks")
        loss_seg = self.seg_loss(seg_logits, masks.to(seg_logits.device), has_mask)
        skipped_all = self.seg_loss.skip_missing and has_mask is not None and not bool(has_mask.any())
        learned = self.log_vars is not None and not skipped_all
        parts.append(w_seg * loss_seg + (self.log_vars[index] if learned else 0.0))
        terms["loss_seg"] = loss_seg.detach()


def build_loss(loss_cfg: LossConfig, *, class_counts: Sequence[int] | None = None,
               num_classes: int | None = None, seg_classes: int | None = None,
               cls_head: bool = True, seg_head: bool = True) -> MultiTaskLoss:
    """The configured ``MultiTaskLoss``.

    Args:
        loss_cfg: ``cfg.loss``.
        class_counts: scans per class in the *training fold* (needed for ``weights: balanced``).
        num_classes, seg_classes: ``cfg.model.num_classes`` / ``seg_classes``, to check weight lengths.
        cls_head, seg_head: which heads the model has.
    """
    c, s, t = loss_cfg.cls, loss_cfg.seg, loss_cfg.task
    cls_loss = seg_loss = None
    if cls_head:
        weight = None
        if c.weights == "balanced":
            if class_counts is None:
                raise ConfigError("'balanced' class weights need the training fold's class counts",
                                  field="loss.cls.weights")
            weight = balanced_class_weights(class_counts)
        elif c.weights is not None:
            weight = torch.as_tensor(c.weights, dtype=torch.float32)
        k = num_classes
        if k is None and class_counts is not None:
            k = len(class_counts)
        if weight is not None and k is not None and len(weight) != k:
            raise ConfigError(f"{len(weight)} class weights for {k} classes", field="loss.cls.weights")
        cls_loss = ClassificationLoss(c.type, weight, c.label_smoothing, c.focal_gamma)
    if seg_head:
        if s.class_weights is not None and seg_classes is not None and len(s.class_weights) != seg_classes:
            raise ConfigError(f"{len(s.class_weights)} weights for {seg_classes} segmentation classes",
                              field="loss.seg.class_weights")
        seg_loss = SegmentationLoss(class_weights=s.class_weights, include_background=s.include_background,
                                    lambda_dice=s.lambda_dice, lambda_ce=s.lambda_ce, batch_dice=s.batch_dice,
                                    skip_missing=s.missing_mask == "skip")
    return MultiTaskLoss(cls_loss, seg_loss, mode=t.mode, w_cls=t.cls, w_seg=t.seg,
                         warmup_epochs=t.warmup_epochs, init_log_var=t.init_log_var)


def _pos_weights(slot: TaskSlot, y: np.ndarray) -> list[float]:
    """Per column: 1 (``none``), the given number, or negatives / positives among the known cells
    (``balanced``) of the training fold's targets ``y [N, columns]``."""
    given = getattr(slot.task, "pos_weight", "none")
    columns = slot.classes if slot.type == "multilabel" else (slot.task.column,)
    out = []
    for j, col in enumerate(columns):
        if isinstance(given, dict):
            out.append(float(given.get(col, 1.0)))
        elif given == "balanced":
            known = y[:, j][~np.isnan(y[:, j])]
            pos, neg = int((known == 1).sum()), int((known == 0).sum())
            if pos == 0 or neg == 0:
                raise DataError(f"task {slot.name!r}, column {col!r}: the training fold has {pos} positive "
                                f"and {neg} negative known cells, so the 'balanced' pos_weight is undefined",
                                hint="give pos_weight as numbers or none, use fewer folds, or add cases")
            out.append(neg / pos)
        else:
            out.append(1.0)
    return out


def fit_task_scales(layout: TaskLayout, targets: np.ndarray) -> dict[str, dict[str, Any]]:
    """What each task's loss takes from the *training fold's* ``targets [N, n_targets]`` (NaN unknown),
    as plain floats for the checkpoint's ``task_scales``: ``{"mean", "sd"}`` per regression task (the
    known values' mean and sample sd; sd 1 when it is 0 or undefined), ``{"pos_weight": {column: w}}``
    per multilabel task and binary task with 0/1 cells.

    Raises:
        DataError: a regression task without a known value, or an undefined ``balanced`` pos_weight.
    """
    out: dict[str, dict[str, Any]] = {}
    for slot in layout:
        y = np.asarray(targets[:, slot.targets], dtype=np.float64)
        if slot.type == "regression":
            known = y[:, 0][~np.isnan(y[:, 0])]
            if not len(known):
                raise DataError(f"task {slot.name!r}: no case of this training fold has a value in "
                                f"column {slot.task.column!r}",
                                hint="fill the column, use fewer folds, or add cases")
            sd = float(np.std(known, ddof=1)) if len(known) > 1 else 0.0
            sd = sd if sd > 0 and math.isfinite(sd) else 1.0
            out[slot.name] = {"mean": float(np.mean(known)), "sd": sd}
        elif slot.type == "multilabel" or (slot.type == "binary" and slot.task.classes is None):
            columns = slot.classes if slot.type == "multilabel" else (slot.task.column,)
            out[slot.name] = {"pos_weight": dict(zip(columns, _pos_weights(slot, y)))}
    return out


def build_task_loss(loss_cfg: LossConfig, layout: TaskLayout, scales: Mapping[str, Mapping[str, Any]], *,
                    class_counts: Sequence[int] | None = None, seg_classes: int | None = None,
                    seg_head: bool = True) -> MultiTaskLoss:
    """The ``MultiTaskLoss`` of a configuration with ``tasks:``: one loss per task of ``layout``
    (``scales`` from :func:`fit_task_scales`), the segmentation loss as :func:`build_loss` makes it.

    The binary / multiclass task uses ``loss.cls`` (class weights, label smoothing, focal gamma) with
    the task's ``loss`` type; a binary task's ``pos_weight`` other than ``none`` gives the class
    weights ``[1, w]``. ``class_counts``: that task's training-fold counts per class (``balanced``).
    """
    c, t = loss_cfg.cls, loss_cfg.task
    pairs: list[tuple[TaskSlot, nn.Module]] = []
    for slot in layout:
        task = slot.task
        if slot.single_label:
            kind = "focal" if task.loss == "focal" else "ce"
            pw = scales.get(slot.name, {}).get("pos_weight")
            base = build_loss(loss_cfg, class_counts=class_counts, num_classes=len(slot.classes),
                              seg_head=False)
            weight = base.cls_loss.weight
            if pw is not None and getattr(task, "pos_weight", "none") != "none":
                weight = torch.tensor([1.0, *pw.values()], dtype=torch.float32)
            pairs.append((slot, ClassificationLoss(kind, weight, c.label_smoothing, c.focal_gamma)))
        elif slot.type == "multilabel":
            pw = scales[slot.name]["pos_weight"]
            weights = [pw[col] for col in slot.classes]
            pairs.append((slot, MultilabelLoss(task.loss, None if task.pos_weight == "none" else weights,
                                               c.focal_gamma)))
        else:
            sc = scales[slot.name]
            pairs.append((slot, RegressionLoss(task.loss, sc["mean"], sc["sd"])))
    seg = build_loss(loss_cfg, seg_classes=seg_classes, cls_head=False, seg_head=seg_head).seg_loss
    return MultiTaskLoss(None, seg, mode=t.mode, w_cls=t.cls, w_seg=t.seg, warmup_epochs=t.warmup_epochs,
                         init_log_var=t.init_log_var, tasks=pairs)
