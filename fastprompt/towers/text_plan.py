"""TextPlan: everything about a set of prompted sequences that does not change between steps.

A prompted class sequence is a row of *sources*: each position holds either a frozen token id
(``>= 0``) or a learnable context slot ``k`` (encoded as ``ctx_source(k) = -1 - k``). Learners
describe their layout (CoOp end/middle/front, CoCoOp, class-specific context, hand-crafted
prompts) as source rows; the plan then

* truncates every row after its EOT (nothing after EOT reaches the EOT feature under the causal
  mask, so this is exact),
* splits off the longest prefix that is identical in every row (``[SOT][ctx...]`` for generic
  context at the end position) — the tower encodes it once per *group* and lets every suffix
  attend to its group's per-layer keys/values,
* packs the remaining suffix tokens of all sequences back to back (``[T]``) with the metadata the
  tower needs to scatter them into a padded layout for attention only,
* splits that padded layout into a few *length buckets* (:class:`BucketRule`): sequences sorted
  by suffix length, each bucket padded only to its own longest member, one attention call per
  bucket. One padded ``[N, max_len]`` block would cost ``N * max_len`` rows where ``T`` are real;
  with long-tailed class names (ImageNet-21K: mean suffix 8 tokens, longest 40-51) that is 5-6x
  the real tokens in every layer's saved q/k/v/o, and in the attention time.

These savings are CLIP's (a causal tower pooled at EOT). A plan records the tower semantics it
is exact for (:class:`~fastprompt.towers.text_semantics.TextSemantics`): for other towers
(:func:`plan_from_rows`, :meth:`TextPlan.for_semantics`) each prompt keeps the tokens its pooled
row reads (all of them, padding included, for a bidirectional tower without a padding mask;
the unmasked ones where padding is masked), the prefix is shared only under a causal mask, and a
pooled row that is masked as a key (CoCa's CLS, a pooled padding row) is a query-only row.

Groups: sequence ``n`` reads prefix block ``group[n]`` and fills its context slots from context
table ``group[n]``. ``repeat(G)`` gives the same classes for G groups (CoCoOp: one group per
image), ``concat`` joins class lists as groups (SoftCPT: one group per task) and ``select`` keeps
a subset of sequences (sampled classes). Plans are built once per class list and reused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..ops import declare_index_range
from .text_semantics import CLIP_TEXT, TextSemantics, kept_tokens


class UnpromptableTextTowerError(ValueError):
    """Deep text prompts (MaPLe, PromptSRC/IVLP, RPP's text branch) asked for where their insertion
    point is ill defined: a prompt row the tower masks as padding or never computes, or one the
    tower pools. The message names the sequence and the rows."""


def ctx_source(slot: int) -> int:
    """Source code of learnable context slot ``slot`` (0-based)."""
    return -1 - slot


@dataclass(frozen=True)
class BucketRule:
    """How a plan splits its padded attention layout into length buckets.

    The sequences are sorted by suffix length and cut into K contiguous runs; a run costs
    ``(its sequences) x (its longest length)`` padded rows. For a given K the cheapest cut is
    found exactly (dynamic programming over the distinct lengths, at most 77 of them: the
    optimal buckets of a cost ``count x max`` are contiguous in sorted order), and the plan takes

    * **one bucket** when padding to the longest sequence wastes fewer than ``min_padding``
      rows, or already stays within ``max_ratio`` x the real tokens: then a second attention call
      per layer (and the concatenation of the outputs) would cost more than the padding it saves;
    * otherwise the **fewest** buckets, at most ``max_buckets``, whose padded rows are
      ``<= max_ratio x`` the real tokens (or the ``max_buckets`` optimum when none reaches it).

    Why these numbers: padded rows are what every layer's attention saves for the backward
    (q, k, v, out) and what it computes, so ``max_ratio = 1.25`` keeps activation memory and time
    within 25 % of the unpadded ideal. ImageNet-21K class names with ``n_ctx = 4`` (mean suffix
    8 tokens, longest 42-51) need 5-6 buckets for it (one bucket: 5.2-6.3x; 4 buckets: 1.4x;
    8 buckets: 1.12x), where a geometric rule (lengths within a factor 1.25 per bucket) would
    take 13. A CoOp step over a few short class names (tens to a few hundred wasted rows) keeps
    its single call: below ``min_padding = 1024`` rows (~100 MB of fp32 q/k/v/o over a ViT-B/16
    text tower's 12 layers) the padding costs less than what a second bucket adds, one more
    attention call per layer forward and backward and the concatenation of the outputs. The
    choice is made once per plan, on the CPU; it changes the layout only, never the values (every
    sequence still attends to exactly its prefix and its own earlier tokens).
    """

    max_ratio: float = 1.25
    min_padding: int = 1024
    max_buckets: int = 8

    def __post_init__(self):
        if not self.max_ratio >= 1.0:
            raise ValueError(f"BucketRule.max_ratio must be >= 1, got {self.max_ratio}")
        if self.min_padding < 0:
            raise ValueError(f"BucketRule.min_padding must be >= 0, got {self.min_padding}")
        if self.max_buckets < 1:
            raise ValueError(f"BucketRule.max_buckets must be >= 1, got {self.max_buckets}")

    def split(self, lengths: torch.Tensor) -> List[int]:
        """Bucket boundaries for CPU ``lengths`` ``[N]``: the largest length of each bucket, ascending
        (one entry = one bucket padded to the longest sequence)."""
        vals, counts = torch.unique(lengths, sorted=True, return_counts=True)
        real, longest = int(lengths.sum()), int(vals[-1])
        padded_one = int(lengths.numel()) * longest
        if (padded_one - real < self.min_padding or padded_one <= self.max_ratio * real
                or self.max_buckets == 1 or vals.numel() == 1):
            return [longest]
        # best[j]: fewest padded rows covering distinct lengths 0..j with k buckets, the last ending at j.
        v, before = vals.to(torch.float64), torch.cumsum(counts, 0).to(torch.float64)
        after = torch.cat([before.new_zeros(1), before[:-1]])  # sequences shorter than vals[i]
        # cost[i, j] = rows of one bucket holding lengths vals[i..j] (inf where i > j)
        cost = (before[None, :] - after[:, None]) * v[None, :]
        cost = cost.masked_fill(torch.ones_like(cost, dtype=torch.bool).tril(-1), float("inf"))
        best, choices = cost[0], []
        for _ in range(2, min(self.max_buckets, vals.numel()) + 1):
            # a k-th bucket vals[i..j] after k-1 buckets covering vals[..i-1]
            cand = torch.cat([cost.new_full((1, cost.shape[1]), float("inf")), best[:-1, None] + cost[1:]])
            best, arg = cand.min(0)
            choices.append(arg)
            if best[-1] <= self.max_ratio * real:
                break
        ends, j = [int(vals[-1])], vals.numel() - 1
        for arg in reversed(choices):
            j = int(arg[j]) - 1
            ends.append(int(vals[j]))
        return ends[::-1]


DEFAULT_BUCKET_RULE = BucketRule()


@dataclass(frozen=True)
class AttentionBucket:
    """One attention call of the tower: ``n`` sequences padded to ``length`` tokens, rows
    ``start .. start + n * length - 1`` of the plan's padded layout.

    ``seqlens`` (``[n]``, or ``None`` when every member is exactly ``length`` long: nothing to
    mask) and ``group`` (``[n]``) are the op's arguments for these sequences, with their value
    ranges declared (no device reads when the op checks them).
    """

    start: int
    n: int
    length: int
    seqlens: Optional[torch.Tensor]
    group: torch.Tensor

    @property
    def rows(self) -> int:
        return self.n * self.length

    @property
    def stop(self) -> int:
        return self.start + self.rows


def _default_rule() -> BucketRule:
    return DEFAULT_BUCKET_RULE


@dataclass
class TextPlan:
    """Packed, prefix-shared layout of N prompted sequences in G groups.

    Tensors live on CPU; ``to(device)`` returns a cached copy on another device.

    Attributes:
        prefix_src: ``[P]`` sources of the shared prefix (positions ``0..P-1``).
        suffix_src: ``[T]`` sources of the packed suffixes of all N sequences.
        seqlens: ``[N]`` suffix length of each sequence (each ends with its EOT token).
        group: ``[N]`` group of each sequence (prefix block and context table it uses).
        n_groups: G.
        class_index: ``[N]`` index of each sequence's class in the learner's class list.
        eot_positions: ``[N]`` absolute position of EOT in each sequence.
        bucket_rule: how the padded attention layout is split into length buckets
            (:class:`BucketRule`; ``BucketRule(max_buckets=1)`` keeps one ``[N, max_len]`` block).
        suffix_pos: ``[T]`` absolute position of every packed token, or ``None`` when each suffix
            continues its prefix without gaps (packing may drop masked padding inside a prompt).
        pool_offset: ``[N]`` offset of the pooled row in its suffix, ``-1`` where the pooled row is
            a query-only row (below); ``None`` = the last suffix token (EOT after truncation).
        query_src, query_pos: ``[N]`` source and position of each prompt's query-only pooled row
            (read where ``pool_offset < 0``): a row masked as a key that still reads the kept keys
            (CoCa's CLS under its legacy mask, a pooled padding row under a key-padding mask).
        full_src, full_ids: ``[N, L]`` the untruncated source rows and template ids the plan was
            derived from, kept so that :meth:`for_semantics` can lay the same prompts out for
            another tower.
        semantics: the tower masking and pooling this layout is exact for
            (:class:`~fastprompt.towers.text_semantics.TextSemantics`; ``savings`` says which of
            prefix sharing, truncation and packing it uses).
    """

    prefix_src: torch.Tensor
    suffix_src: torch.Tensor
    seqlens: torch.Tensor
    group: torch.Tensor
    n_groups: int
    class_index: torch.Tensor
    eot_positions: torch.Tensor
    bucket_rule: BucketRule = field(default_factory=_default_rule)
    suffix_pos: Optional[torch.Tensor] = None
    pool_offset: Optional[torch.Tensor] = None
    query_src: Optional[torch.Tensor] = None
    query_pos: Optional[torch.Tensor] = None
    full_src: Optional[torch.Tensor] = None
    full_ids: Optional[torch.Tensor] = None
    semantics: TextSemantics = CLIP_TEXT
    _derived: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _cache: Dict[str, "TextPlan"] = field(default_factory=dict, repr=False)
    _sizes: Dict[str, int] = field(default_factory=dict, repr=False)
    _buckets: Tuple[AttentionBucket, ...] = field(default=(), repr=False)

    def __post_init__(self):
        if not self._sizes:
            self._sizes.update(self._measure())
        if not self._derived:
            derived, self._buckets = self._derive()
            self._derived.update(derived)
        # Checked once, here: attention calls then check group / seqlens against these ranges
        # instead of reading them back from the device in every layer.
        if self.n_sequences:
            lo_group, hi_group = self._sizes["group_min"], self._sizes["group_max"]
            declare_index_range(self.group, lo_group, hi_group)
            declare_index_range(self.seqlens, self._sizes["min_len"], self._sizes["max_len"])
            for b in self._buckets:  # within the plan's ranges (the op checks against [0, G) and [0, L])
                declare_index_range(b.group, lo_group, hi_group)
                if b.seqlens is not None:
                    declare_index_range(b.seqlens, min(self._sizes["min_len"], b.length), b.length)
            if "query_key_seqlens" in self._derived:
                declare_index_range(self._derived["query_group"], lo_group, hi_group)
                declare_index_range(self._derived["query_key_seqlens"], self._sizes["query_len_min"],
                                    self._sizes["query_len_max"])

    def _measure(self) -> Dict[str, int]:
        """Sizes read from the index tensors (once per plan, where it is built: on the CPU)."""
        srcs = torch.cat([self.prefix_src, self.suffix_src])
        n_ctx = int((-srcs).max().clamp_min(0)) if srcs.numel() else 0
        if not self.n_sequences:
            return dict(n_ctx=n_ctx, max_len=0, min_len=0, group_min=0, group_max=0)
        lo_len, hi_len, lo_group, hi_group = torch.stack(
            [self.seqlens.min(), self.seqlens.max(), self.group.min(), self.group.max()]).tolist()
        if lo_group < 0 or hi_group >= self.n_groups:
            raise ValueError(f"group values must lie in [0, n_groups) = [0, {self.n_groups}), "
                             f"got values in [{lo_group}, {hi_group}]")
        if lo_len < 0:
            raise ValueError(f"seqlens must be >= 0, got a minimum of {lo_len}")
        return dict(n_ctx=n_ctx, max_len=hi_len, min_len=lo_len, group_min=lo_group, group_max=hi_group)

    def _derive(self):
        """Index tensors of the packed layout and the attention buckets (computed once, where the
        plan is built: on the CPU)."""
        dev = self.seqlens.device
        n = self.n_sequences
        starts = torch.cumsum(self.seqlens, 0) - self.seqlens  # [N] packed start of each sequence
        seq_of_token = torch.repeat_interleave(torch.arange(n, device=dev), self.seqlens)
        offsets = torch.arange(self.n_tokens, device=dev) - starts[seq_of_token]
        prefix_ctx = (self.prefix_src < 0).nonzero().squeeze(1)
        suffix_ctx = (self.suffix_src < 0).nonzero().squeeze(1)
        row_start, buckets = self._bucket_layout()
        pad_index = row_start[seq_of_token] + offsets
        pool_offset = self.seqlens - 1 if self.pool_offset is None else self.pool_offset
        pooled = (pool_offset >= 0).nonzero().squeeze(1)
        queries = (pool_offset < 0).nonzero().squeeze(1)
        eot_index = (starts + pool_offset)[pooled]
        positions = self.prefix_len + offsets if self.suffix_pos is None else self.suffix_pos
        derived = {
            "positions": positions,
            "pad_index": pad_index,
            "eot_index": eot_index,
            "eot_pad_index": pad_index[eot_index],
            "prefix_ctx_pos": prefix_ctx,
            "prefix_ctx_slot": -1 - self.prefix_src[prefix_ctx],
            "suffix_ctx_pos": suffix_ctx,
            "suffix_ctx_slot": -1 - self.suffix_src[suffix_ctx],
            "suffix_ctx_group": self.group[seq_of_token[suffix_ctx]],
            "pooled_seq": pooled,
            "query_seq": queries,
            # [N] order of the pooled features: pooled suffix rows first, then the query-only rows
            "pool_order": torch.argsort(torch.cat([pooled, queries])),
        }
        cls_position = self.cls_position
        derived["suffix_cls_pos"] = (positions == cls_position).nonzero().squeeze(1)
        if queries.numel():
            derived.update(self._query_layout(queries, starts))
        return derived, buckets

    def _query_layout(self, queries: torch.Tensor, starts: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Index tensors of the query-only rows' attention: each reads its sequence's packed suffix
        keys, gathered to ``[Q, Lq]`` (``key_index``, padded with row 0 past ``key_seqlens``)."""
        lens = self.seqlens[queries]
        width = max(int(lens.max()), 1)
        cols = torch.arange(width)
        key_index = torch.where(cols[None, :] < lens[:, None], starts[queries, None] + cols[None, :], 0)
        self._sizes.update(query_len_min=int(lens.min()), query_len_max=width)  # declared in __post_init__
        return {"query_key_index": key_index, "query_key_seqlens": lens.clone(), "query_group": self.group[queries],
                "query_src": self.query_src[queries], "query_pos": self.query_pos[queries],
                "query_cls": (self.query_pos[queries] == self.cls_position).nonzero().squeeze(1)}

    @property
    def cls_position(self) -> int:
        """Position of an appended CLS embedding (``L``, after the prompt), ``-1`` for towers without one."""
        if self.semantics.cls is None or self.full_ids is None:
            return -1
        return int(self.full_ids.shape[1])

    def _bucket_layout(self):
        """``(row_start [N], buckets)``: the padded row of each sequence's first suffix token, and
        the attention buckets (:class:`BucketRule`). One bucket keeps the plan's sequence order
        (the ``[N, max_len]`` block); several hold the sequences sorted by length (stable), bucket
        after bucket, each ``[n_b, length_b]``."""
        n, lens = self.n_sequences, self.seqlens
        if n == 0:
            return lens.new_zeros(0), ()
        ends = self.bucket_rule.split(lens)
        if len(ends) == 1:
            order = torch.arange(n, device=lens.device)
            seqlens = None if self._sizes["min_len"] == self.max_len else lens
            return order * self.max_len, (AttentionBucket(0, n, self.max_len, seqlens, self.group),)
        order = torch.sort(lens, stable=True).indices
        sorted_lens = lens[order]
        counts = torch.bucketize(torch.tensor(ends, dtype=lens.dtype), sorted_lens, right=True)
        counts = torch.diff(counts, prepend=counts.new_zeros(1)).tolist()
        row_start = torch.empty_like(lens)
        buckets, first, rows = [], 0, 0
        for count, length in zip(counts, ends):
            members = order[first:first + count]
            row_start[members] = rows + torch.arange(count, device=lens.device) * length
            member_lens = sorted_lens[first:first + count]
            ragged = int(member_lens[0]) < length
            buckets.append(AttentionBucket(rows, count, length, member_lens.clone() if ragged else None,
                                           self.group[members]))
            first, rows = first + count, rows + count * length
        return row_start, tuple(buckets)

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def prefix_len(self) -> int:
        return int(self.prefix_src.numel())

    @property
    def n_tokens(self) -> int:
        """T, the number of packed suffix tokens."""
        return int(self.suffix_src.numel())

    @property
    def n_sequences(self) -> int:
        return int(self.seqlens.numel())

    @property
    def max_len(self) -> int:
        return self._sizes["max_len"]

    @property
    def n_ctx(self) -> int:
        """Number of context slots the sources reference (``max slot + 1``)."""
        return self._sizes["n_ctx"]

    # ---- derived index tensors ---------------------------------------------------------------
    @property
    def positions(self) -> torch.Tensor:
        """``[T]`` absolute position of every packed suffix token."""
        return self._derived["positions"]

    @property
    def pad_index(self) -> torch.Tensor:
        """``[T]`` row of every packed token in the padded attention layout (``padded_tokens``
        rows: the buckets one after another, see :attr:`buckets`)."""
        return self._derived["pad_index"]

    @property
    def buckets(self) -> Tuple[AttentionBucket, ...]:
        """The attention calls of one layer: length buckets over the padded layout (see
        :class:`BucketRule`); one bucket is the ``[N, max_len]`` block in sequence order."""
        return self._buckets

    @property
    def padded_tokens(self) -> int:
        """Rows of the padded attention layout (``N * max_len`` for one bucket)."""
        return sum(b.rows for b in self._buckets)

    def with_bucket_rule(self, rule: BucketRule) -> "TextPlan":
        """The same sequences with the attention layout of ``rule`` (a CPU plan)."""
        plan = self if self.prefix_src.device.type == "cpu" else self.to("cpu")
        return TextPlan(plan.prefix_src, plan.suffix_src, plan.seqlens, plan.group, plan.n_groups,
                        plan.class_index, plan.eot_positions, rule, **plan._layout_fields())

    def deep_prompt_rows(self, n_rows: int, start: Optional[int] = None,
                         device: Optional[torch.device] = None) -> Tuple[int, Optional[torch.Tensor]]:
        """Where ``n_rows`` deep text prompt rows go: positions ``start .. start+n_rows-1`` of every
        sequence (the originals' context rows ``x[:, start:start+n_ctx]``).

        Args:
            n_rows: M, the prompt rows of every prompted layer.
            start: the first replaced position; ``None``: the first context slot's position (1 after
                CLIP's ``[SOT]``, 0 for a tokenizer without a start token: SigLIP's, mT5's).

        Returns:
            ``(start, None)`` when the rows lie in the shared prefix (a causal tower: one copy for all
            classes), else ``(start, rows [N*M])`` with the packed suffix index of position
            ``start + k`` of sequence ``n`` at ``rows[n*M + k]`` (no prefix shared: a bidirectional
            tower, every sequence at full length or packed to its unmasked tokens). Computed once per
            plan on the host and cached, with one copy per ``device`` asked for (default: the CPU),
            so a step neither reads the device nor copies the index again.

        Raises:
            ValueError: the plan has no context slot to start from, or the rows straddle the shared
                prefix and the suffixes.
            UnpromptableTextTowerError: where deep prompts are ill defined: a sequence lacks one of the
                positions (masked as padding by the tower, or past its end), or the tower pools one
                of them (the feature would be a prompt row's own output, not a reading of the text).
        """
        if start is None:
            start = self.context_start()
        on_device = f"deep_prompt_rows:{start}:{n_rows}:{torch.device(device or 'cpu')}"
        if on_device in self._derived:
            return start, self._derived[on_device]
        if start < 0 or n_rows < 1:
            raise ValueError(f"deep prompt rows need start >= 0 and at least one row, got start={start}, "
                             f"{n_rows} rows")
        if start + n_rows <= self.prefix_len:
            return start, None
        if self.prefix_len > start:
            raise ValueError(f"{n_rows} deep prompt rows from position {start} straddle the shared prefix "
                             f"({self.prefix_len} rows) and the class suffixes: build the plan with the context "
                             "in front (position='end') and the whole context in the prefix")
        # host copies: computed once per plan, never in a step's device work
        pos, lens = self.positions.cpu(), self.seqlens.cpu()
        n = lens.numel()
        seq = torch.repeat_interleave(torch.arange(n), lens)
        hit = (pos >= start) & (pos < start + n_rows)
        counts = torch.zeros(n, dtype=torch.long).index_add_(0, seq[hit], torch.ones_like(seq[hit]))
        short = (counts != n_rows).nonzero().flatten()
        instead = "use a learner that prompts only the text input (CoOp, CoCoOp, KgCoOp, PRE, SoftCPT, POMP)"
        if short.numel():
            raise UnpromptableTextTowerError(
                f"sequence {int(short[0])} has no row at some of positions {start}..{start + n_rows - 1}, where the "
                f"deep text prompts go (the tower masks them as padding, or the prompt ends before): {instead}")
        pooled = self.eot_positions.cpu()
        in_rows = (pooled >= start) & (pooled < start + n_rows)
        if self.pool_offset is not None:  # a query-only pooled row is its own row, not one of the kept positions
            in_rows &= self.pool_offset.cpu() >= 0
        if bool(in_rows.any()):
            bad = int(in_rows.nonzero()[0])
            raise UnpromptableTextTowerError(
                f"the text tower pools sequence {bad} at position {int(pooled[bad])}, one of the deep prompt rows "
                f"{start}..{start + n_rows - 1} ('first' pooling without a start token): the feature would be a "
                f"prompt row's own output, not a reading of the text; {instead}, or a tokenizer that writes a start "
                "token")
        rows = hit.nonzero().flatten()  # sequence-major, positions ascending within a sequence
        self._derived[on_device] = rows.to(device or "cpu")
        return start, self._derived[on_device]

    def context_start(self) -> int:
        """Position of the plan's first context slot (the first in the shared prefix, else the first
        in any suffix): where deep text prompts go by default."""
        if self.derived("prefix_ctx_pos").numel():
            return int(self.derived("prefix_ctx_pos").min())
        ctx = self.derived("suffix_ctx_pos")
        if ctx.numel() == 0:
            raise ValueError("deep text prompts replace the context rows, and this plan has no learnable context: "
                             "build the plan with the context in front (position='end')")
        return int(self.positions[ctx].min())

    @property
    def eot_index(self) -> torch.Tensor:
        """``[N]`` packed index of each sequence's EOT token."""
        return self._derived["eot_index"]

    def derived(self, name: str) -> torch.Tensor:
        """Any derived index tensor by name (``prefix_ctx_pos``, ``suffix_ctx_slot``, ...)."""
        return self._derived[name]

    # ---- transforms (CPU plans; results cached where they are reused every step) -------------
    def _sequences(self) -> List[torch.Tensor]:
        starts = (torch.cumsum(self.seqlens, 0) - self.seqlens).tolist()
        return [self.suffix_src[s:s + n] for s, n in zip(starts, self.seqlens.tolist())]

    def select(self, indices: torch.Tensor | Sequence[int]) -> "TextPlan":
        """The plan of sequences ``indices`` (in that order, repeats allowed), same groups."""
        idx = torch.as_tensor(indices, dtype=torch.long).cpu()
        if idx.numel() == 0:
            raise ValueError("select needs at least one sequence index")
        if int(idx.min()) < 0 or int(idx.max()) >= self.n_sequences:
            raise ValueError(f"sequence indices must lie in [0, {self.n_sequences}), got "
                             f"[{int(idx.min())}, {int(idx.max())}]")
        plan = self if self.prefix_src.device.type == "cpu" else self.to("cpu")
        # Vectorised gather of the chosen suffixes (no Python loop over the N sequences: POMP
        # selects ~1000 of ~20K classes every step).
        starts = torch.cumsum(plan.seqlens, 0) - plan.seqlens
        lens = plan.seqlens[idx]
        out_starts = torch.cumsum(lens, 0) - lens
        tokens = torch.repeat_interleave(starts[idx] - out_starts, lens) + torch.arange(int(lens.sum()))
        return TextPlan(plan.prefix_src, plan.suffix_src[tokens], lens, plan.group[idx], plan.n_groups,
                        plan.class_index[idx], plan.eot_positions[idx], plan.bucket_rule,
                        **plan._layout_fields(idx, tokens))

    def _layout_fields(self, idx: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None) -> dict:
        """The optional layout fields (positions, pooled rows, full rows, semantics) of sequences
        ``idx`` whose packed tokens are ``tokens`` (all of them when None), for a derived plan."""
        def pick(t, where):
            return t if t is None or where is None else t[where]

        fields = {name: pick(getattr(self, name), idx)
                  for name in ("pool_offset", "query_src", "query_pos", "full_src", "full_ids")}
        fields.update(suffix_pos=pick(self.suffix_pos, tokens), semantics=self.semantics)
        return fields

    def for_semantics(self, semantics: TextSemantics) -> "TextPlan":
        """These prompts laid out exactly for a tower that masks and pools as ``semantics`` (cached):
        ``self`` when it already is, else rebuilt from the full rows (:func:`plan_from_rows`)."""
        if semantics == self.semantics:
            return self
        key = f"semantics:{semantics}"
        if key not in self._cache:
            if self.full_src is None:
                raise ValueError("this TextPlan was built without its full source rows, so it cannot be laid out "
                                 f"for a text tower with {semantics}; build it with build_text_plan")
            plan = self if self.prefix_src.device.type == "cpu" else self.to("cpu")
            self._cache[key] = plan_from_rows(plan.full_src, plan.full_ids, semantics, group=plan.group,
                                              n_groups=plan.n_groups, class_index=plan.class_index,
                                              bucket_rule=plan.bucket_rule)
        return self._cache[key]

    def repeat(self, n_groups: int) -> "TextPlan":
        """These sequences once per group ``0..n_groups-1`` (cached); needs a one-group plan."""
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if n_groups == 1 and self.n_groups == 1:
            return self
        key = f"repeat:{n_groups}"
        if key not in self._cache:
            self._cache[key] = concat_plans([self] * n_groups)
        return self._cache[key]

    def to(self, device: torch.device | str) -> "TextPlan":
        """This plan with its tensors on ``device`` (cached)."""
        device = torch.device(device)
        if self.prefix_src.device == device:
            return self
        key = f"device:{device}"
        if key not in self._cache:
            moved = {name: t.to(device) for name, t in self._derived.items()}
            seqlens, group = self.seqlens.to(device), self.group.to(device)
            own = {id(self.seqlens): seqlens, id(self.group): group}  # one bucket reads the plan's own

            def move(t):
                return None if t is None else own[id(t)] if id(t) in own else t.to(device)

            buckets = tuple(AttentionBucket(b.start, b.n, b.length, move(b.seqlens), move(b.group))
                            for b in self._buckets)
            layout = {name: (t.to(device) if isinstance(t, torch.Tensor) else t)
                      for name, t in self._layout_fields().items()}
            self._cache[key] = TextPlan(
                self.prefix_src.to(device), self.suffix_src.to(device), seqlens, group, self.n_groups,
                self.class_index.to(device), self.eot_positions.to(device), self.bucket_rule, _derived=moved,
                _sizes=dict(self._sizes), _buckets=buckets, **layout)
        return self._cache[key]


def _shorten_prefix(plan: TextPlan, prefix_len: int) -> TextPlan:
    """The same one-group plan with only ``prefix_len`` prefix rows shared; the rest of the old
    prefix moves to the front of every suffix (still exact, just less sharing)."""
    if prefix_len == plan.prefix_len:
        return plan
    moved = plan.prefix_src[prefix_len:]
    seqs = [torch.cat([moved, s]) for s in plan._sequences()]
    fields = plan._layout_fields()
    if plan.suffix_pos is not None:  # the prefix is contiguous from 0: the moved rows keep their positions
        moved_pos = torch.arange(prefix_len, plan.prefix_len)
        starts = (torch.cumsum(plan.seqlens, 0) - plan.seqlens).tolist()
        fields["suffix_pos"] = torch.cat([torch.cat([moved_pos, plan.suffix_pos[a:a + n]])
                                          for a, n in zip(starts, plan.seqlens.tolist())])
    if plan.pool_offset is not None:
        fields["pool_offset"] = torch.where(plan.pool_offset >= 0, plan.pool_offset + moved.numel(), plan.pool_offset)
    return TextPlan(plan.prefix_src[:prefix_len], torch.cat(seqs), plan.seqlens + moved.numel(), plan.group,
                    plan.n_groups, plan.class_index, plan.eot_positions, plan.bucket_rule, **fields)


def _joined_layout(plans: Sequence[TextPlan]) -> dict:
    """The layout fields of one-group plans joined in order (see :func:`concat_plans`)."""
    semantics = plans[0].semantics
    if any(p.semantics != semantics for p in plans):
        raise ValueError("concat_plans: the plans were laid out for different text towers "
                         f"({sorted({str(p.semantics) for p in plans})}); join plans of one tower")
    fields = {"semantics": semantics}
    if any(p.suffix_pos is not None for p in plans):
        fields["suffix_pos"] = torch.cat([p.positions for p in plans])
    if any(p.pool_offset is not None for p in plans):
        fields["pool_offset"] = torch.cat([p.seqlens - 1 if p.pool_offset is None else p.pool_offset for p in plans])
    for name in ("query_src", "query_pos"):  # read only where pool_offset < 0, which only these plans have
        if any(getattr(p, name) is not None for p in plans):
            fields[name] = torch.cat([torch.zeros_like(p.seqlens) if getattr(p, name) is None else getattr(p, name)
                                      for p in plans])
    widths = {None if p.full_src is None else p.full_src.shape[1] for p in plans}
    if len(widths) == 1 and None not in widths:
        fields.update(full_src=torch.cat([p.full_src for p in plans]), full_ids=torch.cat([p.full_ids for p in plans]))
    return fields


def concat_plans(plans: Sequence[TextPlan]) -> TextPlan:
    """Join one-group plans into one plan where plan ``i`` is group ``i``.

    The joined plan shares the longest prefix common to all plans (a plan whose own prefix is
    longer, e.g. a one-class list, moves the excess into its suffixes). ``class_index`` keeps
    each plan's own class numbering (for SoftCPT, offset it per task).
    """
    if not plans:
        raise ValueError("concat_plans needs at least one plan")
    cpu = []
    for i, p in enumerate(plans):
        if p.n_groups != 1:
            raise ValueError(f"plans[{i}] already has {p.n_groups} groups; concat one-group plans")
        cpu.append(p.to("cpu"))
    common = min(p.prefix_len for p in cpu)
    for p in cpu[1:]:
        common = min(common, int((torch.cumprod(p.prefix_src[:common] == cpu[0].prefix_src[:common], 0)).sum()))
    cpu = [_shorten_prefix(p, common) for p in cpu]
    return TextPlan(
        cpu[0].prefix_src, torch.cat([p.suffix_src for p in cpu]), torch.cat([p.seqlens for p in cpu]),
        torch.cat([torch.full_like(p.group, g) for g, p in enumerate(cpu)]), len(cpu),
        torch.cat([p.class_index for p in cpu]), torch.cat([p.eot_positions for p in cpu]), cpu[0].bucket_rule,
        **_joined_layout(cpu))


def build_text_plan(source_rows: Sequence[Sequence[int]], token_ids: torch.Tensor,
                    share_prefix: bool = True, semantics: TextSemantics = CLIP_TEXT) -> TextPlan:
    """Build a one-group plan from per-class source rows and the tokenized template.

    Args:
        source_rows: C rows of sources, one per class (token id ``>= 0`` or ``ctx_source(k)``),
            at most ``context_length`` long; a shorter row continues with its template ids.
        token_ids: ``[C, context_length]`` tokenized template: what the tower masks and pools by
            (for CLIP, EOT is its argmax, exactly as CLIP pools).
        share_prefix: encode the longest common prefix once where that is exact; ``False`` keeps
            only position 0 shared (always SOT).
        semantics: the masking and pooling of the tower the plan is for (CLIP's by default); a
            plan can be laid out for another tower later (:meth:`TextPlan.for_semantics`).
    """
    if len(source_rows) == 0:
        raise ValueError("classnames is empty: a text plan needs at least one class")
    if token_ids.shape[0] != len(source_rows):
        raise ValueError(f"token_ids has {token_ids.shape[0]} rows but {len(source_rows)} source rows were given")
    ids = token_ids.detach().cpu().to(torch.long)
    full = ids.clone()
    for n, row in enumerate(source_rows):
        if len(row) > full.shape[1]:
            raise ValueError(f"source row {n} has {len(row)} positions but the context length is {full.shape[1]}")
        full[n, :len(row)] = torch.as_tensor(list(row), dtype=torch.long)
    return plan_from_rows(full, ids, semantics, share_prefix=share_prefix)


def plan_from_rows(full_src: torch.Tensor, full_ids: torch.Tensor, semantics: TextSemantics, *,
                   group: Optional[torch.Tensor] = None, n_groups: int = 1,
                   class_index: Optional[torch.Tensor] = None, bucket_rule: Optional[BucketRule] = None,
                   share_prefix: bool = True) -> TextPlan:
    """The exact plan of full source rows ``[N, L]`` (template ids ``full_ids [N, L]``) for a tower
    that masks and pools as ``semantics``, with every saving that stays exact there
    (:mod:`fastprompt.towers.text_semantics`): each prompt keeps only the tokens its pooled row reads
    (:func:`kept_tokens`), packed; the longest common prefix of kept tokens is shared when the
    tower is causal (at most all but one kept token, so every suffix is non-empty)."""
    n, length = full_ids.shape
    keep, pool_pos, query_only = kept_tokens(full_ids, semantics)
    src = full_src if keep.shape[1] == length else torch.cat([full_src, full_src.new_zeros(n, 1)], 1)  # CLS column
    counts = keep.sum(1)
    if int(counts.min()) < 1:
        bad = int((counts < 1).nonzero()[0])
        raise ValueError(f"prompt {bad} has no token its pooled row reads (every key masked as padding): check the "
                         "tokenizer against the text tower's pad_id")
    prefix_len = 0
    if semantics.shares_prefix:
        same = keep.all(0) & (src == src[:1]).all(0)
        limit = int(counts.min()) - 1 if share_prefix else min(1, int(counts.min()) - 1)
        prefix_len = min(int(torch.cumprod(same.to(torch.long), 0).sum()), limit)
    suffix = keep.clone()
    suffix[:, :prefix_len] = False
    cols = torch.arange(keep.shape[1]).expand_as(keep)
    rank = torch.cumsum(suffix.to(torch.long), 1) - 1  # offset of each kept token within its suffix
    pool_offset = torch.where(query_only, -1, rank.gather(1, pool_pos[:, None]).squeeze(1))
    return TextPlan(
        prefix_src=src[0, :prefix_len].clone(), suffix_src=src[suffix], seqlens=suffix.sum(1),
        group=torch.zeros(n, dtype=torch.long) if group is None else group, n_groups=n_groups,
        class_index=torch.arange(n) if class_index is None else class_index, eot_positions=pool_pos,
        bucket_rule=DEFAULT_BUCKET_RULE if bucket_rule is None else bucket_rule,
        suffix_pos=cols[suffix], pool_offset=pool_offset,
        query_src=src.gather(1, pool_pos[:, None]).squeeze(1), query_pos=pool_pos.clone(),
        full_src=full_src, full_ids=full_ids, semantics=semantics)
