"""CoOp: learnable context vectors in front of (or around) the class name.

Zhou et al., "Learning to Prompt for Vision-Language Models" (IJCV 2022); semantics follow
KaiyangZhou/CoOp @ ff61507 ``trainers/coop.py``. The text side runs on the packed, EOT-truncated
path; with generic context at the end position the ``[SOT][ctx]`` prefix is encoded once.
"""
from __future__ import annotations

import dataclasses
import warnings

import torch
from torch import nn

from .base import LearnerConfig, PromptLearner
from .prompts import CLASS_TOKEN_POSITIONS, context_template, coop_plan, initial_context


@dataclasses.dataclass
class CoOpConfig(LearnerConfig):
    """CoOp settings (defaults: the paper's few-shot setting).

    Attributes:
        n_ctx: number of context vectors (ignored when ``ctx_init`` is given: its word count is used).
        ctx_init: initialise the context from these words ("a photo of a"); empty = N(0, 0.02).
        csc: class-specific context (one context per class). As in the original, only applies
            to random init: with ``ctx_init`` the context is generic.
        class_token_position: "end", "middle" or "front".
        init_std: std of the random init.
    """

    n_ctx: int = 16
    ctx_init: str = ""
    csc: bool = False
    class_token_position: str = "end"
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        if not self.ctx_init and self.n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {self.n_ctx}")
        if self.class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"class_token_position must be one of {CLASS_TOKEN_POSITIONS}, "
                             f"got {self.class_token_position!r}")


class CoOpLearner(PromptLearner):
    """CoOp prompt learner. Trainable: ``ctx`` ``[M, D]`` (or ``[C, M, D]`` with ``csc``)."""

    method = "coop"
    config_class = CoOpConfig
    frozen_image_side = True  # images enter only through encode_image (also KgCoOp, PRE, POMP)

    def __init__(self, model: nn.Module, classnames, config: CoOpConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self.template = context_template(self.tokenizer, config.n_ctx, config.ctx_init)
        self.class_specific = config.csc and self.template.init_ids is None
        if config.csc and not self.class_specific:
            warnings.warn("csc=True is ignored when ctx_init is given (generic context initialised from "
                          "ctx_init), as in the original CoOp", stacklevel=3)
        self.ctx = nn.Parameter(self._init_ctx())
        self._rebuild_plan()

    def _init_ctx(self) -> torch.Tensor:
        width, m = self.text_tower.width, self.template.n_ctx
        shape = (self.n_classes, m, width) if self.class_specific else (m, width)
        return initial_context(self.text_tower, self.template, shape, self.config.init_std)

    def _rebuild_plan(self) -> None:
        if self.class_specific and self.ctx.shape[0] != self.n_classes:
            raise ValueError(f"class-specific context was learned for {self.ctx.shape[0]} classes and cannot be "
                             f"reused for {self.n_classes}")
        self.plan = coop_plan(self.tokenizer, self._classnames, self.template,
                              position=self.config.class_token_position, class_specific=self.class_specific,
                              context_length=self.text_tower.context_length)

    def _ctx_table(self) -> torch.Tensor:
        """Context slot table ``[S, D]`` (class-specific contexts flattened class-major)."""
        return self.ctx.reshape(-1, self.ctx.shape[-1])

    def text_features(self, class_indices=None) -> torch.Tensor:
        """Unnormalised class text features ``[C, E]`` (with autograd into ``ctx``).

        ``class_indices`` (``[K]`` ints, repeats allowed): encode only those classes, in that
        order (``[K, E]``); POMP encodes the sampled classes of a step this way.
        """
        plan = self.plan if class_indices is None else self.plan.select(class_indices)
        return self.text_tower.encode(plan, self._ctx_table())
