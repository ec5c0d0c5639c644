"""medres models against MONAI's, one training step at a time, in one process on the same inputs.

1. 2D ResNet-18 and ResNet-50 (224x224, batch 16, 1000 classes): medres against MONAI's ResNet with
   torchvision-equivalent settings (``conv1_t_stride=2, bias_downsample=False, shortcut_type="B"``),
   so both compute the same architecture (the parameter counts are printed and must agree).
2. 3D dual-head ResNet-18 (a CT-like 64x96x96 patch, batch 2, label + mask) against the two models a
   user would otherwise train: MONAI's 3D ResNet-18 for the label plus a MONAI U-Net (channels 32..512,
   two residual units) for the mask.

Each comparison runs in fp32, fp32 with channels_last (channels_last_3d for volumes) and bf16
autocast (contiguous memory). A step is forward + cross-entropy loss(es) + backward + SGD. After
warm-up the contenders' steps alternate and each figure is the median step time, so load from other
processes hits both alike. Printed: seconds per step, samples/s and the ratios the goals are about:
MONAI / medres for the same architecture (goal >= 1), two models / dual head (goal >= 1.5) and
fp32 / bf16 for medres (goal >= 1.8).

    python benchmarks/models.py               # the full sizes above (several minutes on 2 cores)
    python benchmarks/models.py --quick       # small sizes, a smoke run
    python benchmarks/models.py --only 3d --patch 48 64 64 --steps 5 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from monai.networks.nets import resnet as monai_resnet
from torch import nn

from medres.models import create_model

MODES = ("fp32", "channels_last", "bf16")


@dataclass
class Row:
    case: str
    contender: str
    mode: str
    batch: int
    params: int
    s_per_step: float
    samples_per_s: float


def n_params(*models: nn.Module) -> int:
    return sum(p.numel() for m in models for p in m.parameters())


def _memory_format(spatial_dims: int) -> torch.memory_format:
    return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d


def make_step(models: list[nn.Module], forward: Callable, x: torch.Tensor, mode: str) -> Callable[[], float]:
    """One training step over ``models`` (forward returns the loss), set up for ``mode``."""
    if mode == "channels_last":
        fmt = _memory_format(x.ndim - 2)
        for m in models:
            m.to(memory_format=fmt)
        x = x.contiguous(memory_format=fmt)
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if mode == "bf16" else contextlib.nullcontext
    )

    def step() -> float:
        with autocast():
            loss = forward(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


def race(steps: dict[str, Callable[[], float]], n: int, warmup: int, label: str) -> dict[str, float]:
    """Median seconds per step of each contender, their steps interleaved (order flipped each round)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(n):
        order = list(steps.items())
        for k, step in order if i % 2 == 0 else order[::-1]:  # neither contender always goes first
            t = time.perf_counter()
            loss = step()
            times[k].append(time.perf_counter() - t)
            if not torch.isfinite(torch.tensor(loss)):
                print(f"  warning: {label}: {k} loss is {loss}")
    return {k: statistics.median(v) for k, v in times.items()}


def monai_resnet_tv(depth: int, spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """MONAI's ResNet set up as torchvision's (stride-2 stem, no downsample bias, 1x1-conv shortcuts)."""
    return getattr(monai_resnet, f"resnet{depth}")(
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_classes,
        conv1_t_stride=2,
        bias_downsample=False,
        shortcut_type="B",
    )


def bench_2d(depth: int, size: int, batch: int, args: argparse.Namespace) -> list[Row]:
    rows = []
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    for mode in args.modes:
        ours = create_model(f"resnet{depth}")
        peer = monai_resnet_tv(depth, 2, 3, 1000)
        assert n_params(ours) == n_params(peer), (n_params(ours), n_params(peer))
        steps = {
            "medres": make_step([ours], lambda x, m=ours: F.cross_entropy(m(x), y), x, mode),
            "monai": make_step([peer], lambda x, m=peer: F.cross_entropy(m(x), y), x, mode),
        }
        t = race(steps, args.steps, args.warmup, f"resnet{depth} 2D {mode}")
        for k, m in (("medres", ours), ("monai", peer)):
            rows.append(Row(f"resnet{depth} 2D {size}^2", k, mode, batch, n_params(m), t[k], batch / t[k]))
    return rows


def bench_3d(patch: tuple[int, int, int], batch: int, args: argparse.Namespace) -> list[Row]:
    rows = []
    torch.manual_seed(0)
    x = torch.randn(batch, 1, *patch)
    y = torch.randint(0, 2, (batch,))
    mask = (torch.rand(batch, *patch) > 0.9).long()
    for mode in args.modes:
        dual = create_model("dual_resnet18", spatial_dims=3, in_channels=1, num_classes=2, seg_classes=2)
        cls = monai_resnet_tv(18, 3, 1, 2)
        unet = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=2,
            channels=(32, 64, 128, 256, 512),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        )

        def dual_loss(x, m=dual):
            out = m(x)
            return F.cross_entropy(out.cls_logits, y) + F.cross_entropy(out.seg_logits, mask)

        def pair_loss(x, c=cls, u=unet):
            return F.cross_entropy(c(x), y) + F.cross_entropy(u(x), mask)

        steps = {
            "medres dual": make_step([dual], dual_loss, x, mode),
            "monai resnet+unet": make_step([cls, unet], pair_loss, x, mode),
        }
        t = race(steps, args.steps, args.warmup, f"3D {mode}")
        name = f"dual resnet18 3D {'x'.join(map(str, patch))}"
        rows.append(
            Row(name, "medres dual", mode, batch, n_params(dual), t["medres dual"], batch / t["medres dual"])
        )
        rows.append(
            Row(
                name,
                "monai resnet+unet",
                mode,
                batch,
                n_params(cls, unet),
                t["monai resnet+unet"],
                batch / t["monai resnet+unet"],
            )
        )
    return rows


def report(rows: list[Row]) -> None:
    head = ("case", "contender", "mode", "batch", "params", "s/step", "samples/s")
    print("\n{:<28} {:<18} {:<14} {:>5} {:>11} {:>8} {:>10}".format(*head))
    for r in rows:
        print(
            f"{r.case:<28} {r.contender:<18} {r.mode:<14} {r.batch:>5} {r.params:>11,} "
            f"{r.s_per_step:>8.3f} {r.samples_per_s:>10.2f}"
        )
    by = {(r.case, r.contender, r.mode): r.s_per_step for r in rows}
    print("\nratios (> 1 means medres is faster):")
    for case in dict.fromkeys(r.case for r in rows):
        ours = "medres dual" if case.startswith("dual") else "medres"
        peer = "monai resnet+unet" if case.startswith("dual") else "monai"
        goal = 1.5 if case.startswith("dual") else 1.0
        for mode in MODES:
            if (case, ours, mode) in by:
                ratio = by[(case, peer, mode)] / by[(case, ours, mode)]
                print(f"  {case:<28} {mode:<14} {peer} / {ours}: {ratio:5.2f}x  (goal >= {goal})")
        for mode in ("channels_last", "bf16"):
            if (case, ours, mode) in by and (case, ours, "fp32") in by:
                ratio = by[(case, ours, "fp32")] / by[(case, ours, mode)]
                goal_txt = "  (goal >= 1.8)" if mode == "bf16" else ""
                print(f"  {case:<28} {mode:<14} medres fp32 / {mode}: {ratio:5.2f}x{goal_txt}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (a smoke run)")
    p.add_argument("--only", choices=("2d", "3d"), help="run one part")
    p.add_argument("--depths", type=int, nargs="+", default=[18, 50], help="2D ResNet depths")
    p.add_argument("--size", type=int, help="2D image size (default 224; --quick 112)")
    p.add_argument("--batch-2d", type=int, help="2D batch (default 16; --quick 8)")
    p.add_argument("--patch", type=int, nargs=3, help="3D patch D H W (default 64 96 96; --quick 32 48 48)")
    p.add_argument("--batch-3d", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, help="timed steps per contender (default 5; --quick 3)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    defaults = {"size": 224, "batch_2d": 16, "patch": [64, 96, 96], "steps": 5}
    if args.quick:
        defaults = {"size": 112, "batch_2d": 8, "patch": [32, 48, 48], "steps": 3}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; 2D {args.size}^2 batch {args.batch_2d}, "
        f"3D {'x'.join(map(str, args.patch))} batch {args.batch_3d}, {args.steps} timed steps, "
        f"modes {' '.join(args.modes)}"
    )
    rows: list[Row] = []
    if args.only in (None, "2d"):
        for depth in args.depths:
            rows += bench_2d(depth, args.size, args.batch_2d, args)
    if args.only in (None, "3d"):
        rows += bench_3d(tuple(args.patch), args.batch_3d, args)
    report(rows)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
