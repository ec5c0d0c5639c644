"""The steps of training, a leaf of the engine: one epoch of training, one pass of validation, the
forward pass of one volume, and the validation metrics of an epoch.

Plain PyTorch: one autocast context, gradient accumulation and clipping, a per-step learning-rate
schedule, a guard against non-finite inputs, losses and gradients, and a stop flag (SIGTERM / SIGINT)
checked after every optimizer step. The epochs around these, with checkpoints, early stopping and
resume, are written out in ``medres.training.fold.train_fold``, which is the only caller.

Exact resume relies on three things (docs/reference.md §4): the data order and augmentation of epoch ``e``
are functions of ``(seed, e, index)`` (the dataset's ``set_epoch`` and a seeded sampler), the already
trained batches of a mid-epoch checkpoint are skipped at the sampler (never loaded), and the RNG states
are restored at the exact point where they were saved.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medres.checkpoint import set_rng_state
from medres.config.tasks import TaskLayout
from medres.errors import DataError, MedresError
from medres.training.distributed import all_reduce_grads, any_rank, gather_records, is_active
from medres.training.precision import ComputeSettings

__all__ = ["LoopState", "TrainParts", "EpochSettings", "TrainingDiverged", "Interrupted", "train_one_epoch",
           "evaluate_epoch", "val_metrics", "forward_volume"]

log = logging.getLogger("medres.training")


class TrainingDiverged(MedresError, RuntimeError):
    """A non-finite loss or gradient: training stopped, the last good checkpoint is kept."""


class Interrupted(MedresError):
    """SIGTERM / SIGINT arrived: a resumable checkpoint was written; exit with ``128 + signum``."""

    def __init__(self, signum: int, checkpoint: Path | None) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by signal {signum}; resume with --resume (checkpoint: {checkpoint})")


@dataclass
class LoopState:
    """Where training stands; saved in every checkpoint (plain types)."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of epoch `epoch` already trained on (>0: mid-epoch checkpoint)
    sums: dict[str, float] = field(default_factory=dict)  # running loss sums of the current epoch
    samples: int = 0  # samples seen in the current epoch
    best: float | None = None
    best_epoch: int = -1
    bad_rounds: int = 0  # validation rounds without improvement (early stopping)
    early_stopped: bool = False
    finished: bool = False  # all epochs done or stopped early (recomputed on resume: epochs may grow)

    def new_epoch(self) -> None:
        self.batch_in_epoch, self.sums, self.samples = 0, {}, 0


@dataclass
class TrainParts:
    """What training steps: the model (as trained: DDP / compiled wrappers allowed), the loss (whose
    learned weights are parameters too), the optimizer, the per-step schedule (or None) and the
    gradient scaler."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class EpochSettings:
    """How :func:`train_one_epoch` trains, the same for every epoch of a fold.

    Attributes:
        compute: device, precision and memory format.
        spatial_dims: 2 or 3.
        accumulate: batches per optimizer step (gradient accumulation).
        clip_grad_norm: the gradient norm clipped to (None: no clipping).
        total_batches: batches in an epoch (the last one steps the optimizer; shown in the progress bar).
        progress: show a progress bar.
    """

    compute: ComputeSettings
    spatial_dims: int
    accumulate: int = 1
    clip_grad_norm: float | None = None
    total_batches: int | None = None
    progress: bool = False


def _check_inputs(image: Tensor, case_ids: list[str], step: int) -> None:
    """Non-finite voxels are a data problem: name the cases before any forward pass sees them."""
    finite = torch.isfinite(image.flatten(1)).all(dim=1)
    if not bool(finite.all()):
        bad = [c for c, ok in zip(case_ids, finite.tolist()) if not ok]
        raise DataError(f"non-finite (NaN/inf) voxels in the network input at step {step}",
                        case_id=", ".join(bad), hint="check these scans and their intensity normalization")


def _to_device(batch: Mapping[str, Any], compute: ComputeSettings,
               spatial_dims: int) -> tuple[Tensor, Tensor, Tensor | None]:
    """``image`` [B, C, *spatial] (in the compute settings' memory format), ``label`` [B], ``mask``
    [B, 1, *spatial] or None (natural images have none)."""
    nb = compute.pin_memory
    image = batch["image"].as_tensor() if hasattr(batch["image"], "as_tensor") else batch["image"]
    image = image.to(compute.device, non_blocking=nb)
    image = image.contiguous(memory_format=compute.memory_format(spatial_dims))
    mask = batch.get("mask")
    if mask is not None:
        mask = (mask.as_tensor() if hasattr(mask, "as_tensor") else mask).to(compute.device, non_blocking=nb)
    labels = torch.as_tensor(batch["label"]).to(compute.device, non_blocking=nb)
    return image, labels, mask


def _loss_terms(terms: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v.detach()) if isinstance(v, Tensor) else float(v) for k, v in terms.items()}


def train_one_epoch(
    parts: TrainParts, loader: Iterable[Mapping[str, Any]], state: LoopState, settings: EpochSettings, *,
    should_stop: Callable[[], bool] = lambda: False, on_step: Callable[[], None] | None = None,
    restore_rng: Mapping[str, Any] | None = None,
) -> bool:
    """Train on the batches of epoch ``state.epoch`` not done yet; return True when stopped early by a signal.

    ``loader`` yields ``{"image": [B, C, *spatial], "mask": [B, 1, *spatial], "label": [B], "case_id"}``
    starting at batch ``state.batch_in_epoch``. ``state`` is updated after every batch. ``on_step`` runs
    after each optimizer step (mid-epoch checkpoints). ``restore_rng`` (a mid-epoch resume) is applied
    right after the loader's iterator is created, where the interrupted run saved it.
    """
    from medres.progress import track

    model, loss_fn, optimizer, scheduler, scaler = (parts.model, parts.loss_fn, parts.optimizer,
                                                    parts.scheduler, parts.scaler)
    compute, spatial_dims, accumulate = settings.compute, settings.spatial_dims, settings.accumulate
    clip_grad_norm, total_batches = settings.clip_grad_norm, settings.total_batches
    model.train()
    loss_fn.train()
    ddp = is_active()
    it = iter(loader)
    if restore_rng is not None:
        set_rng_state(restore_rng)
    shown: dict[str, Any] = {}
    for batch in track(it, desc=f"epoch {state.epoch + 1}", total=total_batches, unit="batches",
                       initial=state.batch_in_epoch, progress=settings.progress, final=False, postfix=shown):
        image, labels, mask = _to_device(batch, compute, spatial_dims)
        case_ids = list(batch["case_id"])
        _check_inputs(image, case_ids, state.step)
        boundary = (state.batch_in_epoch + 1) % accumulate == 0 or state.batch_in_epoch + 1 == total_batches
        sync = boundary or not ddp or not hasattr(model, "no_sync")
        with (model.no_sync() if not sync else contextlib.nullcontext()), compute.autocast():
            out = _as_dual(model(image))
            extra = {"has_mask": batch["has_mask"]} if "has_mask" in batch else {}
            if "targets" in batch:  # the configuration's tasks
                extra["targets"] = batch["targets"]
            loss, terms = loss_fn(out, labels, mask, state.epoch, **extra)
        if any_rank(not bool(torch.isfinite(loss.detach())), compute.device):  # every rank stops together
            raise TrainingDiverged(
                f"non-finite loss ({float(loss.detach())}) at step {state.step} (epoch {state.epoch + 1}, "
                f"batch {state.batch_in_epoch + 1}), cases {case_ids}; training stopped and the last good "
                "checkpoint kept (try a lower lr, gradient clipping or train.precision=fp32)")
        scaler.scale(loss / accumulate).backward()

        terms = {"loss": float(loss.detach()), **{k: v for k, v in _loss_terms(terms).items() if k != "loss"}}
        for k, v in terms.items():
            state.sums[k] = state.sums.get(k, 0.0) + v * len(case_ids)
        state.samples += len(case_ids)
        state.batch_in_epoch += 1
        if not boundary:
            continue

        all_reduce_grads(loss_fn)  # learned loss weights live outside the DDP model
        if clip_grad_norm is not None or not scaler.is_enabled():
            scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = torch.nn.utils.clip_grad_norm_(params, clip_grad_norm if clip_grad_norm else math.inf)
            if not scaler.is_enabled() and not torch.isfinite(norm):
                raise TrainingDiverged(f"non-finite gradient norm at step {state.step}, cases {case_ids}; "
                                       "training stopped and the last good checkpoint kept")
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        state.step += 1
        shown["loss"] = f"{state.sums['loss'] / max(state.samples, 1):.4f}"
        if on_step is not None:
            on_step()
        if any_rank(should_stop(), compute.device):
            return True
    return False


def _as_dual(out: Any) -> Any:
    """A plain classifier's logits ``[B, K]`` as a DualOutput without segmentation."""
    if hasattr(out, "cls_logits"):
        return out
    from medres.inference.sliding import split_output
    from medres.models import DualOutput

    return DualOutput(*split_output(out))


def forward_volume(model: nn.Module, image: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """``image`` [1, C, *spatial] -> (cls_logits [1, K], seg_logits [1, S, *spatial])."""
    out = _as_dual(model(image))
    return out.cls_logits, out.seg_logits


@torch.no_grad()
def evaluate_epoch(
    model: nn.Module, loader: Iterable[Mapping[str, Any]], loss_fn: nn.Module | None, settings: EpochSettings,
    *, epoch: int = 0,
    infer: Callable[[nn.Module, Tensor], tuple[Tensor | None, Tensor | None]] = forward_volume,
    layout: TaskLayout | None = None,
) -> list[dict[str, Any]]:
    """Predict every validation case; return one record per case, gathered from all ranks.

    ``settings``: the fold's :class:`EpochSettings` (its compute settings, spatial dims and progress bar).

    Records: ``index`` (dataset index), ``case_id``, ``label``, ``probs`` (softmax, list), ``dice``
    (mean foreground Dice of the argmax mask, NaN when the reference has no foreground) and ``loss``.
    With a task ``layout`` (and batches carrying ``targets``), ``probs`` is the single-label task's
    softmax (empty without one) and ``task_losses`` holds each task's unweighted loss (NaN unknown).
    The loader must use batch size 1 (volumes differ in size) and a sampler whose order is known
    (``loader.batch_sampler`` gives each batch's dataset indices).
    """
    from monai.metrics import compute_dice

    from medres.progress import track

    compute, spatial_dims, progress = settings.compute, settings.spatial_dims, settings.progress
    model.eval()
    index_batches = list(loader.batch_sampler)
    records = []
    for indices, batch in track(zip(index_batches, loader), desc="validate", total=len(index_batches),
                                unit="cases", progress=progress, final=False):
        image, labels, mask = _to_device(batch, compute, spatial_dims)
        case_ids = list(batch["case_id"])
        _check_inputs(image, case_ids, -1)
        with compute.autocast():
            cls_logits, seg_logits = infer(model, image)
            loss = None
            if loss_fn is not None:
                from medres.models import DualOutput

                extra = {"targets": batch["targets"]} if "targets" in batch else {}
                loss, _ = loss_fn(DualOutput(cls_logits, seg_logits), labels, mask, epoch, **extra)
        rec = {"index": int(indices[0]), "case_id": case_ids[0], "label": int(labels[0]),
               "loss": float(loss) if loss is not None else math.nan, "probs": [], "dice": math.nan}
        for name, t in (("class", cls_logits), ("segmentation", seg_logits)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise TrainingDiverged(
                    f"non-finite {name} output on validation case {case_ids[0]} after epoch {epoch + 1}; "
                    "training stopped and the last good checkpoint kept (try a lower lr, gradient clipping "
                    "or train.precision=fp32)")
        if layout is not None and cls_logits is not None and "targets" in batch:
            if loss_fn is not None and hasattr(loss_fn, "task_losses"):
                rec["task_losses"] = loss_fn.task_losses(cls_logits.float(), batch["targets"])
            single = layout.single_label
            cls_logits = cls_logits[:, single.logits] if single is not None else None
        if cls_logits is not None:
            rec["probs"] = torch.softmax(cls_logits.float(), dim=1)[0].tolist()
        if seg_logits is not None and mask is not None:
            n = seg_logits.shape[1]
            pred = nn.functional.one_hot(seg_logits.argmax(1), n).movedim(-1, 1)
            ref = nn.functional.one_hot(mask[:, 0].long().clamp(0, n - 1), n).movedim(-1, 1)
            d = compute_dice(pred, ref, include_background=False, ignore_empty=True)
            rec["dice"] = float(torch.nanmean(d)) if not bool(torch.isnan(d).all()) else math.nan
        records.append(rec)
    return gather_records(records)


def val_metrics(records: list[dict[str, Any]], *, positive: int = -1) -> dict[str, float]:
    """``val_loss``, ``val_auroc`` (scikit-learn; NaN with one class) and ``val_dice`` (mean over cases
    whose reference mask has foreground) from :func:`evaluate_epoch`'s records; with tasks also
    ``val_loss_<task>`` (each task's mean loss over the cases where it is known) and ``val_task_loss``,
    their unweighted mean (the default early-stopping monitor with tasks)."""
    from sklearn.metrics import roc_auc_score

    out = {"val_loss": float(np.nanmean([r["loss"] for r in records])) if records else math.nan,
           "val_auroc": math.nan, "val_dice": math.nan}
    y = np.array([r["label"] for r in records])
    keep = y >= 0
    if records and records[0]["probs"] and len(np.unique(y[keep])) > 1:
        p = np.array([r["probs"] for r in records])[keep]
        k = p.shape[1]
        if k == 2:
            out["val_auroc"] = float(roc_auc_score(y[keep], p[:, positive]))
        elif len(np.unique(y[keep])) == k:
            out["val_auroc"] = float(roc_auc_score(y[keep], p, multi_class="ovr"))
    dice = [r["dice"] for r in records if not math.isnan(r["dice"])]
    if dice:
        out["val_dice"] = float(np.mean(dice))
    if records and "task_losses" in records[0]:
        per_task = {}
        for name in records[0]["task_losses"]:
            values = [r["task_losses"][name] for r in records if not math.isnan(r["task_losses"][name])]
            per_task[name] = float(np.mean(values)) if values else math.nan
        out.update({f"val_loss_{k}": v for k, v in per_task.items()})
        known = [v for v in per_task.values() if not math.isnan(v)]
        out["val_task_loss"] = float(np.mean(known)) if known else math.nan
    return out

