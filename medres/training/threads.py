"""How the CPU's compute threads wait: set before torch is imported (torch-free on purpose).

PyTorch's CPU kernels (ATen, oneDNN, MKL) run on one OpenMP thread pool. By default GNU OpenMP threads
spin at every barrier before they sleep; when the machine has other work (more runnable threads than
cores: another job, the data loader, a second user), a spinning thread takes the core from the one it
waits for, and a training step takes several times longer. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting
threads sleep instead. It changes how threads wait, not how work is split among them, so every result
is bit-identical; on an otherwise idle machine it costs a wake-up per parallel region. OpenMP reads the
variable once, when its runtime loads (with torch), so it is set before the first ``import torch``;
a value already in the environment is kept.
"""

from __future__ import annotations

import os
import sys

__all__ = ["WAIT_POLICY", "passive_openmp_waits"]

WAIT_POLICY = "OMP_WAIT_POLICY"


def passive_openmp_waits() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set already; return whether the policy in force is the
    environment's (False when torch was imported before this call: its OpenMP runtime read the
    environment then, so setting it now would change nothing)."""
    if "torch" in sys.modules:
        return False
    os.environ.setdefault(WAIT_POLICY, "PASSIVE")
    return True
