"""Forward kernel: one online softmax over a prompt block and then the sequence's own keys.

For a tile of BLOCK_M query rows of sequence ``n``, head ``h``::

    s_j = scale * q_i . key_j            over [pk[group[n]] ; k[n, visible(i)]]
    out_i = sum_j softmax(s)_ij value_j,  lse_i = log sum_j exp(s_ij)

The prompt block is read first, through the group map (a G = 1 block is always block 0, i.e.
read with a batch stride of 0, never expanded per sequence), then the own keys up to the
sequence's length (and up to the diagonal when causal). Both loops update one running
max / sum / accumulator (the FlashAttention-2 online softmax, kept in fp32 and in base 2:
``exp(x) = exp2(x * log2 e)``). Rows at or past ``seqlens[n]`` are not computed: out 0, lse -inf.

Algorithm after FlashAttention-2 (Dao, 2023) and the Triton tutorial
``triton-lang/triton python/tutorials/06-fused-attention.py``; the two-segment loop, the group
map and the length masks are this project's.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import (LOG2E, _dot, _narrow, check_supported, dot_precision, emulate_bf16, fwd_tiles, index_arg,
                     last_dim_contiguous, launch_device)


@triton.jit
def _online_softmax_step(q, kt, vb, valid, m_i, l_i, acc, qk_scale,
                         PREC: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Fold one key tile (``kt`` [D, BN] keys transposed, ``vb`` [BN, D]) into the running state."""
    s = _dot(q, kt, PREC, EMULATE_BF16) * qk_scale  # [BM, BN], base-2 logits
    s = tl.where(valid, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no visible key yet keeps m = -inf; shift it by 0 so that no
    # (-inf) - (-inf) = NaN appears (its p and alpha are then exactly 0 and 1).
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    # As in the eager backend, probabilities meet V in the input dtype.
    acc = acc * alpha[:, None] + _dot(_narrow(p, vb.dtype, EMULATE_BF16), vb, PREC, EMULATE_BF16)
    return m_new, l_i, acc


@triton.jit
def _prompt_attention_fwd_kernel(
    Q, K, V, PK, PV, GROUP, SEQLENS, OUT, LSE,
    s_qn, s_ql, s_qh, s_kn, s_kl, s_kh, s_vn, s_vl, s_vh,
    s_pkg, s_pkp, s_pkh, s_pvg, s_pvp, s_pvh,
    s_on, s_ol, s_oh,
    H, L, P, D, qk_scale,
    HAS_GROUP: tl.constexpr, HAS_SEQLENS: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    pid_nh = tl.program_id(0)  # N * H can exceed the 65535 limit of grid axes 1 and 2
    pid_m = tl.program_id(1)
    n = (pid_nh // H).to(tl.int64)
    h = (pid_nh % H).to(tl.int64)
    if HAS_SEQLENS:
        seqlen = tl.load(SEQLENS + n).to(tl.int32)
    else:
        seqlen = L
    start_m = pid_m * BLOCK_M
    # Every tensor offset is int64: a row index times a row stride overflows int32 for large
    # sequence-first views (s_ql = N * H * d).
    offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = offs_d < D
    row_ok = offs_m < seqlen
    q = tl.load(Q + n * s_qn + h * s_qh + offs_m[:, None] * s_ql + offs_d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    live = start_m < seqlen  # a tile wholly past the length runs no loop at all

    # ---- segment 1: the prompt block of this sequence's group (always fully visible) ----
    if HAS_GROUP:
        g = tl.load(GROUP + n).to(tl.int64)
    else:
        g = 0  # G = 1: every sequence reads block 0 (batch stride 0)
    pk_base = PK + g * s_pkg + h * s_pkh
    pv_base = PV + g * s_pvg + h * s_pvh
    p_hi = tl.where(live, P, 0)
    for start_p in range(0, p_hi, BLOCK_P):
        offs_p = start_p + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < P
        kt = tl.load(pk_base + offs_p[None, :] * s_pkp + offs_d[:, None],
                     mask=p_ok[None, :] & d_ok[:, None], other=0.0)
        vb = tl.load(pv_base + offs_p[:, None] * s_pvp + offs_d[None, :],
                     mask=p_ok[:, None] & d_ok[None, :], other=0.0)
        m_i, l_i, acc = _online_softmax_step(q, kt, vb, p_ok[None, :], m_i, l_i, acc, qk_scale,
                                             PREC, EMULATE_BF16)

    # ---- segment 2: the sequence's own keys, up to its length (and the diagonal) ----
    if CAUSAL:
        n_hi = tl.minimum(seqlen, start_m + BLOCK_M)
    else:
        n_hi = seqlen
    n_hi = tl.where(live, n_hi, 0)
    k_base = K + n * s_kn + h * s_kh
    v_base = V + n * s_vn + h * s_vh
    for start_n in range(0, n_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N).to(tl.int64)
        key_ok = offs_n < seqlen
        kt = tl.load(k_base + offs_n[None, :] * s_kl + offs_d[:, None],
                     mask=key_ok[None, :] & d_ok[:, None], other=0.0)
        vb = tl.load(v_base + offs_n[:, None] * s_vl + offs_d[None, :],
                     mask=key_ok[:, None] & d_ok[None, :], other=0.0)
        valid = key_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_n[None, :] <= offs_m[:, None])
        m_i, l_i, acc = _online_softmax_step(q, kt, vb, valid, m_i, l_i, acc, qk_scale, PREC, EMULATE_BF16)

    # Every computed row saw at least one key (its own, or the prompt), so l > 0 there.
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = tl.where(row_ok[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(row_ok, (m_i + tl.log2(l_safe)) * 0.6931471805599453, float("-inf"))
    in_range = offs_m < L
    tl.store(OUT + n * s_on + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :],
             _narrow(out, OUT.dtype.element_ty, EMULATE_BF16), mask=in_range[:, None] & d_ok[None, :])
    tl.store(LSE + pid_nh.to(tl.int64) * L + offs_m, lse, mask=in_range)


def fwd_config(dtype: torch.dtype, seq_len: int, n_prompt: int, head_dim: int, *, has_group: bool,
               has_seqlens: bool, causal: bool) -> Dict[str, object]:
    """Compile-time constants and launch options of the forward kernel for one input signature."""
    block_m, block_n, block_p, block_d = fwd_tiles(dtype, seq_len, n_prompt, head_dim)
    return dict(HAS_GROUP=bool(has_group), HAS_SEQLENS=bool(has_seqlens), CAUSAL=bool(causal),
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_P=block_p, BLOCK_D=block_d,
                PREC=dot_precision(dtype), EMULATE_BF16=emulate_bf16(dtype), num_warps=4, num_stages=2)


def prompt_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         pk: Optional[torch.Tensor], pv: Optional[torch.Tensor],
                         group: Optional[torch.Tensor], seqlens: Optional[torch.Tensor],
                         causal: bool, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel.

    Args:
        q, k, v: ``[N, L, H, d]`` (any strides; the last dimension is made contiguous).
        pk, pv: ``[G, P, H, d]`` or ``None`` (P may be 0; any strides, as q).
        group: ``[N]`` int block index per sequence, or ``None`` (G = 1, read with stride 0).
        seqlens: ``[N]`` int valid lengths, or ``None`` (all L). Index tensors may be strided
            views too (they are made contiguous).
        causal, scale: as in ``fastprompt.ops.prompt_attention``.

    Returns:
        ``out [N, L, H, d]`` (input dtype, contiguous) and ``lse [N, H, L]`` float32
        (natural log; -inf on rows past ``seqlens``).
    """
    check_supported(q)
    n, seq_len, heads, head_dim = q.shape
    q, k, v, pk, pv = (last_dim_contiguous(t) for t in (q, k, v, pk, pv))
    group, seqlens = index_arg(group), index_arg(seqlens)
    out = torch.empty((n, seq_len, heads, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((n, heads, seq_len), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse.fill_(float("-inf"))
    n_prompt = 0 if pk is None else pk.shape[1]
    if n_prompt == 0:
        pk = pv = q  # never read (the prompt loop runs 0 times); any valid pointer will do
        prompt_strides = (0,) * 6
    else:
        prompt_strides = (pk.stride(0), pk.stride(1), pk.stride(2), pv.stride(0), pv.stride(1), pv.stride(2))
    cfg = fwd_config(q.dtype, seq_len, n_prompt, head_dim, has_group=group is not None,
                     has_seqlens=seqlens is not None, causal=causal)
    grid = (n * heads, triton.cdiv(seq_len, cfg["BLOCK_M"]))
    with launch_device(q):
        _prompt_attention_fwd_kernel[grid](
            q, k, v, pk, pv, group if group is not None else q, seqlens if seqlens is not None else q,
            out, lse,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), *prompt_strides,
            out.stride(0), out.stride(1), out.stride(2),
            heads, seq_len, n_prompt, head_dim, float(scale) * LOG2E, **cfg,
        )
    return out, lse
