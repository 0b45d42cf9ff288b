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
is a :class:`~fastprompt.data.items.DataError`. :meth:`ShardDataset.raw_samples` and
:meth:`ShardDataset.decode` are the two halves of that stream (reading, then decoding), for
:class:`fastprompt.data.shard_stream.ShardBatchStream`, which trains from shards with a fixed
epoch length and an exact resume.
"""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import re
import tarfile
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DataError
from .images import DECODE_ERRORS
from .imagenet21k_classes import ClassTable, read_class_table

__all__ = ["ShardDataset", "open_shards", "check_shards", "count_samples", "IMAGE_KEYS"]

logger = logging.getLogger("fastprompt.data")
IMAGE_KEYS = ("jpg", "jpeg", "webp", "png")


def _webdataset():
    try:
        import webdataset
    except ImportError:
        raise DataError("reading WebDataset shards needs the webdataset package: pip install webdataset") from None
    return webdataset


def open_shards(source: Union[str, Sequence[str]], classes: Optional[str] = None,
                shard_check: str = "error") -> Tuple[List[str], ClassTable, Optional[int]]:
    """``(shard paths, class table, total samples or None)`` of a shard set.

    ``source``: a folder (its ``shards.json`` order, else its sorted ``*.tar``), a brace pattern
    (``/d/shard-{000000..000099}.tar``), a glob, or a list of paths. ``classes``: the class table
    (``classes.json`` or its folder); default: the one in the shards' folder.

    With a ``shards.json`` index every shard is checked against it (:func:`check_shards`): a shard
    cut short at a tar header boundary reads as a valid, smaller tar, so without the check its lost
    samples would vanish without a skip. ``shard_check``: ``"error"`` (a :class:`DataError`
    naming the shards) or ``"warn"`` (a warning; the run goes on with what the shards hold).
    """
    if shard_check not in ("error", "warn"):
        raise DataError(f"shard_check must be 'error' or 'warn', got {shard_check!r}")
    total, entries = None, None
    if isinstance(source, str) and os.path.isdir(source):
        folder = os.path.abspath(source)
        index = os.path.join(folder, "shards.json")
        if os.path.isfile(index):
            entries, total = _read_index(index)
            paths = [os.path.join(folder, e["file"]) for e in entries]
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
    if entries is not None:
        check_shards(folder, entries, shard_check)
    table = read_class_table(classes or folder)
    return paths, table, total


def _read_index(index: str) -> Tuple[List[dict], int]:
    """``(shard entries, total samples)`` of a ``shards.json``; a ``DataError`` naming what is wrong."""
    try:
        with open(index, "r", encoding="utf-8") as f:
            meta = json.load(f)
        entries = [{"file": str(s["file"]), "samples": int(s["samples"]),
                    "bytes": None if s.get("bytes") is None else int(s["bytes"])} for s in meta["shards"]]
        return entries, int(meta["samples"])
    except OSError as exc:
        raise DataError(f"cannot read {index}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{index} is not a fastprompt shard index (a 'samples' count and a 'shards' list of "
                        f"{{'file', 'samples'}}; {type(exc).__name__}: {exc}); rerun `fastprompt data pack`") from None


def check_shards(folder: str, entries: Sequence[dict], shard_check: str = "error") -> List[str]:
    """The shards that differ from their ``shards.json`` entries (``"<file>: n samples, m when
    packed"``). A shard of the size it was packed at is taken as written (one ``stat``: a shard cut
    short by an interrupted copy has another size); another, or one of a pack that did not record
    sizes, is counted from its tar headers (:func:`count_samples`), and any difference is reported.
    Damaged members inside a whole shard are the reader's to skip and count."""
    bad = []
    for entry in entries:
        path = os.path.join(folder, entry["file"])
        if entry["bytes"] is not None and os.path.getsize(path) == entry["bytes"]:
            continue
        found = count_samples([path])
        if found != entry["samples"] or entry["bytes"] is not None:
            bad.append(f"{entry['file']}: {found} samples, {entry['samples']} when packed"
                       + (f" ({os.path.getsize(path)} bytes, {entry['bytes']} when packed)" if entry["bytes"] else ""))
    if bad:
        message = (f"{len(bad)} of the {len(entries)} shards in {folder} differ from shards.json (cut short or "
                   f"replaced): {'; '.join(bad[:3])}{'; ...' if len(bad) > 3 else ''}. Delete them and rerun "
                   "`fastprompt data pack` with the same arguments to write them again")
        if shard_check == "error":
            raise DataError(message)
        logger.warning("fastprompt: %s", message)
    return bad


def count_samples(paths: Sequence[str]) -> int:
    """Raw samples in the shards at ``paths``, as webdataset groups them (consecutive regular
    members sharing a key, ``__meta__`` members left out), from the tar headers alone: member
    data is seeked over, not read. For shard sets without a ``shards.json`` index. A shard whose
    headers break off midway counts the samples before the break (with a warning), as reading it
    would yield them."""
    base_plus_ext = _webdataset().tariterators.base_plus_ext
    total = 0
    for path in paths:
        last = None
        try:
            with tarfile.open(path, "r:") as tar:
                for member in tar:
                    name = member.name
                    if not member.isreg() or re.match(r"__[^/]*__($|/)", name):
                        continue
                    key, _ = base_plus_ext(name)
                    if key is not None and key != last:
                        total, last = total + 1, key
        except (tarfile.TarError, OSError) as exc:
            logger.warning("fastprompt: counting %s stopped at a damaged header (%s: %s)", path,
                           type(exc).__name__, exc)
    return total


class ShardDataset(IterableDataset):
    """``(image, label)`` streamed from WebDataset shards (see the module docstring).

    Args:
        shards: as :func:`open_shards` ``source``.
        transform: applied to the RGB PIL image (e.g. :func:`fastprompt.data.train_transform`).
        classes: class table path (default: next to the shards).
        shuffle_shards: shuffle the shard order each epoch with ``seed + epoch``.
        shuffle_buffer: samples held in a seeded shuffle buffer (0: stream order).
        split_by_node: give rank ``r`` of ``W`` the shards ``r::W`` when ``torch.distributed`` runs.
        shard_check: what a shard that differs from ``shards.json`` is: ``"error"`` or ``"warn"``
            (:func:`open_shards`).
    """

    def __init__(self, shards: Union[str, Sequence[str]], transform: Optional[Callable] = None, *,
                 classes: Optional[str] = None, shuffle_shards: bool = False, shuffle_buffer: int = 0, seed: int = 0,
                 split_by_node: bool = True, shard_check: str = "error"):
        super().__init__()
        self.shards, self.class_table, self.num_samples = open_shards(shards, classes, shard_check)
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

    def shard_order(self, epoch: Optional[int] = None, *, rank: Optional[int] = None, world: Optional[int] = None,
                    worker: Optional[int] = None, num_workers: Optional[int] = None) -> List[str]:
        """One rank's and worker's shards in one epoch: the epoch's order (shuffled from
        ``seed + epoch`` with ``shuffle_shards``), then ``[rank::world]``, then ``[worker::num_workers]``.

        Left as ``None``: the epoch of :meth:`set_epoch`; the ``torch.distributed`` rank and world
        size (when ``split_by_node`` and initialised, else all shards); the calling DataLoader
        worker (all of the rank's shards in the main process).
        """
        if (rank is None) != (world is None) or (worker is None) != (num_workers is None):
            raise ValueError(f"give rank with world and worker with num_workers, or neither; got rank={rank}, "
                             f"world={world}, worker={worker}, num_workers={num_workers}")
        epoch = self.epoch if epoch is None else int(epoch)
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(self.seed + epoch).shuffle(shards)
        dist = torch.distributed
        if rank is None and self.split_by_node and dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        if rank is not None:
            shards = shards[rank::world]
        if worker is None:
            info = get_worker_info()
            worker, num_workers = (None, None) if info is None else (info.id, info.num_workers)
        if worker is not None:
            shards = shards[worker::num_workers]
        return shards

    def decode(self, sample: dict, transform_seed: Optional[int] = None):
        """``(transformed image, label)`` of one raw sample, or ``None`` when it is skipped (counted).

        ``transform_seed``: run the transform under torch and Python ``random`` seeded with it
        (the callers' RNG states are restored), so a random augmentation of the sample does not
        depend on which process decodes it or on where a run resumed.
        """
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
        except DECODE_ERRORS as exc:
            self._count_skip(f"{where}.{key} ({type(exc).__name__}: {exc})")
            return None
        if self.transform is None:
            return image, label
        if transform_seed is None:
            return self.transform(image), label
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(transform_seed)
            random.seed(transform_seed)
            try:
                return self.transform(image), label
            finally:
                random.setstate(py_state)

    def tar_error(self, exc: Exception) -> bool:
        """The default damaged-member handler of :meth:`raw_samples`: count, warn, go on (``True``)."""
        self._count_skip(f"a damaged shard member ({type(exc).__name__}: {exc})")
        return True

    def raw_samples(self, epoch: Optional[int] = None, *, rank: Optional[int] = None, world: Optional[int] = None,
                    worker: Optional[int] = None, num_workers: Optional[int] = None,
                    handler: Optional[Callable[[Exception], bool]] = None) -> Iterator[dict]:
        """Undecoded samples (webdataset dicts: ``__key__``, ``__url__``, one entry per member) of
        :meth:`shard_order`'s shards (same arguments), through the shuffle buffer: a pure function
        of the shard files and the arguments. ``handler``: called with each damaged tar member's
        exception instead of :meth:`tar_error`; it returns ``True`` to go on."""
        epoch = self.epoch if epoch is None else int(epoch)
        shards = self.shard_order(epoch, rank=rank, world=world, worker=worker, num_workers=num_workers)
        if worker is None:
            worker = getattr(get_worker_info(), "id", 0)
        wds = _webdataset()
        pipeline = wds.DataPipeline(wds.SimpleShardList(shards),
                                    wds.tarfile_to_samples(handler=handler or self.tar_error))
        return self._shuffled(iter(pipeline), epoch, worker)

    def _shuffled(self, samples: Iterator[dict], epoch: int, worker: int) -> Iterator[dict]:
        """``samples`` through a shuffle buffer of raw (undecoded) samples seeded by (seed, epoch, worker)."""
        if self.shuffle_buffer <= 1:
            yield from samples
            return
        rng = random.Random(f"{self.seed}-{epoch}-{worker}")
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
        for sample in self.raw_samples():
            out = self.decode(sample)
            if out is not None:
                yield out
