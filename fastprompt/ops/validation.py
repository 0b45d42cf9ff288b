"""Argument checking for :func:`fastprompt.ops.prompt_attention`.

Every check raises ``ValueError`` naming the offending argument, so a shape or dtype mistake
in a learner surfaces at the op boundary instead of as a silent wrong answer inside a kernel.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class AttentionArgs:
    """Normalised arguments handed to a backend.

    ``group`` is ``None`` exactly when every sequence reads prompt block 0 of a G = 1 block
    (backends may then broadcast with batch stride 0). ``seqlens`` is ``None`` when every
    sequence uses all ``L`` positions.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pk: Optional[torch.Tensor]
    pv: Optional[torch.Tensor]
    group: Optional[torch.Tensor]
    causal: bool
    seqlens: Optional[torch.Tensor]
    scale: float
    return_lse: bool = True


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_4d(name: str, t: torch.Tensor, layout: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape {layout} (4 dims), got shape {tuple(t.shape)}")


def _check_index(name: str, t: torch.Tensor, n: int, device: torch.device) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be an integer tensor of shape [{n}], got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an int32/int64 tensor, got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"{name} must have shape [N] = [{n}], got {tuple(t.shape)}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but q is on {device}; move it to q's device")


def check_prompt_attention_args(q, k, v, pk, pv, group, causal, seqlens, scale, return_lse=True) -> AttentionArgs:
    """Validate and normalise the op's arguments (see ``prompt_attention`` for the contract)."""
    _check_4d("q", q, "[N, L, H, d]")
    _check_4d("k", k, "[N, L, H, d]")
    _check_4d("v", v, "[N, L, H, d]")
    if k.shape != q.shape:
        raise ValueError(f"k must have the same shape as q {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.shape != q.shape:
        raise ValueError(f"v must have the same shape as q {tuple(q.shape)}, got {tuple(v.shape)}")
    if q.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"q must be a floating tensor (fp16/bf16/fp32/fp64), got dtype {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; all inputs must share one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must be on one device")
    n, seq_len, heads, head_dim = q.shape

    if (pk is None) != (pv is None):
        raise ValueError("pk and pv must be given together (both None for attention over own tokens only)")
    if pk is not None:
        _check_4d("pk", pk, "[G, P, H, d]")
        _check_4d("pv", pv, "[G, P, H, d]")
        if pk.shape[2:] != (heads, head_dim):
            raise ValueError(
                f"pk must have shape [G, P, H={heads}, d={head_dim}] to match q, got {tuple(pk.shape)}")
        if pv.shape != pk.shape:
            raise ValueError(f"pv must have the same shape as pk {tuple(pk.shape)}, got {tuple(pv.shape)}")
        for name, t in (("pk", pk), ("pv", pv)):
            if t.dtype != q.dtype:
                raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; all inputs must share one dtype")
            if t.device != q.device:
                raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all inputs must be on one device")
        n_groups = pk.shape[0]
        if n_groups < 1:
            raise ValueError("pk must hold at least one prompt block (G >= 1)")
        if group is None:
            if n_groups != 1:
                raise ValueError(
                    f"group is required when pk holds G = {n_groups} > 1 prompt blocks: pass the [N] map "
                    "saying which block each sequence reads")
        else:
            _check_index("group", group, n, q.device)
            if n > 0 and not torch.compiler.is_compiling():  # value checks read the device: eager only
                lo, hi = int(group.min()), int(group.max())
                if lo < 0 or hi >= n_groups:
                    raise ValueError(
                        f"group values must lie in [0, G) = [0, {n_groups}), got values in [{lo}, {hi}]")
            if n_groups == 1:
                group = None  # every sequence reads block 0: let backends broadcast
    elif group is not None:
        raise ValueError("group was given but pk/pv are None; group selects a prompt block, so pass pk and pv")

    if seqlens is not None:
        _check_index("seqlens", seqlens, n, q.device)
        if n > 0 and not torch.compiler.is_compiling():
            lo, hi = int(seqlens.min()), int(seqlens.max())
            if lo < 0 or hi > seq_len:
                raise ValueError(f"seqlens values must lie in [0, L] = [0, {seq_len}], got values in [{lo}, {hi}]")

    if scale is None:
        scale = head_dim ** -0.5
    elif not (isinstance(scale, (int, float)) and scale > 0):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    return AttentionArgs(q, k, v, pk, pv, group, bool(causal), seqlens, float(scale), bool(return_lse))
