"""``Trainer``: one training loop for every learner, with Dassl's harness and exact resume.

The loop is that of Dassl's ``SimpleTrainer`` as the CoOp family uses it (KaiyangZhou/
Dassl.pytorch ``dassl/engine/trainer.py``): epochs of shuffled batches
(:mod:`fastprompt.data.order`), ``loss = learner.loss(images, labels)``, backward, optimizer
step; the learning rate set per epoch (:mod:`fastprompt.train.schedule`); after the last
epoch, the test split is evaluated with the last model (``TEST.FINAL_MODEL = last_step``) or
with the best-on-val prompts (``best_val``: as in Dassl, the val split is evaluated after every
epoch only when the run tests, so with ``TEST.NO_TEST`` the last prompts are kept). A training
sample may hold K augmented views ``[K, C, H, W]`` (``DATALOADER.K_TRANSFORMS``): the batch is
trained as its K * B views (:func:`fastprompt.train.views.flatten_views`, POMP's input).

Added here: bf16/fp16 autocast (with a ``GradScaler`` for fp16), gradient accumulation
(``grad_accum_steps`` batches per optimizer step, each loss divided by the number of batches of
its step, so a step's gradient is the mean over its batches, also for a short last group of an
epoch), evaluation every N epochs, torchrun data parallelism
(:mod:`fastprompt.distributed`), a resumable state at every epoch end and, optionally,
every N steps (:mod:`fastprompt.train.state`), and a stop with the step number when the loss or
the prompts after a step are not finite, before anything non-finite is checkpointed. A checkpoint
the storage refuses (no space, a quota, a file-size limit) stops the run with one ``TrainError``
naming the file and the checkpoint that is kept, to go on from with ``--resume``.

The trainer sees the learner only through its public API: ``loss(images, labels)``,
``forward(images)``, ``trainable_named_parameters()``, ``train()``, ``save_pretrained(dir)``,
``load_prompt_state(tensors)``. An optional ``aggregator`` (PromptSRC's Gaussian prompt
aggregation, :class:`fastprompt.train.GaussianPromptAggregation`) is updated after each epoch and
applied after the last one.

Resume is exact: the state holds the prompts, the optimizer and scaler states, the RNG states,
the position (epoch, batch, step) and the batch source's own state (``stream``): on the
original's streams (:class:`~fastprompt.replay.source.OriginalBatches`) the streams at the start
of the epoch, from which its plan is rebuilt; in fastprompt's own order the data order and
augmentation are functions of ``(seed, epoch, index)``. A run killed at any point and resumed from
its last state ends with the prompts of an uninterrupted run, bit for bit (on the same machine
and thread count).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..data.images import skip_collate
from ..errors import DataError, StorageFullError, TrainError
from .batches import MapBatches
from .evaluate import check_unreadable, evaluate
from .precision import Precision
from .records import RunRecords, plot_curves
from .schedule import EpochSchedule, build_optimizer, param_groups
from .task_eval import TaskSlices, describe
from .state import STATE_FILE, STATE_FORMAT, load_state, rng_state, save_state, set_rng_state, write_json
from .views import flatten_views

__all__ = ["Trainer", "TrainSettings"]


@dataclasses.dataclass
class TrainSettings:
    """What the loop needs from the configuration (Dassl key in brackets).

    ``batch_size`` is per process; the global batch is ``batch_size * world_size``.
    """

    max_epoch: int                       # OPTIM.MAX_EPOCH
    batch_size: int                      # DATALOADER.TRAIN_X.BATCH_SIZE (per process)
    seed: int = 1                        # SEED
    test_batch_size: int = 100           # DATALOADER.TEST.BATCH_SIZE
    num_workers: int = 0                 # DATALOADER.NUM_WORKERS
    grad_accum_steps: int = 1            # TRAIN.GRAD_ACCUM_STEPS
    print_freq: int = 10                 # TRAIN.PRINT_FREQ (batches between step records)
    eval_freq: int = 0                   # TRAIN.EVAL_FREQ (epochs; 0 = none)
    checkpoint_steps: int = 0            # TRAIN.CHECKPOINT_STEPS (0 = epoch ends only)
    max_steps: int = 0                   # TRAIN.MAX_STEPS (0 = no limit)
    final_model: str = "last_step"       # TEST.FINAL_MODEL: last_step or best_val
    no_test: bool = False                # TEST.NO_TEST
    tensorboard: bool = True             # TRAIN.TENSORBOARD
    progress: bool = True
    max_unreadable: float = 0.1          # DATASET.MAX_UNREADABLE (fraction of a split or an epoch)

    def __post_init__(self):
        for name in ("max_epoch", "batch_size", "test_batch_size", "grad_accum_steps", "print_freq"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.final_model not in ("last_step", "best_val"):
            raise ValueError(f"TEST.FINAL_MODEL must be last_step or best_val, got {self.final_model!r}")
        if isinstance(self.max_unreadable, bool) or not isinstance(self.max_unreadable, (int, float)) \
                or not 0 <= self.max_unreadable <= 1:
            raise ValueError(f"DATASET.MAX_UNREADABLE must be a fraction in [0, 1], got {self.max_unreadable!r}")


class Trainer:
    """Train ``learner`` on ``train_data`` (a dataset of ``(image_tensor, label)``).

    Args:
        learner: a fastprompt learner (or anything with the API in the module docstring).
        train_data / val_data / test_data: datasets; ``val_data`` serves ``TRAIN.EVAL_FREQ`` and
            ``best_val`` (the test split stands in when it is empty, as in Dassl).
        settings: :class:`TrainSettings`; optim: the resolved ``OPTIM`` section.
        schedule: the per-epoch learning rate; precision: ``fp32``, ``bf16`` or ``fp16``.
        run_dir: where records and checkpoints go (``None``: nothing is written).
        identity: recorded in the state and checked on resume (method, model, classes, ...).
        aggregator: optional object with ``update()``, ``apply()``, ``complete``, ``state_dict()``,
            ``load_state_dict()`` called after each epoch / after training (applied only when
            ``complete``: a run that ``max_steps`` ends early keeps its last step's prompts).
        callbacks: ``fn(event, trainer, info)`` for ``"step"`` (after each optimizer step and its
            checkpoint; ``info``: epoch, batch, step, the batch's loss) and ``"epoch"`` (after each
            epoch's checkpoint).
        batches: the batch source (:mod:`fastprompt.train.batches`); default: ``train_data`` in
            the seeded order of :class:`~fastprompt.train.batches.MapBatches`. A run on the
            original's streams passes :class:`~fastprompt.replay.source.OriginalBatches`. A stream
            (WebDataset shards) keeps its position in the resumable state; a feature-cached run
            passes :meth:`FeatureCache.train_batches <fastprompt.features.cache.FeatureCache.train_batches>`.
        feature_cache: a :class:`~fastprompt.features.cache.FeatureCache`: the val and test
            splits are evaluated on their cached frozen features (computed once, not per evaluation).
        tasks: a multi-task run's tasks (labels are joint labels): every evaluation scores each
            image within its task and adds each task's metric and their average
            (:mod:`fastprompt.train.task_eval`), which ``best_val`` selects on, as the original's
            ``ClassificationMT``.
    """

    def __init__(self, learner, train_data: Dataset, settings: TrainSettings, optim: Dict[str, Any],
                 schedule: EpochSchedule, *, precision: str = "fp32", device: Optional[torch.device] = None,
                 run_dir: Optional[str] = None, val_data: Optional[Dataset] = None,
                 test_data: Optional[Dataset] = None, n_classes: Optional[int] = None,
                 identity: Optional[Dict[str, Any]] = None, aggregator=None,
                 callbacks: Sequence[Callable] = (), records: Optional[RunRecords] = None, batches=None,
                 feature_cache=None, tasks: Optional[TaskSlices] = None):
        self.learner = learner
        self.settings = settings
        self.schedule = schedule
        self.device = device or torch.device("cpu")
        self.rank, self.world = distributed.world()
        self._bad_loss = None  # (loss, batch) of this rank's first non-finite loss under torchrun
        self.main = self.rank == 0
        self.run_dir = run_dir
        self.val_data, self.test_data = val_data, test_data
        self.n_classes = n_classes
        self.tasks = tasks
        self.identity = dict(identity or {})
        self.aggregator = aggregator
        self.callbacks = list(callbacks)
        self.named_params = list(learner.trainable_named_parameters())
        self.params = [p for _, p in self.named_params]
        self.optimizer = build_optimizer(param_groups(self.named_params, optim), optim)
        self.precision = Precision(precision, self.device)
        self.train_data = train_data
        self.feature_cache = feature_cache
        self.batches = batches if batches is not None else MapBatches(
            train_data, settings.batch_size, settings.seed, self.rank, self.world,
            num_workers=settings.num_workers, pin_memory=self.device.type == "cuda")
        self.records = records or RunRecords(run_dir, enabled=self.main, tensorboard=settings.tensorboard,
                                             echo=self.main)
        self.epoch = self.batch = self.step = 0
        self.finished = False
        self.best: Dict[str, Any] = {}
        self.last_eval: Optional[Dict[str, Any]] = None
        self.last_saved_step: Optional[int] = None
        self.epoch_sums: List[float] = [0.0, 0]  # loss sum and batch count of the epoch so far
        self.skipped_before = 0  # unreadable images counted before the state this run resumed from
        self._stream_states = None  # every rank's batch-source state, gathered at the last save()

    # ---- state ---------------------------------------------------------------------------------
    @property
    def state_path(self) -> Optional[str]:
        return os.path.join(self.run_dir, STATE_FILE) if self.run_dir else None

    def _snapshot(self) -> Dict[str, torch.Tensor]:
        """The learner's learned state as ``load_prompt_state`` takes it back: its
        ``prompt_state_dict()`` (the trainable parameters, plus any state a step changes without a
        gradient, such as PromptKD's BatchNorm running statistics), copied to the CPU."""
        return {name: t.detach().cpu().clone() for name, t in self.learner.prompt_state_dict().items()}

    def state_dict(self) -> Dict[str, Any]:
        return {"format": STATE_FORMAT, **self.identity, "epoch": self.epoch, "batch": self.batch, "step": self.step,
                "finished": self.finished, "world_size": self.world,
                "params": self._snapshot(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.precision.scaler.state_dict() if self.precision.scaler else {},
                "rng": rng_state(), "aggregator": self.aggregator.state_dict() if self.aggregator else {},
                "best": self.best, "skipped_images": self._skipped(), "epoch_sums": list(self.epoch_sums),
                "stream": self._stream_states}

    def load_state_dict(self, state: Dict[str, Any], source: str = "state") -> None:
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise TrainError(f"{source} was written for {key} = {state.get(key)!r}, but this run has {value!r}; "
                                 "resume it with its own configuration, or start a new run with --overwrite")
        self.learner.load_prompt_state(state["params"], source=source)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.precision.scaler and state.get("scaler"):
            self.precision.scaler.load_state_dict(state["scaler"])
        if self.aggregator is not None and state.get("aggregator"):
            self.aggregator.load_state_dict(state["aggregator"])
        set_rng_state(state["rng"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        self.finished, self.best = bool(state["finished"]), dict(state.get("best") or {})
        self.epoch_sums = list(state.get("epoch_sums") or [0.0, 0])
        try:
            self.batches.load_state_dict(state.get("stream"))
        except ValueError as exc:
            raise TrainError(f"{source}: {exc}") from None
        self.skipped_before = int(state.get("skipped_images") or 0) - int(getattr(self.train_data, "skipped", 0) or 0)

    def resume(self, path: Optional[str] = None) -> None:
        path = path or self.state_path
        self.load_state_dict(load_state(path), source=path)
        self.records.log(f"resumed from {path}: epoch {self.epoch + 1}, batch {self.batch}, step {self.step}")

    def save(self) -> None:
        # every rank's stream position (a collective, so before rank 0 alone goes on to write)
        own = self.batches.state_dict()
        self._stream_states = None if own is None else distributed.all_gather_objects(own)
        if not (self.main and self.run_dir):
            return
        state = self.state_dict()
        state_written = False
        try:
            save_state(self.state_path, state)
            state_written = True
            self.learner.save_pretrained(self.run_dir)
        except StorageFullError as exc:
            self._storage_full(exc, state_written)
        self.last_saved_step = self.step

    def _storage_full(self, exc: StorageFullError, state_written: bool) -> None:
        """Stop the run: the storage refused a checkpoint file (``exc`` names it and why). Each file
        is written atomically, so what is on disk is whole: say which checkpoint that is."""
        todo = "free space (or raise the quota or file-size limit) and rerun the same command with --resume"
        if state_written:
            kept = (f"The resumable {STATE_FILE} of step {self.step} was written, the prompt files beside it may still "
                    f"be the previous checkpoint's; {todo}: it goes on from step {self.step} and writes them again")
        elif self.last_saved_step is not None or os.path.isfile(self.state_path):
            step = f" (step {self.last_saved_step})" if self.last_saved_step is not None else ""
            kept = f"The previous checkpoint{step} in {self.run_dir} is intact; {todo} to go on from it"
        else:
            kept = f"No checkpoint was written yet; {todo}"
        message = f"checkpoint of step {self.step} not saved: {exc}. {kept}"
        try:
            self.records.log(f"error: {message}")
        except OSError:  # log.txt is on the same full storage: the message still reaches stderr
            pass
        raise TrainError(message) from None

    # ---- helpers ---------------------------------------------------------------------------------
    @property
    def _select_best(self) -> bool:
        # Dassl's after_epoch / after_train: best-on-val selection only when the run tests (not NO_TEST)
        return self.settings.final_model == "best_val" and not self.settings.no_test

    def _skipped(self) -> int:
        """Unreadable training images so far: those of the resumed state plus this process's."""
        return self.skipped_before + int(getattr(self.train_data, "skipped", 0) or 0)

    def _eval_batches(self, data: Dataset):
        if self.feature_cache is not None:
            return self.feature_cache.eval_batches(data, self.settings.test_batch_size, self.rank, self.world)
        indices = list(range(self.rank, len(data), self.world))
        subset = torch.utils.data.Subset(data, indices)
        return DataLoader(subset, batch_size=self.settings.test_batch_size, shuffle=False,
                          num_workers=self.settings.num_workers, collate_fn=skip_collate,
                          pin_memory=self.device.type == "cuda")

    def evaluate(self, split: str) -> Optional[Dict[str, Any]]:
        data = self.val_data if split == "val" and self.val_data is not None and len(self.val_data) else None
        if data is None:
            data, split = self.test_data, "test"
        if data is None or len(data) == 0:
            return None
        classnames = self.identity.get("classnames")
        if self.tasks is not None and classnames:  # one class name may be in several tasks
            classnames = self.tasks.qualified(classnames)
        metrics = evaluate(self.learner, self._eval_batches(data), self.device, self.n_classes,
                           self.precision.autocast, gather=distributed.gather_cat, images=len(data), split=split,
                           max_unreadable=self.settings.max_unreadable, classnames=classnames, tasks=self.tasks)
        self.last_eval = {"split": split, **metrics}
        brief = {k: metrics[k] for k in ("accuracy", "error", "macro_f1", "correct", "total", "task_average")
                 if k in metrics}
        self.records.metric({"kind": "eval", "split": split, "epoch": self.epoch, "step": self.step, **brief})
        self.records.log(f"{split}: accuracy {metrics['accuracy']:.2f}%  macro-F1 {metrics['macro_f1']:.2f}%  "
                         f"({metrics['correct']}/{metrics['total']})")
        if self.tasks is not None:
            for line in describe(metrics):
                self.records.log(line)
        return self.last_eval

    @staticmethod
    def _score(result: Dict[str, Any]) -> float:
        """What ``best_val`` selects on: the accuracy, or a multi-task run's average of the tasks'
        metrics (the original ``ClassificationMT``'s ``results["metric"]``)."""
        return result["task_average"] if "task_average" in result else result["accuracy"]

    def _notify(self, event: str, **info) -> None:
        for fn in self.callbacks:
            fn(event, self, info)

    def _optimizer_step(self) -> None:
        if not distributed.average_gradients(self.params, ok=self._bad_loss is None):
            where = (f"({self._bad_loss[0]}) at batch {self._bad_loss[1]} of this rank" if self._bad_loss
                     else "on another rank")
            self._diverged(f"non-finite loss {where}, step {self.step + 1} (epoch {self.epoch + 1})")
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        # a finite loss can still give non-finite prompts (a huge learning rate): never checkpoint them
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.params]).all()):
            bad = [n for n, p in self.named_params if not bool(torch.isfinite(p).all())]
            self._diverged(f"non-finite prompt parameters {bad} after step {self.step} (epoch {self.epoch + 1}, "
                           f"batch {self.batch})")

    # ---- the loop --------------------------------------------------------------------------------
    def fit(self) -> Optional[Dict[str, Any]]:
        """Train from the current position to the end, then test; returns the test metrics."""
        s = self.settings
        self.learner.train(True)
        t_run = time.perf_counter()
        steps_at_start = self.step
        stop = s.max_steps > 0 and self.step >= s.max_steps
        while self.epoch < s.max_epoch and not stop and not self.finished:
            stop = self._run_epoch(t_run, steps_at_start)
        if not self.finished:
            self._finish()
        return self._final_test()

    def _run_epoch(self, t_run: float, steps_at_start: int) -> bool:
        s = self.settings
        lr = self.schedule.lr_at(self.epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule.lr_at(self.epoch, group.get("lr_mult", 1.0))
        self.batches.set_position(self.epoch, self.batch)
        n_batches = len(self.batches)
        bar = self._bar(n_batches)
        if self.batch == 0:
            self.epoch_sums = [0.0, 0]
        loss_sum, loss_n = self.epoch_sums
        images, t0 = 0, time.perf_counter()
        skipped_before, read = self._skipped(), 0  # this rank's unreadable images so far, readable ones this epoch
        group_losses: List[float] = []  # the losses of the batches accumulated since the last step
        stop = False
        for batch in self._logged(self.batches):
            b = self.batch
            if batch is not None:
                read += len(batch[1])  # images, not their K augmented views (what unreadable ones are counted in)
                x, y = flatten_views(*batch)
                x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                with self.precision.autocast():
                    loss = self.learner.loss(x, y)
                value = float(loss.detach())
                if not math.isfinite(value) and self.world > 1:
                    # Stop with the other ranks at this step's gradient reduction, not alone (they would wait).
                    self._bad_loss = self._bad_loss or (value, b + 1)
                    value, loss = 0.0, None
                elif not math.isfinite(value):
                    self._diverged(f"non-finite loss ({value}) at step {self.step + 1} (epoch {self.epoch + 1}, "
                                   f"batch {b + 1})")
                # a step's gradient is the mean over its batches (the last group of an epoch may be short)
                if loss is not None:
                    scaled = loss / self._group_size(b, n_batches)
                    (self.precision.scaler.scale(scaled) if self.precision.scaler else scaled).backward()
                loss_sum, loss_n, images = loss_sum + value, loss_n + 1, images + len(y) * self.world
                group_losses.append(value)
            self.batch = b + 1
            last = self.batch == n_batches
            if group_losses and (self.batch % s.grad_accum_steps == 0 or last):
                self._optimizer_step()
                group_sum, group_n = sum(group_losses), len(group_losses)
                group_loss, group_losses = group_sum / group_n, []
                self.epoch_sums = [loss_sum, loss_n]
                stop = s.max_steps > 0 and self.step >= s.max_steps
                self._after_step(bar, lr, loss_sum, loss_n, (group_sum, group_n), images, t0, t_run, steps_at_start,
                                 last or stop)
                if s.checkpoint_steps and self.step % s.checkpoint_steps == 0 and not last:
                    self.save()
                self._notify("step", epoch=self.epoch, batch=self.batch, step=self.step, loss=group_loss)
            elif bar is not None:
                bar.update(1)
            if stop:
                break
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        if self.batch < n_batches and not stop:
            raise TrainError(f"the training loader ended after {self.batch} of {n_batches} batches")
        self._check_unreadable(read, self._skipped() - skipped_before)
        self._end_epoch(lr, distributed.mean_over_ranks(loss_sum, loss_n), images / max(seconds, 1e-9), seconds,
                        complete=not stop)
        return stop

    def _logged(self, source):
        """``source``'s batches; a data or training error it raises (an unreadable image on the
        original's streams, a transform that drew off the original's plan) goes to log.txt too."""
        iterator = iter(source)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except (DataError, TrainError) as exc:
                self.records.log(f"error: {exc}")
                raise
            yield batch

    def _check_unreadable(self, read: int, skipped: int) -> None:
        """The epoch (from where it started or resumed) trained on enough readable images, over all
        ranks: none, or more than ``max_unreadable`` skipped, stops the run (before its state is
        saved) with a ``DataError`` that says so, instead of an epoch of initial prompts."""
        counts = distributed.all_gather_objects((read, skipped)) if self.world > 1 else [(read, skipped)]
        read, skipped = sum(c[0] for c in counts), sum(c[1] for c in counts)
        try:
            check_unreadable(skipped, read + skipped, f"epoch {self.epoch + 1}'s training images",
                             self.settings.max_unreadable)
        except DataError as exc:
            self.records.log(f"error: {exc}")
            raise

    def _group_size(self, batch: int, n_batches: int) -> int:
        """How many batches the optimizer step that ``batch`` belongs to accumulates."""
        k = self.settings.grad_accum_steps
        return min(k, n_batches - batch // k * k)

    def _diverged(self, what: str) -> None:
        """Stop the run: ``what`` went non-finite; the last checkpoint (written before) is left as it is."""
        kept = (f"the last good checkpoint (step {self.last_saved_step}) is kept in {self.run_dir}"
                if self.last_saved_step is not None else "no checkpoint was written yet")
        message = f"{what}; {kept}. Lower OPTIM.LR or use TRAIN.PRECISION fp32"
        self.records.log(f"error: {message}")
        raise TrainError(message)

    def _after_step(self, bar, lr, loss_sum, loss_n, step_losses, images, t0, t_run, steps_at_start,
                    force_record) -> None:
        s = self.settings
        elapsed = time.perf_counter() - t0
        ips = images / max(elapsed, 1e-9)
        mean = loss_sum / max(loss_n, 1)
        if bar is not None:
            done = self.step - steps_at_start
            per_step = (time.perf_counter() - t_run) / max(done, 1)
            left = (s.max_epoch - self.epoch) * len(self.batches) - self.batch
            left_steps = math.ceil(left / s.grad_accum_steps)
            if s.max_steps:
                left_steps = min(left_steps, s.max_steps - self.step)
            post = {"loss": f"{mean:.4f}", "lr": f"{lr:.2e}", "img/s": f"{ips:.1f}",
                    "eta": _clock(left_steps * per_step)}
            if self.last_eval:
                post["acc"] = f"{self.last_eval['accuracy']:.1f}"
            bar.set_postfix(post, refresh=False)
            bar.update(self.batch - bar.n)
        if self.batch % s.print_freq == 0 or force_record:
            # the step's own loss (the mean over its batches and ranks) and the epoch's mean so far, each by name
            step_loss = distributed.mean_over_ranks(*step_losses)
            mean = distributed.mean_over_ranks(loss_sum, loss_n)
            self.records.metric({"kind": "step", "epoch": self.epoch, "batch": self.batch, "step": self.step,
                                 "loss": step_loss, "epoch_mean_loss": mean, "lr": lr, "images_per_s": ips,
                                 "skipped_images": self._skipped()})

    def _end_epoch(self, lr: float, loss: float, ips: float, seconds: float, complete: bool) -> None:
        s = self.settings
        epoch = self.epoch
        self.records.metric({"kind": "epoch", "epoch": epoch, "step": self.step, "loss": loss, "lr": lr,
                             "images_per_s": ips, "seconds": seconds, "skipped_images": self._skipped()})
        self.records.log(f"epoch {epoch + 1}/{s.max_epoch}: loss {loss:.4f}, lr {lr:.3e}, {ips:.1f} images/s, "
                         f"{seconds:.1f} s" + (f", {self._skipped()} unreadable images skipped" if self._skipped() else ""))
        if complete:
            if self.aggregator is not None:
                self.aggregator.update()
            self.epoch, self.batch = epoch + 1, 0
            if self._select_best:
                result = self.evaluate("val")
                if result is not None and self._score(result) > self.best.get("score", -1.0):
                    self.best = {"score": self._score(result), "epoch": epoch,
                                 "params": self._snapshot()}
            elif s.eval_freq and (epoch + 1) % s.eval_freq == 0:
                self.evaluate("val")
        self.save()
        self._notify("epoch", epoch=epoch, step=self.step)

    def _finish(self) -> None:
        if self.aggregator is not None and self.aggregator.complete:
            self.aggregator.apply()
            self.records.log("applied the epoch aggregation of the prompts (GPA)")
        elif self.aggregator is not None:  # TRAIN.MAX_STEPS ended the run before its last epoch: no GPA exists
            self.records.log(f"the epoch aggregation of the prompts (GPA) is not applied: TRAIN.MAX_STEPS ended the "
                             f"run after {self.aggregator.epochs_done} of {self.aggregator.epochs} epochs; the prompts "
                             "are the last step's")
        if self._select_best and self.best.get("params"):
            self.learner.load_prompt_state(self.best["params"], source="best-on-val prompts")
            what = "average of the tasks' metrics" if self.tasks is not None else "accuracy"
            self.records.log(f"testing the prompts of epoch {self.best['epoch'] + 1} (best val {what} "
                             f"{self.best['score']:.2f}%)")
        self.finished = True
        self.save()

    def _final_test(self) -> Optional[Dict[str, Any]]:
        result = None if self.settings.no_test else self.evaluate("test")
        if self.main and self.run_dir:
            if result is not None:
                write_json(os.path.join(self.run_dir, "eval.json"), {**result, "step": self.step})
            if not plot_curves(os.path.join(self.run_dir, "metrics.jsonl"), os.path.join(self.run_dir, "curves.png")):
                self.records.log("curves.png not written: matplotlib is not installed (pip install -e \".[train]\")")
        return result

    def _bar(self, total: int):
        if not (self.settings.progress and self.main):
            return None
        from tqdm import tqdm

        return tqdm(total=total, initial=self.batch, desc=f"epoch {self.epoch + 1}/{self.settings.max_epoch}",
                    unit="batch", dynamic_ncols=True, leave=False)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"
