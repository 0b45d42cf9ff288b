"""Backward kernels: dQ, dK, dV of the own segment and dPK, dPV of the prompt blocks.

With ``P_ij = exp(s_ij - lse_i)`` recomputed from the saved lse, ``dO`` the output gradient and
``dL_i`` the lse gradient (the lse is an output of the op, and differentiable)::

    dV_j  = sum_i P_ij dO_i                 dP_ij = dO_i . V_j
    dS_ij = P_ij (dP_ij - delta_i),         delta_i = dO_i . O_i - dL_i
    dQ_i  = scale sum_j dS_ij K_j           dK_j  = scale sum_i dS_ij Q_i

Three launches:

1. ``_bwd_preprocess_kernel``: ``delta`` [N, H, L] (fp32), 0 on rows past the length.
2. ``_bwd_own_kernel``: program (n, h, j) computes dK, dV of own key tile j (looping over the
   query tiles that see it) and dQ of query tile j (looping over the prompt block, then the own
   key tiles it sees). Keys and rows past the length get zero gradients.
3. ``_bwd_prompt_kernel``: program (g, h, split s, prompt tile) loops over its share of the
   sequences of group g (a CSR list built from ``group``) and accumulates dPK, dPV of the
   tile in registers. Deterministic mode writes one fp32 partial per split and sums the splits
   in a fixed order; atomic mode adds the splits into one fp32 buffer (order not fixed).

After FlashAttention-2 (Dao, 2023) and ``triton-lang/triton python/tutorials/06-fused-attention.py``.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from .common import (LOG2E, _dot, _narrow, bwd_tiles, check_supported, dot_precision, emulate_bf16, index_arg,
                     last_dim_contiguous, launch_device)


@triton.jit
def _bwd_preprocess_kernel(OUT, DO, DLSE, SEQLENS, DELTA,
                           s_on, s_ol, s_oh, s_dn, s_dl, s_dh,
                           H, L, D,
                           HAS_DLSE: tl.constexpr, HAS_SEQLENS: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_nh = tl.program_id(0)
    pid_m = tl.program_id(1)
    n = (pid_nh // H).to(tl.int64)
    h = (pid_nh % H).to(tl.int64)
    # Every tensor offset is int64 (row index x row stride overflows int32 for large
    # sequence-first views); the same holds in the kernels below.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    if HAS_SEQLENS:
        seqlen = tl.load(SEQLENS + n).to(tl.int32)
    else:
        seqlen = L
    row_ok = offs_m < seqlen
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    o = tl.load(OUT + n * s_on + h * s_oh + offs_m[:, None] * s_ol + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + n * s_dn + h * s_dh + offs_m[:, None] * s_dl + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row = pid_nh.to(tl.int64) * L + offs_m
    if HAS_DLSE:
        delta -= tl.load(DLSE + row, mask=row_ok, other=0.0)
    tl.store(DELTA + row, tl.where(row_ok, delta, 0.0), mask=offs_m < L)


@triton.jit
def _dkdv_step(kb, vb, q, do, lse2, delta, valid, dk, dv, qk_scale,
               PREC: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Add one query tile's contribution to dK, dV of a key tile (everything transposed: [BN, BM])."""
    st = _dot(kb, tl.trans(q), PREC, EMULATE_BF16) * qk_scale
    pt = tl.where(valid, tl.exp2(st - lse2[None, :]), 0.0)
    dv += _dot(_narrow(pt, do.dtype, EMULATE_BF16), do, PREC, EMULATE_BF16)
    dpt = _dot(vb, tl.trans(do), PREC, EMULATE_BF16)
    dst = pt * (dpt - delta[None, :])
    dk += _dot(_narrow(dst, q.dtype, EMULATE_BF16), q, PREC, EMULATE_BF16)
    return dk, dv


@triton.jit
def _dq_step(q, do, kt, vt, lse2, delta, valid, dq, qk_scale, PREC: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """Add one key tile's contribution (``kt``, ``vt`` [D, BN], transposed) to dQ of a query tile."""
    s = _dot(q, kt, PREC, EMULATE_BF16) * qk_scale
    p = tl.where(valid, tl.exp2(s - lse2[:, None]), 0.0)
    dp = _dot(do, vt, PREC, EMULATE_BF16)
    ds = p * (dp - delta[:, None])
    dq += _dot(_narrow(ds, q.dtype, EMULATE_BF16), tl.trans(kt), PREC, EMULATE_BF16)
    return dq


@triton.jit
def _bwd_own_kernel(
    Q, K, V, PK, PV, GROUP, SEQLENS, DO, LSE, DELTA, DQ, DK, DV,
    s_qn, s_ql, s_qh, s_kn, s_kl, s_kh, s_vn, s_vl, s_vh,
    s_pkg, s_pkp, s_pkh, s_pvg, s_pvp, s_pvh,
    s_dn, s_dl, s_dh, s_gn, s_gl, s_gh,
    H, L, P, D, qk_scale, sm_scale,
    HAS_GROUP: tl.constexpr, HAS_SEQLENS: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    pid_nh = tl.program_id(0)
    pid_j = tl.program_id(1)
    n = (pid_nh // H).to(tl.int64)
    h = (pid_nh % H).to(tl.int64)
    if HAS_SEQLENS:
        seqlen = tl.load(SEQLENS + n).to(tl.int32)
    else:
        seqlen = L
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = offs_d < D
    q_base = Q + n * s_qn + h * s_qh
    k_base = K + n * s_kn + h * s_kh
    v_base = V + n * s_vn + h * s_vh
    do_base = DO + n * s_dn + h * s_dh
    row_base = pid_nh.to(tl.int64) * L
    tile = pid_j * BLOCK

    # ---- dK, dV of own key tile j: the query tiles that see it ----
    offs_n = tile + tl.arange(0, BLOCK).to(tl.int64)
    key_ok = offs_n < seqlen
    kv_mask = key_ok[:, None] & d_ok[None, :]
    kb = tl.load(k_base + offs_n[:, None] * s_kl + offs_d[None, :], mask=kv_mask, other=0.0)
    vb = tl.load(v_base + offs_n[:, None] * s_vl + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    if CAUSAL:
        m_lo = tile  # query tiles before the key tile cannot see it
    else:
        m_lo = 0
    m_hi = tl.where(tile < seqlen, seqlen, 0)
    for start_m in range(m_lo, m_hi, BLOCK):
        offs_m = start_m + tl.arange(0, BLOCK).to(tl.int64)
        row_ok = offs_m < seqlen
        q_mask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * s_ql + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * s_dl + offs_d[None, :], mask=q_mask, other=0.0)
        lse2 = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
        valid = key_ok[:, None] & row_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_m[None, :] >= offs_n[:, None])
        dk, dv = _dkdv_step(kb, vb, q, do, lse2, delta, valid, dk, dv, qk_scale, PREC, EMULATE_BF16)
    in_range = (offs_n < L)[:, None] & d_ok[None, :]
    g_off = n * s_gn + h * s_gh + offs_n[:, None] * s_gl + offs_d[None, :]
    tl.store(DK + g_off, _narrow(dk * sm_scale, DK.dtype.element_ty, EMULATE_BF16), mask=in_range)
    tl.store(DV + g_off, _narrow(dv, DV.dtype.element_ty, EMULATE_BF16), mask=in_range)

    # ---- dQ of own query tile j: the prompt block, then the own keys it sees ----
    offs_m = tile + tl.arange(0, BLOCK).to(tl.int64)
    row_ok = offs_m < seqlen
    q_mask = row_ok[:, None] & d_ok[None, :]
    q = tl.load(q_base + offs_m[:, None] * s_ql + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(do_base + offs_m[:, None] * s_dl + offs_d[None, :], mask=q_mask, other=0.0)
    lse2 = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK, BLOCK_D], tl.float32)
    live = tile < seqlen
    if HAS_GROUP:
        g = tl.load(GROUP + n).to(tl.int64)
    else:
        g = 0  # G = 1: block 0 for everyone (batch stride 0)
    pk_base = PK + g * s_pkg + h * s_pkh
    pv_base = PV + g * s_pvg + h * s_pvh
    for start_p in range(0, tl.where(live, P, 0), BLOCK_P):
        offs_p = start_p + tl.arange(0, BLOCK_P).to(tl.int64)
        p_ok = offs_p < P
        t_mask = p_ok[None, :] & d_ok[:, None]
        kt = tl.load(pk_base + offs_p[None, :] * s_pkp + offs_d[:, None], mask=t_mask, other=0.0)
        vt = tl.load(pv_base + offs_p[None, :] * s_pvp + offs_d[:, None], mask=t_mask, other=0.0)
        valid = row_ok[:, None] & p_ok[None, :]
        dq = _dq_step(q, do, kt, vt, lse2, delta, valid, dq, qk_scale, PREC, EMULATE_BF16)
    if CAUSAL:
        n_hi = tl.minimum(seqlen, tile + BLOCK)
    else:
        n_hi = seqlen
    for start_n in range(0, tl.where(live, n_hi, 0), BLOCK):
        offs_k = start_n + tl.arange(0, BLOCK).to(tl.int64)
        k_ok = offs_k < seqlen
        t_mask = k_ok[None, :] & d_ok[:, None]
        kt = tl.load(k_base + offs_k[None, :] * s_kl + offs_d[:, None], mask=t_mask, other=0.0)
        vt = tl.load(v_base + offs_k[None, :] * s_vl + offs_d[:, None], mask=t_mask, other=0.0)
        valid = row_ok[:, None] & k_ok[None, :]
        if CAUSAL:
            valid = valid & (offs_k[None, :] <= offs_m[:, None])
        dq = _dq_step(q, do, kt, vt, lse2, delta, valid, dq, qk_scale, PREC, EMULATE_BF16)
    in_range = (offs_m < L)[:, None] & d_ok[None, :]
    tl.store(DQ + n * s_gn + h * s_gh + offs_m[:, None] * s_gl + offs_d[None, :],
             _narrow(dq * sm_scale, DQ.dtype.element_ty, EMULATE_BF16), mask=in_range)


@triton.jit
def _bwd_prompt_kernel(
    Q, PK, PV, DO, LSE, DELTA, SEQLENS, MEMBERS, OFFSETS, DPK, DPV,
    s_qn, s_ql, s_qh, s_pkg, s_pkp, s_pkh, s_pvg, s_pvp, s_pvh, s_dn, s_dl, s_dh,
    N, G, H, L, P, D, SPLITS, qk_scale, sm_scale,
    HAS_GROUP: tl.constexpr, HAS_SEQLENS: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
    PREC: tl.constexpr, EMULATE_BF16: tl.constexpr,
):
    pid = tl.program_id(0)  # (g, h, split)
    pid_p = tl.program_id(1)
    split = pid % SPLITS
    gh = pid // SPLITS
    h = (gh % H).to(tl.int64)
    g = (gh // H).to(tl.int64)
    if HAS_GROUP:  # members of group g: MEMBERS[OFFSETS[g] : OFFSETS[g + 1]]
        first = tl.load(OFFSETS + g).to(tl.int32)
        last = tl.load(OFFSETS + g + 1).to(tl.int32)
    else:  # one block read by every sequence
        first = 0
        last = N
    chunk = (last - first + SPLITS - 1) // SPLITS
    lo = first + split * chunk
    hi = tl.minimum(lo + chunk, last)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    d_ok = offs_d < D
    p_ok = offs_p < P
    p_mask = p_ok[:, None] & d_ok[None, :]
    kb = tl.load(PK + g * s_pkg + h * s_pkh + offs_p[:, None] * s_pkp + offs_d[None, :], mask=p_mask, other=0.0)
    vb = tl.load(PV + g * s_pvg + h * s_pvh + offs_p[:, None] * s_pvp + offs_d[None, :], mask=p_mask, other=0.0)
    dk = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_P, BLOCK_D], tl.float32)
    for member in range(lo, hi):
        if HAS_GROUP:
            n = tl.load(MEMBERS + member).to(tl.int64)
        else:
            n = tl.cast(member, tl.int64)
        if HAS_SEQLENS:
            seqlen = tl.load(SEQLENS + n).to(tl.int32)
        else:
            seqlen = L
        q_base = Q + n * s_qn + h * s_qh
        do_base = DO + n * s_dn + h * s_dh
        row_base = (n * H + h) * L
        for start_m in range(0, seqlen, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M).to(tl.int64)
            row_ok = offs_m < seqlen
            q_mask = row_ok[:, None] & d_ok[None, :]
            q = tl.load(q_base + offs_m[:, None] * s_ql + offs_d[None, :], mask=q_mask, other=0.0)
            do = tl.load(do_base + offs_m[:, None] * s_dl + offs_d[None, :], mask=q_mask, other=0.0)
            lse2 = tl.load(LSE + row_base + offs_m, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + row_base + offs_m, mask=row_ok, other=0.0)
            valid = p_ok[:, None] & row_ok[None, :]
            dk, dv = _dkdv_step(kb, vb, q, do, lse2, delta, valid, dk, dv, qk_scale, PREC, EMULATE_BF16)

    # Accumulators are fp32 [SPLITS or 1, G, P, H, D], contiguous.
    if ATOMIC:
        acc_row = g * P + offs_p
    else:
        acc_row = (split.to(tl.int64) * G + g) * P + offs_p
    acc_off = (acc_row[:, None] * H + h) * D + offs_d[None, :]
    if ATOMIC:
        tl.atomic_add(DPK + acc_off, dk * sm_scale, mask=p_mask)
        tl.atomic_add(DPV + acc_off, dv, mask=p_mask)
    else:
        tl.store(DPK + acc_off, dk * sm_scale, mask=p_mask)
        tl.store(DPV + acc_off, dv, mask=p_mask)


def default_prompt_splits(n: int, n_groups: int, heads: int, p_tiles: int, device: torch.device) -> int:
    """How many programs share one (group, head, prompt tile): enough programs to fill the GPU.

    The sequences of a group are split into this many contiguous chunks; each chunk's partial
    gradient is summed afterwards. Based on the mean group size, so no device sync is needed.
    """
    mean_members = max(1, -(-n // max(n_groups, 1)))
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # interpreter: every program costs the same fixed overhead; keep two to test the split
        target = 2 * n_groups * heads * p_tiles
    return max(1, min(mean_members, target // max(1, n_groups * heads * p_tiles)))


def bwd_configs(dtype: torch.dtype, seq_len: int, n_prompt: int, head_dim: int, *, has_group: bool,
                has_seqlens: bool, causal: bool, has_dlse: bool, atomic: bool) -> Dict[str, Dict[str, object]]:
    """Compile-time constants and launch options of the three backward kernels, by kernel name."""
    block, block_p, block_d = bwd_tiles(dtype, seq_len, n_prompt, head_dim)
    common = dict(HAS_SEQLENS=bool(has_seqlens), BLOCK_D=block_d)
    dots = dict(PREC=dot_precision(dtype), EMULATE_BF16=emulate_bf16(dtype), num_warps=4, num_stages=2)
    return {
        "_bwd_preprocess_kernel": dict(common, HAS_DLSE=bool(has_dlse), BLOCK_M=block, num_warps=4),
        "_bwd_own_kernel": dict(common, HAS_GROUP=bool(has_group), CAUSAL=bool(causal), BLOCK=block,
                                BLOCK_P=block_p, **dots),
        "_bwd_prompt_kernel": dict(common, HAS_GROUP=bool(has_group), ATOMIC=bool(atomic), BLOCK_M=block,
                                   BLOCK_P=block_p, **dots),
    }


def prompt_attention_bwd(
    dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    pk: Optional[torch.Tensor], pv: Optional[torch.Tensor], group: Optional[torch.Tensor],
    seqlens: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, causal: bool, scale: float,
    deterministic: bool = True, prompt_grad: bool = True, splits: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of ``prompt_attention_fwd``.

    Args:
        dout: ``[N, L, H, d]`` gradient of ``out``; dlse: ``[N, H, L]`` gradient of ``lse`` or ``None``.
        q, k, v, pk, pv, group, seqlens, causal, scale: the forward's inputs (any strides, as there).
        out, lse: the forward's outputs.
        deterministic: sum the per-split prompt partials in a fixed order (bitwise reproducible)
            instead of adding them atomically.
        prompt_grad: ``False`` skips dPK/dPV (returned as ``None``).
        splits: programs per (group, head, prompt tile); default ``default_prompt_splits``.

    Returns:
        ``(dq, dk, dv, dpk, dpv)`` in the input dtype, contiguous; ``dpk``/``dpv`` are ``None``
        when ``pk`` is ``None`` or ``prompt_grad`` is false, and summed over every sequence of
        their group otherwise.
    """
    check_supported(q)
    n, seq_len, heads, head_dim = q.shape
    q, k, v, dout, out = (last_dim_contiguous(t) for t in (q, k, v, dout, out))
    group, seqlens = index_arg(group), index_arg(seqlens)
    # Every element is written by a kernel (zero gradients included), so no zero-fill.
    dq = torch.empty((n, seq_len, heads, head_dim), dtype=q.dtype, device=q.device)
    dk, dv = torch.empty_like(dq), torch.empty_like(dq)
    n_prompt = pk.shape[1] if pk is not None else 0
    dpk = dpv = None
    if pk is not None and prompt_grad and (n_prompt == 0 or dq.numel() == 0):
        dpk = torch.zeros(pk.shape, dtype=pk.dtype, device=pk.device)  # nothing reads the block
        dpv = torch.zeros_like(dpk)
    if dq.numel() == 0:
        return dq, dk, dv, dpk, dpv
    if n_prompt > 0:
        pk, pv = last_dim_contiguous(pk), last_dim_contiguous(pv)
        prompt_strides = (pk.stride(0), pk.stride(1), pk.stride(2), pv.stride(0), pv.stride(1), pv.stride(2))
    else:
        pk = pv = q  # never read
        prompt_strides = (0,) * 6
    lse = lse.contiguous()
    if dlse is not None:
        dlse = dlse.to(torch.float32).contiguous()
    cfgs = bwd_configs(q.dtype, seq_len, n_prompt, head_dim, has_group=group is not None,
                       has_seqlens=seqlens is not None, causal=causal, has_dlse=dlse is not None,
                       atomic=not deterministic)
    block, block_p = cfgs["_bwd_own_kernel"]["BLOCK"], cfgs["_bwd_own_kernel"]["BLOCK_P"]
    qk_scale = float(scale) * LOG2E
    seq_arg = seqlens if seqlens is not None else q
    delta = torch.empty((n, heads, seq_len), dtype=torch.float32, device=q.device)
    grid = (n * heads, triton.cdiv(seq_len, block))
    with launch_device(q):
        _bwd_preprocess_kernel[grid](
            out, dout, dlse if dlse is not None else delta, seq_arg, delta,
            out.stride(0), out.stride(1), out.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
            heads, seq_len, head_dim, **cfgs["_bwd_preprocess_kernel"],
        )
        _bwd_own_kernel[grid](
            q, k, v, pk, pv, group if group is not None else q, seq_arg, dout, lse, delta, dq, dk, dv,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), *prompt_strides,
            dout.stride(0), dout.stride(1), dout.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
            heads, seq_len, n_prompt, head_dim, qk_scale, float(scale), **cfgs["_bwd_own_kernel"],
        )
        if pk is not None and prompt_grad and n_prompt > 0:
            n_groups = pk.shape[0]
            if group is not None:
                # CSR of the group map: members sorted by group (stable), offsets by binary search.
                sorted_group, order = torch.sort(group, stable=True)
                members = order.to(torch.int32)
                offsets = torch.searchsorted(
                    sorted_group, torch.arange(n_groups + 1, device=q.device, dtype=sorted_group.dtype)
                ).to(torch.int32)
            else:
                members = offsets = q  # unused: every sequence belongs to block 0
            p_tiles = triton.cdiv(n_prompt, block_p)
            n_splits = splits if splits is not None else default_prompt_splits(
                n, n_groups, heads, p_tiles, q.device)
            n_splits = max(1, int(n_splits))
            acc_splits = 1 if not deterministic else n_splits
            acc_shape = (acc_splits, n_groups, n_prompt, heads, head_dim)
            alloc = torch.zeros if not deterministic else torch.empty
            acc_k = alloc(acc_shape, dtype=torch.float32, device=q.device)
            acc_v = alloc(acc_shape, dtype=torch.float32, device=q.device)
            _bwd_prompt_kernel[(n_groups * heads * n_splits, p_tiles)](
                q, pk, pv, dout, lse, delta, seq_arg, members, offsets, acc_k, acc_v,
                q.stride(0), q.stride(1), q.stride(2), *prompt_strides,
                dout.stride(0), dout.stride(1), dout.stride(2),
                n, n_groups, heads, seq_len, n_prompt, head_dim, n_splits, qk_scale, float(scale),
                **cfgs["_bwd_prompt_kernel"],
            )
            # Fixed-order reduction over the splits (just a cast when there is one).
            dpk = acc_k.sum(0).to(q.dtype)
            dpv = acc_v.sum(0).to(q.dtype)
    return dq, dk, dv, dpk, dpv
