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
    """

    prefix_src: torch.Tensor
    suffix_src: torch.Tensor
    seqlens: torch.Tensor
    group: torch.Tensor
    n_groups: int
    class_index: torch.Tensor
    eot_positions: torch.Tensor
    bucket_rule: BucketRule = field(default_factory=_default_rule)
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
        eot_index = starts + self.seqlens - 1
        return {
            "positions": self.prefix_len + offsets,
            "pad_index": pad_index,
            "eot_index": eot_index,
            "eot_pad_index": pad_index[eot_index],
            "prefix_ctx_pos": prefix_ctx,
            "prefix_ctx_slot": -1 - self.prefix_src[prefix_ctx],
            "suffix_ctx_pos": suffix_ctx,
            "suffix_ctx_slot": -1 - self.suffix_src[suffix_ctx],
            "suffix_ctx_group": self.group[seq_of_token[suffix_ctx]],
        }, buckets

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
                        plan.class_index, plan.eot_positions, rule)

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
                        plan.class_index[idx], plan.eot_positions[idx], plan.bucket_rule)

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
            self._cache[key] = TextPlan(
                self.prefix_src.to(device), self.suffix_src.to(device), seqlens, group, self.n_groups,
                self.class_index.to(device), self.eot_positions.to(device), self.bucket_rule, _derived=moved,
                _sizes=dict(self._sizes), _buckets=buckets)
        return self._cache[key]


def _shorten_prefix(plan: TextPlan, prefix_len: int) -> TextPlan:
    """The same one-group plan with only ``prefix_len`` prefix rows shared; the rest of the old
    prefix moves to the front of every suffix (still exact, just less sharing)."""
    if prefix_len == plan.prefix_len:
        return plan
    moved = plan.prefix_src[prefix_len:]
    seqs = [torch.cat([moved, s]) for s in plan._sequences()]
    return TextPlan(plan.prefix_src[:prefix_len], torch.cat(seqs), plan.seqlens + moved.numel(), plan.group,
                    plan.n_groups, plan.class_index, plan.eot_positions, plan.bucket_rule)


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
        torch.cat([p.class_index for p in cpu]), torch.cat([p.eot_positions for p in cpu]), cpu[0].bucket_rule)


def build_text_plan(source_rows: Sequence[Sequence[int]], token_ids: torch.Tensor,
                    share_prefix: bool = True) -> TextPlan:
    """Build a one-group plan from per-class source rows (full length) and the tokenized template.

    Args:
        source_rows: C rows of sources, one per class (token id ``>= 0`` or ``ctx_source(k)``),
            each at least as long as its EOT position + 1.
        token_ids: ``[C, context_length]`` tokenized template; EOT is located as its argmax
            (CLIP's EOT id is the largest in the vocabulary), exactly as CLIP pools.
        share_prefix: encode the longest common prefix once (exact); ``False`` keeps only
            position 0 shared (always SOT), which is still exact.
    """
    if len(source_rows) == 0:
        raise ValueError("classnames is empty: a text plan needs at least one class")
    if token_ids.shape[0] != len(source_rows):
        raise ValueError(f"token_ids has {token_ids.shape[0]} rows but {len(source_rows)} source rows were given")
    eot = token_ids.argmax(dim=-1)
    rows = [list(r[: int(e) + 1]) for r, e in zip(source_rows, eot)]
    shortest = min(len(r) for r in rows)
    # The EOT row must stay in every suffix, so the prefix is at most shortest - 1 rows long.
    limit = shortest - 1 if share_prefix else min(1, shortest - 1)
    prefix_len = 0
    while prefix_len < limit and all(r[prefix_len] == rows[0][prefix_len] for r in rows):
        prefix_len += 1
    suffix = [r[prefix_len:] for r in rows]
    n = len(rows)
    return TextPlan(
        prefix_src=torch.tensor(rows[0][:prefix_len], dtype=torch.long),
        suffix_src=torch.tensor([s for r in suffix for s in r], dtype=torch.long),
        seqlens=torch.tensor([len(r) for r in suffix], dtype=torch.long),
        group=torch.zeros(n, dtype=torch.long), n_groups=1,
        class_index=torch.arange(n), eot_positions=eot.to(torch.long))
