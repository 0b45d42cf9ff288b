"""NaN and inf at masked positions, per backend: the checks of tests/test_ops_masked_nonfinite.py, shared
with the Triton interpreter tier (tests/triton_interpreter_cases.py), which runs in a process of its own.

A causal call where sequence 0 holds a non-finite value in q, k or v at every position from ``FIRST``
on: rows ``i < FIRST`` of sequence 0 cannot see those keys and values (their queries are their own),
and every other sequence is untouched, so all of those rows must equal the clean call's, and a loss
that reads only them must have the clean call's gradients: finite, and exactly 0 at the poisoned
positions. The rows from ``FIRST`` on attend the poison and must be non-finite as the float64
literal reference (``naive_prompt_attention``, which slices the visible keys) says.
"""
from __future__ import annotations

import torch

from fastprompt.ops import prompt_attention
from fastprompt.testing import FP32, assert_close_rel, naive_prompt_attention

FIRST = 3  # the first poisoned position of sequence 0
SEQ_LEN = 6


def make_inputs(group_mode: str, seed: int = 0):
    """``(q, k, v, pk, pv, group)``: 3 sequences of 6 tokens, 2 heads of 16 channels; a prompt block
    of 3 rows shared by all (``"one"``), one per group (``"mixed"``: 2 blocks) or none."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    n, heads, head_dim = 3, 2, 16
    q, k, v = (rand(n, SEQ_LEN, heads, head_dim) for _ in range(3))
    pk = pv = group = None
    if group_mode != "none":
        n_groups = {"one": 1, "mixed": 2}[group_mode]
        pk, pv = rand(n_groups, 3, heads, head_dim), rand(n_groups, 3, heads, head_dim)
        group = torch.tensor([1, 0, 1]) if n_groups > 1 else None
    return q, k, v, pk, pv, group


def poisoned(tensors, which: str, value: float, channels=slice(None)):
    """A copy of ``tensors`` (q, k, v, ...) with ``value`` in ``which`` at sequence 0, positions ``>= FIRST``."""
    tensors = list(tensors)
    index = "qkv".index(which)
    t = tensors[index].clone()
    t[0, FIRST:, :, channels] = value
    tensors[index] = t
    return tensors


def _run(backend, tensors, group, return_lse, seed=1):
    """``(out, lse, [dq, dk, dv])`` for a loss that reads every row but the poisoned ones."""
    q, k, v, pk, pv = [None if t is None else t.detach().requires_grad_(i < 3) for i, t in enumerate(tensors)]
    out, lse = prompt_attention(q, k, v, pk, pv, group=group, causal=True, return_lse=return_lse, backend=backend)
    gen = torch.Generator().manual_seed(seed)
    dout = torch.randn(out.shape, generator=gen)
    dout[0, FIRST:] = 0.0
    # Slices, not a product with zeros: the poisoned rows are NaN, and NaN * 0 is NaN.
    loss = (out[1:] * dout[1:]).sum() + (out[0, :FIRST] * dout[0, :FIRST]).sum()
    if return_lse:  # without it a backend may still return the lse (eager does): leave it out of the loss
        dlse = torch.randn(lse.shape, generator=gen)
        loss = loss + (lse[1:] * dlse[1:]).sum() + (lse[0, :, :FIRST] * dlse[0, :, :FIRST]).sum()
    return out, lse, list(torch.autograd.grad(loss, (q, k, v)))


def check_masked_poison_is_ignored(backend: str, group_mode: str, which: str, value: float, return_lse: bool):
    """Rows that cannot see the poison, and gradients of a loss over them, equal the clean call's;
    the rows that see it are non-finite as the literal reference says."""
    q, k, v, pk, pv, group = make_inputs(group_mode)
    clean = _run(backend, [q, k, v, pk, pv], group, return_lse)
    bad_inputs = poisoned([q, k, v, pk, pv], which, value)
    out, lse, grads = _run(backend, bad_inputs, group, return_lse)

    assert_close_rel(out[1:], clean[0][1:], FP32.parity, "out of the other sequences")
    assert_close_rel(out[0, :FIRST], clean[0][0, :FIRST], FP32.parity, "out of the rows before the poison")
    if return_lse:
        assert_close_rel(lse[1:], clean[1][1:], FP32.parity, "lse of the other sequences")
        assert_close_rel(lse[0, :, :FIRST], clean[1][0, :, :FIRST], FP32.parity, "lse of the rows before the poison")
    for name, g, ref in zip(("dq", "dk", "dv"), grads, clean[2]):
        assert torch.all(g[0, FIRST:] == 0), f"{name} at the positions nobody in the loss reads is not 0"
        assert_close_rel(g, ref, FP32.parity, name)  # finite wherever the clean gradient is

    ref_out, ref_lse = naive_prompt_attention(*bad_inputs, group=group, causal=True)
    rows = out[0, FIRST:].double()
    expected = ref_out[0, FIRST:]
    assert not torch.isfinite(expected).all(), "the poisoned rows should attend the poison"
    assert torch.equal(torch.isnan(rows), torch.isnan(expected)), "NaN pattern of the rows that see the poison"
    assert torch.equal(rows[torch.isinf(expected)], expected[torch.isinf(expected)]), "inf of the rows that see it"
    if return_lse:
        assert torch.equal(torch.isfinite(lse[0, :, FIRST:]), torch.isfinite(ref_lse[0, :, FIRST:]))
