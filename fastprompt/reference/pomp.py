"""Literal re-implementation of POMP's training forward on open_clip models.

Source followed: amazon-science/prompt-pretraining @ 24bca56 ``trainers/pomp.py`` (``PromptLearner``
with separate train/test token buffers and ``forward(idx)``, ``CustomCLIP.forward`` in ``EPT``
mode, ``CustomCLIP.negative_sampling`` in ``random`` mode, ``POMP.forward_backward``'s
cross-entropy with target 0). Kept on purpose:

* one full 77-token prompt per image (the positives, duplicates included) **and** per sampled
  negative: ``label_upd = cat(label_ib, label_oob)``, prompts assembled by ``torch.cat`` of the
  indexed ``train_token_prefix``, ``ctx`` and ``train_token_suffix``;
* negatives ``randperm(N)[:K-1]`` (global RNG unless a generator is passed), shared by the batch;
* collisions: ``logits_neg -= 1e6 * reject``; local correction with ``torch.log10``: add
  ``log10(N-1)``, subtract ``log10(K-1 - r_i)`` with ``K-1`` the *configured* count;
* logits ``[logit_pos | logit_neg]``, loss ``CE(logits, 0)``.

State-dict keys match the original prompt learner: ``ctx``, ``train_token_prefix``,
``train_token_suffix``, ``test_token_prefix``, ``test_token_suffix``. Not ported: Dassl, DDP,
wandb, the ``hard``/``easy`` sampling modes (they need a memory bank the release never fills),
fp16 handling, ``class_token_position`` other than ``end`` and class-specific context.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..learners.prompts import text_start
from .prompt_common import ReferenceCLIPBase, default_tokenizer, init_context, tokenize_each
from .text_encoder import _model_dtype, text_tower

__all__ = ["ReferencePOMP", "ReferencePOMPPromptLearner", "pomp_local_logits", "pomp_negative_sampling"]


def pomp_negative_sampling(n_classes: int, n_negatives: int, generator: Optional[torch.Generator] = None,
                           device=None) -> torch.Tensor:
    """``negative_sampling(..., mode='random')``: ``arange(N)[randperm(N)[:K-1]]``."""
    label_all = torch.arange(0, n_classes, device=device)
    perm = torch.randperm(label_all.size(0), generator=generator)
    return label_all[perm[:n_negatives].to(label_all.device)]


def pomp_local_logits(image_features: torch.Tensor, text_features_upd: torch.Tensor, label_ib: torch.Tensor,
                      label_oob: torch.Tensor, n_train_classes: int, n_upd_cls: int, logit_scale: torch.Tensor,
                      local_correction: bool = True, log_base: str = "10") -> torch.Tensor:
    """The ``EPT`` branch of ``CustomCLIP.forward`` after the text encoder, line by line.

    ``image_features [B, E]`` and ``text_features_upd [B + K-1, E]`` are normalised; returns ``[B, K]``.
    """
    log = torch.log10 if log_base == "10" else torch.log
    num_oob = n_upd_cls - 1
    text_features_pos = text_features_upd[:label_ib.size(0)]
    logits_pos = logit_scale * (image_features * text_features_pos).sum(dim=-1, keepdims=True)

    text_features_neg = text_features_upd[-label_oob.size(0):]
    logits_neg = logit_scale * image_features @ text_features_neg.t()
    bsz = image_features.size(0)
    reject_labels = label_ib.unsqueeze(1) == label_oob.unsqueeze(0).expand(bsz, -1)
    logits_neg = logits_neg - 1e6 * reject_labels

    if local_correction:
        logits_neg = logits_neg + log(torch.tensor(n_train_classes - 1).to(logits_neg))
        true_label_oob_num = torch.tensor([[num_oob]] * bsz).to(logits_neg) - \
            reject_labels.sum(-1, keepdims=True).to(logits_neg)
        logits_neg = logits_neg - log(true_label_oob_num)

    return torch.cat([logits_pos, logits_neg], dim=1)


class ReferencePOMPPromptLearner(nn.Module):
    """POMP's ``PromptLearner`` (generic context, class token at the end)."""

    def __init__(self, model: nn.Module, train_classnames: Sequence[str],
                 test_classnames: Optional[Sequence[str]] = None, n_ctx: int = 4, ctx_init: str = "",
                 tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        test_classnames = train_classnames if test_classnames is None else test_classnames
        dtype = _model_dtype(holder)
        token_embedding = holder.token_embedding
        device = token_embedding.weight.device

        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init, n_ctx)
        self.ctx = nn.Parameter(ctx_vectors)

        def buffers(names):
            names = [name.replace("_", " ") for name in names]
            prompts = [prompt_prefix + " " + name + "." for name in names]
            tokenized = tokenize_each(tokenizer, prompts).to(device)
            with torch.no_grad():
                embedding = token_embedding(tokenized).type(dtype)
            # [SOS] rows before the context: 1 for CLIP's tokenizer, 0 for SigLIP's / mT5's (the
            # tokenizer's own layout, as prompt_common.register_class_prompts)
            start = text_start(tokenizer)
            return tokenized, embedding[:, :start, :], embedding[:, start + n_ctx:, :]

        train_tok, train_pre, train_suf = buffers(train_classnames)
        test_tok, test_pre, test_suf = buffers(test_classnames)
        self.register_buffer("train_token_prefix", train_pre)  # SOS
        self.register_buffer("train_token_suffix", train_suf)  # CLS, EOS
        self.register_buffer("test_token_prefix", test_pre)
        self.register_buffer("test_token_suffix", test_suf)
        self.register_buffer("train_tokenized_prompts", train_tok, persistent=False)
        self.register_buffer("test_tokenized_prompts", test_tok, persistent=False)
        self.train_n_cls = len(train_classnames)
        self.test_n_cls = len(test_classnames)
        self.n_ctx = n_ctx

    def forward(self, idx: Optional[torch.Tensor] = None, split: str = "train") -> torch.Tensor:
        ctx = self.ctx
        if split == "train":
            prefix, suffix, n_cls = self.train_token_prefix, self.train_token_suffix, self.train_n_cls
            if idx is not None:
                prefix, suffix = prefix[idx], suffix[idx]
                n_cls = idx.size(0)
        else:
            prefix, suffix, n_cls = self.test_token_prefix, self.test_token_suffix, self.test_n_cls
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=1)


class ReferencePOMP(ReferenceCLIPBase):
    """POMP's ``CustomCLIP``: ``loss(images, labels)`` is the ``EPT`` training loss."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 4, ctx_init: str = "",
                 num_sampled_classes: int = 1000, local_correction: bool = True, log_base: str = "10",
                 test_classnames: Optional[Sequence[str]] = None, tokenizer: Optional[Callable] = None):
        super().__init__(model)
        self.prompt_learner = ReferencePOMPPromptLearner(model, classnames, test_classnames, n_ctx=n_ctx,
                                                         ctx_init=ctx_init, tokenizer=tokenizer)
        self.n_upd_cls = num_sampled_classes
        self.local_correction = local_correction
        self.log_base = log_base

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` (POMP normalises inside its image path)."""
        feats = super().encode_image(images)
        return feats / feats.norm(dim=-1, keepdim=True)

    def forward(self, images: torch.Tensor, label_ib: Optional[torch.Tensor] = None,
                label_oob: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``[B, K]`` EPT logits when ``label_ib`` is given (negatives drawn unless ``label_oob``),
        else ``[B, C_test]`` logits over all test classes."""
        logit_scale = self.logit_scale.exp()
        image_features = self.encode_image(images)
        pl = self.prompt_learner
        if label_ib is None:
            text_features = self.text_encoder(pl(split="test"), pl.test_tokenized_prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            return logit_scale * image_features @ text_features.t()
        if label_oob is None:
            label_oob = pomp_negative_sampling(pl.train_n_cls, self.n_upd_cls - 1, generator, label_ib.device)
        label_upd = torch.cat([label_ib, label_oob])
        prompts_upd = pl(label_upd)
        tokenized_prompts_upd = pl.train_tokenized_prompts[label_upd]
        text_features_upd = self.text_encoder(prompts_upd, tokenized_prompts_upd)
        text_features_upd = text_features_upd / text_features_upd.norm(dim=-1, keepdim=True)
        return pomp_local_logits(image_features, text_features_upd, label_ib, label_oob, pl.train_n_cls,
                                 self.n_upd_cls, logit_scale, self.local_correction, self.log_base)

    def loss(self, images: torch.Tensor, labels: torch.Tensor, label_oob: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        output = self(images, labels, label_oob=label_oob, generator=generator)
        return F.cross_entropy(output, torch.zeros_like(labels))
