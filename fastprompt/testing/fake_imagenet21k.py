"""Small generated ImageNet-21K-P trees, for tests and benchmarks.

Class folders are real wnids (the first ones of timm's winter-21 table by default), so the class
universes and names of :mod:`fastprompt.data.imagenet21k_classes` apply to them. Images are tiny
JPEGs whose colour encodes the class; ``corrupt`` names ``(wnid, index)`` files written as junk.
"""
from __future__ import annotations

import os
import random
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ..data.imagenet21k import DATASET_FOLDER, SPLIT_FOLDERS
from ..data.imagenet21k_classes import universe_wnids
from .fake_trees import tiny_jpeg

__all__ = ["make_imagenet21k", "CORRUPT_BYTES"]

CORRUPT_BYTES = b"\xff\xd8\xff\xe0 not really a jpeg"


def make_imagenet21k(root: str, n_classes: int, per_class: Union[int, Sequence[int]], val_per_class: int = 1,
                     wnids: Optional[Sequence[str]] = None, corrupt: Iterable[Tuple[str, int]] = (),
                     seed: int = 0) -> List[str]:
    """``root/imagenet21k_resized/imagenet21k_{train,val}/<wnid>/<wnid>_<i>.JPEG``; returns the wnids.

    ``per_class`` is an int or one count per class; files are created in a shuffled order so that
    the listing order is not the sorted order.
    """
    wnids = list(wnids) if wnids is not None else list(universe_wnids("winter21")[:n_classes])
    sizes = [per_class] * len(wnids) if isinstance(per_class, int) else list(per_class)
    bad = set(corrupt)
    rng = random.Random(seed)
    base = os.path.join(root, DATASET_FOLDER)
    for c, wnid in enumerate(wnids):
        image = tiny_jpeg(8, ((37 * c) % 256, (91 * c) % 256, (151 * c) % 256))
        for split, count in (("train", sizes[c]), ("val", val_per_class)):
            folder = os.path.join(base, SPLIT_FOLDERS[split], wnid)
            os.makedirs(folder, exist_ok=True)
            order = list(range(count))
            rng.shuffle(order)
            for i in order:
                data = CORRUPT_BYTES if split == "train" and (wnid, i) in bad else image
                with open(os.path.join(folder, f"{wnid}_{i}.JPEG"), "wb") as f:
                    f.write(data)
    return wnids
