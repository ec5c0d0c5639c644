"""``plan_config``: a complete, commented training configuration derived from a cohort's fingerprint.

One rule per setting, each explained by a comment in the written YAML: the target spacing (median,
or nnU-Net's 10th percentile along a strongly anisotropic axis), the patch (the median field of view,
shrunk to fit memory), the batch size (measured dry steps), intensity windows or z-scores, class
weights, the segmentation loss, epochs fitted to the time budget (an epoch measured in its parts
through the engine's own functions), and the cache. The rules, their sources and the measurements
behind them are in docs/planning.md ("The rules").
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medres.data.readers.limits import resampled_shape
from medres.errors import ConfigError, DataError
from medres.files import atomic_write, check_output

__all__ = ["Plan", "PlanOptions", "plan_config"]

log = logging.getLogger("medres.plan")

ANISOTROPY = 3.0  # nnU-Net v2: coarse axis more than 3x the finest
STRIDE = 32
TARGET_STEPS = 1000
MIN_EPOCHS, MAX_EPOCHS = 20, 300
MIN_STEPS_PER_EPOCH = 16
BATCH_VOXEL_SHARE = 0.05
MIN_LESION_VOXELS = 3.0


@dataclass
class Plan:
    """The planned configuration: its YAML text (with comments), the validated ``Config``, the
    fingerprint it came from and the measurements behind it."""

    yaml_text: str
    config: Any
    fingerprint: dict[str, Any]
    measurements: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


@dataclass(frozen=True)
class PlanOptions:
    """The choices of :func:`plan_config` besides the cohort and the training budget.

    Attributes:
        folds: cross-validation folds (fewer when a class has fewer patients).
        seed: ``train.seed`` and ``cv.seed`` of the planned configuration.
        fingerprint: a fingerprint already measured (skips reading the scans).
        name: ``output.name`` (default: the stem of ``out``, else ``"planned"``).
        force: replace an existing ``out`` (and a ``fingerprint.json`` beside it that medres did not
            write); without it they are refused.
    """

    folds: int = 5
    seed: int = 0
    fingerprint: dict[str, Any] | None = None
    name: str | None = None
    force: bool = False


# ---------------------------------------------------------------------------------------------------
# geometry


def _target_spacing(fp: dict[str, Any]) -> tuple[list[float], str]:
    median = [float(x) for x in fp["spacing_mm"]["median"]]
    p10 = [float(x) for x in fp["spacing_mm"]["p10"]]
    ratio = max(median) / min(median)
    if ratio > ANISOTROPY:
        axis = int(np.argmax(median))
        target = list(median)
        target[axis] = p10[axis]
        return target, (f"median spacing {_fmt(median)} mm is anisotropic ({ratio:.1f}x > {ANISOTROPY:g}x): "
                        f"axis {'RAS'[axis]} takes its 10th percentile {p10[axis]:g} mm (nnU-Net's rule)")
    return median, f"the cohort's median spacing per RAS axis ({ratio:.2f}x anisotropy)"


def _coarser(spacing: list[float], ceiling: float) -> list[float] | None:
    """One coarsening step: the finer axes x1.25 (capped at the coarsest axis); all axes once equal."""
    top = max(spacing)
    if all(math.isclose(s, top) for s in spacing):
        out = [s * 1.25 for s in spacing]
    else:
        out = [min(s * 1.25, top) if s < top else s for s in spacing]
    return out if max(out) <= ceiling + 1e-9 else None


def _grid(fp: dict[str, Any], spacing: list[float]) -> list[int]:
    grids = [resampled_shape(s["size"], s["spacing_mm"], spacing) for s in fp["scans"]]
    return [int(x) for x in np.median(np.asarray(grids, dtype=np.float64), axis=0)]


def _round_up(n: int, m: int) -> int:
    return max(m, int(math.ceil(n / m)) * m)


def _stride_for(patch: list[int]) -> int:
    return STRIDE if all(p % STRIDE == 0 for p in patch) else STRIDE // 2


def _lesion_need(fp: dict[str, Any], spacing: list[float]) -> list[int]:
    """Twice the 95th-percentile lesion extent per axis (the lesion and as much context), in voxels."""
    ext = (fp.get("lesions") or {}).get("extent_mm")
    if not ext:
        return [STRIDE] * len(spacing)
    return [_round_up(int(math.ceil(2 * ext[a]["p95"] / s)), STRIDE // 2) for a, s in zip("RAS", spacing)]


# ---------------------------------------------------------------------------------------------------
# measurement


def _model_options(n_scans: int, stride: int) -> tuple[str, dict[str, Any], str]:
    if n_scans <= 300:
        name, opts = "dual_resnet10", {"base_channels": 16}
        why = f"{n_scans} scans: a compact ResNet-10 with 16 base channels (1.3 M parameters)"
    else:
        name, opts = "dual_resnet18", {"base_channels": 32}
        why = f"{n_scans} scans: a ResNet-18 with 32 base channels"
    if stride == 16:
        opts["replace_stride_with_dilation"] = [False, False, True]
        why += "; the last stage dilated (stride 16, see data.patch_size)"
    return name, opts, why


class _Bench:
    """Builds the planned model, loss and optimizer on the target device for dry steps."""

    def __init__(self, raw: dict[str, Any], device: str) -> None:
        import torch

        from medres.config import load_config

        self.torch = torch
        self.cfg = load_config(data=raw)
        self.device = torch.device(device)
        self.in_channels = self.cfg.model.in_channels
        self.seg_classes = self.cfg.model.seg_classes

    def autocast(self):
        """The precision training will use (``precision: auto``): fp32 on the CPU, bf16/fp16 on a GPU."""
        import contextlib

        torch = self.torch
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def build(self):
        from medres.training.fold import build_model
        from medres.training.losses import build_loss
        from medres.training.optim import build_optimizer

        m = self.cfg.model
        model = build_model(self.cfg).to(self.device)
        loss = build_loss(self.cfg.loss, class_counts=[1] * m.num_classes, num_classes=m.num_classes,
                          seg_classes=m.seg_classes, cls_head=m.cls_head, seg_head=m.seg_head).to(self.device)
        opt = build_optimizer(model, self.cfg.optim, extra_params=list(loss.parameters()))
        return model, loss, opt

    def batch_maker(self, patch: list[int]):
        torch = self.torch
        gen = torch.Generator().manual_seed(0)

        def make(b: int):
            x = torch.rand(b, self.in_channels, *patch, generator=gen).to(self.device)
            y = torch.arange(b) % self.cfg.model.num_classes
            mask = (torch.rand(b, 1, *patch, generator=gen) > 0.99).long().to(self.device)
            return x, y.to(self.device), mask

        make.patch_size = tuple(patch)  # type: ignore[attr-defined]
        return make


def _search_batch(bench: _Bench, patch: list[int], budget: int, cap: int) -> dict[str, Any]:
    """Doubling search (2, 4, 8, ... up to ``cap``, and ``cap`` itself) for the largest measured batch
    whose step fits ``budget`` bytes; bounded by log2(cap) + 2 dry runs."""
    from medres.plan.measure import measure_step

    # from 2: one sample breaks batch norm where the deepest map is 1 voxel (the loop drops such batches)
    cap = max(cap, 2)
    tries = sorted({*[2 ** k for k in range(1, int(math.log2(cap)) + 1)], cap})
    # a throw-away step first: one-time allocations (libraries' workspaces, thread pools) are not the batch's
    measure_step(bench.build, bench.batch_maker(patch), 2, device=bench.device, autocast=bench.autocast)
    measured: list[tuple[int, int]] = []
    best = None
    method = ""
    for b in tries:
        m = measure_step(bench.build, bench.batch_maker(patch), b, device=bench.device,
                         autocast=bench.autocast)
        method = m.method
        measured.append((b, m.peak_bytes))
        if m.peak_bytes > budget:
            break
        best = b
    extrapolated = None
    if len(measured) >= 2 and best is not None:
        (b0, m0), (b1, m1) = measured[-2], measured[-1]
        per = max((m1 - m0) / max(b1 - b0, 1), 1.0)
        extrapolated = int(b1 + (budget - m1) // per) if m1 <= budget else best
    return {"batch": best, "measured": measured, "method": method, "memory_allows": extrapolated}


def _time_epoch(bench: _Bench, patch: list[int], grid: list[int], batch: int, counts: dict[str, float],
                pipeline_s: float, val_pipeline_s: float, epoch_end_s: float) -> dict[str, float]:
    """Seconds of one epoch as training spends them: the optimizer steps, the training pipeline per
    sample, the inner validation (its pipeline and whole-volume forward passes per scan) and the epoch's
    end (metrics row, checkpoint, best copy: training's own ``epoch_end``, :func:`_epoch_end_seconds`)."""
    from medres.plan.measure import measure_forward, measure_step
    from medres.training.fold import build_model

    step = measure_step(bench.build, bench.batch_maker(patch), batch, device=bench.device, timed_steps=5,
                        autocast=bench.autocast)
    model = build_model(bench.cfg).to(bench.device)
    eval_shape = [bench.in_channels, *[max(p, g) for p, g in zip(patch, grid)]]
    fwd = measure_forward(model, eval_shape, device=bench.device, autocast=bench.autocast)
    n_windows = int(np.prod([math.ceil(g / p) if g > p else 1 for p, g in zip(patch, grid)]))
    steps = max(1, math.ceil(counts["train"] / batch))
    # the median step, not the minimum: an epoch is a run of steps, not its fastest one
    train_s = steps * step.median_seconds + counts["train"] * pipeline_s
    val_s = counts["val"] * (fwd * n_windows + val_pipeline_s)
    epoch = train_s + val_s + epoch_end_s
    fold_fixed = counts["heldout"] * fwd * n_windows * 2 + (counts["train"] + counts["val"]) * 0.05
    return {"step_s": step.median_seconds, "step_min_s": step.seconds, "forward_s": fwd,
            "steps_per_epoch": steps, "train_s": train_s, "val_s": val_s, "epoch_end_s": epoch_end_s,
            "epoch_s": epoch, "fold_fixed_s": fold_fixed, "contended": step.contended}


def _epoch_end_seconds(bench: _Bench, patch: list[int], batch: int, folder: Path) -> float:
    """Seconds of an epoch's end beside validation, measured through training's own
    :func:`medres.training.fold.epoch_end` in a temporary folder beside the plan: the metrics row logged
    (with the configured trackers), the checkpoint written by ``save_fold_checkpoint`` (the previous one
    verified and kept) and copied as the best. Counting the copy every epoch overestimates a little (it
    happens when validation improves)."""
    import tempfile

    import torch

    from medres.runfolder import RunFolder
    from medres.training.fold import epoch_end, fold_meta, save_fold_checkpoint
    from medres.training.loop import LoopState, TrainParts
    from medres.training.optim import build_scheduler
    from medres.training.tracking import MetricsTracker

    cfg = bench.cfg
    model, loss_fn, optimizer = bench.build()
    image, labels, mask = bench.batch_maker(patch)(min(batch, 2))
    with bench.autocast():
        loss, _ = loss_fn(model(image), labels, mask, 0)
    loss.backward()
    optimizer.step()  # the optimizer's state exists, as in a real checkpoint
    parts = TrainParts(model=model, loss_fn=loss_fn, optimizer=optimizer,
                       scheduler=build_scheduler(optimizer, cfg.schedule, epochs=cfg.train.epochs,
                                                 steps_per_epoch=1),
                       scaler=torch.amp.GradScaler(bench.device.type, enabled=False))
    state, meta = LoopState(), fold_meta(cfg, 0)
    times = []
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".plan-probe-", dir=folder) as d:
        # a fold folder inside the temporary one: the tracker's MLflow store goes in its parent
        fold = RunFolder(d).fold(0)
        tracker = MetricsTracker(fold.dir, run_name="plan-probe", params={"probe": 1},
                                 backends=tuple(cfg.output.tracking))
        try:
            for e in range(4):
                state.epoch = e + 1
                row = {"epoch": e + 1, "step": e + 1, "lr": 1e-3, "seconds": 1.0, "loss": 1.0,
                       "val_loss": 1.0, "val_auroc": 0.5, "val_dice": 0.5}
                t0 = time.perf_counter()
                epoch_end(fold, row, lambda: save_fold_checkpoint(fold.checkpoint_last, parts, state, meta),
                          tracker=tracker, best=True)
                times.append(time.perf_counter() - t0)
        finally:
            tracker.close()
    return float(np.median(times[1:]))  # the first also opens the files


def _pipeline_seconds(manifest: Path, raw: dict[str, Any], n: int = 6, *, train: bool = True,
                      scans: int = 3) -> float:
    """Mean seconds per sample spent in the data pipeline after the cache (crop, windows, augmentation
    for training; the whole-volume transforms for validation), over ``n`` epochs' draws of the first
    ``scans`` scans of the manifest. The mean, not the minimum: random augmentations (an affine with
    probability 0.3) make most draws cheap and a few expensive, and the minimum misses the expensive ones
    (docs/planning.md, "Time measurements"). Wall time, as training spends it; CPU time where the process
    was mostly not running (another load held the cores)."""
    from medres.config import load_config
    from medres.data.manifest import read_manifest
    from medres.data.pipeline.datasets import CaseDataset, manifest_to_records

    cfg = load_config(data=raw)
    records = manifest_to_records(read_manifest(manifest, vocabulary=cfg.data.labels,
                                                link_roots=cfg.data.link_roots,
                                                key_file=cfg.data.index.key_file), cfg.data)[:scans]
    ds = CaseDataset(records, cfg.data, train=train, cache="memory")
    for i in range(len(records)):
        ds[i]  # fills the cache: its cost is the fold's, not the epoch's
    times = []
    for e in range(n if train else 1):
        ds.set_epoch(e + 1)
        for i in range(len(records)):
            t0, c0 = time.perf_counter(), time.process_time()
            ds[i]
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            times.append(cpu if cpu < wall * 2 / 3 else wall)
    return float(np.mean(times))


# ---------------------------------------------------------------------------------------------------
# YAML with comments


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        r = float(f"{v:.6g}")
        if r == int(r) and abs(r) < 1e6:
            return f"{int(r)}.0"
        return repr(r)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return json.dumps(v) if (not v or any(c in v for c in ":#{}[],&*!|>'\"%@`") or v.strip() != v
                                 or v.lower() in ("yes", "no", "on", "off", "true", "false", "null"))\
            else v
    return str(v)


class _Yaml:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0) -> None:
        for line in text.splitlines() or [""]:
            self.lines.append(" " * indent + ("# " + line if line else "#"))

    def section(self, name: str, why: str | None = None) -> None:
        if why:
            self.comment(why)
        self.lines.append(f"{name}:")

    def item(self, key: str, value: Any, why: str = "", indent: int = 2) -> None:
        if why:
            self.comment(why, indent)
        self.lines.append(" " * indent + f"{key}: {_fmt(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


# ---------------------------------------------------------------------------------------------------
# the planner


def _labels(fp: dict[str, Any]) -> tuple[list[str], str | None, str]:
    by_patient = fp["class_balance"]["patients_by_label"]
    if not by_patient:
        raise ConfigError("the manifest has no labels", field="data.labels",
                          hint="add a label column (class name per scan) to the manifest")
    if len(by_patient) == 2:
        positive = min(by_patient, key=lambda k: (by_patient[k], k))
        labels = [k for k in sorted(by_patient) if k != positive] + [positive]
        return labels, positive, (f"classes by patient {by_patient}: the minority class {positive!r} is the "
                                  "positive one (reports: sensitivity, AUROC)")
    return sorted(by_patient), None, f"classes by patient {by_patient}"


def _mask_labels(fp: dict[str, Any], positive: str | None) -> dict[int, str]:
    values = [v for v in fp.get("mask_values", []) if v != 0]
    if not values:
        return {0: "background", 1: positive or "lesion"}
    if values != list(range(1, len(values) + 1)):
        raise ConfigError(f"mask values {values} are not 1..K (0 = background)", field="data.mask_labels",
                          hint="relabel the masks to consecutive integers")
    if len(values) == 1:
        return {0: "background", 1: positive or "lesion"}
    return {0: "background", **{v: f"label_{v}" for v in values}}


def _windows(fp: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    out, why = [], []
    for name, region in (("lesion", "foreground"), ("body", "body")):
        stats = fp["intensity"][region][0]
        if stats is None:
            continue
        lo, hi = stats["percentiles"]["p0.5"], stats["percentiles"]["p99.5"]
        width = max((hi - lo) * 1.2, 50.0)
        center = (lo + hi) / 2
        out.append({"name": name, "center": float(round(center, -1)), "width": float(round(width, -1))})
        why.append(f"{name}: the {region} voxels' 0.5-99.5th percentiles {lo:g}..{hi:g} HU, widened 20%")
    return out, "; ".join(why)


def _check_out(manifest: Path, out: Path, force: bool) -> None:
    """Refuse, before anything is measured, an ``--out`` that is not a YAML name, is (or would put
    ``fingerprint.json`` on) the manifest, or would replace a file without ``force``."""
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError("does not end in .yaml or .yml", field="--out", path=str(out),
                          hint="name the configuration to write, e.g. configs/my_cohort.yaml")
    fingerprint = out.parent / "fingerprint.json"
    check_output(out, inputs={"manifest": manifest}, what="planned configuration (--out)")
    check_output(fingerprint, inputs={"manifest": manifest}, what="fingerprint written beside --out")
    if out.is_dir():
        raise DataError("is a folder", path=out, hint="name the YAML file to write, e.g. configs/x.yaml")
    if out.exists() and not force:
        raise DataError("exists; medres.plan replaces a file only with --force", path=out,
                        hint="choose a new --out, or pass --force to replace it")
    if fingerprint.exists() and not force and not _is_fingerprint(fingerprint):
        raise DataError("exists and is not a fingerprint medres.plan wrote; it would be replaced",
                        path=fingerprint, hint="write --out into another folder, or pass --force")


def _is_fingerprint(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"n_scans", "modality", "plan_measurements"} <= set(data)


def plan_config(manifest: str | os.PathLike[str], out: str | os.PathLike[str] | None = None, *,
                modality: str | None = None, device: str = "cpu", memory_gb: float | None = None,
                minutes: float | None = None, options: PlanOptions = PlanOptions()) -> Plan:
    """Fingerprint ``manifest`` and derive a complete configuration (see the module docstring).

    Args:
        manifest: the cohort CSV.
        out: where to write the YAML (``fingerprint.json`` goes next to it); None: write nothing.
        modality: ``"CT"`` / ``"MR"``; None: inferred from the intensities.
        device: where training will run (``"cpu"``, ``"cuda"``, ``"cuda:1"``); the dry runs run there.
        memory_gb: the memory budget of one training process; default: half the free memory now (CPU),
            90% of the free device memory (CUDA).
        minutes: the wall-clock budget of the whole cross-validation; None: the recipe's epochs.
        options: the folds and seed, a fingerprint already measured, ``output.name``, whether to replace
            ``out`` (:class:`PlanOptions`). ``out`` must end in ``.yaml``/``.yml`` and may not be (or be
            beside as ``fingerprint.json``) the manifest (:func:`medres.files.check_output`).

    Returns:
        A :class:`Plan`; its ``config`` is what ``medres.load_config`` reads from the written file.
    """
    import torch

    from medres.config import load_config
    from medres.plan.fingerprint import fingerprint_cohort, write_fingerprint
    from medres.plan.measure import available_memory_bytes

    folds, seed, fingerprint, name, force = options.folds, options.seed, options.fingerprint, options.name, \
        options.force
    manifest = Path(manifest).resolve()
    if out is not None:
        _check_out(manifest, Path(out), force)
    modality_given = modality is not None
    if modality is not None and modality not in ("CT", "MR"):
        raise ConfigError(f"modality {modality!r} is not CT or MR", field="--modality")
    t_start = time.perf_counter()
    fp = fingerprint if fingerprint is not None else fingerprint_cohort(manifest, modality=modality)
    modality = modality or fp["modality"]
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is visible", field="--device",
                          hint="plan on the machine that will train, or use --device cpu")
    budget = int(memory_gb * 2**30) if memory_gb else int(
        available_memory_bytes(dev) * (0.9 if dev.type == "cuda" else 0.5))
    n_scans, n_patients = fp["n_scans"], fp["n_patients"]
    labels, positive, labels_why = _labels(fp)
    by_patient = fp["class_balance"]["patients_by_label"]
    folds = max(2, min(folds, min(by_patient.values())))
    val_fraction = 0.2
    counts = {"train": n_scans * (1 - 1 / folds) * (1 - val_fraction),
              "val": n_scans * (1 - 1 / folds) * val_fraction, "heldout": n_scans / folds}
    steps_cap = max(1, int(counts["train"] // MIN_STEPS_PER_EPOCH))

    spacing0, spacing_why = _target_spacing(fp)
    lesions = fp.get("lesions") or {}
    small = (lesions.get("min_extent_mm") or {}).get("p10")
    # coarsening never goes past the coarsest median axis, nor leaves the 10th-percentile lesion fewer
    # than MIN_LESION_VOXELS voxels along its shortest side
    ceiling = max(spacing0)
    if small:
        ceiling = min(ceiling, small / MIN_LESION_VOXELS)
    mask_labels = _mask_labels(fp, positive)
    image_columns = fp["image_columns"]
    if modality == "CT":
        windows, windows_why = _windows(fp)
        normalize = "window"
    else:
        windows, windows_why, normalize = [], "", "zscore"
    fg_frac = (lesions.get("foreground_fraction") or {}).get("median")
    imbalance = max(by_patient.values()) / max(min(by_patient.values()), 1)
    cls_weights = "balanced" if imbalance > 1.5 else None
    lambda_ce = 0.0 if fg_frac is not None and fg_frac < 0.01 else 1.0

    def raw_for(spacing: list[float], patch: list[int], batch: int, epochs: int) -> dict[str, Any]:
        stride = _stride_for(patch)
        mname, mopts, _ = _model_options(n_scans, stride)
        return {
            "data": {"manifest": str(manifest), "labels": labels, "positive_label": positive,
                     "mask_labels": mask_labels, "image_columns": image_columns,
                     "mask_column": fp.get("mask_column"), "modality": modality, "windows": windows,
                     "normalize": normalize, "orientation": "RAS", "spacing": spacing,
                     "patch_size": patch, "cache": "none"},
            "model": {"name": mname, "options": mopts},
            "loss": {"cls": {"type": "ce", "weights": cls_weights},
                     "seg": {"type": "dice_ce", "include_background": False, "lambda_dice": 1.0,
                             "lambda_ce": lambda_ce}},
            "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1},
            "train": {"epochs": epochs, "batch_size": batch, "device": device},
        }

    probe_dir = Path.cwd()  # where training writes its runs/ (the checkpoint's speed is the disk's)
    if not os.access(probe_dir, os.W_OK):
        import tempfile

        probe_dir = Path(tempfile.gettempdir())
    tried: list[dict[str, Any]] = []
    chosen = None
    spacing = spacing0
    while spacing is not None:
        grid = _grid(fp, spacing)
        patch = [_round_up(g, STRIDE // 2) for g in grid]
        if tried and patch == tried[-1]["patch_size"]:  # a coarser grid padded to the same patch: no saving
            spacing = _coarser(spacing, ceiling)
            continue
        need = _lesion_need(fp, spacing)
        voxels_total = float(np.prod(grid)) * n_scans
        cap = max(1, min(steps_cap, int(BATCH_VOXEL_SHARE * voxels_total // np.prod(patch)) or 1))
        bench = _Bench(raw_for(spacing, patch, 1, 1), device)
        search = _search_batch(bench, patch, budget, max(cap, 2))
        shrunk = 0
        while search["batch"] is None and shrunk < 8:
            axis = int(np.argmax(patch))
            if patch[axis] - STRIDE // 2 < max(need[axis], STRIDE):
                break
            patch[axis] -= STRIDE // 2
            shrunk += 1
            bench = _Bench(raw_for(spacing, patch, 1, 1), device)
            search = _search_batch(bench, patch, budget, max(cap, 2))
        if search["batch"] is None:
            raise ConfigError(f"not even two patches of {patch} fit the memory budget "
                              f"{budget / 2**30:.1f} GiB on {device}", field="--memory-gb",
                              hint="give a larger --memory-gb, or plan for a device with more memory")
        batch = min(search["batch"], max(cap, 2))
        bench = _Bench(raw_for(spacing, patch, batch, 1), device)
        try:  # per candidate grid: the pipeline's cost grows with the voxels
            pipeline_s = _pipeline_seconds(manifest, raw_for(spacing, patch, batch, 1))
            val_pipeline_s = _pipeline_seconds(manifest, raw_for(spacing, patch, batch, 1), train=False)
        except Exception as exc:  # a plan is still possible without it; say so
            log.warning("could not time the data pipeline (%s); counting 0", type(exc).__name__)
            pipeline_s = val_pipeline_s = 0.0
        timing = _time_epoch(bench, patch, grid, batch, counts, pipeline_s, val_pipeline_s,
                             _epoch_end_seconds(bench, patch, batch, probe_dir))
        target = int(min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / timing["steps_per_epoch"]))))
        fixed = n_scans * (fp.get("read_seconds_per_scan", 0.0) * 3) + 10.0
        fit = None
        if minutes is not None:
            per_fold = (minutes * 60 - fixed) / folds - timing["fold_fixed_s"]
            fit = int(per_fold // timing["epoch_s"]) if per_fold > 0 else 0
        entry = {"spacing_mm": [round(s, 4) for s in spacing], "grid": grid, "patch_size": list(patch),
                 "stride": _stride_for(patch), "batch_size": batch, "batch_cap": cap,
                 "memory": search, "timing": timing, "target_epochs": target, "epochs_in_budget": fit,
                 "pipeline_s_per_sample": pipeline_s, "val_pipeline_s_per_scan": val_pipeline_s}
        tried.append(entry)
        if fit is None or fit >= target:
            chosen = entry
            break
        spacing = _coarser(spacing, ceiling)
    over_budget = False
    if chosen is None:  # nothing holds the whole recipe: the cheapest candidate, as many epochs as fit
        chosen = min(tried, key=lambda e: e["timing"]["epoch_s"])
    epochs = chosen["target_epochs"]
    if chosen["epochs_in_budget"] is not None and chosen["epochs_in_budget"] < epochs:
        epochs = max(MIN_EPOCHS, chosen["epochs_in_budget"])
        over_budget = chosen["epochs_in_budget"] < MIN_EPOCHS
    spacing, patch, grid = chosen["spacing_mm"], chosen["patch_size"], chosen["grid"]
    batch = chosen["batch_size"]
    stride = chosen["stride"]
    timing = chosen["timing"]
    est_min = (folds * (epochs * timing["epoch_s"] + timing["fold_fixed_s"]) + n_scans * 0.1 + 10) / 60

    # cache: the preprocessed cohort's bytes against free memory and disk
    bytes_per_voxel = (2 if modality == "CT" else 4) * len(image_columns) + 1
    cohort_bytes = int(np.prod(grid) * bytes_per_voxel * n_scans)
    free_mem = available_memory_bytes(torch.device("cpu"))
    out_path = Path(out).resolve() if out is not None else None
    disk_root = out_path.parent if out_path is not None else Path.cwd()
    while not disk_root.exists():
        disk_root = disk_root.parent
    free_disk = shutil.disk_usage(disk_root).free
    if cohort_bytes <= free_mem / 4 or cohort_bytes <= free_disk / 2:
        cache = "disk" if folds > 1 and cohort_bytes <= free_disk / 2 else "memory"
    else:
        cache = "none"
    cache_why = (f"preprocessed cohort ~{cohort_bytes / 2**20:.0f} MiB ({n_scans} scans of {grid} voxels) "
                 f"against {free_mem / 2**30:.1f} GiB free memory and {free_disk / 2**30:.0f} GiB free disk: "
                 + {"disk": "on disk, preprocessed once and shared by all folds (it fits in the page cache)",
                    "memory": "in memory", "none": "not cached (too large for memory and disk)"}[cache])

    mname, mopts, model_why = _model_options(n_scans, stride)
    name = name or (out_path.stem if out_path is not None else "planned")
    val_monitor = "val_loss" if counts["val"] < 50 else "val_auroc"

    # ---- write
    y = _Yaml()
    y.comment(f"Planned by `python -m medres.plan` from {n_scans} scans of {n_patients} patients "
              f"(fingerprint.json beside this file).\n"
              f"Measured on {device} ({torch.get_num_threads()} threads) in "
              f"{time.perf_counter() - t_start:.0f} s; timings are minima over dry steps"
              + (" (the machine was busy: CPU time per thread used)" if timing.get("contended") else "")
              + ".\n"
              f"Estimated training time: {est_min:.1f} min for {folds} folds x {epochs} epochs"
              + (f" (budget {minutes:g} min)." if minutes is not None else ".")
              + (f"\nThe budget does not hold even {MIN_EPOCHS} epochs as measured: the plan keeps "
                 f"{MIN_EPOCHS} (fewer do not train); give more time or a faster device."
                 if over_budget else ""))
    y.section("data")
    manifest_rel = str(manifest)
    if out_path is not None and os.path.commonpath([manifest, out_path.parent]) != os.sep:
        manifest_rel = os.path.relpath(manifest, out_path.parent)
    y.item("manifest", manifest_rel, "relative to this file's folder")
    y.item("labels", labels, labels_why)
    y.item("positive_label", positive)
    y.item("mask_labels", mask_labels, f"mask values found: {fp.get('mask_values')}")
    if image_columns != ["image"]:
        y.item("image_columns", image_columns, "one input channel per image column")
    y.item("mask_column", fp.get("mask_column"))
    y.item("modality", modality, "inferred from the intensities (HU air below -500)"
           if fp.get("modality_inferred") and not modality_given else "as given")
    if windows:
        y.comment(f"CT windows, one input channel each: {windows_why}", 2)
        y.lines.append("  windows:")
        for w in windows:
            y.lines.append(f"    - {_fmt(w)}")
    y.item("normalize", normalize, "CT: windows in HU to [0, 1]" if normalize == "window" else
           "MR: per-channel z-score over non-zero voxels (MR intensities have no absolute scale)")
    y.item("orientation", "RAS", f"orientations in the cohort: {fp['orientations']}; all resampled to RAS")
    y.item("spacing", [float(s) for s in spacing],
           spacing_why + (f"; coarsened from {_fmt(spacing0)} mm for the time budget "
                          f"(finer grids measured: {[e['spacing_mm'] for e in tried if e is not chosen]})"
                          if spacing != [round(s, 4) for s in spacing0] else ""))
    lesion_txt = ""
    if lesions.get("extent_mm"):
        p95 = [round(lesions["extent_mm"][a]["p95"], 1) for a in "RAS"]
        lesion_txt = (f"; lesions' 95th-percentile extent {_fmt(p95)}"
                      f" mm: twice that is {_lesion_need(fp, spacing)} voxels")
    y.item("patch_size", patch,
           f"the median field of view on this grid is {grid} voxels: rounded up to a multiple of the "
           f"network's stride {stride} so a patch sees the whole scan (labels are per scan){lesion_txt}")
    y.item("pos_fraction", 0.5, "half of the patches centred on mask foreground")
    y.comment("augmentation: flips on every axis, small rotations/zoom and intensity jitter (the shipped "
              "recipe)", 2)
    y.lines.append("  augment:")
    for k, v in {"enabled": True, "flip_prob": 0.5, "affine_prob": 0.3, "rotate_deg": 10, "scale": 0.1,
                 "intensity_prob": 0.3}.items():
        y.item(k, v, indent=4)
    y.item("cache", cache, cache_why)
    y.section("model", None)
    y.item("name", mname, model_why)
    y.item("options", mopts)
    y.section("loss")
    y.item("cls", {"type": "ce", "weights": cls_weights},
           f"patients by class {by_patient} (imbalance {imbalance:.2f}:1): "
           + ("inverse-frequency weights, recomputed on each training fold" if cls_weights
              else "balanced enough for unweighted cross-entropy"))
    seg = {"type": "dice_ce", "include_background": False, "lambda_dice": 1.0, "lambda_ce": lambda_ce}
    y.item("seg", seg,
           (f"median lesion scan has {fg_frac:.3%} foreground voxels: " if fg_frac is not None
            else "no lesions: ")
           + ("Dice alone (cross-entropy pulls tiny lesions to background)" if lambda_ce == 0 else
              "Dice + cross-entropy"))
    y.item("task", {"mode": "fixed", "cls": 1.0, "seg": 1.0})
    y.section("optim", "AdamW 3e-3, the shipped recipe for these compact 3D ResNets")
    y.item("name", "adamw")
    y.item("lr", 3e-3)
    y.item("weight_decay", 1e-4)
    y.section("schedule")
    y.item("name", "cosine", "cosine decay to 0 after a one-epoch linear warm-up")
    y.item("warmup_epochs", 1)
    y.section("train")
    mem = chosen["memory"]
    measured = ", ".join(f"{b}: {m / 2**20:.0f} MiB" for b, m in mem["measured"])
    y.item("epochs", epochs,
           f"~{TARGET_STEPS} optimizer steps ({timing['steps_per_epoch']} per epoch) -> "
           f"{chosen['target_epochs']} epochs"
           + (f"; the budget of {minutes:g} min holds {chosen['epochs_in_budget']} (measured "
                         f"{timing['epoch_s']:.2f} s per epoch: training {timing['train_s']:.2f} s (median "
                         f"step {timing['step_s']:.3f} s, pipeline {chosen['pipeline_s_per_sample']:.3f} s "
                         "per sample), inner "
                         f"validation {timing['val_s']:.2f} s, checkpoint and metrics "
                         f"{timing['epoch_end_s']:.2f} s)"
                         if minutes is not None else
                         f"; measured {timing['epoch_s']:.2f} s per epoch"))
    y.item("batch_size", batch,
           f"dry forward/backward/AdamW steps at {patch} on {device} ({mem['method']}), peak per batch "
           f"size: {measured}; budget {budget / 2**30:.1f} GiB"
           + (f" (memory would allow ~{mem['memory_allows']})" if mem.get("memory_allows") else "")
           + f"; capped at {chosen['batch_cap']} (>= {MIN_STEPS_PER_EPOCH} steps per epoch, <= 5% of the "
             "cohort's voxels per batch)")
    y.item("seed", seed)
    y.item("device", device)
    y.item("precision", "auto", "fp32 on the CPU, bf16/fp16 on a GPU")
    y.comment(f"{counts['val']:.0f} inner-validation scans per fold: "
              + ("the loss is steadier than AUROC on so few" if val_monitor == "val_loss" else "AUROC"), 2)
    y.lines.append("  early_stopping: " + _fmt({"monitor": val_monitor,
                                                  "mode": "min" if val_monitor == "val_loss" else "max"}))
    y.section("cv", f"{n_patients} patients; folds by patient, stratified by class")
    y.item("folds", folds)
    y.item("seed", seed)
    y.item("val_fraction", val_fraction)
    y.section("evaluate")
    y.item("threshold", "youden")
    y.section("output")
    y.item("dir", "runs")
    y.item("name", name)
    text = y.text()

    measurements = {"tried": tried, "chosen": chosen, "budget_bytes": budget, "device": device,
                    "threads": torch.get_num_threads(), "estimated_minutes": est_min}
    if out_path is not None:
        atomic_write(out_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        write_fingerprint({**fp, "plan_measurements": measurements}, out_path.parent / "fingerprint.json")
        cfg = load_config(out_path)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "planned.yaml"
            p.write_text(text, encoding="utf-8")  # the manifest path is absolute here
            cfg = load_config(p)
    return Plan(yaml_text=text, config=cfg, fingerprint=fp, measurements=measurements, path=out_path)
