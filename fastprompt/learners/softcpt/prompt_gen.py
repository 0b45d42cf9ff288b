"""SoftCPT's meta-network: task (and class) features -> a generated context per task (or class).

kding1225/softcpt ``trainers/mtcoop.py`` ``PromptGen`` (``pg_type`` "lin": ``x @ proj`` with
``proj [d_in, n_ctx * D]``, no bias, N(0, 0.02); "linmean" / "lincls" read the mean / the class
half of ``[class ; task]`` features), and the holders of the task / class-feature contexts,
named like the original's prompt learners so its checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn


class ContextHolder(nn.Module):
    """Holds a learnable context ``ctx`` (named like the original's prompt learners)."""

    def __init__(self, ctx: torch.Tensor):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class PromptGen(nn.Module):
    """The meta-network: features ``[R, d_in] -> contexts [R, n_ctx, D]`` (original ``PromptGen``)."""

    def __init__(self, pg_type: str, in_dim: int, n_ctx: int, width: int, std: float, device):
        super().__init__()
        self.pg_type, self.n_ctx, self.width = pg_type, n_ctx, width
        self.proj = nn.Parameter(torch.empty(in_dim, n_ctx * width, device=device).normal_(0.0, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pg_type == "linmean":  # x = [class ; task]: their mean
            half = x.shape[-1] // 2
            x = (x[..., :half] + x[..., half:]) / 2.0
        elif self.pg_type == "lincls":  # class half only
            x = x[..., :x.shape[-1] // 2]
        return (x @ self.proj.to(x.dtype)).reshape(x.shape[0], self.n_ctx, self.width)
