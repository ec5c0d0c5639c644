"""GPU switches beyond ``medres.training.precision``: cuDNN autotuning, fused optimizer kernels and the
``torch.compile`` mode (``train.cudnn_benchmark``, ``train.fused_optimizer``, ``train.compile_mode``).

Defaults (``auto``): cuDNN benchmark and fused AdamW / SGD on with CUDA, off on the CPU (where they do
nothing or, for fused kernels, are not the tested path). Training patches have one fixed shape, the case
cuDNN's autotuner is for; validation volumes vary in size, which costs one autotuning per new shape.
``compile_mode: reduce-overhead`` is ``torch.compile``'s CUDA-graph mode. The GPU defaults are not
measured yet: ``benchmarks/gpu_check.sh`` measures each switch (BENCHMARKS.md). ``usable_cpus`` bounds
``data.num_workers`` (the ImageNet recipe's 8 on a 2-core machine only contend).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

__all__ = ["apply_backend_flags", "use_fused_optimizer", "compile_model", "usable_cpus"]

log = logging.getLogger("medres.training")


def apply_backend_flags(train_cfg: Any, device: torch.device) -> dict[str, bool]:
    """Set ``torch.backends.cudnn.benchmark`` from ``train.cudnn_benchmark``; return what was set."""
    want = getattr(train_cfg, "cudnn_benchmark", "auto")
    on = device.type == "cuda" if want == "auto" else bool(want)
    torch.backends.cudnn.benchmark = on
    return {"cudnn_benchmark": on}


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def use_fused_optimizer(train_cfg: Any, device: torch.device) -> bool:
    """Whether the optimizer uses its fused kernel (``train.fused_optimizer``; auto = with CUDA)."""
    want = getattr(train_cfg, "fused_optimizer", "auto")
    return device.type == "cuda" if want == "auto" else bool(want)


def compile_model(net: nn.Module, train_cfg: Any) -> nn.Module:
    """``torch.compile(net)`` in ``train.compile_mode`` (the first steps then include compile time)."""
    mode = getattr(train_cfg, "compile_mode", "default")
    return torch.compile(net, mode=None if mode == "default" else mode)
