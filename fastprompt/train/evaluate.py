"""Evaluation: accuracy and macro-F1 as Dassl's ``Classification`` evaluator prints them.

KaiyangZhou/Dassl.pytorch ``dassl/evaluation/evaluator.py``: ``accuracy = 100 * correct / total``,
``error = 100 - accuracy``, ``macro_f1 = 100 * f1_score(y_true, y_pred, average="macro",
labels=np.unique(y_true))`` (classes absent from the split do not count), plus per-class accuracy.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import torch

from ..errors import DataError

__all__ = ["predict", "classification_metrics", "evaluate", "check_unreadable"]


@torch.no_grad()
def predict(learner, batches: Iterable, device: torch.device,
            autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
    """``(predictions [N], labels [N])`` of ``learner(images).argmax(-1)`` over ``(images, labels)`` batches
    (``None`` batches, whose every image was unreadable, are skipped)."""
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
            preds.append(logits.argmax(dim=-1).cpu())
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
             classnames: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Metrics of ``learner`` over ``batches``; ``gather`` concatenates the ranks' tensors in DDP runs.

    ``images``: how many images the split has (over every rank). Those that could not be read are
    skipped by the loader; their count is in the metrics (``unreadable``), and a split with none
    readable, or with more than ``max_unreadable`` of them unreadable (``DATASET.MAX_UNREADABLE``),
    is a :class:`~fastprompt.errors.DataError` instead of an accuracy over what was left.
    """
    preds, labels = predict(learner, batches, device, autocast)
    if gather is not None:
        preds, labels = gather(preds), gather(labels)
    if images == 0:
        raise DataError(f"the {split} split has no images: there is nothing to evaluate")
    metrics = classification_metrics(preds, labels, n_classes, classnames)
    if images is not None:
        metrics["unreadable"] = check_unreadable(images - metrics["total"], images, f"the {split} split",
                                                 max_unreadable)
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
