"""Class features averaged over hand-crafted templates: the text side of CLIP's zero-shot head.

CLIP (Radford et al., ICML 2021; openai/CLIP's prompt-engineering notebook, mlfoundations/open_clip
``build_zero_shot_classifier``): for each class and template encode ``template(class)``,
L2-normalise, and average over the templates. Used by :func:`fastprompt.zero_shot_classifier`
and by the frozen teacher of RPP (:class:`fastprompt.learners.teacher.CLIPTeacher`), for up to
ImageNet-21K's 21,841 classes.

Each template's prompts go through :meth:`fastprompt.towers.TextTower.encode_token_ids` in chunks
of ``batch_size`` (bounding memory): the prompts of one template share their leading tokens
(``[SOT] a photo of a``), which the tower encodes once per chunk, and every prompt is cut after
its EOT and packed — the features of the full 77-token ``encode_text``, up to fp32 rounding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..towers import TextTower
from .prompts import tokenize_prompts


@torch.no_grad()
def mean_template_features(tower: TextTower, tokenizer, names: Sequence[str],
                           templates: Sequence[Callable[[str], str]], batch_size: int = 4096,
                           progress: bool = False) -> torch.Tensor:
    """``[C, E]`` float32: per class, the mean over ``templates`` of the L2-normalised features of
    ``template(name)`` (not normalised again). A prompt too long for the context raises, naming
    the class (:func:`fastprompt.learners.prompts.tokenize_prompts`)."""
    from tqdm import tqdm

    names = list(names)
    chunks = [slice(s, s + batch_size) for s in range(0, len(names), batch_size)]
    total = None
    with tqdm(total=len(templates) * len(names), unit="prompt", desc="class features", disable=not progress,
              dynamic_ncols=True) as bar:
        for template in templates:
            texts = [template(name) for name in names]
            parts = []
            for chunk in chunks:
                ids = tokenize_prompts(tokenizer, texts[chunk], names[chunk]).to(tower.device)
                parts.append(tower.encode_token_ids(ids).float())
                bar.update(len(parts[-1]))
            f = torch.cat(parts)
            f = f / f.norm(dim=-1, keepdim=True)
            total = f if total is None else total.add_(f)
    return total / len(templates)
