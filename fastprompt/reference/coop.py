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

from .text_encoder import ReferenceTextEncoder, _model_dtype, text_tower

__all__ = ["ReferenceCoOpPromptLearner", "ReferenceCoOp", "default_tokenizer"]

_POSITIONS = ("end", "middle", "front")


def default_tokenizer(model: nn.Module) -> Callable:
    """open_clip's CLIP BPE tokenizer with the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=model.context_length)


def _tokenize_each(tokenizer: Callable, texts: Sequence[str]) -> torch.Tensor:
    # The original tokenizes prompt by prompt and concatenates: torch.cat([tokenize(p) ...]).
    return torch.cat([tokenizer([t]) for t in texts], dim=0)


class ReferenceCoOpPromptLearner(nn.Module):
    """CoOp's ``PromptLearner``: ``forward() -> prompts [C, 77, D]``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        if class_token_position not in _POSITIONS:
            raise ValueError(f"class_token_position must be one of {_POSITIONS}, "
                             f"got {class_token_position!r}")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        token_embedding = holder.token_embedding
        device = token_embedding.weight.device

        if ctx_init:
            # initialise the context from the embeddings of the given words
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))  # words, not BPE tokens (original quirk)
            init_ids = tokenizer([ctx_init]).to(device)
            with torch.no_grad():
                init_emb = token_embedding(init_ids).type(dtype)
            ctx_vectors = init_emb[0, 1:1 + n_ctx, :]
            prompt_prefix = ctx_init
        else:
            # random initialisation, class-specific or generic (CPU generator, as the original)
            if csc:
                ctx_vectors = torch.empty(n_cls, n_ctx, ctx_dim, dtype=dtype)
            else:
                ctx_vectors = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            ctx_vectors = ctx_vectors.to(device)
            prompt_prefix = " ".join(["X"] * n_ctx)

        self.ctx = nn.Parameter(ctx_vectors)  # the only trainable tensor

        names = [name.replace("_", " ") for name in classnames]
        name_lens = [len(tokenizer.encode(name)) for name in names]
        prompt_texts = [prompt_prefix + " " + name + "." for name in names]

        tokenized_prompts = _tokenize_each(tokenizer, prompt_texts).to(device)
        with torch.no_grad():
            embedding = token_embedding(tokenized_prompts).type(dtype)

        # Saved in the state dict like the original (which ignores them when loading).
        self.register_buffer("token_prefix", embedding[:, :1, :])           # SOT
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])   # class, '.', EOT, pad
        # The original keeps this as a plain attribute; a non-persistent buffer keeps the state
        # dict keys identical while following .to(device).
        self.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)

        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.name_lens = name_lens
        self.class_token_position = class_token_position
        self.prompt_texts = prompt_texts

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)

        prefix = self.token_prefix
        suffix = self.token_suffix

        if self.class_token_position == "end":
            # [SOT][ctx_1 .. ctx_M][class tokens][.][EOT][pad]
            return torch.cat([prefix, ctx, suffix], dim=1)

        if self.class_token_position == "middle":
            # [SOT][first half of ctx][class tokens][second half of ctx][.][EOT][pad]
            half = self.n_ctx // 2
            rows = []
            for i in range(self.n_cls):
                name_len = self.name_lens[i]
                rows.append(torch.cat([
                    prefix[i:i + 1, :, :],
                    ctx[i:i + 1, :half, :],
                    suffix[i:i + 1, :name_len, :],
                    ctx[i:i + 1, half:, :],
                    suffix[i:i + 1, name_len:, :],
                ], dim=1))
            return torch.cat(rows, dim=0)

        if self.class_token_position == "front":
            # [SOT][class tokens][ctx_1 .. ctx_M][.][EOT][pad]
            rows = []
            for i in range(self.n_cls):
                name_len = self.name_lens[i]
                rows.append(torch.cat([
                    prefix[i:i + 1, :, :],
                    suffix[i:i + 1, :name_len, :],
                    ctx[i:i + 1, :, :],
                    suffix[i:i + 1, name_len:, :],
                ], dim=1))
            return torch.cat(rows, dim=0)

        raise ValueError(f"unknown class_token_position {self.class_token_position!r}")


class ReferenceCoOp(nn.Module):
    """CoOp's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        self.prompt_learner = ReferenceCoOpPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
            class_token_position=class_token_position, tokenizer=tokenizer)
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
        image_features = self.encode_image(images)

        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts)

        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)

        logit_scale = self.logit_scale.exp()
        return logit_scale * image_features @ text_features.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
