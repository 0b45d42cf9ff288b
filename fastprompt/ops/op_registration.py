"""How a compiled backend's kernels become one differentiable, traceable torch op.

Every compiled backend exposes a forward and a backward op in the ``fastprompt`` namespace::

    forward (q, k, v, pk, pv, group, seqlens, causal, scale) -> (out, lse)
    backward(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale, *extra)
             -> (dq, dk, dv, dpk, dpv)

    q, k, v, out, dout, dq, dk, dv  [N, L, H, d]    pk, pv, dpk, dpv  [G, P, H, d]
    group, seqlens                  [N] int         lse, dlse         [N, H, L]

(semantics: :func:`fastprompt.ops.prompt_attention`). A backend declares the two ops with their
kernels in its own way (``cpu`` / ``cuda``: schemas in :mod:`fastprompt.ops.cpp_backend`, kernels
from the C++ extensions of ``csrc/``; ``triton``: ``torch.library.custom_op`` over the launchers of
``fastprompt.kernels``) and then calls :func:`register_attention_op`, which adds the same three
things to both backends' ops, by name:

* a fake (meta) implementation of each op, so that FakeTensor, ``torch.compile`` and
  ``torch.library.opcheck`` trace them without running a kernel;
* the forward's autograd formula: ``setup_context`` saves the inputs, ``out`` and ``lse`` (nothing
  of size L x L), and the backward calls the backward op. ``lse`` is differentiable, so merged
  partial attentions get their gradients. The formula is once differentiable: the backward op has
  no formula of its own, so a double backward raises instead of silently missing terms.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

Tensor = torch.Tensor


def fake_forward(q: Tensor, lse_dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """What a forward op returns, without computing it: ``out`` like ``q`` (contiguous) and
    ``lse [N, H, L]`` of ``lse_dtype``."""
    n, seq_len, heads, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((n, heads, seq_len), dtype=lse_dtype)


def fake_backward(q: Tensor, pk: Optional[Tensor], pv: Optional[Tensor],
                  prompt_grads: bool) -> Tuple[Tensor, ...]:
    """What a backward op returns, without computing it: ``dq, dk, dv`` like ``q`` (contiguous);
    ``dpk, dpv`` like ``pk`` / ``pv`` when ``prompt_grads`` (and a block exists), else empty ``[0]``
    tensors (an op cannot return ``None``)."""
    grads = tuple(q.new_empty(q.shape) for _ in range(3))
    if pk is None or not prompt_grads:
        return grads + (q.new_empty(0), q.new_empty(0))
    return grads + (pk.new_empty(pk.shape), pv.new_empty(pv.shape))


def save_for_backward(ctx, inputs, output) -> None:
    """``setup_context`` of every forward op: the tensors the backward op takes, and the flags."""
    q, k, v, pk, pv, group, seqlens, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, pk, pv, group, seqlens, out, lse)
    ctx.causal, ctx.scale = causal, scale


def backward_formula(backward_op: Callable, extra_args: Callable[[bool], tuple] = lambda prompt_grad: ()):
    """The forward op's ``backward(ctx, dout, dlse)``, calling ``backward_op``.

    ``extra_args(prompt_grad)`` gives the backward op's arguments after ``scale`` (``prompt_grad``:
    a prompt block exists and pk or pv needs a gradient). It returns gradients for q, k, v, pk, pv
    (``None`` for pk / pv when ``prompt_grad`` is false) and ``None`` for group, seqlens, causal,
    scale.
    """

    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, pk, pv, group, seqlens, out, lse = ctx.saved_tensors
        if dout is None:  # autograd materialises unused output gradients as zeros; a caller may not
            dout = torch.zeros_like(out)
        prompt_grad = pk is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
        dq, dk, dv, dpk, dpv = backward_op(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, ctx.causal,
                                           ctx.scale, *extra_args(prompt_grad))
        if not prompt_grad:
            dpk = dpv = None
        return dq, dk, dv, dpk, dpv, None, None, None, None

    return backward


def register_attention_op(forward: str, backward: str, *, forward_fake: Callable, backward_fake: Callable,
                          formula: Callable) -> None:
    """Register the fakes of ``forward`` and ``backward`` (``"fastprompt::<name>"``, already declared)
    and ``formula`` (from :func:`backward_formula`) as ``forward``'s autograd."""
    torch.library.register_fake(forward, forward_fake)
    torch.library.register_fake(backward, backward_fake)
    torch.library.register_autograd(forward, formula, setup_context=save_for_backward)
