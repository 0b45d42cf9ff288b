"""Literal re-implementation of PRE (Prompt learning with Reparameterization Encoder) on open_clip.

Source followed: minhanh151/PRE @ 08be701 ``trainers/pre.py`` (classes ``PromptEncoder``,
``PromptLearner``, ``CustomCLIP``; internally "ResidualPrompting"). PRE is CoOp whose context
vectors pass through a small *prompt encoder* before they are placed in the prompt:
``ctx~ = ctx + encoder(ctx)`` (residual), ``[SOT][ctx~][class tokens][.][EOT]`` through CoOp's
text encoder, CE loss.

Kept as in the original, quirks included (this is the parity oracle):

* context set-up exactly as CoOp (``ctx_init`` words -> ``n_ctx`` := number of words, embeddings of
  positions ``1 .. n_ctx``; random N(0, 0.02) ``[n_ctx, D]`` or ``[C, n_ctx, D]`` with ``csc``;
  ``end``/``middle``/``front`` class-token positions, per-class Python loops for the latter two);
* ``PromptEncoder`` types ``LSTM1``/``LSTM2``: ``nn.LSTM(D, D // 2, bidirectional, batch_first)``
  with ``dropout=0.05`` (a no-op for one layer; active between the layers of ``LSTM2`` in train
  mode), applied to the context as one sequence (``[M, D]`` is an *unbatched* sequence of length
  M; ``[C, M, D]`` a batch of C sequences), output ``.squeeze()``-d, residual added;
  ``MLP1``/``MLP2``: ``Linear(D, 64) -> ReLU -> Linear(64, D)`` (the prompt learner passes
  ``bottleneck_size=64, dropout=0, layer_norm=False``), ``MLP2`` is ``layers + layers`` — the
  *same* module objects twice, i.e. one weight-tied MLP applied twice; residual added;
* ``SEPARATE=True``: one encoder per context token, stored in a **plain dict**, so their
  parameters are not registered: they are in neither ``parameters()`` nor ``state_dict()``, the
  original optimizer never updates them and its checkpoints do not contain them;
* ``prompt_learner.state_dict()`` keys: ``ctx``, ``encoder_network.lstm_head.*`` or
  ``encoder_network.module.*`` (``MLP2`` lists every tied tensor twice), ``token_prefix``,
  ``token_suffix``.

Not ported: the ``transformer`` encoder type (the original references an undefined
``max_length`` and cannot be built), the Dassl trainer, and the ``fp16``/``fp32`` branch of
``forward_backward`` (it adds an undefined ``self.w * score``; only ``PREC=amp`` runs, whose loss
is plain cross-entropy — what ``loss`` computes here, in the model's own dtype). The original's
``.squeeze()`` makes a single context token (or a single class with ``csc``) fail; that failure is
kept. Encoders of ``SEPARATE=True`` are moved to the model's device at construction (the
original calls ``.cuda()``).
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from .coop import ReferenceCoOp
from .prompt_common import (POSITIONS, ReferenceCLIPBase, assemble_prompts, default_tokenizer, init_context,
                            register_class_prompts)
from .text_encoder import text_tower

__all__ = ["ReferencePromptEncoder", "ReferencePREPromptLearner", "ReferencePRE"]

_ENCODERS = ("LSTM1", "LSTM2", "MLP1", "MLP2")


class ReferencePromptEncoder(nn.Module):
    """The original ``PromptEncoder`` (LSTM and MLP types)."""

    def __init__(self, module_type: str = "LSTM1", emb_dimension: int = 512, bottleneck_size: int = 64,
                 nonlinearity: str = "relu", layer_norm: bool = True, dropout: float = 0.0,
                 residual: bool = True, separate_network: bool = False):
        super().__init__()
        if module_type not in _ENCODERS:
            raise ValueError(f"module_type must be one of {_ENCODERS} (the 'transformer' type of the "
                             f"original cannot be built), got {module_type!r}")
        if nonlinearity not in ("relu", "tanh", "sigm"):
            raise ValueError(f"nonlinearity must be 'relu', 'tanh' or 'sigm', got {nonlinearity!r}")
        self.module_type = module_type
        if module_type in ("LSTM1", "LSTM2"):
            with warnings.catch_warnings():  # dropout=0.05 with one layer: torch warns, the original too
                warnings.simplefilter("ignore", UserWarning)
                self.lstm_head = nn.LSTM(input_size=emb_dimension, hidden_size=emb_dimension // 2,
                                         num_layers=1 if module_type == "LSTM1" else 2, dropout=0.05,
                                         bidirectional=True, batch_first=True)
        else:
            layers = [nn.Linear(emb_dimension, bottleneck_size)]
            layers.append({"relu": nn.ReLU, "tanh": nn.Tanh, "sigm": nn.Sigmoid}[nonlinearity]())
            layers.append(nn.Linear(bottleneck_size, emb_dimension))
            if dropout > 0:
                layers.append(nn.Dropout(p=dropout))
            if layer_norm:
                layers.append(nn.LayerNorm(emb_dimension))
            if module_type == "MLP2":
                layers = layers + layers  # the same modules twice: weight-tied, as in the original
            self.module = nn.Sequential(*layers)
        self.separate_network = separate_network
        self.residual = residual

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.module_type in ("LSTM1", "LSTM2"):
            if self.separate_network:
                output_embeds = self.lstm_head(inputs)[0].clone()
            else:
                output_embeds = self.lstm_head(inputs)[0].clone().squeeze()
            if self.residual:
                output_embeds += inputs
            return output_embeds
        if self.residual:
            return self.module(inputs) + inputs
        return self.module(inputs)


class ReferencePREPromptLearner(nn.Module):
    """PRE's ``PromptLearner``: ``forward() -> prompts [C, 77, D]`` built from the encoded context."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "",
                 csc: bool = False, class_token_position: str = "end", encoder: str = "LSTM1",
                 residual: bool = True, separate: bool = False, tokenizer: Optional[Callable] = None,
                 bottleneck_size: int = 64, dropout: float = 0.0, layer_norm: bool = False):
        super().__init__()
        if class_token_position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}, got {class_token_position!r}")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        ctx_dim = holder.ln_final.weight.shape[0]
        device = holder.token_embedding.weight.device
        ctx_vectors, prompt_prefix, n_ctx = init_context(holder, tokenizer, ctx_init, n_ctx,
                                                         rows=n_cls if csc else None)
        self.ctx = nn.Parameter(ctx_vectors)

        def make_encoder():
            return ReferencePromptEncoder(module_type=encoder, bottleneck_size=bottleneck_size, dropout=dropout,
                                          emb_dimension=ctx_dim, nonlinearity="relu", layer_norm=layer_norm,
                                          residual=residual, separate_network=separate).to(device)

        if separate:
            # A plain dict, as in the original: these modules are NOT registered (never trained/saved).
            self.encoder_network = {}
            for i in range(n_ctx):
                self.encoder_network[i] = make_encoder()
        else:
            self.encoder_network = make_encoder()

        self.name_lens, self.prompt_texts = register_class_prompts(self, holder, tokenizer, classnames,
                                                                   prompt_prefix, n_ctx)
        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.separate_network = separate
        self.class_token_position = class_token_position

    def pass_separate_network(self) -> torch.Tensor:
        x = self.ctx
        out = []
        for i in range(self.n_ctx):
            out.append(self.encoder_network[i](x[i:i + 1]))
        return torch.concat(out)

    def encoded_ctx(self) -> torch.Tensor:
        if self.separate_network:
            return self.pass_separate_network()
        return self.encoder_network(self.ctx)

    def forward(self) -> torch.Tensor:
        ctx = self.encoded_ctx()
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return assemble_prompts(self.token_prefix, ctx, self.token_suffix, self.name_lens, self.n_ctx,
                                self.class_token_position)


class ReferencePRE(ReferenceCoOp):
    """PRE's ``CustomCLIP``: CoOp's (``forward(images) -> logits [B, C]``, ``loss`` = CE, the ``amp``
    path) around PRE's prompt learner."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "a photo of a",
                 csc: bool = False, class_token_position: str = "end", encoder: str = "LSTM1",
                 residual: bool = True, separate: bool = False, tokenizer: Optional[Callable] = None):
        ReferenceCLIPBase.__init__(self, model)  # not CoOp's __init__: it would build CoOp's prompt learner
        self.prompt_learner = ReferencePREPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, class_token_position=class_token_position,
            encoder=encoder, residual=residual, separate=separate, tokenizer=tokenizer)
