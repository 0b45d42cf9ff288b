"""PRE step case. The issue sets no PRE target; 5x is a regression floor (PRE's step is a CoOp step with a
4-token context plus an M-row encoder, measured 6-7x on a quiet 2-core CPU, like the CoOp case)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, register, sgd_steps


@register("pre", target=5.0,
          description="PRE step, 4 images x 100 classes, 'a photo of a' ctx, LSTM1 residual encoder")
def pre_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferencePRE
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    torch.manual_seed(0)
    reference = ReferencePRE(model, names).to(device)
    learner = fastprompt.PRELearner.from_model(model, names).to(device)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    images, labels = random_batch(model, 4, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels),
                          [p for p in reference.prompt_learner.parameters() if p.requires_grad])
    return StepCase(fast, ref, dict(method="pre", images=4, classes=100, n_ctx=4))
