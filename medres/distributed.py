"""Processes launched by torchrun, for training and prediction alike: who am I, the process group, a
barrier and small Python objects gathered from every rank.

``torchrun --nproc_per_node=N -m medres.<command> ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`launch_info` reads them (without joining anything) and
:func:`init_distributed` joins the process group (gloo on the CPU, nccl on GPUs, unless told). Without
torchrun every helper here is the single-process identity, so callers need no ``if``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from medres.errors import ConfigError

__all__ = ["DistInfo", "launch_info", "init_distributed", "cleanup_distributed", "is_active", "world_size",
           "barrier", "broadcast_object", "all_gather_objects"]

#: how long a collective waits for the slowest rank before the group gives up
DEFAULT_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: str | None) -> int:
    text = os.environ.get(name, default)
    if text is None:
        raise ConfigError(f"WORLD_SIZE is set but {name} is not", field=name,
                          hint="launch the command with torchrun, which sets both")
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a whole number", field=name,
                          hint="launch the command with torchrun, or unset it") from None


def launch_info() -> DistInfo:
    """``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` as torchrun set them (rank 0 of 1 when unset)."""
    size = _env_int("WORLD_SIZE", "1")
    if size <= 1:
        return DistInfo()
    rank, local_rank = _env_int("RANK", None), _env_int("LOCAL_RANK", "0")
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is outside 0..{size - 1} (WORLD_SIZE={size})", field="RANK",
                          hint="launch the command with torchrun")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=size)


def init_distributed(*, backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Join the process group when launched by torchrun; a single process otherwise.

    ``backend``: default nccl when CUDA is present (each rank on ``cuda:LOCAL_RANK``), else gloo.
    """
    info = launch_info()
    if not info.enabled:
        return info
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=timeout)
    return info


def cleanup_distributed() -> None:
    """Leave the process group (nothing without one)."""
    if is_active():
        dist.destroy_process_group()


def is_active() -> bool:
    """True inside a process group (torchrun); the one test every helper here uses."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_active() else 1


def barrier() -> None:
    """Wait until every rank is here (nothing without a process group)."""
    if is_active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity without a process group)."""
    if not is_active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable and small: a status, a few numbers), on every rank, by rank
    (``[obj]`` without a process group)."""
    if not is_active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
