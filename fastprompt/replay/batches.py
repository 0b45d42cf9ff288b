"""The original's batches, pixel for pixel: a planned batch's images through the real transforms.

:class:`ReplayedBatches` is a map-style dataset whose keys are
:class:`~fastprompt.replay.loader_stream.BatchKey` s (``DataLoader(replayed, sampler=keys,
batch_size=None)``, any number of workers): ``replayed[key]`` decodes the slice's images, installs
the key's start streams as the process's global torch and Python streams, applies the training
transform to each image in order (each of its K views, as Dassl's ``_transform_image``), reads
where the streams ended and puts the caller's streams back. The transform is the real one
(torchvision's crop and flip, :class:`~fastprompt.replay.randaugment.RandAugment2`), so the
pixels are the original's by construction, as long as the draws are the plan's.

The check belongs to the main process (a worker's exception would reach it as a traceback):
:meth:`ReplayedBatch.checked` raises

* :class:`~fastprompt.errors.TrainError` when the streams ended elsewhere than the plan says: the
  installed torchvision draws differently from :mod:`fastprompt.replay.draw_counts`, and the
  batch holds augmentations the original never made — never trained on silently;
* :class:`~fastprompt.errors.DataError` when an image could not be decoded. Nothing of the batch is
  transformed then (images are decoded before the first draw): the original would have crashed,
  and skipping the image would shift every later draw, so ``DATASET.MAX_UNREADABLE`` does not
  apply under this mode. (:func:`~fastprompt.replay.image_sizes.read_image_sizes` catches most
  such files before training; a file with a readable header and a corrupt body ends here.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
import torchvision
from torch.utils.data import Dataset, default_collate

from ..data.images import load_image
from ..data.items import Item
from ..errors import DataError, TrainError
from ..data.images import DECODE_ERRORS
from .loader_stream import BatchKey
from .streams import Streams, capture, installed

__all__ = ["ReplayedBatch", "ReplayedBatches"]


@dataclass(eq=False)
class ReplayedBatch:
    """``images``: ``[B, C, H, W]`` (``[B, K, C, H, W]`` with K views), ``labels``: ``[B]`` (the
    items' labels collated), ``end``: the streams after the last transform; ``unreadable``: the
    image that could not be decoded and why (then ``images``/``labels``/``end`` are None)."""

    key: BatchKey
    images: Optional[torch.Tensor]
    labels: Optional[Any]
    end: Optional[Streams]
    unreadable: Optional[str] = None

    def checked(self) -> Tuple[torch.Tensor, Any]:
        """``(images, labels)`` once the batch is known to be the original's (see the module docstring)."""
        where = f"batch {self.key.index + 1} of epoch {self.key.epoch + 1}"
        if self.unreadable is not None:
            raise DataError(f"{where}: training image {self.unreadable}; replaying the original's batches cannot "
                            f"skip an image (every later random draw would move): replace or remove the file")
        if not self.end.same_as(self.key.end):
            raise TrainError(f"{where}: the training transforms drew differently from the original's plan "
                             f"(torchvision {torchvision.__version__}, torch {torch.__version__}): this torchvision's "
                             f"RandomResizedCrop/RandomHorizontalFlip no longer draw as fastprompt.replay.draw_counts "
                             f"replays them; install the torchvision the tests pass with")
        return self.images, self.labels


class ReplayedBatches(Dataset):
    """``dataset[key]``: the :class:`ReplayedBatch` of a :class:`BatchKey` (see the module docstring).

    Args:
        items: the training items the plan's indices refer to (``path``, ``label``).
        transform: the per-image training transform, views included (a Compose, or
            :class:`fastprompt.train.views.MultiView`); the plan's :class:`AugmentDraws` must have
            been read from the same object.
    """

    def __init__(self, items: Sequence[Item], transform: Callable):
        self.items, self.transform = list(items), transform

    def __getitem__(self, key: BatchKey) -> ReplayedBatch:
        images = []
        for index in key.items:  # decode all first: an unreadable image stops the batch before any draw
            path = self.items[index].path
            try:
                images.append(load_image(path))
            except DECODE_ERRORS as exc:
                return ReplayedBatch(key, None, None, None, f"{path} cannot be read ({type(exc).__name__}: {exc})")
        with installed(key.start):
            images = [self.transform(img) for img in images]
            end = capture()
        labels = default_collate([self.items[i].label for i in key.items])
        return ReplayedBatch(key, default_collate(images), labels, end)
