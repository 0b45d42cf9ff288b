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
Hugging Face text tower. RPP's unshared q/k/v prompts have no reference here: fastprompt refuses
them on these towers (``fastprompt.towers.hf_text.RPP_TEXT_REFUSAL``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..towers.hf_text import encoder_layers
from .deep import ReferenceIVLPTextEncoder, ReferenceMaPLeTextEncoder, _Transformer
from .text_encoder import text_tower

__all__ = ["ReferenceHFTextEncoder", "ReferenceHFMaPLeTextEncoder", "ReferenceHFIVLPTextEncoder", "prompt_holder",
           "maple_text_encoder", "ivlp_text_encoder", "is_hf_text"]


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
        from transformers.masking_utils import create_bidirectional_mask
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        text = self._text[0]
        t, config = text.transformer, text.config
        ids = tokenized_prompts.to(prompts.device)
        mask = (ids != config.pad_token_id).long()  # HFTextEncoder.forward
        prompts = prompts.to(self.dtype)
        pooler_output = None
        if self.family in ("roberta", "xlm-roberta"):
            positions = t.embeddings.create_position_ids_from_input_ids(ids, t.embeddings.padding_idx)
            x = t.embeddings(inputs_embeds=prompts, position_ids=positions)
            attn = create_bidirectional_mask(config=t.config, inputs_embeds=x, attention_mask=mask)
            layers = list(t.encoder.layer)
        elif self.family == "mt5":
            attn = create_bidirectional_mask(config=t.config, inputs_embeds=prompts, attention_mask=mask)
            x = t.dropout(prompts)
            layers = list(t.block)
        else:  # m2m_100: sinusoidal positions of the ids, as the model's forward on input_ids
            x = prompts + t.embed_positions(ids, prompts).to(prompts.device)
            x = nn.functional.dropout(x, p=t.dropout, training=t.training)
            attn = create_bidirectional_mask(config=t.config, inputs_embeds=prompts, attention_mask=mask)
            layers = list(t.layers)
        if len(layer_prompts) > len(layers):
            raise ValueError(f"{len(layer_prompts)} layer prompts for a text tower of {len(layers)} layers")
        position_bias = None
        for j, layer in enumerate(layers):
            x = self._replace(x, layer_prompts[j] if j < len(layer_prompts) else None)
            if self.family == "mt5":  # block 0 computes the relative position bias (mask added) for all
                x, position_bias, _ = layer(x, attn, position_bias)
            else:
                x = layer(x, attn)
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


def maple_text_encoder(model: nn.Module, n_ctx: int, start: int = 1) -> nn.Module:
    """MaPLe's text encoder for ``model``'s text tower: open_clip's (:mod:`.deep`) or a Hugging Face one."""
    cls = ReferenceHFMaPLeTextEncoder if is_hf_text(model) else ReferenceMaPLeTextEncoder
    return cls(model, n_ctx, start=start)


def ivlp_text_encoder(model: nn.Module, n_ctx: int, prompt_depth: int, start: int = 1) -> nn.Module:
    """IVLP's text encoder (PromptSRC) for ``model``'s text tower: open_clip's or a Hugging Face one."""
    cls = ReferenceHFIVLPTextEncoder if is_hf_text(model) else ReferenceIVLPTextEncoder
    return cls(model, n_ctx, prompt_depth, start=start)
