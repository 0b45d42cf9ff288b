"""CoCoOp: CoOp context shifted per image by a small meta-network.

Zhou et al., "Conditional Prompt Learning for Vision-Language Models" (CVPR 2022); semantics
follow KaiyangZhou/CoOp @ ff61507 ``trainers/cocoop.py``. The original runs the text encoder once
per image in a Python loop over full 77-token prompts; here all images of a batch go through one
packed text pass with one prefix group per image (G = B), so the batch size is a real knob.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch
from torch import nn

from .base import LearnerConfig, PromptLearner
from .prompts import context_template, coop_plan, initial_context


@dataclasses.dataclass
class CoCoOpConfig(LearnerConfig):
    """CoCoOp settings (defaults: the paper's ``vit_b16_c4_ep10_batch1_ctxv1``).

    Attributes:
        n_ctx: number of context vectors when ``ctx_init`` is empty.
        ctx_init: initial context words (their word count sets the context length).
        init_std: std of the random init when ``ctx_init`` is empty.
    """

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        if not self.ctx_init and self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")


class CoCoOpLearner(PromptLearner):
    """CoCoOp prompt learner.

    Trainable: ``ctx [M, D]`` and ``meta_net`` (Linear(E -> E//16) -> ReLU -> Linear(E//16 -> D),
    E = image feature width, D = text width), named as in the original so its checkpoints load.
    """

    method = "cocoop"
    config_class = CoCoOpConfig
    frozen_image_side = True  # the meta-net reads encode_image's frozen features

    def __init__(self, model: nn.Module, classnames, config: CoCoOpConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self.template = context_template(self.tokenizer, config.n_ctx, config.ctx_init)
        width, vis_dim = self.text_tower.width, self.vision_tower.output_dim
        device = self.text_tower.device
        self.ctx = nn.Parameter(initial_context(self.text_tower, self.template, (self.template.n_ctx, width),
                                                config.init_std))
        hidden = max(vis_dim // 16, 1)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, width)),
        ])).to(device)
        self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        self.plan = coop_plan(self.tokenizer, self._classnames, self.template, position="end",
                              context_length=self.text_tower.context_length)

    def conditional_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features ``[B, C, E]``, one class set per (normalised) image feature."""
        batch = image_features.shape[0]
        bias = self.meta_net(image_features.to(self.ctx.dtype))        # [B, D]
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)               # [B, M, D]: one context per image
        plan = self.plan.repeat(batch)
        return self.text_tower.encode(plan, ctx).view(batch, self.n_classes, -1)

    def text_classifier(self, images: torch.Tensor) -> torch.Tensor:
        """Per-image L2-normalised class embeddings ``[B, C, E]`` (CoCoOp's classifier depends on the image)."""
        with torch.no_grad():
            features = self.conditional_text_features(self.encode_image(images))
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C]`` for preprocessed images ``[B, 3, H, W]``."""
        image_features = self.encode_image(images)
        text = self.conditional_text_features(image_features)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.logit_scale * torch.einsum("be,bce->bc", image_features, text.to(image_features.dtype))
