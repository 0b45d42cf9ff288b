"""``ImageFeatures``: precomputed frozen image features that stand in for an image batch.

The text-prompt methods (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP, RPP with ``branches="text"``)
read their images only through :meth:`~fastprompt.learners.base.PromptLearner.encode_image`, the
frozen CLIP image tower without prompts, whose output does not change while the prompts train.
Features computed once (:meth:`PromptLearner.frozen_features`, or the trainer's feature cache,
:mod:`fastprompt.features.cache`) are wrapped in :class:`ImageFeatures` and passed wherever
the learner takes images::

    feats = learner.frozen_features(images)     # ImageFeatures [B, E], L2-normalised
    loss = learner.loss(feats, labels)          # == learner.loss(images, labels)

``encode_image`` returns them as they are; a learner that prompts the image tower refuses them.
A plain ``torch.Tensor`` subclass (so ``.shape``, ``.device`` and ``.to(device)`` work as on an
image batch), marking the intent explicitly: a 2-D tensor passed by mistake is still refused as
"not an image batch".
"""
from __future__ import annotations

import torch

__all__ = ["ImageFeatures"]


class ImageFeatures(torch.Tensor):
    """L2-normalised frozen image features ``[B, E]`` (the output of ``encode_image``), in place of
    preprocessed images ``[B, 3, H, W]``. ``ImageFeatures(t)`` shares ``t``'s storage (detached)."""

    @staticmethod
    def __new__(cls, features: torch.Tensor) -> "ImageFeatures":
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"ImageFeatures wraps a torch.Tensor of features [B, E], got {type(features).__name__}")
        if features.dim() != 2:
            raise ValueError(f"ImageFeatures must be [B, E] (one feature row per image), got shape "
                             f"{tuple(features.shape)}")
        return features.detach().as_subclass(cls)

    def plain(self) -> torch.Tensor:
        """The features as an ordinary tensor (what ``encode_image`` returns)."""
        return self.as_subclass(torch.Tensor)
