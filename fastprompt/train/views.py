"""Training input options of Dassl's data loader: ``randaugment2`` and ``K_TRANSFORMS`` views.

* :func:`with_randaugment2`: Dassl's ``build_transform`` (KaiyangZhou/Dassl.pytorch
  ``dassl/data/transforms/transforms.py``) inserts ``RandAugment2(INPUT.RANDAUGMENT_N)`` after the
  crop and flip, before ``ToTensor``.
* :class:`MultiView` and :func:`flatten_views`: with ``DATALOADER.K_TRANSFORMS = K > 1`` Dassl's
  ``DatasetWrapper`` (``dassl/data/data_manager.py``, ``_transform_image``) returns K independently
  augmented views of each training image, and POMP's ``parse_batch_train``
  (amazon-science/prompt-pretraining ``trainers/pomp.py``) trains on ``torch.cat`` of the K view
  batches with the labels repeated K times: a batch of B images becomes K * B inputs, view-major
  (all first views, then all second views, ...). Here a sample holds its K views stacked,
  ``[K, C, H, W]``, and the trainer flattens the ``[B, K, C, H, W]`` batch into that order.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torchvision import transforms as T

from ..errors import ConfigError
from ..replay.randaugment import RandAugment2

__all__ = ["MultiView", "flatten_views", "with_randaugment2"]


class MultiView:
    """``k`` draws of ``transform`` on one image, stacked ``[k, ...]`` (``k = 1``: the transform itself)."""

    def __init__(self, transform: Callable, k: int):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"DATALOADER.K_TRANSFORMS must be an int >= 1, got {k!r}")
        self.transform, self.k = transform, k

    def __call__(self, img):
        if self.k == 1:
            return self.transform(img)
        return torch.stack([self.transform(img) for _ in range(self.k)])

    def __repr__(self) -> str:
        return f"MultiView(k={self.k}, {self.transform!r})"


def flatten_views(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``[B, K, C, H, W]`` -> ``[K * B, C, H, W]`` view-major with labels repeated K times, as POMP's
    ``torch.cat(views)`` / ``label.repeat(K)``; a ``[B, C, H, W]`` batch is returned as it is."""
    if images.dim() != 5:
        return images, labels
    k = images.shape[1]
    return images.transpose(0, 1).reshape(-1, *images.shape[2:]), labels.repeat(k)


def with_randaugment2(transform: T.Compose, n: int) -> T.Compose:
    """``transform`` with ``RandAugment2(n)`` inserted right before its ``ToTensor``."""
    steps = list(getattr(transform, "transforms", ()))
    at = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if at is None:
        raise ConfigError(f"INPUT.TRANSFORMS randaugment2 works on PIL images, before ToTensor, and this model's "
                          f"transform has no ToTensor step: {transform!r}")
    try:
        augment = RandAugment2(int(n))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return T.Compose(steps[:at] + [augment] + steps[at:])
