"""Dry training steps for the planner: peak memory and time of one forward/backward/optimizer step.

A plan's batch size and epoch count rest on these measurements, not on a formula (the memory of a
convolutional network depends on its implementation, the device and the allocator).

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` - the tensors the step
  held at its peak (PyTorch's caching allocator reserves a little more; the budget keeps a margin).
- CPU: PyTorch keeps no allocator statistics on the CPU and Python's ``tracemalloc`` does not see
  tensor memory (it is allocated by c10, not by Python's allocator), so the step is measured as the
  process's peak resident memory: freed memory is handed back to the OS (glibc ``malloc_trim``), the
  kernel's high-water mark is reset (``/proc/self/clear_refs`` ``5``, Linux >= 4.0) and ``VmHWM`` is
  read after the step, minus the resident memory before the model was built. This counts everything the
  step touched (weights, gradients, AdamW state, activations, workspace), which is what can run out.
  Where ``/proc`` is unavailable (not Linux) the peak is taken from ``resource.getrusage`` and can only
  be trusted when it rose during the step; ``method`` in the result says which was used.

Time: the minimum over a few timed steps after a warm-up (the minimum is the least disturbed by other
load on a shared machine; ``timeit``'s advice) and their median (what a run of steps averages: the
planner's epoch estimate uses it, since the minimum under-counted a real epoch by ~15% on the demo).
On the CPU a step whose process CPU time per thread is under two thirds of its wall time was not
running most of that time (other processes held the cores): then the CPU time per thread is taken, a
closer estimate of the step on free cores. On a quiet machine the two agree and the wall time is used.
``contended`` in the result says which.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["StepMeasurement", "measure_step", "measure_forward", "available_memory_bytes"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class StepMeasurement:
    batch_size: int
    patch_size: tuple[int, ...]
    peak_bytes: int
    seconds: float  # min over the timed steps (0 when not timed)
    method: str
    contended: bool = False  # the CPU time per thread was used (see the module docstring)
    median_seconds: float = 0.0  # median over the timed steps: what a run of steps averages


def _proc_kb(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_hwm() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def available_memory_bytes(device: torch.device) -> int:
    """Free memory of the device now: CUDA ``mem_get_info``; CPU: what this process may still use (the least
    of ``MemAvailable``, RLIMIT_AS and the cgroup's limit:
    :func:`medres.data.readers.limits.available_memory`)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    from medres.data.readers.limits import available_memory

    free = available_memory()
    if free is None:
        import psutil

        free = psutil.virtual_memory().available
    return int(free)


def measure_step(build: Callable[[], tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]],
                 make_batch: Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                 batch_size: int, *, device: torch.device, timed_steps: int = 0,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 ) -> StepMeasurement:
    """Peak memory (and, with ``timed_steps``, time) of training steps at ``batch_size``.

    ``build()`` returns ``(model, loss_fn, optimizer)`` on ``device``; ``make_batch(b)`` returns
    ``(image [b, C, *patch], labels [b], mask [b, 1, *patch])`` on ``device``. The model is built inside
    the measurement, so weights, gradients and optimizer state count.
    """
    cuda = device.type == "cuda"
    _trim()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
    else:
        base = (_proc_kb("VmRSS") or 0) * 1024
        method = "VmHWM after clear_refs" if _reset_hwm() and _proc_kb("VmHWM") else "ru_maxrss"
        if method == "ru_maxrss":
            import resource

            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model, loss_fn, optimizer = build()
    model.train()
    image, labels, mask = make_batch(batch_size)
    times: list[float] = []
    contended = False
    threads = max(torch.get_num_threads(), 1)
    for i in range(2 + timed_steps):  # two untimed steps: the optimizer state exists from the first
        if cuda:
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast():
            out = model(image)
            loss, _ = loss_fn(out, labels, mask, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= 2:
            wall, cpu = time.perf_counter() - t0, (time.process_time() - c0) / threads
            if not cuda and cpu < wall * 2 / 3:
                wall, contended = cpu, True
            times.append(wall)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    elif method == "ru_maxrss":
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    else:
        peak = (_proc_kb("VmHWM") or 0) * 1024 - base
    del model, loss_fn, optimizer, image, labels, mask, out, loss
    _trim()
    if cuda:
        torch.cuda.empty_cache()
    return StepMeasurement(batch_size, tuple(image_shape_of(make_batch)), max(int(peak), 0),
                           min(times) if times else 0.0, method, contended,
                           float(statistics.median(times)) if times else 0.0)


def image_shape_of(make_batch: Callable) -> Sequence[int]:
    return getattr(make_batch, "patch_size", ())


def measure_forward(model: torch.nn.Module, shape: Sequence[int], *, device: torch.device,
                    repeats: int = 2,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> float:
    """Seconds of one no-grad forward pass on a ``[1, *shape]`` input (min over ``repeats`` after a
    warm-up; CPU time per thread when contended, as for :func:`measure_step`): the cost of validating
    or predicting one whole volume."""
    model.eval()
    x = torch.zeros(1, *shape, device=device)
    times = []
    threads = max(torch.get_num_threads(), 1)
    with torch.no_grad(), autocast():
        for i in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                wall, cpu = time.perf_counter() - t0, (time.process_time() - c0) / threads
                times.append(cpu if device.type != "cuda" and cpu < wall * 2 / 3 else wall)
    model.train()
    return min(times)
