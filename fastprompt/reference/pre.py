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
import torch.nn.functional as F

from .coop import _tokenize_each, default_tokenizer
from .text_encoder import ReferenceTextEncoder, _model_dtype, text_tower

__all__ = ["ReferencePromptEncoder", "ReferencePREPromptLearner", "ReferencePRE"]

_ENCODERS = ("LSTM1", "LSTM2", "MLP1", "MLP2")
_POSITIONS = ("end", "middle", "front")


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
        if class_token_position not in _POSITIONS:
            raise ValueError(f"class_token_position must be one of {_POSITIONS}, got {class_token_position!r}")
        holder = text_tower(model)
        tokenizer = default_tokenizer(model) if tokenizer is None else tokenizer
        n_cls = len(classnames)
        dtype = _model_dtype(holder)
        ctx_dim = holder.ln_final.weight.shape[0]
        token_embedding = holder.token_embedding
        device = token_embedding.weight.device

        if ctx_init:
            ctx_init = ctx_init.replace("_", " ")
            n_ctx = len(ctx_init.split(" "))  # words, not BPE tokens (original quirk)
            init_ids = tokenizer([ctx_init]).to(device)
            with torch.no_grad():
                init_emb = token_embedding(init_ids).type(dtype)
            ctx_vectors = init_emb[0, 1:1 + n_ctx, :]
            prompt_prefix = ctx_init
        else:
            if csc:
                ctx_vectors = torch.empty(n_cls, n_ctx, ctx_dim, dtype=dtype)
            else:
                ctx_vectors = torch.empty(n_ctx, ctx_dim, dtype=dtype)
            nn.init.normal_(ctx_vectors, std=0.02)
            ctx_vectors = ctx_vectors.to(device)
            prompt_prefix = " ".join(["X"] * n_ctx)

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

        names = [name.replace("_", " ") for name in classnames]
        name_lens = [len(tokenizer.encode(name)) for name in names]
        prompt_texts = [prompt_prefix + " " + name + "." for name in names]
        tokenized_prompts = _tokenize_each(tokenizer, prompt_texts).to(device)
        with torch.no_grad():
            embedding = token_embedding(tokenized_prompts).type(dtype)
        self.register_buffer("token_prefix", embedding[:, :1, :])           # SOT
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :])   # class, '.', EOT, pad
        self.register_buffer("tokenized_prompts", tokenized_prompts, persistent=False)

        self.n_cls = n_cls
        self.n_ctx = n_ctx
        self.separate_network = separate
        self.name_lens = name_lens
        self.class_token_position = class_token_position
        self.prompt_texts = prompt_texts

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
        prefix, suffix = self.token_prefix, self.token_suffix

        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)

        prompts = []
        for i in range(self.n_cls):
            name_len = self.name_lens[i]
            prefix_i = prefix[i:i + 1, :, :]
            class_i = suffix[i:i + 1, :name_len, :]
            suffix_i = suffix[i:i + 1, name_len:, :]
            if self.class_token_position == "middle":
                half = self.n_ctx // 2
                parts = [prefix_i, ctx[i:i + 1, :half, :], class_i, ctx[i:i + 1, half:, :], suffix_i]
            else:  # front
                parts = [prefix_i, class_i, ctx[i:i + 1, :, :], suffix_i]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)


class ReferencePRE(nn.Module):
    """PRE's ``CustomCLIP``: ``forward(images) -> logits [B, C]``; ``loss`` is their CE (the ``amp`` path)."""

    def __init__(self, model: nn.Module, classnames: Sequence[str], n_ctx: int = 16, ctx_init: str = "a photo of a",
                 csc: bool = False, class_token_position: str = "end", encoder: str = "LSTM1",
                 residual: bool = True, separate: bool = False, tokenizer: Optional[Callable] = None):
        super().__init__()
        self.prompt_learner = ReferencePREPromptLearner(
            model, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc, class_token_position=class_token_position,
            encoder=encoder, residual=residual, separate=separate, tokenizer=tokenizer)
        self.image_encoder = model.visual
        self.text_encoder = ReferenceTextEncoder(model)
        self.logit_scale = model.logit_scale
        self.dtype = self.text_encoder.dtype

    @property
    def tokenized_prompts(self) -> torch.Tensor:
        return self.prompt_learner.tokenized_prompts

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.image_encoder(images.type(self.dtype))
        if isinstance(feats, (tuple, list)):
            feats = feats[0]
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        image_features = self.encode_image(images)
        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.tokenized_prompts)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(images), labels)
