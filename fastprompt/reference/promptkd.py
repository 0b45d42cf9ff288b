"""Literal re-implementation of PromptKD (unsupervised prompt distillation) on open_clip models.

Source followed: zhengli97/PromptKD ``trainers/promptkd.py`` (``Feature_Trans_Module_two_layer``,
``CustomCLIP``, ``CustomCLIP_teacher``, ``VLPromptLearner``, ``PromptKD.build_model`` /
``forward_backward`` / ``test``) and ``clip/model.py`` (IVLP blocks; see :mod:`.deep`). Kept as in
the original:

* construction order (random-stream consumers): the student's prompted CLIP (vision prompts
  ``image_encoder.VPT`` / ``VPT_shallow`` of blocks ``1 .. depth_vision-1``, then its *unused*
  text ``VPT_shallow`` of blocks ``1 .. depth_text-1``), the teacher's prompted CLIP (vision and
  text depth 9, 4 tokens each, fixed in ``load_clip_to_cpu_teacher``), the student's
  ``VPT_image_trans`` (default Conv2d init), then the teacher's prompt learner (``ctx_init`` words:
  no draw);
* the student: ``image_features = VPT_image_trans(image_encoder(image))`` (unnormalised tower
  output through ``Conv1x1 -> BatchNorm2d -> ReLU -> Conv1x1``), then L2-normalised; its logit
  scale is the student CLIP's;
* the teacher: PromptSRC's ``CustomCLIP`` without the frozen-target parts (text features of the
  full 77-token prompts, recomputed on every call, under ``no_grad``), logits with the teacher's scale;
* the step: ``stu_logits = scale * image_ft @ tea_text_features.t()``,
  ``kd_weight * kl_div(log_softmax(stu/T), softmax(tea/T), "sum") * T * T / stu_logits.numel()``;
  labels are not read;
* base-to-novel evaluation (``test``): ``val`` scores the first ``ceil(C/2)`` classes, ``test`` the rest.

Changed: no fp16 (the models' dtype); the widths of ``VPT_image_trans`` are read from the two models
instead of the original's constants 512 and 768; the teacher's prompts are loaded by the caller.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..learners.prompts import text_start
from .deep import ReferenceIVLPImageEncoder
from .hf_text import ivlp_text_encoder
from .prompt_common import default_tokenizer
from .promptsrc import ReferenceVLPromptLearner

__all__ = ["ReferencePromptKD", "ReferencePromptKDTeacher", "ReferenceFeatureTransModule"]


class ReferenceFeatureTransModule(nn.Module):
    """``Feature_Trans_Module_two_layer(input_dim, out_dim)``."""

    def __init__(self, input_dim: int = 100, out_dim: int = 256):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(input_dim, out_dim, 1),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, 1),
        )

    def forward(self, input_feat: torch.Tensor) -> torch.Tensor:
        final_feat = self.conv1(input_feat.unsqueeze(-1).unsqueeze(-1))
        return final_feat.squeeze(-1).squeeze(-1)


def _draw_text_prompts(n_ctx: int, width: int, depth: int) -> None:
    """The IVLP text blocks' ``VPT_shallow`` draws of a CLIP built by ``clip.build_model`` (unused here)."""
    for _ in range(1, depth):
        nn.init.normal_(torch.empty(n_ctx, width), std=0.02)


class ReferencePromptKDTeacher(nn.Module):
    """``CustomCLIP_teacher``: ``forward(image) -> (image_features, text_features, logits)``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4, ctx_init: str = "a photo of a",
                 prompt_depth: int = 9, n_ctx_vision: int = 4, tokenizer: Optional[Callable] = None):
        super().__init__()
        # clip.build_model with the teacher's design: vision prompts, then text prompts
        self.image_encoder = ReferenceIVLPImageEncoder(model.visual, n_ctx_vision, prompt_depth)
        start = text_start(default_tokenizer(model) if tokenizer is None else tokenizer)
        self.text_encoder = ivlp_text_encoder(model, n_ctx, prompt_depth, start=start)
        self.prompt_learner = ReferenceVLPromptLearner(model, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                                       templates=["{}"], tokenizer=tokenizer)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype

    def forward(self, image: torch.Tensor):
        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logit_scale = self.logit_scale.exp()
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = logit_scale * image_features @ text_features.t()
        return image_features, text_features, logits


class ReferencePromptKD(nn.Module):
    """The student ``CustomCLIP`` plus the teacher and the loss of ``PromptKD.forward_backward``."""

    def __init__(self, model: nn.Module, teacher_model: nn.Module, classnames: Sequence[str],
                 n_ctx_vision: int = 4, prompt_depth_vision: int = 9, n_ctx_text: int = 4,
                 prompt_depth_text: int = 9, ctx_init: str = "a photo of a", teacher_prompt_depth: int = 9,
                 teacher_n_ctx_vision: int = 4, temperature: float = 1.0, kd_weight: float = 1.0,
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        # load_clip_to_cpu (student): its prompted vision tower, then its text prompts (never used)
        self.image_encoder = ReferenceIVLPImageEncoder(model.visual, n_ctx_vision, prompt_depth_vision)
        _draw_text_prompts(n_ctx_text, model.token_embedding.weight.shape[1], prompt_depth_text)
        # load_clip_to_cpu_teacher (its vision, then text prompts), the student's VPT_image_trans, then
        # the teacher's prompt learner: with ctx_init (n_ctx_text <= 4) that draws nothing, so the
        # teacher is built whole before the projection (a random teacher context would come after it)
        self.model_teacher = ReferencePromptKDTeacher(teacher_model, classnames, n_ctx=n_ctx_text,
                                                      ctx_init=ctx_init, prompt_depth=teacher_prompt_depth,
                                                      n_ctx_vision=teacher_n_ctx_vision, tokenizer=tokenizer)
        self.VPT_image_trans = ReferenceFeatureTransModule(model.visual.output_dim, teacher_model.visual.output_dim)
        self.VPT_image_trans.to(model.visual.conv1.weight.device, model.visual.conv1.weight.dtype)  # convert_weights
        self.model_teacher.eval()
        self.logit_scale = model.logit_scale
        self.dtype = model.visual.conv1.weight.dtype
        self.n_cls = len(classnames)
        self.temperature = temperature
        self.kd_weight = kd_weight

    def student(self, image: torch.Tensor):
        """The student ``CustomCLIP.forward``: ``(image_features, logit_scale)``."""
        logit_scale = self.logit_scale.exp()
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = self.VPT_image_trans(image_features)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        return image_features, logit_scale

    def forward(self, images: torch.Tensor, split: Optional[str] = None) -> torch.Tensor:
        """``test``'s output: all classes (cross-dataset), or ``split`` "val" / "test" (base-to-novel)."""
        with torch.no_grad():
            _, tea_text_features, _ = self.model_teacher(images)
        image_ft, logit_scale = self.student(images)
        half = math.ceil(self.n_cls / 2)
        if split == "val":
            tea_text_features = tea_text_features[:half, :]
        elif split == "test":
            tea_text_features = tea_text_features[half:, :]
        return logit_scale * image_ft @ tea_text_features.t()

    def loss(self, image: torch.Tensor, label: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``forward_backward``'s loss (fp32 branch); ``label`` is not read."""
        with torch.no_grad():
            tea_image_features, tea_text_features, tea_logits = self.model_teacher(image)
        image_ft, logit_scale = self.student(image)
        stu_logits = logit_scale * image_ft @ tea_text_features.t().detach()
        L_ukd = F.kl_div(
            F.log_softmax(stu_logits / self.temperature, dim=1),
            F.softmax(tea_logits / self.temperature, dim=1),
            reduction="sum",
        ) * (self.temperature * self.temperature) / stu_logits.numel()
        return self.kd_weight * L_ukd
