"""The eager backend: prompt-concatenated attention in plain PyTorch.

It is the reference every other backend is checked against, the CPU default, and it gets its
backward from autograd. Numerics follow the usual low-precision attention recipe: the two
score matmuls run in the input dtype, softmax and log-sum-exp in float32, and the
probabilities are cast back to the input dtype for the value matmul.

The prompt block is never concatenated to the sequence's own keys: its scores are computed
by a separate matmul (broadcast over the batch when G = 1, gathered per sequence otherwise)
and joined only at the score level.

Without a prompt block and when the caller does not ask for the log-sum-exp, the backend
hands the whole computation to ``F.scaled_dot_product_attention`` (a fused kernel on CPU and
GPU), which is what plain CLIP layers (the frozen image tower, the text prefix) use.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from .masked_exactness import has_nonfinite, masked_exact_attention
from .validation import AttentionArgs


def _own_mask(args: AttentionArgs) -> torch.Tensor | None:
    """Boolean mask [N or 1, 1, L, L] of visible own keys (True = visible), or None."""
    n, seq_len = args.q.shape[:2]
    if not args.causal and args.seqlens is None:
        return None
    device = args.q.device
    pos = torch.arange(seq_len, device=device)
    mask = torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device)
    if args.causal:
        mask = mask & (pos[None, :] <= pos[:, None])[None, None]
    if args.seqlens is not None:
        mask = mask & (pos[None, :] < args.seqlens[:, None].to(pos.dtype))[:, None, None, :]
    return mask


def _unpadded_keys(args: AttentionArgs) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(k, v)`` with the rows past each sequence's length set to 0. A masked key's probability
    is 0, but ``0 * NaN`` is NaN: whatever a padding row holds (NaN, inf) must not reach the rows
    that are computed, as it does not in the compiled kernels, which never read it."""
    if args.seqlens is None:
        return args.k, args.v
    seq_len = args.k.shape[1]
    padding = (torch.arange(seq_len, device=args.k.device)[None, :]
               >= args.seqlens[:, None].to(torch.long))[:, :, None, None]  # [N, L, 1, 1]
    return args.k.masked_fill(padding, 0.0), args.v.masked_fill(padding, 0.0)


def eager_prompt_attention(args: AttentionArgs):
    """Compute ``(out [N, L, H, d], lse [N, H, L] fp32 or None)``; see ``prompt_attention``.

    Inputs holding NaN or inf take :func:`masked_exact_attention` (the multiplications by masked
    keys' zero probabilities would otherwise carry them into rows that cannot see them)."""
    if has_nonfinite(args):
        return masked_exact_attention(args, _finite_prompt_attention)
    return _finite_prompt_attention(args)


def _finite_prompt_attention(args: AttentionArgs):
    """The backend for finite inputs: SDPA where it applies, else the math spelled out."""
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    return _math_attention(args)


def _sdpa_attention(args: AttentionArgs) -> torch.Tensor:
    """Own-token attention through ``F.scaled_dot_product_attention`` (no lse)."""
    q, k, v = (t.transpose(1, 2) for t in (args.q, args.k, args.v))  # [N, H, L, d]
    if args.seqlens is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=args.causal, scale=args.scale)
        return out.transpose(1, 2)
    q, k, v = (t.transpose(1, 2) for t in (args.q, *_unpadded_keys(args)))
    seq_len = q.shape[2]
    mask = _own_mask(args)  # [N, 1, L, L]
    # Rows past the length see every key (so no row is empty) and are zeroed afterwards.
    row_valid = torch.arange(seq_len, device=q.device)[None, :] < args.seqlens[:, None].to(torch.long)
    mask = mask | ~row_valid[:, None, :, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=args.scale).transpose(1, 2)
    return out.masked_fill(~row_valid[:, :, None, None], 0.0)


def _sdpa_shared_prompt_attention(args: AttentionArgs) -> torch.Tensor:
    """Non-causal attention over a batch-shared prompt block (``group is None``, ``pk [1, P, H, d]``)
    and all ``L`` own keys, through one ``F.scaled_dot_product_attention`` call on keys and values with
    the block placed in front of each sequence's own (``[N, P + L, H, d]``; no lse).

    Without a causal mask or ragged lengths the order of the keys does not matter, so this is the op's
    result; the copy costs ``P / (P + L)`` of the keys, a few percent for the prompted ViT layers."""
    n = args.q.shape[0]
    k = torch.cat([args.pk.expand(n, *args.pk.shape[1:]), args.k], dim=1)
    v = torch.cat([args.pv.expand(n, *args.pv.shape[1:]), args.v], dim=1)
    q, k, v = (t.transpose(1, 2) for t in (args.q, k, v))  # [N, H, len, d]
    return F.scaled_dot_product_attention(q, k, v, scale=args.scale).transpose(1, 2)


def _math_attention(args: AttentionArgs) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scores, softmax and lse spelled out; the prompt block joins at the score level."""
    q, (k, v) = args.q, _unpadded_keys(args)
    n, seq_len, heads, head_dim = q.shape
    dtype = q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    own_scores = torch.einsum("nlhd,nmhd->nhlm", q, k).to(acc) * args.scale  # [N, H, L, L]
    mask = _own_mask(args)
    if mask is not None:
        own_scores = own_scores.masked_fill(~mask, float("-inf"))

    if args.pk is not None:
        if args.group is None:  # one block read by everyone: broadcast, no copy per sequence
            prompt_scores = torch.einsum("nlhd,phd->nhlp", q, args.pk[0])
        else:
            prompt_scores = torch.einsum("nlhd,nphd->nhlp", q, args.pk[args.group])
        scores = torch.cat([prompt_scores.to(acc) * args.scale, own_scores], dim=-1)
    else:
        scores = own_scores

    # Rows past a sequence's length are not computed (out = 0, lse = -inf). They are the only
    # rows that can have no visible key, so neutralise them before the softmax to avoid NaN.
    if args.seqlens is not None:
        row_valid = (torch.arange(seq_len, device=q.device)[None, :]
                     < args.seqlens[:, None].to(torch.long))  # [N, L]
        scores = scores.masked_fill(~row_valid[:, None, :, None], 0.0)
    lse = torch.logsumexp(scores, dim=-1)  # [N, H, L]
    probs = torch.exp(scores - lse[..., None]).to(dtype)

    n_prompt = scores.shape[-1] - seq_len
    out = torch.einsum("nhlm,nmhd->nlhd", probs[..., n_prompt:], v)
    if args.pk is not None:
        prompt_probs = probs[..., :n_prompt]
        if args.group is None:
            out = out + torch.einsum("nhlp,phd->nlhd", prompt_probs, args.pv[0])
        else:
            out = out + torch.einsum("nhlp,nphd->nlhd", prompt_probs, args.pv[args.group])

    if args.seqlens is not None:
        out = out.masked_fill(~row_valid[:, :, None, None], 0.0)
        lse = lse.masked_fill(~row_valid[:, None, :], float("-inf"))
    return out, lse.to(torch.float64 if dtype == torch.float64 else torch.float32)
