"""VPT-deep on CLIP: learnable vision prompts in every prompted layer, fixed hand-crafted text.

Jia et al., "Visual Prompt Tuning" (ECCV 2022), in the CLIP form of
muzairkhattak/multimodal-prompt-learning @ 69bce21 ``trainers/vpt.py`` (IVLP vision blocks of its
``clip/model.py``; literal version: :class:`fastprompt.reference.ReferenceVPT`).

The vision prompts enter the tower as a batch-shared prompt block (their keys/values are computed
once per layer, not once per image), are replaced before layers ``1 .. J-1`` and propagate after
layer ``J-1``. The text side is the frozen CLIP's features of ``template.format(classname)``,
computed once per class list on the fast text path.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch
from torch import nn

from ..templates import resolve_template
from .base import LearnerConfig, PromptLearner
from .deep_prompts import deep_prompt_list, map_ivlp_original_names
from .prompts import tokenize_prompts


@dataclasses.dataclass
class VPTConfig(LearnerConfig):
    """VPT-deep settings (defaults: ``vit_b16_c2_ep5_batch4_4`` of the MaPLe repository).

    Attributes:
        n_ctx: vision prompt tokens per layer (``N_CTX_VISION``, 8).
        prompt_depth: J, the number of vision layers receiving prompts, layer 0 included
            (``PROMPT_DEPTH_VISION``, 12); at most the vision tower's depth.
        template: text of the fixed class prompts, a format string with one ``{}`` (the original:
            ``"a photo of a {}."``) or a dataset name of ``fastprompt.templates.DATASET_TEMPLATES``.
        init_std: std of the N(0, std) prompt init.

    Recipe of the paper (not part of the learner): SGD lr 0.0025, batch 4, 5 epochs.
    """

    n_ctx: int = 8
    prompt_depth: int = 12
    template: str = "a photo of a {}."
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        self._require_at_least(1, "n_ctx")
        self._require_at_least(1, "prompt_depth", note=" (1 = prompts at the input only)")
        self._require_positive("init_std")
        resolve_template(self.template, "template")


class VPTLearner(PromptLearner):
    """VPT-deep learner. Trainable: ``vision_prompts.<j> [M, W]``, the prompt of vision layer ``j``
    (``j = 0``: appended before ``ln_pre``; the original's ``image_encoder.VPT`` and
    ``image_encoder.transformer.resblocks.<j>.VPT_shallow``)."""

    method = "vpt"
    config_class = VPTConfig

    def __init__(self, model: nn.Module, classnames, config: VPTConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self._require_prompted_image_tower()
        if config.prompt_depth > self.vision_tower.layers:
            raise ValueError(f"prompt_depth={config.prompt_depth} exceeds the vision tower's "
                             f"{self.vision_tower.layers} layers")
        self.text_template = resolve_template(config.template)
        self.vision_prompts = deep_prompt_list(config.prompt_depth, config.n_ctx, self.vision_tower.width,
                                               config.init_std, self.text_tower.device)
        self._rebuild_plan()

    def _rebuild_plan(self) -> None:
        ids = tokenize_prompts(self.tokenizer, [self.text_template.format(name) for name in self._classnames],
                               self._classnames)
        with torch.no_grad():
            features = self.text_tower.encode_token_ids(ids.to(self.text_tower.device)).float()
        # frozen, recomputed per class list; not a checkpoint entry
        self.register_buffer("fixed_text_features", features, persistent=False)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised prompted image features ``[B, E]``."""
        return self.encode_image(images, list(self.vision_prompts))

    def text_features(self) -> torch.Tensor:
        """The fixed hand-crafted class embeddings ``[C, E]`` (not normalised; nothing to train)."""
        return self.fixed_text_features

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return map_ivlp_original_names(state, vision_name="vision_prompts")
