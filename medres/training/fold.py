"""Train one cross-validation fold, top to bottom (nanoGPT's shape): the model, loss, optimizer,
schedule and loaders from the config, then the epoch loop with checkpoints, best-model tracking,
early stopping and exact resume.

``train_fold`` is an independent job (``python -m medres.train --fold k``): all it needs is the
configuration, the records of its training / inner-validation cases (:class:`medres.cv.FoldData`)
and its folder. The steps inside an epoch are in :mod:`medres.training.loop`; predicting the held-out
cases and evaluating the run are done by the caller, ``medres.train``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medres.checkpoint import (
    clean_stale_temporaries,
    copy_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from medres.config import Config, flatten_dict
from medres.config.tasks import TaskLayout, mask_scores, task_layout
from medres.cv import FoldData
from medres.runfolder import FoldFolder, fold_name
from medres.training.distributed import DistInfo, all_reduce_mean, world_size
from medres.training.loop import (
    EpochSettings,
    Interrupted,
    LoopState,
    TrainParts,
    evaluate_epoch,
    forward_volume,
    train_one_epoch,
    val_metrics,
)
from medres.training.precision import ComputeSettings
from medres.training.run_guard import check_fold_start, config_sha256
from medres.training.sampling import EpochSampler
from medres.training.tracking import MetricsTracker

__all__ = ["build_model", "model_spec", "train_fold", "FoldJob", "restore_state", "weights_digest",
           "FoldSettings", "fold_meta", "save_fold_checkpoint", "epoch_end"]

log = logging.getLogger("medres.training")


@dataclass(frozen=True)
class FoldSettings:
    """What a fold's training works out from the configuration, once (:meth:`from_config`).

    Attributes:
        fold: the fold's number.
        seed: the fold's seed (``train.seed + 1000 * fold``): initial weights, order and augmentation.
        per_batch: volumes per batch (``train.batch_size`` counts patches).
        drop_last: drop an epoch's last batch (it would hold one sample: batch norm needs two).
        n_batches: batches per epoch on each rank.
        steps_per_epoch: optimizer steps per epoch (``n_batches / train.accumulate``, rounded up).
        workers: DataLoader workers (``data.num_workers``, at most the usable CPUs).
        epoch: how :func:`medres.training.loop.train_one_epoch` trains each epoch.
    """

    fold: int
    seed: int
    per_batch: int
    drop_last: bool
    n_batches: int
    steps_per_epoch: int
    workers: int
    epoch: EpochSettings

    @classmethod
    def from_config(cls, cfg: Config, fold: int, n_train: int, compute: ComputeSettings, *,
                    world_size: int = 1, progress: bool = False) -> FoldSettings:
        """The settings of fold ``fold`` training on ``n_train`` scans split over ``world_size`` ranks."""
        from medres.training.compute import usable_cpus

        t, patches = cfg.train, cfg.data.patches_per_volume
        per_rank = math.ceil(n_train / world_size)
        per_batch = t.batch_size // patches
        # a last batch of one sample breaks batch norm (one value per channel at layer4): drop it
        drop_last = per_rank * patches % t.batch_size == 1 and per_rank > 1
        n_batches = per_rank // per_batch if drop_last else math.ceil(per_rank / per_batch)
        # more loader workers than usable CPUs hold more memory and contend for the cores (torch warns of
        # slowness or freezes); each sample's augmentation is f(seed, epoch, index), so the number of
        # workers changes nothing that is learned
        workers = min(cfg.data.num_workers, usable_cpus())
        epoch = EpochSettings(compute=compute, spatial_dims=cfg.model.spatial_dims, accumulate=t.accumulate,
                              clip_grad_norm=t.clip_grad_norm, total_batches=n_batches, progress=progress)
        return cls(fold=fold, seed=t.seed + 1000 * fold, per_batch=per_batch, drop_last=drop_last,
                   n_batches=n_batches, steps_per_epoch=math.ceil(n_batches / t.accumulate), workers=workers,
                   epoch=epoch)


def fold_meta(cfg: Config, fold: int, folds_hash: str | None = None) -> dict[str, Any]:
    """What every checkpoint of a fold records besides the training state: the configuration (and its
    hash), the model's spec, medres's version, the fold and the hash of the run's fold assignment."""
    from medres import __version__

    return {"config": cfg.model_dump(mode="json"), "model_spec": model_spec(cfg),
            "medres_version": __version__, "fold": fold, "config_sha256": config_sha256(cfg),
            **({"folds_sha256": folds_hash} if folds_hash is not None else {})}


def save_fold_checkpoint(path: Path, parts: TrainParts, state: LoopState, meta: Mapping[str, Any]) -> None:
    """A fold's resumable checkpoint: the bare model's weights, the optimizer, schedule, scaler and loss
    states, the RNG states, the :class:`LoopState` and ``meta`` (:func:`fold_meta`)."""
    save_checkpoint({
        "model": unwrap_model(parts.model).state_dict(), "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "scaler": parts.scaler.state_dict(), "loss": parts.loss_fn.state_dict(), "rng": rng_state(),
        **asdict(state), **meta,
    }, path)


def epoch_end(folder: FoldFolder, row: Mapping[str, Any], save: Callable[[], None], *,
              tracker: MetricsTracker | None, best: bool) -> None:
    """An epoch's end after validation, as ``train_fold`` does it (and ``medres.plan`` measures it): the
    metrics row logged (``tracker``: the main rank's), the last checkpoint written by ``save``, and
    copied as the best when ``best``."""
    if tracker is not None:
        tracker.log_epoch(row)
    save()
    if best:
        copy_checkpoint(folder.checkpoint_last, folder.checkpoint_best)


def model_spec(cfg: Config) -> dict[str, Any]:
    """``{name, kwargs}``: what ``create_model`` needs to rebuild the model (stored in checkpoints)."""
    m = cfg.model
    kwargs = {"spatial_dims": m.spatial_dims, "in_channels": m.in_channels, "num_classes": m.num_classes}
    if m.name.startswith("dual_"):  # plain backbones (resnet50, ...) have a classifier only
        kwargs.update(seg_classes=m.seg_classes, cls_head=m.cls_head, seg_head=m.seg_head)
        if pairs := mask_scores(cfg):
            kwargs["mask_scores"] = pairs
    kwargs.update(m.options)
    return {"name": m.name, "kwargs": kwargs}


def build_model(cfg: Config) -> nn.Module:
    """The configured model, with pretrained backbone weights when ``model.pretrained`` is set."""
    from medres.models import create_model

    spec = model_spec(cfg)
    model = create_model(spec["name"], **spec["kwargs"])
    if cfg.model.pretrained is not None:
        from medres.models import load_pretrained

        load_pretrained(model, cfg.model.pretrained.path, source=cfg.model.pretrained.source)
    return model


def _no_signal() -> int | None:
    return None


@dataclass(frozen=True)
class FoldJob:
    """What the run gives each fold it trains (the same for all its folds).

    Attributes:
        compute: the device, precision and compile settings (``medres.training.precision``).
        dist_info: this process's rank among the DDP processes (default: a single process).
        resume: continue from the fold's ``checkpoint_last.pt``.
        force: start over even though the fold holds a checkpoint (or resume a changed configuration).
        progress: show a progress bar or log lines.
        should_stop: the number of a received signal, or None; when one arrives a resumable checkpoint is
            written and :class:`Interrupted` raised.
        cache_dir: the preprocessing cache's folder (``data.cache: disk/mmap``).
        folds_hash: :func:`medres.training.run_guard.folds_sha256` of the run's fold assignment, recorded in
            every checkpoint; resuming a checkpoint of other folds is refused.
    """

    compute: ComputeSettings
    dist_info: DistInfo = field(default_factory=DistInfo)
    resume: bool = False
    force: bool = False
    progress: bool = False
    should_stop: Callable[[], int | None] = _no_signal
    cache_dir: Path | None = None
    folds_hash: str | None = None


def train_fold(cfg: Config, data: FoldData, fold_dir: Path, job: FoldJob) -> LoopState:
    """Train fold ``data.fold`` into ``fold_dir`` (checkpoints, metrics.csv) as ``job`` says; return the final
    LoopState.

    Raises :class:`Interrupted` when ``job.should_stop()`` reports a signal, :class:`TrainingDiverged` on a
    non-finite loss or gradient, and ConfigError when ``fold_dir`` already holds a checkpoint and neither
    ``job.resume`` nor ``job.force`` is set, when resuming with a changed configuration without ``force``,
    or when resuming a checkpoint trained with folds other than ``job.folds_hash``.
    """
    from medres.data.pipeline.datasets import (
        LoaderSettings,
        balanced_sample_weights,
        build_dataset,
        build_loader,
        case_targets,
    )
    from medres.training.compute import apply_backend_flags, compile_model, use_fused_optimizer
    from medres.training.device_input import device_batches, host_data_config
    from medres.training.losses import build_loss, build_task_loss, fit_task_scales
    from medres.training.optim import build_optimizer, build_scheduler

    compute, dist_info, resume, force = job.compute, job.dist_info, job.resume, job.force
    progress, should_stop, cache_dir, folds_hash = job.progress, job.should_stop, job.cache_dir, \
        job.folds_hash
    t, m, is_main = cfg.train, cfg.model, dist_info.is_main
    fs = FoldSettings.from_config(cfg, data.fold, len(data.train), compute, world_size=dist_info.world_size,
                                  progress=progress)
    fold_seed = fs.seed
    fold_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(fold_dir)
    last, best = FoldFolder(fold_dir).checkpoint_last, FoldFolder(fold_dir).checkpoint_best

    # -- an existing checkpoint: resume it (when its folds and configuration are this run's), or refuse
    ckpt = check_fold_start(fold_dir, cfg, fold=data.fold, folds_hash=folds_hash, resume=resume, force=force,
                            quiet=not is_main)

    # -- model, loss, optimizer
    torch.manual_seed(fold_seed)
    model = build_model(cfg).to(compute.device, memory_format=compute.memory_format(m.spatial_dims))
    layout = task_layout(cfg) if cfg.tasks is not None else None
    task_scales, single = None, None
    if layout is None:
        counts = [sum(1 for r in data.train if int(r["label"]) == c) for c in range(m.num_classes)]
        loss_fn = build_loss(cfg.loss, class_counts=counts, num_classes=m.num_classes,
                             seg_classes=m.seg_classes, cls_head=m.cls_head, seg_head=m.seg_head)
    else:  # the training fold's target scales and pos_weights, kept in the checkpoint as task_scales
        train_targets = case_targets(data.train, cfg.tasks, cfg.data)
        task_scales = fit_task_scales(layout, train_targets)
        single = layout.single_label
        counts = None if single is None else [int((train_targets[:, single.target_start] == c).sum())
                                              for c in range(len(single.classes))]
        loss_fn = build_task_loss(cfg.loss, layout, task_scales, class_counts=counts,
                                  seg_classes=m.seg_classes, seg_head=m.seg_head)
    loss_fn = loss_fn.to(compute.device)
    apply_backend_flags(t, compute.device)
    optimizer = build_optimizer(model, cfg.optim, extra_params=list(loss_fn.parameters()),
                                fused=use_fused_optimizer(t, compute.device) or None)

    # -- data: a seeded sampler per epoch, so epoch e's order and augmentation are f(seed, e, index);
    # with data.augment_on_device the random spatial transforms run on the batch after the copy
    train_set = build_dataset(data.train, host_data_config(cfg.data), train=True, cache_dir=cache_dir,
                              seed=fold_seed, tasks=cfg.tasks)
    if is_main and ckpt is None and cfg.data.modality != "natural":
        warn_patch_fits_none(train_set, cfg.data.patch_size)
    if is_main and progress and cfg.data.cache in ("disk", "mmap"):
        missing = train_set.uncached()
        if missing:
            log.info("fold_%d: %d of %d training scans are not in the preprocessing cache yet; the first "
                     "epoch preprocesses them (slower than the next ones)", data.fold, missing,
                     len(train_set))
    sample_labels = train_set.labels() if layout is not None else [int(r["label"]) for r in data.train]
    weights = balanced_sample_weights(sample_labels).tolist() if cfg.loss.cls.balanced_sampler else None
    per_batch, drop_last, n_batches, workers = fs.per_batch, fs.drop_last, fs.n_batches, fs.workers
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=t.epochs, steps_per_epoch=fs.steps_per_epoch)
    scaler = compute.grad_scaler()
    if workers < cfg.data.num_workers and is_main:
        log.info("data.num_workers %d capped to the %d usable CPUs", cfg.data.num_workers, workers)

    def loader(dataset: Any, sampler: EpochSampler, batch_size: int, epoch: int, drop: bool = False) -> Any:
        return build_loader(dataset, batch_size=batch_size, shuffle=False, seed=t.seed, epoch=epoch,
                            sampler=sampler, settings=LoaderSettings(
                                num_workers=workers, pin_memory=compute.pin_memory, drop_last=drop,
                                prefetch_factor=cfg.data.prefetch_factor,
                                persistent_workers=cfg.data.persistent_workers))

    val_loader = None
    if data.inner_val:
        val_set = build_dataset(data.inner_val, cfg.data, train=False, cache_dir=cache_dir, tasks=cfg.tasks)
        val_loader = loader(val_set, EpochSampler(len(val_set), shuffle=False, rank=dist_info.rank,
                                                  world_size=dist_info.world_size), 1, 0)

    # -- resume: the objects' states, and where training stands
    state, resume_rng = LoopState(), None
    if ckpt is not None:
        state, resume_rng = restore_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                                          scaler=scaler, loss_fn=loss_fn)
        log.info("fold_%d: resuming after step %d (epoch %d%s)", data.fold, state.step, state.epoch + 1,
                 f", batch {state.batch_in_epoch}" if state.batch_in_epoch else "")
        if state.early_stopped or state.epoch >= t.epochs:
            return state

    net = model
    if dist_info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[compute.device.index] if compute.device.type == "cuda" else None)
    if compute.compile:
        net = compile_model(net, t)

    meta = fold_meta(cfg, data.fold, folds_hash)
    if task_scales is not None:
        meta["task_scales"] = task_scales
    tracker = None
    if is_main:
        tracker = MetricsTracker(fold_dir, run_name=f"{cfg.output.name}/{fold_name(data.fold)}",
                                 params=flatten_dict(meta["config"]),
                                 resume_epoch=state.epoch if ckpt else None,
                                 backends=tuple(cfg.output.tracking))

    parts = TrainParts(model=net, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler)

    def checkpoint() -> None:
        if is_main:
            save_fold_checkpoint(last, parts, state, meta)

    def mid_epoch_checkpoint() -> None:  # every train.checkpoint_every_steps (the epoch's end saves anyway)
        n = t.checkpoint_every_steps
        if n and state.step % n == 0 and state.batch_in_epoch < n_batches:
            checkpoint()
            log.info("checkpoint: step %d (epoch %d, batch %d)", state.step, state.epoch + 1,
                     state.batch_in_epoch)

    # -- the epochs
    es, infer, positive = t.early_stopping, _volume_infer(cfg, layout), cfg.data.positive_index()
    monitor, mode = es.monitor, es.mode
    if layout is not None:
        if single is not None:  # a binary task's classes are [0, 1] in that order
            positive = len(single.classes) - 1
        if monitor == "val_auroc":  # with tasks the default monitor is every task's inner-validation loss
            monitor, mode = "val_task_loss", "min"
    if resume_rng is not None and state.batch_in_epoch == 0:
        set_rng_state(resume_rng)
        resume_rng = None
    state.finished = state.early_stopped or state.epoch >= t.epochs
    # one loader for every epoch (its workers persist): the sampler tags each index with its epoch
    sampler = EpochSampler(len(train_set), seed=fold_seed, epoch=state.epoch, rank=dist_info.rank,
                           world_size=dist_info.world_size, weights=weights, tag_epoch=True)
    train_loader, batches = loader(train_set, sampler, per_batch, state.epoch, drop_last), None
    try:
        while not state.finished:
            t0 = time.perf_counter()
            if state.batch_in_epoch == 0:
                state.new_epoch()
            sampler.epoch, sampler.skip = state.epoch, state.batch_in_epoch * per_batch
            batches = device_batches(train_loader, cfg.data, compute, seed=fold_seed, epoch=state.epoch,
                                     first_batch=state.batch_in_epoch, batch_size=t.batch_size)
            stopped = train_one_epoch(parts, batches, state, fs.epoch,
                                      should_stop=lambda: should_stop() is not None,
                                      on_step=mid_epoch_checkpoint, restore_rng=resume_rng)
            resume_rng = None
            if stopped and state.batch_in_epoch < n_batches:
                checkpoint()
                raise Interrupted(should_stop() or 15, last if is_main else None)
            seconds = time.perf_counter() - t0

            sums = state.sums
            means = dict(zip(sums, all_reduce_mean([v / max(state.samples, 1) for v in sums.values()],
                                                   compute.device)))
            row = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": seconds, "samples_per_s": state.samples * world_size() / max(seconds, 1e-9),
                   **means}
            improved = False
            validate = (state.epoch + 1) % t.val_every == 0 or state.epoch + 1 == t.epochs
            if val_loader is not None and validate:
                records = evaluate_epoch(net, val_loader, loss_fn, fs.epoch, epoch=state.epoch, infer=infer,
                                         layout=layout)
                row.update(val_metrics(records, positive=positive))
                value = row.get(monitor, math.nan)
                improved = math.isfinite(value) and (state.best is None or (
                    value > state.best if mode == "max" else value < state.best))
                if improved:
                    state.best, state.best_epoch, state.bad_rounds = value, state.epoch + 1, 0
                else:
                    state.bad_rounds += 1
                if es.patience is not None and state.bad_rounds > es.patience:
                    log.info("early stopping: %s has not improved for %d validation rounds "
                             "(best %.4f at epoch %d)", monitor, state.bad_rounds,
                             state.best if state.best is not None else math.nan, state.best_epoch)
                    state.early_stopped = True
            state.epoch += 1
            state.batch_in_epoch = 0
            state.finished = state.early_stopped or state.epoch >= t.epochs
            if is_main:
                shown = (f"{k} {v:.4g}" for k, v in row.items() if isinstance(v, float))
                log.info("epoch %d/%d: %s", state.epoch, t.epochs, ", ".join(shown))
            epoch_end(FoldFolder(fold_dir), row, checkpoint, tracker=tracker,
                      best=is_main and (improved or (state.finished and not best.exists())))
            if should_stop() is not None and not state.finished:
                raise Interrupted(should_stop(), last if is_main else None)
    finally:
        del train_loader, val_loader, batches  # their worker processes stop now, even on an exception
        if tracker is not None:
            tracker.close()

    if dist_info.enabled:  # each rank records its parameters: equal digests = replicas in sync
        # (batch-norm running statistics stay per rank, as DDP keeps them; rank 0's are saved)
        FoldFolder(fold_dir).weights_digest(dist_info.rank).write_text(weights_digest(model) + "\n")
    return state


def warn_patch_fits_none(dataset: Any, patch: Sequence[int], n: int = 8) -> None:
    """``medres.data.check``'s patch-size warning at the start of training, judged on the first ``n``
    training cases (preprocessed now rather than in the first batch: the cache keeps them)."""
    from medres.data.readers.limits import patch_fits_none, patch_misfit

    shapes = [dataset.preprocessed_shape(i) for i in range(min(n, len(dataset)))]
    largest = patch_fits_none(shapes, patch)
    if largest is not None:
        judged = f"each of the first {len(shapes)} training images"
        log.warning("%s; %s", *patch_misfit(patch, largest, judged))


def restore_state(ckpt: Mapping[str, Any], *, model: nn.Module, optimizer: torch.optim.Optimizer,
                  scheduler: Any, scaler: torch.amp.GradScaler,
                  loss_fn: nn.Module) -> tuple[LoopState, dict[str, Any]]:
    """Load a checkpoint's states into the objects; return the :class:`LoopState` and the RNG state
    (restored by ``train_fold`` at the point where it was saved)."""
    load_weights(model, ckpt)
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    loss_fn.load_state_dict(ckpt["loss"])
    names = LoopState.__dataclass_fields__
    state = LoopState(**{k: ckpt[k] for k in names if k in ckpt})
    return state, ckpt["rng"]


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's name and bytes."""
    import hashlib

    h = hashlib.sha256()
    for k, v in unwrap_model(model).named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _volume_infer(cfg: Config, layout: TaskLayout | None = None
                  ) -> Callable[[nn.Module, torch.Tensor], tuple[Any, Any]]:
    """Validation inference: MONAI sliding windows over the whole volume; a volume of exactly the patch
    size is one plain forward pass (what a single blended window gives, without building the window).
    With tasks the windows' outputs are aggregated per task (a single-label task's log-probabilities,
    multilabel logits, regression values in the ``cls`` slots)."""
    from medres.inference.sliding import SlidingWindow, infer_volume

    roi = list(cfg.data.patch_size)
    overlap = cfg.evaluate.sliding_window_overlap

    def infer(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if list(image.shape[2:]) == roi:
            return forward_volume(unwrap_model(model), image)
        if layout is not None:
            pred = infer_volume(unwrap_model(model), image[0], SlidingWindow(roi, overlap), layout=layout)
            values = pred.task_values.float().clone()
            for slot in layout:
                if slot.single_label:
                    values[slot.logits] = torch.log(values[slot.logits].clamp_min(1e-12))
            seg = pred.seg_logits[None].to(image.device) if pred.seg_logits is not None else None
            return values[None].to(image.device), seg
        pred = infer_volume(unwrap_model(model), image[0], SlidingWindow(roi, overlap))
        probs, seg = pred.cls_probs, pred.seg_logits
        cls = torch.log(probs.clamp_min(1e-12))[None].to(image.device) if probs is not None else None
        seg = seg[None].to(image.device) if seg is not None else None
        return cls, seg

    return infer
