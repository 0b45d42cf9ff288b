"""Per-task evaluation of a multi-task run (SoftCPT's General-10, Plant-6, Fashion-20).

kding1225/softcpt's evaluator (``dist/Dassl.pytorch/dassl/evaluation/evaluator.py``
``ClassificationMT``, selected by ``TEST.EVALUATOR: "ClassificationMT"`` in its
``configs/trainers/MTCoOp*/*.yaml``) scores each test image against **its own task's classes
only**: it softmaxes every task's slice of the ``[B, C_tot]`` logits, keeps the rows whose label
slice is not all -1 and takes the argmax within the slice. Each task then gets its own metric
(``taskid2metric``: ``overall_acc`` = 100 * correct / total; ``mean_acc`` = the mean over the
task's classes of the per-class accuracy from the confusion matrix), and the result the trainer
selects on and reports (``results["metric"]``) is the unweighted mean over tasks.

Here a test item's label is its joint label (:class:`~fastprompt.data.softcpt.items.JointDataset`),
which names its task; :func:`within_task` is the argmax restricted to that task's slice (a softmax
does not move an argmax). Two choices where the original has no answer: a class of a task with no
test image is left out of ``mean_acc`` (the original divides 0 by 0 and reports nan), and a task
with no readable test image is a :class:`~fastprompt.errors.DataError` (the original divides by
zero and stops).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch

from ..errors import DataError

__all__ = ["TaskSlices", "within_task", "task_metrics", "describe", "TASK_METRICS"]

TASK_METRICS = ("overall_acc", "mean_acc")


@dataclass(frozen=True)
class TaskSlices:
    """The tasks of a joint label space: ``names``, ``ranges`` (``(start, end)`` of each task's
    classes in it) and ``metrics`` (each task's ``overall_acc`` / ``mean_acc``), in task order."""

    names: Tuple[str, ...]
    ranges: Tuple[Tuple[int, int], ...]
    metrics: Tuple[str, ...]

    def __post_init__(self):
        if not (len(self.names) == len(self.ranges) == len(self.metrics)) or not self.names:
            raise ValueError(f"TaskSlices needs one name, range and metric per task, got {len(self.names)} names, "
                             f"{len(self.ranges)} ranges, {len(self.metrics)} metrics")
        for name, metric in zip(self.names, self.metrics):
            if metric not in TASK_METRICS:
                raise ValueError(f"task {name!r}: unknown metric {metric!r} (known: {list(TASK_METRICS)})")
        end = 0
        for name, (a, b) in zip(self.names, self.ranges):
            if a != end or b <= a:
                raise ValueError(f"task {name!r}: class range ({a}, {b}) does not continue the joint space at {end}")
            end = b

    @classmethod
    def of(cls, dataset) -> "TaskSlices":
        """From a :class:`~fastprompt.data.softcpt.items.MultiTaskDataset` (or its joint view)."""
        multi = getattr(dataset, "multitask", None) or dataset
        return cls(tuple(multi.task_names), tuple(tuple(r) for r in multi.class_ranges), tuple(multi.metrics))

    @property
    def n_classes(self) -> int:
        return self.ranges[-1][1]

    def qualified(self, classnames: Sequence[str]) -> List[str]:
        """``"<task>: <class>"`` for each joint class name (a name may be in several tasks)."""
        owner = self.class_task().tolist()
        return [f"{self.names[t]}: {c}" for t, c in zip(owner, classnames)]

    def class_task(self, device=None) -> torch.Tensor:
        """``[C_tot]`` int64: the task owning each joint class."""
        sizes = torch.tensor([b - a for a, b in self.ranges])
        return torch.repeat_interleave(torch.arange(len(self.names)), sizes).to(device)


def within_task(logits: torch.Tensor, labels: torch.Tensor, tasks: TaskSlices) -> torch.Tensor:
    """``[N]`` predictions: the argmax of ``logits [N, C_tot]`` over the classes of each row's task
    (the task owning its joint label, ``labels [N]``), as a joint class index."""
    if logits.shape[-1] != tasks.n_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes but the tasks' joint space has {tasks.n_classes}")
    owner = tasks.class_task(logits.device)
    row_task = owner[labels.to(logits.device)]
    outside = owner[None, :] != row_task[:, None]
    return logits.masked_fill(outside, float("-inf")).argmax(dim=-1)


def task_metrics(preds: torch.Tensor, labels: torch.Tensor, tasks: TaskSlices) -> Dict[str, Any]:
    """``{"tasks": [...], "task_average": x}`` of joint ``preds`` / ``labels`` ``[N]``.

    Each entry of ``tasks``: ``task`` (name), ``metric`` (its kind), ``value`` (that metric, in
    percent), ``accuracy``, ``correct``, ``total``; ``task_average``: the unweighted mean of the
    values (the original's ``results["metric"]``).
    """
    out: List[Dict[str, Any]] = []
    for name, (a, b), kind in zip(tasks.names, tasks.ranges, tasks.metrics):
        rows = (labels >= a) & (labels < b)
        total = int(rows.sum())
        if total == 0:
            raise DataError(f"task {name!r} has no (readable) test image: its {kind} is undefined (the original "
                            "divides by zero); check that task's split or the data root")
        y, p = labels[rows] - a, preds[rows] - a
        hit = p == y
        correct = int(hit.sum())
        accuracy = 100.0 * correct / total
        if kind == "overall_acc":
            value = accuracy
        else:
            n_true = torch.bincount(y, minlength=b - a).double()
            n_hit = torch.bincount(y[hit], minlength=b - a).double()
            present = n_true > 0
            value = 100.0 * float((n_hit[present] / n_true[present]).mean())
        out.append({"task": name, "metric": kind, "value": value, "accuracy": accuracy, "correct": correct,
                    "total": total})
    return {"tasks": out, "task_average": sum(t["value"] for t in out) / len(out)}


def describe(metrics: Dict[str, Any]) -> Sequence[str]:
    """Log lines of :func:`task_metrics`' result: one per task, then the average."""
    lines = [f"  task {t['task']!r}: {t['metric']} {t['value']:.2f}%  ({t['correct']}/{t['total']})"
             for t in metrics["tasks"]]
    return lines + [f"  average over {len(metrics['tasks'])} tasks: {metrics['task_average']:.2f}%"]
