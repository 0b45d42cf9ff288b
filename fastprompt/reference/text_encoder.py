"""Literal re-implementation of the CoOp/CoCoOp ``TextEncoder`` on open_clip models.

Source followed: KaiyangZhou/CoOp @ ff61507 ``trainers/coop.py`` (class ``TextEncoder``; the copy
in ``trainers/cocoop.py`` is identical).

The original takes prompt *embeddings* (not token ids), adds the positional embedding, runs the
frozen CLIP text transformer over the full context (77 positions for every class), applies
``ln_final``, gathers the row of the EOT token (``tokenized_prompts.argmax(-1)``, the EOT id is the
largest id in the vocabulary) and projects it with ``text_projection``.

Differences that come from open_clip rather than from a change of semantics:

* OpenAI's ``clip`` stores the causal mask inside every residual block, so the original calls
  ``transformer(x)``. open_clip keeps the float ``-inf`` upper-triangular mask on the model
  (``model.attn_mask``) and passes it in: ``transformer(x, attn_mask=model.attn_mask)``.
* OpenAI's ``clip`` transformer is sequence-first, so the original permutes NLD -> LND and back.
  open_clip 3.x's ``Transformer.forward`` always takes batch-first ``[N, L, D]`` input and does the
  LND transpose internally when it was built with ``batch_first=False``; permuting here as well
  would transpose twice. So, exactly like ``open_clip.CLIP.encode_text``, the input is passed
  batch-first and no permute is done here.

This module is the parity oracle / "before" side of benchmarks: it is deliberately unoptimised.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ReferenceTextEncoder", "text_tower"]


def text_tower(model: nn.Module) -> nn.Module:
    """The module that owns the text-tower parts of an open_clip model.

    ``open_clip.CLIP`` keeps ``transformer``, ``token_embedding``, ``positional_embedding``,
    ``ln_final``, ``text_projection`` and ``attn_mask`` on the model itself; ``CustomTextCLIP``
    keeps them on ``model.text`` (a ``TextTransformer``). Anything else (HF text towers, CoCa's
    appended class token, non-argmax pooling) is not what CoOp's text encoder computes and is
    rejected with a ``ValueError``.
    """
    needed = ("transformer", "token_embedding", "positional_embedding", "ln_final")
    holder = None
    if all(hasattr(model, n) for n in needed):
        holder = model
    elif hasattr(model, "text") and all(hasattr(model.text, n) for n in needed):
        holder = model.text
    if holder is None:
        raise ValueError(
            f"{type(model).__name__} has no open_clip transformer text tower (expected "
            "transformer/token_embedding/positional_embedding/ln_final on the model or on "
            "model.text); HF text towers are not supported by the CoOp reference")
    if not hasattr(holder.transformer, "resblocks"):
        raise ValueError(f"unsupported text transformer {type(holder.transformer).__name__}")
    if getattr(holder, "cls_emb", None) is not None:
        raise ValueError("text towers with an appended class token (CoCa) are not supported: "
                         "CoOp pools the EOT token")
    pool_type = getattr(holder, "text_pool_type", getattr(holder, "pool_type", "argmax"))
    if pool_type != "argmax":
        raise ValueError(f"text pool_type {pool_type!r} is not supported: CoOp gathers the row at "
                         "tokenized_prompts.argmax(-1) (open_clip pool_type 'argmax')")
    if getattr(holder, "use_pad_mask", False):
        raise ValueError("text towers with a padding mask are not supported by the CoOp reference")
    return holder


def _model_dtype(holder: nn.Module) -> torch.dtype:
    transformer = holder.transformer
    if hasattr(transformer, "get_cast_dtype"):
        return transformer.get_cast_dtype()
    return holder.positional_embedding.dtype


class ReferenceTextEncoder(nn.Module):
    """CoOp's ``TextEncoder``: prompt embeddings ``[C, L, D]`` + token ids ``[C, L]`` -> ``[C, E]``.

    Shares (does not copy) the text-tower modules of ``model``; nothing is frozen or unfrozen here.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        holder = text_tower(model)
        self.transformer = holder.transformer
        self.positional_embedding = holder.positional_embedding
        self.ln_final = holder.ln_final
        self.text_projection = holder.text_projection
        # The causal mask lives on the open_clip model (OpenAI's clip keeps it in each block).
        # A non-persistent buffer so it follows .to(device) without entering the state dict.
        self.register_buffer("attn_mask", holder.attn_mask, persistent=False)
        self.dtype = _model_dtype(holder)

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding.type(self.dtype)
        # open_clip's Transformer takes [N, L, D] and handles batch_first itself (see module doc).
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x).type(self.dtype)

        # x: [n_prompts, n_tokens, width]; read the EOT row (EOT has the largest token id).
        eot = tokenized_prompts.argmax(dim=-1).to(x.device)
        x = x[torch.arange(x.shape[0], device=x.device), eot]
        proj = self.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj
