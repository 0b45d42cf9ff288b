"""Unshared query / key / value prompt rows of one prompted layer (RPP).

Ordinary deep prompts (VPT-deep, MaPLe, IVLP) are *hidden-state rows*: one vector per prompt
token, from which the frozen block derives the token's query, key and value. RPP learns the three
separately. A :class:`QKVPrompt` holds them for one layer in one of two spaces:

* **width space** (RPP's pre-projection variant): ``q``, ``k``, ``v`` are ``[M, D]`` rows of the
  residual stream; each passes through the block's frozen ``ln_1`` and *its own* slice of the
  in-projection (and open_clip's qk-norm), exactly as a hidden row would;
* **head space** (post-projection, prefix-tuning style): ``q``, ``k``, ``v`` are ``[M, H, d]``
  and are used as they are (no LayerNorm, no projection, no qk-norm).

``residual`` (``[M, D]``) is the residual-stream row the attention output is added to. It and
``q`` only matter where the rows' outputs survive the layer (the last prompted layer, when it
is not the tower's last layer); the towers read them only there, so elsewhere they may be
``None``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch


@dataclass(frozen=True)
class QKVPrompt:
    """Prompt rows of one layer; see the module docstring for the two spaces.

    Attributes:
        k: ``[M, D]`` (width space) or ``[M, H, d]`` (head space) key prompts.
        v: same shape as ``k``, value prompts.
        q: same shape as ``k``, query prompts, or ``None`` where no output survives.
        residual: ``[M, D]`` residual-stream rows, or ``None`` where no output survives.
    """

    k: torch.Tensor
    v: torch.Tensor
    q: Optional[torch.Tensor] = None
    residual: Optional[torch.Tensor] = None

    @property
    def n_rows(self) -> int:
        return int(self.k.shape[0])

    @property
    def head_space(self) -> bool:
        return self.k.dim() == 3

    def check(self, name: str, width: int, heads: int, n_rows: Optional[int] = None) -> None:
        """Raise ``ValueError`` (naming ``name``) unless the shapes fit a tower of this width/heads."""
        head_dim = width // heads
        expect = (heads, head_dim) if self.k.dim() == 3 else (width,)
        if self.k.dim() not in (2, 3) or tuple(self.k.shape[1:]) != expect:
            raise ValueError(f"{name}.k must have shape [M, {width}] (width space) or [M, {heads}, {head_dim}] "
                             f"(head space), got {tuple(self.k.shape)}")
        m = self.n_rows
        if m < 1:
            raise ValueError(f"{name} has no prompt rows")
        if n_rows is not None and m != n_rows:
            raise ValueError(f"{name} has {m} rows but layer 0 has {n_rows}; every layer needs the same M")
        for part in ("v", "q"):
            t = getattr(self, part)
            if t is not None and t.shape != self.k.shape:
                raise ValueError(f"{name}.{part} must have the shape of {name}.k {tuple(self.k.shape)}, "
                                 f"got {tuple(t.shape)}")
        if self.residual is not None and tuple(self.residual.shape) != (m, width):
            raise ValueError(f"{name}.residual must have shape [{m}, {width}], got {tuple(self.residual.shape)}")

    def map_width_rows(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "QKVPrompt":
        """Apply ``fn`` to every residual-stream (width-space) tensor: q/k/v in width space and
        ``residual``. Used for what happens to prompt rows entering layer 0 (the vision
        ``ln_pre``, the text positional embedding); head-space q/k/v are left alone."""
        def f(t):
            return None if t is None else fn(t)
        if self.head_space:
            return QKVPrompt(self.k, self.v, self.q, f(self.residual))
        return QKVPrompt(f(self.k), f(self.v), f(self.q), f(self.residual))
