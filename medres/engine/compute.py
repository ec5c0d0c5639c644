"""GPU switches beyond ``medres.engine.precision``: cuDNN autotuning, fused optimizer kernels and the
``torch.compile`` mode (``train.cudnn_benchmark``, ``train.fused_optimizer``, ``train.compile_mode``).

Defaults (``auto``): cuDNN benchmark and fused AdamW / SGD on with CUDA, off on the CPU (where they do
nothing or, for fused kernels, are not the tested path). Training patches have one fixed shape, the case
cuDNN's autotuner is for; validation volumes vary in size, which costs one autotuning per new shape.
``compile_mode: reduce-overhead`` is ``torch.compile``'s CUDA-graph mode. The GPU defaults are not
measured yet: ``benchmarks/gpu_check.sh`` measures each switch (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

__all__ = ["apply_backend_flags", "use_fused_optimizer", "compile_model"]

log = logging.getLogger("medres.engine")


def apply_backend_flags(train_cfg: Any, device: torch.device) -> dict[str, bool]:
    """Set ``torch.backends.cudnn.benchmark`` from ``train.cudnn_benchmark``; return what was set."""
    want = getattr(train_cfg, "cudnn_benchmark", "auto")
    on = device.type == "cuda" if want == "auto" else bool(want)
    torch.backends.cudnn.benchmark = on
    return {"cudnn_benchmark": on}


def use_fused_optimizer(train_cfg: Any, device: torch.device) -> bool:
    """Whether the optimizer uses its fused kernel (``train.fused_optimizer``; auto = with CUDA)."""
    want = getattr(train_cfg, "fused_optimizer", "auto")
    return device.type == "cuda" if want == "auto" else bool(want)


def compile_model(net: nn.Module, train_cfg: Any) -> nn.Module:
    """``torch.compile(net)`` in ``train.compile_mode`` (the first steps then include compile time)."""
    mode = getattr(train_cfg, "compile_mode", "default")
    return torch.compile(net, mode=None if mode == "default" else mode)
