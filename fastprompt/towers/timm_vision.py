"""The functional image tower of timm ViT trunks (EVA01/EVA02, PE-Core, SigLIP, SigLIP 2, ...) with
batch-shared deep prompts.

open_clip wraps a timm trunk in ``TimmModel`` (``visual.trunk``: the timm model, ``visual.head``:
open_clip's projection). :class:`TimmVisionTower` runs it as the model's own ``encode_image`` does
(``head(trunk(images))``) and takes deep prompts with the semantics of
:class:`~fastprompt.towers.vision.VisionTower`, whose replace-then-propagate loop, batch-shared
prompt blocks and fast last layer it reuses through a block view of timm's blocks
(:class:`~fastprompt.towers.timm_blocks.TimmBlockView`):

* the tokens: timm's own ``patch_embed`` and ``_pos_embed`` (class / register tokens, absolute
  position embedding, patch dropout) give ``T`` image rows; the layer-0 prompt rows ``[M, W]`` are
  added to them with no position (no position embedding, no rotary embedding: like the class token)
  and pass through the trunk's ``norm_pre`` (identity in most trunks; CLIP-style ViTs' ``ln_pre``);
* prompted layers as in the open_clip tower: ``deep_prompts[j]`` replaces the prompt rows before
  layer ``j``, the outputs of layer ``J-1`` propagate; the rows sit after the image's rows, which
  the attention does not see (it is global and the prompts carry no position);
* pooling reads the image's own rows only: ``norm`` then timm's own ``forward_head`` (token, avg
  over the patch rows without the prefix rows, attention-pool ``map``, ``fc_norm``, the trunk's
  head) on the ``T`` image rows, then open_clip's ``head``. The prompt rows' outputs are
  discarded, as in VPT and MaPLe, where only the class token is read; an ``avg`` pool averages
  exactly the rows timm's own pool averages, and ``map`` attends over exactly the rows it would.

:mod:`fastprompt.reference.timm_vision` is the literal version (prompts concatenated into the
sequence, the trunk's own blocks called).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from .frozen_image import describe_tower, output_dim_of
from .image_input import check_image_batch
from .timm_blocks import TimmBlockView
from .timm_support import timm_trunk_problem
from .vision import VisionTower

__all__ = ["TimmVisionTower", "is_timm_tower", "timm_tower_problem"]


def is_timm_tower(visual: nn.Module) -> bool:
    """open_clip's ``TimmModel`` (a timm ``trunk`` and open_clip's ``head``)."""
    return type(visual).__name__ == "TimmModel" and hasattr(visual, "trunk") and hasattr(visual, "head")


def timm_tower_problem(visual: nn.Module) -> Optional[str]:
    """``None`` when :class:`TimmVisionTower` runs ``visual`` with deep prompts, else why not, as a
    phrase naming the tower ("a TimmModel (timm convnext_base): a ConvNeXt (...)")."""
    if not is_timm_tower(visual):
        return f"a {type(visual).__name__}, not open_clip's TimmModel"
    problem = timm_trunk_problem(visual.trunk)
    return None if problem is None else f"{describe_tower(visual)}: {problem}"


def _embed_tokens(trunk: nn.Module, images: torch.Tensor):
    """timm's own token embedding up to (not including) ``norm_pre``: ``(x [B, T, W], rope)``,
    ``rope`` the rotary table of the patch rows (``None`` without rotary embeddings)."""
    x = trunk.patch_embed(images)
    out = trunk._pos_embed(x)
    if isinstance(out, tuple):  # Eva: the rotary table of the kept patches comes with the tokens
        return out
    return trunk.patch_drop(out), None


class TimmVisionTower(VisionTower):
    """Functional view of open_clip's ``TimmModel`` around a timm ViT trunk (no parameter copies).

    Takes what :class:`~fastprompt.towers.vision.VisionTower` takes (``deep_prompts``,
    ``qkv_prompts``) with the same meaning; see the module docstring for where the rows go.
    """

    def __init__(self, visual: nn.Module, backend: str = "auto"):
        problem = timm_tower_problem(visual)
        if problem is not None:
            raise ValueError(f"TimmVisionTower runs timm's ViT trunks (Eva, VisionTransformer); this image tower is "
                             f"{problem}: use fastprompt.towers.image_tower, which runs any other tower frozen")
        self.visual = visual
        self.trunk = visual.trunk
        self.backend = backend
        prefix = int(self.trunk.num_prefix_tokens)
        self.blocks = [TimmBlockView(b, prefix) for b in self.trunk.blocks]
        self.width = int(self.trunk.embed_dim)
        self.heads = self.blocks[0].heads
        self.layers = len(self.blocks)
        self.output_dim = output_dim_of(visual)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.trunk.parameters()).dtype

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` the trunk's patch embedding and position embedding were built for."""
        return tuple(int(s) for s in self.trunk.patch_embed.img_size)

    @property
    def pools_first_row(self) -> bool:
        """timm's ``token`` pool without an attention pool reads row 0 only (the class token)."""
        return getattr(self.trunk, "attn_pool", None) is None and self.trunk.global_pool == "token"

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the expected ``[B, C, H, W]`` for anything else (shapes only)."""
        channels = next(m for m in self.trunk.patch_embed.modules() if isinstance(m, nn.Conv2d)).in_channels
        check_image_batch(images, channels, self.image_size)

    def embed(self, images: torch.Tensor):
        """timm's token embedding before ``norm_pre``: ``(x [B, T, W], rope)`` (see :func:`_embed_tokens`)."""
        self.check_images(images)
        return _embed_tokens(self.trunk, images.to(self.dtype))

    def begin(self, images: torch.Tensor):
        """``(x, enter, blocks)`` as :meth:`VisionTower.begin`: ``norm_pre`` of the embedded tokens,
        ``norm_pre`` for layer-0 prompt rows, the block views bound to these images' rotary table."""
        x, rope = self.embed(images)
        norm_pre = self.trunk.norm_pre
        x = norm_pre(x)
        return x, (lambda rows: norm_pre(rows.to(x.dtype))), [b.at(rope) for b in self.blocks]

    def forward(self, images: torch.Tensor, deep_prompts=None, qkv_prompts=None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised), with prompts as :meth:`VisionTower.forward`.

        Without prompts this is the model's own ``encode_image(images, normalize=False)``
        (``visual(images)``: timm's fused attention, nothing for a prompt block to save), as the
        frozen image side of the text-prompt methods and PromptSRC's frozen features read it."""
        if deep_prompts or qkv_prompts:
            return super().forward(images, deep_prompts, qkv_prompts)
        self.check_images(images)
        return self.visual(images.to(self.dtype))

    __call__ = forward

    def pool(self, x: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
        """``head(forward_head(norm(x[:, :T])))``: timm's own final norm and pooling over the image's
        ``T = n_image_tokens`` rows (the prompt rows after them are discarded), then open_clip's head.
        ``[B, L, W] -> [B, E]``."""
        trunk = self.trunk
        return self.visual.head(trunk.forward_head(trunk.norm(x[:, :n_image_tokens])))
