"""KgCoOp: CoOp plus a consistency loss towards hand-crafted CLIP class embeddings.

Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization" (CVPR
2023); semantics follow htyao89/KgCoOp @ c43ccc3 ``KgCoOp/trainers/kgcoop.py`` (literal version:
:class:`fastprompt.reference.ReferenceKgCoOp`). Objective::

    L = CE(logits, y) + w * (1 - mean_c cos(norm(text_c), clip_c))

with ``clip_c`` the frozen, L2-normalised CLIP features of ``template.format(classname)``
(computed once per class list on the fast text path) and ``w = 8`` (``TRAINER.COOP.W``). For unit
vectors ``1 - cos = ||a - b||^2 / 2``, so the code's ``w`` is twice the paper's squared-distance λ.
The text side is CoOp's packed, prefix-shared path; the image tower runs without autograd.
"""
from __future__ import annotations

import dataclasses
from typing import Dict

import torch
import torch.nn.functional as F

from ..templates import resolve_template
from .coop import CoOpConfig, CoOpLearner
from .prompts import tokenize_prompts

#: Unused leftovers of the original prompt learner, present in its checkpoints, never trained.
_ORIGINAL_LEFTOVERS = ("bias_vectors", "meta_net.")


@dataclasses.dataclass
class KgCoOpConfig(CoOpConfig):
    """KgCoOp settings (defaults: the paper's ``vit_b16_ep100_ctxv1``).

    Attributes (besides CoOp's ``n_ctx``, ``csc``, ``init_std``):
        ctx_init: init phrase, "a photo of a" (the original hard-codes that phrase whenever
            ``CTX_INIT`` is set; here the given phrase is used, its word count sets ``n_ctx``).
            Empty: random context of ``n_ctx`` vectors (class-specific with ``csc``).
        w: weight of the consistency term (``TRAINER.COOP.W``, 8.0).
        template: hand-crafted prompt, a format string with one ``{}`` or a dataset name of
            ``fastprompt.templates.DATASET_TEMPLATES`` ("EuroSAT" -> "a centered satellite photo of {}.").
        class_token_position: must be "end" (the original always appends the class name).

    Recipe of the paper (not part of the learner): SGD lr 0.002, batch 128, 100 epochs, 16 shots.
    """

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    w: float = 8.0
    template: str = "a photo of a {}."

    def __post_init__(self):
        super().__post_init__()
        if self.class_token_position != "end":
            raise ValueError(f"class_token_position must be 'end' for KgCoOp (the original always puts the class "
                             f"name last), got {self.class_token_position!r}")
        self._require_at_least(0, "w")
        resolve_template(self.template, "template")


class KgCoOpLearner(CoOpLearner):
    """KgCoOp learner. Trainable: ``ctx`` ``[M, D]`` (``[C, M, D]`` with ``csc`` and random init), as CoOp.
    Frozen buffer ``clip_text_features [C, E]``: normalised hand-crafted class embeddings."""

    method = "kgcoop"
    config_class = KgCoOpConfig

    def _rebuild_plan(self) -> None:
        super()._rebuild_plan()
        template = resolve_template(self.config.template)
        ids = tokenize_prompts(self.tokenizer, [template.format(name) for name in self._classnames], self._classnames)
        with torch.no_grad():
            features = self.text_tower.encode_token_ids(ids.to(self.text_tower.device)).float()
        self.register_buffer("clip_text_features", features / features.norm(dim=-1, keepdim=True), persistent=False)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"ce", "consistency", "total"}``; ``consistency = 1 - mean_c cos`` (unweighted), ``total`` weighted."""
        self.check_labels(images, labels)
        image_features = self.encode_image(images)
        text = self.text_features()
        text = text / text.norm(dim=-1, keepdim=True)
        logits = self.logit_scale * image_features @ text.t()
        clip = self.clip_text_features.to(text.dtype)
        consistency = 1.0 - torch.mean(F.cosine_similarity(text, clip / clip.norm(dim=-1, keepdim=True), dim=1,
                                                           eps=1e-7))
        ce = F.cross_entropy(logits, labels)
        return {"ce": ce, "consistency": consistency, "total": ce + self.config.w * consistency}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """KgCoOp's objective ``CE + w * (1 - mean cos)``."""
        return self.loss_terms(images, labels)["total"]

    def _map_original_names(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        # The original prompt learner also saves its unused bias_vectors and meta_net.
        return {k: v for k, v in state.items() if not k.startswith(_ORIGINAL_LEFTOVERS)}
