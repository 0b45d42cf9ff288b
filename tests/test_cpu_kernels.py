"""The ``cpu`` backend (C++ kernels from csrc/, built just in time): the parity suite
(tests/backend_parity.py) and what only this backend has (float64, its torch ops, threads, the
JIT build and its fallbacks).

The extension is built (or loaded from ~/.cache/fastprompt/ext) once per session by the
``cpu_extension`` fixture; a machine without a compiler skips these tests with the reason.
"""
import logging
import os
import subprocess
import sys

import pytest
import torch

from fastprompt.ops import jit
from fastprompt.ops import AUTO_ORDER, backend_status, prompt_attention, resolve_backend
from fastprompt.ops import cpp_backend
from fastprompt.testing import FP32, FP64, assert_close_rel, naive_prompt_attention

from attention_cases import GRAD_NAMES, compare_to_eager, make_case, run
from backend_parity import parity_suite
from op_registration_checks import opcheck_suite

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def cpu_extension():
    """Build or load the CPU extension once; skip (with the reason) only where it cannot be built,
    and never under CI (``CI`` set to true): there a missing compiler is a broken setup, and a
    silently skipped tier would pass the whole suite without testing the kernels."""
    problem = jit.extension_problem("cpu")
    if problem is not None:
        if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
            pytest.fail(f"CI: the cpu backend cannot be built ({problem}); a CI machine must build it")
        pytest.skip(f"the cpu backend cannot be built here: {problem}")
    return jit.load_extension("cpu")


# ---- the parity suite (tests/backend_parity.py) --------------------------------------------

TestParity = parity_suite("cpu")


# ---- float64 and low precision --------------------------------------------------------------

@pytest.mark.parametrize("group_mode,causal,ragged", [("one", True, True), ("mixed", False, True),
                                                      ("per_seq", True, False), ("none", False, True),
                                                      ("empty", True, False)])
def test_gradcheck_float64(group_mode, causal, ragged):
    tensors, _, _, kwargs = make_case(group_mode, 4, 8, causal, ragged, dtype=torch.float64, n=3, heads=2,
                                      n_prompt=None if group_mode == "empty" else 3)
    leaves = [t.requires_grad_() for t in tensors if t is not None]

    def fn(*leaves):
        q, k, v, *prompt = leaves
        pk, pv = prompt if prompt else (None, None)
        out, lse = prompt_attention(q, k, v, pk, pv, backend="cpu", **kwargs)
        return out, lse.masked_fill(torch.isinf(lse), 0.0)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_float64_matches_the_naive_reference():
    tensors, _, _, kwargs = make_case("mixed", 6, 32, causal=True, ragged=True, dtype=torch.float64, n=5)
    out, lse = prompt_attention(*tensors, backend="cpu", **kwargs)
    ref_out, ref_lse = naive_prompt_attention(*tensors, **kwargs)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64
    assert_close_rel(out, ref_out, FP64.exact, "out")
    assert_close_rel(lse, ref_lse, FP64.exact, "lse")


# ---- the prompted ViT layers go to SDPA ------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_vit_layers_with_a_shared_block_match_the_naive_reference_through_sdpa(monkeypatch, dtype):
    """Non-causal, full lengths, one batch-shared block, no lse: the keys and values are concatenated
    and handed to SDPA (the kernels are not called); the results match float64 naive attention
    (outputs) and the eager backend in float64 (gradients; the block's summed over the batch)."""
    tensors, dout, _, kwargs = make_case("one", 37, 32, causal=False, ragged=False, dtype=dtype, n=4, heads=3,
                                         n_prompt=5)
    assert kwargs.get("group") is None and kwargs.get("seqlens") is None and not kwargs["causal"]

    def no_kernels(args):
        raise AssertionError("the C++ kernels ran for a shared-block ViT layer")
    monkeypatch.setattr(cpp_backend, "_run_kernels", no_kernels)
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out, lse = prompt_attention(*leaves, backend="cpu", return_lse=False, **kwargs)
    assert lse is None and out.dtype == dtype
    grads = torch.autograd.grad((out * dout.to(dtype)).sum(), leaves)
    tol = FP64.exact if dtype == torch.float64 else FP32.parity
    assert_close_rel(out, naive_prompt_attention(*tensors, **kwargs)[0], tol, "out")
    # Gradients: the eager backend's score-level join (no concatenation) in float64, through autograd.
    ref_leaves = [t.detach().double().requires_grad_() for t in tensors]
    ref, _ = prompt_attention(*ref_leaves, backend="eager", **kwargs)
    ref_grads = torch.autograd.grad((ref * dout.double()).sum(), ref_leaves)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, tol, name)


@pytest.mark.parametrize("change", ["causal", "lse", "ragged", "grouped"])
def test_every_other_call_with_a_block_runs_the_kernels(monkeypatch, change):
    calls = []
    real = cpp_backend._run_kernels
    monkeypatch.setattr(cpp_backend, "_run_kernels", lambda args: calls.append(1) or real(args))
    tensors, _, _, kwargs = make_case("per_seq" if change == "grouped" else "one", 6, 16, causal=change == "causal",
                                      ragged=change == "ragged", n=3)
    prompt_attention(*tensors, backend="cpu", return_lse=change == "lse", **kwargs)
    assert calls == [1]


# ---- layouts, modes and options ---------------------------------------------------------------

def test_head_dim_not_contiguous_is_handled():
    tensors, dout, dlse, kwargs = make_case("one", 5, 32, causal=True, ragged=True)
    q = tensors[0].transpose(-1, -2).contiguous().transpose(-1, -2)  # stride(-1) != 1
    compare_to_eager("cpu", [q] + tensors[1:], dout, dlse, kwargs)


def test_results_do_not_depend_on_the_thread_count():
    tensors, dout, dlse, kwargs = make_case("mixed", 8, 64, causal=True, ragged=True, n=200, heads=3)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run("cpu", tensors, dout, dlse, kwargs)
        torch.set_num_threads(2)
        two = run("cpu", tensors, dout, dlse, kwargs)
    finally:
        torch.set_num_threads(previous)
    for name, a, b in zip(["out", "lse"] + GRAD_NAMES, [one[0], one[1], *one[2]], [two[0], two[1], *two[2]]):
        assert torch.equal(a, b), name


# ---- the registered torch ops ---------------------------------------------------------------

# Schema, fakes (float64 lse for float64 inputs), autograd registration: tests/op_registration_checks.py.
TestOpRegistration = opcheck_suite("cpp_prompt_attention_fwd", "cpp_prompt_attention_bwd",
                                   dtypes=(torch.float32, torch.float64))


def test_the_extension_adds_cpu_kernels_to_the_declared_ops():
    """fastprompt.ops declares the ops (schema, fake, autograd) at import; the extension only adds kernels."""
    for op in ("fastprompt::cpp_prompt_attention_fwd", "fastprompt::cpp_prompt_attention_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CPU"), op
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta"), op
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastprompt::cpp_prompt_attention_fwd", "Autograd")


def test_direct_op_calls_check_their_arguments():
    tensors, _, _, _ = make_case("mixed", 5, 32, causal=True, ragged=False)
    q, k, v, pk, pv = tensors
    op = torch.ops.fastprompt.cpp_prompt_attention_fwd
    with pytest.raises(RuntimeError, match="group values must lie in"):
        op(q, k, v, pk, pv, torch.tensor([0, 5, 1]), None, True, 0.1)
    with pytest.raises(RuntimeError, match="seqlens values must lie in"):
        op(q, k, v, pk, pv, torch.tensor([0, 1, 1]), torch.tensor([1, 9, 2]), True, 0.1)
    with pytest.raises(RuntimeError, match="group is required"):
        op(q, k, v, pk, pv, None, None, True, 0.1)
    with pytest.raises(RuntimeError, match="pk must have shape"):
        op(q, k, v, pk[..., :16], pv[..., :16], torch.tensor([0, 1, 1]), None, True, 0.1)


def test_torch_compile_traces_the_backend():
    tensors, dout, dlse, _ = make_case("one", 5, 32, causal=True, ragged=False)

    def step(q, k, v, pk, pv, backend):
        out, lse = prompt_attention(q, k, v, pk, pv, causal=True, backend=backend)
        return (out * dout).sum() + (lse * dlse).sum()

    compiled = torch.compile(step, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in tensors]
    grads = torch.autograd.grad(compiled(*leaves, "cpu"), leaves)
    ref_leaves = [t.clone().requires_grad_() for t in tensors]
    ref_grads = torch.autograd.grad(step(*ref_leaves, "eager"), ref_leaves)
    for name, g, r in zip(GRAD_NAMES, grads, ref_grads):
        assert_close_rel(g, r, FP32.parity, name)


# ---- JIT, fallback and diagnostics ----------------------------------------------------------

def _python(code, env_extra, timeout=300):
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=timeout)


def test_the_build_is_cached(cpu_extension):
    """A second process loads the cached build: no build log line, no compiler run."""
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from fastprompt.ops import jit; jit.load_extension('cpu'); print(jit.extension_state('cpu'))")
    result = _python(code, {})
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr
    assert "loaded" in result.stdout
    assert cpu_extension.build_tag() == jit.build_tag("cpu")


def test_jit_disabled_falls_back_with_a_reason_and_explicit_use_says_how_to_fix(tmp_path):
    code = """
import logging, torch
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(message)s")
from fastprompt.ops import jit
from fastprompt.ops import prompt_attention, backend_status, resolve_backend
q = torch.randn(2, 3, 1, 8)
pk = torch.randn(1, 2, 1, 8)
print("STATUS", backend_status("cpu")["cpu"])
print("AUTO", resolve_backend("auto", torch.device("cpu")).name)
prompt_attention(q, q, q, pk, pk, causal=True)  # auto: must work
try:
    prompt_attention(q, q, q, pk, pk, backend="cpu")
except RuntimeError as err:  # the registry names the backend; the reason says how to fix it
    print("ERROR", str(err).replace(chr(10), " "))
print("DIR", sorted(p.name for p in __import__("pathlib").Path(jit.cache_root()).rglob("*")))
"""
    result = _python(code, {"FASTPROMPT_DISABLE_JIT": "1", "FASTPROMPT_JIT_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert "FASTPROMPT_DISABLE_JIT=1" in lines["STATUS"]
    assert lines["AUTO"] == "eager"
    assert "unset FASTPROMPT_DISABLE_JIT" in lines["ERROR"] and "FASTPROMPT_BUILD_EXT=1" in lines["ERROR"]
    assert lines["DIR"] == "[]"  # nothing was compiled
    # The fallback is explained in one log line.
    reasons = [line for line in result.stderr.splitlines() if "'cpu' unavailable" in line]
    assert len(reasons) == 1 and "FASTPROMPT_DISABLE_JIT=1" in reasons[0]


def test_missing_compiler_makes_auto_fall_back(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTPROMPT_JIT_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-fastprompt")
    monkeypatch.setattr(jit, "_loaded", {})
    reason = jit.extension_problem("cpu")
    assert "no C++ compiler" in reason and "CXX" in reason
    assert cpp_backend.cpu_available(torch.device("cpu")) == reason
    with pytest.raises(jit.ToolchainMissingError, match="no C\\+\\+ compiler"):
        jit._build("cpu")


def test_a_failed_first_build_makes_auto_fall_back_on_the_same_call(monkeypatch, tmp_path, caplog):
    """auto picks the buildable C++ backend; its build fails at first use: that call still
    returns (from eager), the warning says why, and the next resolution skips it."""
    monkeypatch.setenv("FASTPROMPT_JIT_DIR", str(tmp_path))  # no cached build here
    monkeypatch.setattr(jit, "_loaded", {})
    monkeypatch.setattr(jit, "_failed", {})
    monkeypatch.setattr(jit, "_problems", {})
    monkeypatch.setattr(jit, "_has_prebuilt", lambda kind: False)
    monkeypatch.setattr(jit, "toolchain_problem", lambda kind: None)

    def failing_build(kind):
        raise jit.ExtensionBuildError(f"building the {kind!r} prompt_attention extension failed (test)")

    monkeypatch.setattr(jit, "_build", failing_build)
    if resolve_backend("auto", torch.device("cpu")).name != "cpu":
        pytest.skip("auto does not prefer the cpu backend in this build")
    tensors, _, _, kwargs = make_case("one", 5, 32, causal=True, ragged=False)
    with caplog.at_level(logging.WARNING, logger="fastprompt.ops"):
        out, lse = prompt_attention(*tensors, **kwargs)
    ref, ref_lse = prompt_attention(*tensors, backend="eager", **kwargs)
    assert torch.equal(out, ref) and torch.equal(lse, ref_lse)
    assert any("falls back" in r.getMessage() and "failed (test)" in r.getMessage() for r in caplog.records)
    assert resolve_backend("auto", torch.device("cpu")).name == "eager"
    with pytest.raises(RuntimeError, match="failed \\(test\\)"):
        prompt_attention(*tensors, backend="cpu", **kwargs)


def test_auto_order_and_probes():
    status = backend_status("cpu")
    assert status["cpu"] == "available"
    assert status["cuda"].startswith("runs on CUDA tensors")
    assert "cuda" in AUTO_ORDER["cuda"] and AUTO_ORDER["cuda"][-1] == "eager"
    if AUTO_ORDER["cpu"][0] == "cpu":
        assert resolve_backend("auto", torch.device("cpu")).name == "cpu"


def test_env_report_lists_every_backend():
    result = subprocess.run([sys.executable, "-m", "fastprompt.env"], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    for needle in ("torch", "fastprompt", "cpu", "cuda", "eager", "JIT cache"):
        assert needle in result.stdout, needle
