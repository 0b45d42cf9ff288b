"""Literal re-implementation of DePT (decoupled prompt tuning) on CoOp, KgCoOp, CoCoOp and MaPLe (open_clip).

Source followed: Koorye/DePT @ d4ff416 ``trainers/elp_coop.py`` (``CustomCLIP`` of
``ExtrasLinearProbeCoOp``), ``trainers/elp_kgcoop.py`` (``ExtrasLinearProbeKgCoOp``),
``trainers/elp_cocoop.py``, ``trainers/elp_maple.py`` (``FiLM`` and MaPLe's head) and ``train.py``
(``extend_cfg``). Kept as in the original:

* the base learner is built first (CoOp's or KgCoOp's ``CustomCLIP``, :class:`ReferenceCoOp` /
  :class:`ReferenceKgCoOp`), then two ``FiLM`` modules (``scale`` = ones, ``bias`` = zeros, no
  random draw), then, on the "base" path only, ``linear_probe_proj = nn.Linear(E, C)`` (its
  default init draws from the torch stream after everything before it);
* the path is chosen by ``DATASET.SUBSAMPLE_CLASSES`` and ``DATASET.NAME``: "base", or "all"
  with ``ImageNet`` in the dataset's name, takes the base path; anything else the new path, where
  ``linear_probe_proj`` is an ``nn.Identity`` and training is an assertion error;
* FiLM acts on the **unnormalised** text and image features; with ``lp_type="linear"`` the
  training batch of the linear head is ``[film_text(text[labels]); film_img(img)]`` with the
  labels twice; with ``"similarity"`` the head is CLIP's cosine logits of the FiLM'd features;
* training loss ``(1 - w) * CE(cos logits) + w * CE(head)`` (``w = LINEAR_PROBE.WEIGHT`` 0.7),
  plus, on KgCoOp, ``W * (1 - mean cos(text, clip))`` with the unnormalised ``text``;
* base-path evaluation fuses ``(1 - w) * cos + w * head(film_img(img))`` (``TEST_TIME_FUSION``;
  without it the head's logits alone); the new path returns the cosine logits only.

``forward(img, labels=None)`` returns the loss while ``prompt_learner.training`` (as the
original), else logits. Not ported: the Dassl trainer, fp16 (the model's dtype is used as is),
the staged learning rates (``OPTIM.LR_EXP``: an optimizer matter, :mod:`fastprompt.train`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cocoop import ReferenceCoCoOp
from .coop import ReferenceCoOp
from .kgcoop import ReferenceKgCoOp
from .maple import ReferenceMaPLe
from .text_encoder import text_tower

__all__ = ["ReferenceFiLM", "ReferenceDePTCoOp", "ReferenceDePTKgCoOp", "ReferenceDePTCoCoOp", "ReferenceDePTMaPLe"]


class ReferenceFiLM(nn.Module):
    """DePT's ``FiLM`` (``trainers/elp_maple.py``): ``scale * x + bias`` per channel."""

    def __init__(self, dim: int, bias: bool = True, use_sigmoid: bool = False):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.has_bias = bias
        self.use_sigmoid = use_sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale.unsqueeze(0).type(x.dtype)
        bias = self.bias.unsqueeze(0).type(x.dtype) if self.has_bias else None
        x = scale * x
        if bias is not None:
            x = x + bias
        if self.use_sigmoid:
            return x.sigmoid()
        return x


def _clip_dim(model: nn.Module) -> int:
    proj = text_tower(model).text_projection
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return int(proj.size(1))


class _DePTHead:
    """The methods ``elp_coop.py`` adds to the base ``CustomCLIP`` (shared by both subclasses)."""

    def _build_head(self, model, n_cls, subsample_classes, dataset, lp_type, lp_weight, test_time_fusion, film):
        self.subsample_classes = subsample_classes
        self.dataset = dataset
        self.lp_type, self.lp_weight, self.test_time_fusion, self.film = lp_type, lp_weight, test_time_fusion, film
        clip_dim = _clip_dim(model)
        device = model.logit_scale.device
        if film:
            self.film_lp_img = ReferenceFiLM(clip_dim).to(device)
            self.film_lp_text = ReferenceFiLM(clip_dim).to(device)
        if self._base_path():
            assert lp_type in ["similarity", "linear"]
            if lp_type == "similarity":
                self.linear_probe_proj = nn.Identity()
            else:
                self.linear_probe_proj = nn.Linear(clip_dim, n_cls).type(self.dtype).to(device)
        else:
            self.linear_probe_proj = nn.Identity()

    def _base_path(self) -> bool:
        return self.subsample_classes == "base" or (self.subsample_classes == "all" and "ImageNet" in self.dataset)

    def forward(self, img, labels=None):
        if self._base_path():
            return self._forward_base(img, labels)
        return self._forward_new(img)

    def _forward_base(self, img, labels=None):
        text_feats, img_feats = self._forward_feats(img)
        logits = self._forward_logits_similarity(text_feats, img_feats)
        logits_lp, labels_lp = self._forward_logits_linear_probe(text_feats, img_feats, labels)
        if self.prompt_learner.training:
            return self._loss(logits, labels, logits_lp, labels_lp, text_feats)
        if not self.test_time_fusion:
            return logits_lp
        return (1 - self.lp_weight) * logits + self.lp_weight * logits_lp

    def _forward_new(self, img):
        assert not self.prompt_learner.training
        text_feats, img_feats = self._forward_feats(img)
        return self._forward_logits_similarity(text_feats, img_feats)

    def _forward_feats(self, img):
        prompts = self.prompt_learner()
        text_feats = self.text_encoder(prompts, self.tokenized_prompts)
        img_feats = self.encode_image(img)
        return text_feats, img_feats

    def _forward_logits_similarity(self, text_feats, img_feats):
        text_feats = text_feats / text_feats.norm(dim=-1, keepdim=True)
        img_feats = img_feats / img_feats.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        return logit_scale * img_feats @ text_feats.t()

    def _forward_logits_linear_probe(self, text_feats, img_feats, labels):
        if self.film:
            text_feats = self.film_lp_text(text_feats)
            img_feats = self.film_lp_img(img_feats)
        if self.lp_type == "similarity":
            return self._forward_logits_similarity(text_feats, img_feats), labels
        if labels is None:
            all_feats, all_labels = img_feats, labels
        else:
            text_feats = text_feats[labels]
            all_feats = torch.cat([text_feats, img_feats])
            all_labels = torch.cat([labels, labels])
        return self.linear_probe_proj(all_feats), all_labels

    def _loss(self, logits, labels, logits_lp, labels_lp, text_feats):
        loss_cls = F.cross_entropy(logits, labels)
        loss_cls_lp = F.cross_entropy(logits_lp, labels_lp)
        return (1 - self.lp_weight) * loss_cls + self.lp_weight * loss_cls_lp

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training objective (``forward`` in training mode)."""
        was = self.prompt_learner.training
        self.prompt_learner.train()
        try:
            return self(images, labels)
        finally:
            self.prompt_learner.train(was)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation logits (``forward`` with ``prompt_learner`` in eval mode)."""
        was = self.prompt_learner.training
        self.prompt_learner.eval()
        try:
            return self(images)
        finally:
            self.prompt_learner.train(was)


class ReferenceDePTCoOp(_DePTHead, ReferenceCoOp):
    """``ExtrasLinearProbeCoOp``'s ``CustomCLIP``: CoOp + DePT's FiLM / linear head.

    ``subsample_classes`` / ``dataset``: ``DATASET.SUBSAMPLE_CLASSES`` / ``DATASET.NAME`` (they choose
    the path, see the module docstring); the CoOp keyword arguments are :class:`ReferenceCoOp`'s."""

    def __init__(self, model: nn.Module, classnames, *, subsample_classes: str = "base", dataset: str = "",
                 lp_type: str = "linear", lp_weight: float = 0.7, test_time_fusion: bool = True,
                 film: bool = True, **coop):
        super().__init__(model, classnames, **coop)
        self._build_head(model, len(classnames), subsample_classes, dataset, lp_type, lp_weight, test_time_fusion,
                         film)


class ReferenceDePTKgCoOp(_DePTHead, ReferenceKgCoOp):
    """``ExtrasLinearProbeKgCoOp``'s ``CustomCLIP``: KgCoOp + DePT; the KgCoOp term is added to the loss
    with weight ``w`` (``TRAINER.COOP.W``, 2.0 in DePT's config)."""

    def __init__(self, model: nn.Module, classnames, *, subsample_classes: str = "base", dataset: str = "",
                 lp_type: str = "linear", lp_weight: float = 0.7, test_time_fusion: bool = True,
                 film: bool = True, w: float = 2.0, **kgcoop):
        super().__init__(model, classnames, w=w, **kgcoop)
        self.kg_weight = w
        self._build_head(model, len(classnames), subsample_classes, dataset, lp_type, lp_weight, test_time_fusion,
                         film)

    def _loss(self, logits, labels, logits_lp, labels_lp, text_feats):
        loss_cls = F.cross_entropy(logits, labels)
        loss_cls_lp = F.cross_entropy(logits_lp, labels_lp)
        text_feats_old = self.ori_embedding
        text_feats_old = text_feats_old / text_feats_old.norm(dim=-1, keepdim=True)
        cos = torch.nn.CosineSimilarity(dim=1, eps=1e-07)
        score = cos(text_feats, text_feats_old)
        loss_kg = 1.0 - torch.mean(score)
        return (1 - self.lp_weight) * loss_cls + self.lp_weight * loss_cls_lp + self.kg_weight * loss_kg



class ReferenceDePTCoCoOp(_DePTHead, ReferenceCoCoOp):
    """``ExtrasLinearProbeCoCoOp``'s ``CustomCLIP`` (``trainers/elp_cocoop.py``): CoCoOp + DePT, one class
    set per image (lists of ``[C, E]`` text features, per-image loops as the original). With
    ``lp_type="similarity"`` the original's ``_forward_logits_linear_probe`` returns the logits alone,
    which its caller unpacks as ``(logits, labels)``: that configuration fails there, so only
    "linear" is ported."""

    def __init__(self, model: nn.Module, classnames, *, subsample_classes: str = "base", dataset: str = "",
                 lp_weight: float = 0.7, test_time_fusion: bool = True, film: bool = True, **cocoop):
        super().__init__(model, classnames, **cocoop)
        self._build_head(model, len(classnames), subsample_classes, dataset, "linear", lp_weight, test_time_fusion,
                         film)

    def _forward_feats(self, img):
        img_feats = self.encode_image(img)
        img_feats_norm = img_feats / img_feats.norm(dim=-1, keepdim=True)
        prompts = self.prompt_learner(img_feats_norm)
        tokenized_prompts = self.tokenized_prompts
        text_feats_list = [self.text_encoder(prompt, tokenized_prompts) for prompt in prompts]
        return text_feats_list, img_feats

    def _forward_logits_similarity(self, text_feats_list, img_feats):
        img_feats = img_feats / img_feats.norm(dim=-1, keepdim=True)
        logits = []
        logit_scale = self.logit_scale.exp()
        for text_feats, img_feats_per_batch in zip(text_feats_list, img_feats):
            text_feats = text_feats / text_feats.norm(dim=-1, keepdim=True)
            logits.append(logit_scale * img_feats_per_batch @ text_feats.t())
        return torch.stack(logits)

    def _forward_logits_linear_probe(self, text_feats_list, img_feats, labels):
        if self.film:
            text_feats_list = [self.film_lp_text(text_feats) for text_feats in text_feats_list]
            img_feats = self.film_lp_img(img_feats)
        if labels is None:
            all_feats, all_labels = img_feats, labels
        else:
            text_feats = torch.stack([text_feats[label] for text_feats, label in zip(text_feats_list, labels)])
            all_feats = torch.cat([text_feats, img_feats])
            all_labels = torch.cat([labels, labels])
        return self.linear_probe_proj(all_feats), all_labels


class ReferenceDePTMaPLe(_DePTHead, ReferenceMaPLe):
    """``ExtrasLinearProbeMaPLe``'s ``CustomCLIP`` (``trainers/elp_maple.py``): MaPLe + DePT; the image
    features are MaPLe's prompted ones."""

    def __init__(self, model: nn.Module, classnames, *, subsample_classes: str = "base", dataset: str = "",
                 lp_type: str = "linear", lp_weight: float = 0.7, test_time_fusion: bool = True,
                 film: bool = True, **maple):
        super().__init__(model, classnames, **maple)
        self._build_head(model, len(classnames), subsample_classes, dataset, lp_type, lp_weight, test_time_fusion,
                         film)

    def _forward_feats(self, img):
        text_prompts, vision_prompts, deep_text_prompts_list, deep_vision_prompts_list = self.prompt_learner()
        text_feats = self.text_encoder(text_prompts, self.tokenized_prompts, deep_text_prompts_list)
        img_feats = self.image_encoder(img.type(self.dtype), vision_prompts, deep_vision_prompts_list)
        return text_feats, img_feats
