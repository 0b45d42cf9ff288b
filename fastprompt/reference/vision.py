"""Literal deep visual prompting (MaPLe / VPT-deep / IVLP vision path) on open_clip ViTs.

Sources followed: muzairkhattak/multimodal-prompt-learning @ 69bce21 ``clip/model.py``
(``VisionTransformer_MaPLe.forward`` and the vision branch of ``ResidualAttentionBlock_MaPLe`` /
``ResidualAttentionBlock_IVLP``), whose deep vision prompts follow VPT-deep (Jia et al., "Visual
Prompt Tuning", ECCV 2022).

Semantics, with ``J = len(deep_prompts)`` prompt tensors of shape ``[M, W]``:

1. patch embedding (``conv1``), class token prepended, ``+ positional_embedding``, patch dropout
   (open_clip's own embedding steps);
2. ``deep_prompts[0]`` (expanded over the batch) is **appended at the end** of the sequence with
   no positional embedding, and ``ln_pre`` is applied to all tokens (prompts included);
3. before block ``j`` for ``1 <= j < J`` the **last M rows are replaced** by ``deep_prompts[j]``
   (``torch.cat`` of the kept rows and the new prompt); blocks ``>= J`` keep whatever the prompt
   rows hold, i.e. the outputs of the last prompted block propagate to the end;
4. every block is open_clip's own module (``visual.transformer.resblocks[j]``);
5. pooling as open_clip's ``VisionTransformer._pool`` (:func:`pool_image`) over the image's own rows
   ``0 .. T-1`` (``T`` the model's own sequence length): the appended prompt rows are not image
   tokens and their outputs are dropped before the pool, as in VPT's and MaPLe's class-token head.
   Without an attentional pooler: ``pool_type='tok'`` takes token 0, ``'avg'`` (CLIPA) the mean of
   the patch tokens ``1 .. T-1``; ``ln_post`` before the pool, or after it when
   ``final_ln_after_pool``. With CoCa's attentional pooler: ``attn_pool`` over the ``T`` image rows,
   ``ln_post`` on its queries' outputs, then ``pool_type`` over the queries (``'tok'``: query 0, the
   contrastive embedding ``encode_image`` returns). Then ``@ visual.proj``.

The MaPLe code hard-casts the prompts to fp16; here they are cast to the activations' dtype (a
no-op in our fp32 runs). With no prompts the result equals ``visual(images)``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["reference_encode_image_deep", "pool_image"]


def _check_tower(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    missing = [n for n in needed if not hasattr(visual, n)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        raise ValueError(f"{type(visual).__name__} is not an open_clip VisionTransformer "
                         f"(missing {missing or ['transformer.resblocks']}); deep visual prompts "
                         "need a ViT image tower")
    if getattr(visual, "attn_pool_contrastive", None) is not None:
        raise ValueError(f"vision towers with a {visual.attn_pool_type!r} pair of attentional poolers are not "
                         "supported by the deep prompt reference (open_clip marks them untested and their pooled "
                         "output keeps a query axis); CoCa's single pooler (attentional_pool=True) is")
    pool_type = getattr(visual, "pool_type", "tok")
    if pool_type not in ("tok", "avg"):
        raise ValueError(f"vision pool_type {pool_type!r} is not supported; only 'tok' (class "
                         "token, as in CLIP/MaPLe) and 'avg' (mean of the patch tokens) pooling")


def pool_image(visual: nn.Module, x: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
    """open_clip's ``VisionTransformer`` pooling of the last hidden states ``x [B, T + M, W]`` (the
    ``T = n_image_tokens`` rows of the model's own sequence, class token first, then ``M`` prompt
    rows, dropped here) -> ``[B, E]``: the attentional pooler (CoCa) then ``ln_post``, or ``ln_post``
    before or after (``final_ln_after_pool``) the pool; ``@ proj``."""
    image = x[:, :n_image_tokens]

    def pool(t):  # the pool_type over the rows of t: the image's rows, or the pooler's queries
        if getattr(visual, "pool_type", "tok") == "avg":
            return t[:, 1:].mean(dim=1)
        return t[:, 0]

    if getattr(visual, "attn_pool", None) is not None:
        pooled = pool(visual.ln_post(visual.attn_pool(image)))
    elif getattr(visual, "final_ln_after_pool", False):
        pooled = visual.ln_post(pool(image))
    else:
        pooled = pool(visual.ln_post(image))
    proj = getattr(visual, "proj", None)
    return pooled @ proj if proj is not None else pooled


def _embed(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """open_clip ``VisionTransformer._embeds`` up to (not including) ``ln_pre``."""
    x = visual.conv1(images)                                   # [B, W, g, g]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # [B, g*g, W]
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)                              # [B, 1 + g*g, W]
    x = x + visual.positional_embedding.to(x.dtype)
    return visual.patch_dropout(x)


def reference_encode_image_deep(visual: nn.Module, images: torch.Tensor,
                                deep_prompts: Optional[Sequence[torch.Tensor]] = None
                                ) -> torch.Tensor:
    """Image features ``[B, E]`` of an open_clip ViT with deep visual prompts (see module doc).

    ``deep_prompts``: ``None``/empty, or a sequence of ``J <= n_layers`` tensors ``[M, W]`` (same M
    for all, ``W`` = the tower's width). ``deep_prompts[0]`` enters before ``ln_pre``; the others
    replace the prompt rows before blocks ``1 .. J-1``.
    """
    _check_tower(visual)
    prompts = [] if deep_prompts is None else list(deep_prompts)
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    width = visual.class_embedding.shape[-1]
    n_prompt_layers = len(prompts)
    if n_prompt_layers > n_layers:
        raise ValueError(f"{n_prompt_layers} deep prompt tensors for a tower with only {n_layers} "
                         "blocks")
    n_tok = None
    for j, p in enumerate(prompts):
        if not isinstance(p, torch.Tensor) or p.dim() != 2:
            raise ValueError(f"deep_prompts[{j}] must be a 2-D tensor [M, W], got "
                             f"{getattr(p, 'shape', type(p))}")
        if p.shape[1] != width:
            raise ValueError(f"deep_prompts[{j}] has width {p.shape[1]}, the vision tower's width "
                             f"is {width}")
        if n_tok is None:
            n_tok = p.shape[0]
        elif p.shape[0] != n_tok:
            raise ValueError(f"deep_prompts[{j}] has {p.shape[0]} tokens, deep_prompts[0] has "
                             f"{n_tok}; all layers must use the same prompt length")
    if n_tok == 0:
        raise ValueError("deep prompts must have at least one token")

    x = _embed(visual, images)
    batch, n_image_tokens = x.shape[0], x.shape[1]
    if prompts:
        # layer-0 prompts: appended at the end, no positional embedding, before ln_pre
        x = torch.cat([x, prompts[0].to(x.dtype).expand(batch, -1, -1)], dim=1)
    x = visual.ln_pre(x)

    batch_first = getattr(visual.transformer, "batch_first", True)
    for j, block in enumerate(blocks):
        if 1 <= j < n_prompt_layers:
            # drop the previous layer's prompt outputs, put this layer's prompts in their place
            x = torch.cat([x[:, :x.shape[1] - n_tok, :],
                           prompts[j].to(x.dtype).expand(batch, -1, -1)], dim=1)
        if batch_first:
            x = block(x)
        else:
            x = block(x.transpose(0, 1)).transpose(0, 1)

    return pool_image(visual, x, n_image_tokens)
