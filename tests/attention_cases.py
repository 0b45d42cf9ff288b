"""Inputs and comparisons of the backend parity suite (``backend_parity.py``) and of the
backend-specific tests next to it (test_cpu_kernels.py, triton_interpreter_cases.py,
test_triton_gpu.py, test_cuda_kernels.py). Tolerances come from ``fastprompt.testing``'s table.

The combination matrix is the Triton issue's: prompt block G = 1, G = N, an arbitrary group map,
an empty block (P = 0) and no block; causal on/off; ragged seqlens on/off; lengths 1, 5, 77, 201;
head dims 32, 64, 80, 128; and two layouts: contiguous, and ``strided``, where every tensor the op
and its backward take (``group`` and ``seqlens`` included) is a non-contiguous view of a larger
buffer whose other entries are poison (see ``strided_view``).
"""
from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

from fastprompt.ops import prompt_attention
from fastprompt.testing import FP32, TOLERANCES, assert_close_rel

HEAD_DIMS = [32, 64, 80, 128]
LENGTHS = [1, 5, 77, 201]
GROUP_MODES = ["one", "per_seq", "mixed", "empty", "none"]  # G = 1, G = N, a map, P = 0, no prompt
GRAD_NAMES = ["dq", "dk", "dv", "dpk", "dpv"]
LAYOUTS = ["contiguous", "strided"]

# How each float argument is laid out in the strided layout: a different kind of view each, so
# that every stride a kernel reads is exercised (batch, row and head strides that are not the
# contiguous ones, a stride-0 free dimension, and a non-unit last stride, which the launchers
# must copy away).
_FLOAT_VIEWS = {"q": "transposed", "k": "interleaved", "v": "last_dim", "pk": "interleaved",
                "pv": "transposed", "dout": "transposed", "dlse": "interleaved"}


def strided_view(t, kind, junk):
    """The values of ``t`` as a non-contiguous view of a larger buffer filled with ``junk``.

    ``kind``: ``"interleaved"`` (every row of the last dimension is followed by a junk row, so
    every stride but the last is doubled), ``"transposed"`` (dims 1 and 2 swapped in storage:
    dense, so it survives autograd's elementwise ops; no junk) or ``"last_dim"`` (stride 2 in
    the last dimension). 1-D tensors are always interleaved: entry
    ``i`` sits at ``2 * i``, with ``junk`` (a tensor or a number) at ``2 * i + 1``.
    """
    if t.dim() == 1:
        buf = torch.empty(t.shape[0], 2, dtype=t.dtype, device=t.device)
        buf[:, 0], buf[:, 1] = t, junk
        return buf[:, 0]
    if kind == "transposed" and t.dim() >= 3:
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if kind == "last_dim":
        buf = torch.full((*t.shape, 2), junk, dtype=t.dtype, device=t.device)
        buf[..., 0] = t
        return buf[..., 0]
    buf = torch.full((*t.shape[:-1], 2, t.shape[-1]), junk, dtype=t.dtype, device=t.device)
    buf[..., 0, :] = t
    return buf[..., 0, :]


def make_case(group_mode, seq_len, head_dim, causal, ragged, dtype=torch.float32, n=None, heads=None,
              n_prompt=None, seed=0, device="cpu", layout="contiguous"):
    """``(tensors [q, k, v, pk, pv], dout, dlse, op kwargs)`` with float32 cotangents.

    ``n`` sequences (default 3; 2 for long dense ones, which cost the Triton interpreter most).
    ``layout="strided"`` gives the same values as non-contiguous views (``strided_layout``).
    """
    gen = torch.Generator().manual_seed(seed)
    if n is None:
        n = 2 if seq_len > 64 and not ragged else 3
    heads = heads or (2 if seq_len <= 8 else 1)
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    q, k, v = (rand(n, seq_len, heads, head_dim) for _ in range(3))
    pk = pv = group = None
    if group_mode != "none":
        n_groups = {"one": 1, "per_seq": n, "mixed": 3, "empty": 1}[group_mode]
        if n_prompt is None:
            n_prompt = {"one": 17, "per_seq": 4, "mixed": 3, "empty": 0}[group_mode]
        pk, pv = rand(n_groups, n_prompt, heads, head_dim), rand(n_groups, n_prompt, heads, head_dim)
        if group_mode == "per_seq":
            group = torch.randperm(n, generator=gen)
        elif group_mode == "mixed":
            group = torch.tensor([1, 0, 1, 0, 1, 1, 0][:n] + [0] * max(0, n - 7))  # block 2: nobody reads it
    seqlens = None
    if ragged:
        seqlens = torch.randint(0, seq_len + 1, (n,), generator=gen)
        seqlens[0] = seq_len
        seqlens[-1] = 0 if seq_len > 1 else 1
        if n > 2:
            seqlens[1] = max(seq_len // 2, 1)
    tensors = [t if t is None else t.to(device=device, dtype=dtype) for t in (q, k, v, pk, pv)]
    dout = rand(n, seq_len, heads, head_dim).to(device)
    dlse = rand(n, heads, seq_len).to(device)
    to = lambda t: None if t is None else t.to(device)
    kwargs = dict(group=to(group), causal=causal, seqlens=to(seqlens))
    if layout == "strided":
        return strided_layout(tensors, dout, dlse, kwargs, n_groups=0 if pk is None else pk.shape[0],
                              seq_len=seq_len)
    if layout != "contiguous":
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return tensors, dout, dlse, kwargs


def strided_layout(tensors, dout, dlse, kwargs, n_groups, seq_len):
    """The same case with every tensor a non-contiguous view (``_FLOAT_VIEWS``; NaN between the
    float entries). Between the index entries lie *valid* wrong values (another prompt block,
    preferably one nobody reads; another length): a kernel that reads them as contiguous gives a
    wrong answer the comparison catches, instead of an out-of-bounds read that could crash the
    test process."""
    names = ["q", "k", "v", "pk", "pv"]
    tensors = [None if t is None else strided_view(t, _FLOAT_VIEWS[name], float("nan"))
               for name, t in zip(names, tensors)]
    dout = strided_view(dout, _FLOAT_VIEWS["dout"], float("nan"))
    dlse = strided_view(dlse, _FLOAT_VIEWS["dlse"], float("nan"))
    kwargs = dict(kwargs)
    group, seqlens = kwargs["group"], kwargs["seqlens"]
    if group is not None:
        junk = torch.full_like(group, n_groups - 1) if n_groups > 2 else (group + 1) % max(n_groups, 1)
        kwargs["group"] = strided_view(group, "interleaved", junk)
    if seqlens is not None:
        kwargs["seqlens"] = strided_view(seqlens, "interleaved", seq_len - seqlens)
    return tensors, dout, dlse, kwargs


def run(backend, tensors, dout, dlse, kwargs, with_grad=True, guard=None):
    """``(out, lse, grads of q, k, v, pk, pv)`` of ``sum(out * dout) + sum(lse * dlse)``.

    ``guard``: a context-manager factory wrapped around the backend's forward and backward (the
    Triton tests poison the kernels' output buffers with it).
    """
    leaves = [None if t is None else t.detach().requires_grad_(with_grad) for t in tensors]  # keeps strides
    with (guard() if guard is not None else contextlib.nullcontext()):
        out, lse = prompt_attention(*leaves, backend=backend, **kwargs)
        if not with_grad:
            return out, lse, []
        # lse is -inf on rows past the length; those rows carry no gradient.
        loss = (out.to(dout.dtype) * dout).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * dlse.to(lse.dtype)).sum()
        grads = torch.autograd.grad(loss, [t for t in leaves if t is not None])
    return out, lse, list(grads)


def compare_to_eager(backend, tensors, dout, dlse, kwargs, rtol=FP32.parity, guard=None):
    """Output, lse and all gradients of ``backend`` within ``rtol`` (relative) of the eager backend."""
    out, lse, grads = run(backend, tensors, dout, dlse, kwargs, guard=guard)
    ref_out, ref_lse, ref_grads = run("eager", tensors, dout, dlse, kwargs)
    assert out.dtype == tensors[0].dtype and out.shape == tensors[0].shape
    assert lse.dtype == ref_lse.dtype and lse.shape == ref_lse.shape
    assert_close_rel(out, ref_out, rtol, "out")
    assert_close_rel(lse, ref_lse, rtol, "lse")
    assert len(grads) == len(ref_grads)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert_close_rel(g, r, rtol, name)


def max_abs_error(actual, reference):
    finite = torch.isfinite(reference.detach())
    diff = (actual.detach().double() - reference.detach().double())[finite]
    return float(diff.abs().max()) if finite.any() else 0.0


def check_low_precision(backend, dtype, tensors32, dout, dlse, kwargs, guard=None):
    """FlashAttention's rule: error vs an fp32 run within 2x (forward) / 3x (gradients) of eager's own
    (``TOLERANCES[dtype]``: ``forward_factor``, ``gradient_factor``, ``floor``)."""
    tol = TOLERANCES[dtype]
    tensors = [t if t is None else t.to(dtype) for t in tensors32]
    exact = [t if t is None else t.float() for t in tensors]  # the same values, computed in fp32
    flat = lambda r: [t.detach() for t in r[:2]] + [t.detach() for t in r[2]]
    ref = flat(run("eager", exact, dout, dlse, kwargs))
    mine = flat(run(backend, tensors, dout, dlse, kwargs, guard=guard))
    low = flat(run("eager", tensors, dout, dlse, kwargs))
    assert mine[0].dtype == dtype and mine[1].dtype == torch.float32
    for i, (name, t, r, e) in enumerate(zip(["out", "lse"] + GRAD_NAMES, mine, ref, low)):
        err, eager_err = max_abs_error(t, r), max_abs_error(e, r)
        factor = tol.forward_factor if i < 2 else tol.gradient_factor
        finite = r[torch.isfinite(r)]
        size = float(finite.abs().max()) if finite.numel() else 0.0
        # The small floor keeps a near-zero eager error (exactly representable values) from failing.
        assert err <= factor * eager_err + tol.floor * size + tol.floor, (
            f"{name} ({dtype}): {backend} error {err:.3e} > {factor} x eager error {eager_err:.3e}")


# Every (group mode, causal, ragged, length) combination; the head dim rotates so that every head
# dim meets every group mode, every length, causal on/off and ragged on/off; the layout alternates
# so that every (group mode, causal, ragged) meets both layouts (at two lengths each).
MATRIX_ARGS = "group_mode,causal,ragged,seq_len,head_dim,layout"
MATRIX = [
    pytest.param(mode, causal, ragged, seq_len,
                 HEAD_DIMS[(i_mode + i_len + causal + ragged) % len(HEAD_DIMS)],
                 LAYOUTS[(i_len + causal + ragged) % 2],
                 id=f"{mode}-{'causal' if causal else 'full'}-{'ragged' if ragged else 'dense'}-L{seq_len}"
                    f"{'-strided' if (i_len + causal + ragged) % 2 else ''}")
    for (i_mode, mode), causal, ragged, (i_len, seq_len) in itertools.product(
        enumerate(GROUP_MODES), [False, True], [False, True], enumerate(LENGTHS))
]

LOW_PRECISION_CASES = [("one", 77, 64, True), ("mixed", 5, 80, False), ("per_seq", 20, 128, True),
                       ("empty", 9, 32, False), ("none", 201, 64, True)]


LEARNER_STEP_METHODS = ["coop", "cocoop", "maple"]


def assert_learner_step_matches_eager(backend, method, model, classnames, device):
    """Loss, prompt gradients and the updated prompts after one SGD step with every attention
    layer on ``backend`` equal those with ``eager`` (CoOp: G = 1 text prefix; CoCoOp: one prefix
    group per image, G = B; MaPLe: deep prompts in both towers). ``model`` is moved to ``device``
    and back to the CPU."""
    import fastprompt
    from fastprompt.testing import random_images

    cls = {"coop": fastprompt.CoOpLearner, "cocoop": fastprompt.CoCoOpLearner,
           "maple": fastprompt.MaPLeLearner}[method]
    extra = {"maple": dict(prompt_depth=2)}.get(method, {})
    images, labels = random_images(2).to(device), torch.tensor([3, 5], device=device)
    results = {}
    try:
        model.to(device)
        for name in ("eager", backend):
            torch.manual_seed(0)
            learner = cls.from_model(model, classnames, backend=name, **extra).to(device)
            params = learner.trainable_parameters()
            opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
            loss = learner.loss(images, labels)
            loss.backward()
            grads = [p.grad.clone() for p in params]
            opt.step()
            results[name] = (loss.detach(), grads, [p.detach().clone() for p in params])
    finally:
        model.cpu()  # the fixture is shared with CPU tests
    assert_close_rel(results[backend][0], results["eager"][0], FP32.parity, "loss")
    # Gradients through a whole step (every layer's backward, a meta-net's reductions): gradient_parity.
    for i, (g, r) in enumerate(zip(results[backend][1], results["eager"][1])):
        assert_close_rel(g, r, FP32.gradient_parity, f"grad {i}")
    for i, (p, r) in enumerate(zip(results[backend][2], results["eager"][2])):
        assert_close_rel(p, r, FP32.parity, f"param {i} after the step")
