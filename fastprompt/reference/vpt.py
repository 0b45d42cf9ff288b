"""Literal re-implementation of deep visual prompt tuning (VPT-deep) on CLIP, open_clip models.

Source followed: muzairkhattak/multimodal-prompt-learning @ 69bce21 ``trainers/vpt.py``
(``FixedEmbeddings``, ``CustomCLIP``) and ``clip/model.py`` (``VisionTransformer`` with
``VPT_shallow`` and ``ResidualAttentionBlock_IVLP``; see :mod:`.deep`). Kept as in the original:

* vision prompts only: ``image_encoder.VPT [n_ctx, W]`` appended after the positional embedding
  (before ``ln_pre``) and ``VPT_shallow [n_ctx, W]`` in blocks ``1 .. depth-1`` replacing the last
  ``n_ctx`` rows; all N(0, 0.02); defaults ``n_ctx=8``, ``depth=12`` (``vit_b16_c2_ep5_batch4_4``);
* text side: fixed hand-crafted features of ``"a photo of a <class>."`` from the frozen
  ``encode_text`` (computed once), normalised at use;
* logits ``scale * norm(image) @ norm(text).T``, cross entropy;
* the whole model's ``state_dict()`` has ``image_encoder.VPT`` and
  ``image_encoder.transformer.resblocks.<i>.VPT_shallow`` next to the frozen weights.

Changed: ``forward`` returns logits, ``loss`` their cross entropy; no fp16 casts; the unused
``text_encoder`` of the original ``CustomCLIP`` is not built.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .prompt_common import default_tokenizer, tokenize_each
from .deep import ReferenceIVLPImageEncoder

__all__ = ["ReferenceVPT"]


class ReferenceVPT(nn.Module):
    """The VPT trainer's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 8, prompt_depth: int = 12,
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        if prompt_depth < 1:
            raise ValueError(f"For Vision Prompting, prompt_depth should be >= 1, got {prompt_depth}")
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        self.image_encoder = ReferenceIVLPImageEncoder(model.visual, n_ctx, prompt_depth)

        prompt_prefix = "a photo of a"
        names = [name.replace("_", " ") for name in classnames]
        prompts = [prompt_prefix + " " + name + "." for name in names]
        tokenized_prompts = tokenize_each(tokenizer, prompts).to(model.logit_scale.device)
        with torch.no_grad():
            # unnormalised, as OpenAI CLIP's encode_text (CoCa's normalises unless told not to)
            fixed = model.encode_text(tokenized_prompts, normalize=False)
        # FixedEmbeddings is a plain object in the original; a buffer here so it follows .to()
        self.register_buffer("fixed_embeddings", fixed, persistent=False)
        self.logit_scale = model.logit_scale
        self.dtype = model.visual.conv1.weight.dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logit_scale = self.logit_scale.exp()
        text_features = self.fixed_embeddings
        image_features = self.image_encoder(images.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return logit_scale * image_features @ text_features.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
