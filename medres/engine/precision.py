"""Fast paths: autocast dtype, gradient scaler, channels_last, pinned memory and ``torch.compile``.

Every choice comes from ``train.*`` in the config; ``"auto"`` picks a sensible default for the device:

- precision: on a GPU, bf16 when supported, else fp16 with a ``GradScaler``. On the CPU **fp32**:
  bf16 autocast is ~1.6-2x faster on CPUs with AVX-512 bf16 / AMX, but a measured 3D run diverged to
  NaN under it (REFERENCE.md §6). The cause, found here: on the CPU (torch 2.14.1, oneDNN) the bf16
  ``Conv3d`` weight gradient is wrong when the feature map is no larger than the kernel's reach (a
  3x3x3 convolution over a 2x2x2 map, which a ResNet's layer4 sees at 48^3 input): relative error
  ~0.9, often 1e30. :func:`cpu_bf16_conv3d_is_sound` probes exactly that case, and asking for bf16
  on a CPU that fails it with a 3D model is a ``ConfigError``; the loop's NaN guard is the backstop.
- channels_last: on for 2D models (REFERENCE.md §6: ~1.3x for a 2D ResNet on this CPU); off for 3D,
  where ``channels_last_3d`` gained under 10% for the main job's model here (within the noise).
- pin_memory: on with a GPU only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass

import torch

from medres.errors import ConfigError

__all__ = ["FastPath", "resolve_fast_path", "resolve_device", "cpu_supports_bf16", "cpu_bf16_conv3d_is_sound"]

log = logging.getLogger("medres.engine")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX-512 bf16 or AMX), probed with a tiny matmul."""
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


@functools.lru_cache(maxsize=1)
def cpu_bf16_conv3d_is_sound() -> bool:
    """True when the CPU's bf16 ``Conv3d`` weight gradient over a 2x2x2 map (3x3x3 kernel, padding 1)
    agrees with fp32 to bf16 accuracy (relative error < 5%; a sound kernel gives ~0.3%)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, 2, 2, 2, generator=g)
    grad_out = torch.randn(4, 8, 2, 2, 2, generator=g) * 1e-3
    w0 = torch.randn(8, 16, 3, 3, 3, generator=g) * 0.1
    grads = []
    for dtype in (torch.bfloat16, torch.float32):
        w = w0.to(dtype).requires_grad_(True)
        torch.nn.functional.conv3d(x.to(dtype), w, None, 1, 1).backward(grad_out.to(dtype))
        grads.append(w.grad.float())
    err = (grads[0] - grads[1]).norm() / grads[1].norm()
    return bool(torch.isfinite(err)) and float(err) < 0.05


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
class FastPath:
    """The resolved speed settings for one run."""

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


def resolve_fast_path(train_cfg, *, spatial_dims: int, local_rank: int = 0) -> FastPath:
    """Turn ``train.{device,precision,channels_last,pin_memory,compile}`` into a :class:`FastPath`."""
    device = resolve_device(train_cfg.device, local_rank=local_rank)
    gpu = device.type == "cuda"
    precision = train_cfg.precision
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else (
            "bf16" if spatial_dims == 2 and cpu_supports_bf16() else "fp32")  # 2D bf16 on the CPU is sound
    if precision == "bf16" and not gpu:
        if not cpu_supports_bf16():
            log.warning("this CPU has no native bf16; bf16 autocast will be slow (emulated)")
        if spatial_dims == 3 and not cpu_bf16_conv3d_is_sound():
            raise ConfigError(
                f"bf16 autocast on this CPU computes wrong Conv3d weight gradients for small feature maps "
                f"(torch {torch.__version__}; the deepest ResNet stages hit them), so 3D training would "
                "diverge", field="train.precision", hint="use fp32 (or auto) on the CPU; bf16 on a GPU")
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
    return FastPath(device=device, dtype=dtype, channels_last=bool(channels_last),
                    pin_memory=bool(pin and gpu), compile=bool(train_cfg.compile))
