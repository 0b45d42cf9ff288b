"""The GPU tier of the ``triton`` backend: the compiled kernels on CUDA tensors, against the eager
backend on the same GPU.

Every test is marked ``gpu`` (conftest skips them at collection when no CUDA device is present).
The kernels must be defined in compiled mode, i.e. ``fastprompt.kernels`` imported in a process
without ``TRITON_INTERPRET=1``; the interpreter tier runs in a process of its own
(tests/test_triton.py), so the main test process stays compiled. Split the tier over several
processes sharing one Triton cache with ``FASTPROMPT_TEST_SHARD=i/n`` (see conftest.py).
"""
import pytest
import torch

from fastprompt.ops import AUTO_ORDER, backend_status, prompt_attention, resolve_backend
from fastprompt.ops import triton_backend
from fastprompt.testing import assert_close_rel

from attention_cases import (GRAD_NAMES, HEAD_DIMS, LEARNER_STEP_METHODS, LOW_PRECISION_CASES, MATRIX, MATRIX_ARGS,
                             assert_learner_step_matches_eager, check_low_precision, compare_to_eager, make_case,
                             run)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def compiled_kernels():
    pytest.importorskip("triton")
    import fastprompt.kernels as kernels
    if kernels.INTERPRET:
        pytest.skip("fastprompt.kernels was imported with TRITON_INTERPRET=1 in this process; the GPU tier needs "
                    "the compiled kernels (run pytest without TRITON_INTERPRET)")
    return kernels


def case(*args, **kwargs):
    return make_case(*args, device="cuda", **kwargs)


# ---- parity over the shared matrix (both layouts) ------------------------------------------------

@pytest.mark.parametrize(MATRIX_ARGS, MATRIX)
def test_fp32_matches_eager(group_mode, causal, ragged, seq_len, head_dim, layout):
    tensors, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged, layout=layout)
    compare_to_eager("triton", tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("head_dim", HEAD_DIMS + [8, 88])
@pytest.mark.parametrize("group_mode", ["one", "per_seq", "mixed"])
def test_every_head_dim_with_every_prompt_layout(head_dim, group_mode):
    tensors, dout, dlse, kwargs = case(group_mode, 9, head_dim, causal=True, ragged=True, n=7)
    compare_to_eager("triton", tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("group_mode,seq_len,head_dim,causal", LOW_PRECISION_CASES)
def test_low_precision_error_is_within_eagers_own(dtype, group_mode, seq_len, head_dim, causal):
    tensors32, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged=True)
    check_low_precision("triton", dtype, tensors32, dout, dlse, kwargs)


# ---- GPU-sized shapes -----------------------------------------------------------------------------

def test_many_sequences_sharing_one_prefix_split_over_programs():
    """Enough sequences that one group's dpk / dpv is split over many programs; the deterministic
    reduction is bitwise reproducible and the atomic one agrees with it."""
    for mode in ("one", "mixed"):
        tensors, dout, dlse, kwargs = case(mode, 8, 64, causal=True, ragged=True, n=1000, heads=8)
        compare_to_eager("triton", tensors, dout, dlse, kwargs)
        first = run("triton", tensors, dout, dlse, kwargs)[2]
        second = run("triton", tensors, dout, dlse, kwargs)[2]
        for name, a, b in zip(GRAD_NAMES, first, second):
            assert torch.equal(a, b), name


def test_atomic_reduction_agrees(monkeypatch):
    tensors, dout, dlse, kwargs = case("mixed", 8, 64, causal=True, ragged=True, n=1000, heads=8)
    fixed = run("triton", tensors, dout, dlse, kwargs)[2]
    monkeypatch.setattr(triton_backend, "DETERMINISTIC", False)
    atomic = run("triton", tensors, dout, dlse, kwargs)[2]
    for name, a, b in zip(GRAD_NAMES, atomic, fixed):
        assert_close_rel(a, b, 1e-5, name)  # the same sums in another order


def test_vision_shapes():
    """Deep prompts (G = 1, 197 tokens) and the class-token-only last layer (L = 1, G = N)."""
    tensors, dout, dlse, kwargs = case("one", 197, 64, causal=False, ragged=False, n=4, heads=12, n_prompt=8)
    compare_to_eager("triton", tensors, dout, dlse, kwargs)
    tensors, dout, dlse, kwargs = case("per_seq", 1, 64, causal=False, ragged=False, n=8, heads=12, n_prompt=196)
    compare_to_eager("triton", tensors, dout, dlse, kwargs)


def test_sequence_first_view_past_int32_offsets():
    """q, k, v as [N, L, H, d] views of sequence-first [L, N, H, d] tensors whose row offsets pass
    2^31 elements (4.4 GB each in bf16): the last sequences match eager on the same sequences, by
    the low-precision rule (an int32 address overflow would read other rows: errors of order 1)."""
    seq_len, heads, head_dim = 77, 8, 64
    n = (2 ** 31) // ((seq_len - 1) * heads * head_dim) + 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(seq_len, n, heads, head_dim, device="cuda", dtype=torch.bfloat16, generator=gen)
               .transpose(0, 1) for _ in range(3))
    assert (seq_len - 1) * q.stride(1) >= 2 ** 31
    with torch.no_grad():
        out, lse = prompt_attention(q, k, v, causal=True, backend="triton")
        last = slice(n - 4, n)
        small = [t[last] for t in (q, k, v)]
        exact = prompt_attention(*[t.float() for t in small], causal=True, backend="eager")
        low = prompt_attention(*small, causal=True, backend="eager")
    for name, mine, ref, eager in (("out", out[last], exact[0], low[0]), ("lse", lse[last], exact[1], low[1])):
        err = float((mine.double() - ref.double()).abs().max())
        eager_err = float((eager.double() - ref.double()).abs().max())
        assert err <= 2 * eager_err + 1e-6, f"{name}: triton error {err:.3e} > 2 x eager error {eager_err:.3e}"
    del q, k, v, out
    torch.cuda.empty_cache()


# ---- availability, learners, torch.compile --------------------------------------------------------

def test_probes_and_auto_choice():
    assert backend_status("cuda")["triton"] == "available"
    assert resolve_backend("auto", torch.device("cuda")).name == AUTO_ORDER["cuda"][0] == "triton"


def test_plain_layers_go_to_sdpa():
    tensors, _, _, kwargs = case("none", 77, 64, causal=True, ragged=True)
    out, lse = prompt_attention(*tensors[:3], return_lse=False, backend="triton", **kwargs)
    ref, _ = prompt_attention(*tensors[:3], return_lse=False, backend="eager", **kwargs)
    assert lse is None and torch.equal(out, ref)


@pytest.mark.parametrize("method", LEARNER_STEP_METHODS)
def test_learner_training_step_triton_equals_eager(method, tiny_model, classnames):
    assert_learner_step_matches_eager("triton", method, tiny_model, classnames, "cuda")


def test_torch_compile_inductor_forward_and_backward():
    tensors, dout, dlse, kwargs = case("mixed", 9, 64, causal=True, ragged=True, n=6)

    def step(q, k, v, pk, pv, backend):
        out, lse = prompt_attention(q, k, v, pk, pv, backend=backend, **kwargs)
        return (out * dout).sum() + (lse.masked_fill(torch.isinf(lse), 0.0) * dlse).sum()

    compiled = torch.compile(step, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in tensors]
    grads = torch.autograd.grad(compiled(*leaves, "triton"), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in tensors]
    ref_grads = torch.autograd.grad(step(*ref_leaves, "eager"), ref_leaves)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, 1e-5, name)
