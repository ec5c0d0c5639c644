"""``fit``: epochs of training and validation with checkpoints, best-model tracking and early stopping;
``restore_state``: a checkpoint back into the objects, for ``--resume``.

Re-exported by ``medres.engine.loop`` (the loop reads top to bottom there; this is its driver).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from medres.engine.checkpoint import (
    BEST,
    LAST,
    copy_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from medres.engine.distributed import all_reduce_mean
from medres.engine.loop import (
    Interrupted,
    LoopState,
    evaluate_epoch,
    forward_volume,
    train_one_epoch,
    val_metrics,
)
from medres.engine.precision import FastPath

__all__ = ["fit", "restore_state"]

log = logging.getLogger("medres.engine")


def _improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def fit(
    model: nn.Module, *, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, fast: FastPath, train_cfg: Any, spatial_dims: int,
    train_loader_for: Callable[[int, int], tuple[Iterable, int]], val_loader: Iterable | None,
    fold_dir: Path, meta: Mapping[str, Any], tracker: Any = None, state: LoopState | None = None,
    resume_rng: Mapping[str, Any] | None = None, is_main: bool = True,
    should_stop: Callable[[], int | None] = lambda: None,
    infer: Callable = forward_volume, progress: bool = False, positive: int = -1,
) -> LoopState:
    """Train for ``train_cfg.epochs`` epochs from ``state`` (a fresh or resumed :class:`LoopState`).

    ``train_loader_for(epoch, skip_batches)`` returns ``(loader, batches_in_epoch)`` for that epoch with
    the first ``skip_batches`` batches left out. ``meta`` (config, model_spec, version) goes into each
    checkpoint. ``should_stop()`` returns the number of a received signal or None. Raises
    :class:`Interrupted` after saving when a signal arrived, :class:`TrainingDiverged` on a NaN/inf loss.
    """
    state = state or LoopState()
    es = train_cfg.early_stopping
    epochs = train_cfg.epochs

    def checkpoint() -> None:
        if not is_main:
            return
        save_checkpoint({
            "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "loss": loss_fn.state_dict(), "rng": rng_state(),
            **asdict(state), **meta,
        }, fold_dir / LAST)

    n_batches = 0

    def mid_epoch_checkpoint() -> None:
        n = train_cfg.checkpoint_every_steps
        if n and state.step % n == 0 and state.batch_in_epoch < n_batches:  # the epoch's end saves anyway
            checkpoint()
            log.info("checkpoint: step %d (epoch %d, batch %d)", state.step, state.epoch + 1,
                     state.batch_in_epoch)

    if resume_rng is not None and state.batch_in_epoch == 0:
        set_rng_state(resume_rng)
        resume_rng = None
    state.finished = state.early_stopped or state.epoch >= epochs
    while not state.finished:
        t0 = time.perf_counter()
        if state.batch_in_epoch == 0:
            state.new_epoch()
        loader, n_batches = train_loader_for(state.epoch, state.batch_in_epoch)
        stopped = train_one_epoch(
            model, loader, loss_fn, optimizer, scheduler, scaler, fast, state, spatial_dims=spatial_dims,
            accumulate=train_cfg.accumulate, clip_grad_norm=train_cfg.clip_grad_norm, total_batches=n_batches,
            should_stop=lambda: should_stop() is not None, on_step=mid_epoch_checkpoint,
            restore_rng=resume_rng, progress=progress)
        resume_rng = None
        if stopped and state.batch_in_epoch < n_batches:
            checkpoint()
            raise Interrupted(should_stop() or 15, fold_dir / LAST if is_main else None)
        seconds = time.perf_counter() - t0

        means = dict(zip(state.sums, all_reduce_mean([v / max(state.samples, 1) for v in state.sums.values()],
                                                     fast.device)))
        row = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
               "seconds": seconds, "samples_per_s": state.samples * _world() / max(seconds, 1e-9), **means}
        improved = False
        last_epoch = state.epoch + 1 == epochs
        if val_loader is not None and ((state.epoch + 1) % train_cfg.val_every == 0 or last_epoch):
            row.update(val_metrics(evaluate_epoch(model, val_loader, loss_fn, fast, spatial_dims=spatial_dims,
                                                  epoch=state.epoch, infer=infer, progress=progress),
                                   positive=positive))
            value = row.get(es.monitor, math.nan)
            improved = _improved(value, state.best, es.mode)
            if improved:
                state.best, state.best_epoch, state.bad_rounds = value, state.epoch + 1, 0
            else:
                state.bad_rounds += 1
            if es.patience is not None and state.bad_rounds > es.patience:
                log.info("early stopping: %s has not improved for %d validation rounds "
                         "(best %.4f at epoch %d)",
                         es.monitor, state.bad_rounds, state.best if state.best is not None else math.nan,
                         state.best_epoch)
                state.early_stopped = True
        state.epoch += 1
        state.batch_in_epoch = 0
        state.finished = state.early_stopped or state.epoch >= epochs
        if is_main:
            if tracker is not None:
                tracker.log_epoch(row)
            shown = (f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))
            log.info("epoch %d/%d: %s", state.epoch, epochs, ", ".join(shown))
        checkpoint()
        if is_main and (improved or (state.finished and not (fold_dir / BEST).exists())):
            copy_checkpoint(fold_dir / LAST, fold_dir / BEST)
        if should_stop() is not None and not state.finished:
            raise Interrupted(should_stop(), fold_dir / LAST if is_main else None)
    return state


def restore_state(ckpt: Mapping[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, scaler: torch.amp.GradScaler,
                  loss_fn: nn.Module) -> tuple[LoopState, dict[str, Any]]:
    """Load a checkpoint's states into the objects; return the :class:`LoopState` and the RNG state
    (apply it with ``fit(resume_rng=...)``, which restores it at the point where it was saved)."""
    load_weights(model, ckpt)
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    loss_fn.load_state_dict(ckpt["loss"])
    names = LoopState.__dataclass_fields__
    state = LoopState(**{k: ckpt[k] for k in names if k in ckpt})
    return state, ckpt["rng"]


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
