"""What every multi-task learner of the SoftCPT protocol shares: its tasks, the joint label space,
the labels its loss takes and the checkpoint's task list (kding1225/softcpt: ``trainers/mtcoop.py``
and the hard-sharing baselines of ``trainers/mtcoop_hard.py`` read the same ``[B, C_tot]`` label
matrix of its Dassl fork).

:class:`TaskLearner` is a mixin placed before :class:`~fastprompt.learners.base.PromptLearner`
(``class L(TaskLearner, PromptLearner)``); the learner sets its tasks with ``_set_tasks`` before
building its plans and implements ``_check_reuse`` (which prompts a new task list can keep).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from .tasks import TaskLayout, TaskSpec

__all__ = ["TaskLearner", "stand_in_classnames"]


def stand_in_classnames(layout: TaskLayout) -> List[str]:
    """The class list a multi-task learner hands to ``PromptLearner.__init__``, which ``_set_tasks``
    replaces with the joint list right after.

    ``PromptLearner`` refuses two class names CLIP's tokenizer reads as one: right for one
    classifier, wrong across tasks, where each image is scored within its own task and one name
    may be a class of two (General-10: "sunflower" of Caltech-101 and of Oxford Flowers; Plant-6:
    the fruits and vegetables of FruitVegetable and KaggleVegetable). Within a task
    :meth:`TaskLayout.parse` still refuses it.
    """
    return [f"class {i}" for i in range(layout.n_classes)]


class TaskLearner:
    """Tasks, joint label space and label checks of a multi-task learner (see the module docstring)."""

    loss_name = "SoftCPT's loss"  # how label errors name the loss
    _layout: TaskLayout

    def _set_tasks(self, layout: TaskLayout) -> None:
        self._layout = layout
        self._classnames = layout.classnames

    # ---- tasks ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> Dict[str, List[str]]:
        """Task name -> class names (cleaned), in task order."""
        return self._layout.as_dict()

    @property
    def task_names(self) -> List[str]:
        return list(self._layout.names)

    @property
    def n_tasks(self) -> int:
        return self._layout.n_tasks

    @property
    def class_ranges(self) -> List[Tuple[int, int]]:
        """``(start, end)`` of every task's classes in the joint label space."""
        return list(self._layout.class_ranges)

    def task_index(self, task: Union[int, str]) -> int:
        """Index of ``task`` (its name or its index)."""
        return self._layout.task_index(task)

    def set_classnames(self, classnames: Sequence[str], task: Optional[str] = None) -> None:
        """Switch to one class list (base-to-novel, cross-dataset), as every learner does; prompts are kept.

        The learner scores classes within tasks, so the list becomes one task: ``task``
        names it (a dataset's task name), by default the learner's own task when it has exactly
        one. For several tasks use :meth:`set_tasks`.
        """
        if isinstance(classnames, Mapping):
            raise ValueError("set_classnames takes one list of class names; pass a tasks mapping to set_tasks")
        if task is None:
            if self.n_tasks != 1:
                raise ValueError(f"this {type(self).__name__} has {self.n_tasks} tasks: name the task of the new class list "
                                 "with set_classnames(names, task='<task name>'), or use set_tasks({...})")
            task = self._layout.names[0]
        self.set_tasks([(task, list(classnames))])

    def set_tasks(self, tasks: TaskSpec) -> None:
        """Switch to other tasks / class lists (same format as at construction); prompts are kept.

        Context learned per task needs the same number of tasks, context learned per class the
        same total number of classes (:meth:`_check_reuse`).
        """
        layout = TaskLayout.parse(tasks)
        self._check_reuse(layout)
        self._set_tasks(layout)
        self._rebuild_plan()

    def _reuse_limits(self) -> Tuple[Optional[str], Optional[str]]:
        """What the learner learned per task and per class, as an error names it (None: nothing)."""
        raise NotImplementedError

    def _check_reuse(self, layout: TaskLayout) -> None:
        """Refuse ``layout`` when a prompt learned per task or per class cannot serve it."""
        per_task, per_class = self._reuse_limits()
        for what, have, want, unit in ((per_task, self.n_tasks, layout.n_tasks, "tasks"),
                                       (per_class, self.n_classes, layout.n_classes, "classes")):
            if what and have != want:
                raise ValueError(f"{what} was learned for {have} {unit} and cannot be reused for {want}")

    def label_matrix(self, labels: torch.Tensor, tasks=None) -> torch.Tensor:
        """The original's ``[B, C_tot]`` label matrix (-1 outside the task, 0 inside, 1 at the class)."""
        return self._layout.label_matrix(labels, tasks)

    def _check_loss_labels(self, images: torch.Tensor, labels: torch.Tensor, tasks) -> None:
        """``labels`` in one of the loss's three forms for ``images [B, ...]``, else one ``ValueError``.

        Joint labels (``[B]``, ``tasks=None``) are class ids over the classes of all tasks,
        ``[0, C_tot)``: the learners' common check (int64 ``[B]`` in range, no host sync), with the
        SoftCPT forms named. Labels within each task (``tasks`` given) pass the same check; their range,
        ``[0, C_t)`` per sample, is checked by ``label_matrix`` against each sample's task. A label
        matrix is an integer ``[B, C_tot]`` of -1 / 0 / 1 with exactly one 1 in every task it places
        a sample in (``loss`` takes the argmax of the task's slice: a row of zeros, or two ones,
        would silently train class 0, or the first of the two).
        """
        n_tot = self.n_classes
        forms = (f"{self.loss_name} takes joint class ids [B] in [0, {n_tot}) over all {self.n_tasks} tasks "
                 f"(learner.class_ranges gives each task's slice), ids within each sample's task with "
                 f"tasks=[B task indices or names], or a [B, {n_tot}] label matrix")
        batch = images.shape[0] if isinstance(images, torch.Tensor) and images.dim() else None
        if isinstance(labels, torch.Tensor) and labels.dim() == 2:
            if labels.dtype == torch.bool or labels.dtype.is_floating_point or labels.dtype.is_complex:
                raise ValueError(f"a label matrix must be an integer tensor of -1 / 0 / 1, got {labels.dtype}; {forms}")
            if labels.shape[0] != batch:
                raise ValueError(f"labels describe {labels.shape[0]} samples but images has {batch}; {forms}")
            return  # its values: label_matrix (-1 / 0 / 1) and _check_matrix_rows (one 1 per task)
        # [B] labels, joint or within each sample's task: int64 ids in [0, C_tot) (a task's [0, C_t) lies
        # inside it); label_matrix then checks ids within tasks against each sample's own task.
        try:
            self.check_labels(images, labels)
        except ValueError as err:
            raise ValueError(f"{'joint labels' if tasks is None else 'labels within tasks'}: {err}; {forms}") from None

    def _check_matrix_rows(self, matrix: torch.Tensor) -> None:
        """Every task slice of the ``[B, C_tot]`` label matrix is all -1 (sample not in the task) or
        holds exactly one 1 and otherwise zeros."""
        matrix = matrix.cpu()  # one transfer for every task's check
        for t, (start, end) in enumerate(self._layout.class_ranges):
            cur = matrix[:, start:end]
            inside = (cur != -1).any(dim=-1)
            ones = (cur == 1).sum(dim=-1)
            bad = inside & (((cur == -1).any(dim=-1)) | (ones != 1))
            if bad.any():
                row = int(bad.nonzero()[0])
                raise ValueError(f"label matrix row {row} places the sample in task {self.task_names[t]!r} "
                                 f"(columns {start}..{end - 1}) but holds {cur[row].tolist()}: a task's slice is "
                                 f"all -1, or zeros with exactly one 1 at the class")


    def _checkpoint_classnames(self):
        """The ordered ``[task, classes]`` pairs: ``from_pretrained`` rebuilds the tasks from them."""
        return self._layout.pairs()

