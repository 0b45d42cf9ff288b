"""Functional view of an open_clip residual attention block.

The towers never copy CLIP weights and never call the block's attention module: they read the
attention weights by parameter name (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), which
both open_clip attention implementations share (``nn.MultiheadAttention`` in the default block,
open_clip's own ``Attention`` in the custom block), and call the block's own LayerNorm, MLP and
LayerScale modules. The attention itself goes through :func:`fastprompt.ops.prompt_attention`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import prompt_attention


class PromptableBlock:
    """What the prompted towers need of one transformer block, whatever module holds its weights.

    Subclasses give the block's own pieces (:meth:`qkv`, :meth:`kv`, :meth:`_project`,
    :meth:`_norm_qk`, :meth:`attention_output`, :meth:`add_attention`, :meth:`add_mlp`) and the sizes
    ``width``, ``heads``, ``head_dim``, ``scale`` (the score scale, ``None`` for ``head_dim ** -0.5``);
    the prompt rows and the dense block are written once, here. Hidden states may have any leading
    shape (``[B, L, D]`` padded or ``[T, D]`` packed); head tensors are ``[..., H, d]``.
    """

    scale: Optional[float] = None

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """The block's input norm then slice ``part`` (0 = q, 1 = k, 2 = v) of its in-projection:
        ``[..., D] -> [..., H, d]`` (no qk-norm)."""
        raise NotImplementedError

    def _norm_qk(self, q: Optional[torch.Tensor], k: torch.Tensor):
        """The block's qk-norm (identity without one): ``(q or None, k)``."""
        return q, k

    def prompt_heads(self, prompt, need_q: bool, dtype: Optional[torch.dtype] = None):
        """Head tensors ``(q or None, k, v)``, each ``[M, H, d]``, of a :class:`QKVPrompt`.

        Width-space rows go through the block's input norm and their own slice of the
        in-projection (query rows through W_q, key rows through W_k, value rows through W_v;
        qk-norm as the block does; no position: prompts have none); head-space rows are returned as
        they are. ``need_q=False`` skips the query (rows whose output is discarded).
        """
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        if need_q and prompt.q is None:
            raise ValueError("the query prompt is needed at this layer (its rows' outputs survive) but q is None")
        if prompt.head_space:
            return (cast(prompt.q) if need_q else None), cast(prompt.k), cast(prompt.v)
        k, v = self._project(cast(prompt.k), 1), self._project(cast(prompt.v), 2)
        q = self._project(cast(prompt.q), 0) if need_q else None
        q, k = self._norm_qk(q, k)
        return q, k, v

    def forward_dense(self, x: torch.Tensor, *, causal: bool = False, pk: Optional[torch.Tensor] = None,
                      pv: Optional[torch.Tensor] = None, group: Optional[torch.Tensor] = None,
                      seqlens: Optional[torch.Tensor] = None, backend: str = "auto") -> torch.Tensor:
        """The whole block on a padded batch ``x [N, L, D]``, optionally reading a prompt block."""
        q, k, v = self.qkv(x)
        o, _ = prompt_attention(q, k, v, pk, pv, group=group, causal=causal, seqlens=seqlens, scale=self.scale,
                                return_lse=False, backend=backend)
        x = self.add_attention(x, self.attention_output(o))
        return self.add_mlp(x)


class BlockView(PromptableBlock):
    """Functional access to one open_clip ``ResidualAttentionBlock`` / ``CustomResidualAttentionBlock``.

    Hidden states may have any leading shape (``[B, L, D]`` padded or ``[T, D]`` packed);
    head tensors are ``[..., H, d]``.
    """

    def __init__(self, block: nn.Module):
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "in_proj_weight") or not hasattr(attn, "out_proj"):
            raise ValueError(
                f"unsupported open_clip block {type(block).__name__}: expected an 'attn' submodule with "
                "'in_proj_weight' and 'out_proj' (nn.MultiheadAttention or open_clip Attention)")
        if getattr(attn, "in_proj_weight", None) is None:
            raise ValueError("attention with separate q/k/v projection weights is not supported")
        if getattr(attn, "logit_scale", None) is not None:
            raise ValueError("open_clip scaled-cosine attention is not supported by fastprompt's towers")
        if hasattr(block, "ln_1_kv"):
            raise ValueError("cross-attention blocks are not supported by fastprompt's towers")
        self.block = block
        self.attn = attn
        self.width = attn.in_proj_weight.shape[1]
        self.heads = int(attn.num_heads)
        self.head_dim = self.width // self.heads
        # open_clip's custom Attention extras; identity for nn.MultiheadAttention.
        self.ln_q = getattr(attn, "ln_q", None)
        self.ln_k = getattr(attn, "ln_k", None)
        self.has_qk_norm = self.ln_q is not None and not isinstance(self.ln_q, nn.Identity)
        self.head_scale = getattr(attn, "head_scale", None)
        self.ln_inner = getattr(attn, "ln_inner", None)
        self.ln_attn = getattr(block, "ln_attn", None)

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LN_1 then the in-projection: ``[..., D] -> 3 x [..., H, d]`` (views of one buffer)."""
        return self.qkv_fused(x).unbind(-3)

    def qkv_fused(self, x: torch.Tensor) -> torch.Tensor:
        """LN_1 then the in-projection as one tensor ``[..., 3, H, d]`` (q, k, v along dim -3)."""
        qkv = F.linear(self.block.ln_1(x), self.attn.in_proj_weight, self.attn.in_proj_bias)
        qkv = qkv.unflatten(-1, (3, self.heads, self.head_dim))
        if self.has_qk_norm:
            q, k, v = qkv.unbind(-3)
            qkv = torch.stack([self.ln_q(q), self.ln_k(k), v], dim=-3)
        return qkv

    def kv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values only (rows whose query is never needed): ``[..., D] -> 2 x [..., H, d]``."""
        h = self.block.ln_1(x)
        w, b = self.attn.in_proj_weight[self.width:], None
        if self.attn.in_proj_bias is not None:
            b = self.attn.in_proj_bias[self.width:]
        kv = F.linear(h, w, b).unflatten(-1, (2, self.heads, self.head_dim))
        k, v = kv.unbind(-3)
        if self.has_qk_norm:
            k = self.ln_k(k)
        return k, v

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """LN_1 then slice ``part`` (0 = q, 1 = k, 2 = v) of the in-projection: ``[..., D] -> [..., H, d]``."""
        rows = slice(part * self.width, (part + 1) * self.width)
        b = None if self.attn.in_proj_bias is None else self.attn.in_proj_bias[rows]
        out = F.linear(self.block.ln_1(x), self.attn.in_proj_weight[rows], b)
        return out.unflatten(-1, (self.heads, self.head_dim))

    def _norm_qk(self, q: Optional[torch.Tensor], k: torch.Tensor):
        if self.has_qk_norm:
            return (None if q is None else self.ln_q(q)), self.ln_k(k)
        return q, k

    def attention_output(self, o: torch.Tensor) -> torch.Tensor:
        """Heads back to width and the out-projection: ``[..., H, d] -> [..., D]``."""
        if self.head_scale is not None:
            # open_clip's head_scale has shape [H, 1, 1] for its [N, H, L, d] layout.
            o = o * self.head_scale.reshape(self.heads, 1)
        o = o.flatten(-2)
        if self.ln_inner is not None:
            o = self.ln_inner(o)
        return self.attn.out_proj(o)

    def add_attention(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the projected attention output (with the block's ln_attn / LayerScale)."""
        if self.ln_attn is not None:
            attn_out = self.ln_attn(attn_out)
        return x + self.block.ls_1(attn_out)

    def add_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP half of the block: ``x + ls_2(mlp(ln_2(x)))``."""
        return x + self.block.ls_2(self.block.mlp(self.block.ln_2(x)))


def block_views(transformer: nn.Module):
    """``BlockView`` for every block of an open_clip ``Transformer``."""
    return [BlockView(b) for b in transformer.resblocks]
