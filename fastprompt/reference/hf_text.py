"""Literal deep text prompts (MaPLe, IVLP/PromptSRC) on open_clip's Hugging Face text towers.

open_clip's ``HFTextEncoder`` (RoBERTa, XLM-R, mT5, NLLB's M2M100) runs a ``transformers`` encoder
on the token ids, pools with its own pooler and projects (``HFTextEncoder.forward``). The originals'
deep text prompts (muzairkhattak/multimodal-prompt-learning @ 69bce21 ``clip/model.py``:
``ResidualAttentionBlock_MaPLe`` / ``_IVLP``; see :mod:`.deep`) replace the context rows of every
prompt at the input of each prompted layer ``j >= 1``. :class:`ReferenceHFTextEncoder` does exactly
that on the ``transformers`` model, unoptimised: every prompt at the tokenizer's full length, the
model's forward written out as the model's own ``forward`` runs it, layer by layer, with the rows
written into the hidden states before each prompted layer:

* RoBERTa / XLM-R (``RobertaModel.forward``): ``embeddings`` on the prompt embeddings with the
  padding-aware position ids of the token ids (what the model computes from ``input_ids``), the
  model's bidirectional mask, ``encoder.layer[j]`` one by one, ``pooler`` (where built);
* mT5 (``MT5Stack.forward``, the encoder stack open_clip keeps): dropout, the mask, ``block[j]``
  one by one, the relative position bias returned by block 0 handed to every later block,
  ``final_layer_norm``, dropout;
* NLLB (``M2M100Encoder.forward``): the (scaled) prompt embeddings plus the sinusoidal positions of
  the token ids, dropout, the mask, ``layers[j]`` one by one, ``layer_norm``;

then open_clip's pooler on the last hidden states with the padding mask (``ids != pad_token_id``)
and ``proj``. The prompt embeddings are in the space of the model's input-embedding module (NLLB's
includes its ``sqrt(d_model)`` scale), as the context the learners initialise from words.

The prompt learners (:class:`~.maple.ReferenceMaPLe`, :class:`~.promptsrc.ReferencePromptSRC`) read
the word embeddings through :func:`prompt_holder` and take their text encoder from
:func:`maple_text_encoder` / :func:`ivlp_text_encoder`, which pick this module's encoders for a
Hugging Face text tower.

:class:`ReferenceHFRPPTextEncoder` is RPP's text side on these towers (fastprompt's design:
:mod:`fastprompt.learners.rpp.learner`), as literally as :mod:`.rpp` does it on open_clip's towers:
at every prompted layer ``j`` the prompt rows of the full sequences are assembled three (four) times
with ``torch.cat``, the query / key / value input of the layer (``P^q_j``, ``P^k_j``, ``P^v_j``;
layer 0: through the embedding stage, as the context), each through the layer's pre-attention norm
and its own projection (``query``/``key``/``value``, ``q``/``k``/``v``, ``q_proj``/``k_proj``/
``v_proj``), and the three projected rows are written into the projections' outputs of the layer's
own attention (the projection modules are swapped for a module that does so while the layer runs);
the hidden (residual) rows are the residual row ``R_j``. Head-space prompts are the projections'
outputs as they are. A query or residual row that is not given keeps what the layer computes from
the previous layer's output (whose prompt rows are overwritten again before anything reads them).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..towers.hf_text import encoder_layers
from .deep import ReferenceIVLPTextEncoder, ReferenceMaPLeTextEncoder, _Transformer
from .text_encoder import text_tower

__all__ = ["ReferenceHFTextEncoder", "ReferenceHFMaPLeTextEncoder", "ReferenceHFIVLPTextEncoder",
           "ReferenceHFRPPTextEncoder", "prompt_holder", "maple_text_encoder", "ivlp_text_encoder", "is_hf_text"]


def is_hf_text(model: nn.Module) -> bool:
    """Whether ``model``'s text tower is open_clip's ``HFTextEncoder``."""
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(model, "text", None), HFTextEncoder)


class _HFPromptParts:
    """What the CoOp-style prompt assembly (``prompt_common.init_context`` / ``register_class_prompts``)
    reads from a text tower, for a Hugging Face one: ``token_embedding`` (the model's input-embedding
    module), the width (``ln_final.weight.shape[0]``) and the compute dtype (``transformer.get_cast_dtype``)."""

    def __init__(self, text: nn.Module):
        self.token_embedding = text.transformer.get_input_embeddings()
        weight = self.token_embedding.weight
        self.ln_final = nn.Module()
        self.ln_final.weight = torch.empty(weight.shape[1], dtype=weight.dtype, device="meta")
        self.transformer = nn.Module()
        self.transformer.get_cast_dtype = lambda: weight.dtype


def prompt_holder(model: nn.Module):
    """The text-tower parts the reference prompt learners read: :func:`~.text_encoder.text_tower` for
    an open_clip text tower, the Hugging Face model's word embeddings (:class:`_HFPromptParts`) else."""
    return _HFPromptParts(model.text) if is_hf_text(model) else text_tower(model)


class ReferenceHFTextEncoder(nn.Module):
    """``(prompts [C, L, D], ids [C, L], layer_prompts) -> [C, E]``: the Hugging Face text tower with
    deep prompt rows written at each prompted layer's input (see the module docstring).

    Args:
        model: an open_clip model whose ``text`` is an ``HFTextEncoder``.
        n_ctx: M, the rows every deep prompt replaces.
        start: the first replaced row (1 after RoBERTa's ``<s>`` / NLLB's language code, 0 for mT5).
    """

    def __init__(self, model: nn.Module, n_ctx: int, start: int = 1):
        super().__init__()
        if not is_hf_text(model):
            raise ValueError(f"{type(model).__name__} has no open_clip HFTextEncoder text tower")
        self._text = [model.text]  # not a submodule: the frozen model is not part of the reference's state
        self.family = model.text.config.model_type
        if self.family not in ("roberta", "xlm-roberta", "mt5", "m2m_100"):
            raise ValueError(f"no reference for Hugging Face text towers of type {self.family!r}")
        self.n_ctx, self.start = n_ctx, start
        self.dtype = model.text.transformer.get_input_embeddings().weight.dtype

    def _replace(self, x: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
        """``x [C, L, D]`` with rows ``start .. start+n_ctx-1`` replaced by ``rows [n_ctx, D]`` (the
        original's ``torch.cat([prefix, prompts, suffix])``); unchanged for ``rows=None``."""
        if rows is None:
            return x
        rows = rows.to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :self.start], rows, x[:, self.start + self.n_ctx:]], dim=1)

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor,
                layer_prompts: Sequence[Optional[torch.Tensor]] = ()) -> torch.Tensor:
        """``layer_prompts[j]``: ``None`` or the rows ``[n_ctx, D]`` replacing the context rows at the
        input of encoder layer ``j`` (entry 0 is the embedding output's: the originals leave it None)."""
        return self._encode(prompts, tokenized_prompts, len(layer_prompts),
                            lambda j, layer, x, run: run(self._replace(x, layer_prompts[j]
                                                                       if j < len(layer_prompts) else None)))

    def _embedding_stage(self, prompts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The model's forward up to its first layer, on prompt embeddings ``[C, L, D]`` whose ids are ``ids``."""
        t = self._text[0].transformer
        prompts = prompts.to(self.dtype)
        if self.family in ("roberta", "xlm-roberta"):
            positions = t.embeddings.create_position_ids_from_input_ids(ids, t.embeddings.padding_idx)
            return t.embeddings(inputs_embeds=prompts, position_ids=positions)
        if self.family == "mt5":
            return t.dropout(prompts)
        # m2m_100: sinusoidal positions of the ids, as the model's forward on input_ids
        x = prompts + t.embed_positions(ids, prompts).to(prompts.device)
        return nn.functional.dropout(x, p=t.dropout, training=t.training)

    def _layers(self) -> list:
        t = self._text[0].transformer
        return list(t.encoder.layer if self.family in ("roberta", "xlm-roberta") else
                    t.block if self.family == "mt5" else t.layers)

    def _encode(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor, n_prompted: int, step) -> torch.Tensor:
        """The model's forward on ``prompts [C, L, D]``; every layer through ``step(j, layer, x, run)``,
        which returns the layer's output, ``run(x)`` running the layer on hidden states ``x``."""
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        text = self._text[0]
        t, config = text.transformer, text.config
        ids = tokenized_prompts.to(prompts.device)
        mask = (ids != config.pad_token_id).long()  # HFTextEncoder.forward
        pooler_output = None
        x = self._embedding_stage(prompts, ids)
        attn = create_bidirectional_mask(config=t.config, inputs_embeds=x, attention_mask=mask)
        layers = self._layers()
        if n_prompted > len(layers):
            raise ValueError(f"{n_prompted} layer prompts for a text tower of {len(layers)} layers")
        position_bias = None
        for j, layer in enumerate(layers):
            if self.family == "mt5":  # block 0 computes the relative position bias (mask added) for all
                def run(h, layer=layer):
                    nonlocal position_bias
                    h, position_bias, _ = layer(h, attn, position_bias)
                    return h
            else:
                def run(h, layer=layer):
                    return layer(h, attn)
            x = step(j, layer, x, run)
        if self.family in ("roberta", "xlm-roberta"):
            pooler_output = t.pooler(x) if t.pooler is not None else None
        elif self.family == "mt5":
            x = t.dropout(t.final_layer_norm(x))
        else:
            x = t.layer_norm(x)
        # the model's output type: open_clip's ClsPooler reads pooler_output from this class only
        out = BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=x, pooler_output=pooler_output)
        return text.proj(text.pooler(out, mask))


class ReferenceHFMaPLeTextEncoder(ReferenceHFTextEncoder):
    """MaPLe's ``TextEncoder`` on a Hugging Face tower: ``deeper[i]`` replaces the context rows at the
    input of layer ``i + 1`` (the original's counter over ``compound_prompts_deeper_text``)."""

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor,
                compound_prompts_deeper_text: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        return super().forward(prompts, tokenized_prompts, [None, *compound_prompts_deeper_text])


class _IVLPLayer(nn.Module):
    """The original IVLP block's own prompt: ``VPT_shallow [n_ctx, width]`` (N(0, 0.02)) when prompted."""

    def __init__(self, width: int, n_ctx: int, add_prompt: bool):
        super().__init__()
        self.add_prompt = add_prompt
        if add_prompt:
            ctx_vectors = torch.empty(n_ctx, width)
            nn.init.normal_(ctx_vectors, std=0.02)
            self.VPT_shallow = nn.Parameter(ctx_vectors)


class ReferenceHFIVLPTextEncoder(ReferenceHFTextEncoder):
    """The IVLP text tower (PromptSRC) on a Hugging Face tower: layers ``1 .. depth-1`` replace the
    context rows with their own ``VPT_shallow``, under the original's names
    (``transformer.resblocks.<j>.VPT_shallow``)."""

    def __init__(self, model: nn.Module, n_ctx: int, prompt_depth: int, start: int = 1):
        super().__init__(model, n_ctx, start)
        width = model.text.transformer.get_input_embeddings().weight.shape[1]
        n_layers = len(encoder_layers(model.text.transformer))
        # as the original: layer 0's prompts are the input context, never a block's own
        self.transformer = _Transformer(nn.ModuleList(
            [_IVLPLayer(width, n_ctx, add_prompt=0 < j < prompt_depth) for j in range(n_layers)]))

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        rows = [layer.VPT_shallow if layer.add_prompt else None for layer in self.transformer.resblocks]
        return super().forward(prompts, tokenized_prompts, rows)


# per family: the layer's pre-attention norm (None: post-LN) and the q/k/v projections, by attribute path
_QKV = {
    "roberta": (None, "attention.self", ("query", "key", "value")),
    "xlm-roberta": (None, "attention.self", ("query", "key", "value")),
    "mt5": ("layer.0.layer_norm", "layer.0.SelfAttention", ("q", "k", "v")),
    "m2m_100": ("self_attn_layer_norm", "self_attn", ("q_proj", "k_proj", "v_proj")),
}


class _WrittenProjection(nn.Module):
    """A projection whose output ``[C, L, H*d]`` has rows ``start .. start+M-1`` replaced by ``rows [M, H*d]``."""

    def __init__(self, projection: nn.Module, rows: torch.Tensor, start: int):
        super().__init__()
        self.projection, self.rows, self.start = projection, rows, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.projection(x)
        rows = self.rows.to(y.dtype).expand(y.shape[0], -1, -1)
        return torch.cat([y[:, :self.start], rows, y[:, self.start + rows.shape[1]:]], dim=1)


class ReferenceHFRPPTextEncoder(ReferenceHFTextEncoder):
    """``(prompts [C, L, D], ids [C, L], layer_rows) -> [C, E]``: RPP's text side on a Hugging Face
    tower (see the module docstring). ``prompts`` are the input embeddings with the context rows
    filled (RPP: layer 0's residual rows); ``layer_rows[j] = (q, k, v, residual)`` for the prompted
    layers ``j < J``: ``q``, ``k``, ``v`` ``[M, D]`` (width space) or ``[M, H, d]`` (head space),
    ``q`` / ``residual [M, D]`` may be ``None`` (not written)."""

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor, layer_rows: Sequence) -> torch.Tensor:
        ids = tokenized_prompts.to(prompts.device)
        _, attention_name, names = _QKV[self.family]

        def step(j, layer, x, run):
            if j >= len(layer_rows):
                return run(x)
            q, k, v, residual = layer_rows[j]
            if residual is not None:
                x = (self._embedding_stage(self._replace(prompts, residual), ids) if j == 0
                     else self._replace(x, residual))
            attention = layer.get_submodule(attention_name)
            written = {name: self.projected(j, name, rows, prompts if j == 0 else x, ids)
                       for name, rows in zip(names, (q, k, v)) if rows is not None}
            own = {name: getattr(attention, name) for name in written}
            try:
                for name, rows in written.items():
                    setattr(attention, name, _WrittenProjection(own[name], rows, self.start))
                return run(x)
            finally:
                for name, module in own.items():
                    setattr(attention, name, module)

        return self._encode(prompts, ids, len(layer_rows), step)

    def projected(self, j: int, name: str, rows: torch.Tensor, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``[C, M, H*d]``: what layer ``j``'s projection ``name`` (``_QKV``) writes at the prompt rows
        for prompt rows ``rows``: head-space ``[M, H, d]`` as they are; width-space ``[M, D]`` written
        into the full sequences ``x [C, L, D]`` (layer 0: the input embeddings, then the embedding
        stage of ``ids``), the layer's pre-attention norm and the projection, rows read back."""
        if rows.dim() == 3:
            return rows.flatten(-2).expand(x.shape[0], -1, -1)
        norm_name, attention_name, _ = _QKV[self.family]
        layer = self._layers()[j]
        h = self._embedding_stage(self._replace(x, rows), ids) if j == 0 else self._replace(x, rows)
        h = layer.get_submodule(norm_name)(h) if norm_name is not None else h
        return layer.get_submodule(attention_name).get_submodule(name)(h)[:, self.start:self.start + self.n_ctx]


def maple_text_encoder(model: nn.Module, n_ctx: int, start: int = 1) -> nn.Module:
    """MaPLe's text encoder for ``model``'s text tower: open_clip's (:mod:`.deep`) or a Hugging Face one."""
    cls = ReferenceHFMaPLeTextEncoder if is_hf_text(model) else ReferenceMaPLeTextEncoder
    return cls(model, n_ctx, start=start)


def ivlp_text_encoder(model: nn.Module, n_ctx: int, prompt_depth: int, start: int = 1) -> nn.Module:
    """IVLP's text encoder (PromptSRC) for ``model``'s text tower: open_clip's or a Hugging Face one."""
    cls = ReferenceHFIVLPTextEncoder if is_hf_text(model) else ReferenceIVLPTextEncoder
    return cls(model, n_ctx, prompt_depth, start=start)
