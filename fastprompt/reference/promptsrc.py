"""Literal re-implementation of PromptSRC (self-regulating prompts) on open_clip models.

Source followed: muzairkhattak/PromptSRC @ bb95c77 ``trainers/promptsrc.py`` (``VLPromptLearner``,
``CustomCLIP``, ``PromptSRC.forward_backward``) and ``clip/model.py`` (IVLP blocks; see
:mod:`.deep`). Kept as in the original:

* architecture = independent V-L deep prompting (IVLP): text context ``prompt_learner.ctx``
  (``ctx_init`` used when ``n_ctx_text <= 4``, first ``n_ctx_text`` tokens, whole phrase kept as
  text), text prompts ``VPT_shallow`` in text blocks ``1 .. depth_text-1``, vision prompts
  ``image_encoder.VPT`` (before ``ln_pre``) and ``VPT_shallow`` in vision blocks ``1 .. depth_vision-1``;
* frozen text targets: for every template of the list (default: the 60 ``IMAGENET_TEMPLATES``),
  ``template.replace("{}", classname)`` through the frozen, unprompted CLIP text encoder; the
  **unnormalised** features are averaged over templates (``fixed_embeddings [C, E]``) and
  normalised at use;
* the zero-shot image features come from the unprompted CLIP image encoder
  (``prompt_learner.ZS_image_encoder``; the original loads a second copy of the same weights, here
  it is the open_clip ``visual`` itself, which the IVLP wrappers leave untouched);
* the objective of ``forward_backward``: ``CE + 25 * L1(text, fixed) + 10 * L1(image, zero-shot
  image) + KL(zero-shot || prompted)`` with ``F.kl_div(log_softmax(logits), log_softmax(zs_logits),
  reduction="sum", log_target=True) / logits.numel()`` (temperature 1, ×scale logits);
* the whole model's ``state_dict()`` holds ``prompt_learner.ctx``,
  ``text_encoder.transformer.resblocks.<i>.VPT_shallow``, ``image_encoder.VPT``,
  ``image_encoder.transformer.resblocks.<i>.VPT_shallow`` next to the frozen weights.

Changed: the original casts the frozen text targets to fp16 for the zero-shot logits and the
prompts to fp16 on insertion (which only runs with ``PREC="fp16"``); here everything is in the
model's dtype (fp32). ``forward`` returns logits; ``forward_train`` returns the original's training
tuple; ``loss`` the full objective. ``fixed_embeddings`` may be passed in (e.g. computed on the fast
path by a benchmark that does not want to wait for 60 full-length passes); by default they are
computed literally. Gaussian prompt aggregation is a training-loop utility
(:mod:`fastprompt.train.gpa`), not part of this module.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..learners.prompts import text_start
from ..templates import IMAGENET_TEMPLATES
from .prompt_common import default_tokenizer, init_context, register_class_prompts, tokenize_each
from .deep import ReferenceIVLPImageEncoder
from .hf_text import ivlp_text_encoder, prompt_holder

__all__ = ["ReferenceVLPromptLearner", "ReferencePromptSRC"]


class ReferenceVLPromptLearner(nn.Module):
    """PromptSRC's ``VLPromptLearner``: ``forward() -> prompts [C, 77, D]`` plus the frozen targets."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4, ctx_init: str = "a photo of a",
                 templates: Sequence[str] = IMAGENET_TEMPLATES, tokenizer: Optional[Callable] = None,
                 fixed_embeddings: Optional[torch.Tensor] = None):
        super().__init__()
        holder = prompt_holder(model)  # open_clip's text tower, or a Hugging Face one's word embeddings
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        device = holder.token_embedding.weight.device

        # as MaPLe: ctx_init only for n_ctx <= 4, n_ctx kept (the first n_ctx token embeddings are taken)
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init if n_ctx <= 4 else "", n_ctx,
                                                         n_ctx_from_words=False)
        self.ctx = nn.Parameter(ctx_vectors)

        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        # the unprompted CLIP image encoder (same weights as the original's second copy)
        self.ZS_image_encoder = model.visual
        if fixed_embeddings is None:
            # textual diversity: every template through the frozen text encoder, averaged unnormalised
            names = [name.replace("_", " ") for name in classnames]
            all_teacher_features = []
            with torch.no_grad():
                for single_template in templates:
                    x = [single_template.replace("{}", name) for name in names]
                    # unnormalised, as OpenAI CLIP's encode_text (CoCa's normalises unless told not to)
                    text_features = model.encode_text(tokenize_each(tokenizer, x).to(device), normalize=False)
                    all_teacher_features.append(text_features.unsqueeze(1))
            fixed_embeddings = torch.cat(all_teacher_features, dim=1).mean(dim=1)
        # a plain attribute in the original (not in the state dict); a buffer so it follows .to()
        self.register_buffer("fixed_embeddings", fixed_embeddings.detach().to(device), persistent=False)
        self.n_cls = n_cls
        self.n_ctx = n_ctx

    def construct_prompts(self, ctx, prefix, suffix, label=None):
        if label is not None:
            prefix = prefix[label]
            suffix = suffix[label]
        return torch.cat([prefix, ctx, suffix], dim=1)

    def forward(self) -> torch.Tensor:
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return self.construct_prompts(ctx, self.token_prefix, self.token_suffix)


class ReferencePromptSRC(nn.Module):
    """PromptSRC's ``CustomCLIP`` + the loss of ``PromptSRC.forward_backward``."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx_text: int = 4, n_ctx_vision: int = 4,
                 ctx_init: str = "a photo of a", prompt_depth_text: int = 9, prompt_depth_vision: int = 9,
                 text_loss_weight: float = 25.0, image_loss_weight: float = 10.0,
                 templates: Sequence[str] = IMAGENET_TEMPLATES, tokenizer: Optional[Callable] = None,
                 fixed_embeddings: Optional[torch.Tensor] = None):
        super().__init__()
        if prompt_depth_text < 1:
            raise ValueError("In Independent VL prompting, language prompt depth should be >= 1 "
                             f"(prompt_depth_text={prompt_depth_text})")
        # The original builds the prompted CLIP (vision prompts first, then text prompts) before the
        # prompt learner.
        self.image_encoder = ReferenceIVLPImageEncoder(model.visual, n_ctx_vision, prompt_depth_vision)
        # the deeper text prompts replace the context rows, which start where the tokenizer puts text
        start = text_start(default_tokenizer(model) if tokenizer is None else tokenizer)
        self.text_encoder = ivlp_text_encoder(model, n_ctx_text, prompt_depth_text, start=start)
        self.prompt_learner = ReferenceVLPromptLearner(model, classnames, n_ctx=n_ctx_text, ctx_init=ctx_init,
                                                       templates=templates, tokenizer=tokenizer,
                                                       fixed_embeddings=fixed_embeddings)
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype
        self.n_cls = len(classnames)
        self.text_loss_weight = text_loss_weight
        self.image_loss_weight = image_loss_weight

    @property
    def tokenized_prompts(self) -> torch.Tensor:
        return self.prompt_learner.tokenized_prompts

    def _logits_and_features(self, image):
        logit_scale = self.logit_scale.exp()
        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts)
        image_features = self.image_encoder(image.type(self.dtype))
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = logit_scale * image_features @ text_features.t()
        return logits, text_features, image_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits_and_features(images)[0]

    def forward_train(self, image: torch.Tensor, label: torch.Tensor):
        """The original's training-mode output: ``(ce, text, fixed, zs_image, image, zs_logits, logits)``."""
        logit_scale = self.logit_scale.exp()
        logits, text_features, image_features = self._logits_and_features(image)
        fixed_embeddings = self.prompt_learner.fixed_embeddings
        fixed_embeddings = fixed_embeddings / fixed_embeddings.norm(dim=-1, keepdim=True)
        with torch.no_grad():
            zero_shot_features = self.prompt_learner.ZS_image_encoder(image.type(self.dtype))
            if isinstance(zero_shot_features, tuple):  # a tower built with output_tokens (CoCa): (pooled, tokens)
                zero_shot_features = zero_shot_features[0]
            zero_shot_features = zero_shot_features / zero_shot_features.norm(dim=-1, keepdim=True)
            zero_shot_logits = logit_scale * zero_shot_features @ fixed_embeddings.t()
        return (F.cross_entropy(logits, label), text_features, fixed_embeddings, zero_shot_features,
                image_features, zero_shot_logits, logits)

    def loss_terms(self, images: torch.Tensor, labels: torch.Tensor):
        """``{"ce", "text", "image", "kl", "total"}`` exactly as ``forward_backward`` combines them."""
        (loss_ce, normalized_text_features, zs_clip_text_embeddings, zs_image_embedd, image_ft,
         zero_shot_logits, logits) = self.forward_train(images, labels)
        loss_scl_text = F.l1_loss(normalized_text_features, zs_clip_text_embeddings,
                                  reduction="mean") * self.text_loss_weight
        loss_scl_image = F.l1_loss(image_ft, zs_image_embedd, reduction="mean") * self.image_loss_weight
        l_scl_logits = F.kl_div(
            F.log_softmax(logits / 1, dim=1),
            F.log_softmax(zero_shot_logits / 1, dim=1),
            reduction="sum",
            log_target=True,
        ) * (1 * 1) / logits.numel()
        l_scl = l_scl_logits + loss_scl_text + loss_scl_image
        return {"ce": loss_ce, "text": loss_scl_text, "image": loss_scl_image, "kl": l_scl_logits,
                "total": loss_ce + l_scl}

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss_terms(images, labels)["total"]
