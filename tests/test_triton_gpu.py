"""The GPU tier of the ``triton`` backend: the compiled kernels on CUDA tensors, against the eager
backend on the same GPU: the parity suite (tests/backend_parity.py) at GPU sizes, and what only the
compiled kernels have (their two prompt-gradient reductions over many programs, 64-bit offsets,
the auto choice on CUDA, inductor).

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
from fastprompt.testing import BF16, FP32, assert_close_rel

from attention_cases import GRAD_NAMES, make_case, run
from backend_parity import parity_suite

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


# ---- the parity suite (tests/backend_parity.py), at GPU sizes --------------------------------------

TestParity = parity_suite("triton", device="cuda", many_sequences=(1000, 8))


# ---- GPU-sized shapes -----------------------------------------------------------------------------

def test_many_sequences_sharing_one_prefix_split_over_programs():
    """Enough sequences that one group's dpk / dpv is split over many programs (the suite's
    ``test_many_sequences_sharing_one_prefix`` compares them with eager): the deterministic
    reduction is bitwise reproducible (and the atomic one agrees with it: next test)."""
    for mode in ("one", "mixed"):
        tensors, dout, dlse, kwargs = case(mode, 8, 64, causal=True, ragged=True, n=1000, heads=8)
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
        assert_close_rel(a, b, FP32.parity, name)  # the same sums in another order


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
        assert err <= BF16.forward_factor * eager_err + BF16.floor, (
            f"{name}: triton error {err:.3e} > {BF16.forward_factor} x eager error {eager_err:.3e}")
    del q, k, v, out
    torch.cuda.empty_cache()


# ---- availability, torch.compile --------------------------------------------------------

def test_probes_and_auto_choice():
    assert backend_status("cuda")["triton"] == "available"
    assert resolve_backend("auto", torch.device("cuda")).name == AUTO_ORDER["cuda"][0] == "triton"


def test_plain_layers_go_to_sdpa():
    tensors, _, _, kwargs = case("none", 77, 64, causal=True, ragged=True)
    out, lse = prompt_attention(*tensors[:3], return_lse=False, backend="triton", **kwargs)
    ref, _ = prompt_attention(*tensors[:3], return_lse=False, backend="eager", **kwargs)
    assert lse is None and torch.equal(out, ref)


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
        assert_close_rel(g, r, FP32.parity, name)
