"""A ``torch.utils.data.Dataset`` over loaded items: PIL decode, transform, bad images skipped.

Images are opened with PIL and converted to RGB, as Dassl's ``read_image`` does
(KaiyangZhou/Dassl.pytorch ``dassl/utils/tools.py``). A file that cannot be decoded (corrupt,
truncated, not an image, gone) is skipped with a warning naming it and counted in
:attr:`ImageDataset.skipped`, a counter shared with DataLoader worker processes, so a trainer
can report it; the run goes on. (The counter is a small shared-memory tensor with one slot per
worker, so it works with any multiprocessing start method.) With ``on_error="skip"`` the sample comes back as ``None`` and
:func:`skip_collate` drops it from the batch; ``on_error="replace"`` returns the next decodable
item instead (the batch keeps its size); ``on_error="raise"`` re-raises.

``draft_size`` is the fast path for evaluation: JPEG files are decoded at a reduced scale
(PIL's ``Image.draft``, DCT scaling by 1/2, 1/4 or 1/8) while the shorter side stays at least
``draft_size``, before the transform resizes. It saves most of the decode time on large photos
but is not bit-identical to a full decode, so it is off by default.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import default_collate, get_worker_info

from .items import Item

__all__ = ["ImageDataset", "skip_collate", "load_image", "make_loader", "DECODE_ERRORS"]

logger = logging.getLogger("fastprompt.data")
# What PIL raises for a file that is not a readable image (corrupt, truncated, gone, too large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: str, draft_size: Optional[int] = None) -> Image.Image:
    """The RGB image at ``path``, decoded at reduced scale when ``draft_size`` allows (JPEG)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        if draft_size and img.format == "JPEG":
            w, h = img.size
            short = min(w, h)
            if short >= 2 * draft_size:
                f_ = draft_size / short
                img.draft("RGB", (max(1, int(w * f_ + 0.999)), max(1, int(h * f_ + 0.999))))
        return img.convert("RGB")


class ImageDataset(TorchDataset):
    """``(image_tensor, label)`` per item; see the module docstring for errors and the fast path."""

    def __init__(self, items: Sequence[Item], transform: Optional[Callable] = None, *, on_error: str = "skip",
                 draft_size: Optional[int] = None):
        if on_error not in ("skip", "replace", "raise"):
            raise ValueError(f"on_error must be skip, replace or raise, got {on_error!r}")
        self.items = list(items)
        self.transform = transform
        self.on_error = on_error
        self.draft_size = draft_size
        # slot 0: the main process; slot 1 + worker id (modulo) for DataLoader workers
        self._skipped = torch.zeros(1 + (os.cpu_count() or 1), dtype=torch.int64).share_memory_()

    @property
    def skipped(self) -> int:
        """How many decode failures there have been so far (all workers together)."""
        return int(self._skipped.sum())

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, index: int):
        item = self.items[index]
        try:
            img = load_image(item.path, self.draft_size)
        except DECODE_ERRORS as exc:
            if self.on_error == "raise":
                raise
            info = get_worker_info()
            self._skipped[0 if info is None else 1 + info.id % (len(self._skipped) - 1)] += 1
            logger.warning("fastprompt: skipping unreadable image %s (%s: %s)", item.path, type(exc).__name__, exc)
            return None
        if self.transform is not None:
            img = self.transform(img)
        return img, item.label

    def __getitem__(self, index: int):
        sample = self._load(index)
        if sample is None and self.on_error == "replace":
            n = len(self.items)
            for step in range(1, n):
                sample = self._load((index + step) % n)
                if sample is not None:
                    break
        return sample


def skip_collate(batch):
    """``default_collate`` of the samples that are not ``None``; ``None`` if none is left."""
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


def make_loader(dataset: ImageDataset, batch_size: int, shuffle: bool, num_workers: int = 0,
                seed: Optional[int] = None, drop_last: Optional[bool] = None, **kwargs) -> DataLoader:
    """A DataLoader over ``dataset`` with :func:`skip_collate`; ``drop_last`` defaults to Dassl's
    rule (training drops the last partial batch only when there is at least one full batch)."""
    if drop_last is None:
        drop_last = shuffle and len(dataset) >= batch_size
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, collate_fn=skip_collate, generator=gen,
                      persistent_workers=num_workers > 0, **kwargs)

