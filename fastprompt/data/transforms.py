"""Image transforms of the CoOp family, sized and normalised for the model at hand.

CoOp's configs (KaiyangZhou/CoOp ``configs/datasets/*.yaml``: ``INPUT.SIZE (224, 224)``,
``INTERPOLATION bicubic``, CLIP mean/std, ``TRANSFORMS [random_resized_crop, random_flip,
normalize]``) through Dassl's ``build_transform`` (KaiyangZhou/Dassl.pytorch
``dassl/data/transforms/transforms.py``) give

* train: ``RandomResizedCrop(size, scale=(0.08, 1.0))`` + ``RandomHorizontalFlip()`` +
  ``ToTensor()`` + ``Normalize(mean, std)``;
* test: ``Resize(size)`` (shorter side) + ``CenterCrop(size)`` + ``ToTensor()`` +
  ``Normalize(mean, std)``,

with the model's interpolation. :func:`transforms_for_model` reads size, mean, std,
interpolation and resize mode from the open_clip model's preprocess configuration, so another
backbone (336 px, SigLIP statistics, ...) gets its own values; a test resize mode other than
``shortest`` uses open_clip's own evaluation transform.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from torchvision import transforms as T

from .synthetic import CLIP_MEAN, CLIP_STD

__all__ = ["train_transform", "test_transform", "transforms_for_model", "model_preprocess",
           "RRC_SCALE"]

RRC_SCALE = (0.08, 1.0)  # Dassl's INPUT.RRCROP_SCALE default, kept by every CoOp config


def _interp(name: str):
    try:
        return T.InterpolationMode(name.lower())
    except ValueError:
        choices = ", ".join(m.value for m in T.InterpolationMode)
        raise ValueError(f"unknown interpolation {name!r}; one of {choices}") from None


def train_transform(size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                    interpolation: str = "bicubic", scale: Tuple[float, float] = RRC_SCALE) -> T.Compose:
    """Random resized crop + horizontal flip + CLIP normalisation (Dassl's training transform)."""
    return T.Compose([T.RandomResizedCrop((size, size), scale=scale, interpolation=_interp(interpolation)),
                      T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])


def test_transform(size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                   interpolation: str = "bicubic") -> T.Compose:
    """Shorter side to ``size`` + center crop + CLIP normalisation (Dassl >= 0.5 test transform)."""
    return T.Compose([T.Resize(size, interpolation=_interp(interpolation)), T.CenterCrop((size, size)),
                      T.ToTensor(), T.Normalize(mean, std)])


def model_preprocess(model) -> dict:
    """``{size, mean, std, interpolation, resize_mode}`` of an open_clip model (CLIP defaults)."""
    from open_clip.model import get_model_preprocess_cfg

    cfg = dict(get_model_preprocess_cfg(model))
    size = cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square model input {tuple(size)} is not supported")
        size = size[0]
    return {"size": int(size), "mean": tuple(cfg.get("mean") or CLIP_MEAN), "std": tuple(cfg.get("std") or CLIP_STD),
            "interpolation": cfg.get("interpolation") or "bicubic", "resize_mode": cfg.get("resize_mode") or "shortest"}


def transforms_for_model(model, scale: Tuple[float, float] = RRC_SCALE):
    """``(train, test)`` transforms for an open_clip model, from its preprocess configuration."""
    p = model_preprocess(model)
    train = train_transform(p["size"], p["mean"], p["std"], p["interpolation"], scale)
    if p["resize_mode"] == "shortest":
        test = test_transform(p["size"], p["mean"], p["std"], p["interpolation"])
    else:
        from open_clip.transform import image_transform

        test = image_transform(p["size"], False, p["mean"], p["std"], p["resize_mode"], p["interpolation"])
    return train, test
