"""Fixed augmented views: V views per training image drawn once, each epoch training on some of them.

With random augmentation every epoch sees a new crop of every image, so no image feature can be
computed once. ``TRAIN.FEATURE_CACHE_VIEWS = V`` replaces the endless stream of augmentations by
a finite one that a cache can hold exactly: view ``v`` of image ``i`` is the training transform
applied under RNG seeds derived from ``(seed, v, i)`` (:class:`~fastprompt.data.order.SeededSamples`
seeding with the "epoch" ``-2 - v``, which no epoch uses), so it is the same tensor whenever and
wherever it is computed; in epoch ``e`` a training sample of image ``i`` is ``K`` of those views
(``K = DATALOADER.K_TRANSFORMS``, stacked ``[K, C, H, W]`` like :class:`~fastprompt.train.views.MultiView`
when ``K > 1``), chosen by ``torch.randint(V, (K,))`` from the RNG that ``SeededSamples`` seeds
with ``(seed, e, i)``. :func:`view_choices` recomputes that choice without loading anything,
which is how the feature cache (:mod:`fastprompt.features.cache`) picks the same views as a
run that computes them, so both train on identical inputs.

The setting applies with and without the cache: a run with views and no cache renders the chosen
views on the fly (what the cache reproduces, and the reference of its parity test).
"""
from __future__ import annotations

from typing import List

import torch
from torch.utils.data import Dataset

from ..data.order import SeededSamples, sample_seed

__all__ = ["FixedViews", "view_choices"]


def view_choices(seed: int, epoch: int, index: int, views: int, k: int = 1) -> List[int]:
    """The ``k`` views (of ``views``) that epoch ``epoch`` trains image ``index`` on: the draw that
    :class:`FixedViews` makes from the global RNG as :class:`SeededSamples` seeds it."""
    if views == 1:
        return [0] * k
    gen = torch.Generator().manual_seed(sample_seed(seed, epoch, index))
    return torch.randint(views, (k,), generator=gen).tolist()


class FixedViews(Dataset):
    """``views`` seeded views per image of ``dataset`` (whose transform may be random).

    Args:
        dataset: ``(image tensor, label)`` per index, or ``None`` for an unreadable image (the
            single-view training dataset; its transform is applied once per view).
        seed: the run seed (``SEED``): it seeds the views and, through ``SeededSamples``, the choice.
        views: V >= 1 views per image. k: views per training sample (``K_TRANSFORMS``).
    """

    def __init__(self, dataset: Dataset, seed: int, views: int, k: int = 1):
        for name, value in (("views", views), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FixedViews: {name} must be an int >= 1, got {value!r}")
        self.dataset, self.seed, self.views, self.k = dataset, int(seed), views, k
        self._seeded = SeededSamples(dataset, int(seed))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def view(self, view: int, index: int):
        """View ``view`` of image ``index``: ``(image [C, H, W], label)``, or ``None`` if unreadable."""
        if not 0 <= view < self.views:
            raise IndexError(f"view {view} out of range: this dataset has {self.views} views per image")
        return self._seeded[(-2 - view, index)]

    def __getitem__(self, index: int):
        """The training sample of image ``index``: ``k`` views drawn from the global RNG (seeded
        by ``SeededSamples`` with ``(seed, epoch, index)``), ``(image, label)`` or
        ``([k, C, H, W], label)``; ``None`` when the image is unreadable."""
        picks = [0] * self.k if self.views == 1 else torch.randint(self.views, (self.k,)).tolist()
        samples = [self.view(v, index) for v in picks]
        if any(s is None for s in samples):
            return None
        if self.k == 1:
            return samples[0]
        return torch.stack([image for image, _ in samples]), samples[0][1]

    @property
    def skipped(self):
        return getattr(self.dataset, "skipped", None)

    def __repr__(self) -> str:
        return f"FixedViews(views={self.views}, k={self.k}, seed={self.seed}, {self.dataset!r})"
