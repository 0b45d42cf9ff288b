"""The ``cuda`` backend (CUDA kernels from csrc/) against the eager backend on the same GPU: the
parity suite (tests/backend_parity.py) at GPU sizes, and what only this backend has (its
deterministic prompt-gradient reduction, float64 handed to eager, the auto choice).

Every test is marked ``gpu``: conftest skips them at collection when no CUDA device is present
(no device is probed at import). The extension is built (or loaded from the JIT cache) once per
session; tests/test_cuda_build.py compiles it on machines without a GPU.
"""
import pytest
import torch

from fastprompt.ops import jit
from fastprompt.ops import AUTO_ORDER, backend_status, prompt_attention, resolve_backend
from fastprompt.testing import FP32, assert_close_rel

from attention_cases import GRAD_NAMES, compare_to_eager, make_case, run
from backend_parity import parity_suite
from op_registration_checks import opcheck_suite

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda_extension():
    return jit.load_extension("cuda")


def case(*args, **kwargs):
    return make_case(*args, device="cuda", **kwargs)


TestParity = parity_suite("cuda", device="cuda", many_sequences=(1000, 8))
# The C++ ops on CUDA tensors: schema, fakes, autograd registration (tests/op_registration_checks.py).
TestOpRegistration = opcheck_suite("cpp_prompt_attention_fwd", "cpp_prompt_attention_bwd", device="cuda")


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
        assert_close_rel(c, a, FP32.parity, name)


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
