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
and the ``G * P`` prefix rows as one block (deep prompts act on their rows of it: prefix rows on a
causal tower, every sequence's own rows on a bidirectional one; see :meth:`TextTower.forward`);
only attention sees a padded layout, masked with ``seqlens``: the plan's length buckets
(:class:`~fastprompt.towers.text_plan.BucketRule`), one ``prompt_attention`` call each, every
bucket padded only to its own longest sequence and reading the same per-layer prefix K/V block
(``group`` per bucket). The buckets change the layout, not the values: every sequence attends to
exactly its prefix and its own earlier tokens, as in one ``[N, max_len]`` block.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..ops import prompt_attention
from .blocks import block_views
from .prompt_rows import QKVPrompt
from .text_plan import TextPlan, UnpromptableTextTowerError, build_text_plan
from .text_semantics import text_semantics


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
        model: an open_clip ``CLIP`` or ``CustomTextCLIP`` (``CoCa``) with an open_clip text tower.
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

    def check_deep_prompts(self, plan: TextPlan, n_rows: int, start: Optional[int] = None, *,
                           qkv: bool = False) -> int:
        """Check that ``n_rows`` deep text prompt rows have a well-defined place in ``plan`` on this
        tower, and return the first replaced position (``start``, or the plan's first context row:
        1 after CLIP's ``[SOT]``, 0 for a tokenizer without a start token).

        Every open_clip text tower takes deep prompts, causal or bidirectional (see :meth:`forward`),
        including RPP's unshared query/key/value rows (``qkv=True``: ``prefix_prompts``), which
        towers whose attention fastprompt does not run itself refuse here, at the learner's build.
        What stays refused is ill defined whatever the tower: a prompt position that some prompt does
        not have (masked as padding, or past its end) or that the tower pools.

        Raises:
            UnpromptableTextTowerError: as above, naming the sequence and the rows.
        """
        start, _ = plan.for_semantics(self.semantics).deep_prompt_rows(n_rows, start)
        return start

    @staticmethod
    def context_start(plan: TextPlan) -> int:
        """The position of ``plan``'s first context slot: where deep text prompts go by default (1
        after CLIP's ``[SOT]``; 0 when the tokenizer puts no start token before the text)."""
        return plan.context_start()

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
                prefix_prompts: Optional[Sequence[QKVPrompt]] = None,
                regroup: Optional[Tuple[int, TextPlan]] = None) -> torch.Tensor:
        """Encode the plan's sequences; returns ``[N, E]`` text features (not normalised).

        Args:
            plan: the layout of the N sequences in G groups.
            prefix: ``[G, P, D]`` prefix input embeddings (no positional embedding yet).
            suffix: ``[T, D]`` packed suffix input embeddings (no positional embedding yet).
            prefix_overrides: per layer, ``None`` or rows ``[M, D]`` / ``[G, M, D]`` that
                *replace* rows ``override_start .. override_start+M-1`` of every sequence before that
                layer (deep text prompts: MaPLe, PromptSRC, IVLP). Entry 0 is ignored when None.
            override_start: first row replaced by the overrides; ``None`` (the default): the plan's
                first context row (:meth:`context_start`: 1 after CLIP's ``[SOT]``, 0 for a
                tokenizer without a start token, such as SigLIP's or mT5's).
            prefix_prompts: instead of ``prefix_overrides``, J :class:`QKVPrompt` with separate
                query, key and value rows for rows ``override_start .. override_start+M-1`` in
                layers ``0 .. J-1`` (RPP); see :meth:`_insert_prompt_heads`.
            regroup: ``(j, plan_g)``: from layer ``j`` on, continue with ``plan_g``, the same sequences
                (same packed suffixes) in ``G'`` prefix groups, each group's prefix starting as a copy
                of the one group's hidden rows. For prompts whose prefix is shared up to layer ``j``
                and per group after it (TCP: per-class tokens replace prefix rows before block ``j``
                through ``prefix_overrides[j]`` of shape ``[G', M, D]``): layers ``0 .. j-1`` encode
                the prefix once, not ``G'`` times. ``plan`` must have one group.

        Deep prompts follow the originals' replace-then-propagate semantics on any tower: before
        each prompted layer ``j < J`` the prompt rows of every sequence are replaced, and layer
        ``J-1``'s outputs at those rows propagate as ordinary rows. Where they live depends on the
        plan (:meth:`TextPlan.deep_prompt_rows`):

        * **shared prefix** (a causal tower): the rows are prefix rows, replaced once for all
          classes (exact: under the causal mask the prefix never sees a class token);
        * **no shared prefix** (a bidirectional tower: SigLIP, CLIPA, MobileCLIP-S): the rows are
          rows ``start .. start+M-1`` of every sequence's own suffix (full length, or packed to its
          unmasked tokens where the tower masks padding), replaced per sequence. Every kept row of
          every sequence is computed at every layer but the last, prompt rows included: with
          bidirectional attention every row is a key of every other, so the prompt rows' hidden
          states are queries, keys and values like any other. Overrides replace the hidden rows
          (their outputs at layer ``j < J-1`` are computed and overwritten at layer ``j+1``, as in
          the originals). RPP's q/k/v prompts replace the rows' heads after the in-projection: keys
          and values at every prompted layer, the query (and the residual row) only at layer
          ``J-1`` when it is not the last layer, the one layer whose prompt-row outputs survive; at
          ``j < J-1`` the rows' queries come from their stale hidden rows, whose outputs only ever
          feed those rows' own next queries (keys and values are replaced) until layer ``J-1``
          replaces them. At the last layer only the pooled rows are computed (and query-only pooled
          rows: CoCa's CLS, a pooled padding row), reading every kept key, prompt keys included.
        """
        laid = plan.for_semantics(self.semantics)  # on the host where the caller's plan is: rows are found there
        plan = laid.to(self.device)
        regroup_at, regrouped = self._check_regroup(laid, regroup)
        groups, p_len = plan.n_groups, plan.prefix_len
        if prefix.shape[:2] != (groups, p_len):
            raise ValueError(f"prefix must have shape [G={groups}, P={p_len}, D], got {tuple(prefix.shape)}")
        if suffix.shape[0] != plan.n_tokens:
            raise ValueError(f"suffix must have {plan.n_tokens} packed rows, got {suffix.shape[0]}")
        prefix_prompts = self._check_prefix_prompts(prefix_prompts, prefix_overrides)
        n_rows = self._deep_prompt_rows(prefix_prompts, prefix_overrides)
        rows = None  # [N*M] packed suffix rows of the deep prompts, or None: prefix rows (or no deep prompts)
        if n_rows:
            override_start, rows = laid.deep_prompt_rows(n_rows, override_start, device=self.device)
        pos = self.text.positional_embedding.to(self.dtype)
        n_prompted = len(prefix_prompts) if prefix_prompts else 0
        if n_prompted:  # layer 0's width-space rows get their positions' embedding, as CoOp's context does
            m = prefix_prompts[0].n_rows
            prefix_prompts[0] = prefix_prompts[0].map_width_rows(
                lambda r: r.to(self.dtype) + pos[override_start:override_start + m])
        # The G*P prefix rows, the T packed suffix rows and the Q query-only rows go through each
        # layer's dense parts (LN, projections, MLP) as one [G*P + T + Q, D] block: one GEMM per weight
        # instead of several, the weights read once (the prefix alone is a few rows, whose GEMMs are
        # bound by reading the weights). Deep prompts act on their rows of the block: overrides
        # replace the rows before a layer, q/k/v prompts replace their heads after the in-projection.
        n_prefix, n_tokens = groups * p_len, plan.n_tokens
        queries = plan.derived("query_seq").numel()
        parts = [(prefix + pos[:p_len]).flatten(0, 1), suffix + pos[plan.positions]]
        x = torch.cat(parts + [self._query_rows(plan)] if queries else parts)

        for layer, blk in enumerate(self.blocks):
            if layer == regroup_at:  # the one prefix block becomes G' copies; the suffixes read their group's
                x = torch.cat([x[:n_prefix].repeat(regrouped.n_groups, 1), x[n_prefix:]])
                plan, groups = regrouped, regrouped.n_groups
                n_prefix = groups * p_len
            last = layer == self.layers - 1
            prompted = layer < n_prompted
            survive = prompted and layer == n_prompted - 1 and not last
            override = None
            if prefix_overrides is not None and layer < len(prefix_overrides):
                override = prefix_overrides[layer]
            replacement = prefix_prompts[layer].residual if survive else override
            if replacement is not None:
                x = self._replace(plan, x, replacement, override_start, rows)
            if last:  # only the pooled rows are read; prefix outputs are never read after the last layer
                break
            qkv_p, qkv, qkv_q = blk.qkv_fused(x).split([n_prefix, n_tokens, queries])
            if prompted and rows is not None:
                qkv = self._insert_suffix_heads(blk, prefix_prompts[layer], rows, qkv, need_q=survive)
            pk = pv = op = None
            if n_prefix:
                qp, pk, pv = qkv_p.view(groups, p_len, 3, self.heads, -1).unbind(2)
                if prompted and rows is None:
                    qp, pk, pv = self._insert_prompt_heads(blk, prefix_prompts[layer], override_start, qp, pk, pv,
                                                           need_q=survive)
                op, _ = prompt_attention(qp, pk, pv, causal=True, return_lse=False, backend=self.backend)
            o = self._suffix_attention(plan, qkv, pk, pv)
            o = [o if _packed_is_padded(plan) else o[plan.pad_index]]
            if op is not None:
                o.insert(0, op.flatten(0, 1))
            if queries:
                o.append(self._query_attention(plan, qkv_q, qkv, pk, pv))
            x = blk.add_mlp(blk.add_attention(x, blk.attention_output(torch.cat(o) if len(o) > 1 else o[0])))
            del o

        blk, xs = self.blocks[-1], x[n_prefix:]
        pk = pv = None
        every_layer = n_prompted == self.layers  # the last layer is prompted: its prompt keys/values are read
        if n_prefix:  # the prefix's keys and values only
            pk, pv = blk.kv(x[:n_prefix].view(groups, p_len, -1))
            if every_layer and rows is None:
                _, pk, pv = self._insert_prompt_heads(blk, prefix_prompts[-1], override_start, None, pk, pv,
                                                      need_q=False)
        qkv, qkv_q = blk.qkv_fused(xs).split([n_tokens, queries])
        if every_layer and rows is not None:  # the prompt rows are never pooled (deep_prompt_rows): no query
            qkv = self._insert_suffix_heads(blk, prefix_prompts[-1], rows, qkv, need_q=False)
        o = self._suffix_attention(plan, qkv, pk, pv)
        pooled, o = xs[plan.eot_index], o[plan.derived("eot_pad_index")]
        if queries:  # pooled suffix rows first, then the query-only rows; back to sequence order below
            pooled = torch.cat([pooled, xs[n_tokens:]])
            o = torch.cat([o, self._query_attention(plan, qkv_q, qkv, pk, pv)])
        xs = blk.add_mlp(blk.add_attention(pooled, blk.attention_output(o)))
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
        # Scattered to the padded layout for attention only (unless it is the packed layout already:
        # every sequence full length, as on a bidirectional tower without a padding mask).
        padded = qkv if _packed_is_padded(plan) else \
            qkv.new_zeros(plan.padded_tokens, 3, heads, head_dim).index_copy(0, plan.pad_index, qkv)
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

    def _check_regroup(self, laid: TextPlan, regroup) -> Tuple[Optional[int], Optional[TextPlan]]:
        """``(layer, the regrouped plan laid out for this tower on its device)``, or ``(None, None)``."""
        if regroup is None:
            return None, None
        layer, other = regroup
        other = other.for_semantics(self.semantics)
        if not 0 <= layer < self.layers:
            raise ValueError(f"regroup layer {layer} is not a layer of this {self.layers}-layer text tower")
        same = (torch.equal(other.suffix_src, laid.suffix_src) and torch.equal(other.seqlens, laid.seqlens)
                and other.prefix_len == laid.prefix_len)
        if laid.n_groups != 1 or not same:
            raise ValueError("regroup needs a one-group plan and a plan of the same sequences in more groups "
                             "(the same packed suffixes and prefix length)")
        return layer, other.to(self.device)

    def _check_prefix_prompts(self, prompts, overrides):
        """``prompts`` as a list after checking their types and shapes (``None`` stays ``None``)."""
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
        return prompts

    def _deep_prompt_rows(self, prompts, overrides) -> int:
        """M, the rows every deep prompt replaces (0 when none is given); one M for every layer, as
        the rows a layer replaces are those the previous one's prompt occupied."""
        if prompts:
            return prompts[0].n_rows
        sizes = {int(o.shape[-2]) for o in (overrides or []) if o is not None}
        if len(sizes) > 1:
            raise ValueError(f"prefix_overrides replace {sorted(sizes)} rows in different layers: every layer's "
                             "deep prompt must have the same number of rows M")
        return sizes.pop() if sizes else 0

    @staticmethod
    def _replace(plan: TextPlan, x: torch.Tensor, rows_in: torch.Tensor, start: int,
                 rows: Optional[torch.Tensor]) -> torch.Tensor:
        """The ``[G*P + T + Q, D]`` block ``x`` with every sequence's deep prompt rows replaced by
        ``rows_in`` (``[M, D]`` for all, or ``[G, M, D]`` per group): prefix rows ``start ..
        start+M-1`` of every group when ``rows`` is None, else packed suffix rows ``rows [N*M]``."""
        n_prefix = plan.n_groups * plan.prefix_len
        if rows is None:
            xp = _replace_rows(x[:n_prefix].view(plan.n_groups, plan.prefix_len, -1), rows_in, start)
            return torch.cat([xp.flatten(0, 1), x[n_prefix:]])
        vals = rows_in.to(x.dtype)
        if vals.dim() == 3:
            if vals.shape[0] != plan.n_groups:
                raise ValueError(f"a per-group deep prompt has {vals.shape[0]} groups but the plan has {plan.n_groups}")
            vals = vals[plan.group]
        else:
            vals = vals.expand(plan.n_sequences, -1, -1)
        return x.index_copy(0, rows + n_prefix, vals.reshape(-1, x.shape[-1]))

    @staticmethod
    def _insert_suffix_heads(blk, prompt: QKVPrompt, rows: torch.Tensor, qkv: torch.Tensor,
                             need_q: bool) -> torch.Tensor:
        """The packed suffix heads ``qkv [T, 3, H, d]`` with RPP's q/k/v prompt heads in the deep
        prompt rows ``rows [N*M]`` of every sequence (no shared prefix): keys and values always,
        the query only where the rows' outputs survive (``need_q``; elsewhere the rows keep their
        own stale query, whose output is never read: see :meth:`forward`)."""
        qh, kh, vh = blk.prompt_heads(prompt, need_q=need_q, dtype=qkv.dtype)
        n_seq = rows.numel() // prompt.n_rows

        def per_sequence(t):  # [M, H, d] -> [N*M, H, d], sequence-major like ``rows``
            return t.expand(n_seq, *t.shape).reshape(-1, *t.shape[1:])

        q = per_sequence(qh) if need_q else qkv[rows, 0]
        return qkv.index_copy(0, rows, torch.stack([q, per_sequence(kh), per_sequence(vh)], 1))

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


def _packed_is_padded(plan: TextPlan) -> bool:
    """The padded attention layout is the packed one: one bucket (sequence order) and no padding row
    (every sequence as long as the longest), so ``pad_index`` is the identity."""
    return len(plan.buckets) == 1 and plan.padded_tokens == plan.n_tokens


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
