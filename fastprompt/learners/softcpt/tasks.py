"""SoftCPT's task specification: task names with their class lists, and the joint label space.

Ding et al., "Prompt Tuning with Soft Context Sharing for Vision-Language Models" (kding1225/softcpt
``trainers/mtcoop.py``): T tasks, each with its own class list; the classes of all tasks form one
joint label space (task order, then class order).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Sequence, Tuple, Union

import torch

from ..prompts import clean_classnames

TaskSpec = Union[Mapping, Sequence[Tuple[str, Sequence[str]]]]


def parse_tasks(tasks: TaskSpec) -> Tuple[List[str], List[List[str]]]:
    """``tasks`` (mapping task name -> class names, or ``(name, classes)`` pairs) -> names, class lists."""
    if isinstance(tasks, Mapping):
        items = list(tasks.items())
    elif isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise ValueError("tasks must map task names to lists of class names (e.g. {'pets': ['cat', 'dog']}), "
                         f"got {type(tasks).__name__}")
    else:
        items = []
        for i, item in enumerate(tasks):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise ValueError(f"tasks[{i}] must be a (task name, class names) pair, got {item!r}")
            items.append(tuple(item))
    if not items:
        raise ValueError("tasks is empty: pass at least one task")
    names, classes = [], []
    for name, class_list in items:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"task names must be non-empty strings, got {name!r}")
        if name in names:
            raise ValueError(f"task {name!r} appears twice in tasks")
        try:
            classes.append(clean_classnames(class_list))
        except ValueError as err:
            raise ValueError(f"tasks[{name!r}]: {err}") from None
        names.append(name)
    return names, classes


class TaskLayout:
    """T tasks with their class lists, and the joint label space of their ``C_tot`` classes.

    Attributes:
        names: task names, in task order.
        classes: each task's (cleaned) class names.
        classnames: the joint class list (task order, then class order).
        class_ranges: ``(start, end)`` of each task's classes in the joint space.
        class_task: ``[C_tot]`` int64, the task owning each joint class.
    """

    def __init__(self, names: Sequence[str], classes: Sequence[Sequence[str]]):
        self.names = list(names)
        self.classes = [list(c) for c in classes]
        self.classnames = [c for cl in self.classes for c in cl]
        self.class_ranges: List[Tuple[int, int]] = []
        start = 0
        for cl in self.classes:
            self.class_ranges.append((start, start + len(cl)))
            start += len(cl)
        self.class_task = torch.repeat_interleave(torch.arange(len(self.names)),
                                                  torch.tensor([len(c) for c in self.classes]))

    @classmethod
    def parse(cls, tasks: TaskSpec) -> "TaskLayout":
        """From a mapping task name -> class names, or ``(name, classes)`` pairs."""
        return cls(*parse_tasks(tasks))

    @property
    def n_tasks(self) -> int:
        return len(self.names)

    @property
    def n_classes(self) -> int:
        return len(self.classnames)

    def as_dict(self) -> Dict[str, List[str]]:
        return {name: list(cl) for name, cl in zip(self.names, self.classes)}

    def pairs(self) -> List[list]:
        """``[[name, classes], ...]``, the JSON form a checkpoint records."""
        return [[name, list(cl)] for name, cl in zip(self.names, self.classes)]

    def task_index(self, task: Union[int, str]) -> int:
        """Index of ``task`` (its name or its index)."""
        if isinstance(task, str):
            if task not in self.names:
                raise ValueError(f"unknown task {task!r}; tasks are {self.names}")
            return self.names.index(task)
        if isinstance(task, bool) or not isinstance(task, int) and not (torch.is_tensor(task) and task.numel() == 1):
            raise ValueError(f"task must be a task name or index, got {task!r}")
        index = int(task)
        if not 0 <= index < self.n_tasks:
            raise ValueError(f"task index {index} is out of range for {self.n_tasks} tasks")
        return index

    def label_matrix(self, labels, tasks=None) -> torch.Tensor:
        """The original's ``[B, C_tot]`` label matrix (-1 outside the task, 0 inside, 1 at the class).

        ``labels``: joint labels ``[B]`` (``tasks=None``), labels within each sample's task with
        ``tasks`` (``[B]`` indices or a list of task names), or already a ``[B, C_tot]`` matrix.
        """
        labels = torch.as_tensor(labels)
        if labels.dim() == 2:
            if tasks is not None:
                raise ValueError("tasks must be None when labels is a [B, C_tot] label matrix")
            if labels.shape[1] != self.n_classes:
                raise ValueError(f"labels as a matrix must have {self.n_classes} columns (C_tot), "
                                 f"got {labels.shape[1]}")
            if ((labels < -1) | (labels > 1)).any():
                raise ValueError("a label matrix holds only -1 (other task), 0 and 1 (the class)")
            return labels.long()
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be integer class indices [B] or a [B, C_tot] matrix, got "
                             f"{labels.dtype} {tuple(labels.shape)}")
        labels = labels.long().cpu()
        if tasks is None:
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_classes):
                raise ValueError(f"joint labels must lie in [0, {self.n_classes}), got [{int(labels.min())}, "
                                 f"{int(labels.max())}] (pass tasks=... for labels within each task)")
            row_task = self.class_task[labels]
            joint = labels
        else:
            if isinstance(tasks, (list, tuple)):
                row_task = torch.tensor([self.task_index(t) for t in tasks], dtype=torch.long)
            else:
                row_task = torch.as_tensor(tasks).long().cpu()
                if row_task.numel() and (int(row_task.min()) < 0 or int(row_task.max()) >= self.n_tasks):
                    raise ValueError(f"tasks must lie in [0, {self.n_tasks}), got [{int(row_task.min())}, "
                                     f"{int(row_task.max())}]")
            if row_task.shape != labels.shape:
                raise ValueError(f"tasks must give one task per label: {tuple(row_task.shape)} vs "
                                 f"{tuple(labels.shape)}")
            sizes = torch.tensor([e - s for s, e in self.class_ranges])[row_task]
            if ((labels < 0) | (labels >= sizes)).any():
                bad = int(((labels < 0) | (labels >= sizes)).nonzero()[0])
                raise ValueError(f"labels[{bad}] = {int(labels[bad])} is not a class of task {int(row_task[bad])} "
                                 f"({int(sizes[bad])} classes)")
            joint = torch.tensor([s for s, _ in self.class_ranges], dtype=torch.long)[row_task] + labels
        matrix = torch.where(self.class_task[None, :] == row_task[:, None], 0, -1)
        matrix[torch.arange(labels.numel()), joint] = 1
        return matrix
