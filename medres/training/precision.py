"""Compute settings: device, autocast dtype, gradient scaler, channels_last, pinned memory, ``torch.compile``.

Every choice comes from ``train.*`` in the config; ``"auto"`` picks a sensible default for the device:

- precision: on a GPU, bf16 when supported, else fp16 with a ``GradScaler``. On the CPU **fp32**.
  bf16 autocast on the CPU is allowed for 2D models only; asking for it with a 3D model is a
  ``ConfigError``: the CPU kernels' bf16 ``Conv3d`` weight gradients are wrong in a ResNet's deep
  stages, in a CPU-dependent way no small probe can rule out (measurements: docs/reference.md §6).
  The loop's NaN guard is the backstop.
  ``bf16_if_native``: bf16 where it is native and sound, fp32 elsewhere: on a GPU that has bf16, and on
  a CPU with AVX-512 BF16 / AMX for a 2D model; fp32 on other CPUs (where bf16 would be emulated, and
  slower than fp32, including a CPU whose kernels ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` limit
  to an ISA without bf16), for 3D models on the CPU and on GPUs without bf16. What it chose is logged.
- channels_last: on for 2D models, off for 3D, where it did not pay (docs/reference.md §6).
- pin_memory: on with a GPU only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from medres.errors import ConfigError

if TYPE_CHECKING:
    from medres.config import TrainConfig

__all__ = ["ComputeSettings", "resolve_compute_settings", "resolve_device", "cpu_supports_bf16", "isa_limit"]

log = logging.getLogger("medres.training")


# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) whose kernels compute bf16 natively: AVX-512 BF16 and above
_ONEDNN_BF16_ISAS = frozenset({
    "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "ALL",
})


def isa_limit() -> str | None:
    """The instruction-set limit the environment puts on the CPU kernels, when it rules out native bf16:
    ``ATEN_CPU_CAPABILITY`` below AVX-512 (ATen's vectorised kernels) or ``ONEDNN_MAX_CPU_ISA`` (or its
    older name ``DNNL_MAX_CPU_ISA``) below ``AVX512_CORE_BF16`` (oneDNN's convolutions and matmuls);
    None when neither does. Both are read once, when the process starts computing, so a limit set in the
    environment describes the CPU this process computes on (e.g. an AVX2-only CPU emulated on a newer one).
    """
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").strip()
    if aten and not aten.lower().startswith(("avx512", "amx")):
        return f"ATEN_CPU_CAPABILITY={aten}"
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = os.environ.get(name, "").strip()
        if isa:
            return None if isa.upper() in _ONEDNN_BF16_ISAS else f"{name}={isa}"
    return None


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 bf16 or AMX), probed with a tiny matmul;
    False when the environment limits the kernels to an ISA without it (:func:`isa_limit`)."""
    if isa_limit() is not None:
        return False
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AVX512_BF16", "AMX"):
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        if "avx512_bf16" not in flags and "amx_bf16" not in flags:
            return False
    try:
        a = torch.ones(4, 4, dtype=torch.bfloat16)
        return bool((a @ a).float().eq(4).all())
    except RuntimeError:
        return False


def resolve_device(name: str = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto``: the local rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r}", field="train.device",
                          hint="auto, cpu or cuda[:N]") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was asked for but no GPU is visible", field="train.device",
                          hint="use auto or cpu")
    return device


@dataclass(frozen=True)
class ComputeSettings:
    """How one run computes: device, autocast dtype, memory format, pinned memory, compilation."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    channels_last: bool
    pin_memory: bool
    compile: bool

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """The one autocast context of the loop (a no-op for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A scaler that is enabled only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def memory_format(self, spatial_dims: int) -> torch.memory_format:
        if not self.channels_last:
            return torch.contiguous_format
        return torch.channels_last if spatial_dims == 2 else torch.channels_last_3d

    def describe(self) -> str:
        return (f"device {self.device}, precision {self.precision}, channels_last {self.channels_last}, "
                f"pin_memory {self.pin_memory}, compile {self.compile}")


def _bf16_if_native(gpu: bool, spatial_dims: int) -> str:
    if gpu:
        native, why = torch.cuda.is_bf16_supported(), "this GPU has no bf16"
    elif spatial_dims == 3:
        native, why = False, "bf16 Conv3d weight gradients are wrong on the CPU"
    else:
        limit = isa_limit()
        native, why = cpu_supports_bf16(), (f"{limit}: the CPU kernels have no native bf16" if limit
                                            else "this CPU has no native bf16 (AVX-512 BF16 / AMX)")
    if not native:
        log.info("precision bf16_if_native: fp32 (%s)", why)
    return "bf16" if native else "fp32"


def resolve_compute_settings(train_cfg: TrainConfig, *, spatial_dims: int,
                             local_rank: int = 0) -> ComputeSettings:
    """Turn ``train.{device,precision,channels_last,pin_memory,compile}`` into a :class:`ComputeSettings`."""
    device = resolve_device(train_cfg.device, local_rank=local_rank)
    gpu = device.type == "cuda"
    precision = train_cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "fp32"
    elif precision == "bf16_if_native":
        precision = _bf16_if_native(gpu, spatial_dims)
    if precision == "bf16" and not gpu:
        if not cpu_supports_bf16():
            log.warning("this CPU has no native bf16; bf16 autocast will be slow (emulated)")
        if spatial_dims == 3:
            raise ConfigError(
                f"bf16 autocast on the CPU computes wrong Conv3d weight gradients in a 3D ResNet's deep "
                f"stages (torch {torch.__version__}, oneDNN; how wrong depends on the CPU), so 3D training "
                "would diverge", field="train.precision", hint="use fp32 (or auto) on the CPU; bf16 on a GPU")
    if precision == "fp16" and not gpu:
        raise ConfigError("fp16 autocast needs a GPU", field="train.precision",
                          hint="use bf16 or fp32 on the CPU")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    channels_last = train_cfg.channels_last
    if channels_last == "auto":
        channels_last = spatial_dims == 2
    pin = train_cfg.pin_memory
    if pin == "auto":
        pin = gpu
    return ComputeSettings(device=device, dtype=dtype, channels_last=bool(channels_last),
                    pin_memory=bool(pin and gpu), compile=bool(train_cfg.compile))
