"""An image tower used as it is: open_clip's ResNet towers (``ModifiedResNet``) for the
text-prompt methods, whose original code runs the frozen CLIP image encoder unchanged.

CoOp, CoCoOp, KgCoOp, PRE, SoftCPT and POMP learn text prompts only; their most used original
configurations are on ResNet-50/101 image towers (KaiyangZhou/CoOp ``configs/trainers/CoOp/rn50*``).
Those towers are run exactly as open_clip runs them. Deep vision prompts need a ViT: asking this
tower for them is an error that says so.
"""
from __future__ import annotations

import torch
from torch import nn

from .image_input import check_image_batch, image_size_of


class FrozenImageTower:
    """Functional view of an open_clip image tower that fastprompt does not prompt (no copies).

    Args:
        visual: the model's image tower (``model.visual``), e.g. open_clip's ``ModifiedResNet``.
    """

    prompted = False

    def __init__(self, visual: nn.Module, backend: str = "auto"):
        for attribute in ("output_dim", "image_size"):
            if not hasattr(visual, attribute):
                raise ValueError(f"{type(visual).__name__} is not an open_clip image tower (it has no {attribute})")
        self.visual = visual
        self.backend = backend  # unused: the tower runs its own modules
        self.output_dim = int(visual.output_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def image_size(self) -> tuple:
        return image_size_of(self.visual)

    def forward(self, images: torch.Tensor, deep_prompts=None, qkv_prompts=None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised) of preprocessed images ``[B, 3, H, W]``."""
        if deep_prompts or qkv_prompts:
            raise ValueError(f"deep vision prompts need a ViT image tower; this model's is a "
                             f"{type(self.visual).__name__}")
        check_image_batch(images, 3, self.image_size)
        return self.visual(images.to(self.dtype))

    __call__ = forward
