"""SoftCPT: multi-task prompt tuning with a task-shared meta-network generating each task's context.

Ding et al., "Prompt Tuning with Soft Context Sharing for Vision-Language Models" (arXiv 2208.13474,
Neurocomputing 2024); semantics follow kding1225/softcpt @ 7cab4b9 ``trainers/mtcoop.py``.

T tasks, each with its own class list; the classes of all tasks form one joint label space of
``C_tot`` classes (task order, then class order). One step:

1. **task features**: ``[SOT][t_ctx x task_n_ctx] <task name>.[EOT]`` through the frozen text
   tower, with autograd into ``t_ctx`` -> ``f [T, E]`` (projected, not normalised);
2. optional **class features** (``class_features=True``, the "CA"/"CS" variants):
   ``[SOT][c_ctx x class_n_ctx] <class>.[EOT]`` -> ``g [C_tot, E]``; meta-net input
   ``[g_c ; f_task(c)]``;
3. **meta-network** ``prompt_gen``: ``x @ proj`` with ``proj [d_in, n_ctx * D]`` (no bias,
   N(0, init_std)) -> a ``[n_ctx, D]`` context per task (or per class);
4. **one batched text pass** over the classes of all tasks: each task's CoOp plan
   (``[SOT][ctx x n_ctx] <class>.[EOT]``) joined with ``concat_plans`` so that task = prefix
   group; the ``[SOT][ctx]`` prefix is encoded once per task and every class suffix attends to its
   task's prefix keys/values (G = T). The original runs the text encoder once per task over full
   77-token prompts;
5. logits ``[B, C_tot]``; the loss sums, over tasks, the cross-entropy restricted to the task's
   class slice over the samples of that task (``reduction='sum'``) and divides by B.

Exact savings beyond the packed text path: the loss only reads the class slices of tasks present
in the batch, so ``loss`` encodes only those tasks' classes (and only the selected ones with class
sampling); frozen features (``task_n_ctx=0`` / ``class_n_ctx=0``) are computed once per class list.

Variants (the paper's names; config fields in brackets): NATA = defaults; NATS [``task_csc``];
CATA [``class_features``]; CSTA [``class_features, class_csc``]; CATS/CSTS add ``task_csc``.
Meta-net types ``pg_type`` "lin" (default), "linmean", "lincls" (the last two need class features,
as in the original); class sampling ``cls_sample_rate`` (needs class features, as the original).
Not offered: ``FREEZE_CLS_PROMPT`` and ``CTX_INIT`` of the generated context (its words are
replaced by the generated vectors anyway).

Label formats accepted by ``loss(images, labels, tasks=None)`` (the choice made here):

* ``labels [B]`` int, ``tasks=None``: **joint** labels in ``[0, C_tot)`` (task = the one owning
  the class; use ``learner.class_ranges`` to convert);
* ``labels [B]`` int, ``tasks [B]`` (task indices, or a list of task names): labels **within**
  each sample's task, in ``[0, C_t)``;
* ``labels [B, C_tot]``: the original's label matrix (-1 outside the sample's task(s), 0 inside,
  1 at the class), which also allows a sample to belong to several tasks.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..towers import TextPlan
from ..towers.text_plan import concat_plans
from ..version import __version__
from .base import LearnerConfig, PromptLearner
from .checkpoint import original_prompt_state, write_prompt_checkpoint
from .prompts import (CLASS_TOKEN_POSITIONS, ContextTemplate, clean_classnames, context_template, coop_plan,
                      initial_context, tokenize_prompts)

PG_TYPES = ("lin", "linmean", "lincls")
_PLAN_CACHE_SIZE = 64
TaskSpec = Union[Mapping, Sequence[Tuple[str, Sequence[str]]]]


@dataclasses.dataclass
class SoftCPTConfig(LearnerConfig):
    """SoftCPT settings (defaults: SoftCPT-NATA as in the README, ``N_CTX=16, TASK_N_CTX=4, PG_TYPE=lin``).

    Attributes (original ``TRAINER.MTCOOP.*`` names in brackets):
        n_ctx: length of the generated context of every class prompt [N_CTX].
        class_token_position: where the class name goes in the class prompts, "end" (default,
            prefix-shared per task), "middle" or "front" [TOKEN_POSITION].
        task_n_ctx: learnable task context length; 0 = frozen task features of "<task name>."
            [TASK_N_CTX].
        task_ctx_init: initialise the task context from these words (then its word count is the
            length and the context is shared) [TASK_CTX_INIT].
        task_csc: one task context per task ("TS") instead of shared ("TA") [TASK_CSC].
        task_token_position: task name position in the task prompt [TASK_TOKEN_POSITION].
        class_features: feed class features to the meta-network ("CA"/"CS" variants) [CSC].
        class_n_ctx: learnable class-feature context length; 0 = frozen "<class>." [CLASS_N_CTX].
        class_ctx_init: init words of the class-feature context [CLASS_CTX_INIT].
        class_csc: one class-feature context per class ("CS") instead of shared ("CA") [CLASS_CSC].
        class_feature_token_position: class name position in the class-feature prompts
            [CLASS_TOKEN_POSITION].
        pg_type: meta-network "lin", "linmean" or "lincls" [PG_TYPE].
        cls_sample_rate: fraction of negative classes per task kept in ``loss`` (0 = all)
            [CLS_SAMPLE_RATE].
        init_std: std of the random init of the contexts and of ``proj`` (original: 0.02).
    """

    n_ctx: int = 16
    class_token_position: str = "end"
    task_n_ctx: int = 4
    task_ctx_init: str = ""
    task_csc: bool = False
    task_token_position: str = "end"
    class_features: bool = False
    class_n_ctx: int = 4
    class_ctx_init: str = ""
    class_csc: bool = False
    class_feature_token_position: str = "end"
    pg_type: str = "lin"
    cls_sample_rate: float = 0.0
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx", note=" (the generated context length)")
        self._require_at_least(0, "task_n_ctx", "class_n_ctx")
        for name in ("class_token_position", "task_token_position", "class_feature_token_position"):
            if getattr(self, name) not in CLASS_TOKEN_POSITIONS:
                raise ValueError(f"{name} must be one of {CLASS_TOKEN_POSITIONS}, got {getattr(self, name)!r}")
        if self.pg_type not in PG_TYPES:
            raise ValueError(f"pg_type must be one of {PG_TYPES}, got {self.pg_type!r}")
        if self.pg_type != "lin" and not self.class_features:
            raise ValueError(f"pg_type={self.pg_type!r} needs class_features=True (it reads the class half of the "
                             "meta-network input)")
        if not 0.0 <= self.cls_sample_rate <= 1.0:
            raise ValueError(f"cls_sample_rate must be in [0, 1], got {self.cls_sample_rate}")
        if self.cls_sample_rate > 0 and not self.class_features:
            raise ValueError("cls_sample_rate > 0 needs class_features=True (as in the original)")

    @property
    def variant(self) -> str:
        """The paper's name of this setting: NATA, NATS, CATA, CSTA, CATS or CSTS."""
        cls = "CS" if self.class_features and self.class_csc else ("CA" if self.class_features else "NA")
        return cls + ("TS" if self.task_csc else "TA")


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


class _Context(nn.Module):
    """Holds a learnable context ``ctx`` (named like the original's prompt learners)."""

    def __init__(self, ctx: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class PromptGen(nn.Module):
    """The meta-network: features ``[R, d_in] -> contexts [R, n_ctx, D]`` (original ``PromptGen``)."""

    def __init__(self, pg_type: str, in_dim: int, n_ctx: int, width: int, std: float, device):
        super().__init__()
        self.pg_type, self.n_ctx, self.width = pg_type, n_ctx, width
        self.proj = nn.Parameter(torch.empty(in_dim, n_ctx * width, device=device).normal_(0.0, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pg_type == "linmean":  # x = [class ; task]: their mean
            half = x.shape[-1] // 2
            x = (x[..., :half] + x[..., half:]) / 2.0
        elif self.pg_type == "lincls":  # class half only
            x = x[..., :x.shape[-1] // 2]
        return (x @ self.proj.to(x.dtype)).reshape(x.shape[0], self.n_ctx, self.width)


class SoftCPTLearner(PromptLearner):
    """SoftCPT multi-task prompt learner.

    Construct with ``SoftCPTLearner.from_model(model, tasks, **cfg)`` (or ``from_open_clip(name,
    pretrained, tasks, ...)``) where ``tasks`` maps each task name to its class names, in task
    order (or is a list of ``(name, classes)`` pairs). ``classnames`` is the flat joint class list,
    ``tasks`` the mapping, ``class_ranges[t] = (start, end)`` task t's slice of the joint space.

    Trainable (original names): ``task_prompt_learner.ctx`` ``[task_n_ctx, D]`` (``[T, ., D]``
    with ``task_csc``), ``class_prompt_learner.ctx`` (class features only; ``[C_tot, ., D]`` with
    ``class_csc``), ``prompt_gen.proj`` ``[d_in, n_ctx * D]`` with ``d_in = E`` (NA, linmean,
    lincls) or ``2E`` (lin with class features); E = text embedding width, D = text width.
    """

    method = "softcpt"
    config_class = SoftCPTConfig

    def __init__(self, model: nn.Module, tasks: TaskSpec, config: SoftCPTConfig, **kwargs):
        task_names, task_classes = parse_tasks(tasks)
        super().__init__(model, [c for names in task_classes for c in names], config, **kwargs)
        self._set_tasks(task_names, task_classes)
        width, embed, device = self.text_tower.width, self.text_tower.embed_dim, self.text_tower.device
        tok = self.tokenizer
        # Same creation (RNG) order as the original: task context, class context, meta-network.
        self.task_template = self._template(config.task_n_ctx, config.task_ctx_init)
        self.task_specific = config.task_csc and self.task_template is not None and self.task_template.init_ids is None
        if self.task_template is not None:
            self.task_prompt_learner = _Context(self._init_ctx(self.task_template, self.n_tasks, self.task_specific))
        self.class_template = None
        self.class_specific = False
        if config.class_features:
            self.class_template = self._template(config.class_n_ctx, config.class_ctx_init)
            self.class_specific = (config.class_csc and self.class_template is not None
                                   and self.class_template.init_ids is None)
            if self.class_template is not None:
                self.class_prompt_learner = _Context(
                    self._init_ctx(self.class_template, self.n_classes, self.class_specific))
        in_dim = 2 * embed if config.class_features and config.pg_type == "lin" else embed
        self.prompt_gen = PromptGen(config.pg_type, in_dim, config.n_ctx, width, config.init_std, device)
        self.template = context_template(tok, config.n_ctx)  # "X X ... X" placeholders, replaced by the context
        self._rebuild_plan()

    # ---- construction helpers ------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, tasks: TaskSpec, *, tokenizer=None, **cfg):
        """Wrap an open_clip model; ``tasks`` maps task name -> class names (see the class docstring)."""
        return super().from_model(model, tasks, tokenizer=tokenizer, **cfg)

    @classmethod
    def from_open_clip(cls, name: str, pretrained: Optional[str], tasks: TaskSpec, **kwargs):
        """Build the open_clip model ``name`` with weights ``pretrained``; ``tasks`` as in ``from_model``."""
        return super().from_open_clip(name, pretrained, tasks, **kwargs)

    def _template(self, n_ctx: int, ctx_init: str) -> Optional[ContextTemplate]:
        if not ctx_init and n_ctx == 0:
            return None  # frozen prompt "<name>."
        return context_template(self.tokenizer, n_ctx, ctx_init)

    def _init_ctx(self, template: ContextTemplate, rows: int, specific: bool) -> torch.Tensor:
        shape = (rows, template.n_ctx, self.text_tower.width) if specific else (template.n_ctx, self.text_tower.width)
        return initial_context(self.text_tower, template, shape, self.config.init_std)

    def _set_tasks(self, names: List[str], classes: List[List[str]]) -> None:
        self._task_names = names
        self._task_classes = classes
        self._classnames = [c for cl in classes for c in cl]
        ranges, start = [], 0
        for cl in classes:
            ranges.append((start, start + len(cl)))
            start += len(cl)
        self._class_ranges = ranges
        self._class_task = torch.repeat_interleave(torch.arange(len(names)), torch.tensor([len(c) for c in classes]))

    # ---- tasks ---------------------------------------------------------------------------------
    @property
    def tasks(self) -> Dict[str, List[str]]:
        """Task name -> class names (cleaned), in task order."""
        return {name: list(cl) for name, cl in zip(self._task_names, self._task_classes)}

    @property
    def task_names(self) -> List[str]:
        return list(self._task_names)

    @property
    def n_tasks(self) -> int:
        return len(self._task_names)

    @property
    def class_ranges(self) -> List[Tuple[int, int]]:
        """``(start, end)`` of every task's classes in the joint label space."""
        return list(self._class_ranges)

    def task_index(self, task: Union[int, str]) -> int:
        """Index of ``task`` (its name or its index)."""
        if isinstance(task, str):
            if task not in self._task_names:
                raise ValueError(f"unknown task {task!r}; tasks are {self._task_names}")
            return self._task_names.index(task)
        if isinstance(task, bool) or not isinstance(task, int) and not (torch.is_tensor(task) and task.numel() == 1):
            raise ValueError(f"task must be a task name or index, got {task!r}")
        index = int(task)
        if not 0 <= index < self.n_tasks:
            raise ValueError(f"task index {index} is out of range for {self.n_tasks} tasks")
        return index

    def set_classnames(self, tasks: TaskSpec) -> None:
        """Switch to other tasks / class lists (same format as at construction); prompts are kept.

        Task-specific task context needs the same number of tasks, class-specific class context
        the same total number of classes.
        """
        names, classes = parse_tasks(tasks)
        n_classes = sum(len(c) for c in classes)
        if self.task_specific and len(names) != self.n_tasks:
            raise ValueError(f"task-specific task context (task_csc) was learned for {self.n_tasks} tasks and "
                             f"cannot be reused for {len(names)}")
        if self.class_specific and n_classes != self.n_classes:
            raise ValueError(f"class-specific class context (class_csc) was learned for {self.n_classes} classes "
                             f"and cannot be reused for {n_classes}")
        self._set_tasks(names, classes)
        self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        tok, length = self.tokenizer, self.text_tower.context_length
        clean_tasks = [n.replace("_", " ") for n in self._task_names]
        self._task_plan = self._class_feature_plan = None
        self._frozen: Dict[str, torch.Tensor] = {}
        self._frozen_texts = {"task": clean_tasks, "class": list(self._classnames)}
        if self.task_template is not None:
            self._task_plan = coop_plan(tok, clean_tasks, self.task_template, position=self.config.task_token_position,
                                        class_specific=self.task_specific, context_length=length)
        if self.config.class_features:
            if self.class_template is not None:
                self._class_feature_plan = coop_plan(
                    tok, self._classnames, self.class_template, position=self.config.class_feature_token_position,
                    class_specific=self.class_specific, context_length=length)
            # Per-class generated context: one class-specific plan over the joint class list.
            self._class_plan = coop_plan(tok, self._classnames, self.template,
                                         position=self.config.class_token_position, class_specific=True,
                                         context_length=length)
        else:
            self._task_class_plans = [coop_plan(tok, cl, self.template, position=self.config.class_token_position,
                                                context_length=length) for cl in self._task_classes]
        self._plan_cache: Dict[tuple, TextPlan] = {}

    # ---- features ------------------------------------------------------------------------------
    def _frozen_features(self, kind: str) -> torch.Tensor:
        """Frozen features of "<name>." prompts (``task_n_ctx=0`` / ``class_n_ctx=0``), computed once."""
        key = f"{kind}:{self.text_tower.device}:{self.text_tower.dtype}"
        if key not in self._frozen:
            with torch.no_grad():
                names = self._frozen_texts[kind]
                ids = tokenize_prompts(self.tokenizer, [f"{name}." for name in names], names)
                self._frozen[key] = self.text_tower.encode_token_ids(ids.to(self.text_tower.device)).float()
        return self._frozen[key]

    def _cached(self, key: tuple, build) -> TextPlan:
        """Plans of task subsets, reused across steps (bounded: batches see few distinct subsets)."""
        if key not in self._plan_cache:
            if len(self._plan_cache) >= _PLAN_CACHE_SIZE:
                self._plan_cache.clear()
            self._plan_cache[key] = build()
        return self._plan_cache[key]

    def _encode_context_prompts(self, plan: TextPlan, rows: List[int], holder: nn.Module, kind: str) -> torch.Tensor:
        """Features ``[len(rows), E]`` of the task / class-feature prompts ``rows``, autograd into the context."""
        if rows == list(range(plan.n_sequences)):
            sub = plan
        elif kind == "task":
            sub = self._cached((kind, tuple(rows)), lambda: plan.select(rows))
        else:  # class subsets change every step with class sampling: not cached
            sub = plan.select(rows)
        ctx = holder.ctx
        return self.text_tower.encode(sub, ctx.reshape(-1, ctx.shape[-1])).float()

    def task_features(self, tasks: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Unnormalised task features ``[len(tasks), E]`` (all tasks by default)."""
        tasks = list(range(self.n_tasks)) if tasks is None else list(tasks)
        if self._task_plan is None:
            return self._frozen_features("task")[tasks]
        return self._encode_context_prompts(self._task_plan, tasks, self.task_prompt_learner, "task")

    def class_features(self, classes: Sequence[int]) -> torch.Tensor:
        """Unnormalised class features ``[len(classes), E]`` of joint classes (class-feature variants)."""
        classes = list(classes)
        if self._class_feature_plan is None:
            return self._frozen_features("class")[classes]
        return self._encode_context_prompts(self._class_feature_plan, classes, self.class_prompt_learner, "class")

    def text_features(self, selection: Optional[Sequence[Tuple[int, Optional[Sequence[int]]]]] = None) -> torch.Tensor:
        """Unnormalised class text features, with autograd into every trainable tensor.

        ``selection``: ``(task, classes)`` pairs, ``classes`` being indices within the task (None =
        all of them); default: every class of every task, i.e. ``[C_tot, E]`` in joint order.
        Returns the rows in selection order.
        """
        if selection is None:
            selection = [(t, None) for t in range(self.n_tasks)]
        tasks = [t for t, _ in selection]
        whole = all(idx is None for _, idx in selection)
        if not self.config.class_features:
            ctx = self.prompt_gen(self.task_features(tasks))                       # [G, n_ctx, D]: one per task
            if whole:
                plan = self._cached(("classes",) + tuple(tasks), lambda: concat_plans(
                    [self._task_class_plans[t] for t in tasks]))
            else:
                plan = concat_plans([self._task_class_plans[t] if idx is None else
                                     self._task_class_plans[t].select(list(idx)) for t, idx in selection])
            return self.text_tower.encode(plan, ctx)                               # task t = prefix group t
        # Class-feature variants: a generated context per class, one class-specific plan.
        joint = []
        for t, idx in selection:
            start, end = self._class_ranges[t]
            joint.extend(range(start, end) if idx is None else [start + int(i) for i in idx])
        unique_tasks = sorted(set(tasks))
        task_feats = self.task_features(unique_tasks)
        row_of_task = {t: i for i, t in enumerate(unique_tasks)}
        owner = torch.tensor([row_of_task[int(self._class_task[c])] for c in joint], device=task_feats.device)
        x = torch.cat([self.class_features(joint), task_feats[owner]], dim=1)      # [K, 2E]
        ctx = self.prompt_gen(x)                                                   # [K, n_ctx, D]
        if joint == list(range(self.n_classes)):
            plan, table = self._class_plan, ctx
        else:
            plan = self._class_plan.select(joint)  # keeps the joint slot numbering: scatter into a full table
            index = torch.tensor(joint, device=ctx.device)
            table = ctx.new_zeros(self.n_classes, *ctx.shape[1:]).index_copy(0, index, ctx)
        return self.text_tower.encode(plan, table.reshape(-1, table.shape[-1]))

    def text_classifier(self, task: Union[int, str, None] = None) -> torch.Tensor:
        """L2-normalised class embeddings ``[C_tot, E]`` (or ``[C_t, E]`` for one task)."""
        selection = None if task is None else [(self.task_index(task), None)]
        with torch.no_grad():
            features = self.text_features(selection)
        return features / features.norm(dim=-1, keepdim=True)

    def _logits(self, images: torch.Tensor, selection, shift: float = 0.0) -> torch.Tensor:
        image_features = self.encode_image(images)
        text = self.text_features(selection)
        if shift:
            text = text + shift
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale * image_features @ text.to(image_features.dtype).t()

    def forward(self, images: torch.Tensor, task: Union[int, str, None] = None) -> torch.Tensor:
        """Logits ``[B, C_tot]`` over the joint class space, or ``[B, C_t]`` over ``task``'s classes."""
        selection = None if task is None else [(self.task_index(task), None)]
        return self._logits(images, selection)

    # ---- loss ----------------------------------------------------------------------------------
    def label_matrix(self, labels: torch.Tensor, tasks=None) -> torch.Tensor:
        """The original's ``[B, C_tot]`` label matrix (-1 outside the task, 0 inside, 1 at the class)."""
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
            row_task = self._class_task[labels]
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
            sizes = torch.tensor([e - s for s, e in self._class_ranges])[row_task]
            if ((labels < 0) | (labels >= sizes)).any():
                bad = int(((labels < 0) | (labels >= sizes)).nonzero()[0])
                raise ValueError(f"labels[{bad}] = {int(labels[bad])} is not a class of task {int(row_task[bad])} "
                                 f"({int(sizes[bad])} classes)")
            joint = torch.tensor([s for s, _ in self._class_ranges], dtype=torch.long)[row_task] + labels
        matrix = torch.where(self._class_task[None, :] == row_task[:, None], 0, -1)
        matrix[torch.arange(labels.numel()), joint] = 1
        return matrix

    def loss(self, images: torch.Tensor, labels: torch.Tensor, tasks=None) -> torch.Tensor:
        """SoftCPT's objective: per-task CE over the task's classes, summed over tasks, divided by B.

        ``labels``/``tasks``: see the module docstring (joint labels, per-task labels with
        ``tasks``, or the original's label matrix). Only the tasks present in the batch are
        encoded (exact: the loss reads no other logits).
        """
        batch = images.shape[0]
        matrix = self.label_matrix(labels, tasks).to(images.device)
        if matrix.shape[0] != batch:
            raise ValueError(f"labels describe {matrix.shape[0]} samples but images has {batch}")
        rate = self.config.cls_sample_rate
        selection, rows_of = [], {}
        for t, (start, end) in enumerate(self._class_ranges):
            cur = matrix[:, start:end]
            idx = None
            if rate > 0:  # per task, in task order, every task (same RNG stream as the original)
                positive = (cur == 1).any(dim=0)
                pos, neg = torch.where(positive)[0], torch.where(~positive)[0]
                neg = neg[torch.randperm(len(neg))[:math.ceil(len(neg) * rate)].to(neg.device)]
                idx = torch.sort(torch.cat([pos, neg])).values.tolist()  # column order, as the original's mask
            rows = (cur != -1).any(dim=-1)
            if rows.any():
                selection.append((t, idx))
                rows_of[t] = rows
        if not selection:
            raise ValueError("labels assign no sample to any task")
        # The original gives sampled classes the feature f + 1e-6 (unselected ones 1e-6, never read).
        logits = self._logits(images, selection, shift=1e-6 if rate > 0 else 0.0)
        total, offset = 0.0, 0
        for t, idx in selection:
            start, end = self._class_ranges[t]
            cols = torch.arange(start, end, device=matrix.device) if idx is None else \
                torch.tensor(idx, device=matrix.device) + start
            rows = rows_of[t]
            target = matrix[rows][:, cols].argmax(dim=-1)
            total = total + F.cross_entropy(logits[rows, offset:offset + len(cols)], target, reduction="sum")
            offset += len(cols)
        return total / batch

    # ---- checkpoints -------------------------------------------------------------------------
    def save_pretrained(self, directory: str) -> None:
        """As ``PromptLearner.save_pretrained``; ``classnames`` records the ordered ``(task, classes)`` pairs."""
        config = {
            "method": self.method,
            "config": self.config.to_dict(),
            "model_name": self.model_name,
            "pretrained": self.pretrained,
            "classnames": [[name, classes] for name, classes in zip(self._task_names, self._task_classes)],
            "fastprompt_version": __version__,
        }
        metadata = {"method": self.method, "backbone": str(self.model_name), "pretrained": str(self.pretrained),
                    "fastprompt_version": __version__}
        write_prompt_checkpoint(directory, dict(self.trainable_named_parameters()), config, metadata)

    def load_original_state_dict(self, state) -> None:
        """Load the original ``CustomCLIP`` prompt tensors.

        ``state``: the full ``CustomCLIP`` state dict (keys ``task_prompt_learner.ctx``,
        ``class_prompt_learner.ctx``, ``prompt_gen.proj``; frozen CLIP weights and token buffers
        are ignored), a path to it, or a mapping of the Dassl model names to their checkpoints
        (``{"task_prompt_learner": state_or_path, "prompt_gen": ...}``, as saved under
        ``output/<name>/model.pth.tar-N``).
        """
        if isinstance(state, Mapping) and state and all(
                isinstance(v, (Mapping, str)) or hasattr(v, "__fspath__") for v in state.values()) \
                and not ("state_dict" in state and isinstance(state["state_dict"], Mapping)):
            flat = {}
            for name, sub in state.items():
                flat.update({f"{name}.{k}": v for k, v in original_prompt_state(sub).items()})
            state = flat
        tensors = {}
        for name, tensor in original_prompt_state(state).items():
            if name.split(".")[0] in ("image_encoder", "text_encoder", "logit_scale") or \
                    name.endswith(("token_prefix", "token_suffix")):
                continue  # frozen CLIP weights and per-class token buffers are rebuilt here
            if name.endswith(".ctx") and tensor.numel() == 0:
                continue  # n_ctx = 0: the original keeps an empty buffer
            tensors[name] = tensor
        self.load_prompt_state(tensors, source="original state dict")

    def extra_repr(self) -> str:
        return (f"method={self.method!r}, variant={self.config.variant!r}, n_tasks={self.n_tasks}, "
                f"n_classes={self.n_classes}, config={self.config}")
