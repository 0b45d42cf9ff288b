"""Literal re-implementation of CoOp (Context Optimization) on open_clip models.

Source followed: KaiyangZhou/CoOp @ ff61507 ``trainers/coop.py`` (classes ``PromptLearner`` and
``CustomCLIP``). The structure and semantics are kept on purpose, quirks included, because this is
the parity oracle and the "before" side of benchmarks:

* every class is encoded over the full context length (77 tokens), prompts are assembled with
  ``torch.cat`` every forward, and ``middle``/``front`` class-token positions use a per-class
  Python loop;
* with ``ctx_init``: ``_`` becomes a space, ``n_ctx`` := number of *space-separated words* (not BPE
  tokens), the context vectors are the token embeddings at positions ``1 .. n_ctx`` of the
  tokenized init string, and the context is generic even when ``csc=True``;
* without ``ctx_init``: N(0, 0.02) context (``[C, n_ctx, D]`` when ``csc`` else ``[n_ctx, D]``)
  and the placeholder text ``"X X ... X"``;
* class names have ``_`` replaced by spaces, the prompt text is ``"<prefix> <name>."``,
  ``name_lens`` are BPE lengths of the bare name (used by ``middle``/``front`` only);
* the buffers ``token_prefix`` (SOT) and ``token_suffix`` (everything after the context) are
  persistent, so ``prompt_learner.state_dict()`` has exactly ``ctx``, ``token_prefix``,
  ``token_suffix``.

Not ported: the Dassl trainer, fp16 handling (the model's own dtype is used as is) and the
``cfg.INPUT.SIZE`` assertion. The CLIP model is used as given: nothing is frozen or unfrozen
here; ``prompt_learner.ctx`` is the only parameter this module creates.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prompt_common import (POSITIONS, ReferenceCLIPBase, assemble_prompts, default_tokenizer, init_context,
                            register_class_prompts)
from .text_encoder import text_tower

__all__ = ["ReferenceCoOpPromptLearner", "ReferenceCoOp", "default_tokenizer"]


class ReferenceCoOpPromptLearner(nn.Module):
    """CoOp's ``PromptLearner``: ``forward() -> prompts [C, 77, D]``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        if class_token_position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}, "
                             f"got {class_token_position!r}")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init, n_ctx,
                                                         rows=n_cls if csc else None)
        self.ctx = nn.Parameter(ctx_vectors)  # the only trainable tensor
        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return assemble_prompts(self.token_prefix, ctx, self.token_suffix, self.name_lens, self.n_ctx,
                                self.class_token_position)


class ReferenceCoOp(ReferenceCLIPBase):
    """CoOp's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        super().__init__(model)
        self.prompt_learner = ReferenceCoOpPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
            class_token_position=class_token_position, tokenizer=tokenizer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.encode_image(images)

        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts)

        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)

        logit_scale = self.logit_scale.exp()
        return logit_scale * image_features @ text_features.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
