"""DistributedDataParallel from torchrun's environment, nanoGPT-style.

``torchrun --nproc_per_node=N -m medres.train ...`` sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_distributed` (from :mod:`medres.distributed`, shared
with prediction) reads them (gloo on the CPU, nccl on GPUs). Only rank 0 writes files. Validation
predictions are gathered from every rank and the padding that ``DistributedSampler`` adds (it repeats
the first indices so that every rank gets the same number of samples) is dropped by dataset index, so no
case is counted twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from medres.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_active,
    world_size,
)

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "is_active", "world_size", "any_rank",
           "all_reduce_grads", "gather_records", "all_reduce_mean", "barrier", "broadcast_object"]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when any rank's flag is set (so all ranks stop at the same step)."""
    if not is_active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_grads(module: torch.nn.Module) -> None:
    """Average the gradients of ``module``'s parameters across ranks (for parameters outside the
    DDP-wrapped model, such as a loss's learned task weights; DDP averages its own)."""
    if not is_active():
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def all_reduce_mean(values: Sequence[float], device: torch.device | None = None) -> list[float]:
    """The mean over ranks of a few floats (e.g. the epoch's loss terms)."""
    if not is_active():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def gather_records(records: list[dict[str, Any]], *, key: str = "index") -> list[dict[str, Any]]:
    """Every rank's records, on every rank, one per ``key`` (the dataset index), sorted by it.

    ``DistributedSampler`` pads the last round with repeated indices; keeping the first record of each
    index drops those duplicates, so each case counts once.
    """
    if world_size() > 1:
        parts: list[list[dict[str, Any]]] = [None] * dist.get_world_size()  # type: ignore[list-item]
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    unique: dict[Any, dict[str, Any]] = {}
    for r in records:
        unique.setdefault(r[key], r)
    return [unique[k] for k in sorted(unique)]
