"""``torch.library.opcheck`` of every compiled backend's pair of torch ops, instantiated per backend.

Every compiled backend registers its forward / backward ops the same way
(``fastprompt.ops.op_registration``); this suite checks that registration the same way for each:
the schema against what the kernels do (no mutation, no aliasing), the fake implementations
against the real outputs (shapes, strides, dtypes), the autograd registration of the forward, and
the ops under AOT autograd with dynamic shapes. A tier module binds it to a ``Test...`` name::

    TestOpRegistration = opcheck_suite("cpp_prompt_attention_fwd", "cpp_prompt_attention_bwd")  # test_cpu_kernels.py
    TestOpRegistration = opcheck_suite("cpp_prompt_attention_fwd", "cpp_prompt_attention_bwd",
                                       device="cuda")                   # test_cuda_kernels.py (gpu)
    TestOpRegistration = opcheck_suite("prompt_attention_triton", "prompt_attention_triton_bwd",
                                       prompt_grad_arg=True)            # triton_interpreter_cases.py

(this module's name keeps pytest from collecting it on its own).
"""
from __future__ import annotations

from typing import Sequence

import pytest
import torch

from attention_cases import make_case

SCALE = 32 ** -0.5


def _op(name: str):
    return getattr(torch.ops.fastprompt, name).default


def opcheck_suite(forward: str, backward: str, *, device: str = "cpu", prompt_grad_arg: bool = False,
                  dtypes: Sequence[torch.dtype] = (torch.float32,)):
    """The opcheck tests of the ops ``fastprompt::<forward>`` and ``fastprompt::<backward>`` on
    ``device``, as a class to collect.

    ``prompt_grad_arg``: the backward op takes ``(deterministic, prompt_grad)`` after ``scale`` (the
    triton ops), so it is checked with and without prompt gradients; otherwise it always returns
    them. ``dtypes``: the input dtypes of the forward check (the C++ ops' lse is float64 for
    float64 inputs).
    """

    def case(group_mode, dtype=torch.float32):
        return make_case(group_mode, 5, 32, causal=True, ragged=True, dtype=dtype, device=device)

    class OpRegistration:
        @pytest.mark.parametrize("dtype", list(dtypes), ids=[str(d).replace("torch.", "") for d in dtypes])
        def test_forward_op_passes_opcheck(self, dtype):
            tensors, _, _, kwargs = case("mixed", dtype)
            q, k, v, pk, pv = (t.requires_grad_() for t in tensors)
            torch.library.opcheck(_op(forward), (q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, SCALE),
                                  test_utils=("test_schema", "test_autograd_registration", "test_faketensor",
                                              "test_aot_dispatch_dynamic"))

        @pytest.mark.parametrize("group_mode", ["mixed", "none", "empty"])
        @pytest.mark.parametrize("prompt_grad", [True, False] if prompt_grad_arg else [True])
        def test_backward_op_passes_opcheck(self, group_mode, prompt_grad):
            tensors, dout, dlse, kwargs = case(group_mode)
            q, k, v, pk, pv = tensors
            out, lse = _op(forward)(q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, SCALE)
            extra = (True, prompt_grad) if prompt_grad_arg else ()
            torch.library.opcheck(_op(backward),
                                  (dout, dlse, q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], out, lse, True,
                                   SCALE, *extra),
                                  test_utils=("test_schema", "test_faketensor"))

        def test_forward_and_backward_compile_into_one_graph(self):
            """``torch.compile(fullgraph=True)`` traces the forward op and its autograd formula (the
            backward op) through their fakes, and the compiled step gives the uncompiled ops' values."""
            tensors, dout, dlse, kwargs = case("mixed")

            def step(q, k, v, pk, pv):
                out, lse = _op(forward)(q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, SCALE)
                return (out * dout).sum() + (lse.masked_fill(lse.isinf(), 0.0) * dlse).sum()  # -inf: rows past seqlens

            compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
            results = []
            for fn in (compiled, step):
                leaves = [t.clone().requires_grad_() for t in tensors]
                loss = fn(*leaves)
                results.append((loss, *torch.autograd.grad(loss, leaves)))
            for name, a, b in zip(("loss", "dq", "dk", "dv", "dpk", "dpv"), *results):
                assert torch.equal(a, b), name

        def test_double_backward_raises(self):
            """The backward op has no formula of its own: differentiating a gradient must fail loudly,
            not return one that misses the backward's own dependence on its inputs."""
            tensors, dout, _, kwargs = case("mixed")
            q, k, v, pk, pv = (t.requires_grad_() for t in tensors)
            out, _ = _op(forward)(q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, SCALE)
            weight = dout.clone().requires_grad_()  # a cotangent that itself needs a gradient
            dq, = torch.autograd.grad((out * weight).sum(), q, create_graph=True)
            with pytest.raises(RuntimeError, match="differentiate twice"):
                dq.sum().backward()

    return OpRegistration
