"""How an open_clip text tower masks and pools, and which tokens each prompt therefore needs.

Every saving of the fast text path is an argument about *which keys a pooled feature reads*:

* **truncation** after the pooled token is exact only when attention is causal (nothing after it
  reaches it); with bidirectional attention every token, padding included, can reach it;
* **packing** (dropping tokens and padding the rest only inside attention) is exact for a token
  that is neither a key of any kept row nor pooled: past the pooled token under a causal mask, or
  masked as padding by a key-padding mask (open_clip's ``use_pad_mask``, CoCa's CLS mask);
* **prefix sharing** of ``[SOT][ctx]`` is exact only under a causal mask (without it the prefix
  attends to the class tokens and differs per class).

:class:`TextSemantics` holds the tower's masking and pooling, read from the model
(:func:`text_semantics`); :func:`kept_tokens` derives, per prompt, the tokens that must be computed
and whether the pooled row is a query that is not itself a key (CoCa's CLS under its legacy mask,
a pooled padding token under a key-padding mask). Nothing here assumes CLIP: the plan
(:mod:`fastprompt.towers.text_plan`) applies only the savings these rules leave exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

POOLS = ("argmax", "eos", "last", "first")
CLS_MASKS = (None, "legacy", "correct")


@dataclass(frozen=True)
class TextSemantics:
    """The masking and pooling of a text tower (open_clip ``TextTransformer`` / ``CLIP`` text side).

    Attributes:
        causal: the tower applies the causal mask (``attn_mask``; ``no_causal_mask=False``).
        pool: which row is pooled: ``argmax`` (the largest id: CLIP's EOT), ``eos`` (the first
            ``eos_id``), ``last`` (position ``L-1``), ``first`` (position 0).
        eos_id: the id ``eos`` pooling looks for.
        pad_mask: keys whose template id is ``pad_id`` are masked (open_clip's ``use_pad_mask``,
            only in bidirectional mode, and always with a CoCa CLS embedding).
        pad_id: the padding id the mask compares with.
        cls: CoCa's appended CLS embedding (position ``L``, always pooled): ``None`` (none),
            ``"legacy"`` (open_clip's default mask: key validity shifted by one, the CLS key valid
            only when the prompt fills the context) or ``"correct"`` (``correct_cls_mask=True``).
    """

    causal: bool = True
    pool: str = "argmax"
    eos_id: Optional[int] = None
    pad_mask: bool = False
    pad_id: int = 0
    cls: Optional[str] = None

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"text pooling {self.pool!r} is not supported: fastprompt pools one row per prompt, "
                             f"one of {POOLS}")
        if self.pool == "eos" and self.eos_id is None:
            raise ValueError("text pooling 'eos' needs the tower's eos_id")
        if self.cls not in CLS_MASKS:
            raise ValueError(f"cls must be one of {CLS_MASKS}, got {self.cls!r}")

    @property
    def masks_padding(self) -> bool:
        """Keys are masked by their template ids (a key-padding mask, or CoCa's CLS mask)."""
        return self.pad_mask or self.cls is not None

    @property
    def shares_prefix(self) -> bool:
        """Prefix sharing is exact: only a causal mask keeps the prefix from seeing the class tokens."""
        return self.causal

    @property
    def savings(self) -> str:
        """The fast path's savings that stay exact for this tower, in words (recorded on every plan)."""
        if self.causal:
            return "prefix sharing, truncation after the pooled token, packing"
        if self.masks_padding:
            return "packing of the masked padding (bidirectional: no prefix sharing, no truncation)"
        return "none: full length (bidirectional attention over the padding, nothing may be cut)"


CLIP_TEXT = TextSemantics()


def text_semantics(text: nn.Module) -> TextSemantics:
    """The :class:`TextSemantics` of an open_clip text tower: ``CLIP`` itself (text parts on the
    model: causal iff ``attn_mask``, ``text_pool_type``/``text_eos_id``, no padding mask and no CLS,
    as ``CLIP.encode_text``) or a ``TextTransformer`` (``pool_type``, ``eos_id``, ``pad_id``,
    ``use_pad_mask``, ``cls_emb``, ``correct_cls_mask``)."""
    causal = getattr(text, "attn_mask", None) is not None
    pool = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
    eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
    cls = None
    if getattr(text, "cls_emb", None) is not None:
        # open_clip pools the appended CLS whatever pool_type says (TextTransformer.forward).
        cls = "correct" if getattr(text, "correct_cls_mask", False) else "legacy"
        pool = "last"
    elif pool == "none":
        raise ValueError("text pooling 'none' returns every token, not one feature per prompt: a prompt "
                         "learner needs a pooled tower (argmax, eos, last or first)")
    return TextSemantics(causal=causal, pool=pool, eos_id=None if eos_id is None else int(eos_id),
                         pad_mask=bool(getattr(text, "use_pad_mask", False)), pad_id=int(getattr(text, "pad_id", 0)),
                         cls=cls)


def kept_tokens(ids: torch.Tensor, sem: TextSemantics) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tokens of each prompt must be computed for its pooled feature.

    Args:
        ids: ``[N, L]`` template token ids (the tokenized prompts, context placeholders included).
        sem: the tower's masking and pooling.

    Returns:
        ``(keep [N, L'], pool_pos [N], query_only [N])`` with ``L' = L + 1`` when the tower appends
        a CLS (position ``L``), else ``L``. ``keep`` marks the rows that are keys of the pooled row
        (directly or through earlier layers); ``pool_pos`` is the pooled position; ``query_only``
        marks prompts whose pooled row is masked as a key (so it is not in ``keep``): it reads the
        kept keys without being one.
    """
    n, length = ids.shape
    cols = torch.arange(length + (sem.cls is not None))
    if sem.masks_padding:
        valid = ids != sem.pad_id
        if sem.cls is not None:  # open_clip's _build_additive_mask: the CLS column goes last or (legacy) first
            ones = valid.new_ones(n, 1)
            valid = torch.cat([valid, ones] if sem.cls == "correct" else [ones, valid], 1)
    else:
        valid = torch.ones(n, cols.numel(), dtype=torch.bool)
    if sem.cls is not None:
        pool_pos = torch.full((n,), length, dtype=torch.long)
    elif sem.pool == "argmax":
        pool_pos = ids.argmax(dim=-1)
    elif sem.pool == "eos":
        hit = ids == sem.eos_id
        missing = (~hit.any(1)).nonzero().flatten()
        if missing.numel():
            raise ValueError(f"prompt {int(missing[0])} has no token {sem.eos_id} (the text tower's eos_id, which "
                             "'eos' pooling reads): the tokenizer does not match the text tower; use the model's "
                             "own tokenizer (open_clip.get_tokenizer(model_name))")
        pool_pos = hit.int().argmax(dim=-1)
    elif sem.pool == "last":
        pool_pos = torch.full((n,), length - 1, dtype=torch.long)
    else:
        pool_pos = torch.zeros(n, dtype=torch.long)
    query_only = ~valid.gather(1, pool_pos[:, None]).squeeze(1)
    keep = valid.clone()
    if sem.causal:  # nothing after the pooled row reaches it
        keep &= cols[None, :] <= pool_pos[:, None]
    keep[query_only, pool_pos[query_only]] = False
    return keep, pool_pos, query_only
