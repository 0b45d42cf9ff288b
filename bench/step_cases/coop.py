"""CoOp and CoCoOp step cases (issue #2 targets)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, reference_params, register, sgd_steps


def _coop(model_name, device, n_classes=100, n_ctx=16):
    import fastprompt
    from fastprompt.reference import ReferenceCoOp
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(n_classes)
    torch.manual_seed(0)
    reference = ReferenceCoOp(model, names, n_ctx=n_ctx).to(device)
    learner = fastprompt.CoOpLearner.from_model(model, names, n_ctx=n_ctx).to(device)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    return model, learner, reference


@register("coop", target=7.0, description="CoOp step, 4 images x 100 classes, 16 ctx")
def coop_step(model_name, device):
    model, learner, reference = _coop(model_name, device)
    images, labels = random_batch(model, 4, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels), reference_params(reference))
    return StepCase(fast, ref, dict(method="coop", images=4, classes=100, n_ctx=16))


@register("text", target=8.0, description="CoOp text tower alone, fwd+bwd over 100 class prompts, 16 ctx")
def coop_text(model_name, device):
    model, learner, reference = _coop(model_name, device)
    fast, ref = sgd_steps(lambda: learner.text_features().square().sum(), learner.trainable_parameters(),
                          lambda: reference.text_encoder(reference.prompt_learner(),
                                                         reference.tokenized_prompts).square().sum(),
                          reference_params(reference))
    return StepCase(fast, ref, dict(method="coop", images=0, classes=100, n_ctx=16))


@register("cocoop", target=10.0, memory_target=5.0,
          description="CoCoOp step, 2 images x 100 classes, 4 ctx ('a photo of a')")
def cocoop_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferenceCoCoOp
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    torch.manual_seed(0)
    reference = ReferenceCoCoOp(model, names).to(device)
    learner = fastprompt.CoCoOpLearner.from_model(model, names).to(device)
    learner.load_original_state_dict(reference.prompt_learner.state_dict())
    images, labels = random_batch(model, 2, 100, device=device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, labels), reference_params(reference))
    return StepCase(fast, ref, dict(method="cocoop", images=2, classes=100, n_ctx=4))
