"""Where the trainer's batches come from: a map-style dataset in a seeded order, or a stream.

The :class:`~fastprompt.train.trainer.Trainer` asks a batch source for four things:

* ``len(source)``: batches per epoch for this process (the same on every rank);
* ``source.set_position(epoch, start)``: the next batch to give is batch ``start`` of ``epoch``;
* ``iter(source)``: the batches ``start, start + 1, ...`` of that epoch, each ``(images, labels)``
  (or ``None`` when every image of it was unreadable);
* ``source.state_dict()`` / ``source.load_state_dict(state)``: what, besides ``(epoch, start)``,
  is needed to continue exactly where a saved run stopped (``None``: nothing). Under torchrun the
  trainer gathers every rank's state into the list that ``load_state_dict`` receives back.

:class:`MapBatches` is the source of every fine-tuning run (a map-style dataset: the order is a
pure function of the seed and the epoch, so ``(epoch, start)`` is the whole position);
:class:`fastprompt.data.shard_stream.ShardBatchStream` streams WebDataset shards and keeps the
per-worker stream positions in its state.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import skip_collate
from ..data.order import EpochBatches, SeededSamples

__all__ = ["MapBatches"]


class MapBatches:
    """Batches of a map-style dataset: :class:`EpochBatches` order, :class:`SeededSamples` augmentation.

    Args:
        data: a dataset of ``(image tensor, label)``.
        batch_size: per process. seed: the run seed (order and augmentation).
        rank / world: this process and the process count (each global batch split into equal slices).
        num_workers / pin_memory: DataLoader settings (workers persist across epochs).
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, *,
                 num_workers: int = 0, pin_memory: bool = False):
        self.order = EpochBatches(len(data), batch_size, seed, rank, world)
        self.loader = DataLoader(SeededSamples(data, seed), batch_sampler=self.order, num_workers=num_workers,
                                 collate_fn=skip_collate, pin_memory=pin_memory,
                                 persistent_workers=num_workers > 0,
                                 # its own generator: starting an epoch must not draw from the global RNG
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.order)

    def set_position(self, epoch: int, start: int) -> None:
        self.order.epoch, self.order.start = epoch, start

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> Optional[Any]:
        return None  # the order is a function of (seed, epoch): the trainer's position says it all

    def load_state_dict(self, state: Optional[Any]) -> None:
        if state is not None:
            raise ValueError("this run's state holds a stream position, but the run reads a map-style dataset; "
                             "resume it with the data source it was started with (DATASET.SHARDS)")
