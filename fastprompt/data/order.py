"""Deterministic data order and augmentation, so that a run can stop anywhere and resume exactly.

* :class:`EpochBatches`: the training batches of epoch ``e`` are a pure function of
  ``(seed, e)``: a ``torch.randperm`` drawn from a generator seeded with ``seed`` and ``e`` cut
  into global batches (Dassl's ``RandomSampler`` + ``drop_last`` rule: the last partial batch is
  dropped when there is at least one full batch, KaiyangZhou/Dassl.pytorch
  ``dassl/data/data_manager.py``). With ``world`` processes each global batch is split into
  ``world`` equal slices, rank ``r`` taking slice ``r``, so N processes with batch ``b`` see
  exactly the samples of one process with batch ``N * b``. Resuming at batch ``k`` of the epoch
  starts the same list at ``k``; nothing before it is loaded.
* :class:`SeededSamples`: sample ``i`` of epoch ``e`` is transformed under RNG seeds derived
  from ``(seed, e, i)`` (torch and Python ``random``, restored afterwards), so the random crop
  and flip of an image do not depend on the number of workers, on which worker loads it, or
  on where the run was resumed.
"""
from __future__ import annotations

import random
from typing import Iterator, List, Optional, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["EpochBatches", "SeededSamples", "sample_seed"]

_MIX = 0x9E3779B97F4A7C15


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for ``(seed, epoch, index)`` (splitmix64-style mixing; distinct inputs differ)."""
    x = (seed * 1_000_003 + epoch) * 2_147_483_647 + index
    x = (x + _MIX) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0x7FFFFFFFFFFFFFFF


class EpochBatches:
    """Batch sampler of ``(epoch, index)`` keys for one rank; set :attr:`epoch` and :attr:`start`
    (batches of the epoch already done) before iterating."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.global_batch = batch_size * world
        self.drop_last = n >= self.global_batch
        if not self.drop_last and world > 1:
            raise ValueError(f"{n} training images cannot fill one global batch of {self.global_batch} "
                             f"({world} processes x {batch_size}); lower the batch size")
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.global_batch if self.drop_last else 1

    def order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sample_seed(self.seed, epoch, -1))
        return torch.randperm(self.n, generator=gen)

    def batches(self, epoch: int) -> List[List[Tuple[int, int]]]:
        perm = self.order(epoch).tolist()
        out = []
        for b in range(len(self)):
            chunk = perm[b * self.global_batch:(b + 1) * self.global_batch]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size] if self.world > 1 else chunk
            out.append([(epoch, i) for i in mine])
        return out

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        return iter(self.batches(self.epoch)[self.start:])


class SeededSamples(Dataset):
    """``dataset[index]`` under per-sample RNG seeds; keys are ``(epoch, index)`` or plain indices
    (evaluation: no augmentation randomness is expected, the global RNG is used)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        epoch, index = key
        s = sample_seed(self.seed, epoch, index)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)

    @property
    def skipped(self) -> Optional[int]:
        return getattr(self.dataset, "skipped", None)
