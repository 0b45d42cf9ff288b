"""Literal re-implementation of ProGrad (prompt-aligned gradient) on open_clip models.

Source followed: BeierZhu/Prompt-align @ 1b76203 ``ProGrad.public/trainers/prograd.py``
(``PromptLearner``, ``CLIP``, ``CustomCLIP``, ``ProGradLoss``, ``ProGrad.forward_backward``) and
``Dassl.ProGrad.pytorch/dassl/engine/trainer.py`` (``TrainerBase.prograd_backward_and_update``).
The copies in htyao89/Textual-based_Class-aware_prompt_tuning and minhanh151/PRE
(``trainers/prograd.py``) are byte-identical to the original trainer. Kept as in the original:

* the context with ``ctx_init`` (any truthy ``CTX_INIT``): the phrase is the dataset's
  ``CUSTOM_TEMPLATES`` entry with ``" {}."`` removed (the value of ``CTX_INIT`` itself is never
  read), ``prompt_n_ctx`` := its number of space-separated *words*; the context keeps the
  configured ``n_ctx`` rows: the first ``n_ctx - prompt_n_ctx`` are **zero vectors**, the last
  ``prompt_n_ctx`` the token embeddings at positions ``1 .. prompt_n_ctx`` of the tokenized
  phrase; the prompt text is ``"X" * (n_ctx - prompt_n_ctx) + " " + phrase``. With a comma in the
  phrase ("a type of pet, a photo of a") the words (8) are fewer than the BPE tokens (9: "pet"
  ","), so the context takes the first 8 tokens and the last word stays a frozen token of the
  suffix: the initial prompt is the zero rows followed by the whole template;
* without ``ctx_init``: N(0, 0.02) context, ``[C, n_ctx, D]`` with ``csc``, "X .. X" text;
* the zero-shot side (``CLIP``): frozen, normalised text features of ``template.format(name)``
  computed once, logits ``exp(logit_scale) * norm(image) @ text^T`` on a second image pass;
* ``ProGradLoss``: ``xe = CE(stu, y)``, ``kl = sum_c -softmax(tea / T) * log_softmax(stu / T) * T^2``
  averaged over the batch: a soft-target cross-entropy, not a KL (the teacher entropy is not
  subtracted; its gradient is the KL's);
* ``prograd_backward_and_update``: ``kl.backward(retain_graph=True)``, the gradients of the
  prompt learner's parameters cloned, zeroed, ``xe.backward()``; then per parameter tensor, when
  ``cos(g_xe, g_kl) < 0``: ``g = g_xe - lambda * (g_xe . g_kl/|g_kl|) * g_kl/|g_kl|``, else
  ``g_xe`` unchanged (with a zero gradient the cosine is NaN and nothing is projected).

Not ported: the Dassl trainer, the ``amp`` branch (broken in the original: the criterion returns a
tuple, which ``scaler.scale(loss).backward()`` cannot take), the ``middle`` class-token position
(``NameError`` in the original: it reads an undefined ``n_ctx``), fp16 handling (the model's own
dtype is used) and the separate fp32 zero-shot CLIP (the given model serves both sides).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .coop import ReferenceCoOp, ReferenceCoOpPromptLearner
from .prompt_common import ReferenceCLIPBase, default_tokenizer, register_class_prompts, tokenize_each
from .text_encoder import _model_dtype, text_tower

__all__ = ["ReferenceProGradPromptLearner", "ReferenceProGrad", "prograd_loss", "prograd_project"]


class ReferenceProGradPromptLearner(ReferenceCoOpPromptLearner):
    """ProGrad's ``PromptLearner``: ``forward() -> prompts [C, 77, D]`` (CoOp's assembly)."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], template: str, n_ctx: int = 16,
                 ctx_init: bool = True, csc: bool = False, class_token_position: str = "end",
                 tokenizer: Optional[Callable] = None):
        nn.Module.__init__(self)
        if class_token_position not in ("end", "front"):
            raise ValueError(f"class_token_position {class_token_position!r}: the original supports end and front "
                             "(middle raises NameError there)")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        device = holder.token_embedding.weight.device
        if ctx_init:
            phrase = template.replace(" {}.", "").replace("_", " ")
            prompt_n_ctx = len(phrase.split(" "))
            assert n_ctx >= prompt_n_ctx, f"#tokens ({n_ctx}) should larger equal than #initial prompt tokens"
            prompt = tokenizer([phrase]).to(device)
            with torch.no_grad():
                embedding = holder.token_embedding(prompt).type(dtype)
            ctx_vectors = torch.zeros(n_ctx, ctx_dim, dtype=dtype, device=device)
            ctx_vectors[n_ctx - prompt_n_ctx:, :] = embedding[0, 1:1 + prompt_n_ctx, :]
            prompt_prefix = " ".join(["X"] * (n_ctx - prompt_n_ctx))
            prompt_prefix = f"{prompt_prefix} {phrase}"
        else:
            shape = (n_cls, n_ctx, ctx_dim) if csc else (n_ctx, ctx_dim)
            ctx_vectors = torch.empty(*shape, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            ctx_vectors = ctx_vectors.to(device)
            prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)
        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.class_token_position = class_token_position


def prograd_loss(stu_logits: torch.Tensor, tea_logits: torch.Tensor, label: torch.Tensor,
                 T: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``ProGradLoss.forward``: ``(xe_loss, kl_loss)``."""
    xe_loss = F.cross_entropy(stu_logits, label)
    tea_prob = F.softmax(tea_logits / T, dim=-1)
    kl_loss = -tea_prob * F.log_softmax(stu_logits / T, -1) * T * T
    kl_loss = kl_loss.sum(1).mean()
    return xe_loss, kl_loss


def prograd_project(params: List[nn.Parameter], loss_a: torch.Tensor, loss_b: torch.Tensor,
                    lambda_: float = 1.0) -> None:
    """``prograd_backward_and_update`` without the optimizer: leaves the projected gradients in
    ``p.grad`` of ``params`` (the prompt learner's parameters, in their order)."""
    for p in params:
        p.grad = None
    loss_b.backward(retain_graph=True)
    b_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    loss_a.backward()
    for p, b_grad in zip(params, b_grads):
        b_grad_norm = b_grad / torch.linalg.norm(b_grad)
        a_grad = p.grad.clone()
        a_grad_norm = a_grad / torch.linalg.norm(a_grad)
        if torch.dot(a_grad_norm.flatten(), b_grad_norm.flatten()) < 0:
            p.grad = a_grad - lambda_ * torch.dot(a_grad.flatten(), b_grad_norm.flatten()) * b_grad_norm


class ReferenceProGrad(ReferenceCoOp):
    """ProGrad's ``CustomCLIP`` (CoOp's ``forward``) and zero-shot ``CLIP``, with ``forward_backward``'s
    fp32 branch."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], template: str = "a photo of a {}.",
                 n_ctx: int = 16, ctx_init: bool = True, csc: bool = False, class_token_position: str = "end",
                 T: float = 1.0, lambda_: float = 1.0, tokenizer: Optional[Callable] = None):
        ReferenceCLIPBase.__init__(self, model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        self.prompt_learner = ReferenceProGradPromptLearner(
            model, classnames, template, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
            class_token_position=class_token_position, tokenizer=tokenizer)
        self.T, self.lambda_ = T, lambda_
        self._clip = [model]  # the zero-shot CLIP (not a submodule: its parameters are not the prompt learner's)
        prompts = [template.format(c.replace("_", " ")) for c in classnames]
        prompts = tokenize_each(tokenizer, prompts).to(model.logit_scale.device)
        with torch.no_grad():
            text_features = model.encode_text(prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        self.register_buffer("zs_text_features", text_features, persistent=False)

    def zero_shot(self, images: torch.Tensor) -> torch.Tensor:
        """The zero-shot ``CLIP.forward``: its own image pass, the frozen template features."""
        clip_model = self._clip[0]
        image_features = clip_model.encode_image(images)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logit_scale = clip_model.logit_scale.exp()
        return logit_scale * image_features @ self.zs_text_features.t()

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"logits", "zs_logits", "xe", "kl"}`` of one ``forward_backward``."""
        output = self(images)
        with torch.no_grad():
            zs_clip_output = self.zero_shot(images)
        xe_loss, kl_loss = prograd_loss(output, zs_clip_output.detach(), labels, self.T)
        return {"logits": output, "zs_logits": zs_clip_output, "xe": xe_loss, "kl": kl_loss}

    def backward(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One ``forward_backward`` up to the optimizer step: the projected gradients are left in
        ``prompt_learner``'s ``.grad``; returns :meth:`losses`."""
        out = self.losses(images, labels)
        prograd_project(list(self.prompt_learner.parameters()), out["xe"], out["kl"], self.lambda_)
        return out
