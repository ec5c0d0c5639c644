"""The training order of an epoch as a pure function of ``(seed, epoch)``, with batches to skip on resume.

``EpochSampler`` shuffles like ``DistributedSampler`` (a permutation from a generator seeded with
``seed + epoch``, padded so every rank gets the same count, rank ``r`` taking every ``world``-th index),
or draws with replacement by class-balancing weights, and leaves out the first ``skip`` indices of this
rank's share: a mid-epoch resume starts at the next unseen batch without loading the ones before.
With ``tag_epoch`` it yields ``(epoch, index)`` pairs, which ``CaseDataset`` reads as "index, drawn for
that epoch": one DataLoader with persistent workers then serves every epoch (the engine sets ``epoch`` and
``skip`` before each pass; the workers never need to be told).
Hand-written because torch's samplers either draw from the global RNG or cannot skip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[Any]):
    """Dataset indices of one rank for one epoch.

    Args:
        n: dataset length.
        seed, epoch: the order is a function of ``seed + epoch`` only.
        shuffle: False keeps ``0..n-1`` (validation).
        rank, world_size: this process's share (``DistributedSampler``'s padding and striding).
        skip: indices of this rank's share already consumed (``batches_done * batch_size``).
        weights: per-sample weights for drawing ``n`` samples with replacement (class-balanced sampler).
        tag_epoch: yield ``(epoch, index)`` instead of ``index``.
    """

    def __init__(self, n: int, *, seed: int = 0, epoch: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, skip: int = 0, weights: Sequence[float] | None = None,
                 tag_epoch: bool = False) -> None:
        self.n, self.seed, self.epoch, self.shuffle, self.tag_epoch = n, seed, epoch, shuffle, tag_epoch
        self.rank, self.world_size, self.skip = rank, world_size, skip
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.per_rank = math.ceil(n / world_size)

    def indices(self) -> list[int]:
        """This rank's full share for the epoch (before skipping)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order += (order * math.ceil(total / max(len(order), 1)))[: total - len(order)]  # pad by repeating
        return order[self.rank:total:self.world_size]

    def __iter__(self) -> Iterator[Any]:
        share = self.indices()[self.skip:]
        return iter([(self.epoch, i) for i in share] if self.tag_epoch else share)

    def __len__(self) -> int:
        return max(self.per_rank - self.skip, 0)
