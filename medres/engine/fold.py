"""One cross-validation fold: build the data, model, loss and optimizer from the config, fit, predict.

``train_fold`` is an independent job (``python -m medres.train --fold k``): everything it needs is the
configuration, the records of its training / inner-validation / held-out cases and its folder.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medres.config import Config, check_resume_config
from medres.engine.checkpoint import BEST, LAST, load_checkpoint, unwrap_model
from medres.engine.distributed import DistInfo
from medres.engine.loop import LoopState, fit, restore_state
from medres.engine.precision import FastPath
from medres.engine.sampling import EpochSampler
from medres.engine.tracking import MetricsTracker
from medres.errors import ConfigError

__all__ = ["FoldData", "build_model", "model_spec", "train_fold"]

log = logging.getLogger("medres.engine")


@dataclass
class FoldData:
    """The records (``manifest_to_records`` dicts) of one fold's three disjoint patient sets."""

    fold: int
    train: list[dict[str, Any]]
    inner_val: list[dict[str, Any]]
    heldout: list[dict[str, Any]]
    test: list[dict[str, Any]]


def model_spec(cfg: Config) -> dict[str, Any]:
    """``{name, kwargs}``: what ``create_model`` needs to rebuild the model (stored in checkpoints)."""
    m = cfg.model
    kwargs = {"spatial_dims": m.spatial_dims, "in_channels": m.in_channels, "num_classes": m.num_classes}
    if m.name.startswith("dual_"):  # plain backbones (resnet50, ...) have a classifier only
        kwargs.update(seg_classes=m.seg_classes, cls_head=m.cls_head, seg_head=m.seg_head)
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


def _class_counts(records: Sequence[Mapping[str, Any]], k: int) -> list[int]:
    counts = [0] * k
    for r in records:
        if 0 <= int(r["label"]) < k:
            counts[int(r["label"])] += 1
    return counts


def _loader(dataset: Any, sampler: EpochSampler, *, batch_size: int, cfg: Config, fast: FastPath,
            epoch: int, drop_last: bool = False) -> Any:
    """A loader over ``sampler``'s indices (the data package's collate, our order)."""
    from medres.data.datasets import build_loader

    return build_loader(dataset, batch_size=batch_size, shuffle=False, seed=cfg.train.seed, epoch=epoch,
                        sampler=sampler, num_workers=cfg.data.num_workers, pin_memory=fast.pin_memory,
                        drop_last=drop_last, prefetch_factor=cfg.data.prefetch_factor)


def train_fold(cfg: Config, data: FoldData, fold_dir: Path, *, fast: FastPath, dist_info: DistInfo,
               resume: bool = False, force: bool = False, progress: bool = False,
               should_stop: Any = lambda: None, cache_dir: Path | None = None) -> LoopState:
    """Train fold ``data.fold`` into ``fold_dir`` (checkpoints, metrics.csv); return the final LoopState.

    Raises ConfigError when ``fold_dir`` already holds a checkpoint and neither ``resume`` nor ``force``
    is given, or when resuming with a changed configuration without ``force``.
    """
    from medres.data.datasets import balanced_sample_weights, build_dataset
    from medres.engine.losses import build_loss
    from medres.engine.optim import build_optimizer, build_scheduler

    t, d = cfg.train, cfg.data
    fold_seed = t.seed + 1000 * data.fold
    fold_dir.mkdir(parents=True, exist_ok=True)
    ckpt = None
    if (fold_dir / LAST).exists() or (fold_dir / "checkpoint_prev.pt").exists():
        if resume:
            ckpt = load_checkpoint(fold_dir / LAST)
            changes = check_resume_config(ckpt["config"], cfg, force=force)
            if changes:
                log.warning("resuming fold %d with a changed configuration (--force): %s", data.fold,
                            ", ".join(f for f, _, _ in changes))
        elif not force:
            raise ConfigError(f"{fold_dir} already holds a checkpoint", field="output.name",
                              hint="pass --resume to continue it, --force to start it over, or choose "
                                   "another output.name")
    elif resume:
        log.info("fold %d: nothing to resume in %s; starting it", data.fold, fold_dir)

    torch.manual_seed(fold_seed)
    model = build_model(cfg).to(fast.device, memory_format=fast.memory_format(cfg.model.spatial_dims))
    counts = _class_counts(data.train, cfg.model.num_classes)
    m = cfg.model
    loss_fn = build_loss(cfg.loss, class_counts=counts, num_classes=m.num_classes, seg_classes=m.seg_classes,
                         cls_head=m.cls_head, seg_head=m.seg_head).to(fast.device)
    from medres.engine.compute import apply_backend_flags, compile_model, use_fused_optimizer

    apply_backend_flags(t, fast.device)
    optimizer = build_optimizer(model, cfg.optim, extra_params=list(loss_fn.parameters()),
                                fused=use_fused_optimizer(t, fast.device) or None)

    from medres.engine.device_input import device_batches, host_data_config

    train_set = build_dataset(data.train, host_data_config(d), train=True, cache_dir=cache_dir,
                              seed=fold_seed)
    val_set = build_dataset(data.inner_val, d, train=False, cache_dir=cache_dir) if data.inner_val else None
    labels = [int(r["label"]) for r in data.train]
    weights = balanced_sample_weights(labels).tolist() if cfg.loss.cls.balanced_sampler else None
    per_rank = math.ceil(len(train_set) / dist_info.world_size)
    # a last batch of one sample breaks batch norm (one value per channel at layer4): drop it
    drop_last = per_rank % t.batch_size == 1 and per_rank > 1
    batches = per_rank // t.batch_size if drop_last else math.ceil(per_rank / t.batch_size)
    steps_per_epoch = math.ceil(batches / t.accumulate)
    scheduler = build_scheduler(optimizer, cfg.schedule, epochs=t.epochs, steps_per_epoch=steps_per_epoch)
    scaler = fast.grad_scaler()

    state, rng = LoopState(), None
    if ckpt is not None:
        state, rng = restore_state(ckpt, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                   loss_fn=loss_fn)
        log.info("fold %d: resuming after step %d (epoch %d%s)", data.fold, state.step, state.epoch + 1,
                 f", batch {state.batch_in_epoch}" if state.batch_in_epoch else "")
        if state.early_stopped or state.epoch >= t.epochs:
            return state

    net = model
    if dist_info.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[fast.device.index] if fast.device.type == "cuda" else None)
    if fast.compile:
        net = compile_model(net, t)

    def train_loader_for(epoch: int, skip_batches: int) -> tuple[Any, int]:
        sampler = EpochSampler(len(train_set), seed=fold_seed, epoch=epoch, rank=dist_info.rank,
                               world_size=dist_info.world_size, skip=skip_batches * t.batch_size,
                               weights=weights)
        loader = _loader(train_set, sampler, batch_size=t.batch_size, cfg=cfg, fast=fast, epoch=epoch,
                         drop_last=drop_last)
        return device_batches(loader, d, fast, seed=fold_seed, epoch=epoch, first_batch=skip_batches,
                              batch_size=t.batch_size), batches

    val_loader = None
    if val_set is not None:
        val_sampler = EpochSampler(len(val_set), shuffle=False, rank=dist_info.rank,
                                   world_size=dist_info.world_size)
        val_loader = _loader(val_set, val_sampler, batch_size=1, cfg=cfg, fast=fast, epoch=0)

    from medres import __version__

    meta = {"config": cfg.model_dump(mode="json"), "model_spec": model_spec(cfg),
            "medres_version": __version__, "fold": data.fold}
    tracker = None
    if dist_info.is_main:
        tracker = MetricsTracker(fold_dir, run_name=f"{cfg.output.name}/fold_{data.fold}",
                                 params=_flat(meta["config"]), resume_epoch=state.epoch if ckpt else None)
    try:
        state = fit(net, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler, fast=fast,
                    train_cfg=t, spatial_dims=cfg.model.spatial_dims, train_loader_for=train_loader_for,
                    val_loader=val_loader, fold_dir=fold_dir, meta=meta, tracker=tracker, state=state,
                    resume_rng=rng, is_main=dist_info.is_main, should_stop=should_stop,
                    infer=_volume_infer(cfg), progress=progress, positive=_positive_index(cfg))
    finally:
        if tracker is not None:
            tracker.close()
    if dist_info.enabled:  # each rank records its parameters: equal digests = replicas in sync
        # (batch-norm running statistics stay per rank, as DDP keeps them; rank 0's are saved)
        (fold_dir / f"weights_rank{dist_info.rank}.sha256").write_text(weights_digest(model) + "\n")
    return state


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's name and bytes."""
    import hashlib

    h = hashlib.sha256()
    for k, v in unwrap_model(model).named_parameters():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _positive_index(cfg: Config) -> int:
    d = cfg.data
    return d.labels.index(d.positive_label) if d.positive_label else len(d.labels) - 1


def _volume_infer(cfg: Config):
    """Validation inference: MONAI sliding windows over the whole volume; a volume of exactly the patch
    size is one plain forward pass (what a single blended window gives, without building the window)."""
    from medres.engine.loop import forward_volume
    from medres.engine.sliding import infer_volume

    roi = list(cfg.data.patch_size)
    overlap = cfg.evaluate.sliding_window_overlap

    def infer(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if list(image.shape[2:]) == roi:
            return forward_volume(unwrap_model(model), image)
        pred = infer_volume(unwrap_model(model), image[0], roi_size=roi, overlap=overlap)
        probs, seg = pred.cls_probs, pred.seg_logits
        cls = torch.log(probs.clamp_min(1e-12))[None].to(image.device) if probs is not None else None
        seg = seg[None].to(image.device) if seg is not None else None
        return cls, seg

    return infer


def load_best_weights(model: nn.Module, fold_dir: Path) -> None:
    """Load ``checkpoint_best.pt`` (else the last) into ``model`` for prediction."""
    path = fold_dir / BEST if (fold_dir / BEST).exists() else fold_dir / LAST
    unwrap_model(model).load_state_dict(load_checkpoint(path)["model"])


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
