"""MaPLe step case (issue #3 target: >= 3x)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, register, sgd_steps


@register("maple", target=3.0,
          description="MaPLe step, 4 images x 100 classes, 2 ctx ('a photo of a'), depth 9, both towers backward")
def maple_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferenceMaPLe
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    torch.manual_seed(0)
    reference = ReferenceMaPLe(model, names).to(device)
    learner = fastprompt.MaPLeLearner.from_model(model, names).to(device)
    learner.load_original_state_dict(reference.state_dict())
    images, labels = random_batch(model, 4, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels),
                          [p for p in reference.prompt_learner.parameters() if p.requires_grad])
    return StepCase(fast, ref, dict(method="maple", images=4, classes=100, n_ctx=2))
