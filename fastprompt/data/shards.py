"""WebDataset tar shards (webdataset/webdataset) of labelled images, with their class table.

A shard set is a folder of ``*.tar`` shards, a ``classes.json`` class table
(:mod:`fastprompt.data.imagenet21k_classes`) and, when written by ``fastprompt data pack``, a
``shards.json`` index (shard order and sample counts). Each sample is ``<key>.jpg`` (or ``.jpeg``,
``.webp``, ``.png``) and ``<key>.cls`` (integer label as text), the convention of webdataset's own
examples and of img2dataset-style ImageNet shards; other members are ignored.

:class:`ShardDataset` streams ``(image, label)``: shards in index order, or shuffled per epoch
from ``seed`` (:meth:`ShardDataset.set_epoch`), split by rank (``torch.distributed``) and by
DataLoader worker, then optionally a seeded shuffle buffer. A sample that does not decode, has
no image or no readable ``cls``, or a damaged tar member is skipped with a warning and counted
(:attr:`ShardDataset.skipped`, shared with worker processes); a label outside the class table
is a :class:`~fastprompt.data.items.DataError`.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .imagenet21k_classes import ClassTable, read_class_table
from .items import DataError

__all__ = ["ShardDataset", "open_shards", "IMAGE_KEYS"]

logger = logging.getLogger("fastprompt.data")
IMAGE_KEYS = ("jpg", "jpeg", "webp", "png")


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise DataError("reading WebDataset shards needs the webdataset package: pip install webdataset") from None
    return webdataset


def open_shards(source: Union[str, Sequence[str]], classes: Optional[str] = None) -> Tuple[List[str], ClassTable, Optional[int]]:
    """``(shard paths, class table, total samples or None)`` of a shard set.

    ``source``: a folder (its ``shards.json`` order, else its sorted ``*.tar``), a brace pattern
    (``/d/shard-{000000..000099}.tar``), a glob, or a list of paths. ``classes``: the class table
    (``classes.json`` or its folder); default: the one in the shards' folder.
    """
    total = None
    if isinstance(source, str) and os.path.isdir(source):
        folder = os.path.abspath(source)
        index = os.path.join(folder, "shards.json")
        if os.path.isfile(index):
            with open(index, "r", encoding="utf-8") as f:
                meta = json.load(f)
            paths = [os.path.join(folder, s["file"]) for s in meta["shards"]]
            total = int(meta["samples"])
        else:
            paths = sorted(glob.glob(os.path.join(folder, "*.tar")))
    elif isinstance(source, str):
        import braceexpand

        paths = sorted(p for pat in braceexpand.braceexpand(source) for p in (glob.glob(pat) or [pat]))
        folder = os.path.dirname(os.path.abspath(paths[0])) if paths else os.path.dirname(source)
    else:
        paths = [os.path.abspath(p) for p in source]
        folder = os.path.dirname(paths[0]) if paths else "."
    if not paths:
        raise DataError(f"no .tar shards at {source}")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{len(missing)} shard(s) not found, e.g. {missing[0]}"
                        + (" (an unfinished `fastprompt data pack`? rerun it to finish)" if total is not None else ""))
    table = read_class_table(classes or folder)
    return paths, table, total


class ShardDataset(IterableDataset):
    """``(image, label)`` streamed from WebDataset shards (see the module docstring).

    Args:
        shards: as :func:`open_shards` ``source``.
        transform: applied to the RGB PIL image (e.g. :func:`fastprompt.data.train_transform`).
        classes: class table path (default: next to the shards).
        shuffle_shards: shuffle the shard order each epoch with ``seed + epoch``.
        shuffle_buffer: samples held in a seeded shuffle buffer (0: stream order).
        split_by_node: give rank ``r`` of ``W`` the shards ``r::W`` when ``torch.distributed`` runs.
    """

    def __init__(self, shards: Union[str, Sequence[str]], transform: Optional[Callable] = None, *,
                 classes: Optional[str] = None, shuffle_shards: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 split_by_node: bool = True):
        super().__init__()
        self.shards, self.class_table, self.num_samples = open_shards(shards, classes)
        self.transform = transform
        self.shuffle_shards, self.shuffle_buffer, self.seed = shuffle_shards, int(shuffle_buffer), int(seed)
        self.split_by_node = split_by_node
        self.epoch = 0
        self._skipped = torch.zeros(1 + (os.cpu_count() or 1), dtype=torch.int64).share_memory_()

    @property
    def classnames(self) -> List[str]:
        return list(self.class_table.names)

    @property
    def skipped(self) -> int:
        """Samples skipped so far (undecodable, incomplete, damaged tar members), all workers together."""
        return int(self._skipped.sum())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _count_skip(self, what: str) -> None:
        info = get_worker_info()
        self._skipped[0 if info is None else 1 + info.id % (len(self._skipped) - 1)] += 1
        logger.warning("fastprompt: skipping %s", what)

    def shard_order(self) -> List[str]:
        """This rank's and worker's shards for the current epoch."""
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + self.epoch).shuffle(shards)
        if self.split_by_node and torch.distributed.is_available() and torch.distributed.is_initialized():
            shards = shards[torch.distributed.get_rank()::torch.distributed.get_world_size()]
        info = get_worker_info()
        if info is not None:
            shards = shards[info.id::info.num_workers]
        return shards

    def _decode(self, sample: dict):
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None or "cls" not in sample:
            self._count_skip(f"{where} (no {'image' if key is None else 'cls'} member)")
            return None
        try:
            label = int(sample["cls"].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            self._count_skip(f"{where} (unreadable cls {sample['cls'][:20]!r})")
            return None
        if not 0 <= label < len(self.class_table):
            raise DataError(f"{where} has label {label}, outside the class table's 0..{len(self.class_table) - 1}")
        from PIL import Image

        try:
            with Image.open(io.BytesIO(sample[key])) as img:
                image = img.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            self._count_skip(f"{where}.{key} ({type(exc).__name__}: {exc})")
            return None
        return (self.transform(image) if self.transform is not None else image), label

    def _tar_error(self, exc: Exception) -> bool:
        self._count_skip(f"a damaged shard member ({type(exc).__name__}: {exc})")
        return True

    def _samples(self) -> Iterator[dict]:
        wds = _webdataset()
        pipeline = wds.DataPipeline(wds.SimpleShardList(self.shard_order()),
                                    wds.tarfile_to_samples(handler=self._tar_error))
        return iter(pipeline)

    def _shuffled(self, samples: Iterator[dict]) -> Iterator[dict]:
        """``samples`` through a seeded shuffle buffer of raw (undecoded) samples."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = random.Random(f"{self.seed}-{self.epoch}-{getattr(get_worker_info(), 'id', 0)}")
        buffer = []
        for sample in samples:
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                j = rng.randrange(len(buffer))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self):
        for sample in self._shuffled(self._samples()):
            out = self._decode(sample)
            if out is not None:
                yield out
