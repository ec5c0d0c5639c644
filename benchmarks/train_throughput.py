"""Training throughput: plain fp32 against medres's fast path, in one run, for two models.

1. The 2D ResNet-50 at 224x224, 3 channels, 1000 classes (the ImageNet recipe), synthetic data.
2. The main job's 3D dual-head model (``configs/ct_chest.yaml``'s model and patch when that file
   loads, else dual_resnet10 on 48^3 patches), cross-entropy + MONAI Dice-CE on synthetic volumes.

Each model is timed twice: plain fp32 (contiguous memory format), then the fast path: autocast
(bf16 on CPU; on CUDA bf16 where supported, else fp16 with a GradScaler), channels_last
(channels_last_3d for volumes), and ``torch.compile`` with ``--compile``. One training step is
forward + loss + backward + SGD update. The two modes' steps alternate after warm-up, so a shared
machine's load hits both alike, and samples/s is the batch over the median step time.

The device is chosen automatically (CUDA when present), so the script runs unchanged on a GPU.
There, ``--batch-2d auto`` (the GPU default) picks the largest batch that fits, halving from 512
on out-of-memory; on CPU the batch is a modest flag-controlled number.

    python benchmarks/train_throughput.py --quick            # CPU smoke figures (a few minutes)
    python benchmarks/train_throughput.py                    # on a GPU: the real figures

Input pipeline against the model (``benchmarks/pipeline.py``), for a training configuration (default
``configs/ct_chest_fullres.yaml``; ``--set`` overrides as for ``medres.train``):

    python benchmarks/train_throughput.py --loader-only      # samples/s of the input pipeline alone
    python benchmarks/train_throughput.py --device-only      # samples/s of training on on-device data
    python benchmarks/train_throughput.py --loader-only --device-only   # both, and loader / device
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from medres.models import create_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    model: str
    mode: str
    batch: int
    steps: int
    samples_per_s: float
    final_loss: float


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def fast_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def make_step(model: torch.nn.Module, kind: str, device: torch.device, fast: bool,
              compile_model: bool) -> Callable[[dict[str, torch.Tensor]], float]:
    """One SGD training step on a batch; returns the loss as a float (which also syncs the device)."""
    model = model.to(device).train()
    ndim = 4 if kind == "2d" else 5
    fmt = torch.contiguous_format
    if fast:
        fmt = torch.channels_last if ndim == 4 else torch.channels_last_3d
        model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    dtype = fast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=fast and dtype == torch.float16)
    net = torch.compile(model) if compile_model else model
    seg_loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(batch: dict[str, torch.Tensor]) -> float:
        x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = batch["label"].to(device, non_blocking=True)
        autocast = torch.autocast(device.type, dtype=dtype) if fast else contextlib.nullcontext()
        with autocast:
            out = net(x)
            if kind == "2d":
                loss = F.cross_entropy(out, y)
            else:
                mask = batch["mask"].to(device, non_blocking=True)
                loss = F.cross_entropy(out.cls_logits.float(), y) + seg_loss(out.seg_logits.float(), mask)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return float(loss.detach())

    return step


def synthetic_batch(kind: str, batch: int, shape: tuple[int, ...], channels: int, classes: int,
                    seg_classes: int, pin: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {"image": torch.randn(batch, channels, *shape, generator=g),
           "label": torch.randint(0, classes, (batch,), generator=g)}
    if kind == "3d":
        out["mask"] = torch.randint(0, seg_classes, (batch, 1, *shape), generator=g)
    return {k: v.pin_memory() for k, v in out.items()} if pin else out


def time_pair(build: Callable[[], torch.nn.Module], kind: str, batch: int, data_kw: dict,
              device: torch.device, warmup: int, steps: int, compile_model: bool) -> tuple[Result, Result]:
    """fp32 and fast-path steps timed alternately (fp32, fast, fp32, ...), so load from other processes
    on a shared machine hits both alike; samples/s = batch / median step time."""
    modes = ("fp32", "fast")
    steps_fn = {}
    for mode in modes:
        torch.manual_seed(0)
        steps_fn[mode] = make_step(build(), kind, device, mode == "fast", compile_model and mode == "fast")
    data = synthetic_batch(kind, batch, pin=device.type == "cuda", **data_kw)
    for mode in modes:
        for _ in range(warmup):
            steps_fn[mode](data)
    times: dict[str, list[float]] = {m: [] for m in modes}
    loss = dict.fromkeys(modes, 0.0)
    for _ in range(steps):
        for mode in modes:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            loss[mode] = steps_fn[mode](data)  # float() waits for the step to finish
            times[mode].append(time.perf_counter() - t0)
    fp32, fast = (Result(build.__name__, m, batch, steps, batch / statistics.median(times[m]), loss[m])
                  for m in modes)
    return fp32, fast


def largest_batch(build: Callable[[], torch.nn.Module], kind: str, data_kw: dict, device: torch.device,
                  start: int, compile_model: bool) -> int:
    """Halve from ``start`` until a fast-path and an fp32 training step fit in GPU memory."""
    batch = start
    while batch >= 1:
        try:
            time_pair(build, kind, batch, data_kw, device, 1, 1, compile_model)
            return batch
        except torch.cuda.OutOfMemoryError:
            batch //= 2
        finally:
            torch.cuda.empty_cache()
    raise RuntimeError("not even batch 1 fits on this GPU")


def main_job_spec(config: Path) -> dict:
    """Model name/options and patch of the main job, read from its config when that loads."""
    spec = {"name": "dual_resnet10", "options": {"base_channels": 32}, "channels": 1, "classes": 2,
            "seg_classes": 2, "patch": (48, 48, 48), "source": "built-in default"}
    try:
        from medres.config import load_config

        cfg = load_config(config)
    except Exception as e:  # the config may not exist yet in a partial checkout
        spec["source"] += f" ({config.name} not loaded: {type(e).__name__})"
        return spec
    d, m = cfg.data, cfg.model
    spec.update(name=m.name, options=dict(m.options), patch=tuple(d.patch_size), source=str(config),
                channels=m.in_channels or max(len(d.windows), len(d.image_columns)),
                classes=m.num_classes or len(d.labels), seg_classes=m.seg_classes or len(d.mask_labels))
    return spec


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    p.add_argument("--quick", action="store_true", help="few steps and small batches (CPU smoke figures)")
    p.add_argument("--batch-2d", default=None,
                   help="ResNet-50 batch, 'auto' = largest that fits (GPU default)")
    p.add_argument("--batch-3d", type=int, default=None, help="3D batch (default: 2 on CPU, 16 on GPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per mode")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per mode")
    p.add_argument("--compile", action="store_true", help="torch.compile the fast path")
    p.add_argument("--skip-2d", action="store_true")
    p.add_argument("--skip-3d", action="store_true")
    p.add_argument("--config", type=Path, default=None,
                   help="3D model spec (default configs/ct_chest.yaml); with --loader-only / "
                        "--device-only "
                        "the training configuration measured (default configs/ct_chest_fullres.yaml)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--loader-only", action="store_true",
                   help="samples/s of the config's input pipeline with the model removed")
    p.add_argument("--device-only", action="store_true",
                   help="samples/s of the config's training loop on a batch already on the device")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for --loader-only / --device-only (repeatable)")
    p.add_argument("--batches", type=int, default=None, help="batches / steps timed in those modes")
    a = p.parse_args(argv)
    if a.loader_only or a.device_only:
        pipeline_main(a)
        return
    a.config = a.config or ROOT / "configs" / "ct_chest.yaml"

    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if a.device == "auto" else a.device))
    gpu = device.type == "cuda"
    if gpu:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    steps = a.steps or (3 if a.quick else (50 if gpu else 10))
    warmup = a.warmup or (1 if a.quick else (10 if gpu else 2))
    where = torch.cuda.get_device_name(device) if gpu else f"{cpu_name()}, {torch.get_num_threads()} threads"
    print(f"device: {device} ({where}); torch {torch.__version__}; fast path: autocast "
          f"{str(fast_dtype(device)).removeprefix('torch.')} + channels_last"
          f"{' + torch.compile' if a.compile else ''}; warm-up {warmup}, timed steps {steps}")

    results: list[Result] = []

    def run(build: Callable[[], torch.nn.Module], kind: str, batch: int, data_kw: dict) -> None:
        pair = time_pair(build, kind, batch, data_kw, device, warmup, steps, a.compile)
        results.extend(pair)
        unit = "images/s" if kind == "2d" else "volumes/s"
        for r in pair:
            print(f"  {r.model:<28} {r.mode:<5} batch {r.batch:>4}: {r.samples_per_s:9.2f} {unit}"
                  f"  (last loss {r.final_loss:.3f})")
        print(f"  fast/fp32 ratio: {pair[1].samples_per_s / pair[0].samples_per_s:.2f}x")

    if not a.skip_2d:
        def resnet50_2d() -> torch.nn.Module:
            return create_model("resnet50", spatial_dims=2, in_channels=3, num_classes=1000)

        kw = {"shape": (224, 224), "channels": 3, "classes": 1000, "seg_classes": 0}
        b = a.batch_2d or ("auto" if gpu else ("4" if a.quick else "16"))
        batch = largest_batch(resnet50_2d, "2d", kw, device, 512, a.compile) if b == "auto" else int(b)
        note = " (largest that fits)" if b == "auto" else ""
        print(f"ResNet-50 2D, 224x224x3, 1000 classes, batch {batch}{note}")
        run(resnet50_2d, "2d", batch, kw)

    if not a.skip_3d:
        spec = main_job_spec(a.config)
        name = spec["name"]

        def dual_3d() -> torch.nn.Module:
            return create_model(name, spatial_dims=3, in_channels=spec["channels"],
                                num_classes=spec["classes"], seg_classes=spec["seg_classes"],
                                **spec["options"])

        dual_3d.__name__ = f"{name}_3d"
        kw = {"shape": spec["patch"], "channels": spec["channels"], "classes": spec["classes"],
              "seg_classes": spec["seg_classes"]}
        batch = a.batch_3d or (16 if gpu else 2)
        print(f"{name} 3D (main job, from {spec['source']}), patch {'x'.join(map(str, spec['patch']))}, "
              f"{spec['channels']} channel(s), batch {batch}")
        run(dual_3d, "3d", batch, kw)

    if a.json:
        a.json.write_text(json.dumps({"device": where, "torch": torch.__version__,
                                      "results": [asdict(r) for r in results]}, indent=2))


def pipeline_main(a: argparse.Namespace) -> None:
    """``--loader-only`` / ``--device-only``: the two rates of one training configuration, and the ratio."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pipeline import device_rate, loader_rate, report

    from medres.config import load_config

    cfg = load_config(a.config or ROOT / "configs" / "ct_chest_fullres.yaml", a.overrides)
    if a.device != "auto":
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": a.device})})
    n = a.batches or (5 if a.quick else 20)
    loader = loader_rate(cfg, batches=n) if a.loader_only else None
    device = device_rate(cfg, steps=n, warmup=a.warmup or (1 if a.quick else 3)) if a.device_only else None
    print(report(loader, device))
    if a.json:
        a.json.write_text(json.dumps({"loader": loader, "device": device}, indent=2))


if __name__ == "__main__":
    main()
