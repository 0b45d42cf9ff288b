"""ProGrad: CoOp whose gradient is projected off the zero-shot prediction's gradient where they conflict.

Zhu et al., "Prompt-aligned Gradient for Prompt Tuning" (ICCV 2023); semantics follow
BeierZhu/Prompt-align @ 1b76203 ``ProGrad.public/trainers/prograd.py`` and its Dassl fork's
``TrainerBase.prograd_backward_and_update`` (``Dassl.ProGrad.pytorch/dassl/engine/trainer.py``);
literal version: :class:`fastprompt.reference.ReferenceProGrad`. The copies in
htyao89/Textual-based_Class-aware_prompt_tuning and minhanh151/PRE (``trainers/prograd.py``) are
the same file; their repositories differ around it (TCP's README installs the plain Dassl, which
has no ``prograd_backward_and_update``; PRE's ``train.py`` defaults ``PREC`` to ``amp``, the
branch that cannot run, see below).

Per step, with ``p = softmax(logits / T)``, ``q = softmax(zs_logits / T)``::

    ce = CE(logits, y)                               # the loss that is descended
    kl = T^2 * mean_b sum_c -q log p                 # "KL" of the original: a soft-target CE
    g_ce, g_kl = d ce / d ctx, d kl / d ctx          # per trainable tensor
    g  = g_ce - lambda * (g_ce . u) u  if cos(g_ce, g_kl) < 0 else g_ce,   u = g_kl / |g_kl|

Quirks of the original kept here:

* the context (``ctx_init``, the original's ``CTX_INIT``: any truthy value) comes from the
  dataset's template (:data:`fastprompt.templates.PROGRAD_TEMPLATES`, ProGrad's own table, not
  KgCoOp's) with ``" {}."`` removed; the context keeps ``n_ctx`` rows (16 in every script): the
  first ``n_ctx - words`` are **zero vectors**, the rest the embeddings of the phrase's first
  ``words`` BPE tokens (``words`` counts space-separated words). With a comma ("a type of pet, a
  photo of a": 8 words, 9 tokens) the last token stays frozen text after the context, so the
  initial prompt is the zero rows followed by exactly the template. Without ``ctx_init``:
  N(0, 0.02) (class-specific with ``csc``), as CoOp;
* the zero-shot logits use the frozen, normalised features of ``template.format(name)`` (fp32)
  and the same ``exp(logit_scale)``; ``T`` = ``LOSS.T`` (1.0), ``lambda_`` = ``LOSS.LAMBDA`` (1.0 in
  the scripts; 0.8 for 8/16 shots on Flowers102, DTD and EuroSAT per the README);
* the projection is per parameter tensor and only when the cosine is negative; a zero gradient
  gives a NaN cosine and no projection; ``T^2`` and the KL's scale do not reach the update (only
  its direction does); the logged loss is ``ce``;
* ``class_token_position`` "end" or "front" ("middle" raises ``NameError`` in the original).

The step runs one forward and two backward passes of the text tower (``autograd.grad`` of ``kl``
then of ``ce``), on CoOp's packed, EOT-truncated, prefix-shared path; the image tower runs once
without autograd (the original runs it twice, once in its second, zero-shot CLIP: the same
features in fp32). :meth:`loss` returns ``ce``'s value carrying the projected gradient, so any
training loop's ``loss.backward()`` applies ProGrad's update. Two departures follow from that:
with gradient accumulation each batch's gradient is projected on its own, and under torchrun
each process projects its own gradient before the trainer averages them (the original runs one
process: a multi-GPU run there is ``DataParallel`` over one loss).

Precision: the original's configs leave ``TRAINER.COOP.PREC`` at ``fp16`` (the prompted CLIP and
the context in half precision, SGD on fp16 tensors), while the zero-shot CLIP is always fp32; its
``amp`` branch cannot run (the criterion's tuple reaches ``scaler.scale(loss).backward()``).
fastprompt keeps fp32 prompts under autocast (:mod:`fastprompt.train.precision`). Under fp16
autocast the two inner backward passes run before, and so without, the trainer's loss scaling
(a ``GradScaler`` scales only the returned loss): prefer bf16 (``TRAIN.PRECISION bf16``) on a GPU.
The original's Dassl fork (``Dassl.ProGrad.pytorch``) is an older Dassl whose data path (few-shot
draw, samplers, loaders, transforms) differs from the Dassl the run layer replays only in wording
(PIL's bicubic constant for ``InterpolationMode``, a retrying image read).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..templates import PROGRAD_TEMPLATES, resolve_template
from .base import PromptLearner
from .coop import CoOpConfig, CoOpLearner
from .prompts import ContextTemplate, check_n_ctx, text_start, text_tokens, tokenize_prompts


@dataclasses.dataclass
class ProGradConfig(CoOpConfig):
    """ProGrad settings (defaults: the original's scripts, ``prograd.sh`` / ``base2new_train_prograd.sh``).

    Attributes (besides CoOp's ``csc``, ``class_token_position``, ``init_std``):
        n_ctx: context rows (16); with ``ctx_init`` the phrase fills the last ones, zeros the rest.
        ctx_init: initialise from the template's words (the original's ``CTX_INIT: True``); False:
            random context of ``n_ctx`` vectors.
        template: the zero-shot prompt, a format string ending in ``" {}."`` for ``ctx_init``, or a
            dataset name of :data:`~fastprompt.templates.PROGRAD_TEMPLATES` ("OxfordPets").
        T: temperature of the soft-target term (``LOSS.T``, 1.0).
        lambda_: projection strength (``LOSS.LAMBDA``, 1.0; 1 removes the conflicting component).

    Recipe of the paper (not part of the learner): RN50, SGD lr 0.002, batch 32, 50/100/200 epochs
    for 1/2-4/8-16 shots (``rn50_ep50``, ``rn50_ep100``, ``rn50``).
    """

    n_ctx: int = 16
    ctx_init: bool = True
    template: str = "a photo of a {}."
    T: float = 1.0
    lambda_: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.class_token_position == "middle":
            raise ValueError("class_token_position 'middle' does not run in the original ProGrad (it reads an "
                             "undefined n_ctx); use 'end' or 'front'")
        self._require_positive("T")
        self._require_at_least(0, "lambda_")
        self.resolved_template()

    def resolved_template(self) -> str:
        return resolve_template(PROGRAD_TEMPLATES.get(self.template, self.template), "template")


def prograd_context(tokenizer, config: ProGradConfig, context_length: int) -> ContextTemplate:
    """The original's context text: ``"X" * (n_ctx - words) + " " + phrase`` (or ``"X" * n_ctx``),
    ``init_ids`` the tokenized phrase."""
    check_n_ctx(config.n_ctx, context_length)
    start = text_start(tokenizer)
    if not config.ctx_init:
        return ContextTemplate(" ".join(["X"] * config.n_ctx), config.n_ctx, None, start)
    phrase = config.resolved_template().replace(" {}.", "").replace("_", " ")
    words = len(phrase.split(" "))
    if words > config.n_ctx:
        raise ValueError(f"the template's phrase {phrase!r} has {words} words, more than n_ctx={config.n_ctx} "
                         "context rows (the original asserts n_ctx >= words)")
    if len(text_tokens(tokenizer, phrase)) < words:
        raise ValueError(f"template phrase {phrase!r} has fewer tokens than words; use single spaces between words")
    text = f"{' '.join(['X'] * (config.n_ctx - words))} {phrase}"
    return ContextTemplate(text, config.n_ctx, tokenizer([phrase])[0], start)


def project_gradient(a: Optional[torch.Tensor], b: Optional[torch.Tensor], lambda_: float) -> Optional[torch.Tensor]:
    """``a`` with ``lambda_`` times its component along ``b`` removed when ``cos(a, b) < 0`` (no sync)."""
    if a is None or b is None:
        return a
    unit = b / torch.linalg.norm(b)
    along = torch.dot(a.flatten(), unit.flatten())
    cos = torch.dot((a / torch.linalg.norm(a)).flatten(), unit.flatten())
    return torch.where(cos < 0, a - lambda_ * along * unit, a)


class ProGradLearner(CoOpLearner):
    """ProGrad learner. Trainable: ``ctx`` ``[n_ctx, D]`` (``[C, n_ctx, D]`` with ``csc`` and random init).
    Frozen buffer ``zs_text_features [C, E]``: the normalised zero-shot class embeddings."""

    method = "prograd"
    config_class = ProGradConfig

    def __init__(self, model: nn.Module, classnames, config: ProGradConfig, **kwargs):
        PromptLearner.__init__(self, model, classnames, config, **kwargs)
        self.template = prograd_context(self.tokenizer, config, self.text_tower.context_length)
        self.class_specific = config.csc and self.template.init_ids is None
        self.ctx = nn.Parameter(self._init_ctx())
        self._rebuild_plan()

    def _init_ctx(self) -> torch.Tensor:
        if self.template.init_ids is None:
            return super()._init_ctx()
        phrase_len = len(self.config.resolved_template().replace(" {}.", "").split(" "))
        start = self.template.start
        with torch.no_grad():
            words = self.text_tower.embed_tokens(self.template.init_ids.to(self.text_tower.device))
            words = words[start:start + phrase_len].float()
        zeros = words.new_zeros(self.config.n_ctx - phrase_len, words.shape[-1])
        return torch.cat([zeros, words]).clone()

    def _rebuild_plan(self) -> None:
        super()._rebuild_plan()
        template = self.config.resolved_template()
        ids = tokenize_prompts(self.tokenizer, [template.format(name) for name in self._classnames], self._classnames)
        with torch.no_grad():
            features = self.text_tower.encode_token_ids(ids.to(self.text_tower.device)).float()
        self.register_buffer("zs_text_features", features / features.norm(dim=-1, keepdim=True), persistent=False)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"ce", "kl", "logits", "zs_logits"}``: the two losses the update is built from (``kl``
        with the ``T^2`` factor), the prompted and the zero-shot logits."""
        self.check_labels(images, labels)
        image = self.encode_image(images)
        text = self.text_features()
        text = text / text.norm(dim=-1, keepdim=True)
        logits = self.logit_scale * image @ text.to(image.dtype).t()
        zs_logits = (self.logit_scale * image @ self.zs_text_features.to(image.dtype).t()).detach()
        t = self.config.T
        ce = F.cross_entropy(logits, labels)
        target = F.softmax(zs_logits / t, dim=-1)
        kl = (-target * F.log_softmax(logits / t, dim=-1) * t * t).sum(1).mean()
        return {"ce": ce, "kl": kl, "logits": logits, "zs_logits": zs_logits}

    def projected_gradients(self, terms: Dict[str, torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """ProGrad's gradient of each trainable tensor (:meth:`trainable_parameters`' order)."""
        params = self.trainable_parameters()
        g_kl = torch.autograd.grad(terms["kl"], params, retain_graph=True, allow_unused=True)
        g_ce = torch.autograd.grad(terms["ce"], params, allow_unused=True)
        return [project_gradient(a, b, self.config.lambda_) for a, b in zip(g_ce, g_kl)]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``ce``'s value; its gradient (``backward()``) is ProGrad's projected gradient. Runs the
        text tower's two backward passes here; without autograd it is ``ce``."""
        terms = self.loss_terms(images, labels)
        ce = terms["ce"]
        if not (torch.is_grad_enabled() and ce.requires_grad):
            return ce
        params = self.trainable_parameters()
        carrier = sum((p * g.to(p.dtype)).sum() for p, g in zip(params, self.projected_gradients(terms))
                      if g is not None)
        return ce.detach() + (carrier - carrier.detach())
