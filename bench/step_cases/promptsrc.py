"""PromptSRC step case (issue #3 target: >= 2.5x)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, register, sgd_steps


@register("promptsrc", target=2.5,
          description="PromptSRC step (full loss), 4 images x 100 classes, 4+4 ctx, depth 9+9, both towers backward")
def promptsrc_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferencePromptSRC
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    torch.manual_seed(0)
    learner = fastprompt.PromptSRCLearner.from_model(model, names).to(device)
    # The frozen text targets (60 templates x 100 classes) are computed once at construction and are
    # not part of a step; the reference takes the learner's instead of 60 full-length passes
    # (tests check both computations agree).
    reference = ReferencePromptSRC(model, names, fixed_embeddings=learner.zs_text_features).to(device)
    learner.load_original_state_dict(reference.state_dict())
    images, labels = random_batch(model, 4, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels),
                          [p for p in reference.parameters() if p.requires_grad])
    return StepCase(fast, ref, dict(method="promptsrc", images=4, classes=100, n_ctx=4))
