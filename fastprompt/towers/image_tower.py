"""Which functional tower runs a model's images: open_clip's ViT (CoCa's attentional pooler included)
through :class:`VisionTower` and a timm ViT trunk (EVA, PE-Core, SigLIP, ...) through
:class:`TimmVisionTower` (deep prompts, batch-shared prompt blocks, the fast last layer), every other
tower open_clip builds (ResNet, ConvNeXt, Swin, FastViT, a relative-position ViT, a ViT with open_clip's
untested pair of attentional poolers) as it is through :class:`FrozenImageTower`."""
from __future__ import annotations

from typing import Union

from torch import nn

from .frozen_image import FrozenImageTower, describe_tower, is_resnet_tower
from .timm_vision import TimmVisionTower, is_timm_tower, timm_tower_problem
from .vision import VisionTower, is_open_clip_vit, vit_problem

__all__ = ["image_tower", "is_resnet_tower"]


def image_tower(visual: nn.Module, backend: str = "auto") -> Union[VisionTower, TimmVisionTower, FrozenImageTower]:
    """:class:`VisionTower` for open_clip's ViT, :class:`TimmVisionTower` for a timm ViT trunk,
    :class:`FrozenImageTower` for any other tower (its ``not_prompted`` says why deep prompts cannot
    enter it)."""
    if is_timm_tower(visual):
        problem = timm_tower_problem(visual)
        if problem is None:
            return TimmVisionTower(visual, backend=backend)
        return FrozenImageTower(visual, backend=backend, not_prompted=problem)
    problem = vit_problem(visual)
    if problem is None:
        return VisionTower(visual, backend=backend)
    # A ViT with a pooling deep prompts lack says which; any other tower is named by its type.
    reason = problem if is_open_clip_vit(visual) else describe_tower(visual)
    return FrozenImageTower(visual, backend=backend, not_prompted=reason)
