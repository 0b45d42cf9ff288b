"""SoftCPT's hard-sharing baselines: CoOp prompts over the tasks of a multi-task set.

kding1225/softcpt @ 7cab4b9 ``trainers/mtcoop_hard.py`` (trainer ``MTCoOpHard``, settings
``TRAINER.MTCOOPH.*``), the baselines the paper compares SoftCPT with (README, "hard sharing"):

* ``TSC=False, CSC=False``: one CoOp context shared by every class of every task;
* ``TSC=True,  CSC=False``: one CoOp context per task (each task its own ``PromptLearner``);
* ``CSC=True``: one context per class (with ``TSC`` the same prompts, held per task).

The prompt is CoOp's ``[SOT][ctx][class tokens][.][EOT]`` (``TOKEN_POSITION`` end / middle /
front; ``CTX_INIT`` words make the context generic, as CoOp). Logits ``[B, C_tot]`` over the
joint class list; the loss is the trainer's ``mutitask_loss``: per task, the cross-entropy of the
task's slice over the samples of that task (``reduction='sum'``), summed over tasks, divided by
B. The original encodes every class of every task each step; here ``loss`` encodes only the
tasks present in the batch (exact: the loss reads no other logits), and the per-task contexts run
as one packed text pass with one prefix group per task (``concat_plans``), as SoftCPT's.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...towers.text_plan import concat_plans
from ..base import PromptLearner
from ..coop import CoOpConfig
from ..prompts import context_template, coop_plan, initial_context
from .multitask import TaskLearner, stand_in_classnames
from .tasks import TaskLayout, TaskSpec


@dataclasses.dataclass
class SoftCPTHardConfig(CoOpConfig):
    """The hard-sharing baselines' settings (original ``TRAINER.MTCOOPH.*`` names in brackets).

    Attributes: those of :class:`~fastprompt.learners.coop.CoOpConfig` (``n_ctx`` [N_CTX],
    ``ctx_init`` [CTX_INIT], ``csc`` [CSC], ``class_token_position`` [TOKEN_POSITION]), and
        task_specific: one context per task instead of one for all classes [TSC].
    """

    task_specific: bool = False


ONE_TASK = "classes"  # the task name of a plain class list


def _one_task(tasks: TaskSpec) -> TaskSpec:
    """A plain list of class names as one task; anything else as it is (``TaskLayout.parse`` checks it)."""
    if isinstance(tasks, (list, tuple)) and tasks and all(isinstance(t, str) for t in tasks):
        return [(ONE_TASK, list(tasks))]
    return tasks


class SoftCPTHardLearner(TaskLearner, PromptLearner):
    """Hard-sharing baseline of the SoftCPT protocol (see the module docstring).

    Construct like :class:`~fastprompt.learners.softcpt.SoftCPTLearner`: ``from_model(model,
    tasks, **cfg)`` with ``tasks`` mapping task names to class lists (or ``(name, classes)``
    pairs); the model never reads the task names (they name the results), so a plain class list
    is one task (:data:`ONE_TASK`), and the learner is then CoOp with its per-task loss. Trainable: ``ctx`` ``[M, D]`` (one context), ``[T, M, D]`` (``task_specific``) or
    ``[C_tot, M, D]`` (``csc``, class-major in joint order).
    """

    method = "softcpt_hard"
    config_class = SoftCPTHardConfig
    frozen_image_side = True  # images enter only through encode_image
    loss_name = "the hard-sharing baseline's loss"

    def __init__(self, model: nn.Module, tasks: TaskSpec, config: SoftCPTHardConfig, **kwargs):
        layout = TaskLayout.parse(_one_task(tasks))
        super().__init__(model, stand_in_classnames(layout), config, **kwargs)
        self._set_tasks(layout)
        self.template = context_template(self.tokenizer, config.n_ctx, config.ctx_init)
        generic = self.template.init_ids is not None  # CTX_INIT words: generic context, as CoOp
        self.class_specific = config.csc and not generic
        self.task_specific = config.task_specific and not self.class_specific
        rows = self.n_classes if self.class_specific else self.n_tasks if self.task_specific else None
        width, m = self.text_tower.width, self.template.n_ctx
        shape = (m, width) if rows is None else (rows, m, width)
        if self.task_specific and generic:  # every task's learner starts from the same words
            one = initial_context(self.text_tower, self.template, (m, width), config.init_std)
            self.ctx = nn.Parameter(one.unsqueeze(0).repeat(rows, 1, 1))
        else:
            self.ctx = nn.Parameter(initial_context(self.text_tower, self.template, shape, config.init_std))
        self._rebuild_plan()

    @classmethod
    def from_model(cls, model: nn.Module, tasks: TaskSpec, *, tokenizer=None, **cfg):
        """Wrap an open_clip model; ``tasks`` maps task name -> class names."""
        return super().from_model(model, tasks, tokenizer=tokenizer, **cfg)

    def set_tasks(self, tasks: TaskSpec) -> None:
        """Switch to other tasks (a plain class list: one task); prompts are kept (see :meth:`_check_reuse`)."""
        super().set_tasks(_one_task(tasks))

    def _reuse_limits(self) -> Tuple[Optional[str], Optional[str]]:
        return ("the per-task context (task_specific, TSC)" if self.task_specific else None,
                "the per-class context (csc)" if self.class_specific else None)

    def _rebuild_plan(self) -> None:
        tok, length, position = self.tokenizer, self.text_tower.context_length, self.config.class_token_position
        self._task_plans = [coop_plan(tok, classes, self.template, position=position, context_length=length)
                            for classes in self._layout.classes]
        self._joint_plan = coop_plan(tok, self._classnames, self.template, position=position,
                                     class_specific=self.class_specific, context_length=length)
        self._plans: Dict[tuple, object] = {}

    def text_features(self, tasks: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Unnormalised class text features of ``tasks``' classes in joint order (all by default):
        ``[sum of their C_t, E]``, with autograd into ``ctx``."""
        tasks = list(range(self.n_tasks)) if tasks is None else sorted(set(int(t) for t in tasks))
        key = tuple(tasks)
        if self.task_specific:  # task t = prefix group t, encoded with its own context
            if key not in self._plans:
                self._plans[key] = concat_plans([self._task_plans[t] for t in tasks])
            return self.text_tower.encode(self._plans[key], self.ctx[tasks])
        table = self.ctx.reshape(-1, self.ctx.shape[-1])
        if len(tasks) == self.n_tasks:
            return self.text_tower.encode(self._joint_plan, table)
        if key not in self._plans:
            rows = [c for t in tasks for c in range(*self._layout.class_ranges[t])]
            self._plans[key] = self._joint_plan.select(rows)  # keeps the class-specific slot numbering
        return self.text_tower.encode(self._plans[key], table)

    def _logits(self, images: torch.Tensor, tasks: Optional[Sequence[int]] = None) -> torch.Tensor:
        image = self.image_features(images)
        text = self.text_features(tasks)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale * image @ text.to(image.dtype).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C_tot]`` over the joint class list."""
        return self._logits(images)

    def loss(self, images: torch.Tensor, labels: torch.Tensor, tasks=None) -> torch.Tensor:
        """``MTCoOpHard.mutitask_loss``: per task, CE over the task's classes for its samples, summed, / B.

        ``labels``/``tasks`` as :meth:`SoftCPTLearner.loss <fastprompt.learners.softcpt.SoftCPTLearner.loss>`
        takes them (joint labels, labels within tasks, or the original's ``[B, C_tot]`` label matrix).
        """
        self._check_loss_labels(images, labels, tasks)
        matrix = self.label_matrix(labels, tasks)
        if labels.dim() == 2:
            self._check_matrix_rows(matrix)
        matrix = matrix.to(images.device)
        present: List[int] = []
        rows_of = {}
        for t, (start, end) in enumerate(self._layout.class_ranges):
            rows = (matrix[:, start:end] != -1).any(dim=-1)
            if rows.any():
                present.append(t)
                rows_of[t] = rows
        if not present:
            raise ValueError("labels assign no sample to any task")
        logits = self._logits(images, present)
        total, offset = 0.0, 0
        for t in present:
            start, end = self._layout.class_ranges[t]
            rows, width = rows_of[t], end - start
            target = matrix[rows, start:end].argmax(dim=-1)
            total = total + F.cross_entropy(logits[rows, offset:offset + width], target, reduction="sum")
            offset += width
        return total / images.shape[0]

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The original ``prompt_learner.ctx`` (one learner) or ``prompt_learner.learners.<t>.ctx``
        (``TSC``: one per task, stacked — or, with ``CSC``, joined class-major) -> ``ctx``
        (``state``: its names without ``prompt_learner.``, :func:`~fastprompt.learners.checkpoint.original_prompt_state`)."""
        # the whole CustomCLIP state (frozen CLIP, token buffers) may come: keep the contexts
        state = {k: v for k, v in state.items() if k == "ctx" or (k.startswith("learners.") and k.endswith(".ctx"))}
        per_task = sorted((k for k in state if k.startswith("learners.") and k.endswith(".ctx")),
                          key=lambda k: int(k.split(".")[1]))
        if per_task:
            parts = [state.pop(k) for k in per_task]
            state["ctx"] = torch.cat(parts) if parts[0].dim() == 3 else torch.stack(parts)
        return state

    def extra_repr(self) -> str:
        sharing = "per class" if self.class_specific else "per task" if self.task_specific else "one for all"
        return (f"method={self.method!r}, context={sharing}, n_tasks={self.n_tasks}, n_classes={self.n_classes}, "
                f"config={self.config}")
