"""SoftCPT: multi-task prompt tuning with a task-shared meta-network generating each task's context.

Ding et al., "Prompt Tuning with Soft Context Sharing for Vision-Language Models" (arXiv 2208.13474,
Neurocomputing 2024); semantics follow kding1225/softcpt @ 7cab4b9 ``trainers/mtcoop.py``.
The settings (``config.py``), the tasks and their joint label space (``tasks.py``) and the
meta-network (``prompt_gen.py``) live beside this file; this one is the learner, whose six
variants share every method.

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

import math
from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...towers import TextPlan
from ...towers.text_plan import concat_plans
from ..base import PromptLearner
from ..checkpoint import original_prompt_state
from ..prompts import ContextTemplate, context_template, coop_plan, initial_context, tokenize_prompts
from .config import SoftCPTConfig
from .multitask import TaskLearner, stand_in_classnames
from .prompt_gen import ContextHolder, PromptGen
from .tasks import TaskLayout, TaskSpec

_PLAN_CACHE_SIZE = 64


class SoftCPTLearner(TaskLearner, PromptLearner):
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
    frozen_image_side = True  # images enter only through encode_image

    def __init__(self, model: nn.Module, tasks: TaskSpec, config: SoftCPTConfig, **kwargs):
        layout = TaskLayout.parse(tasks)
        super().__init__(model, stand_in_classnames(layout), config, **kwargs)
        self._set_tasks(layout)
        width, embed, device = self.text_tower.width, self.text_tower.embed_dim, self.text_tower.device
        tok = self.tokenizer
        # Same creation (RNG) order as the original: task context, class context, meta-network.
        self.task_template = self._template(config.task_n_ctx, config.task_ctx_init)
        self.task_specific = config.task_csc and self.task_template is not None and self.task_template.init_ids is None
        if self.task_template is not None:
            task_ctx = self._init_ctx(self.task_template, self.n_tasks, self.task_specific)
            self.task_prompt_learner = ContextHolder(task_ctx)
        self.class_template = None
        self.class_specific = False
        if config.class_features:
            self.class_template = self._template(config.class_n_ctx, config.class_ctx_init)
            self.class_specific = (config.class_csc and self.class_template is not None
                                   and self.class_template.init_ids is None)
            if self.class_template is not None:
                self.class_prompt_learner = ContextHolder(
                    self._init_ctx(self.class_template, self.n_classes, self.class_specific))
        in_dim = 2 * embed if config.class_features and config.pg_type == "lin" else embed
        self.template = context_template(tok, config.n_ctx)  # "X X ... X" placeholders, replaced by the context
        self.prompt_gen = PromptGen(config.pg_type, in_dim, config.n_ctx, width, config.init_std, device)
        # The class sampling's randperm draws (cls_sample_rate > 0) come from this CPU generator;
        # None: torch's global one, as the original. A run on the original's streams sets it to the
        # original's G at each step (fastprompt.replay.source.OriginalBatches).
        self.step_generator: Optional[torch.Generator] = None
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

    def _reuse_limits(self) -> Tuple[Optional[str], Optional[str]]:
        return ("task-specific task context (task_csc)" if self.task_specific else None,
                "class-specific class context (class_csc)" if self.class_specific else None)

    def _rebuild_plan(self) -> None:
        tok, length = self.tokenizer, self.text_tower.context_length
        clean_tasks = [n.replace("_", " ") for n in self._layout.names]
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
                                                context_length=length) for cl in self._layout.classes]
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
            start, end = self._layout.class_ranges[t]
            joint.extend(range(start, end) if idx is None else [start + int(i) for i in idx])
        unique_tasks = sorted(set(tasks))
        task_feats = self.task_features(unique_tasks)
        row_of_task = {t: i for i, t in enumerate(unique_tasks)}
        owner = torch.tensor([row_of_task[int(self._layout.class_task[c])] for c in joint], device=task_feats.device)
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
    def loss(self, images: torch.Tensor, labels: torch.Tensor, tasks=None) -> torch.Tensor:
        """SoftCPT's objective: per-task CE over the task's classes, summed over tasks, divided by B.

        ``labels``/``tasks``: see the module docstring (joint labels, per-task labels with
        ``tasks``, or the original's label matrix). Only the tasks present in the batch are
        encoded (exact: the loss reads no other logits).
        """
        self._check_loss_labels(images, labels, tasks)
        batch = images.shape[0]
        matrix = self.label_matrix(labels, tasks)
        if labels.dim() == 2:  # built by label_matrix from [B] labels, a matrix is right by construction
            self._check_matrix_rows(matrix)
        matrix = matrix.to(images.device)
        rate = self.config.cls_sample_rate
        selection, rows_of = [], {}
        for t, (start, end) in enumerate(self._layout.class_ranges):
            cur = matrix[:, start:end]
            idx = None
            if rate > 0:  # per task, in task order, every task (same RNG stream as the original)
                positive = (cur == 1).any(dim=0)
                pos, neg = torch.where(positive)[0], torch.where(~positive)[0]
                perm = torch.randperm(len(neg), generator=self.step_generator)
                neg = neg[perm[:math.ceil(len(neg) * rate)].to(neg.device)]
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
            start, end = self._layout.class_ranges[t]
            cols = torch.arange(start, end, device=matrix.device) if idx is None else \
                torch.tensor(idx, device=matrix.device) + start
            rows = rows_of[t]
            target = matrix[rows][:, cols].argmax(dim=-1)
            total = total + F.cross_entropy(logits[rows, offset:offset + len(cols)], target, reduction="sum")
            offset += len(cols)
        return total / batch

    # ---- checkpoints -------------------------------------------------------------------------
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
