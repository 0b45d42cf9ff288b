"""Registry of training-step benchmark cases for ``bench/bench_step.py``.

A case is a function ``build(model_name, device) -> StepCase`` registered with ``@register``;
each method keeps its cases in its own module here (``coop.py``, ...), all imported by
``load_all()``. A case times one unit of work of fastprompt and of its literal reference
(``fastprompt.reference``) on the same CLIP weights and the same prompt values.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


@dataclass
class StepCase:
    fastprompt: Callable[[], None]   # one timed unit on the fast path
    reference: Callable[[], None]    # the same unit on the reference path
    info: Dict[str, object] = field(default_factory=dict)  # shapes etc., written to the CSV


@dataclass
class CaseSpec:
    name: str
    build: Callable[[str, torch.device], StepCase]
    target: float                    # required speed-up (reference time / fastprompt time)
    memory_target: Optional[float]   # required memory ratio, or None
    description: str


CASES: Dict[str, CaseSpec] = {}


def register(name: str, target: float, description: str, memory_target: Optional[float] = None):
    def wrap(build):
        CASES[name] = CaseSpec(name, build, target, memory_target, description)
        return build
    return wrap


def load_all() -> Dict[str, CaseSpec]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return CASES


def sgd_steps(fast_loss: Callable[[], torch.Tensor], fast_params: List[torch.Tensor],
              ref_loss: Callable[[], torch.Tensor], ref_params: List[torch.Tensor], lr: float = 1e-3):
    """Closures for one SGD step (zero_grad, loss, backward, step) of each side."""
    def make(loss_fn, params):
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn().backward()
            opt.step()
        return step
    return make(fast_loss, fast_params), make(ref_loss, ref_params)


def reference_params(reference) -> List[torch.Tensor]:
    return [p for p in reference.prompt_learner.parameters() if p.requires_grad]


def random_batch(model, n_images: int, n_classes: int, seed: int = 0, device="cpu"):
    size = model.visual.image_size[0]
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, 3, size, size, generator=gen).to(device)
    labels = torch.randint(0, n_classes, (n_images,), generator=gen).to(device)
    return images, labels


def imagenet_classnames(n: int) -> List[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES[:n])
