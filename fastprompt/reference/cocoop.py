"""Literal re-implementation of CoCoOp (Conditional Context Optimization) on open_clip models.

Source followed: KaiyangZhou/CoOp @ ff61507 ``trainers/cocoop.py`` (classes ``PromptLearner`` and
``CustomCLIP``). Kept as in the original:

* generic context only (no CSC, class token always at the end); ``ctx_init`` handling as in CoOp
  (``_`` -> space, ``n_ctx`` := number of words, embeddings of positions ``1 .. n_ctx``), random
  init N(0, 0.02) with the ``"X ... X"`` placeholder otherwise; the context is drawn from the RNG
  *before* the meta-net is built, as in the original;
* Meta-Net ``Linear(vis_dim, vis_dim // 16) -> ReLU(inplace) -> Linear(vis_dim // 16, ctx_dim)``
  named ``linear1``/``relu``/``linear2``; it receives the **L2-normalised** image feature and its
  output is added to every context vector of that image;
* prompts for all images are built as one ``[B, C, 77, D]`` tensor and the text encoder is run
  once **per image** over all C classes in a Python loop over the batch;
* ``prompt_learner.state_dict()`` keys: ``ctx``, ``meta_net.linear{1,2}.{weight,bias}``,
  ``token_prefix``, ``token_suffix``.

Changed: the original ``forward`` returns the cross entropy in training mode and the logits
otherwise; here ``forward`` always returns logits and ``loss(images, labels)`` is their CE.
The meta-net is not halved to fp16 (it is created in the model's dtype; fp32 in our runs).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..towers.frozen_image import output_dim_of
from .prompt_common import ReferenceCLIPBase, default_tokenizer, init_context, register_class_prompts
from .text_encoder import _model_dtype, text_tower

__all__ = ["ReferenceCoCoOpPromptLearner", "ReferenceCoCoOp"]


class ReferenceCoCoOpPromptLearner(nn.Module):
    """CoCoOp's ``PromptLearner``: ``forward(im_features [B, V]) -> prompts [B, C, 77, D]``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a", tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        vis_dim = output_dim_of(model.visual)  # the original's visual.output_dim; timm towers do not store it
        device = holder.token_embedding.weight.device

        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init, n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)

        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ])).to(device=device, dtype=dtype)

        # name_lens are unused by CoCoOp, as in the original
        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = len(classnames)
        self.n_ctx = n_ctx

    def construct_prompts(self, ctx: torch.Tensor, prefix: torch.Tensor, suffix: torch.Tensor,
                          label: Optional[torch.Tensor] = None) -> torch.Tensor:
        # ctx: [dim0, n_ctx, D] with dim0 = n_cls here; prefix [C, 1, D]; suffix [C, *, D]
        if label is not None:
            prefix = prefix[label]
            suffix = suffix[label]
        return torch.cat([prefix, ctx, suffix], dim=1)

    def forward(self, im_features: torch.Tensor) -> torch.Tensor:
        prefix = self.token_prefix
        suffix = self.token_suffix
        ctx = self.ctx                                   # [n_ctx, D]
        bias = self.meta_net(im_features).unsqueeze(1)   # [B, 1, D]
        ctx_shifted = ctx.unsqueeze(0) + bias            # [B, n_ctx, D]

        # one full set of C prompts per image, conditioned on that image
        prompts = []
        for ctx_shifted_i in ctx_shifted:
            ctx_i = ctx_shifted_i.unsqueeze(0).expand(self.n_cls, -1, -1)
            prompts.append(self.construct_prompts(ctx_i, prefix, suffix))  # [C, 77, D]
        return torch.stack(prompts)                      # [B, C, 77, D]


class ReferenceCoCoOp(ReferenceCLIPBase):
    """CoCoOp's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a", tokenizer: Optional[Callable] = None):
        super().__init__(model)
        self.prompt_learner = ReferenceCoCoOpPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, tokenizer=tokenizer)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokenized_prompts = self.tokenized_prompts
        logit_scale = self.logit_scale.exp()

        image_features = self.encode_image(images)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)

        prompts = self.prompt_learner(image_features)

        logits = []
        for pts_i, imf_i in zip(prompts, image_features):
            text_features = self.text_encoder(pts_i, tokenized_prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            logits.append(logit_scale * imf_i @ text_features.t())
        return torch.stack(logits)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
