"""The frozen-feature cache: each image view through the frozen image tower once, not once per epoch.

The text-prompt methods (``learner.frozen_image_side``: CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP,
RPP with ``branches="text"``) never change their image features: the tower is frozen and
unprompted. When the view of every image is deterministic, its features are a constant of the run;
:class:`FeatureCache` computes them once (``learner.encode_image`` under the run's autocast, in
batches) and serves them as :class:`~fastprompt.learners.image_features.ImageFeatures`, which the
learners take in place of images. What remains of a training step is the text side, so an epoch
costs a small fraction of one that runs the image tower (``bench/data/bench_feature_cache.py``).

Deterministic views are

* evaluation (the test transform: resize, center crop, normalise);
* training with augmentation off (``INPUT.TRANSFORMS ['normalize']``);
* training on a fixed number of seeded augmented views per image
  (:class:`~fastprompt.features.fixed_views.FixedViews`, ``TRAIN.FEATURE_CACHE_VIEWS``): V views
  each computed once, each epoch choosing among them.

A dataset whose images come out differently under two seeds (random augmentation, not through
``FixedViews``) is refused with the alternatives: features computed once would silently freeze
one random crop per image, which is another training recipe.

Exactness: a cached feature is the one ``encode_image`` returns for that view, computed in another
batch; the loss, gradients and trained prompts agree with the uncached run's within float32
rounding (``FP32.parity``; tests/test_feature_cache.py trains both ways).

Tables are kept on the training device, per dataset, for the life of the cache, and with
``folder`` also on disk (:mod:`fastprompt.features.store`: keyed by the image tower's weights,
precision, transform, views and the image files), so later runs on the same images skip the
computation. Under torchrun each rank computes a slice of the views and the slices are gathered.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..data.order import SeededSamples
from ..learners.image_features import ImageFeatures
from .batches import CachedFeatureBatches
from .fixed_views import FixedViews
from .store import FeatureTable, disk_key, image_tower_fingerprint, load_table, save_table, table_path

__all__ = ["FeatureCache"]

logger = logging.getLogger("fastprompt")


class FeatureCache:
    """Frozen image features of ``learner`` per dataset, computed once.

    Args:
        learner: a learner with ``frozen_image_side`` (refused otherwise, with the reason).
        device: where images are encoded and the tables kept.
        folder: also keep tables on disk there (``None``: memory only).
        autocast: the run's autocast context factory (features are computed under it, as the
            uncached run computes them inside its step).
        batch_size: images per forward while filling. num_workers: image-loading workers.
        log: called with one line per table computed or loaded (default: the ``fastprompt`` logger).
    """

    def __init__(self, learner, device: torch.device, *, folder: Optional[str] = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 batch_size: int = 100, num_workers: int = 0, log: Optional[Callable[[str], None]] = None):
        if not getattr(learner, "frozen_image_side", False):
            raise ValueError(f"{type(learner).__name__} prompts the image tower, so its image features change with "
                             "every step and cannot be cached; the feature cache serves the text-prompt methods "
                             "(CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, RPP with branches='text')")
        self.learner, self.device, self.folder = learner, torch.device(device), folder
        self.autocast, self.batch_size, self.num_workers = autocast, int(batch_size), int(num_workers)
        self.log = log or logger.info
        self._tables: Dict[int, Tuple[Dataset, FeatureTable]] = {}
        self._tower_sha256: Optional[str] = None  # computed once, at the first disk look-up

    # ---- what callers use ------------------------------------------------------------------------
    def table(self, data: Dataset, name: str = "data") -> FeatureTable:
        """The :class:`FeatureTable` of ``data`` (computed, or loaded from disk, on first use)."""
        held = self._tables.get(id(data))
        if held is not None and held[0] is data:
            return held[1]
        table = self._load_or_compute(data, name)
        self._tables[id(data)] = (data, table)
        return table

    def train_batches(self, data: Dataset, batch_size: int, seed: int, rank: int = 0,
                      world: int = 1) -> CachedFeatureBatches:
        """The training batch source over ``data`` (a deterministic dataset, or :class:`FixedViews`
        with the run's ``seed``); its table is made at the first epoch."""
        if isinstance(data, FixedViews) and data.seed != int(seed):
            raise ValueError(f"the FixedViews were drawn with seed {data.seed} but the run's seed is {seed}: the cache "
                             "would pick other views than the run renders")
        views, k = (data.views, data.k) if isinstance(data, FixedViews) else (1, 1)
        return CachedFeatureBatches(lambda: self.table(data, "train"), len(data), views, k, batch_size, seed,
                                    rank, world)

    def eval_batches(self, data: Dataset, batch_size: int, rank: int = 0,
                     world: int = 1) -> Iterator[Tuple[ImageFeatures, torch.Tensor]]:
        """``(ImageFeatures [b, E], labels [b])`` over images ``rank, rank + world, ...`` of ``data`` in
        order, ``batch_size`` at a time, unreadable images left out: the batches of the trainer's
        evaluation loader, with features in place of images."""
        table = self.table(data, "eval")
        if table.features.shape[1] != 1:
            raise ValueError("evaluation reads one deterministic view per image; this table holds "
                             f"{table.features.shape[1]} views")
        index = torch.arange(rank, table.valid.shape[0], world, device=table.valid.device)
        index = index[table.valid[index]]
        for chunk in index.split(batch_size):
            yield ImageFeatures(table.features[chunk, 0]), table.labels[chunk]

    # ---- filling ---------------------------------------------------------------------------------
    def _load_or_compute(self, data: Dataset, name: str) -> FeatureTable:
        key = path = None
        if self.folder is not None:
            with self.autocast():
                dtype = torch.get_autocast_dtype(self.device.type) if torch.is_autocast_enabled(self.device.type) \
                    else None
            if self._tower_sha256 is None:
                self._tower_sha256 = image_tower_fingerprint(self.learner.vision_tower.visual)
            key = disk_key(data, self._tower_sha256, self.learner.config.frozen_image_precision, dtype)
            path = table_path(self.folder, key)
            table = load_table(path, key)
            # Every rank loads, or every rank computes its slice: a file that appeared between two
            # ranks' looks must not leave one rank waiting for the others' slices.
            if not all(distributed.all_gather_objects(table is not None)):
                table = None
            if table is not None:
                self.log(f"feature cache: {name} features of {table.features.shape[0]} images x "
                         f"{table.features.shape[1]} views loaded from {path}")
                return table.to(self.device)
        if not isinstance(data, FixedViews):
            _check_deterministic(data)
        t0 = time.perf_counter()
        table = self._compute(data)
        where = "memory" if path is None else path
        self.log(f"feature cache: {name} features of {table.features.shape[0]} images x {table.features.shape[1]} "
                 f"views computed in {time.perf_counter() - t0:.1f} s ({where})")
        if path is not None and distributed.is_main():
            save_table(path, table, key)
        return table

    def _compute(self, data: Dataset) -> FeatureTable:
        views = data.views if isinstance(data, FixedViews) else 1
        n = len(data)
        rank, world = distributed.world()
        pairs = [(i, v) for i in range(n) for v in range(views)][rank::world]
        loader = DataLoader(_ViewSamples(data, pairs), batch_size=self.batch_size, shuffle=False,
                            num_workers=self.num_workers, collate_fn=_collate)
        done: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (pair rows, features, labels)
        missing: List[int] = []
        was_training = self.learner.training
        self.learner.train(False)
        try:
            with torch.no_grad():
                for rows, images, labels, lost in loader:
                    missing.extend(lost)
                    if rows.numel():
                        with self.autocast():
                            features = self.learner.encode_image(images.to(self.device))
                        done.append((rows, features.detach().cpu(), labels))
        finally:
            self.learner.train(was_training)
        parts = distributed.all_gather_objects((pairs, done, missing)) if world > 1 else [(pairs, done, missing)]
        return _assemble(parts, n, views, self.device)


class _ViewSamples(Dataset):
    """``(row, sample)`` for row ``row`` of ``pairs`` (image, view): ``FixedViews.view`` or ``data[i]``."""

    def __init__(self, data: Dataset, pairs: List[Tuple[int, int]]):
        self.data, self.pairs = data, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, row: int):
        i, v = self.pairs[row]
        sample = self.data.view(v, i) if isinstance(self.data, FixedViews) else self.data[i]
        if sample is not None and sample[0].dim() != 3:
            raise ValueError(f"image {i} is a tensor of shape {tuple(sample[0].shape)}, not one view [C, H, W]: for "
                             "several views per sample give the single-view dataset wrapped in "
                             "FixedViews(dataset, seed, views, k=K)")
        return row, sample


def _collate(batch):
    kept = [(row, s) for row, s in batch if s is not None]
    lost = [row for row, s in batch if s is None]
    rows = torch.tensor([row for row, _ in kept], dtype=torch.long)
    images = torch.stack([s[0] for _, s in kept]) if kept else torch.empty(0)
    labels = torch.tensor([int(s[1]) for _, s in kept], dtype=torch.long)
    return rows, images, labels, lost


def _assemble(parts, n: int, views: int, device: torch.device) -> FeatureTable:
    """One table from every rank's ``(pairs, [(rows, features, labels)], missing rows)``."""
    width = dtype = None
    for _, done, _ in parts:
        for _, features, _ in done:
            width, dtype = features.shape[1], features.dtype
    if width is None:
        raise ValueError(f"none of the {n} images could be read: nothing to cache")
    features = torch.zeros(n, views, width, dtype=dtype)
    valid = torch.ones(n, dtype=torch.bool)
    labels = torch.full((n,), -1, dtype=torch.long)
    for pairs, done, missing in parts:
        for rows, f, y in done:
            image = torch.tensor([pairs[r][0] for r in rows.tolist()], dtype=torch.long)
            view = torch.tensor([pairs[r][1] for r in rows.tolist()], dtype=torch.long)
            features[image, view] = f
            labels[image] = y
        for r in missing:
            valid[pairs[r][0]] = False
    labels[~valid] = -1
    return FeatureTable(features, valid, labels).to(device)


def _check_deterministic(data: Dataset) -> None:
    """Raise a ``ValueError`` when an image of ``data`` comes out differently under two seeds."""
    a, b = SeededSamples(data, 0), SeededSamples(data, 1)
    for i in range(min(len(data), 3)):
        first, second = a[(0, i)], b[(1, i)]
        if first is None or second is None:
            continue
        if not torch.equal(torch.as_tensor(first[0]), torch.as_tensor(second[0])):
            raise ValueError(
                f"image {i} comes out differently under two seeds: the dataset's transform is random augmentation, "
                "and features computed once would freeze one random view per image (another recipe). Turn "
                "augmentation off (INPUT.TRANSFORMS \"['normalize']\"), precompute a fixed number of augmented views "
                "(TRAIN.FEATURE_CACHE_VIEWS V, fastprompt.features.fixed_views.FixedViews), or cache the evaluation "
                "splits only (TRAIN.FEATURE_CACHE eval)")
        return
