"""Does the input pipeline keep the device busy? Two rates for one configuration, measured apart.

- :func:`loader_rate` — samples/s of the training input pipeline with the model removed: the config's
  dataset (its cache filled first; that one-off preprocessing is timed separately), DataLoader workers,
  pinned memory, the copy to the device and the on-device augmentation (``data.augment_on_device``):
  everything a training step waits for. One loader for every epoch with an epoch-tagged sampler, as the
  engine builds it (its workers persist with ``data.persistent_workers``; ``data.patches_per_volume``
  patches per loaded volume).
- :func:`device_rate` — samples/s of medres's own training loop (``train_one_epoch``: autocast,
  channels_last, the loss of both heads, the optimizer step, fused when configured) on one batch that
  already sits on the device: what the model consumes when the input is free. With ``compile`` the
  first (compiling) steps are reported apart as ``compile_s``.

The ratio ``loader / device`` must exceed 1 (goal: 1.2) for the GPU to be the bottleneck.
Used by ``benchmarks/train_throughput.py --loader-only / --device-only`` and ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from medres.config import Config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Fill(torch.utils.data.Dataset):
    """Index -> index, computing the dataset's cache entry on the way (in a worker: in parallel)."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> int:
        self.ds._located(index, self.ds.cached)
        return index


def _fill(ds: Any, workers: int) -> None:
    if ds.cache in ("mmap", "disk") and workers > 0:  # entries land on disk, shared with this process
        for _ in torch.utils.data.DataLoader(_Fill(ds), batch_size=1, num_workers=workers):
            pass
    else:
        for i in range(len(ds)):
            ds._located(i, ds.cached)


def loader_rate(cfg: Config, *, batches: int = 20, cache_dir: Path | None = None) -> dict[str, Any]:
    """Samples/s the training input pipeline delivers on the training device (model removed)."""
    from medres.data.cohort import load_cohort
    from medres.data.pipeline.datasets import LoaderSettings, build_dataset, build_loader, manifest_to_records
    from medres.training.device_input import device_batches, host_data_config
    from medres.training.precision import resolve_compute_settings
    from medres.training.sampling import EpochSampler

    cfg, df = load_cohort(cfg)
    d, t = cfg.data, cfg.train
    fast = resolve_compute_settings(t, spatial_dims=cfg.model.spatial_dims)
    records = manifest_to_records(df, d)
    folder = cache_dir or (Path(d.cache_dir) if d.cache_dir else None)
    folder = folder or Path(tempfile.mkdtemp(prefix="medres-cache-"))
    ds = build_dataset(records, host_data_config(d), train=True, cache_dir=folder, seed=t.seed)
    t0 = time.perf_counter()
    _fill(ds, d.num_workers)  # preprocess once (or find it cached): not the steady state
    fill_s = time.perf_counter() - t0
    samples, seconds, first_batch_s, epoch = 0, 0.0, [], 0
    done = 0
    per_batch = t.batch_size // d.patches_per_volume  # volumes per batch
    sampler = EpochSampler(len(ds), seed=t.seed, tag_epoch=True)
    loader = build_loader(ds, batch_size=per_batch, shuffle=False, seed=t.seed, epoch=0, sampler=sampler,
                          settings=LoaderSettings(num_workers=d.num_workers, pin_memory=fast.pin_memory,
                                                  prefetch_factor=d.prefetch_factor,
                                                  drop_last=len(ds) > per_batch,
                                                  persistent_workers=d.persistent_workers))
    while done < batches:
        sampler.epoch = epoch
        feed = device_batches(loader, d, fast, seed=t.seed, epoch=epoch, first_batch=0,
                              batch_size=t.batch_size)
        t0 = time.perf_counter()
        for k, batch in enumerate(feed):
            image = batch["image"]
            image = image.to(fast.device, non_blocking=fast.pin_memory)  # a no-op when already there
            _sync(fast.device)
            now = time.perf_counter()
            if k == 0:
                first_batch_s.append(now - t0)  # worker start-up (once, with persistent workers)
            samples += len(image)
            done += 1
            if done >= batches:
                break
        seconds += time.perf_counter() - t0
        epoch += 1
    return {"mode": "loader", "samples_per_s": samples / max(seconds, 1e-9), "samples": samples,
            "seconds": seconds, "cache_fill_s": fill_s, "first_batch_s": statistics.median(first_batch_s),
            "num_workers": d.num_workers, "persistent_workers": d.persistent_workers,
            "patches_per_volume": d.patches_per_volume, "batch": t.batch_size, "cache": d.cache,
            "augment_on_device": d.augment_on_device, "device": str(fast.device), "scans": len(ds)}


def device_rate(cfg: Config, *, steps: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Samples/s of ``train_one_epoch`` on a batch already on the device (input pipeline removed)."""
    from medres.training.compute import apply_backend_flags, compile_model, use_fused_optimizer
    from medres.training.fold import build_model
    from medres.training.loop import EpochSettings, LoopState, TrainParts, train_one_epoch
    from medres.training.losses import build_loss
    from medres.training.optim import build_optimizer
    from medres.training.precision import resolve_compute_settings

    cfg = cfg.resolved()
    m, t, d = cfg.model, cfg.train, cfg.data
    fast = resolve_compute_settings(t, spatial_dims=m.spatial_dims)
    apply_backend_flags(t, fast.device)
    torch.manual_seed(0)
    model = build_model(cfg).to(fast.device, memory_format=fast.memory_format(m.spatial_dims))
    loss_fn = build_loss(cfg.loss, class_counts=[1] * m.num_classes, num_classes=m.num_classes,
                         seg_classes=m.seg_classes, cls_head=m.cls_head, seg_head=m.seg_head).to(fast.device)
    optimizer = build_optimizer(model, cfg.optim, extra_params=list(loss_fn.parameters()),
                                fused=use_fused_optimizer(t, fast.device) or None)
    net = compile_model(model, t) if fast.compile else model
    scaler = fast.grad_scaler()
    b, patch = t.batch_size, list(d.patch_size)
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 1, *patch, dtype=torch.long)
    mask[(slice(None), slice(None), *(slice(s // 3, s // 2) for s in patch))] = 1  # a foreground block
    batch = {"image": torch.rand(b, m.in_channels, *patch, generator=g).to(fast.device),
             "mask": mask.to(fast.device), "label": torch.arange(b).remainder(m.num_classes).to(fast.device),
             "case_id": [f"synthetic{i}" for i in range(b)]}

    def run(n: int) -> float:
        state = LoopState()
        _sync(fast.device)
        t0 = time.perf_counter()
        train_one_epoch(TrainParts(net, loss_fn, optimizer, None, scaler), [batch] * n, state,
                        EpochSettings(fast, spatial_dims=m.spatial_dims, total_batches=n))
        _sync(fast.device)
        return time.perf_counter() - t0

    warm_s = run(warmup)
    seconds = run(steps)
    return {"mode": "device", "samples_per_s": b * steps / seconds, "steps": steps, "seconds": seconds,
            "warmup_s": warm_s, "compile_s": warm_s if fast.compile else None, "batch": b,
            "patch": patch, "model": m.name, "precision": fast.precision, "channels_last": fast.channels_last,
            "compile": fast.compile, "device": str(fast.device)}


def report(loader: dict[str, Any] | None, device: dict[str, Any] | None) -> str:
    """The two rates and their ratio, as lines of text."""
    lines = []
    if loader is not None:
        lines.append(f"loader only: {loader['samples_per_s']:.1f} samples/s ({loader['num_workers']} "
                     f"workers, cache {loader['cache']}, augment on device {loader['augment_on_device']}, "
                     f"batch {loader['batch']}; cache filled in {loader['cache_fill_s']:.1f} s, "
                     f"first batch of an epoch after {loader['first_batch_s']:.2f} s)")
    if device is not None:
        extra = f", compile {device['compile_s']:.1f} s" if device["compile_s"] is not None else ""
        lines.append(f"device only: {device['samples_per_s']:.1f} samples/s ({device['model']}, patch "
                     f"{'x'.join(map(str, device['patch']))}, batch {device['batch']}, "
                     f"{device['precision']}, channels_last {device['channels_last']}{extra})")
    if loader is not None and device is not None:
        ratio = loader["samples_per_s"] / device["samples_per_s"]
        verdict = "keeps up" if ratio >= 1 else "the device waits for data"
        lines.append(f"loader / device: {ratio:.2f}x ({verdict}; goal 1.2x)")
    return "\n".join(lines)
