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

Towers other than OpenAI's (open_clip ``TextTransformer``): the encoder follows
``TextTransformer.forward`` with prompt embeddings in place of ``token_embedding(text)``: CoCa's CLS
embedding appended after the prompt, the model's own attention mask (the causal mask when the tower
has one, plus the additive key-padding mask built from the tokenized prompts where the tower masks
padding: ``use_pad_mask`` or a CLS, with open_clip's legacy or ``correct_cls_mask`` CLS column), and
its own pooling (``text_global_pool`` with ``pool_type``/``eos_id``; the CLS row, then ``ln_final``,
for CoCa), then the projection as ``Parameter``, ``Linear`` or none.

The same input assembly (:func:`text_inputs`) and pooling (:func:`pool_tower_output`) serve the
deep-prompt references (:mod:`.deep`, :mod:`.rpp`), which run the blocks one by one: on a
bidirectional tower every class goes through the full 64/77-token sequence with the tower's own
mask (none, or the padding mask) and pooling, the prompt rows written into each layer's input.

This module is the parity oracle / "before" side of benchmarks: it is deliberately unoptimised.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ReferenceTextEncoder", "text_tower", "text_inputs", "pool_text", "pool_tower_output", "project_text"]


def text_tower(model: nn.Module) -> nn.Module:
    """The module that owns the text-tower parts of an open_clip model.

    ``open_clip.CLIP`` keeps ``transformer``, ``token_embedding``, ``positional_embedding``,
    ``ln_final``, ``text_projection`` and ``attn_mask`` on the model itself; ``CustomTextCLIP``
    keeps them on ``model.text`` (a ``TextTransformer``). Hugging Face text towers and pooling
    ``'none'`` (no feature per prompt) are rejected with a ``ValueError``.
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
    if getattr(holder, "cls_emb", None) is None and _pool_type(holder) == "none":
        raise ValueError("text pool_type 'none' gives every token, not one feature per prompt")
    return holder


def _pool_type(holder: nn.Module) -> str:
    return getattr(holder, "text_pool_type", getattr(holder, "pool_type", "argmax"))


def _padding_mask(holder: nn.Module, tokenized: torch.Tensor, seq_len: int, heads: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """open_clip's ``TextTransformer._build_additive_mask``: ``[N*H, S, S]``, ``-inf`` at keys whose
    token is ``pad_id``; the CLS column (always valid) goes last with ``correct_cls_mask``, else first
    (the legacy mask of the released CoCa weights, which shifts the validity of every key by one)."""
    valid = tokenized != holder.pad_id
    if holder.cls_emb is not None:
        ones = valid.new_ones(valid.shape[0], 1)
        valid = torch.cat([valid, ones] if holder.correct_cls_mask else [ones, valid], 1)
    keys = valid.unsqueeze(1).expand(-1, seq_len, -1)
    additive = torch.zeros(keys.shape, dtype=dtype, device=keys.device).masked_fill(~keys, float("-inf"))
    return additive.repeat_interleave(heads, 0)


def project_text(holder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x @ text_projection`` for a parameter projection, or the Linear / identity open_clip may use."""
    proj = holder.text_projection
    if proj is None:
        return x
    if isinstance(proj, nn.Linear):
        return proj(x)
    return x @ proj


def pool_text(holder: nn.Module, x: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """The tower's own pooling of the last hidden states ``x [C, L, D]`` of prompts with token ids
    ``tokenized [C, L]`` -> ``[C, E]``: ``ln_final``, then ``text_global_pool`` with the tower's
    ``pool_type`` and ``eos_id`` (CLIP: the EOT row, the largest id; ViT-L-14-worldwide: the first
    id 1; SigLIP: the last row), then the projection. Towers with CoCa's CLS are pooled by
    :class:`ReferenceTextEncoder` only."""
    from open_clip.transformer import text_global_pool

    x = holder.ln_final(x).type(_model_dtype(holder))
    x = text_global_pool(x, tokenized.to(x.device), _pool_type(holder),
                         eos_token_id=getattr(holder, "text_eos_id", getattr(holder, "eos_id", None)))
    return project_text(holder, x)


def _model_dtype(holder: nn.Module) -> torch.dtype:
    transformer = holder.transformer
    if hasattr(transformer, "get_cast_dtype"):
        return transformer.get_cast_dtype()
    return holder.positional_embedding.dtype


def _masks_padding(holder: nn.Module) -> bool:
    return bool(getattr(holder, "use_pad_mask", False)) or getattr(holder, "cls_emb", None) is not None


def text_inputs(holder: nn.Module, prompts: torch.Tensor, tokenized: torch.Tensor):
    """The tower's layer-0 input and attention mask for prompt embeddings, as
    ``TextTransformer._embeds`` builds them from ``token_embedding(text)``.

    Args:
        holder: the text tower (:func:`text_tower`).
        prompts: ``[C, L, D]`` prompt embeddings (no positions).
        tokenized: ``[C, L]`` their token ids (what the padding mask reads).

    Returns:
        ``(x [C, L', D], attn_mask)``: CoCa's CLS embedding appended (``L' = L + 1``) where the tower
        has one, the positional embedding added; the mask is the causal ``[L', L']`` one, the
        additive key-padding / CLS mask ``[C*H, L', L']`` (added to the causal one where both), or
        ``None`` for a bidirectional tower that masks nothing (SigLIP, CLIPA, MobileCLIP-S).
    """
    x, seq_len = prompts, prompts.shape[1]
    cls_emb = getattr(holder, "cls_emb", None)
    if cls_emb is not None:  # CoCa: the CLS embedding appended after the prompt
        x = torch.cat([x, cls_emb.to(x.dtype).expand(x.shape[0], 1, -1)], 1)
        seq_len += 1
    attn_mask = holder.attn_mask
    if _masks_padding(holder):
        pad = _padding_mask(holder, tokenized.to(x.device), seq_len, holder.heads, x.dtype)
        attn_mask = pad if attn_mask is None else attn_mask[:seq_len, :seq_len].unsqueeze(0) + pad
    return x + holder.positional_embedding[:seq_len].type(_model_dtype(holder)), attn_mask


def pool_tower_output(holder: nn.Module, x: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """The tower's features ``[C, E]`` from its last hidden states ``x [C, L', D]``: CoCa's CLS row
    (pooled whatever ``pool_type`` says, ``ln_final`` after pooling), else :func:`pool_text`."""
    if getattr(holder, "cls_emb", None) is None:
        return pool_text(holder, x, tokenized)
    return project_text(holder, holder.ln_final(x[:, -1]).type(_model_dtype(holder)))


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
        # The causal mask lives on the open_clip model (OpenAI's clip keeps it in each block); None
        # for a bidirectional tower. A non-persistent buffer so it follows .to(device) without
        # entering the state dict.
        self.register_buffer("attn_mask", holder.attn_mask, persistent=False)
        self.dtype = _model_dtype(holder)
        self.cls_emb = getattr(holder, "cls_emb", None)
        self.pool_type = _pool_type(holder)
        self.eos_id = getattr(holder, "text_eos_id", getattr(holder, "eos_id", None))
        self._holder = [holder]  # not a submodule: its modules are registered above already

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        """``prompts [C, L, D]`` (embeddings, no positions) and their token ids ``[C, L]`` -> ``[C, E]``."""
        tokenized_prompts = tokenized_prompts.to(prompts.device)
        holder = self._holder[0]
        x, attn_mask = text_inputs(holder, prompts, tokenized_prompts)
        # open_clip's Transformer takes [N, L, D] and handles batch_first itself (see module doc).
        x = self.transformer(x, attn_mask=attn_mask)
        # CLIP: the EOT row (EOT has the largest token id); others: their pool_type or CoCa's CLS
        return pool_tower_output(holder, x, tokenized_prompts)
