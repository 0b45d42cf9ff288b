"""Where the trainer's batches come from: the original's loader replayed, a map-style dataset in a
seeded order, or a stream.

The :class:`~fastprompt.train.trainer.Trainer` asks a batch source for four things:

* ``len(source)``: batches per epoch for this process (the same on every rank);
* ``source.set_position(epoch, start)``: the next batch to give is batch ``start`` of ``epoch``;
* ``iter(source)``: the batches ``start, start + 1, ...`` of that epoch, each ``(images, labels)``
  (or ``None`` when every image of it was unreadable);
* ``source.state_dict()`` / ``source.load_state_dict(state)``: what, besides ``(epoch, start)``,
  is needed to continue exactly where a saved run stopped (``None``: nothing). Under torchrun the
  trainer gathers every rank's state into the list that ``load_state_dict`` receives back.

:class:`~fastprompt.replay.source.OriginalBatches` is the source of a fine-tuning run that starts
from the original's initial prompts (:func:`training_batches` decides): the original's batches and
augmentations, its streams' epoch start in the state. :class:`MapBatches` is fastprompt's own
order, for RPP (no original), ``DATALOADER.OWN_ORDER True``, fixed views
(``TRAIN.FEATURE_CACHE_VIEWS``) and a transform the replay cannot follow (a map-style dataset:
the order is a pure function of the seed and the epoch, so ``(epoch, start)`` is the whole
position); a run whose training images are all cached features (``TRAIN.FEATURE_CACHE all``, no
augmentation) keeps the cache's own order;
:class:`fastprompt.data.shard_stream.ShardBatchStream` streams WebDataset shards and keeps the
per-worker stream positions in its state.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.images import skip_collate
from ..data.order import EpochBatches, SeededSamples
from ..errors import ConfigError

__all__ = ["MapBatches", "training_batches"]


def training_batches(cfg: Dict[str, Any], learner, items, train_tf, settings, torch_state: torch.Tensor, *,
                     fewshot_drawn: bool, rank: int = 0, world: int = 1, feature_mode: str = "",
                     fixed_views: int = 0) -> Tuple[Optional[Any], str]:
    """``(source, order)``: the run's batch source and, for its log, which order it trains in.

    ``source`` is an :class:`~fastprompt.replay.source.OriginalBatches` over ``items`` (the
    training items in the original's dataset order) when the run replays the original's streams,
    or None for the trainer's default (:class:`MapBatches`) and the feature cache's own order.
    ``torch_state``: torch's global generator right after the learner was built (where the
    original's ``build_model`` leaves G); ``fewshot_drawn``: the few-shot subset was drawn (not
    all images, not the original's pickle); ``feature_mode`` / ``fixed_views``:
    ``TRAIN.FEATURE_CACHE`` / ``TRAIN.FEATURE_CACHE_VIEWS``. Reads every training image's header
    once, so an unreadable image is a ``DataError`` naming it.
    """
    from ..replay import (SAMPLER_DISTRIBUTED, SAMPLERS, AugmentDraws, OriginalBatches, original_streams_start,
                          step_draws_of)

    if feature_mode == "all":
        return None, "the feature cache's own order (cached features: no augmentation to replay)"
    if learner.initial_prompts != "original":
        return None, f"fastprompt's own per-(seed, epoch) order (initial prompts: {learner.initial_prompts})"
    loader = cfg["DATALOADER"]
    if loader["OWN_ORDER"]:
        return None, "fastprompt's own per-(seed, epoch) order (DATALOADER.OWN_ORDER True)"
    if fixed_views:
        return None, "fastprompt's own per-(seed, epoch) order (fixed views: TRAIN.FEATURE_CACHE_VIEWS)"
    sampler = loader["TRAIN_X"]["TORCH_SAMPLER"]
    if sampler not in SAMPLERS:
        raise ConfigError(f"DATALOADER.TRAIN_X.TORCH_SAMPLER must be one of {list(SAMPLERS)} (the torch whose "
                          f"RandomSampler the original ran on), got {sampler!r}")
    if loader["TRAIN_X"]["SAMPLER"] == "DistributedSampler":  # POMP's configs: the order of one process
        sampler = SAMPLER_DISTRIBUTED
    try:
        draws = AugmentDraws.from_transform(train_tf)
    except ConfigError as exc:
        return None, f"fastprompt's own per-(seed, epoch) order (the original's draws cannot be replayed: {exc})"
    original_workers = int(loader["NUM_WORKERS"])
    start = original_streams_start(torch_state, int(cfg["SEED"]), fewshot_drawn, original_workers, draws)
    step_draws = step_draws_of(learner, items, world)
    generator = None
    if step_draws is not None:
        generator = learner.step_generator = torch.Generator()
    source = OriginalBatches(items, train_tf, start, settings.batch_size * world,
                             original_workers=original_workers, workers=settings.num_workers, rank=rank, world=world,
                             sampler=sampler, step_draws=step_draws, step_generator=generator,
                             evaluation_draw=settings.final_model == "best_val" and not settings.no_test)
    kind = "DistributedSampler, one process" if sampler == SAMPLER_DISTRIBUTED else f"RandomSampler as in {sampler}"
    return source, (f"the original's (Dassl's {kind}, the streams of its "
                    f"DATALOADER.NUM_WORKERS {original_workers}; {settings.num_workers} loader processes here"
                    f"{', per-step draws on its stream' if step_draws is not None else ''})")


class MapBatches:
    """Batches of a map-style dataset: :class:`EpochBatches` order, :class:`SeededSamples` augmentation.

    Args:
        data: a dataset of ``(image tensor, label)``.
        batch_size: per process. seed: the run seed (order and augmentation).
        rank / world: this process and the process count (each global batch split into equal slices).
        num_workers / pin_memory: DataLoader settings (workers persist across epochs).
    """

    def __init__(self, data: Dataset, batch_size: int, seed: int, rank: int = 0, world: int = 1, *,
                 num_workers: int = 0, pin_memory: bool = False):
        self.order = EpochBatches(len(data), batch_size, seed, rank, world)
        self.loader = DataLoader(SeededSamples(data, seed), batch_sampler=self.order, num_workers=num_workers,
                                 collate_fn=skip_collate, pin_memory=pin_memory,
                                 persistent_workers=num_workers > 0,
                                 # its own generator: starting an epoch must not draw from the global RNG
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.order)

    def set_position(self, epoch: int, start: int) -> None:
        self.order.epoch, self.order.start = epoch, start

    def __iter__(self):
        return iter(self.loader)

    def state_dict(self) -> Optional[Any]:
        return None  # the order is a function of (seed, epoch): the trainer's position says it all

    def load_state_dict(self, state: Optional[Any]) -> None:
        if state is not None:
            raise ValueError("this run's state holds a stream position, but the run reads a map-style dataset; "
                             "resume it with the data source it was started with (DATASET.SHARDS)")
