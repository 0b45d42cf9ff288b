"""Which functional tower runs a model's images: a ViT through :class:`VisionTower` (deep prompts,
batch-shared prompt blocks), open_clip's ResNet as it is through :class:`FrozenImageTower`."""
from __future__ import annotations

from typing import Union

from torch import nn

from .frozen_image import FrozenImageTower
from .vision import VisionTower


def is_resnet_tower(visual: nn.Module) -> bool:
    """open_clip's ``ModifiedResNet`` (CLIP RN50, RN101, RN50x4, ...)."""
    return hasattr(visual, "attnpool") and hasattr(visual, "layer1")


def image_tower(visual: nn.Module, backend: str = "auto") -> Union[VisionTower, FrozenImageTower]:
    """:class:`VisionTower` for an open_clip ViT, :class:`FrozenImageTower` for a ResNet; any
    other tower is refused by :class:`VisionTower` with the reason."""
    if is_resnet_tower(visual):
        return FrozenImageTower(visual, backend=backend)
    return VisionTower(visual, backend=backend)
