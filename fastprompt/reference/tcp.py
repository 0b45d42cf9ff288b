"""Literal re-implementation of TCP (textual-based class-aware prompt tuning) on open_clip models.

Source followed: htyao89/Textual-based_Class-aware_prompt_tuning @ bd97bec ``trainers/tcp.py``
(``PromptLearner``, ``TextEncoder``, ``CustomCLIP``, ``TCP.forward_backward``) and
``trainers/clip_text/model.py`` (``ResidualAttentionBlock_MaPLe``, the block that inserts the
class-aware tokens). Kept as in the original, in its order of operations:

* the context: N(0, 0.02) ``[n_ctx, D]`` drawn first (generic; ``CTX_INIT`` truthy means the
  phrase **"a photo of a"** whatever its value, ``n_ctx`` := its 4 words, no draw);
* the frozen class embeddings: ``teacher_template.format(name)`` (``CUSTOM_TEMPLATES_ori``)
  through the frozen ``encode_text``, L2-normalised once (the original builds a second CLIP with
  the same weights for it; the same frozen model serves here, the values are equal);
* ``meta_net``: ``Linear(E, E // 4)`` -> QuickGELU -> ``Linear(E // 4, 4 * D)`` (``E`` the image
  feature width, ``D`` the text width), applied to those embeddings and reshaped to ``[C, 4, D]``
  (the original writes ``reshape(C, -1, 512)``: ViT-B/16's ``D``; here ``D`` is read from the model);
* the learnable prompt: ``template.format(name)`` (``CUSTOM_TEMPLATES``, "X X X X {}, a type of
  pet.") tokenized, its rows ``1 .. n_ctx`` replaced by the context: ``[SOT][ctx][rest]`` with one
  ``torch.cat`` over the full 77 tokens;
* the text transformer runs block by block; before block ``insert_layer`` (8 in the original:
  ``layers=[8]``, counted from 0) rows ``1 .. 4`` of every class become
  ``w * class_tokens + (1 - w) * rows`` with ``w = weights[0] = 1.0`` fixed in the block's code
  (the ``TRAINER.COOP.W`` handed in is overwritten there): a plain replacement;
* ``logits = logit_scale.detach() * image_features.detach() @ norm(text).t()``;
* training objective ``CE + 8.0 * (1 - mean_c cos(norm(text_c), norm(teacher_c)))``, with
  ``CosineSimilarity(dim=1, eps=1e-7)`` and the constant 8.0 written in ``CustomCLIP.forward``
  (not the config's ``W``).

Changed: widths come from the model; ``insert_layer`` is an argument (the original's 8 needs at
least 9 text blocks); the unused ``Adapter`` class is not built; ``forward`` returns logits,
``forward_with_score`` ``(logits, score)``, ``loss`` the objective.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..learners.prompts import text_start
from .deep import _run_block
from .prompt_common import ReferenceCLIPBase, default_tokenizer, init_context, tokenize_each
from .text_encoder import _model_dtype, pool_tower_output, text_inputs, text_tower

__all__ = ["ReferenceTCPPromptLearner", "ReferenceTCP", "TCP_CLASS_TOKENS", "TCP_CONSISTENCY_WEIGHT"]

#: ``4 * ctx_dim`` outputs of the meta-net: four class-aware tokens (``trainers/tcp.py``).
TCP_CLASS_TOKENS = 4
#: The consistency term's weight, a constant in ``CustomCLIP.forward``.
TCP_CONSISTENCY_WEIGHT = 8.0


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ReferenceTCPPromptLearner(nn.Module):
    """TCP's ``PromptLearner``: ``forward() -> (prompts [C, 77, D], class_feature [C, 4, D])``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: Union[bool, str] = False, template: str = "a photo of a {}.",
                 teacher_template: str = "a photo of a {}.", tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        device = holder.token_embedding.weight.device
        ctx_vectors, _, n_ctx = init_context(holder, tokenizer, "a photo of a" if ctx_init else "", n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)

        # clip_model_ = load_clip_to_cpu(cfg): the frozen class embeddings
        prompts_ = [teacher_template.format(c.replace("_", " ")) for c in classnames]
        prompts_ = tokenize_each(tokenizer, prompts_).to(device)
        with torch.no_grad():
            text_features = model.encode_text(prompts_)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        self.register_buffer("text_features", text_features, persistent=False)  # a plain attribute there

        vis_dim = model.visual.output_dim
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 4, bias=True)),
            ("relu", _QuickGELU()),
            ("linear2", nn.Linear(vis_dim // 4, TCP_CLASS_TOKENS * ctx_dim, bias=True)),
        ])).to(device=device, dtype=dtype)

        prompts = [template.format(c.replace("_", " ")) for c in classnames]
        tokenized_prompts = tokenize_each(tokenizer, prompts).to(device)
        with torch.no_grad():
            embedding = holder.token_embedding(tokenized_prompts).type(dtype)
        start = text_start(tokenizer)
        self.register_buffer("token_prefix", embedding[:, :start, :])  # SOS
        self.register_buffer("token_suffix", embedding[:, start + n_ctx:, :])  # CLS, EOS
        self.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)
        self.n_cls, self.n_ctx, self.ctx_dim = n_cls, n_ctx, ctx_dim

    def forward(self):
        class_feature = self.meta_net(self.text_features)
        class_feature = class_feature.reshape(class_feature.shape[0], -1, self.ctx_dim)
        ctx = self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prompt = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        return prompt, class_feature


class _ReferenceTCPTextEncoder(nn.Module):
    """TCP's ``TextEncoder`` with ``ResidualAttentionBlock_MaPLe``'s insertion (the ``flag=False`` path)."""

    def __init__(self, model: nn.Module, insert_layer: int, start: int):
        super().__init__()
        self._holder = [text_tower(model)]
        self.insert_layer, self.start = insert_layer, start

    def forward(self, prompts: torch.Tensor, class_feature: torch.Tensor, weight: float,
                tokenized_prompts: torch.Tensor) -> torch.Tensor:
        holder = self._holder[0]
        x, attn_mask = text_inputs(holder, prompts, tokenized_prompts)
        batch_first = getattr(holder.transformer, "batch_first", True)
        counter = 0
        for block in holder.transformer.resblocks:
            if counter in [self.insert_layer]:
                textual_context = class_feature.to(x.dtype)
                n_ctx = textual_context.shape[1]
                prefix, midfix = x[:, :self.start], x[:, self.start:self.start + n_ctx]
                suffix = x[:, self.start + n_ctx:]
                weight = 1.0  # weights[ind]: the argument is overwritten
                x = torch.cat([prefix, weight * textual_context + (1 - weight) * midfix, suffix], dim=1)
            counter += 1
            x = _run_block(block, x, attn_mask, batch_first)
        return pool_tower_output(holder, x, tokenized_prompts)


class ReferenceTCP(ReferenceCLIPBase):
    """TCP's ``CustomCLIP`` (training and test paths) and its objective."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: Union[bool, str] = False, template: str = "a photo of a {}.",
                 teacher_template: str = "a photo of a {}.", insert_layer: int = 8, weight: float = 1.0,
                 tokenizer: Optional[Callable] = None):
        super().__init__(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        self.prompt_learner = ReferenceTCPPromptLearner(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                                        template=template, teacher_template=teacher_template,
                                                        tokenizer=tokenizer)
        self.text_encoder = _ReferenceTCPTextEncoder(model, insert_layer, text_start(tokenizer))
        self.weight = weight  # cfg.TRAINER.COOP.W: handed to the text encoder, which ignores it

    @property
    def ori_embedding(self) -> torch.Tensor:
        return self.prompt_learner.text_features

    def forward_with_score(self, image: torch.Tensor):
        """``CustomCLIP.forward``: ``(logits [B, C], score)`` with ``score = 1 - mean cos``."""
        image_features = self.encode_image(image)
        text_features_old = self.ori_embedding
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        text_features_old = text_features_old / text_features_old.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        prompts, class_prompt = self.prompt_learner()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = self.text_encoder(prompts, class_prompt, self.weight, self.tokenized_prompts.detach())
        text_features_norm = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = logit_scale.detach() * image_features.detach() @ text_features_norm.t()
        score = cos(text_features_norm, text_features_old)
        score = 1.0 - torch.mean(score)
        return logits, score

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_with_score(images)[0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, score = self.forward_with_score(images)
        return F.cross_entropy(logits, labels) + TCP_CONSISTENCY_WEIGHT * score
