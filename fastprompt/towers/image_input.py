"""Checks of an image batch before any work: a clear error instead of a raw torch error deep in a tower."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def _pair(size) -> Tuple[int, int]:
    return tuple(int(s) for s in size) if isinstance(size, (tuple, list)) else (int(size), int(size))


def image_size_of(visual: nn.Module) -> Tuple[int, int]:
    """``(H, W)`` an open_clip image tower was built for (its ``image_size``, int or pair)."""
    return _pair(visual.image_size)


def input_size_of(visual: nn.Module) -> Tuple[int, int]:
    """``(H, W)`` of the images the model's own preprocess transform makes for ``visual``: the
    ``size`` of open_clip's preprocess configuration (``get_model_preprocess_cfg``, which
    ``create_model`` sets from the built tower and a pretrained tag), else the tower's
    ``image_size``. A timm tower takes its size from here: its trunk does not say it."""
    from open_clip.model import get_model_preprocess_cfg

    size = get_model_preprocess_cfg(visual).get("size")
    return _pair(size) if size is not None else image_size_of(visual)


def input_channels_of(visual: nn.Module) -> int:
    """Channels of the images ``visual`` reads: the input channels of its first convolution (the
    patch embedding or stem of every open_clip and timm tower); 3 for a tower without one (open_clip's
    preprocess makes RGB images, its configuration's ``mode``)."""
    first = next((m for m in visual.modules() if isinstance(m, nn.Conv2d)), None)
    return int(first.in_channels) if first is not None else 3


def check_image_batch(images: torch.Tensor, channels: int, size: Tuple[int, int]) -> None:
    """Raise a ``ValueError`` (``TypeError`` for a non-tensor) naming the expected
    ``[B, channels, H, W]`` float batch, with a hint for the usual mistakes (a single image, a
    channels-last array, another resolution, unnormalised integers). Shapes and dtype only: no
    read of tensor values, so no device sync."""
    height, width = size
    expected = f"preprocessed images [B, {channels}, {height}, {width}]"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected {expected} as a torch.Tensor, got {type(images).__name__}")
    shape = tuple(images.shape)
    if images.dim() != 4:
        hint = " (a single image? add a batch dimension: images[None])" if images.dim() == 3 else ""
        raise ValueError(f"expected {expected}, got a {images.dim()}-D tensor of shape {shape}{hint}")
    if shape[0] == 0:
        raise ValueError(f"expected {expected} with B >= 1, got an empty batch {shape}")
    if shape[1] != channels:
        hint = (" (channels last? use images.permute(0, 3, 1, 2))" if shape[3] == channels else "")
        raise ValueError(f"expected {expected}, got shape {shape}{hint}")
    if shape[2:] != (height, width):
        raise ValueError(f"expected {expected}, got {shape[2]}x{shape[3]} images {shape}: this tower is "
                         f"built for {height}x{width}; resize with the model's preprocess "
                         "transform (resize + center crop)")
    if not images.is_floating_point():
        raise ValueError(f"expected {expected} as floats (normalised by the model's preprocess transform), "
                         f"got dtype {images.dtype}")
