"""Literal deep visual prompting on timm ViT trunks (open_clip's ``TimmModel``: EVA, PE-Core, SigLIP, ...).

The oracle of :class:`fastprompt.towers.timm_vision.TimmVisionTower`, written the slow, obvious
way: the prompt rows are concatenated into the token sequence and the trunk's own modules run it.
Semantics (VPT-deep / MaPLe / IVLP, as :mod:`fastprompt.reference.vision` for open_clip's ViT),
with ``J`` prompt tensors ``[M, W]`` and ``P = trunk.num_prefix_tokens`` (class and register rows):

1. timm's own ``patch_embed`` and ``_pos_embed`` (prefix rows, absolute position embedding, patch
   dropout; EVA's rotary table of the patch rows);
2. ``deep_prompts[0]`` (expanded over the batch) is inserted **right after the prefix rows**, with
   no position embedding; the trunk's ``norm_pre`` runs over all rows;
3. before block ``j`` for ``1 <= j < J`` the prompt rows ``P .. P+M-1`` are **replaced** by
   ``deep_prompts[j]``; blocks ``>= J`` keep what the rows hold (the outputs propagate);
4. every block is the trunk's own module called as the trunk calls it (``blk(x, rope=rope)`` for
   EVA). The prompts get no rotary embedding, like the class token: during the blocks each
   attention counts them among its ``num_prefix_tokens``, so timm's own code leaves them unrotated
   and rotates exactly the patch rows (restored afterwards);
5. the prompt rows are dropped and the image's own rows go through the trunk's ``norm`` and its own
   ``forward_head`` (token / avg / attention-pool ``map``, ``fc_norm``, head), then open_clip's
   ``head``: the prompt outputs are discarded, as in VPT and MaPLe where only the class token is read.

With no prompts the result equals ``visual(images)`` (``model.encode_image``).

:func:`reference_encode_timm_image_qkv` is RPP's variant (unshared query / key / value rows per
layer, as :mod:`fastprompt.reference.rpp` does for open_clip's ViT): the layer's attention reads
separately assembled query, key and value sequences and is an explicit softmax over them; the
block's own module then adds it (its LayerScale / post-norm) and runs its own MLP.
"""
from __future__ import annotations

import contextlib
from typing import Optional, Sequence
from unittest import mock

import torch
import torch.nn as nn

__all__ = ["reference_encode_timm_image_deep", "reference_encode_timm_image_qkv"]


def _check(visual: nn.Module) -> nn.Module:
    from ..towers.timm_support import timm_trunk_problem

    trunk = getattr(visual, "trunk", None)
    if trunk is None or not hasattr(visual, "head"):
        raise ValueError(f"{type(visual).__name__} is not open_clip's TimmModel (a timm trunk and a head)")
    problem = timm_trunk_problem(trunk)
    if problem is not None:
        raise ValueError(f"the timm deep-prompt reference runs timm's Eva and VisionTransformer; this trunk is {problem}")
    return trunk


def _tokens(trunk: nn.Module, images: torch.Tensor):
    """timm's own embedding before ``norm_pre``: ``(x [B, T, W], rope or None)``."""
    x = trunk._pos_embed(trunk.patch_embed(images.to(next(trunk.parameters()).dtype)))
    return x if isinstance(x, tuple) else (trunk.patch_drop(x), None)


def _insert(x: torch.Tensor, rows: torch.Tensor, prefix: int, replaced: int) -> torch.Tensor:
    """``x [B, L, W]`` with rows ``prefix .. prefix+replaced-1`` replaced by ``rows [M, W]``."""
    return torch.cat([x[:, :prefix], rows.to(x.dtype).expand(x.shape[0], -1, -1), x[:, prefix + replaced:]], dim=1)


@contextlib.contextmanager
def _prompts_unrotated(trunk: nn.Module, m: int):
    """Count ``m`` prompt rows among each attention's ``num_prefix_tokens`` (EVA: the rows timm's
    attention leaves out of the rotary embedding), restored on exit."""
    saved = [(blk.attn, blk.attn.num_prefix_tokens) for blk in trunk.blocks if hasattr(blk.attn, "num_prefix_tokens")]
    try:
        for attn, n in saved:
            attn.num_prefix_tokens = n + m
        yield
    finally:
        for attn, n in saved:
            attn.num_prefix_tokens = n


def _run(trunk: nn.Module, blk: nn.Module, x: torch.Tensor, rope) -> torch.Tensor:
    from timm.models.eva import Eva

    return blk(x, rope=rope) if isinstance(trunk, Eva) else blk(x)


def _finish(visual: nn.Module, trunk: nn.Module, x: torch.Tensor, m: int) -> torch.Tensor:
    """Drop the ``m`` prompt rows, then the trunk's norm, its own head and open_clip's head."""
    p = trunk.num_prefix_tokens
    x = torch.cat([x[:, :p], x[:, p + m:]], dim=1)
    return visual.head(trunk.forward_head(trunk.norm(x)))


def reference_encode_timm_image_deep(visual: nn.Module, images: torch.Tensor,
                                     deep_prompts: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Image features ``[B, E]`` of open_clip's ``TimmModel`` with deep visual prompts (module doc).

    ``deep_prompts``: ``None``/empty, or ``J <= depth`` tensors ``[M, W]`` (same ``M``).
    """
    trunk = _check(visual)
    prompts = list(deep_prompts or [])
    if len(prompts) > len(trunk.blocks):
        raise ValueError(f"{len(prompts)} deep prompt tensors for a trunk of {len(trunk.blocks)} blocks")
    m = prompts[0].shape[0] if prompts else 0
    p = trunk.num_prefix_tokens
    x, rope = _tokens(trunk, images)
    if prompts:
        x = _insert(x, prompts[0], p, 0)
    x = trunk.norm_pre(x)
    with _prompts_unrotated(trunk, m):
        for j, blk in enumerate(trunk.blocks):
            if 1 <= j < len(prompts):
                x = _insert(x, prompts[j], p, m)
            x = _run(trunk, blk, x, rope)
    return _finish(visual, trunk, x, m)


# ---- RPP: unshared query / key / value rows ---------------------------------------------------------
def _heads(attn: nn.Module, x: torch.Tensor):
    """timm's own q, k, v of ``x [B, L, D]``, each ``[B, H, L, d]``, as its attention computes them
    (fused ``qkv`` with EVA's q/v biases, or separate projections), then its qk-norm."""
    b, n, _ = x.shape
    if getattr(attn, "qkv", None) is not None:
        bias = attn.qkv.bias
        if getattr(attn, "q_bias", None) is not None:
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        q, k, v = nn.functional.linear(x, attn.qkv.weight, bias).reshape(b, n, 3, attn.num_heads, -1) \
            .permute(2, 0, 3, 1, 4).unbind(0)
    else:
        q, k, v = (proj(x).reshape(b, n, attn.num_heads, -1).transpose(1, 2)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
    return attn.q_norm(q), attn.k_norm(k), v


def _prompted_attention(attn: nn.Module, xq, xk, xv, head_rows, start: int, rope, rotate_from: int) -> torch.Tensor:
    """The attention of a layer whose query, key and value inputs differ (``[B, L, D]`` each, the
    block's input norm applied), optionally with head-space rows ``(q, k, v)`` ``[M, H, d]``
    replacing rows ``start ..`` after the projection; rotary embedding on rows ``>= rotate_from``
    (the patches), explicit softmax, then the attention's sub-LN and out-projection."""
    from timm.layers import apply_rot_embed_cat

    q, _, _ = _heads(attn, xq)
    _, k, _ = _heads(attn, xk)
    _, _, v = _heads(attn, xv)
    if head_rows is not None:
        def splice(t, rows):
            rows = rows.to(t.dtype).transpose(0, 1).expand(t.shape[0], -1, -1, -1)  # [B, H, M, d]
            return torch.cat([t[:, :, :start], rows, t[:, :, start + rows.shape[2]:]], dim=2)
        q, k, v = (splice(t, r) for t, r in zip((q, k, v), head_rows))
    if rope is not None:
        half = getattr(attn, "rotate_half", False)
        q, k = (torch.cat([t[:, :, :rotate_from], apply_rot_embed_cat(t[:, :, rotate_from:], rope, half=half)],
                          dim=2).type_as(v) for t in (q, k))
    weights = (q * attn.scale @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (weights @ v).transpose(1, 2).flatten(2)
    return attn.proj(attn.norm(out))


def _block_with_attention(trunk: nn.Module, blk: nn.Module, x: torch.Tensor, attention: torch.Tensor, rope):
    """The block's own forward on the residual stream ``x`` with its attention module's output
    replaced by ``attention`` (the block applies its own LayerScale / post-norm and MLP)."""
    with mock.patch.object(blk.attn, "forward", lambda *args, **kwargs: attention):
        return _run(trunk, blk, x, rope)


def reference_encode_timm_image_qkv(visual: nn.Module, images: torch.Tensor, prompts: Sequence) -> torch.Tensor:
    """Image features ``[B, E]`` with RPP's unshared query / key / value rows (``J`` :class:`QKVPrompt`).

    Before prompted layer ``j`` the prompt rows (right after the prefix rows) of the residual
    stream become ``prompts[j].residual``; the attention reads the query, key and value sequences
    with the prompt rows ``q``, ``k``, ``v`` in those places (width space: through the block's input
    norm and projections; head space: spliced in after them as they are, no qk-norm); at layer 0
    the width-space rows pass through ``norm_pre`` with the image's tokens. Rows ``q``/``residual``
    that are ``None`` (a layer whose prompt outputs are replaced) are zeros: nothing reads them.
    """
    from timm.models.eva import EvaBlockPostNorm

    trunk = _check(visual)
    prompts = list(prompts)
    if not prompts or len(prompts) > len(trunk.blocks):
        raise ValueError(f"1 .. {len(trunk.blocks)} QKVPrompt layers needed, got {len(prompts)}")
    m, p = prompts[0].n_rows, trunk.num_prefix_tokens
    x_emb, rope = _tokens(trunk, images)
    x = None
    for j, blk in enumerate(trunk.blocks):
        if j >= len(prompts):
            with _prompts_unrotated(trunk, m):
                x = _run(trunk, blk, x, rope)
            continue
        pr = prompts[j]
        width_rows = torch.zeros(m, x_emb.shape[-1], dtype=x_emb.dtype, device=x_emb.device)

        def assemble(rows, kept=x):
            rows = width_rows if rows is None else rows
            if kept is None:  # layer 0: the rows enter with the image's tokens through norm_pre
                return trunk.norm_pre(_insert(x_emb, rows, p, 0))
            return _insert(kept, rows, p, m)
        x = assemble(pr.residual)
        block_input = (lambda t: t) if isinstance(blk, EvaBlockPostNorm) else blk.norm1
        if pr.head_space:
            h = block_input(x)
            q_rows = pr.q if pr.q is not None else torch.zeros_like(pr.k)
            attention = _prompted_attention(blk.attn, h, h, h, (q_rows, pr.k, pr.v), p, rope, p + m)
        else:
            xq, xk, xv = (block_input(assemble(r)) for r in (pr.q, pr.k, pr.v))
            attention = _prompted_attention(blk.attn, xq, xk, xv, None, p, rope, p + m)
        x = _block_with_attention(trunk, blk, x, attention, rope)
    return _finish(visual, trunk, x, m)
