"""Argument checking for :func:`fastprompt.ops.prompt_attention`.

Every check raises ``ValueError`` naming the offending argument, so a shape or dtype mistake
in a learner surfaces at the op boundary instead of as a silent wrong answer inside a kernel.

Shapes, dtypes and devices are metadata. The *values* of ``group`` and ``seqlens`` are not: on a
GPU, reading them back is a device sync, and a tower calls the op once per layer. So value ranges
are read at most once per call (both tensors in one transfer), and not at all for index tensors
whose range was declared when they were built (:func:`declare_index_range`; a ``TextPlan`` does
this for its ``group`` and ``seqlens``). A declaration holds while the tensor is unmodified (its
version counter unchanged); the per-call check against ``G`` and ``L`` still runs, on the
declared range.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch.utils.weak import WeakTensorKeyDictionary


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


_DECLARED_RANGES = WeakTensorKeyDictionary()  # index tensor -> (version counter, min, max)


def declare_index_range(t: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Record that the integer tensor ``t`` holds values in ``[lo, hi]`` (its min and max, known to
    the caller without reading the device), so ``prompt_attention`` checks ``group`` /
    ``seqlens`` against that range instead of reading ``t`` back on every call. Any in-place
    change of ``t`` afterwards voids the declaration. Returns ``t``.
    """
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"declare_index_range needs an integer tensor, got dtype {t.dtype}")
    if int(lo) > int(hi):
        raise ValueError(f"declare_index_range: lo = {lo} > hi = {hi}")
    _DECLARED_RANGES[t] = (t._version, int(lo), int(hi))
    return t


def declared_index_range(t: torch.Tensor) -> Optional[Tuple[int, int]]:
    """The range declared for ``t`` by :func:`declare_index_range`, or ``None`` (none, or ``t``
    was modified since)."""
    entry = _DECLARED_RANGES.get(t)
    if entry is None or entry[0] != t._version:
        return None
    return entry[1], entry[2]


def index_ranges(*tensors: torch.Tensor) -> List[Tuple[int, int]]:
    """``(min, max)`` of each non-empty integer tensor: declared ranges cost nothing, the others
    are read back together (one device-to-host transfer for all of them)."""
    ranges: List[Optional[Tuple[int, int]]] = [declared_index_range(t) for t in tensors]
    unknown = [t for t, r in zip(tensors, ranges) if r is None]
    if unknown:
        values = iter(torch.stack([x for t in unknown for x in torch.aminmax(t)]).tolist())
        ranges = [r if r is not None else (next(values), next(values)) for r in ranges]
    return ranges


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
    if heads < 1 or head_dim < 1:
        raise ValueError(f"q must have at least one head of at least one channel ([N, L, H >= 1, d >= 1]), got "
                         f"shape {tuple(q.shape)}")

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
    elif group is not None:
        raise ValueError("group was given but pk/pv are None; group selects a prompt block, so pass pk and pv")
    if seqlens is not None:
        _check_index("seqlens", seqlens, n, q.device)

    # Value checks: under torch.compile they would break the graph (and sync), so eager only.
    if n > 0 and not torch.compiler.is_compiling() and (group is not None or seqlens is not None):
        checked = [(name, t) for name, t in (("group", group), ("seqlens", seqlens)) if t is not None]
        for (name, _), (lo, hi) in zip(checked, index_ranges(*(t for _, t in checked))):
            if name == "group" and (lo < 0 or hi >= n_groups):
                raise ValueError(
                    f"group values must lie in [0, G) = [0, {n_groups}), got values in [{lo}, {hi}]")
            if name == "seqlens" and (lo < 0 or hi > seq_len):
                raise ValueError(f"seqlens values must lie in [0, L] = [0, {seq_len}], got values in [{lo}, {hi}]")
    if group is not None and n_groups == 1:
        group = None  # every sequence reads block 0: let backends broadcast

    if scale is None:
        scale = head_dim ** -0.5
    elif isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    return AttentionArgs(q, k, v, pk, pv, group, bool(causal), seqlens, float(scale), bool(return_lse))
