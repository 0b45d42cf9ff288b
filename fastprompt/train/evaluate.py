"""Evaluation: accuracy and macro-F1 as Dassl's ``Classification`` evaluator prints them, and
``fastprompt eval`` (:func:`evaluate_checkpoint`: a run's prompts on a dataset's test split).

KaiyangZhou/Dassl.pytorch ``dassl/evaluation/evaluator.py``: ``accuracy = 100 * correct / total``,
``error = 100 - accuracy``, ``macro_f1 = 100 * f1_score(y_true, y_pred, average="macro",
labels=np.unique(y_true))`` (classes absent from the split do not count), plus per-class accuracy.

Under torchrun each rank scores its share of a split (:func:`rank_share`: every ``world``-th item
from its rank, none twice, none left out, whatever the split's size) and the predictions are
concatenated over the ranks before the metrics: they count correct predictions per class, so the
order of the items does not change them and N processes give one process's metrics.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch

from .. import distributed
from ..errors import EXPECTED_ERRORS, DataError, TrainError
from ..folder_lock import FolderLock
from .task_eval import TaskSlices, task_metrics, within_task

__all__ = ["predict", "classification_metrics", "evaluate", "check_unreadable", "rank_share", "evaluate_checkpoint",
           "EVAL_ERRORS"]

# What ``fastprompt eval`` reports as one line (exit status 2): the run commands' expected errors, and
# the ValueErrors of a dataset or class list the prompts cannot be tested on.
EVAL_ERRORS = EXPECTED_ERRORS + (ValueError,)


@torch.no_grad()
def predict(learner, batches: Iterable, device: torch.device,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
            tasks: Optional[TaskSlices] = None):
    """``(predictions [N], labels [N])`` of ``learner(images).argmax(-1)`` over ``(images, labels)`` batches
    (``None`` batches, whose every image was unreadable, are skipped). With ``tasks`` (a multi-task
    run, joint labels) the argmax is over each image's own task's classes (:func:`within_task`)."""
    was_training = learner.training
    learner.train(False)
    preds, labels = [], []
    try:
        for batch in batches:
            if batch is None:
                continue
            images, y = batch
            with autocast():
                logits = learner(images.to(device, non_blocking=True))
            preds.append((logits.argmax(dim=-1) if tasks is None else within_task(logits, y, tasks)).cpu())
            labels.append(y.cpu())
    finally:
        learner.train(was_training)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, n_classes: Optional[int] = None,
                           classnames: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``accuracy``, ``error``, ``macro_f1`` (percent), ``correct``, ``total``, ``per_class_accuracy``
    (keyed by class name when ``classnames`` are given, else by label)."""
    total = int(labels.numel())
    if total == 0:
        return {"accuracy": float("nan"), "error": float("nan"), "macro_f1": float("nan"), "correct": 0, "total": 0,
                "per_class_accuracy": {}}
    k = int(max(int(labels.max()), int(preds.max())) + 1) if n_classes is None else n_classes
    hit = preds == labels
    correct = int(hit.sum())
    tp = torch.bincount(labels[hit], minlength=k).double()
    n_true = torch.bincount(labels, minlength=k).double()
    n_pred = torch.bincount(preds, minlength=k).double()
    present = n_true > 0
    f1 = torch.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred).clamp_min(1), torch.zeros_like(tp))
    accuracy = 100.0 * correct / total
    return {"accuracy": accuracy, "error": 100.0 - accuracy, "macro_f1": 100.0 * float(f1[present].mean()),
            "correct": correct, "total": total,
            "per_class_accuracy": {(classnames[c] if classnames else int(c)): 100.0 * float(tp[c] / n_true[c])
                                   for c in range(k) if present[c]}}


def evaluate(learner, batches: Iterable, device: torch.device, n_classes: Optional[int] = None,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             gather: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, *, images: Optional[int] = None,
             split: str = "test", max_unreadable: float = 0.1,
             classnames: Optional[Sequence[str]] = None, tasks: Optional[TaskSlices] = None) -> Dict[str, Any]:
    """Metrics of ``learner`` over ``batches``; ``gather`` concatenates the ranks' tensors in DDP runs.

    ``tasks``: a multi-task run's tasks (joint labels): every image is scored within its task's
    classes, and the metrics gain each task's own metric and their average
    (:func:`~fastprompt.train.task_eval.task_metrics`: ``tasks``, ``task_average``).

    ``images``: how many images the split has (over every rank). Those that could not be read are
    skipped by the loader; their count is in the metrics (``unreadable``), and a split with none
    readable, or with more than ``max_unreadable`` of them unreadable (``DATASET.MAX_UNREADABLE``),
    is a :class:`~fastprompt.errors.DataError` instead of an accuracy over what was left.
    """
    preds, labels = predict(learner, batches, device, autocast, tasks)
    if gather is not None:
        preds, labels = gather(preds), gather(labels)
    if images == 0:
        raise DataError(f"the {split} split has no images: there is nothing to evaluate")
    metrics = classification_metrics(preds, labels, n_classes, classnames)
    if images is not None:
        metrics["unreadable"] = check_unreadable(images - metrics["total"], images, f"the {split} split",
                                                 max_unreadable)
    if tasks is not None:
        metrics.update(task_metrics(preds, labels, tasks))
    return metrics


def check_unreadable(unreadable: int, images: int, what: str, max_unreadable: float) -> int:
    """``unreadable``, when ``what`` (``images`` in all) still has enough readable images: none
    readable, or more than a ``max_unreadable`` fraction unreadable, is a ``DataError``."""
    if images and unreadable >= images:
        raise DataError(f"no image of {what} could be read ({images} unreadable; the log names them): check the "
                        "files, or the data root")
    if images and unreadable / images > max_unreadable:
        raise DataError(f"{unreadable} of the {images} images of {what} could not be read "
                        f"({100 * unreadable / images:.1f}%, more than DATASET.MAX_UNREADABLE {max_unreadable:g}; the "
                        "log names them): fix the files, or set DATASET.MAX_UNREADABLE higher to go on without them")
    return unreadable


def rank_share(data: torch.utils.data.Dataset, rank: int, world: int) -> torch.utils.data.Subset:
    """The items of ``data`` that rank ``rank`` of ``world`` scores: ``rank, rank + world, ...``.

    Striding rather than padding or cutting: the shares of ``len(data)`` items that ``world`` does
    not divide differ by one item, and together they hold each item exactly once.
    """
    return torch.utils.data.Subset(data, range(rank, len(data), world))


def evaluate_checkpoint(checkpoint: str, data_root: str, dataset_name: str, subsample: str = "all",
                        batch_size: Optional[int] = None, num_workers: int = 0, device: str = "",
                        out: Optional[str] = None) -> Dict[str, Any]:
    """Accuracy and macro-F1 of the prompts in ``checkpoint`` (a run directory) on a dataset's test
    split, written as JSON to ``out`` (default ``<checkpoint>/eval_<dataset>_<subsample>.json``).

    In a process group (``fastprompt eval`` under torchrun starts one) every rank calls it and
    scores its :func:`rank_share` of the split; rank 0 alone holds the run directory's lock and
    writes the file; the metrics (every rank returns them) are one process's. A failure of one rank (the lock
    held by another job, a missing dataset) stops every rank with a line of its own
    (:func:`~fastprompt.distributed.on_every_rank`). Without a group (one process, or one rank of a
    grid between its runs) the whole split is this process's.

    Returns the metrics of :func:`evaluate` with ``checkpoint``, ``method``, ``dataset``,
    ``subsample``, ``split`` (what the file holds) and ``written_to`` (the file).
    """
    from .state import write_json

    rank, world = distributed.world()
    # an eval writing into a run directory holds the run's lock: while a run still trains there (or
    # another eval writes), this one is refused with the holder named
    into_run = out is None or os.path.abspath(os.path.dirname(os.path.abspath(out))) == os.path.abspath(checkpoint)
    lock = FolderLock(checkpoint, "fastprompt eval") if into_run and rank == 0 else None
    try:
        cfg, learner, data, test_tf, dev = distributed.on_every_rank(
            lambda: _load_checkpoint(checkpoint, data_root, dataset_name, subsample, device, lock, into_run),
            EVAL_ERRORS)
        metrics = _score(cfg, learner, data, test_tf, dev, batch_size, num_workers, rank, world)
        result = {"checkpoint": os.path.abspath(checkpoint), "method": cfg["METHOD"], "dataset": data.name,
                  "subsample": subsample, "split": "test", **metrics}
        out = out or os.path.join(checkpoint, f"eval_{data.name}_{subsample}.json")
        distributed.on_every_rank(lambda: write_json(out, result) if rank == 0 else None, EVAL_ERRORS)
        result["written_to"] = out
        return result
    finally:
        if lock is not None:
            lock.release()


def _load_checkpoint(checkpoint: str, data_root: str, dataset_name: str, subsample: str, device: str,
                     lock: Optional[FolderLock], into_run: bool):
    """``(cfg, learner, dataset, test_transform, device)``: the run's configuration and prompts on its
    model, set to the dataset's classes, after ``lock`` (rank 0's, or ``None``) is taken."""
    from ..data import load_dataset
    from ..data.softcpt.items import MultiTaskDataset
    from ..data.transforms import transforms_for_model
    from ..learners.base import PromptLearner
    from ..learners.checkpoint import read_prompt_checkpoint
    from .build import build_model
    from .config import read_yaml, resolve_config
    from .methods import MULTITASK_METHODS

    if into_run and not os.path.isdir(checkpoint):
        raise TrainError(f"{checkpoint} is not a fastprompt run directory (no such folder)")
    if lock is not None:
        lock.acquire()
    cfg_path = os.path.join(checkpoint, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise TrainError(f"{checkpoint} is not a fastprompt run directory (no config.yaml)")
    cfg = resolve_config([(cfg_path, read_yaml(cfg_path))])
    saved, _ = read_prompt_checkpoint(checkpoint)
    if saved.get("method") != cfg["METHOD"]:
        raise TrainError(f"{checkpoint}: prompt.safetensors holds {saved.get('method')!r} prompts but config.yaml "
                         f"is a {cfg['METHOD']!r} run")
    dev = distributed.checked_device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, _, _ = build_model(cfg, dev)
    learner = PromptLearner.from_pretrained(checkpoint, model=model)
    data = load_dataset(dataset_name, data_root, shots=0, seed=max(int(cfg["SEED"]), 0), subsample=subsample)
    if isinstance(data, MultiTaskDataset):  # every task with its name and classes; scored within its task
        if not hasattr(learner, "set_tasks"):
            raise TrainError(f"{dataset_name} is a multi-task dataset (each image scored against its own task's "
                             f"classes), and {checkpoint} holds {cfg['METHOD']} prompts for one class list: test "
                             "it on one of the set's datasets instead")
        learner.set_tasks(data.task_pairs())
        data = data.joint()
    elif cfg["METHOD"] in MULTITASK_METHODS:  # the dataset is one task (SoftCPT: its name generates the context)
        learner.set_tasks({data.name: data.classnames})
    else:
        learner.set_classnames(data.classnames)
    _, test_tf = transforms_for_model(model)
    return cfg, learner.to(dev), data, test_tf, dev


def _score(cfg, learner, data, test_tf, dev: torch.device, batch_size: Optional[int], num_workers: int, rank: int,
           world: int) -> Dict[str, Any]:
    """:func:`evaluate` of ``learner`` on this rank's share of ``data.test``, gathered over the ranks."""
    from torch.utils.data import DataLoader

    from ..data.images import ImageDataset, skip_collate

    share = rank_share(ImageDataset(data.test, test_tf), rank, world)
    loader = DataLoader(share, batch_size=batch_size or int(cfg["DATALOADER"]["TEST"]["BATCH_SIZE"]), shuffle=False,
                        num_workers=num_workers, collate_fn=skip_collate)
    tasks = TaskSlices.of(data) if getattr(data, "multitask", None) is not None else None
    return evaluate(learner, loader, dev, len(data.classnames), gather=distributed.gather_cat, images=len(data.test),
                    split="test", max_unreadable=float(cfg["DATASET"]["MAX_UNREADABLE"]),
                    classnames=tasks.qualified(data.classnames) if tasks else data.classnames, tasks=tasks)

