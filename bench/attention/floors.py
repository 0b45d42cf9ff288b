"""What one call of the op must cost at least (useful FLOPs, minimal memory traffic) and what the
device can do (measured copy bandwidth and matmul throughput)."""
from __future__ import annotations

from typing import Dict

import torch

from bench.harness.timing import median, time_device

from .shapes import Case


def useful_flops(case: Case, mode: str) -> float:
    """Score and value matmuls over visible keys only (2 * 2 * d per query-key pair); bwd = 2.5x fwd."""
    s = case.shape
    lengths = case.seqlens.double().cpu() if case.seqlens is not None else torch.full((s.n,), float(s.seq_len))
    rows = torch.arange(s.seq_len, dtype=torch.float64)
    valid = rows[None, :] < lengths[:, None]
    own = torch.minimum(rows[None, :] + 1, lengths[:, None]) if s.causal else lengths[:, None].expand_as(valid)
    pairs = float(((own + s.n_prompt) * valid).sum())
    fwd = 4.0 * s.head_dim * s.heads * pairs
    return fwd if mode == "fwd" else 3.5 * fwd


def floor_bytes(case: Case, mode: str) -> float:
    """Minimal HBM traffic of the op: every input read once, every output written once.

    fwd reads q, k, v and the G prompt blocks (never a per-sequence copy) and writes out and the
    fp32 lse; bwd reads q, k, v, out, dout, lse and the prompt blocks and writes the five grads.
    """
    s = case.shape
    item = case.q.element_size()
    own = s.n * s.seq_len * s.heads * s.head_dim * item
    prompt = s.groups * s.n_prompt * s.heads * s.head_dim * item
    lse = s.n * s.heads * s.seq_len * 4
    fwd = 4 * own + 2 * prompt + lse
    return fwd if mode == "fwd" else fwd + 8 * own + 4 * prompt + lse


# ---- the device's peaks ---------------------------------------------------------------------

def measure_peaks(device: torch.device, dtype: torch.dtype) -> Dict[str, float]:
    """Measured copy bandwidth (bytes/s) and matmul throughput (FLOP/s) of this device."""
    if device.type == "cuda":
        n_copy, n_mm, reps = 1 << 28, 8192, 10
    else:
        n_copy, n_mm, reps = 1 << 24, 1024, 3
    src = torch.empty(n_copy, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    a = torch.randn(n_mm, n_mm, device=device).to(dtype)
    b = torch.randn(n_mm, n_mm, device=device).to(dtype)
    times = time_device({"copy": lambda: dst.copy_(src), "mm": lambda: a @ b}, device, reps)
    return {"bytes_per_s": 2 * src.numel() * 4 / median(times["copy"]),
            "flops_per_s": 2.0 * n_mm ** 3 / median(times["mm"])}
