"""POMP: prompt pre-training over a very large class set.

Ren et al., "Prompt Pre-Training with Twenty-Thousand Classes for Open-Vocabulary Visual
Recognition" (NeurIPS 2023); amazon-science/prompt-pretraining @ 24bca56 ``trainers/pomp.py``.

:class:`POMPLearner` is CoOp trained with POMP's objective (:mod:`fastprompt.learners.pomp.objective`:
local contrast with local correction, or the full softmax) — POMP's own prompt learner: generic
context, class token at the end, ``n_ctx=4``, random init; its ``forward`` gives logits over all
classes (POMP's test path).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from ..coop import CoOpConfig, CoOpLearner
from .objective import POMPObjective, check_pomp_args

__all__ = ["POMPConfig", "POMPLearner", "POMPObjective"]


@dataclasses.dataclass
class POMPConfig(CoOpConfig):
    """POMP settings (defaults: the released ``vit_b16_ep5_randaug2`` setting).

    Attributes (besides CoOp's; ``n_ctx=4``, random init, generic context at the end):
        num_sampled_classes: ``K`` classes per step (the positive + ``K-1`` shared negatives);
            ``UPDATE_CLASS_NUM=1000`` in the original's scripts.
        mode: ``"local"`` (local contrast, POMP's training) or ``"full"`` (exact softmax over all classes).
        local_correction: the sampled-softmax correction of the negative logits (original: on).
        log_base: ``"10"`` (original) or ``"e"``.
        seed: seed of the negative sampler (``None``: the global RNG, as the original).
    """

    n_ctx: int = 4
    num_sampled_classes: int = 1000
    mode: str = "local"
    local_correction: bool = True
    log_base: str = "10"
    seed: Optional[int] = None

    def __post_init__(self):
        super().__post_init__()
        check_pomp_args(self.num_sampled_classes, self.mode, self.log_base, self.seed)


class POMPLearner(CoOpLearner):
    """CoOp prompt trained with the POMP objective. Trainable: ``ctx [M, D]`` (POMP's ``ctx``).

    ``loss`` is POMP's local-contrast loss (or the full softmax); ``forward`` gives logits over
    every class (POMP's test path). Original checkpoints (``ctx`` plus the frozen
    ``train_/test_token_prefix/suffix`` buffers) load with ``load_original_state_dict``.
    """

    method = "pomp"
    config_class = POMPConfig

    def __init__(self, model, classnames, config: POMPConfig, **kwargs):
        super().__init__(model, classnames, config, **kwargs)
        self.objective = POMPObjective(config.num_sampled_classes, mode=config.mode,
                                       local_correction=config.local_correction, log_base=config.log_base,
                                       seed=config.seed)

    @property
    def step_generator(self) -> Optional[torch.Generator]:
        """The CPU generator of the step's negative-class draw (None: torch's global one, as the
        original). A run on the original's streams sets it to the original's G at each step
        (:class:`fastprompt.replay.source.OriginalBatches`)."""
        return self.objective.generator

    @step_generator.setter
    def step_generator(self, generator: Optional[torch.Generator]) -> None:
        self.objective.generator = generator

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """POMP's training loss for ``images [B, 3, H, W]`` and ``labels [B]``."""
        self.check_labels(images, labels)
        return self.objective.loss(self, images, labels)

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # POMP's prompt learner keeps separate frozen train/test token buffers; they are rebuilt here.
        frozen = {f"{split}_token_{part}" for split in ("train", "test") for part in ("prefix", "suffix")}
        return {k: v for k, v in state.items() if k not in frozen}
