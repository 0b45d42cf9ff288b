"""SoftCPT step case (issue #3 target: >= 5x at 4 tasks x 25 classes, 4 images)."""
from __future__ import annotations

import torch

from . import StepCase, imagenet_classnames, random_batch, register, sgd_steps

# The first 100 ImageNet classes cut into 4 tasks of 25, named after what they mostly hold.
TASK_NAMES = ["fish and birds", "amphibians and reptiles", "snakes and arachnids", "birds"]


@register("softcpt", target=5.0,
          description="SoftCPT-NATA step, 4 tasks x 25 classes, 4 images (one per task), 16 generated ctx")
def softcpt_step(model_name, device):
    import fastprompt
    from fastprompt.reference import ReferenceSoftCPT
    from fastprompt.testing import random_clip

    model = random_clip(model_name).to(device)
    names = imagenet_classnames(100)
    tasks = {t: names[25 * i:25 * (i + 1)] for i, t in enumerate(TASK_NAMES)}
    torch.manual_seed(0)
    reference = ReferenceSoftCPT(model, list(tasks), list(tasks.values())).to(device)
    learner = fastprompt.SoftCPTLearner.from_model(model, tasks).to(device)
    learner.load_original_state_dict(reference.state_dict())
    images, within = random_batch(model, 4, 25, device=device)
    labels = within + 25 * torch.arange(4, device=device)  # one image per task: every task is encoded
    matrix = learner.label_matrix(labels).to(device)
    fast, ref = sgd_steps(lambda: learner.loss(images, labels), learner.trainable_parameters(),
                          lambda: reference.loss(images, matrix), reference.prompt_parameters())
    return StepCase(fast, ref, dict(method="softcpt", images=4, classes=100, n_ctx=16))
