"""Base/new class split of the base-to-novel protocol.

As CoOp's ``OxfordPets.subsample_classes`` (KaiyangZhou/CoOp ``datasets/oxford_pets.py``; used
by every dataset, CoCoOp, Zhou et al. CVPR 2022): the labels present in the *first* list
(train), sorted; ``m = ceil(n / 2)``; ``base`` keeps the first ``m`` labels and ``new`` the rest;
every list is filtered to the kept labels, which are renumbered ``0..`` in sorted order.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

from ..errors import DataError
from .items import Item

__all__ = ["SUBSAMPLE_CHOICES", "check_subsample", "subsample_classes"]

SUBSAMPLE_CHOICES = ("all", "base", "new")


def check_subsample(subsample) -> str:
    if subsample not in SUBSAMPLE_CHOICES:
        raise DataError(f"subsample must be one of {', '.join(SUBSAMPLE_CHOICES)}, got {subsample!r}")
    return subsample


def subsample_classes(*lists: Sequence[Item], subsample: str = "all") -> Tuple[List[Item], ...]:
    """``lists`` restricted to the base or new classes (relabelled), or unchanged for ``all``."""
    check_subsample(subsample)
    if subsample == "all" or not lists:
        return tuple(list(x) for x in lists)
    labels = sorted({item.label for item in lists[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {old: new for new, old in enumerate(selected)}
    return tuple([Item(it.path, relabel[it.label], it.classname) for it in x if it.label in relabel]
                 for x in lists)
