"""``zero_shot_classifier``: CLIP's zero-shot head, built through the packed text path.

CLIP's zero-shot classifier (Radford et al., ICML 2021; openai/CLIP's prompt-engineering notebook;
mlfoundations/open_clip ``build_zero_shot_classifier``): for each class ``c`` and template ``t``
encode ``t(c)``, L2-normalise, average over the templates, L2-normalise again; the weights are
``[E, C]`` so that ``logits = logit_scale * image_features @ W``.

The template-averaged class features come from
:func:`fastprompt.learners.template_features.mean_template_features` (prefix-shared, EOT-truncated,
packed: the features of the full 77-token ``encode_text`` up to fp32 rounding, a fraction of the
work), which RPP's frozen teacher uses too. POMP (Ren et al., NeurIPS 2023) and RPP (Chen et al. 2024) need this head
for 10K-21K ImageNet-21K classes (RPP's teacher soft labels, POMP's transfer evaluation); with
``cache=True`` the result is kept on disk (:mod:`fastprompt.learners.zero_shot_cache`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..templates import TemplateSpec, resolve_templates
from ..towers.text_tower_for import text_tower
from .base import default_tokenizer
from .template_features import mean_template_features
from .zero_shot_cache import cache_path, classifier_key, load_classifier, save_classifier

__all__ = ["zero_shot_classifier"]

def zero_shot_classifier(model: nn.Module, classnames: Sequence[str], templates: TemplateSpec, *, tokenizer=None,
                         batch_size: int = 4096, progress: bool = False, cache: bool = False,
                         model_name: Optional[str] = None, pretrained: Optional[str] = None,
                         cache_root: Optional[str] = None, backend: str = "auto") -> torch.Tensor:
    """Zero-shot classifier weights ``[E, C]`` (float32, on the model's device), L2-normalised per class.

    Args:
        model: an open_clip CLIP (or CustomTextCLIP) with CLIP's causal text tower.
        classnames: ``C`` class names, used as given (open_clip's builder does not replace ``_``
            either); a :class:`fastprompt.data.ClassTable`'s ``names`` for ImageNet-21K.
        templates: ``"{}"`` strings or callables (open_clip's ``OPENAI_IMAGENET_TEMPLATES`` /
            ``SIMPLE_IMAGENET_TEMPLATES``), or a name: ``"openai"`` (80), ``"simple"`` (7),
            ``"single"`` (``"a photo of a {}."``).
        tokenizer: the model's tokenizer (default: CLIP BPE at the model's context length).
        batch_size: prompts per text-tower call (bounds memory).
        progress: show a tqdm bar over the calls.
        cache: read/write the result under the user cache folder, keyed by ``model_name``,
            ``pretrained`` (tag or weights file), the text tower's weights, the tokenizer, the class
            names and the templates (:mod:`fastprompt.learners.zero_shot_cache`); ``cache_root`` overrides
            the folder.
        backend: ``prompt_attention`` backend of the text tower.

    Raises:
        ValueError: empty class list or templates, ``batch_size < 1``, or a prompt longer than the
            context length (naming the class: the tokenizer would cut the class name off).
    """
    if isinstance(classnames, str) or not len(classnames):
        raise ValueError("classnames must be a non-empty list of class names")
    names = [str(n) for n in getattr(classnames, "names", classnames)]
    fns = resolve_templates(templates)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    tokenizer = tokenizer if tokenizer is not None else default_tokenizer(model)
    key = path = None
    if cache:
        key = classifier_key(model, tokenizer, names, fns, model_name, pretrained)
        path = cache_path(key, cache_root)
        hit = load_classifier(path, key)
        if hit is not None:
            return hit.to(_device(model))
    weights = _build(model, tokenizer, names, fns, batch_size, progress, backend)
    if cache:
        save_classifier(path, weights, key)
    return weights


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _build(model, tokenizer, names, templates, batch_size: int, progress: bool, backend: str) -> torch.Tensor:
    mean = mean_template_features(text_tower(model, backend, tokenizer), tokenizer, names, templates, batch_size,
                                  progress)
    return (mean / mean.norm(dim=-1, keepdim=True)).t().contiguous()
