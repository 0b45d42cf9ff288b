"""MaPLe: coupled text -> vision deep prompts.

Khattak et al., "MaPLe: Multi-modal Prompt Learning" (CVPR 2023); semantics follow
muzairkhattak/multimodal-prompt-learning @ 69bce21 ``trainers/maple.py`` and the MaPLe blocks of
its ``clip/model.py`` (literal version: :class:`fastprompt.reference.ReferenceMaPLe`).

Text: ``[SOT][ctx]<rest of ctx_init> <class>.[EOT]`` on the packed, EOT-truncated, prefix-shared
path; the deep text prompts replace prefix rows ``1 .. n_ctx`` before layers ``1 .. J-1`` (the
prefix is encoded once, not once per class). Vision: the coupled prompts enter the vision tower as
a batch-shared prompt block (keys/values computed once per layer), replaced up to layer ``J-1`` and
propagated after it. The whole image tower is back-propagated (the couplings are trained through it).
"""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Dict, List

import torch
from torch import nn

from .base import LearnerConfig, PromptLearner
from .deep_prompts import deep_prompt_list, drop_frozen_original_keys
from .prompts import coop_plan, initial_context, leading_context_template


@dataclasses.dataclass
class MaPLeConfig(LearnerConfig):
    """MaPLe settings (defaults: the paper's base-to-novel ``vit_b16_c2_ep5_batch4_2ctx``).

    Attributes:
        n_ctx: context tokens per prompted layer (``N_CTX``, 2).
        ctx_init: init phrase; used when ``n_ctx <= 4``: the first ``n_ctx`` tokens become the
            context and the rest of the phrase stays as frozen tokens ("a photo" learnable,
            "of a" frozen). With ``n_ctx > 4`` it is ignored (random init), as in the original.
        prompt_depth: J, the number of layers receiving prompts, layer 0 included
            (``PROMPT_DEPTH``, 9 for base-to-novel, 3 for cross-dataset/DG); at most the number
            of layers of the shallower tower.
        init_std: std of the N(0, std) init of the deep text prompts (and of a random context).

    Recipe of the paper (not part of the learner): SGD lr 0.0035, batch 4, 5 epochs, 1 warm-up
    epoch at 1e-5, cosine schedule stepped per epoch.
    """

    n_ctx: int = 2
    ctx_init: str = "a photo of a"
    prompt_depth: int = 9
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx")
        self._require_at_least(1, "prompt_depth", note=" (1 = prompts at the input only)")
        self._require_positive("init_std")


class MaPLeLearner(PromptLearner):
    """MaPLe prompt learner (names as in the original ``MultiModalPromptLearner``).

    Trainable:
        ``ctx [M, D]``: layer-0 text context; ``proj``: ``Linear(D, W)`` coupling it to the
        layer-0 vision prompt; ``compound_prompts_text.<i> [M, D]``: text prompt of layer ``i+1``;
        ``compound_prompt_projections.<i>``: ``Linear(D, W)`` coupling it to the vision prompt of
        layer ``i+1`` (all start as copies of one ``Linear``). ``D`` = text width, ``W`` = vision width.

    The creation order (context, ``proj``, deep text prompts, couplings) is the original's, so under
    the same seed the initial prompts equal the original's (and the reference's).
    The original's hard fp16 casts are not reproduced: prompts and couplings stay in fp32.
    """

    method = "maple"
    config_class = MaPLeConfig

    def __init__(self, model: nn.Module, classnames, config: MaPLeConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._require_prompted_image_tower()
        depth_limit = min(self.text_tower.layers, self.vision_tower.layers)
        if config.prompt_depth > depth_limit:
            raise ValueError(f"prompt_depth={config.prompt_depth} exceeds the model's depth: the text tower has "
                             f"{self.text_tower.layers} layers and the vision tower {self.vision_tower.layers}")
        if config.ctx_init and config.n_ctx > 4:
            warnings.warn(f"ctx_init is ignored with n_ctx={config.n_ctx} > 4 (random context), as in the original "
                          "MaPLe", stacklevel=3)
        self.template = leading_context_template(self.tokenizer, config.n_ctx, config.ctx_init,
                                                 context_length=self.text_tower.context_length)
        width, vis_width, m = self.text_tower.width, self.vision_tower.width, config.n_ctx
        device = self.text_tower.device

        # Same creation (RNG) order as the original; parameters are created on the CPU like there.
        ctx = initial_context(self.text_tower, self.template, (m, width), config.init_std)
        self.proj = nn.Linear(width, vis_width)
        self.ctx = nn.Parameter(ctx)
        self.compound_prompts_text = deep_prompt_list(config.prompt_depth - 1, m, width, config.init_std, device)
        coupling = nn.Linear(width, vis_width)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(coupling) for _ in range(config.prompt_depth - 1)])
        self.proj.to(device)
        self.compound_prompt_projections.to(device)
        self._rebuild_plan()
        if config.prompt_depth > 1:  # the deep text prompts' rows must exist, unpooled, in every prompt
            self.text_tower.check_deep_prompts(self.plan, m)

    def _rebuild_plan(self) -> None:
        self.plan = coop_plan(self.tokenizer, self._classnames, self.template, position="end",
                              context_length=self.text_tower.context_length)

    # ---- the two towers ----------------------------------------------------------------------
    def vision_prompts(self) -> List[torch.Tensor]:
        """The J coupled vision prompts ``[M, W]``: ``proj(ctx)``, then ``F_i(compound_prompts_text[i])``."""
        deep = [layer(prompt) for layer, prompt in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return [self.proj(self.ctx)] + deep

    def text_features(self) -> torch.Tensor:
        """Unnormalised class text features ``[C, E]`` (autograd into ``ctx`` and the deep text prompts)."""
        overrides = [None] + list(self.compound_prompts_text)
        return self.text_tower.encode(self.plan, self.ctx, prefix_overrides=overrides)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised prompted image features ``[B, E]`` for preprocessed images ``[B, 3, H, W]``."""
        return self.encode_image(images, self.vision_prompts())

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # Dassl saves the whole CustomCLIP: keep the prompt learner's entries, drop frozen CLIP weights.
        return drop_frozen_original_keys(state)
