"""How the CPU's compute threads wait: chosen before torch is imported (torch-free on purpose).

PyTorch's CPU kernels (ATen, oneDNN, MKL) run on one OpenMP thread pool. By default GNU OpenMP threads
spin at every barrier before they sleep. On cores of their own that is the fastest way to wait; when the
machine has other work (more runnable threads than cores: another job, a second user), a spinning thread
takes the core from the thread it waits for, and a training step takes several times longer.
``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead, at the price of a wake-up per parallel
region. Measured (BENCHMARKS.md, "The main jobs on an AVX2-only CPU"): the CT job's epoch 1.7-2.2 s
spinning vs 2.4-3.1 s passive on an idle 2-core machine, 6.5-7.5 s vs 3.9-4.9 s beside two busy
processes. So the policy follows the machine: passive when the cores cannot hold both the other work
(the threads running now besides this one, from ``/proc/loadavg``; elsewhere the 1-minute load
average, which still counts work that has just ended) and this process's threads, the OpenMP default
otherwise. Either way only
how threads wait changes, not how work is split among them: results are bit-identical. OpenMP reads the
variable once, when its runtime loads (with torch), so it is set before the first ``import torch``; a
value already in the environment is kept.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

__all__ = ["WAIT_POLICY", "choose_openmp_waits"]

WAIT_POLICY = "OMP_WAIT_POLICY"


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def other_work(samples: int = 5, interval: float = 0.05) -> float:
    """The threads running or runnable besides this one: the median of ``samples`` readings of
    ``/proc/loadavg``'s running count, minus this thread; the 1-minute load average where that file is
    missing, 0 where neither can be read."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg", encoding="ascii") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)
        except (OSError, ValueError, IndexError):
            break
        if i + 1 < samples:
            time.sleep(interval)
    if counts:
        return float(statistics.median(counts))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def choose_openmp_waits(load: float | None = None, cpus: int | None = None) -> str:
    """Set ``OMP_WAIT_POLICY`` for this process's OpenMP runtime unless it is set already; return what
    decided, for the log: ``"environment"`` (kept), ``"too late"`` (torch already imported: its runtime
    read the environment then), ``"passive"`` (the other work ``load`` (default :func:`other_work`) plus
    the threads torch
    will start, one per usable CPU or ``OMP_NUM_THREADS``, exceed the ``cpus`` by more than half a core)
    or ``"spin"`` (the OpenMP default: the cores are free)."""
    if WAIT_POLICY in os.environ:
        return "environment"
    if "torch" in sys.modules:
        return "too late"
    cpus = _usable_cpus() if cpus is None else cpus
    load = other_work() if load is None else load
    try:
        threads = int(os.environ.get("OMP_NUM_THREADS", "")) or cpus
    except ValueError:
        threads = cpus
    if load + min(threads, cpus) > cpus + 0.5:
        os.environ[WAIT_POLICY] = "PASSIVE"
        return "passive"
    return "spin"
