"""Literal re-implementation of KgCoOp (knowledge-guided context optimization) on open_clip models.

Source followed: htyao89/KgCoOp @ c43ccc3 ``KgCoOp/trainers/kgcoop.py`` (``PromptLearner``,
``CustomCLIP``, ``KgCoOp.forward_backward``). Kept as in the original:

* CoOp's prompt learner with the class token at the end; whenever ``ctx_init`` is truthy the
  phrase is **"a photo of a"** regardless of its value (the original hard-codes it), with
  ``n_ctx`` := its number of words; otherwise N(0, 0.02) context, generic or class-specific
  (``csc``), and ``"X ... X"`` text;
* the frozen hand-crafted class embeddings: ``template.format(classname)`` (a dataset template of
  ``CUSTOM_TEMPLATES``, default ImageNet's "a photo of a {}.") through the frozen ``encode_text``,
  L2-normalised, computed once;
* ``score = 1 - mean_c cos(norm(text_c), clip_c)`` with ``CosineSimilarity(dim=1, eps=1e-7)``;
  objective ``CE + w * score``, ``w = TRAINER.COOP.W`` (8.0 in the paper's runs);
* the unused leftovers ``bias_vectors [1, D]`` (N(0, 0.02)) and ``meta_net`` (``linear1``:
  ``Linear(D, D)`` + ReLU) are created, so ``prompt_learner.state_dict()`` has the original keys
  ``ctx``, ``bias_vectors``, ``meta_net.linear1.{weight,bias}``, ``token_prefix``, ``token_suffix``;
  only ``ctx`` is trained.

Changed: widths come from the model (the original hard-codes 512 for the leftovers); the
``Adapter`` the original ``CustomCLIP`` builds and never uses is not built; ``forward`` returns
logits, ``forward_with_score`` the original ``(logits, score)``, ``loss`` the objective.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prompt_common import ReferenceCLIPBase, default_tokenizer, init_context, register_class_prompts, tokenize_each
from .text_encoder import _model_dtype, text_tower

__all__ = ["ReferenceKgCoOpPromptLearner", "ReferenceKgCoOp"]


class ReferenceKgCoOpPromptLearner(nn.Module):
    """KgCoOp's ``PromptLearner``: ``forward() -> prompts [C, 77, D]``; ``text_features`` = frozen targets."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: Union[bool, str] = True, csc: bool = False, template: str = "a photo of a {}.",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        device = holder.token_embedding.weight.device

        # whatever CTX_INIT says, a truthy value means "a photo of a" (hard-coded in the original)
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, "a photo of a" if ctx_init else "",
                                                         n_ctx, rows=n_cls if csc else None)
        self.ctx = nn.Parameter(ctx_vectors)

        bias_vectors = torch.empty(1, ctx_dim, dtype=dtype)  # unused leftover
        nn.init.normal_(bias_vectors, std=0.02)
        self.bias_vectors = nn.Parameter(bias_vectors.to(device), requires_grad=False)

        prompts_ = [template.format(name.replace("_", " ")) for name in classnames]
        prompts_ = tokenize_each(tokenizer, prompts_).to(device)
        with torch.no_grad():
            text_features = model.encode_text(prompts_)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        # a plain attribute in the original; a buffer so it follows .to()
        self.register_buffer("text_features", text_features, persistent=False)

        self.meta_net = nn.Sequential(OrderedDict([  # unused leftover
            ("linear1", nn.Linear(ctx_dim, ctx_dim)),
            ("relu", nn.ReLU(inplace=True)),
        ])).to(device=device, dtype=dtype).requires_grad_(False)

        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = n_cls
        self.n_ctx = n_ctx

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class ReferenceKgCoOp(ReferenceCLIPBase):
    """KgCoOp's ``CustomCLIP`` + the objective of ``KgCoOp.forward_backward``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: Union[bool, str] = True, csc: bool = False, template: str = "a photo of a {}.",
                 w: float = 8.0, tokenizer: Optional[Callable] = None):
        super().__init__(model)
        self.prompt_learner = ReferenceKgCoOpPromptLearner(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                                           csc=csc, template=template, tokenizer=tokenizer)
        self.w = w

    @property
    def ori_embedding(self) -> torch.Tensor:
        return self.prompt_learner.text_features

    def forward_with_score(self, image: torch.Tensor):
        """The original ``CustomCLIP.forward``: ``(logits [B, C], score)``."""
        prompts = self.prompt_learner()
        image_features = self.encode_image(image)
        text_features = self.text_encoder(prompts, self.tokenized_prompts)
        text_features_old = self.ori_embedding

        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        logits = logit_scale * image_features @ text_features.t()

        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        text_features_old = text_features_old / text_features_old.norm(dim=-1, keepdim=True)
        score = cos(text_features, text_features_old)
        score = 1.0 - torch.mean(score)
        return logits, score

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_score(images)[0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        output, score = self.forward_with_score(images)
        return F.cross_entropy(output, labels) + self.w * score
