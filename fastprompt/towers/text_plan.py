"""TextPlan: everything about a class list that does not change between steps.

A prompted class sequence is a row of *sources*: each position holds either a frozen token id
(``>= 0``) or a learnable context slot ``k`` (encoded as ``-1 - k``). Learners describe their
layout (CoOp end/middle/front, CoCoOp, class-specific context, plain hand-crafted prompts) as
source rows; the plan then

* truncates every row after its EOT (nothing after EOT reaches the EOT feature under the causal
  mask, so this is exact),
* splits off the longest prefix that is identical in every row (``[SOT][ctx...]`` for generic
  context at the end position) — the tower encodes it once per group and lets every suffix
  attend to its per-layer keys/values,
* packs the remaining suffix tokens of all classes back to back (``[T]``) with the metadata the
  tower needs to scatter them into a padded ``[N, max_len]`` layout for attention only.

It is built once per class list (``build_text_plan``) and reused every step; ``repeat(G)`` gives
the plan for G groups of the same classes (CoCoOp: one group per image).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch


def ctx_source(slot: int) -> int:
    """Source code of learnable context slot ``slot`` (0-based)."""
    return -1 - slot


@dataclass
class TextPlan:
    """Packed, prefix-shared layout of C prompted class sequences, replicated over G groups.

    Sequence ``n = g * C + c`` is class ``c`` of group ``g``. Tensors live on CPU; ``to(device)``
    returns a cached copy on another device.

    Attributes:
        n_classes: C.
        n_groups: G.
        n_ctx: number of learnable context slots referenced by the sources.
        prefix_src: ``[P]`` sources of the shared prefix (positions ``0..P-1``).
        suffix_src: ``[T]`` sources of the packed suffixes of the C classes (one group).
        seqlens: ``[C]`` suffix length per class (each ends with that class's EOT token).
        eot_positions: ``[C]`` absolute position of EOT in each class sequence.
        token_ids: ``[C, context_length]`` the tokenized template (for reference and EOT lookup).
    """

    n_classes: int
    n_groups: int
    n_ctx: int
    prefix_src: torch.Tensor
    suffix_src: torch.Tensor
    seqlens: torch.Tensor
    eot_positions: torch.Tensor
    token_ids: torch.Tensor
    _derived: Dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    _device_cache: Dict[str, "TextPlan"] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self._derived:
            self._derived.update(self._derive())

    def _derive(self) -> Dict[str, torch.Tensor]:
        """Index tensors of the G-group layout (computed once, on CPU)."""
        c, p, groups = self.n_classes, self.prefix_len, self.n_groups
        dev = self.seqlens.device
        starts = torch.cumsum(self.seqlens, 0) - self.seqlens  # [C] packed start of each class
        seq_of_token = torch.repeat_interleave(torch.arange(c, device=dev), self.seqlens)
        offsets = torch.arange(self.tokens_per_group, device=dev) - starts[seq_of_token]
        g = torch.arange(groups, device=dev)
        prefix_ctx = (self.prefix_src < 0).nonzero().squeeze(1)
        suffix_ctx = (self.suffix_src < 0).nonzero().squeeze(1)
        return {
            "positions": (p + offsets).repeat(groups),
            "pad_index": ((g[:, None] * c + seq_of_token[None, :]) * self.max_len
                          + offsets[None, :]).reshape(-1),
            "eot_index": (g[:, None] * self.tokens_per_group
                          + (starts + self.seqlens - 1)[None, :]).reshape(-1),
            "seqlens_all": self.seqlens.repeat(groups),
            "group": torch.repeat_interleave(g, c),
            "prefix_ctx_pos": prefix_ctx,
            "prefix_ctx_slot": -1 - self.prefix_src[prefix_ctx],
            "suffix_ctx_pos": suffix_ctx,
            "suffix_ctx_slot": -1 - self.suffix_src[suffix_ctx],
        }

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def prefix_len(self) -> int:
        return int(self.prefix_src.numel())

    @property
    def tokens_per_group(self) -> int:
        return int(self.suffix_src.numel())

    @property
    def n_sequences(self) -> int:
        return self.n_groups * self.n_classes

    @property
    def max_len(self) -> int:
        return int(self.seqlens.max()) if self.n_classes else 0

    # ---- derived index tensors (all for the G-group layout) ----------------------------------
    @property
    def positions(self) -> torch.Tensor:
        """``[G*T]`` absolute position of every packed suffix token."""
        return self._derived["positions"]

    @property
    def pad_index(self) -> torch.Tensor:
        """``[G*T]`` flat index of every packed token in the padded ``[N * max_len]`` layout."""
        return self._derived["pad_index"]

    @property
    def eot_index(self) -> torch.Tensor:
        """``[N]`` packed index of each sequence's EOT token."""
        return self._derived["eot_index"]

    @property
    def seqlens_all(self) -> torch.Tensor:
        """``[N]`` suffix length of every sequence."""
        return self._derived["seqlens_all"]

    @property
    def group(self) -> torch.Tensor:
        """``[N]`` prefix block (group) read by every sequence."""
        return self._derived["group"]

    def derived(self, name: str) -> torch.Tensor:
        """Any derived index tensor by name (``prefix_ctx_pos``, ``suffix_ctx_slot``, ...)."""
        return self._derived[name]

    # ---- transforms --------------------------------------------------------------------------
    def repeat(self, n_groups: int) -> "TextPlan":
        """The same classes replicated for ``n_groups`` groups (cached per group count)."""
        if n_groups < 1:
            raise ValueError(f"n_groups must be >= 1, got {n_groups}")
        if n_groups == self.n_groups:
            return self
        key = f"repeat:{n_groups}"
        if key not in self._device_cache:
            self._device_cache[key] = TextPlan(self.n_classes, n_groups, self.n_ctx, self.prefix_src,
                                               self.suffix_src, self.seqlens, self.eot_positions,
                                               self.token_ids)
        return self._device_cache[key]

    def to(self, device: torch.device | str) -> "TextPlan":
        """This plan with its tensors on ``device`` (cached)."""
        device = torch.device(device)
        if self.prefix_src.device == device:
            return self
        key = f"device:{device}"
        if key not in self._device_cache:
            moved = {name: t.to(device) for name, t in self._derived.items()}
            self._device_cache[key] = TextPlan(
                self.n_classes, self.n_groups, self.n_ctx, self.prefix_src.to(device),
                self.suffix_src.to(device), self.seqlens.to(device), self.eot_positions.to(device),
                self.token_ids.to(device), _derived=moved)
        return self._device_cache[key]


def build_text_plan(source_rows: Sequence[Sequence[int]], token_ids: torch.Tensor,
                    share_prefix: bool = True) -> TextPlan:
    """Build a plan from per-class source rows (full length) and the tokenized template.

    Args:
        source_rows: C rows of sources, one per class (token id ``>= 0`` or ``ctx_source(k)``),
            each at least as long as its EOT position + 1.
        token_ids: ``[C, context_length]`` tokenized template; EOT is located as its argmax
            (CLIP's EOT id is the largest in the vocabulary), exactly as CLIP pools.
        share_prefix: encode the longest common prefix once (exact); ``False`` keeps only
            position 0 shared when it is identical (always SOT), which is still exact.
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
    all_src = [s for r in rows for s in r]
    n_ctx = max([-s for s in all_src if s < 0], default=0)
    return TextPlan(
        n_classes=len(rows), n_groups=1, n_ctx=n_ctx,
        prefix_src=torch.tensor(rows[0][:prefix_len], dtype=torch.long),
        suffix_src=torch.tensor([s for r in suffix for s in r], dtype=torch.long),
        seqlens=torch.tensor([len(r) for r in suffix], dtype=torch.long),
        eot_positions=eot.to(torch.long), token_ids=token_ids.to(torch.long))
