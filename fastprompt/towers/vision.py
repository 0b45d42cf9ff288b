"""The functional CLIP vision tower with batch-shared deep prompts.

Deep vision prompts (VPT-deep, MaPLe, PromptSRC/IVLP) follow the original "replace, then
propagate" semantics: prompt rows ``P_0`` are appended to the tokens before ``ln_pre``; before
each layer ``1 <= j < J`` the prompt rows are replaced by ``P_j``; the outputs of layer ``J-1``
propagate through the remaining layers.

The literal implementation concatenates B copies of the prompts to the sequence in every
layer. Here a prompt row whose output is discarded (every prompted layer but the last) only
contributes keys and values, and those depend on the prompt alone, so they are computed once
per layer (``[1, M, H, d]``) and read by every image as the op's G = 1 prompt block. Only at the
last prompted layer, whose prompt outputs survive, do the prompt rows become ordinary
per-image tokens. Non-causal attention does not care where in the sequence the rows sit, so
this is exact.

Pooling reads the image's own ``T`` rows only, through the tower's own modules: the prompt rows'
outputs are discarded, as in VPT and MaPLe, where only the class token is read. A ``tok`` pool
reads row 0; an ``avg`` pool (CLIPA) averages the patch rows ``1 .. T-1``, the rows open_clip's own
pool averages; an attentional pooler (CoCa's ``attn_pool``) lets its queries attend over exactly
the ``T`` rows the model's pooler attends over, then ``ln_post`` and the ``pool_type`` over the
queries' outputs (the contrastive embedding: query 0's).
:class:`~fastprompt.towers.timm_vision.TimmVisionTower` keeps the same rule with timm's poolers
(token, avg, ``map``).

Since no prompt row is pooled, the last layer computes only the rows the pool reads
(:attr:`VisionTower.pooled_rows`), every other row and the prompt block lending keys and values:
row 0 alone under a ``tok`` pool; the ``T`` image rows under an ``avg`` pool or an attentional
pooler, which read every image row (there the class-token shortcut would change the answer).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..ops import declare_index_range, prompt_attention
from .blocks import block_views
from .image_input import check_image_batch, image_size_of
from .prompt_rows import QKVPrompt


def image_groups(batch: int, device) -> torch.Tensor:
    """``[B]`` group map ``0..B-1`` (image ``b`` reads prompt block ``b``), its range declared so
    that the op checks it without reading the tensor back (a device sync on a GPU)."""
    return declare_index_range(torch.arange(batch, device=device), 0, batch - 1)


def is_open_clip_vit(visual: nn.Module) -> bool:
    """open_clip's ``VisionTransformer`` (patch embedding ``conv1``, ``transformer`` blocks)."""
    return hasattr(visual, "conv1") and hasattr(visual, "transformer")


def vit_problem(visual: nn.Module) -> Optional[str]:
    """``None`` when :class:`VisionTower` can run ``visual`` (open_clip's ``VisionTransformer`` with
    ``tok`` or ``avg`` pooling, after CoCa's attentional pooler or without one), else why not, as a
    phrase ("a TimmModel (timm ...)")."""
    if not is_open_clip_vit(visual):
        return f"a {type(visual).__name__}, not open_clip's VisionTransformer"
    if getattr(visual, "attn_pool_contrastive", None) is not None:
        # attentional_pool='parallel' / 'cascade': open_clip marks it untested, no architecture uses it,
        # and its pooled output keeps a query axis ([B, 1, E]), not one embedding per image
        return (f"an open_clip ViT with a {visual.attn_pool_type!r} pair of attentional poolers (deep prompts take "
                "CoCa's single pooler, attentional_pool=True)")
    if visual.pool_type not in ("tok", "avg"):
        return f"an open_clip ViT with pool_type {visual.pool_type!r} (deep prompts take 'tok' or 'avg')"
    return None


class VisionTower:
    """Functional view of an open_clip ``VisionTransformer`` (no parameter copies)."""

    prompted = True  # takes deep prompts (FrozenImageTower does not)

    def __init__(self, visual: nn.Module, backend: str = "auto"):
        problem = vit_problem(visual)
        if problem is not None:
            raise ValueError(f"VisionTower runs open_clip's VisionTransformer; this image tower is {problem}: "
                             "use fastprompt.towers.image_tower, which runs any other tower frozen as it is")
        self.visual = visual
        self.blocks = block_views(visual.transformer)
        self.backend = backend
        self.width = self.blocks[0].width
        self.heads = self.blocks[0].heads
        self.layers = len(self.blocks)
        self.output_dim = int(visual.proj.shape[1]) if visual.proj is not None else self.width

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.transformer.get_cast_dtype()

    @property
    def pools_first_row(self) -> bool:
        """Whether the features read only row 0 (the class token) of the last layer: a ``tok`` pool
        without an attentional pooler (CoCa's pooler reads every image row, whatever its
        ``pool_type`` then takes of the pooler's queries)."""
        return getattr(self.visual, "attn_pool", None) is None and self.visual.pool_type == "tok"

    def pooled_rows(self, n_image_tokens: int) -> int:
        """How many leading rows of the last layer :meth:`pool` reads: 1 (:attr:`pools_first_row`),
        else the ``n_image_tokens`` image rows (never a prompt row)."""
        return 1 if self.pools_first_row else n_image_tokens

    def begin(self, images: torch.Tensor):
        """``(x, enter, blocks)``: the hidden states entering layer 0 ``[B, T, W]`` (the model's own
        ``T`` image tokens), the map ``enter`` of layer-0 prompt rows ``[M, W] -> [M, W]`` (what
        the tokens passed through between the embedding and layer 0: ``ln_pre``), and the block
        views for these images."""
        v = self.visual
        x = v.ln_pre(self.embed(images))
        return x, (lambda rows: v.ln_pre(rows.to(x.dtype))), self.blocks

    @property
    def image_size(self) -> tuple:
        """``(H, W)`` the tower's positional embedding was built for."""
        return image_size_of(self.visual)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the expected ``[B, 3, H, W]`` for anything else (shapes only)."""
        check_image_batch(images, self.visual.conv1.in_channels, self.image_size)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class + positional embeddings, patch dropout; before ``ln_pre``: ``[B, 1+n, W]``."""
        self.check_images(images)
        v = self.visual
        x = v.conv1(images.to(self.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    def forward(self, images: torch.Tensor, deep_prompts: Optional[Sequence[torch.Tensor]] = None,
                qkv_prompts: Optional[Sequence[QKVPrompt]] = None) -> torch.Tensor:
        """Image features ``[B, E]`` (not normalised).

        Args:
            images: ``[B, 3, H, W]`` preprocessed images.
            deep_prompts: J tensors ``[M, W]`` (J <= layers): ``deep_prompts[0]`` is appended before
                ``ln_pre``; ``deep_prompts[j]`` replaces the prompt rows before layer ``j``; the
                rows leaving layer ``J-1`` propagate. ``None`` or empty: plain CLIP.
            qkv_prompts: instead of ``deep_prompts``, J :class:`QKVPrompt` with separate query,
                key and value rows per layer (RPP); same replace-then-propagate semantics, see
                :meth:`forward_qkv_prompts`.
        """
        if qkv_prompts is not None:
            if deep_prompts:
                raise ValueError("pass either deep_prompts or qkv_prompts, not both")
            return self.forward_qkv_prompts(images, qkv_prompts)
        deep_prompts = list(deep_prompts or [])
        n_prompted = len(deep_prompts)
        if n_prompted > self.layers:
            raise ValueError(f"deep_prompts has {n_prompted} layers but the vision tower has {self.layers}")
        for j, p in enumerate(deep_prompts):
            if p.dim() != 2 or p.shape[1] != self.width or p.shape[0] != deep_prompts[0].shape[0]:
                raise ValueError(f"deep_prompts[{j}] must have shape [M, {self.width}] with the same M in every "
                                 f"layer, got {tuple(p.shape)}")
        x, enter, blocks = self.begin(images)
        batch, n_image_tokens = x.shape[0], x.shape[1]
        prompts = None
        if n_prompted:
            prompts = enter(deep_prompts[0])  # row-wise (ln_pre): applied once, not B times
        for layer, blk in enumerate(blocks):
            if layer < n_prompted:
                rows = prompts if layer == 0 else deep_prompts[layer].to(x.dtype)
                if layer < n_prompted - 1:
                    # Outputs discarded: the prompt rows only lend keys/values, shared by the batch.
                    pk, pv = blk.kv(rows)
                    x = blk.forward_dense(x, pk=pk[None], pv=pv[None], backend=self.backend)
                    continue
                # Last prompted layer: these rows' outputs survive, so they become real tokens.
                x = torch.cat([x, rows.expand(batch, *rows.shape)], dim=1)
            if layer == self.layers - 1:
                x = self._finish_last_layer(blk, x, n_image_tokens)
            else:
                x = blk.forward_dense(x, backend=self.backend)
        return self.pool(x, n_image_tokens)

    __call__ = forward

    def forward_qkv_prompts(self, images: torch.Tensor, prompts: Sequence[QKVPrompt]) -> torch.Tensor:
        """Image features ``[B, E]`` with unshared query/key/value prompts (RPP).

        ``prompts[j]`` holds layer ``j``'s rows (J <= layers). The rows sit after the image
        tokens, as appended deep prompts do, and follow the same replace-then-propagate
        semantics:

        * layer 0: width-space rows (q, k, v and ``residual``) enter through ``ln_pre``, like
          ``deep_prompts[0]``; head-space rows skip it;
        * layers ``j < J-1``: the rows' outputs are discarded (layer ``j+1`` replaces them), so they
          only lend keys and values: computed once per layer (``[1, M, H, d]``) and read by every
          image as the op's G = 1 prompt block. Their queries and residual rows are never read
          (their gradient is exactly zero);
        * layer ``J-1``: the rows' outputs survive, so the rows become per-image tokens: query
          from ``q``, key/value from ``k``/``v``, residual stream from ``residual``; from layer
          ``J`` on they are ordinary tokens. When ``J-1`` is the last layer their outputs are not
          pooled, so there too they only lend keys and values.
        """
        prompts = list(prompts)
        n_prompted = len(prompts)
        if n_prompted == 0:
            return self.forward(images)
        if n_prompted > self.layers:
            raise ValueError(f"qkv_prompts has {n_prompted} layers but the vision tower has {self.layers}")
        for j, p in enumerate(prompts):
            if not isinstance(p, QKVPrompt):
                raise ValueError(f"qkv_prompts[{j}] must be a QKVPrompt, got {type(p).__name__}")
            p.check(f"qkv_prompts[{j}]", self.width, self.heads, prompts[0].n_rows)
        x, enter, blocks = self.begin(images)
        batch, dtype, n_image_tokens = x.shape[0], x.dtype, x.shape[1]
        for layer, blk in enumerate(blocks):
            last = layer == self.layers - 1
            if layer < n_prompted:
                p = prompts[layer]
                if layer == 0:
                    p = p.map_width_rows(enter)
                survive = layer == n_prompted - 1 and not last
                q_p, k_p, v_p = blk.prompt_heads(p, need_q=survive, dtype=dtype)
                if not survive:
                    if last:
                        x = self._finish_last_layer(blk, x, n_image_tokens, k_p, v_p)
                    else:
                        x = blk.forward_dense(x, pk=k_p[None], pv=v_p[None], backend=self.backend)
                    continue
                # The rows' outputs survive: they become per-image tokens from here on.
                if p.residual is None:
                    raise ValueError(f"qkv_prompts[{layer}].residual is needed: layer {layer} is the last prompted "
                                     "layer, whose prompt outputs propagate")
                q, k, vv = blk.qkv(x)
                rows = p.residual.to(dtype)
                expand = lambda t: t.expand(batch, *t.shape)  # noqa: E731
                q, k, vv = (torch.cat([a, expand(b)], dim=1) for a, b in ((q, q_p), (k, k_p), (vv, v_p)))
                o, _ = prompt_attention(q, k, vv, scale=blk.scale, return_lse=False, backend=self.backend)
                x = torch.cat([x, expand(rows)], dim=1)
                x = blk.add_mlp(blk.add_attention(x, blk.attention_output(o)))
            elif last:
                x = self._finish_last_layer(blk, x, n_image_tokens)
            else:
                x = blk.forward_dense(x, backend=self.backend)
        return self.pool(x, n_image_tokens)

    def _finish_last_layer(self, blk, x: torch.Tensor, n_image_tokens: int, pk: Optional[torch.Tensor] = None,
                           pv: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The last block on ``x [B, L, W]``, computing only the ``n = pooled_rows(n_image_tokens)``
        rows that are pooled: ``[B, n, W]``. The rows after them (patch rows under a ``tok`` pool,
        prompt rows) and the batch-shared prompt keys/values ``pk/pv [M, H, d]`` only lend keys and
        values."""
        n = self.pooled_rows(n_image_tokens)
        if n == x.shape[1]:  # every row is pooled (no prompt row reached the last layer)
            if pk is None:
                return blk.forward_dense(x, backend=self.backend)
            return blk.forward_dense(x, pk=pk[None], pv=pv[None], backend=self.backend)
        batch = x.shape[0]
        q, k, v = blk.qkv(x)
        rest_k, rest_v = k[:, n:], v[:, n:]
        if pk is not None:
            rest_k = torch.cat([rest_k, pk.expand(batch, *pk.shape)], dim=1)
            rest_v = torch.cat([rest_v, pv.expand(batch, *pv.shape)], dim=1)
        o, _ = prompt_attention(q[:, :n], k[:, :n], v[:, :n], rest_k, rest_v, group=image_groups(batch, x.device),
                                scale=blk.scale, return_lse=False, backend=self.backend)
        return blk.add_mlp(blk.add_attention(x[:, :n], blk.attention_output(o)))

    def pool(self, x: torch.Tensor, n_image_tokens: int) -> torch.Tensor:
        """open_clip's pooling and projection of the last hidden states ``x [B, L, W]`` whose first
        ``n_image_tokens`` rows are the image's own (any rows after them are prompt rows, never
        pooled; with :attr:`pools_first_row`, ``x`` may hold row 0 only): ``[B, E]``.

        ``ln_post`` before the pool, or after it (``final_ln_after_pool``); with an attentional
        pooler (CoCa), ``attn_pool`` over the image rows, ``ln_post`` on its queries' outputs and
        the pool over those (open_clip ignores ``final_ln_after_pool`` there); then ``@ proj``."""
        v = self.visual
        x = x[:, :n_image_tokens]
        if getattr(v, "attn_pool", None) is not None:
            pooled = self._global_pool(v.ln_post(v.attn_pool(x)))
        elif v.final_ln_after_pool:
            pooled = v.ln_post(self._global_pool(x))
        else:
            pooled = self._global_pool(v.ln_post(x))
        return pooled @ v.proj if v.proj is not None else pooled

    def _global_pool(self, x: torch.Tensor) -> torch.Tensor:
        """open_clip's ``pool_type`` over the rows of ``x [B, L, W]`` (the image's rows, or the
        attentional pooler's queries): ``avg`` the mean of rows ``1 ..``, ``tok`` row 0."""
        if self.visual.pool_type == "avg":
            return x[:, 1:].mean(dim=1)
        return x[:, 0]
