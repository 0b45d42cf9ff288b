"""Functional view of one timm ViT block (``EvaBlock``, ``EvaBlockPostNorm``, ``Block``).

Like :class:`~fastprompt.towers.blocks.BlockView` for open_clip's blocks, the view copies no
weight and never calls the block's attention module: it reads the projections by name (a fused
``qkv`` Linear with EVA's separate ``q_bias``/``v_bias`` or the Linear's own bias, or separate
``q_proj``/``k_proj``/``v_proj``), applies the block's own modules (norms, qk-norm, the
attention's sub-LN ``attn.norm``, ``proj``, LayerScale, the MLP: SwiGLU, GLU or GELU) and sends
the attention through :func:`fastprompt.ops.prompt_attention` with the attention's own scale.

Rotary embeddings (EVA02, PE-Core) rotate the image's patch rows only, as timm's attention does
(it skips the ``num_prefix_tokens`` class / register rows): :meth:`TimmBlockView.qkv` rotates rows
``P .. P+n-1`` of a sequence ``[prefix (P) ; patches (n) ; appended prompt rows]`` and leaves the
prompt rows, like the prefix, unrotated (prompts have no position). :meth:`~TimmBlockView.kv` and
:meth:`~TimmBlockView.prompt_heads` take prompt rows only and rotate nothing. The rotary table of
the images at hand is bound with :meth:`TimmBlockView.at`.
"""
from __future__ import annotations

import copy
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import PromptableBlock

__all__ = ["TimmBlockView"]


class TimmBlockView(PromptableBlock):
    """Functional access to one timm ViT block (accepted by
    :func:`~fastprompt.towers.timm_support.timm_trunk_problem`).

    Args:
        block: the timm block.
        num_prefix_tokens: rows before the patches (class and register tokens): no rotary embedding.
    """

    def __init__(self, block: nn.Module, num_prefix_tokens: int):
        from timm.models.eva import EvaBlock, EvaBlockPostNorm

        attn = block.attn
        self.block, self.attn = block, attn
        # EVA-CLIP-E's residual post-norm: x + norm1(attn(x)), x + norm2(mlp(x)).
        self.post_norm = isinstance(block, EvaBlockPostNorm)
        self.heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)
        self.attn_dim = self.heads * self.head_dim
        self.width = int(attn.proj.out_features)
        self.scale = float(attn.scale)
        self.prefix = int(num_prefix_tokens)
        self.rotate_half = bool(getattr(attn, "rotate_half", False))
        self.fused = getattr(attn, "qkv", None) is not None
        if isinstance(block, (EvaBlock, EvaBlockPostNorm)):
            # EVA's LayerScale is a bare parameter (gamma_1 / gamma_2, None without LayerScale)
            self._ls1 = self._gamma(getattr(block, "gamma_1", None))
            self._ls2 = self._gamma(getattr(block, "gamma_2", None))
        else:
            self._ls1, self._ls2 = block.ls1, block.ls2
        self.rope: Optional[torch.Tensor] = None

    @staticmethod
    def _gamma(gamma: Optional[torch.Tensor]):
        return (lambda t: t) if gamma is None else (lambda t: gamma * t)

    def at(self, rope: Optional[torch.Tensor]) -> "TimmBlockView":
        """This view with the rotary table of the images at hand (``[n, 2d]``, or timm's
        ``[B, 1, n, 2d]`` after patch dropout), as the trunk's ``_pos_embed`` returns it; ``None``
        for a trunk without rotary embeddings."""
        view = copy.copy(self)
        view.rope = rope
        return view

    # ---- projections ----------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """What the attention reads: ``norm1(x)`` (pre-norm blocks) or ``x`` (post-norm)."""
        return x if self.post_norm else self.block.norm1(x)

    def _weight_bias(self, part: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Weight ``[A, D]`` and bias ``[A]`` (or ``None``) of projection ``part`` (0 q, 1 k, 2 v)."""
        attn = self.attn
        if not self.fused:
            lin = (attn.q_proj, attn.k_proj, attn.v_proj)[part]
            return lin.weight, lin.bias
        rows = slice(part * self.attn_dim, (part + 1) * self.attn_dim)
        if getattr(attn, "q_bias", None) is not None:  # EVA: q and v biases, the k bias a zero buffer
            bias = (attn.q_bias, attn.k_bias, attn.v_bias)[part]
        else:
            bias = None if attn.qkv.bias is None else attn.qkv.bias[rows]
        return attn.qkv.weight[rows], bias

    def _project(self, x: torch.Tensor, part: int) -> torch.Tensor:
        w, b = self._weight_bias(part)
        return F.linear(self._input(x), w, b).unflatten(-1, (self.heads, self.head_dim))

    def _norm_qk(self, q: Optional[torch.Tensor], k: torch.Tensor):
        return (None if q is None else self.attn.q_norm(q)), self.attn.k_norm(k)

    def _rotate(self, t: torch.Tensor) -> torch.Tensor:
        """Rotary embedding of the patch rows of ``t [B, L, H, d]`` (timm's ``apply_rot_embed_cat``
        on its ``[B, H, n, d]`` layout, cast back as timm does)."""
        from timm.layers import apply_rot_embed_cat

        start, n = self.prefix, self.rope.shape[-2]
        patches = t[:, start:start + n].transpose(-3, -2)
        rotated = apply_rot_embed_cat(patches, self.rope, half=self.rotate_half).transpose(-3, -2).type_as(t)
        return torch.cat([t[:, :start], rotated, t[:, start + n:]], dim=1)

    def qkv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input norm, in-projection, qk-norm and the rotary embedding of the patch rows:
        ``[B, L, D] -> 3 x [B, L, H, d]``. Rows: the prefix, then the patches (rotated when the trunk
        has rotary embeddings), then any appended prompt rows (never rotated)."""
        h = self._input(x)
        if self.fused:
            attn = self.attn
            bias = attn.qkv.bias
            if getattr(attn, "q_bias", None) is not None:
                bias = torch.cat([attn.q_bias, attn.k_bias, attn.v_bias])
            q, k, v = F.linear(h, self.attn.qkv.weight, bias).unflatten(-1, (3, self.heads, self.head_dim)).unbind(-3)
        else:
            q, k, v = (F.linear(h, *self._weight_bias(p)).unflatten(-1, (self.heads, self.head_dim)) for p in range(3))
        q, k = self._norm_qk(q, k)
        if self.rope is not None:
            q, k = self._rotate(q), self._rotate(k)
        return q, k, v

    def kv(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of prompt rows ``[..., D] -> 2 x [..., H, d]`` (no rotary embedding:
        prompts have no position)."""
        _, k = self._norm_qk(None, self._project(x, 1))
        return k, self._project(x, 2)

    # ---- the rest of the block ------------------------------------------------------------------
    def attention_output(self, o: torch.Tensor) -> torch.Tensor:
        """Heads back to width, the attention's sub-LN (``attn.norm``, identity without one) and its
        out-projection: ``[..., H, d] -> [..., D]``."""
        return self.attn.proj(self.attn.norm(o.flatten(-2)))

    def add_attention(self, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Residual add of the attention output: ``x + ls1(a)`` (pre-norm) or ``x + norm1(a)``."""
        if self.post_norm:
            return x + self.block.norm1(attn_out)
        return x + self._ls1(attn_out)

    def add_mlp(self, x: torch.Tensor) -> torch.Tensor:
        """The MLP half: ``x + ls2(mlp(norm2(x)))`` (pre-norm) or ``x + norm2(mlp(x))`` (post-norm)."""
        if self.post_norm:
            return x + self.block.norm2(self.block.mlp(x))
        return x + self._ls2(self.block.mlp(self.block.norm2(x)))
