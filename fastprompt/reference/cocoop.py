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

from .coop import _tokenize_each, default_tokenizer
from .text_encoder import ReferenceTextEncoder, _model_dtype, text_tower

__all__ = ["ReferenceCoCoOpPromptLearner", "ReferenceCoCoOp"]


class ReferenceCoCoOpPromptLearner(nn.Module):
    """CoCoOp's ``PromptLearner``: ``forward(im_features [B, V]) -> prompts [B, C, 77, D]``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a", tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        vis_dim = model.visual.output_dim
        token_embedding = holder.token_embedding
        device = token_embedding.weight.device

        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))  # words, not BPE tokens (original quirk)
            init_ids = tokenizer([ctx_init]).to(device)
            with torch.no_grad():
                init_emb = token_embedding(init_ids).type(dtype)
            ctx_vectors = init_emb[0, 1:1 + n_ctx, :]
            prompt_prefix = ctx_init
        else:
            ctx_vectors = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            ctx_vectors = ctx_vectors.to(device)
            prompt_prefix = " ".join(["X"] * n_ctx)

        self.ctx = nn.Parameter(ctx_vectors)

        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, ctx_dim)),
        ])).to(device=device, dtype=dtype)

        names = [name.replace("_", " ") for name in classnames]
        name_lens = [len(tokenizer.encode(name)) for name in names]  # unused, as in the original
        prompt_texts = [prompt_prefix + " " + name + "." for name in names]

        tokenized_prompts = _tokenize_each(tokenizer, prompt_texts).to(device)  # [C, 77]
        with torch.no_grad():
            embedding = token_embedding(tokenized_prompts).type(dtype)

        self.register_buffer("token_prefix", embedding[:, :1, :])           # SOT
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])   # class, '.', EOT, pad
        self.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)

        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.name_lens = name_lens
        self.prompt_texts = prompt_texts

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


class ReferenceCoCoOp(nn.Module):
    """CoCoOp's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4,
                 ctx_init: str = "a photo of a", tokenizer: Optional[Callable] = None):
        super().__init__()
        self.prompt_learner = ReferenceCoCoOpPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, tokenizer=tokenizer)
        self.image_encoder = model.visual
        self.text_encoder = ReferenceTextEncoder(model)
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype

    @property
    def tokenized_prompts(self) -> torch.Tensor:
        return self.prompt_learner.tokenized_prompts

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.image_encoder(images.type(self.dtype))
        if isinstance(feats, (tuple, list)):  # open_clip towers built with output_tokens=True
            feats = feats[0]
        return feats

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
