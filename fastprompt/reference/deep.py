"""Literal deep-prompt encoders of MaPLe and IVLP (PromptSRC, VPT-deep) on open_clip towers.

Sources followed: muzairkhattak/multimodal-prompt-learning @ 69bce21 ``clip/model.py``
(``ResidualAttentionBlock_MaPLe``, ``ResidualAttentionBlock_IVLP``, ``VisionTransformer``,
``VisionTransformer_MaPLe``, ``Transformer``) and ``trainers/maple.py`` (``TextEncoder``); the
copy in muzairkhattak/PromptSRC @ bb95c77 ``clip/model.py`` is the same code.

The original puts the prompt replacement *inside* each residual block. Here every open_clip block
is wrapped in a module that does exactly what the original block does before its attention:

* **MaPLe** (``ReferenceMaPLeBlock``): the block receives ``[x, deeper_prompts, counter]``; every
  block but the first, while ``counter < len(deeper_prompts)``, drops the rows of the previous
  layer's prompts and puts ``deeper_prompts[counter]`` in their place, then increments the counter.
  Text: rows ``1 .. n_ctx`` (after SOT) are replaced; vision: the **last** ``n_ctx`` rows. Blocks
  after the last prompted one keep whatever the prompt rows hold (the outputs propagate).
* **IVLP** (``ReferenceIVLPBlock``): blocks ``1 .. depth-1`` own a ``VPT_shallow`` parameter
  ``[n_ctx, width]`` (N(0, 0.02)) that replaces the same rows; block 0 and blocks ``>= depth`` have
  none.
* The vision towers append the layer-0 prompts after the positional embedding (no positional
  embedding for them) and apply ``ln_pre`` to all tokens; pooling is ``ln_post(x[:, 0]) @ proj``
  (open_clip's own pooling where the tower's differs: :func:`~.vision.pool_image`).
  Text prompts get positional embeddings only at layer 0 (they are part of the input embeddings);
  the text context rows start where the tokenizer puts text (row 1 after CLIP's [SOT], row 0 for
  mT5's tokenizer), and the text is pooled as the tower pools it (:func:`~.text_encoder.pool_text`:
  CLIP's EOT row, ViT-L-14-worldwide's first EOS).

Differences that come from open_clip or from running in fp32, not from a change of semantics:

* hidden states stay batch-first ``[N, L, D]`` (the original permutes to ``[L, N, D]``; the row
  replacement is the same); a block built with ``batch_first=False`` gets a transposed input;
* the text blocks get the tower's own mask (:func:`~.text_encoder.text_inputs`): open_clip's causal
  ``model.attn_mask``, with the key-padding / CLS mask where the tower builds one, or none for a
  bidirectional tower (SigLIP, CLIPA, MobileCLIP-S), whose every row then attends to every row of
  its full 64/77-token sequence, the prompt rows included (they are written into rows
  ``start .. start+n_ctx-1`` of each layer's input as on a causal tower); CoCa's CLS is appended
  after the prompt and pooled, as ``TextTransformer`` does;
* the original's hard ``.half()`` casts of inserted prompts are not reproduced: prompts are cast
  to the activations' dtype (a no-op in fp32).

Module and parameter names follow the original, so a reference model's ``state_dict()`` has the
original checkpoint's prompt keys (``image_encoder.VPT``,
``image_encoder.transformer.resblocks.3.VPT_shallow``, ``text_encoder.transformer.resblocks.1.VPT_shallow``).
The wrapped frozen open_clip block sits under ``.block`` (the original's keys have no ``.block``;
loaders drop frozen CLIP weights anyway).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from .text_encoder import _model_dtype, pool_tower_output, project_text, text_inputs, text_tower
from .vision import _check_tower, _embed, pool_image

__all__ = ["ReferenceMaPLeBlock", "ReferenceIVLPBlock", "ReferenceMaPLeTextEncoder", "ReferenceMaPLeImageEncoder",
           "ReferenceIVLPTextEncoder", "ReferenceIVLPImageEncoder", "project_text"]


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor], batch_first: bool) -> torch.Tensor:
    """One open_clip residual block on a batch-first ``x [N, L, D]``."""
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)


def _replace_prompt_rows(x: torch.Tensor, prompts: torch.Tensor, n_ctx: int, text_layer: bool,
                         start: int = 1) -> torch.Tensor:
    """Drop the previous layer's prompt rows of ``x [N, L, D]`` and insert ``prompts [n_ctx, D]``;
    text: the context rows ``start .. start+n_ctx-1`` (``start``: the tokenizer's leading special
    tokens, :func:`~fastprompt.learners.prompts.text_start`)."""
    context = prompts.expand(x.shape[0], -1, -1).to(x.dtype)
    if text_layer:
        # [SOT][prompts][rest] (CLIP: rows 1 .. n_ctx); [prompts][rest] where the tokenizer writes no
        # start token (mT5's, SigLIP's): the original's rows 1 .. n_ctx are CLIP's context rows
        return torch.cat([x[:, :start, :], context, x[:, start + n_ctx:, :]], dim=1)
    # vision: the prompts are the last n_ctx rows
    return torch.cat([x[:, :x.shape[1] - n_ctx, :], context], dim=1)


class _Transformer(nn.Module):
    """Holds ``resblocks`` so parameter names read ``transformer.resblocks.<i>...`` as in the original."""

    def __init__(self, resblocks: nn.Module):
        super().__init__()
        self.resblocks = resblocks


class ReferenceMaPLeBlock(nn.Module):
    """``ResidualAttentionBlock_MaPLe`` around an open_clip block: ``[x, deeper, counter] -> same``."""

    def __init__(self, block: nn.Module, n_ctx: int, text_layer: bool, index: int,
                 attn_mask: Optional[torch.Tensor] = None, batch_first: bool = True, start: int = 1):
        super().__init__()
        self.block = block
        self.start = start
        self.compound_prompt_nctx = n_ctx
        self.text_layer = text_layer
        self.first_layer = index == 0
        self.batch_first = batch_first
        if attn_mask is not None:
            self.register_buffer("attn_mask", attn_mask, persistent=False)
        else:
            self.attn_mask = None

    def forward(self, inputs: List):
        # the original's [x, deeper, counter]; a 4th entry, where given, is this batch's attention mask
        # (open_clip's padding / CLS mask, built from the token ids), used in place of the block's own
        x, compound_prompts_deeper, counter = inputs[:3]
        attn_mask = inputs[3] if len(inputs) > 3 else self.attn_mask
        if not self.first_layer and len(compound_prompts_deeper) > 0:
            if not counter > len(compound_prompts_deeper) - 1:
                x = _replace_prompt_rows(x, compound_prompts_deeper[counter], self.compound_prompt_nctx,
                                         self.text_layer, self.start)
                counter += 1
        x = _run_block(self.block, x, attn_mask, self.batch_first)
        return [x, compound_prompts_deeper, counter, *inputs[3:]]


class ReferenceIVLPBlock(nn.Module):
    """``ResidualAttentionBlock_IVLP`` around an open_clip block; owns ``VPT_shallow`` when prompted."""

    def __init__(self, block: nn.Module, width: int, n_ctx: int, add_prompt: bool, text_layer: bool, index: int,
                 attn_mask: Optional[torch.Tensor] = None, batch_first: bool = True, start: int = 1):
        super().__init__()
        self.block = block
        self.start = start
        self.text_layer = text_layer
        self.batch_first = batch_first
        if attn_mask is not None:
            self.register_buffer("attn_mask", attn_mask, persistent=False)
        else:
            self.attn_mask = None
        # As the original: layer 0's prompts are added by the tower itself, never by the block.
        self.add_prompt = add_prompt if index != 0 else False
        if self.add_prompt:
            self.n_ctx = n_ctx
            ctx_vectors = torch.empty(n_ctx, width)
            nn.init.normal_(ctx_vectors, std=0.02)
            self.VPT_shallow = nn.Parameter(ctx_vectors)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``attn_mask``: this batch's mask (open_clip's padding / CLS mask, causal part included)
        in place of the block's own causal one; ``None`` keeps the block's own."""
        if self.add_prompt:
            x = _replace_prompt_rows(x, self.VPT_shallow, self.n_ctx, self.text_layer, self.start)
        return _run_block(self.block, x, self.attn_mask if attn_mask is None else attn_mask, self.batch_first)


class _TextEncoderBase(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        holder = text_tower(model)
        self._holder = [holder]  # not a submodule: its modules are registered below or are the blocks
        self.positional_embedding = holder.positional_embedding
        self.ln_final = holder.ln_final
        self.text_projection = holder.text_projection
        self.register_buffer("attn_mask", holder.attn_mask, persistent=False)
        self.dtype = _model_dtype(holder)
        self._blocks = list(holder.transformer.resblocks)  # a plain list: registered once, under transformer.resblocks
        self._batch_first = getattr(holder.transformer, "batch_first", True)

    def _inputs(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor):
        """``(x, attn_mask)``: the tower's own layer-0 input (CoCa's CLS appended, positions added)
        and mask (causal, padding / CLS, or none for a bidirectional tower): :func:`text_inputs`."""
        return text_inputs(self._holder[0], prompts, tokenized_prompts)

    def _pool(self, x: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        # the original takes the EOT row (the highest id, CLIP's tokenizer); the tower's own pooling
        # is the same row there and the right one elsewhere (ViT-L-14-worldwide pools its first EOS,
        # SigLIP and CLIPA the last row, CoCa its appended CLS)
        return pool_tower_output(self._holder[0], x, tokenized_prompts)


class ReferenceMaPLeTextEncoder(_TextEncoderBase):
    """MaPLe's ``TextEncoder``: ``(prompts [C, 77, D], ids [C, 77], deeper text prompts) -> [C, E]``."""

    def __init__(self, model: nn.Module, n_ctx: int, start: int = 1):
        super().__init__(model)
        self.transformer = _Transformer(nn.Sequential(*[
            ReferenceMaPLeBlock(b, n_ctx, text_layer=True, index=i, attn_mask=self.attn_mask,
                                batch_first=self._batch_first, start=start)
            for i, b in enumerate(self._blocks)]))

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor,
                compound_prompts_deeper_text: Sequence[torch.Tensor]) -> torch.Tensor:
        x, attn_mask = self._inputs(prompts, tokenized_prompts)
        # a list, since nn.Sequential passes one argument; the third entry is the depth counter, the
        # fourth the batch's attention mask
        outputs = self.transformer.resblocks([x, compound_prompts_deeper_text, 0, attn_mask])
        return self._pool(outputs[0], tokenized_prompts)


class ReferenceIVLPTextEncoder(_TextEncoderBase):
    """The IVLP text tower (PromptSRC): blocks ``1 .. depth-1`` replace rows ``1 .. n_ctx`` with their own prompts."""

    def __init__(self, model: nn.Module, n_ctx: int, prompt_depth: int, start: int = 1):
        super().__init__(model)
        width = self.ln_final.weight.shape[0]
        self.transformer = _Transformer(nn.Sequential(*[
            ReferenceIVLPBlock(b, width, n_ctx, add_prompt=prompt_depth > i, text_layer=True, index=i,
                               attn_mask=self.attn_mask, batch_first=self._batch_first, start=start)
            for i, b in enumerate(self._blocks)]))

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x, attn_mask = self._inputs(prompts, tokenized_prompts)
        for block in self.transformer.resblocks:
            x = block(x, attn_mask)
        return self._pool(x, tokenized_prompts)


class _ImageEncoderBase(nn.Module):
    def __init__(self, visual: nn.Module):
        super().__init__()
        _check_tower(visual)
        self.visual = visual  # frozen embedding, ln_pre, ln_post, proj (shared, not copied)
        self._batch_first = getattr(visual.transformer, "batch_first", True)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return _embed(self.visual, images.to(self.visual.conv1.weight.dtype))

    def _pool(self, x: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
        # the original: ln_post(x[:, 0]) @ proj; open_clip's own pooling otherwise (CLIPA: average
        # of the patch tokens, ln_post after the pool)
        return pool_image(self.visual, x, n_image_tokens)


class ReferenceMaPLeImageEncoder(_ImageEncoderBase):
    """``VisionTransformer_MaPLe``: ``(images, shared_ctx [n_ctx, W], deeper vision prompts) -> [B, E]``."""

    def __init__(self, visual: nn.Module, n_ctx: int):
        super().__init__(visual)
        self.transformer = _Transformer(nn.Sequential(*[
            ReferenceMaPLeBlock(b, n_ctx, text_layer=False, index=i, batch_first=self._batch_first)
            for i, b in enumerate(visual.transformer.resblocks)]))

    def forward(self, images: torch.Tensor, shared_ctx: torch.Tensor,
                compound_deeper_prompts: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self._embed(images)
        n_image_tokens = x.shape[1]
        # layer-0 prompts: appended after the positional embedding, before ln_pre
        visual_ctx = shared_ctx.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([x, visual_ctx], dim=1)
        x = self.visual.ln_pre(x)
        outputs = self.transformer.resblocks([x, compound_deeper_prompts, 0])
        return self._pool(outputs[0], n_image_tokens)


class ReferenceIVLPImageEncoder(_ImageEncoderBase):
    """IVLP's ``VisionTransformer`` (PromptSRC, VPT-deep): ``VPT`` appended before ``ln_pre``, blocks
    ``1 .. depth-1`` replace the last ``n_ctx`` rows with their own ``VPT_shallow``. ``depth = 0``: no prompts."""

    def __init__(self, visual: nn.Module, n_ctx: int, prompt_depth: int):
        super().__init__(visual)
        width = visual.conv1.out_channels
        self.VPT_shallow = prompt_depth != 0
        if self.VPT_shallow:
            ctx_vectors = torch.empty(n_ctx, width)
            nn.init.normal_(ctx_vectors, std=0.02)
            self.VPT = nn.Parameter(ctx_vectors)
        self.transformer = _Transformer(nn.Sequential(*[
            ReferenceIVLPBlock(b, width, n_ctx, add_prompt=prompt_depth > i, text_layer=False, index=i,
                               batch_first=self._batch_first)
            for i, b in enumerate(visual.transformer.resblocks)]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self._embed(images)
        n_image_tokens = x.shape[1]
        if self.VPT_shallow:
            visual_ctx = self.VPT.expand(x.shape[0], -1, -1).to(x.dtype)
            x = torch.cat([x, visual_ctx], dim=1)
        x = self.visual.ln_pre(x)
        x = self.transformer.resblocks(x)
        return self._pool(x, n_image_tokens)
