"""The CoOp prompt set-up that every original repository copied, written once for the references.

CoOp's ``PromptLearner.__init__`` was copy-pasted into CoCoOp, KgCoOp, PRE, SoftCPT, POMP, MaPLe,
PromptSRC (and the RPP design follows it). The copies agree line for line except in two places,
which are arguments here rather than separate code paths:

* how ``ctx_init`` sets the context length: CoOp and most descendants set ``n_ctx`` := the number
  of space-separated *words* of ``ctx_init`` (``n_ctx_from_words=True``); MaPLe and PromptSRC keep
  the configured ``n_ctx`` and only use ``ctx_init`` when ``n_ctx <= 4`` (the caller passes ``""``
  otherwise), taking the embeddings at positions ``1 .. n_ctx`` even if the phrase is longer;
* whether the random context is class-specific (``rows``: ``[rows, n_ctx, D]`` instead of
  ``[n_ctx, D]``).

Every function here reproduces the original statements in the original order (random draws
included: N(0, 0.02) on a CPU tensor, then moved to the model's device), so a reference built with
a given seed initialises exactly as the original would.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..learners.prompts import text_start, text_tokens
from .text_encoder import ReferenceTextEncoder, _model_dtype

__all__ = ["default_tokenizer", "tokenize_each", "init_context", "register_class_prompts",
           "assemble_prompts", "POSITIONS", "ReferenceCLIPBase"]

POSITIONS = ("end", "middle", "front")


def default_tokenizer(model: nn.Module) -> Callable:
    """open_clip's CLIP BPE tokenizer with the model's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=model.context_length)


def tokenize_each(tokenizer: Callable, texts: Sequence[str]) -> torch.Tensor:
    """``[len(texts), context_length]`` ids; the originals tokenize prompt by prompt and concatenate."""
    return torch.cat([tokenizer([t]) for t in texts], dim=0)


def init_context(holder: nn.Module, tokenizer: Callable, ctx_init: str, n_ctx: int, *,
                 rows: Optional[int] = None, n_ctx_from_words: bool = True) -> Tuple[torch.Tensor, str, int]:
    """The original context initialisation: ``(ctx_vectors, prompt_prefix, n_ctx)``.

    With ``ctx_init``: ``_`` becomes a space, the vectors are the token embeddings at positions
    ``1 .. n_ctx`` of the tokenized phrase (``s .. s+n_ctx-1`` for a tokenizer with ``s`` leading
    special tokens, :func:`~fastprompt.learners.prompts.text_start`: 0 for SigLIP's) (``[n_ctx, D]``, generic even when ``rows`` is given, as
    in the original), and the prompt text starts with the phrase. Without: N(0, 0.02) vectors
    ``[n_ctx, D]`` (``[rows, n_ctx, D]`` when ``rows`` is given) and the placeholder ``"X X ... X"``.
    ``holder`` is the module owning ``token_embedding`` and ``ln_final`` (``text_tower(model)``).
    """
    dtype = _model_dtype(holder)
    ctx_dim = holder.ln_final.weight.shape[0]
    token_embedding = holder.token_embedding
    device = token_embedding.weight.device
    if ctx_init:
        ctx_init = ctx_init.replace("_", " ")
        if n_ctx_from_words:
            n_ctx = len(ctx_init.split(" "))  # words, not BPE tokens (original quirk)
        init_ids = tokenizer([ctx_init]).to(device)
        with torch.no_grad():
            init_emb = token_embedding(init_ids).type(dtype)
        start = text_start(tokenizer)
        return init_emb[0, start:start + n_ctx, :], ctx_init, n_ctx
    shape = (n_ctx, ctx_dim) if rows is None else (rows, n_ctx, ctx_dim)
    ctx_vectors = torch.empty(*shape, dtype=dtype)  # CPU generator, as the original
    nn.init.normal_(ctx_vectors, std=0.02)
    return ctx_vectors.to(device), " ".join(["X"] * n_ctx), n_ctx


def register_class_prompts(module: nn.Module, holder: nn.Module, tokenizer: Callable, names: Sequence[str],
                           prompt_prefix: str, n_ctx: int) -> Tuple[List[int], List[str]]:
    """Tokenize ``"<prompt_prefix> <name>."`` per name and register the original buffers on ``module``.

    ``token_prefix [C, 1, D]`` (SOT) and ``token_suffix [C, 77 - 1 - n_ctx, D]`` (class tokens, '.',
    EOT, padding) are persistent (``[C, s, D]`` and ``[C, L - s - n_ctx, D]`` for a tokenizer with
    ``s`` leading special tokens and context length ``L``: SigLIP's has none, so the context comes
    first), as in the original (its checkpoints carry them);
    ``tokenized_prompts [C, 77]`` is a plain attribute there and a non-persistent buffer here, so
    the state dict keys stay identical while it follows ``.to(device)``. Returns ``(name_lens,
    prompt_texts)``: BPE lengths of the bare names (used by the middle/front layouts) and the texts.
    """
    token_embedding = holder.token_embedding
    names = [name.replace("_", " ") for name in names]
    name_lens = [len(text_tokens(tokenizer, name)) for name in names]
    prompt_texts = [prompt_prefix + " " + name + "." for name in names]
    tokenized_prompts = tokenize_each(tokenizer, prompt_texts).to(token_embedding.weight.device)
    with torch.no_grad():
        embedding = token_embedding(tokenized_prompts).type(_model_dtype(holder))
    start = text_start(tokenizer)
    module.register_buffer("token_prefix", embedding[:, :start, :])
    module.register_buffer("token_suffix", embedding[:, start + n_ctx:, :])
    module.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)
    return name_lens, prompt_texts


def assemble_prompts(prefix: torch.Tensor, ctx: torch.Tensor, suffix: torch.Tensor, name_lens: Sequence[int],
                     n_ctx: int, position: str) -> torch.Tensor:
    """CoOp's prompt assembly ``[C, 77, D]`` from ``prefix [C, 1, D]``, ``ctx [C, n_ctx, D]``, ``suffix``.

    ``end``: ``[SOT][ctx][class][.][EOT]`` with one ``torch.cat``; ``middle``:
    ``[SOT][ctx[:n_ctx//2]][class][ctx[n_ctx//2:]][.][EOT]`` and ``front``:
    ``[SOT][class][ctx][.][EOT]``, both with the original per-class Python loop.
    """
    if position == "end":
        return torch.cat([prefix, ctx, suffix], dim=1)
    if position not in ("middle", "front"):
        raise ValueError(f"unknown class token position {position!r}; expected one of {POSITIONS}")
    prompts = []
    for i, name_len in enumerate(name_lens):
        prefix_i = prefix[i:i + 1, :, :]
        class_i = suffix[i:i + 1, :name_len, :]
        suffix_i = suffix[i:i + 1, name_len:, :]
        if position == "middle":
            half = n_ctx // 2
            parts = [prefix_i, ctx[i:i + 1, :half, :], class_i, ctx[i:i + 1, half:, :], suffix_i]
        else:
            parts = [prefix_i, class_i, ctx[i:i + 1, :, :], suffix_i]
        prompts.append(torch.cat(parts, dim=1))
    return torch.cat(prompts, dim=0)


class ReferenceCLIPBase(nn.Module):
    """The original ``CustomCLIP`` attributes: ``image_encoder``, ``text_encoder``, ``logit_scale``,
    ``dtype``, and the unnormalised frozen image features. Subclasses set ``self.prompt_learner``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.image_encoder = model.visual
        self.text_encoder = ReferenceTextEncoder(model)
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype

    @property
    def tokenized_prompts(self) -> torch.Tensor:
        return self.prompt_learner.tokenized_prompts

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised), the original ``image_encoder(image.type(dtype))``."""
        feats = self.image_encoder(images.type(self.dtype))
        if isinstance(feats, (tuple, list)):  # open_clip towers built with output_tokens=True
            feats = feats[0]
        return feats
