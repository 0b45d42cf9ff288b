"""The functional open_clip text tower: prefix-shared, EOT-truncated, packed where that is exact.

Any open_clip ``TextTransformer`` / ``CLIP`` text side: causal or bidirectional (SigLIP,
MobileCLIP-S), pooled at ``argmax``/``eos``/``last``/``first`` or at CoCa's appended CLS, with a
key-padding mask or none, projected by a Parameter, a Linear or nothing. The tower reads its
:class:`~fastprompt.towers.text_semantics.TextSemantics` from the model and encodes every plan in
the layout exact for it (:meth:`TextTower.layout`); the steps below are the causal case, and a
bidirectional tower runs the same loop with every prompt at full length (or packed to its
unmasked tokens), no prefix, ``causal=False``. Pooled rows masked as keys (CoCa's CLS under its
legacy mask) are query-only rows with one more ``prompt_attention`` call per layer.

For a :class:`TextPlan` the tower

1. encodes the shared prefix (``[SOT][ctx...]``) once per group, keeping each layer's keys and
   values,
2. runs only the packed class suffixes (class tokens, ``.``, EOT — truncated after EOT), whose
   attention reads the prefix K/V of their group as the op's prompt block, causal on their own
   tokens,
3. pools the EOT rows through ``ln_final`` and the text projection.

This is exactly CLIP's causal text encoder read at EOT, with none of the rows that cannot reach
an EOT feature computed. Dense layers (LN, projections, MLP) run on the packed ``[T, D]`` rows
and the ``G * P`` prefix rows as one block (deep prompts act on its prefix part);
only attention sees a padded layout, masked with ``seqlens``: the plan's length buckets
(:class:`~fastprompt.towers.text_plan.BucketRule`), one ``prompt_attention`` call each, every
bucket padded only to its own longest sequence and reading the same per-layer prefix K/V block
(``group`` per bucket). The buckets change the layout, not the values: every sequence attends to
exactly its prefix and its own earlier tokens, as in one ``[N, max_len]`` block.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..ops import prompt_attention
from .blocks import block_views
from .prompt_rows import QKVPrompt
from .text_plan import TextPlan, build_text_plan
from .text_semantics import text_semantics


class UnpromptableTextTowerError(ValueError):
    """A learner that puts prompts inside the text tower's layers was given a text tower whose
    attention is bidirectional (SigLIP, CLIPA, MobileCLIP-S): the message names the methods that work."""


def _text_modules(model: nn.Module) -> nn.Module:
    """The module holding the text tower: the CLIP model itself, or ``model.text`` (CustomTextCLIP)."""
    if hasattr(model, "transformer") and hasattr(model, "token_embedding"):
        return model
    text = getattr(model, "text", None)
    if text is not None and hasattr(text, "transformer") and hasattr(text, "token_embedding"):
        return text
    raise ValueError(
        f"{type(model).__name__} has no open_clip ViT-style text tower (token_embedding + transformer); "
        "a Hugging Face text tower (HFTextEncoder) is encoded by fastprompt.towers.hf_text.HFTextTower")


class TextTower:
    """Functional view of an open_clip text tower (no parameter copies).

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` with a causal, argmax-pooled text tower.
        backend: ``prompt_attention`` backend used by every layer.
    """

    def __init__(self, model: nn.Module, backend: str = "auto"):
        text = _text_modules(model)
        # How the tower masks and pools decides which of the plan's savings are exact; every plan
        # the tower encodes is laid out for it (TextPlan.for_semantics).
        self.semantics = text_semantics(text)
        self.text = text
        self.cls_emb = getattr(text, "cls_emb", None)
        self.blocks = block_views(text.transformer)
        self.backend = backend
        self.width = self.blocks[0].width
        self.heads = self.blocks[0].heads
        self.layers = len(self.blocks)
        # The tokenizer's length: open_clip's positional table has one more row when a CLS is appended.
        self.context_length = int(getattr(text, "context_length", None) or text.positional_embedding.shape[0])
        proj = text.text_projection
        if proj is None:
            self.embed_dim = self.width
        elif isinstance(proj, nn.Linear):
            self.embed_dim = proj.out_features
        else:
            self.embed_dim = int(proj.shape[1])

    @property
    def savings(self) -> str:
        """The fast path's savings that are exact for this tower (``TextSemantics.savings``)."""
        return self.semantics.savings

    def layout(self, plan: TextPlan) -> TextPlan:
        """``plan`` laid out for this tower's masking and pooling, on its device (cached)."""
        return plan.for_semantics(self.semantics).to(self.device)

    @property
    def dtype(self) -> torch.dtype:
        return self.text.transformer.get_cast_dtype()

    @property
    def device(self) -> torch.device:
        return self.text.positional_embedding.device

    # ---- embedding assembly ------------------------------------------------------------------
    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Frozen token embeddings in the tower's compute dtype."""
        return self.text.token_embedding(ids).to(self.dtype)

    def embed(self, plan: TextPlan, ctx: Optional[torch.Tensor] = None):
        """Assemble ``(prefix [G, P, D], suffix [T, D])`` input embeddings for ``plan``.

        ``ctx`` is the learnable slot table: ``[S, D]`` shared by all groups, or ``[G, S, D]``
        with one table per group (CoCoOp: per image; SoftCPT: per task). Slot ``k`` fills every
        source ``ctx_source(k)`` of a sequence from its group's table.
        """
        plan = self.layout(plan)
        groups = plan.n_groups
        if ctx is not None:
            if ctx.dim() not in (2, 3) or ctx.shape[-1] != self.width:
                raise ValueError(f"ctx must have shape [S, {self.width}] or [G, S, {self.width}], "
                                 f"got {tuple(ctx.shape)}")
            if ctx.dim() == 3 and ctx.shape[0] != groups:
                raise ValueError(f"ctx has {ctx.shape[0]} groups but the plan has {groups}")
            if ctx.shape[-2] < plan.n_ctx:
                raise ValueError(f"the plan uses {plan.n_ctx} context slots but ctx has {ctx.shape[-2]}")
            ctx = ctx.to(self.dtype)
        elif plan.derived("prefix_ctx_pos").numel() or plan.derived("suffix_ctx_pos").numel():
            raise ValueError("the plan has learnable context slots but no ctx table was given")

        prefix = self.embed_tokens(plan.prefix_src.clamp_min(0))
        prefix = prefix.expand(groups, *prefix.shape)
        pos, slot = plan.derived("prefix_ctx_pos"), plan.derived("prefix_ctx_slot")
        if pos.numel():
            prefix = prefix.clone()
            prefix[:, pos] = ctx[..., slot, :] if ctx.dim() == 3 else ctx[slot].expand(groups, -1, -1)

        suffix = self.embed_tokens(plan.suffix_src.clamp_min(0))
        pos, slot = plan.derived("suffix_ctx_pos"), plan.derived("suffix_ctx_slot")
        if pos.numel():
            suffix = suffix.clone()
            suffix[pos] = ctx[plan.derived("suffix_ctx_group"), slot] if ctx.dim() == 3 else ctx[slot]
        cls = plan.derived("suffix_cls_pos")
        if cls.numel():  # CoCa's appended CLS where it is an ordinary (key) row
            suffix = suffix.clone()
            suffix[cls] = self.cls_emb.to(self.dtype)
        return prefix, suffix

    def _query_rows(self, plan: TextPlan) -> torch.Tensor:
        """``[Q, D]`` input rows (with positions) of the plan's query-only pooled rows: frozen tokens
        (padding) or CoCa's CLS, never learnable context."""
        rows = self.embed_tokens(plan.derived("query_src"))
        cls = plan.derived("query_cls")
        if cls.numel():
            rows = rows.clone()
            rows[cls] = self.cls_emb.to(self.dtype)
        return rows + self.text.positional_embedding.to(self.dtype)[plan.derived("query_pos")]

    # ---- the encoder -------------------------------------------------------------------------
    def encode(self, plan: TextPlan, ctx: Optional[torch.Tensor] = None, **prompts) -> torch.Tensor:
        """Text features ``[N, E]`` (not normalised) of ``plan`` with the learnable context ``ctx``.

        The one call a learner makes: :meth:`embed` then :meth:`forward`. ``ctx`` as in
        :meth:`embed` (``[S, D]`` or ``[G, S, D]``); ``prompts`` are :meth:`forward`'s deep-prompt
        arguments (``prefix_overrides``/``override_start`` or ``prefix_prompts``).
        """
        prefix, suffix = self.embed(plan, ctx)
        return self.forward(plan, prefix, suffix, **prompts)

    def check_deep_prompts(self) -> None:
        """Refuse deep text prompts on a tower without a causal mask.

        Raises:
            UnpromptableTextTowerError: the tower's attention is bidirectional.
        """
        if not self.semantics.causal:
            raise UnpromptableTextTowerError(
                "deep text prompts (MaPLe, PromptSRC, IVLP, RPP) replace rows of the shared [SOT][ctx] prefix, which "
                "only a causal text tower has; this tower's attention is bidirectional (no causal mask): use a "
                "learner that prompts only the text input (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP)")

    @staticmethod
    def context_start(plan: TextPlan) -> int:
        """The prefix row of ``plan``'s first context slot: where deep text prompts go (1 after
        CLIP's ``[SOT]``; 0 when the tokenizer puts no start token before the text)."""
        rows = plan.derived("prefix_ctx_pos")
        if rows.numel() == 0:
            raise ValueError("deep text prompts replace the context rows of the shared prefix, and this plan's "
                             "prefix has none: build the plan with the context in front (position='end')")
        return int(rows.min())

    def input_heads(self, embeddings: torch.Tensor, start: int = 1):
        """Layer 0's ``(q, k, v)`` heads ``[M, H, d]`` of token embeddings ``[M, D]`` placed at
        positions ``start .. start+M-1`` (positional embedding, ``ln_1``, in-projection), in the
        embeddings' dtype: what a prompt learned in head space starts from (RPP's post-projection
        prompts initialised from words)."""
        m = embeddings.shape[0]
        rows = embeddings + self.text.positional_embedding[start:start + m].to(embeddings.dtype)
        return self.blocks[0].prompt_heads(QKVPrompt(rows, rows, rows), need_q=True)

    def forward(self, plan: TextPlan, prefix: torch.Tensor, suffix: torch.Tensor,
                prefix_overrides: Optional[Sequence[Optional[torch.Tensor]]] = None,
                override_start: Optional[int] = None,
                prefix_prompts: Optional[Sequence[QKVPrompt]] = None) -> torch.Tensor:
        """Encode the plan's sequences; returns ``[N, E]`` text features (not normalised).

        Args:
            plan: the layout of the N sequences in G groups.
            prefix: ``[G, P, D]`` prefix input embeddings (no positional embedding yet).
            suffix: ``[T, D]`` packed suffix input embeddings (no positional embedding yet).
            prefix_overrides: per layer, ``None`` or rows ``[M, D]`` / ``[G, M, D]`` that
                *replace* prefix rows ``override_start .. override_start+M-1`` before that layer
                (deep text prompts: MaPLe, PromptSRC, IVLP). Entry 0 is ignored when None.
            override_start: first prefix row replaced by the overrides; ``None`` (the default): the
                plan's first context row (:meth:`context_start`: 1 after CLIP's ``[SOT]``, 0 for a
                tokenizer without a start token, such as mT5's of ViT-L-14-worldwide).
            prefix_prompts: instead of ``prefix_overrides``, J :class:`QKVPrompt` with separate
                query, key and value rows for prefix rows ``override_start ..
                override_start+M-1`` in layers ``0 .. J-1`` (RPP); see :meth:`_insert_prompt_heads`.
        """
        plan = self.layout(plan)
        groups, p_len = plan.n_groups, plan.prefix_len
        if prefix.shape[:2] != (groups, p_len):
            raise ValueError(f"prefix must have shape [G={groups}, P={p_len}, D], got {tuple(prefix.shape)}")
        if suffix.shape[0] != plan.n_tokens:
            raise ValueError(f"suffix must have {plan.n_tokens} packed rows, got {suffix.shape[0]}")
        deep = prefix_prompts is not None or any(o is not None for o in (prefix_overrides or [])[1:])
        if deep:
            self.check_deep_prompts()
        if override_start is None:  # read from the plan only when rows are replaced (else unused)
            replaces = prefix_prompts is not None or any(o is not None for o in (prefix_overrides or []))
            override_start = self.context_start(plan) if replaces else 0
        pos = self.text.positional_embedding.to(self.dtype)
        prefix_prompts = self._check_prefix_prompts(prefix_prompts, prefix_overrides, override_start, p_len)
        n_prompted = len(prefix_prompts) if prefix_prompts else 0
        if n_prompted:  # layer 0's width-space rows get their positions' embedding, as CoOp's context does
            m = prefix_prompts[0].n_rows
            prefix_prompts[0] = prefix_prompts[0].map_width_rows(
                lambda r: r.to(self.dtype) + pos[override_start:override_start + m])
        # The G*P prefix rows, the T packed suffix rows and the Q query-only rows go through each
        # layer's dense parts (LN, projections, MLP) as one [G*P + T + Q, D] block: one GEMM per weight
        # instead of several, the weights read once (the prefix alone is a few rows, whose GEMMs are
        # bound by reading the weights). Deep prompts act on the prefix part of the block: overrides
        # replace its rows before a layer, q/k/v prompts replace its heads after the in-projection.
        n_prefix, n_tokens = groups * p_len, plan.n_tokens
        queries = plan.derived("query_seq").numel()
        parts = [(prefix + pos[:p_len]).flatten(0, 1), suffix + pos[plan.positions]]
        x = torch.cat(parts + [self._query_rows(plan)] if queries else parts)

        for layer, blk in enumerate(self.blocks):
            last = layer == self.layers - 1
            prompted = layer < n_prompted
            survive = prompted and layer == n_prompted - 1 and not last
            override = None
            if prefix_overrides is not None and layer < len(prefix_overrides):
                override = prefix_overrides[layer]
            replacement = prefix_prompts[layer].residual if survive else override
            if replacement is not None:
                xp = _replace_rows(x[:n_prefix].view(groups, p_len, -1), replacement, override_start)
                x = torch.cat([xp.flatten(0, 1), x[n_prefix:]])
            if last:  # only the pooled rows are read; prefix outputs are never read after the last layer
                break
            qkv_p, qkv, qkv_q = blk.qkv_fused(x).split([n_prefix, n_tokens, queries])
            pk = pv = op = None
            if n_prefix:
                qp, pk, pv = qkv_p.view(groups, p_len, 3, self.heads, -1).unbind(2)
                if prompted:
                    qp, pk, pv = self._insert_prompt_heads(blk, prefix_prompts[layer], override_start, qp, pk, pv,
                                                           need_q=survive)
                op, _ = prompt_attention(qp, pk, pv, causal=True, return_lse=False, backend=self.backend)
            o = [self._suffix_attention(plan, qkv, pk, pv)[plan.pad_index]]
            if op is not None:
                o.insert(0, op.flatten(0, 1))
            if queries:
                o.append(self._query_attention(plan, qkv_q, qkv, pk, pv))
            x = blk.add_mlp(blk.add_attention(x, blk.attention_output(torch.cat(o) if len(o) > 1 else o[0])))
            del o

        blk, xs = self.blocks[-1], x[n_prefix:]
        pk = pv = None
        if n_prefix:  # the prefix's keys and values only
            pk, pv = blk.kv(x[:n_prefix].view(groups, p_len, -1))
            if n_prompted == self.layers:
                _, pk, pv = self._insert_prompt_heads(blk, prefix_prompts[-1], override_start, None, pk, pv,
                                                      need_q=False)
        qkv, qkv_q = blk.qkv_fused(xs).split([n_tokens, queries])
        o = self._suffix_attention(plan, qkv, pk, pv)
        rows, o = xs[plan.eot_index], o[plan.derived("eot_pad_index")]
        if queries:  # pooled suffix rows first, then the query-only rows; back to sequence order below
            rows = torch.cat([rows, xs[n_tokens:]])
            o = torch.cat([o, self._query_attention(plan, qkv_q, qkv, pk, pv)])
        xs = blk.add_mlp(blk.add_attention(rows, blk.attention_output(o)))
        if queries:
            xs = xs[plan.derived("pool_order")]
        return self.project(xs)

    __call__ = forward

    def _suffix_attention(self, plan: TextPlan, qkv: torch.Tensor, pk: Optional[torch.Tensor],
                          pv: Optional[torch.Tensor]) -> torch.Tensor:
        """The suffixes' attention: ``qkv [T, 3, H, d]`` (packed) reading the prefix block ``pk``/``pv``
        (``[G, P, H, d]`` or None), one call per length bucket; returns ``[padded_tokens, H, d]`` in
        the padded layout (packed rows at ``plan.pad_index``)."""
        heads, head_dim = qkv.shape[-2:]
        # Scattered to the padded layout for attention only.
        padded = qkv.new_zeros(plan.padded_tokens, 3, heads, head_dim).index_copy(0, plan.pad_index, qkv)
        outs = []
        for b in plan.buckets:  # [n_b, length_b] each, padded to its own longest sequence
            qb, kb, vb = padded[b.start:b.stop].view(b.n, b.length, 3, heads, head_dim).unbind(2)
            ob, _ = prompt_attention(qb, kb, vb, pk, pv, group=b.group if pk is not None and plan.n_groups > 1 else None,
                                     causal=plan.semantics.causal, seqlens=b.seqlens, return_lse=False,
                                     backend=self.backend)
            outs.append(ob.reshape(b.rows, heads, head_dim))
        return outs[0] if len(outs) == 1 else torch.cat(outs) if outs else qkv.new_zeros(0, heads, head_dim)

    def _query_attention(self, plan: TextPlan, qkv_q: torch.Tensor, qkv: torch.Tensor, pk: Optional[torch.Tensor],
                         pv: Optional[torch.Tensor]) -> torch.Tensor:
        """Attention of the Q query-only pooled rows (``qkv_q [Q, 3, H, d]``): each reads its
        sequence's kept keys, the prefix block and its packed suffix (``qkv [T, 3, H, d]``), but is no
        key itself (masked as one by the tower). One ``prompt_attention`` call: the suffix keys are
        gathered to ``[Q, Lq]`` with ``seqlens`` masking the rest, the query in row 0 of an otherwise
        zero query block (bidirectional, so row 0 reads every kept key); returns ``[Q, H, d]``."""
        index = plan.derived("query_key_index")
        k, v = qkv[:, 1:][index].unbind(2)  # [Q, Lq, H, d] each
        q = torch.cat([qkv_q[:, 0:1], k.new_zeros(k.shape[0], k.shape[1] - 1, *k.shape[2:])], 1)
        group = plan.derived("query_group") if pk is not None and plan.n_groups > 1 else None
        o, _ = prompt_attention(q, k, v, pk, pv, group=group, causal=False, seqlens=plan.derived("query_key_seqlens"),
                                return_lse=False, backend=self.backend)
        return o[:, 0]

    def _check_prefix_prompts(self, prompts, overrides, start: int, p_len: int):
        if prompts is None:
            return None
        prompts = list(prompts)
        if overrides is not None:
            raise ValueError("pass either prefix_overrides or prefix_prompts, not both")
        if len(prompts) > self.layers:
            raise ValueError(f"prefix_prompts has {len(prompts)} layers but the text tower has {self.layers}")
        for j, p in enumerate(prompts):
            if not isinstance(p, QKVPrompt):
                raise ValueError(f"prefix_prompts[{j}] must be a QKVPrompt, got {type(p).__name__}")
            p.check(f"prefix_prompts[{j}]", self.width, self.heads, prompts[0].n_rows)
        last = len(prompts) - 1
        if 0 <= last < self.layers - 1 and prompts[last].residual is None:
            raise ValueError(f"prefix_prompts[{last}].residual is needed: layer {last} is the last prompted "
                             "layer, whose prompt outputs propagate")
        # start 0 is a tokenizer without a start token (mT5's): the context is the prefix's first row
        if prompts and (start < 0 or start + prompts[0].n_rows > p_len):
            raise ValueError(f"{prompts[0].n_rows} prompt rows starting at override_start={start} do not fit in a "
                             f"prefix of {p_len} rows")
        return prompts

    @staticmethod
    def _insert_prompt_heads(blk, prompt: QKVPrompt, start: int, qp: Optional[torch.Tensor], kp: torch.Tensor,
                             vp: torch.Tensor, need_q: bool):
        """The prefix heads ``(q, k, v)``, each ``[G, P, H, d]``, of one layer with RPP's unshared
        q/k/v prompt rows put in place of prefix rows ``start .. start+M-1``.

        The prompt rows occupy the context slots, so the causal order is that of the literal prompt
        ``[SOT][prompt rows][rest of the prefix]``: SOT never sees the prompt rows, every later
        prefix row and every class suffix (which sees the whole prefix block) sees all of them.
        Their keys and values replace the rows' own in the per-layer prefix K/V block that all
        classes read.

        * Layer 0: width-space rows come with the positional embedding of their positions (as
          CoOp's context vectors do; :meth:`forward` adds it); head-space rows do not.
        * Layers ``j < J-1``: the rows' outputs are discarded (the next layer replaces them), so
          only their keys/values are used; ``qp`` keeps the rows' stale queries, whose outputs never
          reach a real row (causal, keys/values replaced) and are replaced at the next layer.
        * Layer ``J-1`` (unless it is the last layer, ``need_q``): the rows' outputs survive, so the
          query prompts drive their attention (the caller has already put ``residual`` in their
          hidden rows); from layer ``J`` on they are ordinary prefix rows.
        """
        m, groups = prompt.n_rows, kp.shape[0]
        qh, kh, vh = blk.prompt_heads(prompt, need_q=need_q, dtype=kp.dtype)

        def put(t, rows):
            return torch.cat([t[:, :start], rows.expand(groups, *rows.shape), t[:, start + m:]], dim=1)

        return (put(qp, qh) if need_q else qp), put(kp, kh), put(vp, vh)

    def project(self, eot_rows: torch.Tensor) -> torch.Tensor:
        """``ln_final`` and the text projection of the pooled EOT rows ``[N, D] -> [N, E]``."""
        x = self.text.ln_final(eot_rows)
        proj = self.text.text_projection
        if proj is None:
            return x
        if isinstance(proj, nn.Linear):
            return proj(x)
        return x @ proj

    # ---- frozen prompts ----------------------------------------------------------------------
    def plan_for_token_ids(self, ids: torch.Tensor) -> TextPlan:
        """A plan encoding already-tokenized prompts ``[C, context_length]`` with no learnable slots.

        The longest common prefix (e.g. ``[SOT] a photo of a``) is still shared.
        """
        ids = ids.cpu()
        if ids.dim() != 2 or ids.shape[1] != self.context_length:
            raise ValueError(f"token ids must have shape [C, {self.context_length}] (the text tower's context length), "
                             f"got {tuple(ids.shape)}: tokenize with the model's own tokenizer")
        return build_text_plan(ids.tolist(), ids, semantics=self.semantics)

    def encode_token_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Same as ``model.encode_text(ids)`` (unnormalised), on the fast path."""
        plan = self.plan_for_token_ids(ids)
        prefix, suffix = self.embed(plan)
        return self.forward(plan, prefix, suffix)


def _replace_rows(x: torch.Tensor, rows: torch.Tensor, start: int) -> torch.Tensor:
    """``x [G, P, D]`` with rows ``start..start+M-1`` replaced by ``rows [M, D]`` or ``[G, M, D]``."""
    groups, p_len, width = x.shape
    m = rows.shape[-2]
    if start + m > p_len:
        raise ValueError(f"deep prompt of {m} rows starting at {start} does not fit in a prefix of {p_len} rows")
    rows = rows.to(x.dtype)
    if rows.dim() == 2:
        rows = rows.expand(groups, m, width)
    return torch.cat([x[:, :start], rows, x[:, start + m:]], dim=1)
