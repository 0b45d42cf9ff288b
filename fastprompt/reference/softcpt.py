"""Literal re-implementation of SoftCPT (Soft Context Sharing for Prompt Tuning) on open_clip.

Source followed: kding1225/softcpt @ 7cab4b9 ``trainers/mtcoop.py`` (classes ``TaskPromptLearner``,
``ClassPromptLearner``, ``PromptLearner``, ``PromptGen``, ``CustomCLIP`` and the trainer's
``mutitask_loss``/``mutitask_loss2``), with the label layout of its Dassl fork
(``dist/Dassl.pytorch/dassl/data/data_manager.py``: a ``[B, C_tot]`` label matrix holding -1 outside
the sample's task(s), 0 inside, 1 at the class).

The structure is the original's, on purpose (parity oracle and benchmark "before" side):

* task prompts ``[SOT][t_ctx x TASK_N_CTX] <task name>.[EOT]`` (full 77 tokens, ``torch.cat``)
  through the frozen text encoder **with** autograd into ``t_ctx`` -> task features ``[T, E]``
  (projected, not normalised); ``t_ctx`` shared (``task_csc=False``, "TA") or per task ("TS");
  with ``n_ctx == 0`` the context is a buffer (not optimized);
* with ``csc=True`` (the original's ``CSC``: the "CA"/"CS" variants) class prompts
  ``[SOT][c_ctx x CLASS_N_CTX] <class>.[EOT]`` over all classes of all tasks give class features
  ``[C_tot, E]``, concatenated with their task's feature -> ``[C_tot, 2E]``;
* ``PromptGen`` (``pg_type`` "lin": ``x @ proj``, ``proj [d_in, N_CTX * D]`` no bias, N(0, 0.02);
  "linmean": mean of the two halves of ``x`` first; "lincls": class half only) -> one
  ``[N_CTX, D]`` context per task (NA) or per class (CA/CS);
* one ``PromptLearner`` per task (buffers only) builds ``[SOT][ctx][class tokens][.][EOT]`` for
  that task's classes; the text encoder runs **once per task** in a Python loop;
* logits ``[B, C_tot]`` over all classes of all tasks; the loss sums, over tasks, the CE restricted
  to the task's class slice over the samples of that task (``reduction='sum'``) and divides by B;
* class sampling (``cls_sample_rate > 0``, only with ``csc``; training forward with labels): per
  task, all classes positive somewhere in the batch plus ``ceil(rate * n_neg)`` random negatives
  (``torch.randperm``); unselected classes get the feature ``1e-6`` (selected ones ``f + 1e-6``)
  and are masked out of the CE.

The three context learners are one class here (the original's ``TaskPromptLearner`` and
``ClassPromptLearner`` are the same code). State-dict keys are the original ``CustomCLIP``'s:
``task_prompt_learner.ctx``, ``class_prompt_learner.ctx``, ``prompt_gen.proj`` (plus the
``token_prefix``/``token_suffix`` buffers and the frozen CLIP modules).

The hard-sharing baselines of ``trainers/mtcoop_hard.py`` (``MTCoOpHard``, ``TRAINER.MTCOOPH``) are
:class:`ReferenceMTCoOpHard`: CoOp's prompt learner over the joint class list (``TSC=False``: one
context for all classes, or one per class with ``CSC``), or one CoOp prompt learner per task
concatenated (``TSC=True``: ``PromptLearner.learners``), the text encoder over all ``C_tot``
classes every forward, and the same per-task loss.

Also here, literally, the two pieces of its Dassl fork that a multi-task run's batch and result go
through: :func:`original_label_matrix` (``DatasetWrapper.__getitem__``'s label of a ``DatumMT``)
and :func:`original_mt_evaluate` (``ClassificationMT.compute_scores`` / ``evaluate``, the per-task
metrics and their mean).

Not ported: the Dassl trainer, ``FREEZE_CLS_PROMPT``, ``CTX_INIT`` of the
class prompts (the generated context replaces those words anyway), the unused (and broken)
``compute_cls_feats`` and ``PG_RATIO``; fp16 handling (the model's own dtype is used as is).
``forward`` returns ``(logits, selected)`` as the original; ``loss(images, label_matrix)`` is the
trainer's objective.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, List, Optional, Sequence

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F

from .coop import ReferenceCoOp, ReferenceCoOpPromptLearner
from .prompt_common import (POSITIONS, ReferenceCLIPBase, assemble_prompts, default_tokenizer, init_context,
                            register_class_prompts)
from .text_encoder import text_tower

__all__ = ["ReferenceSoftCPT", "ReferenceSoftCPTContextLearner", "ReferenceSoftCPTClassPrompts",
           "ReferencePromptGen", "ReferenceMTCoOpHard", "original_label_matrix", "original_mt_evaluate"]

class ReferenceSoftCPTContextLearner(nn.Module):
    """The original ``TaskPromptLearner`` / ``ClassPromptLearner``: ``forward() -> prompts [R, 77, D]``."""

    def __init__(self, model: nn.Module, names: Sequence[str], n_ctx: int, ctx_init: str = "", csc: bool = False,
                 token_position: str = "end", tokenizer: Optional[Callable] = None):
        super().__init__()
        if token_position not in POSITIONS:
            raise ValueError(f"token_position must be one of {POSITIONS}, got {token_position!r}")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_rows = len(names)
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init, n_ctx,
                                                         rows=n_rows if csc else None)
        if n_ctx == 0:
            self.register_buffer("ctx", ctx_vectors)  # not optimized
        else:
            self.register_parameter("ctx", nn.Parameter(ctx_vectors))
        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, names, prompt_prefix,
                                                                   n_ctx)
        self.n_rows = n_rows
        self.n_ctx = n_ctx
        self.token_position = token_position

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_rows, -1, -1)
        return assemble_prompts(self.token_prefix, ctx, self.token_suffix, self.name_lens, self.n_ctx,
                                self.token_position)


class ReferenceSoftCPTClassPrompts(nn.Module):
    """The original per-task ``PromptLearner``: ``forward(ctx, idx=None) -> prompts [C_t or |idx|, 77, D]``.

    ``ctx`` is generated: ``[N_CTX, D]`` for the task (NA) or ``[C_t (or |idx|), N_CTX, D]`` per class.
    """

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   " ".join(["X"] * n_ctx), n_ctx)
        self.n_cls = len(classnames)
        self.n_ctx = n_ctx
        self.token_position = token_position

    def forward(self, ctx: torch.Tensor, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        name_lens = self.name_lens
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if idx is not None:
            prefix, suffix = prefix[idx], suffix[idx]
            name_lens = [name_lens[i.item()] for i in idx]
        return assemble_prompts(prefix, ctx, suffix, name_lens, self.n_ctx, self.token_position)


class ReferencePromptGen(nn.Module):
    """The original ``PromptGen``: features ``[R, d_in] -> context [R, N_CTX, D]``."""

    def __init__(self, pg_type: str, n_ctx: int, feat_dim: int, is_csc: bool, out_dim: int):
        super().__init__()
        self.n_ctx, self.out_dim, self.prompt_gen_type = n_ctx, out_dim, pg_type
        if pg_type == "lin":
            width = feat_dim * 2 if is_csc else feat_dim
        elif pg_type == "linmean":
            width = feat_dim
        elif pg_type == "lincls":
            if not is_csc:
                raise ValueError("pg_type 'lincls' needs class features (csc=True)")
            width = feat_dim
        else:
            raise ValueError(f"unknown pg_type {pg_type!r}")
        self.register_parameter("proj", nn.Parameter(torch.zeros(width, n_ctx * out_dim)))
        nn.init.normal_(self.proj, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.prompt_gen_type == "linmean":
            d = x.shape[-1]
            x = (x[..., :d // 2] + x[..., d // 2:]) / 2.
        elif self.prompt_gen_type == "lincls":
            x = x[..., :x.shape[-1] // 2]
        ctx = x @ self.proj.type(x.dtype)
        return ctx.reshape(x.shape[0], self.n_ctx, self.out_dim)


class ReferenceSoftCPT(ReferenceCLIPBase):
    """SoftCPT's ``CustomCLIP`` plus the trainer's multi-task loss.

    Args:
        model: open_clip CLIP (used in place).
        tasknames: T task names.
        classnames: T lists of class names (one per task, in task order).
        n_ctx, csc, token_position: ``N_CTX``, ``CSC`` (class features on: CA/CS), ``TOKEN_POSITION``.
        task_n_ctx, task_ctx_init, task_csc, task_token_position: ``TASK_*``.
        class_n_ctx, class_ctx_init, class_csc, class_token_position: ``CLASS_*`` (only with ``csc``).
        pg_type, cls_sample_rate: ``PG_TYPE``, ``CLS_SAMPLE_RATE``.
    """

    def __init__(self, model: nn.Module, tasknames: Sequence[str], classnames: Sequence[Sequence[str]],
                 n_ctx: int = 16, csc: bool = False, token_position: str = "end", task_n_ctx: int = 4,
                 task_ctx_init: str = "", task_csc: bool = False, task_token_position: str = "end",
                 class_n_ctx: int = 4, class_ctx_init: str = "", class_csc: bool = False,
                 class_token_position: str = "end", pg_type: str = "lin", cls_sample_rate: float = 0.0,
                 tokenizer: Optional[Callable] = None):
        super().__init__(model)
        if len(tasknames) != len(classnames):
            raise ValueError(f"{len(tasknames)} task names but {len(classnames)} class lists")
        self.prompt_learner = nn.ModuleList(
            [ReferenceSoftCPTClassPrompts(model, c, n_ctx, token_position, tokenizer) for c in classnames])
        self.task_prompt_learner = ReferenceSoftCPTContextLearner(
            model, tasknames, task_n_ctx, task_ctx_init, task_csc, task_token_position, tokenizer)
        self.task_tokenized_prompts = self.task_prompt_learner.tokenized_prompts
        self.is_csc = csc
        if csc:
            all_classes = [c for names in classnames for c in names]
            self.class_prompt_learner = ReferenceSoftCPTContextLearner(
                model, all_classes, class_n_ctx, class_ctx_init, class_csc, class_token_position, tokenizer)
            self.class_tokenized_prompts = self.class_prompt_learner.tokenized_prompts
        self.n_ctx = n_ctx
        holder = text_tower(model)
        self.ctx_dim = holder.ln_final.weight.shape[0]
        proj = holder.text_projection
        self.task_feat_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]
        self.prompt_gen = ReferencePromptGen(pg_type, n_ctx, self.task_feat_dim, csc, self.ctx_dim).to(
            holder.token_embedding.weight.device)
        self.num_classes = [len(x) for x in classnames]
        self.num_tasks = len(tasknames)
        self.cls_range = []
        start = 0
        for c in self.num_classes:
            self.cls_range.append((start, start + c))
            start += c
        self.cls_sample_rate = cls_sample_rate
        if not csc and cls_sample_rate != 0.0:
            raise ValueError("cls_sample_rate needs csc=True (as the original asserts)")

    def prompt_parameters(self) -> List[nn.Parameter]:
        """What the original optimizes: task/class context and the prompt generator."""
        return [p for n, p in self.named_parameters()
                if p.requires_grad and n.split(".")[0] in ("task_prompt_learner", "class_prompt_learner", "prompt_gen")]

    def forward(self, image: torch.Tensor, label: Optional[torch.Tensor] = None):
        """``(logits [B, C_tot], selected)``; ``selected`` is None unless classes were sampled."""
        prompts = self.task_prompt_learner()
        task_features = self.text_encoder(prompts, self.task_tokenized_prompts)

        if self.is_csc:
            prompts = self.class_prompt_learner()
            class_features = self.text_encoder(prompts, self.class_tokenized_prompts)
            cc = 0
            features = []
            for i, num in enumerate(self.num_classes):
                features.append(torch.cat([class_features[cc:cc + num], task_features[[i], :].repeat(num, 1)], dim=1))
                cc += num
            features = torch.cat(features, dim=0)
            ctx = self.prompt_gen(features.type(self.dtype))
            ctx = torch.split(ctx, self.num_classes, dim=0)
        else:
            ctx = self.prompt_gen(task_features.type(self.dtype))

        image_features = self.encode_image(image)

        if self.cls_sample_rate > 0 and label is not None:
            text_features, selected = self.compute_text_features_subsample(label, ctx, self.cls_sample_rate)
        else:
            text_features = self.compute_text_features_full(ctx)
            selected = None

        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * image_features @ text_features.t()
        return logits, selected

    def compute_text_features_full(self, ctx) -> torch.Tensor:
        text_features = []
        for i, p in enumerate(self.prompt_learner):
            prompts = p(ctx[i])
            text_features.append(self.text_encoder(prompts, p.tokenized_prompts))
        return torch.cat(text_features, dim=0)

    def compute_text_features_subsample(self, label, ctx, cls_sample_rate):
        def _choose(x, rate):
            k = math.ceil(len(x) * rate)
            perm = torch.randperm(len(x))[:k]
            return x[perm]

        cc = 0
        text_features, selected = [], []
        for i, p in enumerate(self.prompt_learner):
            c = self.num_classes[i]
            cur_label = label[:, cc:cc + c]
            mask = (cur_label == 1).any(dim=0)
            idx_pos = torch.where(mask)[0]
            idx_neg = _choose(torch.where(~mask)[0], cls_sample_rate)
            idx = torch.cat([idx_pos, idx_neg])
            selected.append(idx + cc)
            prompts = p(ctx[i][idx], idx=idx)
            f = self.text_encoder(prompts, p.tokenized_prompts[idx])
            f0 = 1e-6 * torch.ones(c, f.shape[1], device=f.device, dtype=f.dtype)
            f0[idx, :] = f0[idx, :] + f
            text_features.append(f0)
            cc += c
        return torch.cat(text_features, dim=0), torch.cat(selected)

    # ---- the trainer's objective ---------------------------------------------------------------
    def multitask_loss(self, output: torch.Tensor, label: torch.Tensor, selected=None) -> torch.Tensor:
        """``mutitask_loss`` (``selected`` None) / ``mutitask_loss2`` of the original trainer."""
        batch_size = output.shape[0]
        if selected is not None:
            select_mask = torch.zeros_like(label[0, :]).bool()
            select_mask[selected] = 1
        loss = 0.
        for i in range(self.num_tasks):
            st, ed = self.cls_range[i]
            cur_output = output[:, st:ed]
            cur_label = label[:, st:ed]
            mask_row = torch.sum(cur_label != -1, dim=-1) > 0
            if mask_row.sum() == 0:
                continue
            if selected is not None:
                mask_col = select_mask[st:ed]
                loss += F.cross_entropy(cur_output[mask_row][:, mask_col],
                                        cur_label[mask_row][:, mask_col].argmax(dim=-1), reduction="sum")
            else:
                loss += F.cross_entropy(cur_output[mask_row, :], cur_label[mask_row, :].argmax(dim=-1),
                                        reduction="sum")
        return loss / batch_size

    def loss(self, images: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The training objective for a ``[B, C_tot]`` label matrix (-1 / 0 / 1)."""
        output, selected = self(images, label)
        return self.multitask_loss(output, label, selected)


def _cls_range(num_classes):
    cls_range = []
    tt = 0
    for c in num_classes:
        cls_range.append((tt, tt + c))
        tt += c
    return cls_range


def original_label_matrix(tasks: Sequence[Sequence[int]], labels: Sequence[Sequence[int]],
                          num_classes: Sequence[int]) -> np.ndarray:
    """``[N, C_tot]`` int: ``DatasetWrapper.__getitem__``'s ``label`` for N ``DatumMT`` records
    (``tasks[i]``/``labels[i]``: the record's ``task`` and ``label`` lists; ``num_classes``: classes
    per task), as kding1225/softcpt ``dist/Dassl.pytorch/dassl/data/data_manager.py`` builds it."""
    cls_range = _cls_range(num_classes)
    tol_classes = sum(num_classes)
    rows = []
    for item_task, item_label in zip(tasks, labels):
        label = -np.ones(tol_classes).astype(int)
        for t, l in zip(item_task, item_label):
            st, ed = cls_range[t]
            if np.all(label[st:ed] == -1):
                label[st:ed] = 0
            if l >= 0:
                label[st + l] = 1
        rows.append(label)
    return np.stack(rows)


def _compute_metric(y_true, y_score, N, metric):
    if metric == "overall_acc":
        pred = y_score.argmax(1)
        gt = y_true.argmax(1)
        matches = (pred == gt).astype(float)
        correct = int(matches.sum())
        total = len(gt)
        return 100. * correct / total
    if metric == "mean_acc":
        y_pred = y_score.argmax(1)
        y_true = y_true.argmax(1)
        y = N * y_true + y_pred
        y = np.bincount(y, minlength=N * N)
        confusion_matrix = y.reshape(N, N)
        per_class_accs = np.diag(confusion_matrix) / confusion_matrix.sum(1)
        return 100. * np.mean(per_class_accs)
    raise NotImplementedError(metric)


def original_mt_evaluate(logits: torch.Tensor, y_true: np.ndarray, num_classes: Sequence[int],
                         task2metric: Sequence[str]) -> "OrderedDict":
    """``ClassificationMT`` of the original's Dassl fork (``dassl/evaluation/evaluator.py``) on one
    batch: ``logits [N, C_tot]``, ``y_true [N, C_tot]`` label matrix. Returns ``results`` with
    ``metric`` (the unweighted mean over tasks) and, added here to compare with, ``per_task``
    (each task's metric, in task order)."""
    scores = logits.clone()
    for st, ed in _cls_range(num_classes):
        scores[:, st:ed] = logits[:, st:ed].softmax(dim=-1)
    y_score = scores.cpu().numpy()
    mask = y_true != -1
    metrics = []
    cc = 0
    for i, num in enumerate(num_classes):
        cur_y_true = y_true[:, cc:cc + num]
        cur_y_score = y_score[:, cc:cc + num]
        valid = np.sum(mask[:, cc:cc + num], axis=1) > 0
        metrics.append(_compute_metric(cur_y_true[valid, :], cur_y_score[valid, :], num, task2metric[i]))
        cc += num
    results = OrderedDict()
    results["metric"] = np.mean(np.array(metrics))
    results["per_task"] = metrics
    return results


class _ReferenceTaskShared(nn.Module):
    """``mtcoop_hard.py`` ``PromptLearner`` with ``task_share``: one CoOp prompt learner per task
    (``learners``), prompts and tokenized prompts concatenated in task order."""

    def __init__(self, learners: Sequence[nn.Module]):
        super().__init__()
        self.learners = nn.ModuleList(learners)
        self.register_buffer("tokenized_prompts", torch.cat([m.tokenized_prompts for m in self.learners], dim=0),
                             persistent=False)

    def forward(self) -> torch.Tensor:
        return torch.cat([m() for m in self.learners], dim=0)


class ReferenceMTCoOpHard(ReferenceCoOp):
    """``mtcoop_hard.py`` ``CustomCLIP`` (CoOp's, over the joint class list or per-task prompt
    learners: its ``forward`` is :class:`~fastprompt.reference.coop.ReferenceCoOp`'s) and the
    ``MTCoOpHard`` trainer's ``mutitask_loss``.

    Args (``TRAINER.MTCOOPH.*``): ``tasknames`` (T names, unused by the model as in the original),
    ``classnames`` (T class lists), ``n_ctx`` [N_CTX], ``csc`` [CSC], ``tsc`` [TSC: one prompt
    learner per task], ``ctx_init`` [CTX_INIT], ``token_position`` [TOKEN_POSITION].
    ``forward(images) -> logits [B, C_tot]``; ``loss(images, label_matrix [B, C_tot])``.
    """

    def __init__(self, model: nn.Module, tasknames: Sequence[str], classnames: Sequence[Sequence[str]],
                 n_ctx: int = 16, csc: bool = False, tsc: bool = False, ctx_init: str = "",
                 token_position: str = "end", tokenizer: Optional[Callable] = None):
        ReferenceCLIPBase.__init__(self, model)  # CoOp's CustomCLIP and forward; the prompt learner is set here
        if len(tasknames) != len(classnames):
            raise ValueError(f"{len(tasknames)} task names but {len(classnames)} class lists")

        def learner(names):
            return ReferenceCoOpPromptLearner(model, names, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
                                              class_token_position=token_position, tokenizer=tokenizer)

        if tsc:  # learn one prompt for each task
            self.prompt_learner = _ReferenceTaskShared([learner(list(x)) for x in classnames])
        else:  # all classes share one prompt, or one prompt per class
            self.prompt_learner = learner([c for x in classnames for c in x])
        self.num_tasks = len(classnames)
        self.cls_range = _cls_range([len(x) for x in classnames])

    def prompt_parameters(self) -> List[nn.Parameter]:
        return [p for p in self.prompt_learner.parameters()]

    def multitask_loss(self, output: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``MTCoOpHard.mutitask_loss``: ``mutitask_loss`` of ``mtcoop.py`` without its skip of a task
        absent from the batch (whose empty ``reduction='sum'`` adds 0: the same value)."""
        return ReferenceSoftCPT.multitask_loss(self, output, label)

    def loss(self, images: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return self.multitask_loss(self(images), label)
