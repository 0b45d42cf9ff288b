"""Literal re-implementation of MaPLe (Multi-modal Prompt Learning) on open_clip models.

Source followed: muzairkhattak/multimodal-prompt-learning @ 69bce21 ``trainers/maple.py``
(``MultiModalPromptLearner``, ``TextEncoder``, ``CustomCLIP``) and ``clip/model.py``
(``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``; see :mod:`.deep`). Kept as in the
original:

* ``ctx_init`` is used only when ``n_ctx <= 4``: the context is the embeddings of the first
  ``n_ctx`` tokens of the phrase, but the prompt text keeps the whole phrase, so with ``n_ctx=2``
  and "a photo of a" the words "of a" stay as frozen tokens in ``token_suffix``; otherwise (also
  when ``n_ctx > 4`` with a ``ctx_init``) the context is N(0, 0.02) with ``"X ... X"`` text;
* creation order (hence RNG order): context (random case), ``proj``, the ``depth - 1``
  ``compound_prompts_text`` (each N(0, 0.02)), then one ``Linear`` deep-copied ``depth - 1`` times
  into ``compound_prompt_projections`` — all couplings start identical;
* every class is encoded over the full 77 tokens; the vision prompts are the text prompts mapped by
  the couplings (``proj(ctx)`` at layer 0, ``compound_prompt_projections[i](compound_prompts_text[i])``
  at layer ``i + 1``); both towers replace the prompt rows up to the depth and propagate after it;
* ``prompt_learner.state_dict()`` keys: ``ctx``, ``proj.{weight,bias}``, ``compound_prompts_text.<i>``,
  ``compound_prompt_projections.<i>.{weight,bias}``, ``token_prefix``, ``token_suffix``; the whole
  model's state dict (what Dassl saves) adds ``image_encoder.*``, ``text_encoder.*``, ``logit_scale``.

Changed: widths come from the model (the original hard-codes 512 for the text prompts and 768 for
the couplings' output, i.e. ViT-B/16); the hard ``.half()`` casts (``proj.half()``, prompts cast to
fp16 on insertion) are not reproduced — everything runs in the model's dtype (fp32 here);
``forward`` returns logits and ``loss`` their cross entropy (the original returns the loss in
training mode).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prompt_common import default_tokenizer, init_context, register_class_prompts
from .deep import ReferenceMaPLeImageEncoder
from .hf_text import maple_text_encoder, prompt_holder

__all__ = ["ReferenceMaPLePromptLearner", "ReferenceMaPLe"]


def _get_clones(module: nn.Module, n: int) -> nn.ModuleList:
    return nn.ModuleList([copy.deepcopy(module) for _ in range(n)])


class ReferenceMaPLePromptLearner(nn.Module):
    """MaPLe's ``MultiModalPromptLearner``: ``forward() -> (prompts, shared_ctx, deep text, deep vision)``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", prompt_depth: int = 9, tokenizer: Optional[Callable] = None):
        super().__init__()
        if prompt_depth < 1:
            raise ValueError(f"prompt_depth must be >= 1 for MaPLe, got {prompt_depth}")
        holder = prompt_holder(model)  # open_clip's text tower, or a Hugging Face one's word embeddings
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        ctx_dim = holder.ln_final.weight.shape[0]
        vis_dim = model.visual.conv1.out_channels  # 768 in the original (ViT-B/16)
        device = holder.token_embedding.weight.device
        self.compound_prompts_depth = prompt_depth

        # ctx_init is used only for n_ctx <= 4, and n_ctx is NOT reset to its word count: the first
        # n_ctx token embeddings of the phrase are taken (original quirk)
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init if n_ctx <= 4 else "", n_ctx,
                                                         n_ctx_from_words=False)

        # layer-0 coupling text -> vision (the original halves it to fp16 here)
        self.proj = nn.Linear(ctx_dim, vis_dim)
        self.ctx = nn.Parameter(ctx_vectors)
        # deeper text prompts (one per prompted layer after the first)
        self.compound_prompts_text = nn.ParameterList([nn.Parameter(torch.empty(n_ctx, ctx_dim))
                                                       for _ in range(prompt_depth - 1)])
        for single_para in self.compound_prompts_text:
            nn.init.normal_(single_para, std=0.02)
        # their couplings: deep copies of one Linear, so all start identical
        single_layer = nn.Linear(ctx_dim, vis_dim)
        self.compound_prompt_projections = _get_clones(single_layer, prompt_depth - 1)

        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.to(device)

    def construct_prompts(self, ctx, prefix, suffix, label=None):
        if label is not None:
            prefix = prefix[label]
            suffix = suffix[label]
        return torch.cat([prefix, ctx, suffix], dim=1)

    def forward(self):
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prompts = self.construct_prompts(ctx, self.token_prefix, self.token_suffix)
        # text prompts mapped to the vision width by the couplings
        visual_deep_prompts = []
        for index, layer in enumerate(self.compound_prompt_projections):
            visual_deep_prompts.append(layer(self.compound_prompts_text[index]))
        return prompts, self.proj(self.ctx), self.compound_prompts_text, visual_deep_prompts


class ReferenceMaPLe(nn.Module):
    """MaPLe's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 2,
                 ctx_init: str = "a photo of a", prompt_depth: int = 9, tokenizer: Optional[Callable] = None):
        super().__init__()
        self.prompt_learner = ReferenceMaPLePromptLearner(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                                          prompt_depth=prompt_depth, tokenizer=tokenizer)
        self.image_encoder = ReferenceMaPLeImageEncoder(model.visual, n_ctx)
        # the deeper text prompts replace the context rows, which follow the prompts' prefix rows
        self.text_encoder = maple_text_encoder(model, n_ctx, start=self.prompt_learner.token_prefix.shape[1])
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype

    @property
    def tokenized_prompts(self) -> torch.Tensor:
        return self.prompt_learner.tokenized_prompts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit_scale = self.logit_scale.exp()
        prompts, shared_ctx, deep_compound_prompts_text, deep_compound_prompts_vision = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts, deep_compound_prompts_text)
        image_features = self.image_encoder(images.type(self.dtype), shared_ctx, deep_compound_prompts_vision)

        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return logit_scale * image_features @ text_features.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
