"""One epoch of an original's training loader, planned: its batches and every stream position.

An original (Dassl's ``TrainerX.run_epoch``, KaiyangZhou/Dassl.pytorch ``dassl/engine/trainer.py``)
iterates ``DataLoader(dataset, batch_size, sampler=RandomSampler(dataset), num_workers=N,
drop_last=len(dataset) >= batch_size)`` once per epoch (``dassl/data/data_manager.py``). From the
global torch stream G that costs, in this order (torch 1.9 - 2.x, ``torch/utils/data``):

1. ``iter(loader)``: the iterator's ``_base_seed``, one int64 ``random_()``;
2. ``RandomSampler.__iter__``: a seed, one int64 ``random_()``, for a private generator that draws
   ``randperm(n)`` (:data:`SAMPLER_SEEDED`). torch 1.7 - 1.8 drew the seed into a generator it did
   not use and took ``randperm(n)`` from G itself (pytorch issue #52568; :data:`SAMPLER_GLOBAL`);
3. the augmentations, per batch, per sample in sampler order, per view (:mod:`.draw_counts`):
   with ``N = 0`` from G and the main process's Python ``random`` P; with ``N > 0`` batch ``b``
   goes to worker ``b % N``, whose streams start at ``torch.manual_seed(base_seed + k)`` and
   ``random.seed(base_seed + k)`` and run through its batches in order (G is not touched);
4. the trainer's own per-step draws on G, after batch ``b`` is loaded and before batch ``b + 1``
   (``step_draws``: POMP's negative classes, SoftCPT's class sampling);
5. with ``TEST.FINAL_MODEL best_val`` the validation loader's ``iter`` after every epoch: one more
   base seed (``evaluation_draw``).

:class:`OriginalEpochPlan` replays all of it on private generators from the streams at the start
of the epoch, given only each item's raw image size: the batches (item indices in order), the
augmentation streams at the start of every batch (and of every rank's slice of it), the G state
at each step's draws, and the streams at the end of the epoch (the next epoch's start). A worker
that installs a batch's start streams and runs the real transforms on the real images gets the
original's pixels by construction (:class:`fastprompt.replay.batches.ReplayedBatches`).

Several processes: every rank computes the same plan and takes slice ``rank`` of each global
batch (``slices = world``), so N processes train on the one-process original's batches.

The originals' own RNG consumers are listed, with file and line, in the research note of issue 23
(Dassl pipeline, per-method step draws); CUDA generators are never involved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError, DataError
from .draw_counts import AugmentDraws, Size, ViewDraws
from .streams import Streams, generator_at, random_at

__all__ = ["SAMPLER_SEEDED", "SAMPLER_GLOBAL", "SAMPLERS", "SAMPLER_DISTRIBUTED", "StepDraws", "PlannedBatch", "BatchKey",
           "OriginalEpochPlan", "dassl_drop_last", "pomp_negative_draws", "softcpt_class_sample_draws"]

SAMPLER_SEEDED = "torch>=1.9"  # RandomSampler: seed from G, permutation from a private generator
SAMPLER_GLOBAL = "torch1.7-1.8"  # RandomSampler: seed from G (unused), permutation from G
SAMPLERS = (SAMPLER_SEEDED, SAMPLER_GLOBAL)
# Dassl's DistributedSampler (POMP's configs) in one original process: torch's DistributedSampler
# (shuffle, seed 0, set_epoch(epoch)) permutes with a generator seeded 0 + epoch and draws nothing from
# G, whatever the run's seed
SAMPLER_DISTRIBUTED = "DistributedSampler"

# A trainer's per-step draws on G: called with G (a private generator at the step's position) and
# the global batch's item indices; it must make exactly the original's calls on that generator.
StepDraws = Callable[[torch.Generator, Sequence[int]], None]


def dassl_drop_last(n: int, batch_size: int) -> bool:
    """Dassl's training rule: drop the last partial batch when there is at least one full batch."""
    return n >= batch_size


def _int64_draw(gen: torch.Generator) -> int:
    """``torch.empty((), dtype=torch.int64).random_()``: a loader's base seed, the sampler's seed."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=gen).item())


@dataclass(frozen=True, eq=False)
class BatchKey:
    """What one process needs to build its share of a planned batch.

    ``items``: dataset indices of this rank's slice, in the original's order; ``start``: the
    augmentation streams to install before transforming them; ``end``: where the streams must be
    afterwards (a replay that ends elsewhere did not make the original's draws).
    """

    epoch: int
    index: int
    items: Tuple[int, ...]
    start: Streams
    end: Streams


@dataclass(frozen=True, eq=False)
class PlannedBatch:
    """Global batch ``index`` of an epoch.

    ``items``: dataset indices in sampler order; ``worker``: the original's DataLoader worker that
    built it (None: the main process, ``NUM_WORKERS 0``); ``bounds``: ``slices + 1`` stream
    states, at the start of each slice's augmentation and (last) at the end of the batch's;
    ``draws``: per item, what each view drew; ``step``: the G state at the start of this step's
    trainer draws (None without ``step_draws``).
    """

    epoch: int
    index: int
    items: Tuple[int, ...]
    worker: Optional[int]
    bounds: Tuple[Streams, ...]
    draws: Tuple[Tuple[ViewDraws, ...], ...]
    step: Optional[torch.Tensor]

    def key(self, rank: int = 0) -> BatchKey:
        """Rank ``rank``'s slice (of ``len(bounds) - 1`` equal slices)."""
        slices = len(self.bounds) - 1
        if not 0 <= rank < slices:
            raise ValueError(f"rank {rank} out of range for a plan of {slices} slices")
        per = len(self.items) // slices
        return BatchKey(self.epoch, self.index, self.items[rank * per:(rank + 1) * per],
                        self.bounds[rank], self.bounds[rank + 1])


class OriginalEpochPlan:
    """Epoch ``epoch`` of an original's training loader (see the module docstring).

    Args:
        start: the streams when the epoch's ``iter(loader)`` runs: G (the torch state) and the main
            process's Python ``random`` (used by the augmentations only with ``num_workers=0``).
            Epoch 0: G right after the original's model construction; later epochs: the previous
            plan's :attr:`end`.
        sizes: ``[n]`` raw image sizes ``(width, height)`` of the training items, in dataset order
            (:func:`fastprompt.replay.image_sizes.read_image_sizes`).
        batch_size: the original's ``DATALOADER.TRAIN_X.BATCH_SIZE`` (the global batch).
        draws: the training transform's draws (:meth:`AugmentDraws.from_transform`, K views).
        num_workers: the ORIGINAL's ``DATALOADER.NUM_WORKERS`` (8 in every shipped config),
            whatever fastprompt itself loads with.
        sampler: :data:`SAMPLER_SEEDED` (torch >= 1.9) or :data:`SAMPLER_GLOBAL` (torch 1.7 - 1.8)
            RandomSampler, or :data:`SAMPLER_DISTRIBUTED` (Dassl's ``DistributedSampler``, one process).
        drop_last: the loader's rule; default Dassl's :func:`dassl_drop_last`.
        step_draws: the trainer's per-step draws on G (:func:`pomp_negative_draws`,
            :func:`softcpt_class_sample_draws`), or None.
        evaluation_draw: the epoch ends with a validation loader's ``iter`` (one int64 from G):
            Dassl's ``after_epoch`` under ``TEST.FINAL_MODEL best_val`` without ``TEST.NO_TEST``.
        slices: processes sharing each global batch (torchrun world size); each gets an equal slice.
        epoch: the epoch number recorded in the batches.

    Attributes: :attr:`base_seed`, :attr:`permutation` (``[n]`` sampler order), :attr:`batches`
    (:class:`PlannedBatch` list), :attr:`end` (the streams at the next epoch's start).
    """

    def __init__(self, start: Streams, sizes: Sequence[Size], batch_size: int, draws: AugmentDraws, *,
                 num_workers: int, sampler: str = SAMPLER_SEEDED, drop_last: Optional[bool] = None,
                 step_draws: Optional[StepDraws] = None, evaluation_draw: bool = False, slices: int = 1,
                 epoch: int = 0):
        n = len(sizes)
        if n < 1:
            raise DataError("the training split is empty: there is no epoch to plan")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"DATALOADER.TRAIN_X.BATCH_SIZE must be an int >= 1, got {batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"the original's DATALOADER.NUM_WORKERS must be an int >= 0, got {num_workers!r}")
        if sampler not in SAMPLERS + (SAMPLER_DISTRIBUTED,):
            raise ConfigError(f"unknown sampler behaviour {sampler!r}; one of "
                              f"{', '.join(SAMPLERS + (SAMPLER_DISTRIBUTED,))}")
        drop_last = dassl_drop_last(n, batch_size) if drop_last is None else bool(drop_last)
        self.n, self.batch_size, self.num_workers, self.sampler = n, batch_size, num_workers, sampler
        self.drop_last, self.slices, self.epoch, self.start = drop_last, slices, epoch, start
        n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
        if slices > 1 and (batch_size % slices or n_batches * batch_size > n):
            raise ConfigError(f"the original's batches of {batch_size} ({n} training images, drop_last={drop_last}) "
                              f"cannot be split into {slices} equal per-process slices; run a process count that "
                              f"divides the batch size, with at least one full batch")

        g = generator_at(start.torch)
        self.base_seed = _int64_draw(g)
        if sampler == SAMPLER_DISTRIBUTED:  # one replica: no padding, every index once
            self.permutation = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        elif sampler == SAMPLER_SEEDED:
            self.permutation = torch.randperm(n, generator=torch.Generator().manual_seed(_int64_draw(g)))
        else:
            _int64_draw(g)  # the seed torch 1.7 - 1.8 drew and did not use
            self.permutation = torch.randperm(n, generator=g)
        order = self.permutation.tolist()

        # the stream each batch's augmentation draws from: G and P, or worker k's own pair
        main_py = random_at(start.python) if num_workers == 0 and draws.draws_python else None
        workers = [(generator_at(s.torch), random_at(s.python), s.python)
                   for s in (Streams.seeded(self.base_seed + k) for k in range(num_workers))]
        self.batches: List[PlannedBatch] = []
        for b in range(n_batches):
            items = tuple(order[b * batch_size:(b + 1) * batch_size])
            if num_workers == 0:
                gen, py, py_fixed = g, main_py, start.python
            else:
                gen, py, py_fixed = workers[b % num_workers]
            per = len(items) // slices
            bounds, item_draws = [], []
            for i, item in enumerate(items):
                if i % per == 0:
                    bounds.append(Streams(gen.get_state(), py.getstate() if py is not None else py_fixed))
                item_draws.append(draws.advance(gen, py, sizes[item]))
            bounds.append(Streams(gen.get_state(), py.getstate() if py is not None else py_fixed))
            step = None
            if step_draws is not None:
                step = g.get_state()
                step_draws(g, items)
            self.batches.append(PlannedBatch(epoch, b, items, None if num_workers == 0 else b % num_workers,
                                             tuple(bounds), tuple(item_draws), step))
        if evaluation_draw:
            _int64_draw(g)
        self.end = Streams(g.get_state(), main_py.getstate() if main_py is not None else start.python)

    def __len__(self) -> int:
        """Global batches in the epoch."""
        return len(self.batches)

    def keys(self, rank: int = 0, start: int = 0) -> List[BatchKey]:
        """Rank ``rank``'s :class:`BatchKey` for batches ``start, start + 1, ...`` (resume at ``start``)."""
        return [batch.key(rank) for batch in self.batches[start:]]


def pomp_negative_draws(n_classes: int) -> StepDraws:
    """POMP's per-step draw with ``TRAINER.POMP.EPT`` and ``NEG_SAMPLING_MODE random``:
    ``torch.randperm(train_n_cls)`` on G (amazon-science/prompt-pretraining ``trainers/pomp.py``,
    ``negative_sampling``), once per step whatever the batch holds."""
    if n_classes < 1:
        raise ValueError(f"POMP's negative sampling needs at least one class, got {n_classes}")

    def draw(gen: torch.Generator, items: Sequence[int]) -> None:
        torch.randperm(n_classes, generator=gen)
    return draw


def softcpt_class_sample_draws(class_ranges: Sequence[Tuple[int, int]], positive_columns: Sequence[Iterable[int]],
                               rate: float) -> Optional[StepDraws]:
    """SoftCPT's per-step draws with ``TRAINER.MTCOOP.CLS_SAMPLE_RATE > 0``
    (kding1225/softcpt ``trainers/mtcoop.py``, ``compute_text_features_subsample``): for each task
    in order, ``torch.randperm(len(negatives))`` on G, the task's columns no sample of the batch is
    positive for. ``class_ranges``: ``(start, end)`` label columns per task; ``positive_columns[i]``:
    the columns where item ``i``'s label row is 1. Rate 0: the original calls no draw (None)."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"CLS_SAMPLE_RATE must lie in [0, 1], got {rate}")
    if rate == 0:
        return None
    positives = [frozenset(p) for p in positive_columns]

    def draw(gen: torch.Generator, items: Sequence[int]) -> None:
        in_batch = frozenset().union(*(positives[i] for i in items))
        for start, end in class_ranges:
            torch.randperm(sum(1 for c in range(start, end) if c not in in_batch), generator=gen)
    return draw
