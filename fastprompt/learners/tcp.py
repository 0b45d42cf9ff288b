"""TCP: class-aware tokens, generated from frozen class text embeddings, inserted in a middle text layer.

Yao, Zhang and Xu, "TCP: Textual-based Class-aware Prompt tuning for Visual-Language Model" (CVPR
2024); semantics follow htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec
``trainers/tcp.py`` and ``trainers/clip_text/model.py`` (literal version:
:class:`fastprompt.reference.ReferenceTCP`). Objective::

    T_c = meta_net(clip_c).view(4, D)                 # four class-aware tokens per class
    text_c = encoder([SOT][ctx][rest of template(c)]; rows 1..4 := T_c before block insert_layer)
    L = CE(logit_scale * img @ norm(text).T, y) + 8 * (1 - mean_c cos(norm(text_c), clip_c))

with ``clip_c`` the frozen, L2-normalised CLIP features of ``teacher_template.format(c)``
(``CUSTOM_TEMPLATES_ori``), computed once per class list on the fast text path.

Quirks of the original, kept (and checked by ``tests/test_tcp.py``):

* ``insert_layer = 8`` (the default on a 12-block text tower): the tokens enter at the input of text block 8 (counted from 0, the
  ``layers=[8]`` of ``ResidualAttentionBlock_MaPLe``), replacing rows ``1..4`` outright: the block
  mixes ``w * tokens + (1 - w) * rows`` with ``w = 1.0`` written in its code, so the config's
  ``TRAINER.COOP.W`` (1.0 in ``scripts/base2new_train.sh``) has no effect;
* the consistency weight is the constant 8.0 of ``CustomCLIP.forward`` (``consistency_weight``),
  not the config's ``W``;
* the meta-net is ``Linear(E, E//4)`` -> QuickGELU -> ``Linear(E//4, 4*D)`` on the normalised
  class embeddings (``E`` image feature width, ``D`` text width; the original reshapes with a
  literal 512, ViT-B/16's ``D``); trained together with ``ctx``;
* the learnable prompt is the dataset's ``CUSTOM_TEMPLATES`` entry ("X X X X {}, a type of pet.",
  ImageNet's "a photo of a {}."), its first ``n_ctx`` tokens after ``[SOT]`` replaced by the
  context, whatever they are; the recipes' ``CTX_INIT: False`` means an N(0, 0.02) context
  (a truthy ``CTX_INIT`` means "a photo of a", whatever its value, as in KgCoOp);
* ``logit_scale`` and the image features are detached in the logits (the image tower is frozen
  here anyway, so nothing changes for the prompts' gradients);
* the original draws the context, then builds a second CLIP for the class embeddings (its
  construction consumes the random stream), then draws the meta-net and casts it to fp16
  (``TRAINER.COCOOP.PREC``, "fp16" by default, whatever ``COOP.PREC`` says); ``from_model`` draws
  the context and then the meta-net from torch's global stream, and ``fastprompt train`` starts
  from the original's values for the seed (:mod:`fastprompt.replay.construction`).

Speed: blocks before ``insert_layer`` see the same ``[SOT][ctx]`` rows for every class, so that
prefix is encoded once (G = 1) as in CoOp; from ``insert_layer`` on every class has its own rows
``1..4``, so the design forces one prefix group per class (G = C, the tower's ``regroup``): the
prefix's hidden rows are copied per class there and its ``1 + n_ctx`` rows computed per class in
the remaining blocks. EOT truncation and packing apply throughout (about ``1 + n_ctx + len(name) +
2`` rows per class instead of 77).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Dict, Optional

import torch
from torch import nn

from ..templates import TCP_TEACHER_TEMPLATES, TCP_TEMPLATES, resolve_template
from ..towers import build_text_plan, ctx_source
from ..towers.text_plan import concat_plans
from .coop import CoOpConfig
from .kgcoop import KgCoOpLearner
from .prompts import clean_names, text_start, tokenize_prompts

#: Class-aware tokens per class: the meta-net's ``4 * ctx_dim`` outputs (``trainers/tcp.py``).
CLASS_TOKENS = 4


@dataclasses.dataclass
class TCPConfig(CoOpConfig):
    """TCP settings (defaults: the paper's ``vit_b16_ep100_ctxv1`` with ``scripts/base2new_train.sh``).

    Attributes (besides CoOp's ``n_ctx``, ``ctx_init``, ``init_std``; ``csc`` must stay False and
    ``class_token_position`` is never read, as in the original):
        template: the learnable prompt, a dataset name of ``TCP_TEMPLATES`` or a format string whose
            first ``n_ctx`` tokens after ``[SOT]`` the context replaces ("X X X X {}.").
        teacher_template: the frozen class embeddings' prompt; empty: ``TCP_TEACHER_TEMPLATES`` of
            the dataset named by ``template`` (``"a photo of a {}."`` for a format string).
        insert_layer: the text block (from 0) whose input gets the class-aware tokens; None (default):
            two thirds of the text depth, ``layers * 2 // 3``: the original's fixed block 8 on every
            CLIP text tower it runs (12 blocks), a middle block on a shallower or deeper one.
        consistency_weight: weight of ``1 - mean cos`` (8.0, a constant in the original).
    """

    n_ctx: int = 4
    template: str = "ImageNet"
    teacher_template: str = ""
    insert_layer: Optional[int] = None
    consistency_weight: float = 8.0

    def __post_init__(self):
        super().__post_init__()
        if self.csc:
            raise ValueError("csc=True is not supported: the original TCP expands the context as a generic one "
                             "(ctx.unsqueeze(0).expand(n_cls, -1, -1)) and fails on class-specific contexts")
        self._require_at_least(0, "consistency_weight")
        if self.insert_layer is not None:
            self._require_at_least(0, "insert_layer")
        resolve_template(self.template, "template", TCP_TEMPLATES)
        if self.teacher_template:
            resolve_template(self.teacher_template, "teacher_template", TCP_TEACHER_TEMPLATES)

    @property
    def w(self) -> float:  # KgCoOpLearner.loss_terms reads config.w
        return self.consistency_weight

    def prompt_template(self) -> str:
        return resolve_template(self.template, "template", TCP_TEMPLATES)

    def class_template(self) -> str:
        if self.teacher_template:
            return resolve_template(self.teacher_template, "teacher_template", TCP_TEACHER_TEMPLATES)
        return TCP_TEACHER_TEMPLATES.get(self.template, "a photo of a {}.")


class TCPLearner(KgCoOpLearner):
    """TCP learner. Trainable: ``ctx [M, D]`` and ``meta_net`` (``linear1``, ``linear2``), named as in
    the original's ``prompt_learner`` so its checkpoints load. Frozen buffer ``clip_text_features
    [C, E]``: the normalised class embeddings (meta-net input and consistency target)."""

    method = "tcp"
    config_class = TCPConfig

    def __init__(self, model: nn.Module, classnames, config: TCPConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        layers = self.text_tower.layers
        self.insert_layer = layers * 2 // 3 if config.insert_layer is None else config.insert_layer
        if self.insert_layer >= layers:
            raise ValueError(f"insert_layer={config.insert_layer}: the class-aware tokens enter text block "
                             f"{config.insert_layer} (from 0) and this text tower has {layers} blocks; use "
                             f"insert_layer <= {layers - 1} (the original's 8 needs 9 or more)")
        vis_dim, width = self.vision_tower.output_dim, self.text_tower.width
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 4)),
            ("relu", _QuickGELU()),
            ("linear2", nn.Linear(vis_dim // 4, CLASS_TOKENS * width)),
        ])).to(self.text_tower.device)

    def _rebuild_plan(self) -> None:
        names = clean_names(self._classnames)
        tokenizer, m = self.tokenizer, self.template.n_ctx
        start = text_start(tokenizer)
        template = self.config.prompt_template()
        ids = tokenize_prompts(tokenizer, [template.format(n) for n in names], names)
        rows = [row[:start] + [ctx_source(k) for k in range(m)] + row[start + m:] for row in ids.tolist()]
        plan = build_text_plan(rows, ids)
        if plan.prefix_len < start + CLASS_TOKENS:
            raise ValueError(f"template {template!r}: the {CLASS_TOKENS} class-aware tokens replace positions "
                             f"{start}..{start + CLASS_TOKENS - 1}, which must come before the class name")
        self.plan, self.class_plan = plan, self._per_class(plan, range(len(names)))
        teacher = self.config.class_template()
        teacher_ids = tokenize_prompts(tokenizer, [teacher.format(n) for n in names], names)
        with torch.no_grad():
            features = self.text_tower.encode_token_ids(teacher_ids.to(self.text_tower.device)).float()
        self.register_buffer("clip_text_features", features / features.norm(dim=-1, keepdim=True), persistent=False)

    def class_tokens(self) -> torch.Tensor:
        """The class-aware tokens ``[C, 4, D]`` (with autograd into ``meta_net``)."""
        features = self.clip_text_features.to(self.meta_net.linear1.weight.dtype)
        return self.meta_net(features).view(self.n_classes, CLASS_TOKENS, -1)

    def text_features(self, class_indices=None) -> torch.Tensor:
        """Unnormalised class text features ``[C, E]`` (with autograd into ``ctx`` and ``meta_net``)."""
        tokens = self.class_tokens()
        plan, class_plan = self.plan, self.class_plan
        if class_indices is not None:
            index = torch.as_tensor(class_indices, dtype=torch.long)
            plan, class_plan = plan.select(index), self._per_class(plan, index.tolist())
            tokens = tokens[index.to(tokens.device)]
        overrides = [None] * self.insert_layer + [tokens]
        # the [SOT][ctx] prefix is shared by all classes up to insert_layer, one copy per class from there
        return self.text_tower.encode(plan, self._ctx_table(), prefix_overrides=overrides,
                                      override_start=text_start(self.tokenizer),
                                      regroup=(self.insert_layer, class_plan))

    @staticmethod
    def _per_class(plan, classes):
        """The sequences ``classes`` of the one-group ``plan``, each in its own prefix group."""
        return concat_plans([plan.select([int(c)]) for c in classes])

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return state


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)
