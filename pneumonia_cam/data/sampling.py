"""The train order as a function of (seed, epoch) alone, so a run stopped mid-epoch continues exactly."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DistributedSampler


class SampleKey(NamedTuple):
    """What the train sampler yields: the image, the epoch, and the seed of its batch's augmentation."""

    index: int
    epoch: int
    seed: int


class EpochSampler(DistributedSampler):
    """Shuffle (or draw by class weight, with replacement) from seed + epoch, shard by rank, start anywhere.

    Nothing depends on the process's random state or on the worker count, so `start_at(epoch, position)` after
    a restart yields exactly the samples the uninterrupted run would still have drawn in that epoch. Being a
    DistributedSampler, Lightning leaves it in place under DDP instead of wrapping it.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self._start = 0

    def start_at(self, epoch: int, position: int) -> None:
        """Make the next iteration epoch `epoch`, beginning at this rank's `position`-th sample."""
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"resume position {position} is outside this epoch's {self.num_samples} samples")
        self.set_epoch(epoch)
        self._start = position

    def order(self) -> list[int]:
        """This rank's indices this epoch (padded by repetition to equal shares, like DistributedSampler)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        size = len(self.dataset)
        if self.weights is None:
            indices = torch.randperm(size, generator=generator).tolist()
        else:
            indices = torch.multinomial(self.weights, size, replacement=True, generator=generator).tolist()
        indices += (indices * (self.total_size // size + 1))[: self.total_size - size]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[SampleKey]:
        start, self._start = self._start, 0
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(self.num_samples)
        for position, index in enumerate(self.order()[start:], start):
            yield SampleKey(index, self.epoch, int(seeds[position]))
