"""``CachedFeatureBatches``: the training batch source of a feature-cached run.

It follows the batch-source protocol of :mod:`fastprompt.train.batches` and gives the batches
:class:`~fastprompt.train.batches.MapBatches` would give, in the same order (the same
:class:`~fastprompt.data.order.EpochBatches`: a pure function of seed and epoch, split over the
ranks the same way), with each image replaced by its cached frozen features: view ``v`` of image
``i`` as :func:`~fastprompt.features.fixed_views.view_choices` picks it for the epoch, so the inputs
are those a run rendering the views would compute. Unreadable images are dropped from their
batch, as :func:`~fastprompt.data.images.skip_collate` drops them (a batch of none is ``None``).

A batch is ``(ImageFeatures [K * B, E], labels [K * B])``, the K views per sample view-major with
the labels repeated K times, as :func:`~fastprompt.train.views.flatten_views` lays out images.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..data.order import EpochBatches
from ..learners.image_features import ImageFeatures
from .fixed_views import view_choices
from .store import FeatureTable

__all__ = ["CachedFeatureBatches"]


class CachedFeatureBatches:
    """Batches of cached features in ``MapBatches`` order.

    Args:
        table: called once, at the first iteration, for the :class:`FeatureTable` ``[N, V, E]``
            (so computing the features counts in the first epoch's time, where a run sees it).
        n: N, the number of training images. views: V. k: views per sample (K_TRANSFORMS).
        batch_size / seed / rank / world: as for ``MapBatches``.
    """

    def __init__(self, table: Callable[[], FeatureTable], n: int, views: int, k: int, batch_size: int, seed: int,
                 rank: int = 0, world: int = 1):
        self.order = EpochBatches(n, batch_size, seed, rank, world)
        self._make_table, self._table = table, None
        self.views, self.k, self.seed = views, k, seed

    def __len__(self) -> int:
        return len(self.order)

    def set_position(self, epoch: int, start: int) -> None:
        self.order.epoch, self.order.start = epoch, start

    @property
    def table(self) -> FeatureTable:
        if self._table is None:
            self._table = self._make_table()
            if self._table.features.shape[1] != self.views:
                raise ValueError(f"the feature table holds {self._table.features.shape[1]} views per image, "
                                 f"this batch source expects {self.views}")
        return self._table

    def __iter__(self):
        table = self.table
        device = table.features.device
        for keys in self.order:
            keep = [(epoch, i) for epoch, i in keys if bool(table.valid[i])]
            if not keep:
                yield None
                continue
            index = torch.tensor([i for _, i in keep], device=device)
            picks = torch.tensor([view_choices(self.seed, epoch, i, self.views, self.k) for epoch, i in keep],
                                 device=device)                                  # [B, K]
            features = table.features[index[:, None], picks]                     # [B, K, E]
            features = features.transpose(0, 1).reshape(-1, features.shape[-1])  # [K * B, E], view-major
            yield ImageFeatures(features), table.labels[index].repeat(self.k)

    def state_dict(self) -> Optional[Any]:
        return None  # the order is a function of (seed, epoch) and the features of the table

    def load_state_dict(self, state: Optional[Any]) -> None:
        if state is not None:
            raise ValueError("this run's state holds a stream position, but the run reads cached features of a "
                             "map-style dataset; resume it with the data source it was started with")
