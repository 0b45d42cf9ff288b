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
  tower needs to scatter them into a padded ``[N, max_len]`` layout for attention only.

Groups: sequence ``n`` reads prefix block ``group[n]`` and fills its context slots from context
table ``group[n]``. ``repeat(G)`` gives the same classes for G groups (CoCoOp: one group per
image), ``concat`` joins class lists as groups (SoftCPT: one group per task) and ``select`` keeps
a subset of sequences (sampled classes). Plans are built once per class list and reused.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence

import torch

from ..ops import declare_index_range


def ctx_source(slot: int) -> int:
    """Source code of learnable context slot ``slot`` (0-based)."""
    return -1 - slot


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
    """

    prefix_src: torch.Tensor
    suffix_src: torch.Tensor
    seqlens: torch.Tensor
    group: torch.Tensor
    n_groups: int
    class_index: torch.Tensor
    eot_positions: torch.Tensor
    _derived: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _cache: Dict[str, "TextPlan"] = field(default_factory=dict, repr=False)
    _sizes: Dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self._sizes:
            self._sizes.update(self._measure())
        if not self._derived:
            self._derived.update(self._derive())
        # Checked once, here: attention calls then check group / seqlens against these ranges
        # instead of reading them back from the device in every layer.
        if self.n_sequences:
            declare_index_range(self.group, self._sizes["group_min"], self._sizes["group_max"])
            declare_index_range(self.seqlens, self._sizes["min_len"], self._sizes["max_len"])

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

    def _derive(self) -> Dict[str, torch.Tensor]:
        """Index tensors of the packed layout (computed once)."""
        dev = self.seqlens.device
        n = self.n_sequences
        starts = torch.cumsum(self.seqlens, 0) - self.seqlens  # [N] packed start of each sequence
        seq_of_token = torch.repeat_interleave(torch.arange(n, device=dev), self.seqlens)
        offsets = torch.arange(self.n_tokens, device=dev) - starts[seq_of_token]
        prefix_ctx = (self.prefix_src < 0).nonzero().squeeze(1)
        suffix_ctx = (self.suffix_src < 0).nonzero().squeeze(1)
        return {
            "positions": self.prefix_len + offsets,
            "pad_index": seq_of_token * self.max_len + offsets,
            "eot_index": starts + self.seqlens - 1,
            "prefix_ctx_pos": prefix_ctx,
            "prefix_ctx_slot": -1 - self.prefix_src[prefix_ctx],
            "suffix_ctx_pos": suffix_ctx,
            "suffix_ctx_slot": -1 - self.suffix_src[suffix_ctx],
            "suffix_ctx_group": self.group[seq_of_token[suffix_ctx]],
        }

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
        """``[T]`` flat index of every packed token in the padded ``[N * max_len]`` layout."""
        return self._derived["pad_index"]

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
                        plan.class_index[idx], plan.eot_positions[idx])

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
            self._cache[key] = TextPlan(
                self.prefix_src.to(device), self.suffix_src.to(device), self.seqlens.to(device),
                self.group.to(device), self.n_groups, self.class_index.to(device),
                self.eot_positions.to(device), _derived=moved, _sizes=dict(self._sizes))
        return self._cache[key]


def _shorten_prefix(plan: TextPlan, prefix_len: int) -> TextPlan:
    """The same one-group plan with only ``prefix_len`` prefix rows shared; the rest of the old
    prefix moves to the front of every suffix (still exact, just less sharing)."""
    if prefix_len == plan.prefix_len:
        return plan
    moved = plan.prefix_src[prefix_len:]
    seqs = [torch.cat([moved, s]) for s in plan._sequences()]
    return TextPlan(plan.prefix_src[:prefix_len], torch.cat(seqs), plan.seqlens + moved.numel(), plan.group,
                    plan.n_groups, plan.class_index, plan.eot_positions)


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
        torch.cat([p.class_index for p in cpu]), torch.cat([p.eot_positions for p in cpu]))


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
