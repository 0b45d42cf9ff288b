"""PromptSRC: independent vision and text deep prompts regularised towards frozen CLIP.

Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting"
(ICCV 2023); semantics follow muzairkhattak/PromptSRC @ bb95c77 ``trainers/promptsrc.py``
(literal version: :class:`fastprompt.reference.ReferencePromptSRC`).

Architecture = IVLP: text context ``ctx`` plus text prompts replacing rows ``1 .. n_ctx_text``
before text layers ``1 .. J_t-1`` (on the prefix-shared text path: once, not once per class), and
vision prompts appended before ``ln_pre`` / replaced before vision layers ``1 .. J_v-1`` (a
batch-shared prompt block). Objective (:meth:`PromptSRCLearner.loss_terms`)::

    f_txt = norm(prompted text)   [C, E]     f_img = norm(prompted image)   [B, E]
    z = scale * f_img f_txt^T                (no grad:)  g_img = norm(frozen CLIP image)
    t = norm(mean over templates of the frozen, unnormalised text features)   [C, E]
    z_zs = scale * g_img t^T
    L = CE(z, y) + 25 * mean|f_txt - t| + 10 * mean|f_img - g_img|
          + sum_{b,c} p_zs (log p_zs - log p) / (B * C)          # KL(zero-shot || prompted) / numel

The frozen text targets are computed once per class list (fast path); the zero-shot image
features come from the same CLIP vision tower run without prompts (no second copy of the weights).
Gaussian-weighted prompt aggregation over epochs is :class:`fastprompt.train.GaussianPromptAggregation`
(``GaussianPromptAggregation.from_learner(learner, epochs)`` uses this config's ``gpa_mean``/``gpa_std``).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..templates import IMAGENET_TEMPLATES, check_templates
from .base import LearnerConfig, PromptLearner
from .prompts import coop_plan, initial_context, leading_context_template, tokenize_prompts
from .deep_prompts import deep_prompt_list, map_ivlp_original_names


@dataclasses.dataclass
class PromptSRCConfig(LearnerConfig):
    """PromptSRC settings (defaults: the base-to-novel ``vit_b16_c2_ep20_batch4_4+4ctx``).

    Attributes:
        n_ctx_text: text prompt tokens per layer (``N_CTX_TEXT``, 4).
        n_ctx_vision: vision prompt tokens per layer (``N_CTX_VISION``, 4).
        ctx_init: init phrase of the layer-0 text context, used when ``n_ctx_text <= 4`` (its first
            ``n_ctx_text`` tokens; the rest of the phrase stays as frozen text); ignored otherwise.
        prompt_depth_text: J_t >= 1, text layers with prompts, layer 0 included (9; 3 cross-dataset).
        prompt_depth_vision: J_v >= 0, vision layers with prompts (9; 3 cross-dataset; 0 = none).
        text_loss_weight: weight of the L1 to the frozen text targets (``TEXT_LOSS_WEIGHT``, 25).
        image_loss_weight: weight of the L1 to the frozen image features (``IMAGE_LOSS_WEIGHT``, 10).
        kl_weight: weight of the KL to the zero-shot logits (1 in the original, hard-coded).
        templates: templates averaged for the frozen text targets (each with one ``{}``);
            ``None`` = the 60 ``fastprompt.templates.IMAGENET_TEMPLATES`` of the original.
        gpa_mean, gpa_std: Gaussian prompt aggregation over epochs (``GPA_MEAN``/``GPA_STD``: 15/1
            base-to-novel over 20 epochs, 6/10 cross-dataset, 30/30 or 45/5 few-shot); read by
            ``GaussianPromptAggregation.from_learner``.
        init_std: std of the N(0, std) init of the prompts.

    Recipe of the paper (not part of the learner): SGD lr 0.0025, batch 4, 20 epochs.
    """

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    ctx_init: str = "a photo of a"
    prompt_depth_text: int = 9
    prompt_depth_vision: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    kl_weight: float = 1.0
    templates: Optional[List[str]] = None
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx_text", "n_ctx_vision", "prompt_depth_text")
        self._require_at_least(0, "prompt_depth_vision", "text_loss_weight", "image_loss_weight", "kl_weight")
        self._require_positive("gpa_std", "init_std")
        if self.templates is not None:
            self.templates = list(check_templates(self.templates, "templates"))


class PromptSRCLearner(PromptLearner):
    """PromptSRC learner.

    Trainable: ``ctx [M_t, D]`` (layer-0 text context), ``deep_text_prompts.<i> [M_t, D]`` (text
    prompt of layer ``i+1``), ``vision_prompts.<j> [M_v, W]`` (vision prompt of layer ``j``; ``j=0``
    before ``ln_pre``). Frozen buffer ``zs_text_features [C, E]``: template-averaged, unnormalised.
    """

    method = "promptsrc"
    config_class = PromptSRCConfig

    def __init__(self, model: nn.Module, classnames, config: PromptSRCConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._require_prompted_image_tower()
        if config.prompt_depth_text > self.text_tower.layers:
            raise ValueError(f"prompt_depth_text={config.prompt_depth_text} exceeds the text tower's "
                             f"{self.text_tower.layers} layers")
        if config.prompt_depth_vision > self.vision_tower.layers:
            raise ValueError(f"prompt_depth_vision={config.prompt_depth_vision} exceeds the vision tower's "
                             f"{self.vision_tower.layers} layers")
        if config.ctx_init and config.n_ctx_text > 4:
            warnings.warn(f"ctx_init is ignored with n_ctx_text={config.n_ctx_text} > 4 (random context), as in "
                          "the original PromptSRC", stacklevel=3)
        self.template = leading_context_template(self.tokenizer, config.n_ctx_text, config.ctx_init,
                                                 context_length=self.text_tower.context_length)
        self.templates = tuple(config.templates) if config.templates is not None else IMAGENET_TEMPLATES
        width, m, device = self.text_tower.width, config.n_ctx_text, self.text_tower.device
        self.ctx = nn.Parameter(initial_context(self.text_tower, self.template, (m, width), config.init_std))
        self.deep_text_prompts = deep_prompt_list(config.prompt_depth_text - 1, m, width, config.init_std, device)
        self.vision_prompts = deep_prompt_list(config.prompt_depth_vision, config.n_ctx_vision,
                                               self.vision_tower.width, config.init_std, device)
        self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        self.plan = coop_plan(self.tokenizer, self._classnames, self.template, position="end",
                              context_length=self.text_tower.context_length)
        self.register_buffer("zs_text_features", self._frozen_text_targets(), persistent=False)

    @torch.no_grad()
    def _frozen_text_targets(self) -> torch.Tensor:
        """Mean over templates of the frozen CLIP's *unnormalised* class features ``[C, E]`` (fast path)."""
        per_template = []
        for template in self.templates:
            ids = tokenize_prompts(self.tokenizer, [template.replace("{}", name) for name in self._classnames],
                                   self._classnames)
            per_template.append(self.text_tower.encode_token_ids(ids.to(self.text_tower.device)).float())
        return torch.stack(per_template, dim=1).mean(dim=1)

    # ---- features ----------------------------------------------------------------------------
    def text_features(self) -> torch.Tensor:
        """Unnormalised prompted class features ``[C, E]``."""
        overrides = [None] + list(self.deep_text_prompts)
        # deep prompts start at the plan's first context row (1 after CLIP's [SOT], 0 for a tokenizer
        # without a start token, as mT5's on ViT-L-14-worldwide)
        return self.text_tower.encode(self.plan, self.ctx, prefix_overrides=overrides)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised prompted image features ``[B, E]``."""
        return self.encode_image(images, list(self.vision_prompts) or None)

    def frozen_text_features(self) -> torch.Tensor:
        """L2-normalised frozen text targets ``[C, E]`` (the zero-shot classifier)."""
        t = self.zs_text_features
        return t / t.norm(dim=-1, keepdim=True)

    # ---- objective ---------------------------------------------------------------------------
    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"ce", "text", "image", "kl", "total"}``: the weighted terms and their sum (scalars)."""
        self.check_labels(images, labels)
        cfg = self.config
        scale = self.logit_scale
        image_features = self.image_features(images)
        text = self.text_features()
        text = text / text.norm(dim=-1, keepdim=True)
        logits = scale * image_features @ text.t()
        targets = self.frozen_text_features().to(text.dtype)
        with torch.no_grad():
            zs_image = self.encode_image(images)  # the same CLIP tower without prompts
            zs_logits = scale * zs_image @ targets.t()
        terms = {
            "ce": F.cross_entropy(logits, labels),
            "text": cfg.text_loss_weight * F.l1_loss(text, targets),
            "image": cfg.image_loss_weight * F.l1_loss(image_features, zs_image),
            # KL(zero-shot || prompted), summed and divided by B * C as in the original
            "kl": cfg.kl_weight * F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1),
                                           reduction="sum", log_target=True) / logits.numel(),
        }
        terms["total"] = terms["ce"] + (terms["kl"] + terms["text"] + terms["image"])
        return terms

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """PromptSRC's full objective (see the module docstring)."""
        return self.loss_terms(images, labels)["total"]

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return map_ivlp_original_names(state, text_name="deep_text_prompts", vision_name="vision_prompts")
