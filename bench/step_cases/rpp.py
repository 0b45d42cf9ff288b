"""RPP step case (issue #3 target: >= 3x)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, reference_params, register, sgd_steps


@register("rpp", target=3.0,
          description="RPP step, both towers (J=9, 4+4 unshared q/k/v prompts) + KL to a zero-shot teacher, "
                      "4 images x 100 classes")
def rpp_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferenceRPP
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    learner = fastprompt.RPPLearner.from_model(model, names).to(device)  # defaults: both towers, J=9, M=4
    # The teacher's class features are a frozen constant computed once per class list on both sides;
    # the literal template encoding (7 x 100 full-length prompts) would only slow the set-up down.
    torch.manual_seed(0)
    reference = ReferenceRPP(model, names, teacher_text_features=learner.teacher.class_features).to(device)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    images, labels = random_batch(model, 4, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels), reference_params(reference))
    return StepCase(fast, ref, dict(method="rpp", images=4, classes=100, n_ctx=4))
