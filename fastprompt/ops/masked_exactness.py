"""Masked keys stay out of the result when the inputs hold NaN or inf.

A masked key's probability is exactly 0, but every backend multiplies it into the value product
(``P @ V``, whole blocks at a time) and the backward multiplies zero scores' gradients into the
keys (``dS @ K``): ``0 * NaN`` is NaN, so a NaN or inf at a position that row ``i`` cannot see
(a causal key ``j > i``) would turn row ``i`` into NaN, and a row whose cotangent is 0 would spread
NaN into every gradient. The op's contract instead (``prompt_attention``):

* row ``i``'s ``out`` and ``lse`` depend on ``q[i]``, its prompt block and its visible own keys only,
  and a non-finite value among those propagates as IEEE arithmetic says (a NaN value gives NaN in
  its channel, a lone ``+inf`` value gives ``+inf``, a NaN score gives a NaN row);
* gradients reach only what a row attends; a row that attends a non-finite value sends NaN into
  the gradients when its cotangent is nonzero (its derivative is undefined), and nothing when its
  cotangent is exactly 0 (the loss does not read it).

The finite case, the only one in training that has not already diverged, costs one ``isfinite``
pass over the inputs (:func:`has_nonfinite`); the exact path below runs only when it finds a
non-finite value. It reads that on the host, so it runs for CPU tensors (where that read is free)
outside ``torch.compile``; on CUDA tensors the check would be a device sync per layer, and the
compiled kernels there process keys in blocks like the CPU ones, so CUDA calls keep the fast path
and masked positions must hold finite values there.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import torch

from .validation import AttentionArgs

AttentionFn = Callable[[AttentionArgs], Tuple[torch.Tensor, Optional[torch.Tensor]]]


def has_nonfinite(args: AttentionArgs) -> bool:
    """Whether a CPU call outside ``torch.compile`` may hold a NaN or inf in q, k, v, pk or pv.

    One sum per tensor, read back together: a sum is finite only if every term is (NaN and inf
    propagate, ``inf - inf`` is NaN), and summing costs a fraction of an ``isfinite`` mask (measured
    0.65 ms against 11 ms for three [64, 77, 8, 64] float32 tensors). A sum that overflows takes the
    exact path needlessly, which is slower but gives the same results. ``False`` for CUDA tensors
    and while compiling, without looking (see the module docstring)."""
    if args.q.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    acc = torch.float64 if args.q.dtype == torch.float64 else torch.float32
    tensors = [args.q, args.k, args.v] + ([args.pk, args.pv] if args.pk is not None else [])
    total = torch.stack([t.detach().sum(dtype=acc) for t in tensors]).sum()
    return not bool(torch.isfinite(total))


class _Finite(torch.autograd.Function):
    """``t`` with NaN and inf replaced by 0; the gradient passes through unchanged.

    The derivative of ``P @ V`` with respect to ``V`` is ``P`` whatever ``V`` holds, so the gradient
    of a value (or key, or query) that is not finite is the one the same position would get were
    it finite: zero where nobody attends it."""

    @staticmethod
    def forward(ctx, t):
        return torch.where(torch.isfinite(t), t, torch.zeros((), dtype=t.dtype, device=t.device))

    @staticmethod
    def backward(ctx, grad):
        return grad


class _RowsFrom(torch.autograd.Function):
    """``where(dirty, exact, finite)`` for the forward; the gradient goes to ``finite``, as NaN
    on the dirty rows whose cotangent is nonzero (their derivative is undefined) and as the
    cotangent itself elsewhere (0 on a dirty row the loss does not read)."""

    @staticmethod
    def forward(ctx, finite, exact, dirty):
        ctx.save_for_backward(dirty)
        return torch.where(dirty, exact, finite)

    @staticmethod
    def backward(ctx, grad):
        (dirty,) = ctx.saved_tensors
        undefined = dirty & (grad != 0)
        return torch.where(undefined, torch.full((), float("nan"), dtype=grad.dtype, device=grad.device), grad), \
            None, None


def _row_valid(args: AttentionArgs) -> torch.Tensor:
    """``[N, L]`` bool: rows that are computed (all of them without ``seqlens``)."""
    n, seq_len = args.q.shape[:2]
    pos = torch.arange(seq_len, device=args.q.device)
    if args.seqlens is None:
        return torch.ones(n, seq_len, dtype=torch.bool, device=args.q.device)
    return pos[None, :] < args.seqlens[:, None].to(torch.long)


def _visible(args: AttentionArgs) -> torch.Tensor:
    """``[N, L, L]`` bool: own key ``j`` visible from computed row ``i`` of sequence ``n``."""
    n, seq_len = args.q.shape[:2]
    pos = torch.arange(seq_len, device=args.q.device)
    valid = _row_valid(args)
    visible = valid[:, :, None] & valid[:, None, :]
    if args.causal:
        visible = visible & (pos[None, :] <= pos[:, None])[None]
    return visible


def _prompt_rows(args: AttentionArgs, t: torch.Tensor) -> torch.Tensor:
    """``[N, P, H, d]``: the prompt block (``pk`` or ``pv``) each sequence reads."""
    n = args.q.shape[0]
    return t.expand(n, *t.shape[1:]) if args.group is None else t[args.group]


def _any_visible(args: AttentionArgs, visible: torch.Tensor, own_bad: torch.Tensor,
                 prompt_bad: Optional[torch.Tensor]) -> torch.Tensor:
    """``[N, L, H]`` bool: computed row ``i`` sees an own key position flagged in ``own_bad``
    ``[N, L, H]``, or its prompt block has a position flagged in ``prompt_bad`` ``[N, P, H]``."""
    # Counts of at most L: exact in float32.
    seen = torch.einsum("nij,njh->nih", visible.to(torch.float32), own_bad.to(torch.float32)) > 0
    if prompt_bad is not None:
        seen = seen | (prompt_bad.any(dim=1)[:, None, :] & _row_valid(args)[:, :, None])
    return seen


def _dirty_rows(args: AttentionArgs, visible: torch.Tensor) -> torch.Tensor:
    """``[N, L, H]`` bool: computed rows whose query, visible own key or value, or prompt block is
    not finite."""
    bad = lambda t: ~torch.isfinite(t).all(dim=-1)  # [.., H]
    own = bad(args.k) | bad(args.v)
    prompt = None
    if args.pk is not None:
        prompt = bad(_prompt_rows(args, args.pk)) | bad(_prompt_rows(args, args.pv))
    rows = _any_visible(args, visible, own, prompt)
    return rows | (bad(args.q) & _row_valid(args)[:, :, None])


def _value_product(args: AttentionArgs, visible: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """``sum_j probs[n, h, i, j] * values[n, j, h]`` over the keys row ``i`` sees only, in IEEE
    arithmetic: ``[N, L, H, d]``. ``probs`` ``[N, H, L, P + L]`` (prompt block first).

    The finite values go through one matmul (a masked key's 0 times a finite value adds nothing);
    the non-finite ones are added per channel as the sum says: NaN when a visible value is NaN,
    when ``+inf`` meets ``-inf``, or when an infinite value has probability 0 (``0 * inf``);
    otherwise the infinity."""
    values = args.v if args.pv is None else torch.cat([_prompt_rows(args, args.pv), args.v], dim=1)
    n_prompt = values.shape[1] - args.v.shape[1]
    seen = torch.cat([_row_valid(args)[:, :, None].expand(-1, -1, n_prompt), visible], dim=-1)  # [N, L, P + L]
    finite = torch.isfinite(values)
    out = torch.einsum("nhlm,nmhd->nlhd", probs, torch.where(finite, values, torch.zeros_like(values)))
    if finite.all():
        return out
    seen = seen[:, None].expand_as(probs).to(torch.float32)  # [N, H, L, P + L]
    positive = seen * (probs > 0).to(torch.float32)
    count = lambda weights, flags: torch.einsum("nhlm,nmhd->nlhd", weights, flags.to(torch.float32)) > 0
    nan = count(seen, torch.isnan(values)) | count(seen - positive, torch.isinf(values))
    plus, minus = count(positive, values == float("inf")), count(positive, values == float("-inf"))
    extra = torch.where(plus, float("inf"), torch.where(minus, float("-inf"), 0.0))
    extra = torch.where(nan | (plus & minus), float("nan"), extra).to(out.dtype)
    return out + extra


def _exact_attention(args: AttentionArgs, visible: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of every computed row with IEEE semantics over its visible keys only (the
    eager math: scores in the input dtype, softmax in float32 / float64). No gradient."""
    q, k = args.q, args.k
    dtype = q.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    scores = torch.einsum("nlhd,nmhd->nhlm", q, k).to(acc) * args.scale
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    if args.pk is not None:
        prompt = torch.einsum("nlhd,nphd->nhlp", q, _prompt_rows(args, args.pk)).to(acc) * args.scale
        scores = torch.cat([prompt, scores], dim=-1)
    valid = _row_valid(args)
    scores = scores.masked_fill(~valid[:, None, :, None], 0.0)  # uncomputed rows: no empty softmax
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None]).to(dtype)
    out = _value_product(args, visible, probs).masked_fill(~valid[:, :, None, None], 0.0)
    return out, lse.masked_fill(~valid[:, None, :], float("-inf"))


def masked_exact_attention(args: AttentionArgs, finite_fn: AttentionFn):
    """The op for inputs that hold NaN or inf (see the module docstring): ``finite_fn`` on the
    inputs with their non-finite entries zeroed gives every clean row (and every gradient), the
    exact IEEE evaluation over visible keys gives the rows that attend a non-finite value."""
    sanitized = dataclasses.replace(
        args, q=_Finite.apply(args.q), k=_Finite.apply(args.k), v=_Finite.apply(args.v),
        pk=None if args.pk is None else _Finite.apply(args.pk), pv=None if args.pv is None else _Finite.apply(args.pv))
    out, lse = finite_fn(sanitized)
    with torch.no_grad():
        visible = _visible(args)
        dirty = _dirty_rows(args, visible)  # [N, L, H]
        exact_out, exact_lse = _exact_attention(args, visible)
    out = _RowsFrom.apply(out, exact_out, dirty[..., None].expand_as(out))
    if lse is not None:  # finite_fn's answer without return_lse: the lse or None, as the same call with finite inputs
        lse = _RowsFrom.apply(lse, exact_lse.to(lse.dtype), dirty.transpose(1, 2))
    return out, lse
