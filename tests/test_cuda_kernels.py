"""The ``cuda`` backend (CUDA kernels from csrc/) against the eager backend on the same GPU.

Every test is marked ``gpu``: conftest skips them at collection when no CUDA device is present
(no device is probed at import). The extension is built (or loaded from the JIT cache) once per
session; tests/test_cuda_build.py compiles it on machines without a GPU.
"""
import pytest
import torch

from fastprompt import jit
from fastprompt.ops import AUTO_ORDER, backend_status, prompt_attention, resolve_backend
from fastprompt.testing import assert_close_rel

from attention_cases import (GRAD_NAMES, HEAD_DIMS, LEARNER_STEP_METHODS, LOW_PRECISION_CASES, MATRIX, MATRIX_ARGS,
                             assert_learner_step_matches_eager, check_low_precision, compare_to_eager, make_case, run)

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda_extension():
    return jit.load_extension("cuda")


def case(*args, **kwargs):
    return make_case(*args, device="cuda", **kwargs)


@pytest.mark.parametrize(MATRIX_ARGS, MATRIX)
def test_fp32_matches_eager(group_mode, causal, ragged, seq_len, head_dim, layout):
    tensors, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged, layout=layout)
    compare_to_eager("cuda", tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("head_dim", HEAD_DIMS + [8, 88])
@pytest.mark.parametrize("group_mode", ["one", "per_seq", "mixed"])
def test_every_head_dim_with_every_prompt_layout(head_dim, group_mode):
    tensors, dout, dlse, kwargs = case(group_mode, 9, head_dim, causal=True, ragged=True, n=7)
    compare_to_eager("cuda", tensors, dout, dlse, kwargs)


def test_many_sequences_sharing_one_prefix():
    """Enough sequences that one group's dpk / dpv is summed by many blocks (atomics)."""
    for mode in ("one", "mixed"):
        tensors, dout, dlse, kwargs = case(mode, 8, 64, causal=True, ragged=True, n=1000, heads=8)
        compare_to_eager("cuda", tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("mode", ["one", "mixed"])
def test_deterministic_algorithms_give_a_bitwise_reproducible_prompt_gradient(mode):
    """torch.use_deterministic_algorithms(True): dpk / dpv summed per (group, split) and the splits
    added in a fixed order: two runs agree bit for bit, and with eager; the default (atomic) path
    agrees with it to rounding."""
    tensors, dout, dlse, kwargs = case(mode, 8, 64, causal=True, ragged=True, n=1000, heads=8)
    atomic = run("cuda", tensors, dout, dlse, kwargs)[2]
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    # warn_only: eager's cuBLAS matmuls would otherwise demand CUBLAS_WORKSPACE_CONFIG; the flag
    # the kernels read is set either way.
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        compare_to_eager("cuda", tensors, dout, dlse, kwargs)
        first = run("cuda", tensors, dout, dlse, kwargs)[2]
        second = run("cuda", tensors, dout, dlse, kwargs)[2]
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    for name, a, b, c in zip(GRAD_NAMES, first, second, atomic):
        assert torch.equal(a, b), name
        assert_close_rel(c, a, 1e-5, name)


def test_vision_shapes():
    """Deep prompts (G = 1, 197 tokens) and the class-token-only last layer (L = 1, G = N)."""
    tensors, dout, dlse, kwargs = case("one", 197, 64, causal=False, ragged=False, n=4, heads=12, n_prompt=8)
    compare_to_eager("cuda", tensors, dout, dlse, kwargs)
    tensors, dout, dlse, kwargs = case("per_seq", 1, 64, causal=False, ragged=False, n=8, heads=12,
                                       n_prompt=196)
    compare_to_eager("cuda", tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("group_mode,seq_len,head_dim,causal", LOW_PRECISION_CASES)
def test_low_precision_error_is_within_eagers_own(dtype, group_mode, seq_len, head_dim, causal):
    tensors32, dout, dlse, kwargs = case(group_mode, seq_len, head_dim, causal, ragged=True)
    check_low_precision("cuda", dtype, tensors32, dout, dlse, kwargs)


def test_strided_inputs_and_a_stride_zero_prompt_batch():
    gen = torch.Generator().manual_seed(3)
    n, seq_len, heads, head_dim = 3, 6, 2, 32
    qkv = torch.randn(n, seq_len, 3, heads, head_dim, generator=gen).cuda()
    q, k, v = qkv.unbind(2)
    base_k, base_v = (torch.randn(1, 5, heads, head_dim, generator=gen).cuda() for _ in range(2))
    pk, pv = base_k.expand(n, -1, -1, -1), base_v.expand(n, -1, -1, -1)
    dout = torch.randn(n, heads, seq_len, head_dim, generator=gen).cuda().transpose(1, 2)
    dlse = torch.randn(n, heads, seq_len, generator=gen).cuda()
    kwargs = dict(group=torch.tensor([2, 0, 1]).cuda(), causal=True, seqlens=torch.tensor([6, 3, 5]).cuda())
    compare_to_eager("cuda", [q, k, v, pk, pv], dout, dlse, kwargs)


def test_rows_past_seqlens_are_zero_with_minus_inf_lse_and_no_gradient():
    tensors, dout, dlse, kwargs = case("mixed", 7, 32, causal=False, ragged=False)
    kwargs["seqlens"] = torch.tensor([7, 2, 0], device="cuda")
    out, lse, grads = run("cuda", tensors, dout, dlse, kwargs)
    for n, length in enumerate(kwargs["seqlens"].tolist()):
        assert torch.all(out[n, length:] == 0) and torch.all(lse[n, :, length:] == float("-inf"))
        for g in grads[:3]:
            assert torch.all(g[n, length:] == 0)
    assert torch.all(grads[3][2] == 0) and torch.all(grads[4][2] == 0)


def test_float64_is_handed_to_eager_and_large_head_dims_are_refused():
    tensors, dout, dlse, kwargs = case("one", 5, 32, causal=True, ragged=False, dtype=torch.float64)
    out, lse = prompt_attention(*tensors, backend="cuda", **kwargs)
    ref_out, ref_lse = prompt_attention(*tensors, backend="eager", **kwargs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    tensors, _, _, kwargs = case("one", 5, 160, causal=True, ragged=False)
    with pytest.raises(RuntimeError, match="head dim d = 160"):
        prompt_attention(*tensors, backend="cuda", **kwargs)


def test_probes_and_auto_choice():
    assert backend_status("cuda")["cuda"] == "available"
    assert "cuda" in AUTO_ORDER["cuda"]
    assert resolve_backend("auto", torch.device("cuda")).name == AUTO_ORDER["cuda"][0]


@pytest.mark.parametrize("method", LEARNER_STEP_METHODS)
def test_learner_training_step_cuda_equals_eager(method, tiny_model, classnames):
    assert_learner_step_matches_eager("cuda", method, tiny_model, classnames, "cuda")
