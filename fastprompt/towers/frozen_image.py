"""An image tower used as it is: every open_clip image tower that fastprompt does not prompt.

CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP (and RPP with ``branches="text"``) learn text prompts
only; their image tower is frozen and never looked inside, so any tower open_clip builds serves
them: open_clip's ResNet (``ModifiedResNet``: the originals' most used configurations,
KaiyangZhou/CoOp ``configs/trainers/CoOp/rn50*``), timm towers other than the ViTs that
:class:`~fastprompt.towers.timm_vision.TimmVisionTower` runs (``TimmModel``: ConvNeXt, Swin,
FastViT, a relative-position ViT) and open_clip ViTs that :class:`~fastprompt.towers.vision.VisionTower`
does not run (open_clip's untested 'parallel' / 'cascade' pair of attentional poolers). The tower
runs exactly as the model's own ``encode_image(images, normalize=False)`` runs it:
``model.visual(images)``. Deep vision
prompts need a ViT (open_clip's, or timm's Eva / VisionTransformer): asking this tower for them is
an :class:`UnpromptableImageTowerError` that names the tower and why.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from .image_input import check_image_batch, input_channels_of, input_size_of

__all__ = ["FrozenImageTower", "UnpromptableImageTowerError", "output_dim_of", "describe_tower", "is_resnet_tower"]


class UnpromptableImageTowerError(ValueError):
    """Deep vision prompts (MaPLe, PromptSRC, VPT, RPP's vision branch) asked of an image tower
    they cannot enter (a ResNet, a ConvNeXt or Swin timm tower, ...). The message names the tower,
    why, and what works."""


def is_resnet_tower(visual: nn.Module) -> bool:
    """open_clip's ``ModifiedResNet`` (CLIP RN50, RN101, RN50x4, ...)."""
    return hasattr(visual, "attnpool") and hasattr(visual, "layer1")


def describe_tower(visual: nn.Module) -> str:
    """The tower as a phrase for messages: ``"a TimmModel (timm eva02_base_patch16_clip_224)"``."""
    timm_cfg = getattr(getattr(visual, "trunk", None), "pretrained_cfg", None) or {}
    timm_name = timm_cfg.get("architecture")
    if timm_name:
        return f"a {type(visual).__name__} (timm {timm_name})"
    if is_resnet_tower(visual):
        return f"a {type(visual).__name__} (ResNet)"
    return f"a {type(visual).__name__}"


def output_dim_of(visual: nn.Module) -> int:
    """Width ``E`` of the features ``visual`` returns (the model's embedding width).

    open_clip's ViT and ResNet store it (``output_dim``). A ``TimmModel`` does not: its features
    leave the last linear map of open_clip's head (``proj``, or the MLP's last layer), else the
    timm trunk's classifier, which open_clip sizes to the embedding (``num_classes``), else the
    trunk's pooled features unprojected (``timm_proj: "none"``: ``num_features``).
    """
    if hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    head, trunk = getattr(visual, "head", None), getattr(visual, "trunk", None)
    if trunk is None or head is None:
        raise ValueError(f"{type(visual).__name__} is not an image tower open_clip builds (open_clip's ViT or "
                         "ResNet, or a timm tower): fastprompt cannot tell the width of its features")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    return int(getattr(trunk, "num_classes", 0) or trunk.num_features)


class FrozenImageTower:
    """Functional view of an open_clip image tower that fastprompt does not prompt (no copies).

    Args:
        visual: the model's image tower (``model.visual``): open_clip's ``ModifiedResNet``, a
            ``TimmModel``, or a ``VisionTransformer`` that deep prompts cannot enter.
        not_prompted: why deep prompts cannot enter it, as a phrase for the error that refuses
            them (default: the tower's type).
    """

    prompted = False

    def __init__(self, visual: nn.Module, backend: str = "auto", not_prompted: str = ""):
        if not hasattr(visual, "image_size"):
            raise ValueError(f"{type(visual).__name__} is not an open_clip image tower (it has no image_size)")
        self.visual = visual
        self.backend = backend  # unused: the tower runs its own modules
        self.output_dim = output_dim_of(visual)
        self.channels = input_channels_of(visual)
        self.not_prompted = not_prompted or describe_tower(visual)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    @property
    def image_size(self) -> Tuple[int, int]:
        """``(H, W)`` of the model's preprocess transform (open_clip's preprocess configuration)."""
        return input_size_of(self.visual)

    def forward(self, images: torch.Tensor, deep_prompts=None, qkv_prompts=None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised) of preprocessed images ``[B, C, H, W]``:
        ``model.encode_image(images, normalize=False)``."""
        if deep_prompts or qkv_prompts:
            raise UnpromptableImageTowerError(f"deep vision prompts need a ViT image tower (open_clip's "
                                              f"VisionTransformer, or a timm ViT: EVA, PE-Core, SigLIP); this "
                                              f"model's is {self.not_prompted}")
        check_image_batch(images, self.channels, self.image_size)
        features = self.visual(images.to(self.dtype))
        # Towers built with output_tokens=True (CoCa) return (pooled, tokens); encode_image keeps the first.
        return features[0] if isinstance(features, (tuple, list)) else features

    __call__ = forward
