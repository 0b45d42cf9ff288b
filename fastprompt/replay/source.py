"""The trainer's batches on the original's streams: :class:`OriginalBatches`.

A batch source (the interface of :mod:`fastprompt.train.batches`: ``len``, ``set_position``,
``iter``, ``state_dict`` / ``load_state_dict``) that gives, epoch after epoch, the batches an
original's Dassl loader gives for the same seed, with the same augmentations:

* epoch 0 starts from the streams the original's loader starts from: G as the original's
  ``build_model`` leaves it (:func:`fastprompt.replay.construction.original_init`) and P, Python's
  ``random`` after ``random.seed(SEED)`` and the original's few-shot draws
  (:func:`original_streams_start`); each later epoch starts where the previous plan ended
  (:attr:`OriginalEpochPlan.end <fastprompt.replay.loader_stream.OriginalEpochPlan.end>`);
* the plan is made for the ORIGINAL's ``DATALOADER.NUM_WORKERS`` (its workers' streams decide the
  augmentations), while fastprompt decodes and transforms with however many processes it has —
  the result never depends on the machine;
* ``torchrun``: every rank makes the same plan and takes its slice of each global batch;
* the trainer's own per-step draws (POMP's negative classes, SoftCPT's class sampling) come from
  a CPU generator the learner holds (``learner.step_generator``), set to the plan's G at each step;
* resume: the state is the start streams of the current epoch; the plan is rebuilt from them and
  the loader starts at the saved batch.

Images are decoded and transformed by :class:`~fastprompt.replay.batches.ReplayedBatches` (the
real transforms under the planned streams); every batch is checked in the main process
(:meth:`ReplayedBatch.checked <fastprompt.replay.batches.ReplayedBatch.checked>`): an unreadable
image is a :class:`~fastprompt.errors.DataError` naming the file (the original would crash, and
skipping it would move every later draw, so ``DATASET.MAX_UNREADABLE`` does not apply here).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Sampler

from ..data.items import Item
from ..errors import ConfigError
from .batches import ReplayedBatches
from .draw_counts import AugmentDraws, Size
from .image_sizes import read_image_sizes
from .loader_stream import (SAMPLER_SEEDED, BatchKey, OriginalEpochPlan, StepDraws, pomp_negative_draws,
                            softcpt_class_sample_draws)
from .streams import Streams

__all__ = ["OriginalBatches", "original_streams_start", "step_draws_of"]


def original_streams_start(torch_state: torch.Tensor, seed: int, fewshot_drawn: bool, num_workers: int,
                           draws: AugmentDraws) -> Streams:
    """The streams at the original's first ``iter(train_loader)``.

    ``torch_state``: G after the original's model construction. P is ``random.seed(seed)`` moved on
    by the original's few-shot draws; fastprompt draws its few-shot subset on a private
    ``random.Random`` (:mod:`fastprompt.data.fewshot`), so P is known exactly only when nothing was
    drawn (``fewshot_drawn`` False: all images, or the original's ``split_fewshot`` pickle read).
    P matters only to ``RandAugment2`` in the main process (``NUM_WORKERS 0``): that one
    combination with a drawn subset is refused, naming the ways out.
    """
    if fewshot_drawn and num_workers == 0 and draws.draws_python:
        raise ConfigError("randaugment2 with the original's DATALOADER.NUM_WORKERS 0 draws from Python's random after "
                          "the original's few-shot sampling, whose end state fastprompt does not track; set "
                          "DATALOADER.NUM_WORKERS 1 or more (the original's workers reseed it), put the original's "
                          "split_fewshot pickle in the dataset folder, or train in fastprompt's own order "
                          "(DATALOADER.OWN_ORDER True)")
    return Streams(torch_state.clone(), random.Random(seed).getstate())


def step_draws_of(learner, items: Sequence[Item], world: int) -> Optional[StepDraws]:
    """The original trainer's per-step draws on G for ``learner`` (None: it makes none).

    POMP with local contrast (``TRAINER.POMP.EPT``): ``randperm(n_classes)``; SoftCPT with
    ``CLS_SAMPLE_RATE > 0``: a ``randperm`` per task over the classes no sample of the batch is
    positive for (the global batch's: refused under torchrun, where each rank sees its slice only).
    """
    method = getattr(learner, "method", None)
    if method == "pomp" and learner.objective.mode == "local":
        return pomp_negative_draws(learner.n_classes)
    if method == "softcpt" and learner.config.cls_sample_rate > 0:
        if world > 1:
            raise ConfigError("TRAINER.MTCOOP.CLS_SAMPLE_RATE > 0 samples negative classes from the whole batch's "
                              "labels, and under torchrun each process sees only its slice: train SoftCPT's class "
                              "sampling in one process, or in fastprompt's own order (DATALOADER.OWN_ORDER True)")
        return softcpt_class_sample_draws(learner.class_ranges, [{int(it.label)} for it in items],
                                          learner.config.cls_sample_rate)
    return None


class _Keys(Sampler):
    """The batch keys of the epoch in progress (set before each ``iter``; persistent workers keep
    the dataset, the keys travel to them through the loader's index queue)."""

    def __init__(self):
        self.keys: List[BatchKey] = []

    def __iter__(self) -> Iterator[BatchKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _as_is(batch):
    return batch


class OriginalBatches:
    """Batches of ``items`` as the original's loader makes them (see the module docstring).

    Args:
        items: the training items, in the original's dataset order.
        transform: the training transform (a Compose, or :class:`~fastprompt.train.views.MultiView`
            for K views); the plan's draws are read from this same object.
        start: the streams at the first epoch's ``iter`` (:func:`original_streams_start`).
        batch_size: the GLOBAL batch (the original's ``DATALOADER.TRAIN_X.BATCH_SIZE``).
        original_workers: the original's ``DATALOADER.NUM_WORKERS`` (decides the streams).
        workers: the DataLoader processes fastprompt uses (decides nothing but speed).
        rank / world: this process and the process count (each global batch in ``world`` slices).
        sampler: ``RandomSampler`` behaviour (:data:`~fastprompt.replay.loader_stream.SAMPLERS`).
        step_draws / step_generator: the trainer's per-step draws (:func:`step_draws_of`) and the
            generator the learner draws them from, set to the plan's G before each step.
        evaluation_draw: the original iterates a validation loader after each epoch (``best_val``).
        sizes: the images' raw sizes when already known (read from the headers otherwise, once).
    """

    def __init__(self, items: Sequence[Item], transform: Callable, start: Streams, batch_size: int, *,
                 original_workers: int, workers: int = 0, rank: int = 0, world: int = 1,
                 sampler: str = SAMPLER_SEEDED, step_draws: Optional[StepDraws] = None,
                 step_generator: Optional[torch.Generator] = None, evaluation_draw: bool = False,
                 sizes: Optional[Sequence[Size]] = None):
        if step_draws is not None and step_generator is None:
            raise ValueError("per-step draws need the generator the learner draws them from")
        self.items = list(items)
        self.draws = AugmentDraws.from_transform(transform)
        self.sizes: List[Size] = list(sizes) if sizes is not None else read_image_sizes([it.path for it in self.items])
        self.batch_size, self.original_workers, self.rank, self.world = batch_size, original_workers, rank, world
        self.sampler, self.step_draws, self.step_generator = sampler, step_draws, step_generator
        self.evaluation_draw = evaluation_draw
        self._starts: Dict[int, Streams] = {0: start}
        self.plan: Optional[OriginalEpochPlan] = None
        self._plan_for(0)  # a batch size or split the plan refuses fails before training
        self._keys = _Keys()
        # its own generator: the loader's base seed must not draw from torch's global stream
        self.loader = DataLoader(ReplayedBatches(self.items, transform), sampler=self._keys, batch_size=None,
                                 num_workers=workers, persistent_workers=workers > 0, collate_fn=_as_is,
                                 generator=torch.Generator().manual_seed(0))

    def _plan_for(self, epoch: int) -> OriginalEpochPlan:
        """Epoch ``epoch``'s plan, from the nearest known epoch start at or before it."""
        if self.plan is not None and self.plan.epoch == epoch:
            return self.plan
        known = max(e for e in self._starts if e <= epoch)
        for e in range(known, epoch + 1):
            plan = OriginalEpochPlan(self._starts[e], self.sizes, self.batch_size, self.draws,
                                     num_workers=self.original_workers, sampler=self.sampler,
                                     step_draws=self.step_draws, evaluation_draw=self.evaluation_draw,
                                     slices=self.world, epoch=e)
            self._starts[e + 1] = plan.end
        self._starts = {e: s for e, s in self._starts.items() if e >= epoch}  # the earlier ones are done
        self.plan = plan
        return plan

    def __len__(self) -> int:
        return len(self.plan)

    def set_position(self, epoch: int, start: int) -> None:
        self._keys.keys = self._plan_for(epoch).keys(self.rank, start)

    def global_items(self, batch: int) -> Tuple[int, ...]:
        """Item indices of global batch ``batch`` of the current epoch, in the original's order."""
        return self.plan.batches[batch].items

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, Any]]:
        for replayed in self.loader:
            images, labels = replayed.checked()
            if self.step_draws is not None:
                # the learner's step draws start where the original's trainer drew after this batch
                self.step_generator.set_state(self.plan.batches[replayed.key.index].step)
            yield images, labels

    def state_dict(self) -> Dict[str, Any]:
        """The current epoch and its start streams (the plan is rebuilt from them)."""
        start = self._starts[self.plan.epoch]
        return {"epoch": self.plan.epoch, "torch": start.torch.clone(), "python": start.python}

    def load_state_dict(self, states: Any) -> None:
        """``states``: every rank's :meth:`state_dict` (the trainer gathers them), or one of them."""
        state = states[self.rank] if isinstance(states, (list, tuple)) else states
        if not isinstance(state, dict) or not {"epoch", "torch", "python"} <= set(state):
            raise ValueError("this run's state holds no position in the original's streams, and the run trains on "
                             "them; resume it with the settings it was started with (DATALOADER.OWN_ORDER)")
        version, internal, gauss = state["python"]
        self._starts[int(state["epoch"])] = Streams(state["torch"], (version, tuple(internal), gauss))
        self.plan = None
