"""Literal RPP (unshared query/key/value prompts + soft labels of a frozen CLIP teacher).

RPP (Chen et al., arXiv 2409.06166) has **no released code**; this module implements fastprompt's
design of it (semantics documented in :mod:`fastprompt.learners.rpp.learner`) the slow,
obvious way, independently of the fast path, as the parity oracle and the "before" side of
benchmarks:

* text: every class over the full context (the model's context length); in every prompted layer
  ``j < J`` the query / key / value / residual *inputs* of the layer are assembled with ``torch.cat``
  as ``[SOT][P^x_j][rest]`` (``[P^x_j][rest]`` for a tokenizer without a start token, mT5's; layer 0:
  ``[token_prefix][P^x_0][token_suffix] + positional embedding``, CoOp's assembly), pooled as the
  tower pools (CLIP's EOT row, the first EOS of an ``eos``-pooled tower), and the layer's attention
  is torch's own multi-head attention given *separate* query, key and value inputs
  (``F.multi_head_attention_forward``) with the tower's own mask (open_clip's float causal mask, its
  padding / CLS mask, or none on a bidirectional tower: SigLIP, CLIPA, MobileCLIP-S, whose prompt rows
  are then queries, keys and values of every row of the full sequence); CoCa's CLS is appended after
  the prompt at layer 0 and pooled; the residual stream is the residual-row version;
* vision: ``ln_pre([image tokens ; P^x_0])`` at layer 0, ``cat([x[:, :-M], P^x_j])`` before
  prompted layer ``j`` (IVLP/MaPLe layout: muzairkhattak/multimodal-prompt-learning @ 69bce21
  ``clip/model.py``, ``ResidualAttentionBlock_IVLP``); with ``branches="text"`` the image side is the
  model's own ``encode_image``, so a ResNet image tower (which the learner accepts then) works too;
* post-projection: the prompt rows' q/k/v are spliced into the projected heads with
  ``torch.cat`` and attention is an explicit softmax;
* layers ``>= J``: open_clip's own residual blocks;
* teacher: for every class, every template string through open_clip's ``encode_text``,
  normalised, averaged, renormalised (CLIP's zero-shot ensembling); images through the teacher's
  ``encode_image``;
* POMP local contrast (``pomp=True``): one full prompt per image and per negative, logits from
  :func:`fastprompt.reference.pomp.pomp_local_logits` (amazon-science/prompt-pretraining @ 24bca56
  ``trainers/pomp.py``), the teacher's logits over ``label_upd`` through the same function;
* ``loss = CE + kl_weight * T^2 * sum_c p_t (log p_t - log p_s)`` averaged over the batch.

``prompt_learner.state_dict()`` holds the prompt parameters under the learner's names plus the
frozen ``token_prefix``/``token_suffix`` buffers, so it loads into ``RPPLearner`` with
``load_original_state_dict``. Nothing is frozen or unfrozen on the CLIP model here.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pomp import pomp_local_logits, pomp_negative_sampling
from ..learners.prompts import text_start
from .prompt_common import default_tokenizer, register_class_prompts
from .text_encoder import _model_dtype, pool_tower_output, text_inputs, text_tower
from .vision import _embed, pool_image

__all__ = ["ReferenceRPP", "ReferenceRPPPromptLearner", "reference_zero_shot_weights"]


# ---- blocks ------------------------------------------------------------------------------------
def _check_plain_block(block: nn.Module) -> None:
    attn = block.attn
    extras = [getattr(attn, "ln_q", None), getattr(attn, "ln_inner", None), getattr(block, "ln_attn", None)]
    if getattr(attn, "head_scale", None) is not None or any(m is not None and not isinstance(m, nn.Identity)
                                                             for m in extras):
        raise ValueError("the RPP reference supports plain CLIP attention blocks only (no qk-norm, head scale "
                         "or inner/attention norms)")


def _block_separate_qkv(block: nn.Module, x: torch.Tensor, xq: torch.Tensor, xk: torch.Tensor, xv: torch.Tensor,
                        attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """A residual block whose attention reads separate inputs: ``Q = LN1(xq) W_q + b_q``,
    ``K = LN1(xk) W_k + b_k``, ``V = LN1(xv) W_v + b_v``; the residual stream is ``x``. All ``[N, L, D]``."""
    _check_plain_block(block)
    attn = block.attn
    width, heads = attn.in_proj_weight.shape[1], attn.num_heads
    q_in, k_in, v_in = (block.ln_1(t).transpose(0, 1) for t in (xq, xk, xv))  # sequence-first for torch MHA
    out, _ = F.multi_head_attention_forward(
        q_in, k_in, v_in, width, heads, attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0,
        attn.out_proj.weight, attn.out_proj.bias, training=False, need_weights=False, attn_mask=attn_mask)
    x = x + block.ls_1(out.transpose(0, 1))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _block_head_prompts(block: nn.Module, x: torch.Tensor, hq: torch.Tensor, hk: torch.Tensor, hv: torch.Tensor,
                        start: int, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """A residual block where rows ``start .. start+M-1`` take head-space q/k/v ``[M, H, d]`` as they are."""
    _check_plain_block(block)
    attn = block.attn
    n, length, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    m = hq.shape[0]
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).reshape(n, length, 3, heads, head_dim)
    q, k, v = qkv.unbind(2)

    def splice(t, rows):
        return torch.cat([t[:, :start], rows.to(t.dtype).expand(n, m, heads, head_dim), t[:, start + m:]], dim=1)

    q, k, v = splice(q, hq), splice(k, hk), splice(v, hv)
    scores = torch.einsum("nlhd,nmhd->nhlm", q, k) * head_dim ** -0.5
    if attn_mask is not None:  # [L, L] (causal) or open_clip's per-sequence [N*H, L, L] (padding / CLS)
        scores = scores + (attn_mask.view(n, heads, length, length) if attn_mask.dim() == 3 else attn_mask)
    out = torch.einsum("nhlm,nmhd->nlhd", scores.softmax(dim=-1), v).reshape(n, length, width)
    x = x + block.ls_1(attn.out_proj(out))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _plain_block(transformer: nn.Module, block: nn.Module, x: torch.Tensor, attn_mask=None) -> torch.Tensor:
    if getattr(transformer, "batch_first", True):
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


# ---- teacher -----------------------------------------------------------------------------------
def _templates(templates) -> List[Callable[[str], str]]:
    if isinstance(templates, str):
        from open_clip import zero_shot_metadata as meta

        named = {"simple": list(meta.SIMPLE_IMAGENET_TEMPLATES), "openai": list(meta.OPENAI_IMAGENET_TEMPLATES),
                 "single": [lambda c: f"a photo of a {c}."]}
        if templates not in named:
            raise ValueError(f"unknown template set {templates!r}")
        return named[templates]
    return [t.format if isinstance(t, str) else t for t in templates]


@torch.no_grad()
def reference_zero_shot_weights(model: nn.Module, classnames: Sequence[str], templates="simple",
                                tokenizer: Optional[Callable] = None,
                                projection: Optional[torch.Tensor] = None) -> torch.Tensor:
    """CLIP's zero-shot classifier ``[C, E]``: per class, ``encode_text`` of every template,
    normalised, mean, (projected,) renormalised."""
    tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
    device = model.logit_scale.device
    rows = []
    for name in classnames:
        name = name.replace("_", " ")
        feats = model.encode_text(tokenizer([t(name) for t in _templates(templates)]).to(device)).float()
        feats = feats / feats.norm(dim=-1, keepdim=True)
        mean = feats.mean(dim=0)
        if projection is not None:
            mean = mean @ projection.float()
        rows.append(mean / mean.norm())
    return torch.stack(rows)


# ---- prompt learner ----------------------------------------------------------------------------
class ReferenceRPPPromptLearner(nn.Module):
    """RPP prompt parameters (learner names) and CoOp's frozen token buffers for the text side."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], branches: str = "both", depth: int = 9,
                 n_ctx: int = 4, n_ctx_vision: Optional[int] = None, ctx_init: str = "", variant: str = "pre",
                 residual_row: str = "value", shared: bool = False, tokenizer: Optional[Callable] = None):
        super().__init__()
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        dtype = _model_dtype(holder)
        device = holder.token_embedding.weight.device
        self.branches, self.depth, self.variant = branches, depth, variant
        self.residual_row, self.shared = residual_row, shared
        self.prompt_text = branches in ("text", "both")
        self.prompt_vision = branches in ("vision", "both")

        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))
            prompt_prefix = ctx_init
        else:
            prompt_prefix = " ".join(["X"] * n_ctx)
        self.n_ctx, self.n_ctx_vision = n_ctx, n_ctx_vision or n_ctx
        # the context rows start where the tokenizer puts text: 1 after CLIP's [SOT], 0 for mT5's
        start = self.text_start = text_start(tokenizer)

        def new(*shape):
            t = torch.empty(*shape, dtype=dtype)
            nn.init.normal_(t, std=0.02)
            return nn.Parameter(t.to(device))

        text_w, text_h = holder.ln_final.weight.shape[0], holder.transformer.resblocks[0].attn.num_heads
        sides = [("text", n_ctx, text_w, text_h)] if self.prompt_text else []
        if self.prompt_vision:  # a ViT; a ResNet image tower (branches "text") is only read by encode_image
            vis = model.visual
            sides.append(("vision", self.n_ctx_vision, vis.conv1.out_channels,
                          vis.transformer.resblocks[0].attn.num_heads))
        for side, m, width, heads in sides:
            if shared:
                setattr(self, f"{side}_prompts", new(depth, m, width))
            else:
                shape = (depth, m, width) if variant == "pre" else (depth, m, heads, width // heads)
                for part in ("q", "k", "v"):
                    setattr(self, f"{side}_{part}", new(*shape))

        if self.prompt_text and ctx_init:
            with torch.no_grad():
                words = holder.token_embedding(tokenizer([ctx_init]).to(device)).type(dtype)[0, start:start + n_ctx]
                if shared:
                    self.text_prompts[0].copy_(words)
                elif variant == "pre":
                    for part in ("q", "k", "v"):
                        getattr(self, f"text_{part}")[0].copy_(words)
                else:
                    block = holder.transformer.resblocks[0]
                    rows = block.ln_1(words + holder.positional_embedding[start:start + n_ctx].type(dtype))
                    w_q, w_k, w_v = block.attn.in_proj_weight.chunk(3)
                    bias = block.attn.in_proj_bias
                    b_q, b_k, b_v = (bias if bias is not None else w_q.new_zeros(3 * text_w)).chunk(3)
                    for part, w, b in (("q", w_q, b_q), ("k", w_k, b_k), ("v", w_v, b_v)):
                        getattr(self, f"text_{part}")[0].copy_((rows @ w.t() + b).reshape(n_ctx, text_h, -1))

        # Text prompt buffers (CoOp's assembly); with a frozen text side, the hand-crafted prompt.
        phrase = prompt_prefix if self.prompt_text else (ctx_init or "a photo of a")
        register_class_prompts(self, holder, tokenizer, classnames, phrase, n_ctx)

    def layer_rows(self, side: str, j: int):
        """``(q, k, v, residual)`` of layer ``j``: width rows ``[M, D]`` (pre) or head rows
        ``[M, H, d]`` (post) for q/k/v, and the width-space residual row ``[M, D]``."""
        if self.shared:
            p = getattr(self, f"{side}_prompts")[j]
            return p, p, p, p
        q, k, v = (getattr(self, f"{side}_{part}")[j] for part in ("q", "k", "v"))
        residual = v if self.residual_row == "value" else (q + k + v) / 3
        if self.variant == "post":
            residual = residual.flatten(-2)
        return q, k, v, residual


# ---- the model ---------------------------------------------------------------------------------
class ReferenceRPP(nn.Module):
    """Literal RPP: ``forward(images) -> logits [B, C]``; ``loss(images, labels)`` the full objective.

    Arguments as ``RPPConfig`` (``n_ctx`` is the prompt length; with ``ctx_init`` its word count).
    ``teacher_model`` (default: ``model``) scores its own images unless ``teacher_image_model``
    is given; ``teacher_text_features [C, E]`` (normalised) skips the literal template encoding.
    """

    def __init__(self, model: nn.Module, classnames: Sequence[str], branches: str = "both", depth: int = 9,
                 n_ctx: int = 4, n_ctx_vision: Optional[int] = None, ctx_init: str = "", variant: str = "pre",
                 residual_row: str = "value", shared: bool = False, kl_weight: float = 1.0, temperature: float = 1.0,
                 teacher_templates="simple", teacher_model: Optional[nn.Module] = None,
                 teacher_image_model: Optional[nn.Module] = None, teacher_projection: Optional[torch.Tensor] = None,
                 teacher_tokenizer: Optional[Callable] = None, teacher_text_features: Optional[torch.Tensor] = None,
                 pomp: bool = False, pomp_num_sampled_classes: int = 1000, pomp_local_correction: bool = True,
                 pomp_log_base: str = "10", tokenizer: Optional[Callable] = None):
        super().__init__()
        self.prompt_learner = ReferenceRPPPromptLearner(
            model, classnames, branches, depth, n_ctx, n_ctx_vision, ctx_init, variant, residual_row, shared,
            tokenizer)
        # A dict, not attributes: the frozen CLIP models stay out of this module's parameters / state dict.
        self.frozen = {"model": model, "text": text_tower(model)}
        self.n_classes = len(classnames)
        self.kl_weight, self.temperature = kl_weight, temperature
        self.pomp, self.pomp_k = pomp, pomp_num_sampled_classes
        self.pomp_local_correction, self.pomp_log_base = pomp_local_correction, pomp_log_base
        self.frozen["teacher"] = teacher_model if teacher_model is not None else model
        self.frozen["teacher_images"] = teacher_image_model if teacher_image_model is not None else self.teacher
        if teacher_tokenizer is None and teacher_model is None:
            teacher_tokenizer = tokenizer  # the teacher is the model itself: its tokenizer too (mT5's, SigLIP's)
        if kl_weight > 0 and teacher_text_features is None:
            teacher_text_features = reference_zero_shot_weights(self.teacher, classnames, teacher_templates,
                                                                teacher_tokenizer, teacher_projection)
        self.teacher_text_features = teacher_text_features

    @property
    def model(self) -> nn.Module:
        return self.frozen["model"]

    @property
    def text(self) -> nn.Module:
        return self.frozen["text"]

    @property
    def teacher(self) -> nn.Module:
        return self.frozen["teacher"]

    @property
    def teacher_image_model(self) -> nn.Module:
        return self.frozen["teacher_images"]

    # ---- towers ------------------------------------------------------------------------------
    def encode_text(self, idx: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised text features ``[C, E]`` (or of the classes ``idx``, duplicates included)."""
        pl, holder = self.prompt_learner, self.text
        tokenized = pl.tokenized_prompts if idx is None else pl.tokenized_prompts[idx]
        if not pl.prompt_text:
            return self.model.encode_text(tokenized)
        prefix = pl.token_prefix if idx is None else pl.token_prefix[idx]
        suffix = pl.token_suffix if idx is None else pl.token_suffix[idx]
        n_cls, m, start = prefix.shape[0], pl.n_ctx, pl.text_start
        # the tower's own mask: causal, padding / CLS (CoCa), or none (a bidirectional tower: SigLIP,
        # CLIPA, MobileCLIP-S, where every row of the full sequence reads every other, prompt rows too)
        _, mask = text_inputs(holder, torch.cat([prefix, prefix.new_zeros(n_cls, m, prefix.shape[-1]), suffix], 1),
                              tokenized)
        x = None
        for j, block in enumerate(holder.transformer.resblocks):
            if j >= pl.depth:
                x = _plain_block(holder.transformer, block, x, mask)
                continue
            q, k, v, r = pl.layer_rows("text", j)
            if j == 0:  # CoOp's assembly, then the tower's own input: CoCa's CLS appended, positions added
                def assemble(rows):
                    return text_inputs(holder, torch.cat([prefix, rows.expand(n_cls, -1, -1), suffix], dim=1),
                                       tokenized)[0]
            else:
                kept = x

                def assemble(rows):
                    return torch.cat([kept[:, :start], rows.expand(n_cls, -1, -1), kept[:, start + m:]], dim=1)
            x = assemble(r)
            if pl.variant == "pre":
                x = _block_separate_qkv(block, x, assemble(q), assemble(k), assemble(v), mask)
            else:
                x = _block_head_prompts(block, x, q, k, v, start, mask)
        return pool_tower_output(holder, x, tokenized)  # CLIP's EOT row; the tower's own pooling (CoCa: its CLS)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features ``[B, E]``."""
        pl, visual = self.prompt_learner, self.model.visual
        if not pl.prompt_vision:
            return self.model.encode_image(images)
        x_emb = _embed(visual, images)
        batch, m, n_image_tokens = x_emb.shape[0], pl.n_ctx_vision, x_emb.shape[1]
        x = None
        for j, block in enumerate(visual.transformer.resblocks):
            if j >= pl.depth:
                x = _plain_block(visual.transformer, block, x)
                continue
            q, k, v, r = pl.layer_rows("vision", j)
            if j == 0:
                def assemble(rows):
                    return visual.ln_pre(torch.cat([x_emb, rows.to(x_emb.dtype).expand(batch, -1, -1)], dim=1))
            else:
                kept = x

                def assemble(rows):
                    return torch.cat([kept[:, :-m], rows.expand(batch, -1, -1)], dim=1)
            x = assemble(r)
            if pl.variant == "pre":
                x = _block_separate_qkv(block, x, assemble(q), assemble(k), assemble(v), None)
            else:
                x = _block_head_prompts(block, x, q, k, v, x.shape[1] - m, None)
        return pool_image(visual, x, n_image_tokens)

    # ---- logits and loss ---------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image = self.encode_image(images)
        text = self.encode_text()
        image = image / image.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.model.logit_scale.exp() * image @ text.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor, label_oob: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        scale = self.model.logit_scale.exp()
        image = self.encode_image(images)
        image = image / image.norm(dim=-1, keepdim=True)
        if self.pomp:
            if label_oob is None:
                label_oob = pomp_negative_sampling(self.n_classes, self.pomp_k - 1, generator, labels.device)
            label_upd = torch.cat([labels, label_oob])
            text = self.encode_text(label_upd)
            text = text / text.norm(dim=-1, keepdim=True)
            logits = pomp_local_logits(image, text, labels, label_oob, self.n_classes, self.pomp_k, scale,
                                       self.pomp_local_correction, self.pomp_log_base)
            loss = F.cross_entropy(logits, torch.zeros_like(labels))
        else:
            text = self.encode_text()
            text = text / text.norm(dim=-1, keepdim=True)
            logits = scale * image @ text.t()
            loss = F.cross_entropy(logits, labels)
        if self.kl_weight == 0:
            return loss
        with torch.no_grad():
            t_image = self.teacher_image_model.encode_image(images).float()
            t_image = t_image / t_image.norm(dim=-1, keepdim=True)
            t_scale = self.teacher.logit_scale.exp()
            weights = self.teacher_text_features.to(t_image.device)
            if self.pomp:
                t_logits = pomp_local_logits(t_image, weights[label_upd], labels, label_oob, self.n_classes,
                                             self.pomp_k, t_scale, self.pomp_local_correction, self.pomp_log_base)
            else:
                t_logits = t_scale * t_image @ weights.t()
        temp = self.temperature
        log_p_s = F.log_softmax(logits / temp, dim=-1)
        log_p_t = F.log_softmax(t_logits.to(logits.dtype) / temp, dim=-1)
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1).mean()
        return loss + self.kl_weight * temp * temp * kl
