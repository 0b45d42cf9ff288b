"""Pieces shared by the forward and backward kernels: supported inputs, arguments as the kernels
read them, tile sizes, the dot helper.

Tile sizes are powers of two of at least 16 (``tl.dot`` needs every dimension >= 16). The head
dimension is padded up to a power of two (80 -> 128) and masked; sequence and prompt lengths
are masked too, so no length has to be a multiple of a tile. Register pressure decides the caps
on a GPU; the interpreter has no registers and pays per program, so it always takes the large
16-bit tiles (the code is the same for every tile size).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton import knobs

# Triton picks interpreter or compiler when a kernel is defined (``@triton.jit`` reads the knob),
# so the mode of the kernels below is the mode at import time.
INTERPRET: bool = bool(knobs.runtime.interpret)

# What the kernels handle: the one home of these limits. The launchers check them
# (check_supported), so the triton backend of fastprompt.ops raises this ValueError from its op.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
LOG2E = 1.4426950408889634


def check_supported(q: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the argument when ``q`` [N, L, H, d] is outside what the kernels do."""
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(
            f"q has dtype {q.dtype}, but the triton backend supports float16, bfloat16 and float32; "
            "use backend='eager' for float64")
    head_dim = q.shape[-1]
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        raise ValueError(
            f"q has head dim d = {head_dim}, but the triton backend supports 1 <= d <= {MAX_HEAD_DIM}; "
            "use backend='eager'")


def last_dim_contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``t`` (any shape, or ``None``) with a unit last stride, copied only when it has none: the
    kernels address rows through the other strides and read a row's elements consecutively."""
    if t is None or t.shape[-1] <= 1 or t.stride(-1) == 1:
        return t
    return t.contiguous()


def index_arg(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """``group`` / ``seqlens`` as the kernels read them: entry ``n`` at ``t + n`` (a strided view,
    e.g. a column of a larger table, is copied; it is [N] integers)."""
    return None if t is None else t.contiguous()


def _tile(length: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(max(length, 1))))


def block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def fwd_tiles(dtype: torch.dtype, seq_len: int, n_prompt: int, head_dim: int):
    """``(BLOCK_M, BLOCK_N, BLOCK_P, BLOCK_D)`` for the forward kernel."""
    bd = block_d(head_dim)
    if dtype == torch.float32 and not INTERPRET:  # exact fp32 dots: FMA units, every tile in registers
        m_cap = kv_cap = 32 if bd <= 64 else 16
    else:
        m_cap, kv_cap = 64, (64 if bd <= 64 else 32)  # a wide head halves the K/V tiles
    return _tile(seq_len, m_cap), _tile(seq_len, kv_cap), _tile(n_prompt, kv_cap), bd


def bwd_tiles(dtype: torch.dtype, seq_len: int, n_prompt: int, head_dim: int):
    """``(BLOCK, BLOCK_P, BLOCK_D)``: BLOCK is both the query and the key tile of the own segment."""
    bd = block_d(head_dim)
    if dtype == torch.float32 and not INTERPRET:
        cap = 32 if bd <= 64 else 16
    else:
        cap = 64 if bd <= 64 else 32  # dK and dV accumulate in fp32 registers next to K and V
    return _tile(seq_len, cap), _tile(n_prompt, cap), bd


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs multiply in full fp32 ("ieee"), not TF32, so they match the eager backend to 1e-5."""
    return "ieee" if dtype == torch.float32 or INTERPRET else "tf32"


def emulate_bf16(dtype: torch.dtype) -> bool:
    """Whether the kernels must work around the interpreter's bf16 arithmetic (``EMULATE_BF16``).

    Triton's interpreter (3.x) multiplies bf16 tensors in ``tl.dot`` as their raw uint16 bit
    patterns (``create_dot``), and narrows fp32 to bf16 by truncation (``cast_impl``) where the GPU
    rounds to nearest even. ``_dot`` and ``_narrow`` then do what the GPU does: bf16 products
    exact in fp32, accumulated in fp32; narrowing rounded to nearest even.
    """
    return INTERPRET and dtype == torch.bfloat16


@triton.jit
def _dot(a, b, PREC: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``a @ b`` accumulated in fp32."""
    if EMULATE_BF16:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _narrow(x, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """``x.to(dtype)`` for fp32 ``x``, rounded to nearest even (see ``emulate_bf16``)."""
    if EMULATE_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + 0x7FFF + ((bits >> 16) & 1)  # round half to even at bit 16 (finite values)
        x = ((bits >> 16) << 16).to(tl.float32, bitcast=True)  # exactly representable in bf16 now
    return x.to(dtype)


def launch_device(t: torch.Tensor):
    """Context that makes ``t``'s GPU current while a kernel launches (a no-op on CPU)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    import contextlib
    return contextlib.nullcontext()
