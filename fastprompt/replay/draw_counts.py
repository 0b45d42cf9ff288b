"""Draw-only replicas of the originals' training transforms: the same random numbers, no pixels.

An original's training transform (Dassl's ``build_transform``, KaiyangZhou/Dassl.pytorch
``dassl/data/transforms/transforms.py``: ``RandomResizedCrop`` -> ``RandomHorizontalFlip`` ->
[``RandAugment2``] -> ``ToTensor`` -> ``Normalize``, applied ``K_TRANSFORMS`` times per image by
``DatasetWrapper._transform_image``) draws from the global torch stream and Python's ``random``.
How many numbers it draws depends on the image only through its size: the crop tries up to 10
(area, aspect ratio) pairs until one fits the image. The replicas here make exactly those calls
on a private ``torch.Generator`` / ``random.Random`` given only the raw image size, so a planner
can know every stream position of an epoch without decoding an image:

* :func:`crop_draws` — torchvision's ``RandomResizedCrop.get_params`` (torchvision >= 0.8): per
  attempt ``uniform_(scale)`` for the area, then ``uniform_(log ratio)`` for the aspect ratio,
  ``w, h = round(sqrt(area * ratio)), round(sqrt(area / ratio))``; on the first that fits,
  ``randint`` for the top row ``i`` then the left column ``j``; after 10 misses a centre crop
  that draws nothing;
* :func:`flip_draw` — ``RandomHorizontalFlip``: one ``torch.rand(1)``, flipped when ``< p``;
* :func:`randaugment2_draws` — :class:`~fastprompt.replay.randaugment.RandAugment2`: ``n``
  ``random()`` for ``random.choices``, then per op one to keep it (``> p`` skips), one for the
  magnitude and, for :data:`~fastprompt.replay.randaugment.SIGNED_OPS`, one for the sign;
* :class:`AugmentDraws` — the draws of a whole training transform (read from the transform
  object itself, so the plan and the pixels come from the same settings) for its K views.

The replicas are exact by construction only as long as torchvision's code is the one described;
``tests/test_replay_draw_counts.py`` runs the real transforms on images of many sizes and
compares the generator states, and the batch wrapper (:mod:`fastprompt.replay.batches`) checks the
end state of every replayed batch.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import torch
from torchvision import transforms as T

from ..errors import ConfigError
from .randaugment import SIGNED_OPS, RandAugment2

__all__ = ["ViewDraws", "AugmentDraws", "crop_draws", "flip_draw", "randaugment2_draws"]

Size = Tuple[int, int]  # (width, height), PIL's order

# Steps that draw nothing and keep the image size, allowed after (or between) the random steps.
_DRAW_FREE = (T.ToTensor, T.PILToTensor, T.Normalize, T.ConvertImageDtype)
# Steps that draw nothing but change the size (a test transform used for training: INPUT.TRANSFORMS
# ['normalize']); a random crop after one would need the size they give, which is not replicated.
_RESIZING = (T.Resize, T.CenterCrop)
_RESIZED: Size = (-1, -1)


def _log_ratio(ratio: Sequence[float]) -> Tuple[float, float]:
    """get_params' ``torch.log(torch.tensor(ratio))`` (float32) as the bounds ``uniform_`` reads."""
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def crop_draws(gen: torch.Generator, width: int, height: int, scale: Sequence[float], ratio: Sequence[float],
               log_ratio: Optional[Tuple[float, float]] = None) -> Tuple[int, int, int, int]:
    """``(i, j, h, w)`` of ``RandomResizedCrop.get_params`` on a ``width`` x ``height`` image, drawn
    from ``gen`` exactly as the real one draws from the global stream (same ops, same order).
    ``log_ratio``: ``_log_ratio(ratio)`` computed once by a caller that crops many images."""
    area = height * width
    low, high = _log_ratio(ratio) if log_ratio is None else log_ratio
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=gen).item()
        # exp in float32 on a tensor, as get_params: math.exp in float64 could round a w or h differently
        aspect_ratio = torch.exp(torch.empty(1).uniform_(low, high, generator=gen)).item()
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=gen).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=gen).item()
            return i, j, h, w
    # torchvision's fallback: the largest centre crop within the ratio range, no draw
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def flip_draw(gen: torch.Generator, p: float) -> bool:
    """``RandomHorizontalFlip(p)``: one ``torch.rand(1)``, drawn whatever ``p`` is; True = flipped."""
    return bool(torch.rand(1, generator=gen) < p)


def randaugment2_draws(rng: random.Random, n: int, p: float, ops: Sequence[Tuple[str, float, float]]
                       ) -> Tuple[Tuple[str, float], ...]:
    """The ``(op, signed value)`` pairs ``RandAugment2(n, p)`` applies, drawn from ``rng`` in its order."""
    applied = []
    for name, low, high in rng.choices(ops, k=n):
        if rng.random() > p:
            continue
        value = low + rng.random() * (high - low)
        if name in SIGNED_OPS:
            value = -value if rng.random() > 0.5 else value
        applied.append((name, value))
    return tuple(applied)


@dataclass(frozen=True)
class ViewDraws:
    """What one view of one image drew: ``crop`` ``(i, j, h, w)`` (None: no crop step), ``flip``
    (None: no flip step) and the RandAugment2 ``ops`` applied, ``(name, signed value)``."""

    crop: Optional[Tuple[int, int, int, int]] = None
    flip: Optional[bool] = None
    ops: Tuple[Tuple[str, float], ...] = ()


def _step_replica(step, size: Optional[Size]) -> Tuple[Callable, Optional[Size]]:
    """``(replica(gen, rng, size, record) -> None, size after the step)`` of one Compose step."""
    if isinstance(step, T.RandomResizedCrop):
        if size == _RESIZED:
            raise ConfigError(f"the original's streams can be replayed for a random crop of the decoded image, and "
                              f"this transform resizes before cropping ({step!r}); use Dassl's training transform "
                              f"(INPUT.TRANSFORMS random_resized_crop, random_flip, normalize)")
        scale, ratio, out = tuple(step.scale), tuple(step.ratio), (int(step.size[1]), int(step.size[0]))
        log_ratio = _log_ratio(ratio)

        def crop(gen, rng, size, record):
            record["crop"] = crop_draws(gen, size[0], size[1], scale, ratio, log_ratio)
        return crop, out
    if isinstance(step, T.RandomHorizontalFlip):
        p = float(step.p)

        def flip(gen, rng, size, record):
            record["flip"] = flip_draw(gen, p)
        return flip, size
    if isinstance(step, RandAugment2):
        n, p, ops = step.n, step.p, tuple(step.ops)

        def augment(gen, rng, size, record):
            record["ops"] = randaugment2_draws(rng, n, p, ops)
        return augment, size
    if isinstance(step, _DRAW_FREE):
        return (lambda gen, rng, size, record: None), size
    if isinstance(step, _RESIZING):
        return (lambda gen, rng, size, record: None), _RESIZED
    raise ConfigError(f"the original's streams can be replayed for transforms made of RandomResizedCrop, "
                      f"RandomHorizontalFlip, RandAugment2, ToTensor and Normalize (Dassl's training transform); "
                      f"this one has {step!r}: use INPUT.TRANSFORMS from random_resized_crop, random_flip, "
                      f"randaugment2, normalize")


class AugmentDraws:
    """The draws of one training transform applied ``views`` times to an image (K_TRANSFORMS).

    Build it with :meth:`from_transform` from the transform the batches are made with: a
    ``torchvision`` ``Compose`` of the steps :func:`crop_draws`, :func:`flip_draw`,
    :func:`randaugment2_draws` replicate plus draw-free ``ToTensor`` / ``Normalize``, or an object
    with ``.transform`` (that Compose) and ``.k`` (the view count), as
    :class:`fastprompt.train.views.MultiView`.
    """

    def __init__(self, steps: Sequence, views: int = 1):
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"DATALOADER.K_TRANSFORMS must be an int >= 1, got {views!r}")
        self.views = views
        self.draws_python = any(isinstance(s, RandAugment2) for s in steps)
        self._replicas = []
        size: Optional[Size] = None  # None: the raw image's size
        for step in steps:
            replica, size = _step_replica(step, size)
            self._replicas.append((replica, size))
        self._sizes = [None] + [s for _, s in self._replicas[:-1]]  # the size each step sees

    @classmethod
    def from_transform(cls, transform, views: Optional[int] = None) -> "AugmentDraws":
        """The draws of ``transform`` (a Compose, or a MultiView-like ``.transform`` + ``.k``)."""
        if views is None and hasattr(transform, "transform") and hasattr(transform, "k"):
            transform, views = transform.transform, transform.k
        steps = getattr(transform, "transforms", None)
        if steps is None:
            steps = [transform]
        return cls(list(steps), 1 if views is None else views)

    def advance(self, gen: torch.Generator, rng: random.Random, size: Size) -> Tuple[ViewDraws, ...]:
        """Advance ``gen`` (torch stream) and ``rng`` (Python stream) past the ``views`` views of one
        image of raw ``size`` ``(width, height)``; what each view drew, in view order."""
        out = []
        for _ in range(self.views):
            record = {}
            for (replica, _), seen in zip(self._replicas, self._sizes):
                replica(gen, rng, size if seen is None else seen, record)
            out.append(ViewDraws(**record))
        return tuple(out)
