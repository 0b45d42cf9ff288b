"""The backend parity suite: one set of tests that every attention backend must pass against the
eager backend, instantiated once per tier.

Each tier module binds the suite for its backend to a ``Test...`` name, which pytest collects
there (this module's name keeps pytest from collecting it on its own)::

    TestParity = parity_suite("cpu")                                      # tests/test_cpu_kernels.py
    TestParity = parity_suite("triton", guard=poisoned_outputs, ...)      # tests/triton_interpreter_cases.py
    TestParity = parity_suite("triton", device="cuda", ...)               # tests/test_triton_gpu.py (gpu)
    TestParity = parity_suite("cuda", device="cuda", ...)                 # tests/test_cuda_kernels.py (gpu)

The interpreter tier still runs in a process of its own (started by tests/test_triton.py) and the
GPU tiers are still marked ``gpu`` by their modules. What only one backend has (its torch ops, its
build, its reductions, float64) stays in that backend's module. Tolerances: ``fastprompt.testing``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import pytest
import torch

from fastprompt.ops import prompt_attention
from fastprompt.testing import FP32, assert_close_rel

from attention_cases import (HEAD_DIMS, LEARNER_STEP_METHODS, LOW_PRECISION_CASES, MATRIX, MATRIX_ARGS,
                             assert_learner_step_matches_eager, check_low_precision, compare_to_eager, make_case,
                             run)


def parity_suite(backend: str, *, device: str = "cpu", guard: Optional[Callable] = None,
                 head_dims: Sequence[int] = tuple(HEAD_DIMS) + (8, 88),
                 head_dim_modes: Sequence[str] = ("one", "per_seq", "mixed"),
                 head_dim_shape: Tuple[int, int] = (9, 7),
                 low_precision_cases: Sequence[tuple] = tuple(LOW_PRECISION_CASES),
                 many_sequences: Optional[Tuple[int, int]] = (300, 2),
                 vision_shapes: bool = True,
                 learner_methods: Sequence[str] = tuple(LEARNER_STEP_METHODS)):
    """The parity tests of ``backend`` on ``device``, as a class for a tier module to collect.

    ``guard``: a context-manager factory around the backend's calls (the interpreter tier poisons
    the kernels' output buffers with it). The rest sizes the suite to what the tier can afford:
    ``head_dims`` x ``head_dim_modes`` at (seq_len, n) = ``head_dim_shape``; the bf16/fp16 cases;
    ``many_sequences`` = (n, heads) of the shared-prefix case, or None to leave it out;
    ``vision_shapes`` (ViT-sized layers); the learners whose training step is compared.
    """

    def case(*args, **kwargs):
        return make_case(*args, device=device, **kwargs)

    class BackendParity:
        # ---- float32 over the combination matrix (both layouts) ----------------------------------

        @pytest.mark.parametrize(MATRIX_ARGS, MATRIX)
        def test_fp32_matches_eager(self, group_mode, causal, ragged, seq_len, head_dim, layout):
            tensors, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged, layout=layout)
            compare_to_eager(backend, tensors, dout, dlse, kwargs, guard=guard)

        @pytest.mark.parametrize("head_dim", list(head_dims))
        @pytest.mark.parametrize("group_mode", list(head_dim_modes))
        def test_every_head_dim_with_every_prompt_layout(self, head_dim, group_mode):
            seq_len, n = head_dim_shape
            tensors, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal=True, ragged=True, n=n)
            compare_to_eager(backend, tensors, dout, dlse, kwargs, guard=guard)

        if many_sequences is not None:
            def test_many_sequences_sharing_one_prefix(self):
                """The text-suffix pattern at a size where one group's sequences are split over several
                chunks / programs / blocks (whose dpk / dpv partial sums are then reduced)."""
                n, heads = many_sequences
                for mode in ("one", "mixed"):
                    tensors, dout, dlse, kwargs = case(mode, 8, 64, causal=True, ragged=True, n=n, heads=heads)
                    compare_to_eager(backend, tensors, dout, dlse, kwargs, guard=guard)

        if vision_shapes:
            def test_vision_shapes(self):
                """Deep prompts (G = 1, 197 tokens) and the class-token-only last layer (L = 1, G = N)."""
                tensors, dout, dlse, kwargs = case("one", 197, 64, causal=False, ragged=False, n=4, heads=12,
                                                   n_prompt=8)
                compare_to_eager(backend, tensors, dout, dlse, kwargs, guard=guard)
                tensors, dout, dlse, kwargs = case("per_seq", 1, 64, causal=False, ragged=False, n=8, heads=12,
                                                   n_prompt=196)
                compare_to_eager(backend, tensors, dout, dlse, kwargs, guard=guard)

        # ---- low precision: within 2x (forward) / 3x (gradients) of eager's own error -------------

        @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
        @pytest.mark.parametrize("group_mode,seq_len,head_dim,causal", list(low_precision_cases))
        def test_low_precision_error_is_within_eagers_own(self, dtype, group_mode, seq_len, head_dim, causal):
            tensors32, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged=True)
            check_low_precision(backend, dtype, tensors32, dout, dlse, kwargs, guard=guard)

        # ---- layouts, masks and options -----------------------------------------------------------

        def test_strided_inputs_and_a_stride_zero_prompt_batch(self):
            """q/k/v as views of one packed qkv tensor; a G = N block that is an expanded (stride 0)
            view; a non-contiguous output gradient."""
            gen = torch.Generator().manual_seed(3)
            n, seq_len, heads, head_dim = 3, 6, 2, 32
            qkv = torch.randn(n, seq_len, 3, heads, head_dim, generator=gen).to(device)
            q, k, v = qkv.unbind(2)
            base_k, base_v = (torch.randn(1, 5, heads, head_dim, generator=gen).to(device) for _ in range(2))
            pk, pv = base_k.expand(n, -1, -1, -1), base_v.expand(n, -1, -1, -1)
            dout = torch.randn(n, heads, seq_len, head_dim, generator=gen).to(device).transpose(1, 2)
            dlse = torch.randn(n, heads, seq_len, generator=gen).to(device)
            kwargs = dict(group=torch.tensor([2, 0, 1], device=device), causal=True,
                          seqlens=torch.tensor([6, 3, 5], device=device))
            compare_to_eager(backend, [q, k, v, pk, pv], dout, dlse, kwargs, guard=guard)

        def test_rows_past_seqlens_are_zero_with_minus_inf_lse_and_no_gradient(self):
            tensors, dout, dlse, kwargs = case("mixed", 7, 32, causal=False, ragged=False)
            kwargs["seqlens"] = torch.tensor([7, 2, 0], device=device)
            out, lse, grads = run(backend, tensors, dout, dlse, kwargs, guard=guard)
            for n, length in enumerate(kwargs["seqlens"].tolist()):
                assert torch.all(out[n, length:] == 0) and torch.all(lse[n, :, length:] == float("-inf"))
                for g in grads[:3]:  # dq, dk, dv: nothing past the length gets a gradient
                    assert torch.all(g[n, length:] == 0)
            assert torch.all(grads[3][2] == 0) and torch.all(grads[4][2] == 0)  # block 2 is read by nobody

        def test_only_prompt_gradients_requested(self):
            """A frozen tower: only pk/pv need grad."""
            tensors, dout, _, kwargs = case("per_seq", 5, 64, causal=True, ragged=True)
            q, k, v, pk, pv = tensors
            grads = {}
            for name in (backend, "eager"):
                pk_, pv_ = pk.clone().requires_grad_(), pv.clone().requires_grad_()
                out, _ = prompt_attention(q, k, v, pk_, pv_, backend=name, **kwargs)
                grads[name] = torch.autograd.grad((out * dout).sum(), (pk_, pv_))
            for name, g, r in zip(("dpk", "dpv"), grads[backend], grads["eager"]):
                assert_close_rel(g, r, FP32.parity, name)

        def test_return_lse_false(self):
            tensors, _, _, kwargs = case("one", 5, 32, causal=True, ragged=True)
            out, lse = prompt_attention(*tensors, return_lse=False, backend=backend, **kwargs)
            ref, _ = prompt_attention(*tensors, backend="eager", **kwargs)
            assert lse is None
            assert_close_rel(out, ref, FP32.parity, "out")
            # No prompt block and no lse: the fused SDPA path, as in the eager backend.
            q, k, v = tensors[:3]
            out, lse = prompt_attention(q, k, v, causal=True, return_lse=False, backend=backend)
            ref, _ = prompt_attention(q, k, v, causal=True, return_lse=False, backend="eager")
            assert lse is None and torch.equal(out, ref)

        # ---- a learner's training step ------------------------------------------------------------

        @pytest.mark.parametrize("method", list(learner_methods))
        def test_learner_training_step_equals_eager(self, method, tiny_model, classnames):
            assert_learner_step_matches_eager(backend, method, tiny_model, classnames, device)

    return BackendParity
