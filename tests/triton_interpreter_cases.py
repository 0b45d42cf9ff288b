"""The interpreter tier of the ``triton`` backend: its kernels run by Triton's CPU interpreter,
against the eager backend: the parity suite (tests/backend_parity.py, on tiny shapes, every
kernel output buffer poisoned) and what only the Triton kernels have (their launchers, the two
prompt-gradient reductions, the custom ops, availability in interpreter mode).

This module runs in a process of its own, started by ``tests/test_triton.py`` with
``TRITON_INTERPRET=1`` (Triton fixes a kernel's mode when the kernel is defined, so one process
cannot hold both the interpreted kernels and the compiled ones the GPU tier,
``tests/test_triton_gpu.py``, runs). Its name keeps pytest from collecting it in the main run. To
run (part of) it directly: ``TRITON_INTERPRET=1 python -m pytest -q tests/triton_interpreter_cases.py -k ...``.
The interpreter costs tens of milliseconds per program, so shapes are tiny: one or two heads, a
few sequences.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import contextlib  # noqa: E402
import importlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import fastprompt  # noqa: E402
import fastprompt.kernels as kernels  # noqa: E402
from fastprompt.ops import AUTO_ORDER, backend_status, prompt_attention, resolve_backend  # noqa: E402
from fastprompt.ops import triton_backend  # noqa: E402
from fastprompt.testing import FP32, assert_close_rel  # noqa: E402

import attention_cases  # noqa: E402
from attention_cases import (GRAD_NAMES, HEAD_DIMS, LAYOUTS, LOW_PRECISION_CASES, compare_to_eager,  # noqa: E402
                             make_case, strided_layout, strided_view)
from backend_parity import parity_suite  # noqa: E402
from masked_nonfinite_cases import check_masked_poison_is_ignored  # noqa: E402
from op_registration_checks import opcheck_suite  # noqa: E402

if not kernels.INTERPRET:
    pytest.skip("fastprompt.kernels was imported in compiled mode before this module set TRITON_INTERPRET=1; "
                "run it in its own process (tests/test_triton.py does)", allow_module_level=True)

FWD = importlib.import_module("fastprompt.kernels.prompt_attention_fwd")
BWD = importlib.import_module("fastprompt.kernels.prompt_attention_bwd")


class _PoisonedTorch:
    """``torch`` as the kernel launchers see it, but every ``empty``/``empty_like`` is NaN-filled."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def _poison(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-12345)

    def empty(self, *args, **kwargs):
        return self._poison(torch.empty(*args, **kwargs))

    def empty_like(self, *args, **kwargs):
        return self._poison(torch.empty_like(*args, **kwargs))


@contextlib.contextmanager
def poisoned_outputs():
    """Any output element (or internal buffer entry) a kernel fails to write stays NaN."""
    with pytest.MonkeyPatch.context() as mp:
        for module in (FWD, BWD):
            mp.setattr(module, "torch", _PoisonedTorch())
        yield


def run(backend, tensors, dout, dlse, kwargs, with_grad=True):
    """``attention_cases.run`` with the Triton kernels' outputs poisoned."""
    guard = poisoned_outputs if backend == "triton" else None
    return attention_cases.run(backend, tensors, dout, dlse, kwargs, with_grad=with_grad, guard=guard)


def compare_fp32(tensors, dout, dlse, kwargs, rtol=FP32.parity):
    compare_to_eager("triton", tensors, dout, dlse, kwargs, rtol=rtol, guard=poisoned_outputs)


# ---- the parity suite (tests/backend_parity.py), sized for the interpreter ----------------------

TestParity = parity_suite("triton", guard=poisoned_outputs, head_dims=HEAD_DIMS, head_dim_modes=("mixed",),
                          head_dim_shape=(5, 4), low_precision_cases=LOW_PRECISION_CASES[:4], many_sequences=None,
                          vision_shapes=False, learner_methods=("coop", "cocoop"))



# ---- property-based -----------------------------------------------------------------------------

@st.composite
def random_attention_cases(draw):
    n = draw(st.integers(1, 4))
    seq_len = draw(st.integers(1, 40))
    heads = draw(st.integers(1, 2))
    head_dim = draw(st.sampled_from([8, 16, 24, 32, 48, 64, 80, 104, 128]))
    mode = draw(st.sampled_from(["none", "one", "groups"]))
    n_prompt = draw(st.integers(0, 20))
    causal = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 16))
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen)
    q, k, v = (rand(n, seq_len, heads, head_dim) for _ in range(3))
    pk = pv = group = None
    if mode != "none":
        n_groups = 1 if mode == "one" else draw(st.integers(1, 4))
        pk, pv = rand(n_groups, n_prompt, heads, head_dim), rand(n_groups, n_prompt, heads, head_dim)
        if mode == "groups":
            group = torch.tensor(draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n)))
    seqlens = None
    if draw(st.booleans()):
        seqlens = torch.tensor(draw(st.lists(st.integers(0, seq_len), min_size=n, max_size=n)))
    dout, dlse = rand(n, seq_len, heads, head_dim), rand(n, heads, seq_len)
    case = [q, k, v, pk, pv], dout, dlse, dict(group=group, causal=causal, seqlens=seqlens)
    if draw(st.sampled_from(LAYOUTS)) == "strided":
        case = strided_layout(*case, n_groups=0 if pk is None else pk.shape[0], seq_len=seq_len)
    return case


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(random_attention_cases())
def test_property_fp32_matches_eager(case):
    tensors, dout, dlse, kwargs = case
    compare_fp32(tensors, dout, dlse, kwargs)


# ---- layouts, modes and options -----------------------------------------------------------------

def test_group_and_seqlens_as_columns_of_a_table():
    """The issue's silent wrong answer: group and seqlens read as if contiguous. Here they are
    columns of one [N, 2] table (stride 2), the other column holding valid but different values."""
    tensors, dout, dlse, kwargs = make_case("mixed", 6, 32, causal=True, ragged=True, n=5)
    table = torch.stack([kwargs["group"], kwargs["seqlens"]], dim=1)  # [N, 2]: group, length
    strided = dict(kwargs, group=table[:, 0], seqlens=table[:, 1])
    assert strided["group"].stride(0) == 2
    out, lse = prompt_attention(*tensors, backend="triton", **strided)
    ref_out, ref_lse = prompt_attention(*tensors, backend="triton", **kwargs)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)
    compare_fp32(tensors, dout, dlse, strided)


def test_backward_launcher_takes_every_argument_strided():
    """The backward launcher called directly with strided dout, dlse, out, lse, group and seqlens
    gives the gradients of contiguous copies, bit for bit."""
    tensors, dout, dlse, kwargs = make_case("mixed", 7, 32, causal=True, ragged=True, n=5, heads=2)
    q, k, v, pk, pv = tensors
    group, seqlens, scale = kwargs["group"], kwargs["seqlens"], 32 ** -0.5
    out, lse = kernels.prompt_attention_fwd(q, k, v, pk, pv, group, seqlens, True, scale)
    contiguous = kernels.prompt_attention_bwd(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, True, scale)
    nan = float("nan")
    views = [strided_view(t, kind, nan) for t, kind in ((dout, "interleaved"), (dlse, "interleaved"),
                                                         (out, "last_dim"), (lse, "transposed"))]
    strided = kernels.prompt_attention_bwd(views[0], views[1], q, k, v, pk, pv,
                                           strided_view(group, "interleaved", 2),
                                           strided_view(seqlens, "interleaved", 7 - seqlens),
                                           views[2], views[3], True, scale)
    for name, a, b in zip(GRAD_NAMES, strided, contiguous):
        assert torch.equal(a, b), name


def test_plain_layers_go_to_sdpa_like_the_other_backends(monkeypatch):
    """No prompt block and no lse: the fused SDPA path (the kernels are not launched), bitwise the
    eager backend's output; with a prompt block or the lse the kernels run."""
    tensors, _, _, kwargs = make_case("none", 5, 32, causal=True, ragged=True)
    q, k, v = tensors[:3]
    launched = []
    real = triton_backend.prompt_attention_triton
    monkeypatch.setattr(triton_backend, "prompt_attention_triton", lambda *a: launched.append(1) or real(*a))
    out, lse = prompt_attention(q, k, v, return_lse=False, backend="triton", **kwargs)
    ref, _ = prompt_attention(q, k, v, return_lse=False, backend="eager", **kwargs)
    assert lse is None and torch.equal(out, ref) and not launched
    prompt_attention(q, k, v, return_lse=True, backend="triton", **kwargs)
    assert launched == [1]


@pytest.mark.parametrize("splits", [1, 2, 5])
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
def test_prompt_gradient_reduction_modes(splits, deterministic):
    """Both reductions, with groups split across several programs, equal the eager gradients."""
    tensors, dout, dlse, kwargs = make_case("mixed", 5, 32, causal=True, ragged=True, n=7)
    q, k, v, pk, pv = tensors
    out, lse = kernels.prompt_attention_fwd(q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, 32 ** -0.5)
    with poisoned_outputs():
        grads = kernels.prompt_attention_bwd(dout, dlse, q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"],
                                             out, lse, True, 32 ** -0.5, deterministic=deterministic,
                                             splits=splits)
    _, _, ref = run("eager", tensors, dout, dlse, kwargs)
    for name, g, r in zip(GRAD_NAMES, grads, ref):
        assert_close_rel(g, r, FP32.parity, name)


def test_deterministic_mode_is_bitwise_reproducible_and_selectable(monkeypatch):
    tensors, dout, dlse, kwargs = make_case("one", 5, 32, causal=True, ragged=False, n=6)
    first = run("triton", tensors, dout, dlse, kwargs)[2]
    second = run("triton", tensors, dout, dlse, kwargs)[2]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    monkeypatch.setattr(triton_backend, "DETERMINISTIC", False)
    assert not triton_backend.deterministic()
    atomic = run("triton", tensors, dout, dlse, kwargs)[2]
    for name, a, b in zip(("dq", "dk", "dv", "dpk", "dpv"), atomic, first):
        assert_close_rel(a, b, FP32.rounding, name)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert triton_backend.deterministic()  # the global switch wins over the module setting
    finally:
        torch.use_deterministic_algorithms(previous)


# ---- errors and availability --------------------------------------------------------------------

@pytest.mark.parametrize("group_mode", ["none", "one", "mixed"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_causally_masked_poison_reaches_no_row_and_no_gradient(group_mode, which):
    """tests/test_ops_masked_nonfinite.py's check on this backend: NaN at keys a causal mask hides
    from a row never reaches it, nor the gradients of a loss that does not read the rows that see it."""
    with poisoned_outputs():
        check_masked_poison_is_ignored("triton", group_mode, which, float("nan"), return_lse=True)


def test_float64_and_unsupported_head_dim_are_value_errors():
    tensors, _, _, kwargs = make_case("one", 5, 32, causal=True, ragged=False)
    with pytest.raises(ValueError, match="q has dtype torch.float64.*eager"):
        prompt_attention(*[t.double() for t in tensors], backend="triton", **kwargs)
    tensors, _, _, kwargs = make_case("one", 3, 160, causal=False, ragged=False)
    with pytest.raises(ValueError, match="head dim d = 160"):
        prompt_attention(*tensors, backend="triton", **kwargs)


def test_availability_and_auto_choice(monkeypatch):
    assert backend_status("cpu")["triton"] == "available"  # interpreter on
    # On CPU the interpreter runs only when asked for by name, never for "auto".
    assert "triton" not in AUTO_ORDER["cpu"]
    assert resolve_backend("auto", torch.device("cpu")).name != "triton"
    assert AUTO_ORDER["cuda"].index("triton") < AUTO_ORDER["cuda"].index("eager")
    # Kernels defined in interpreter mode never take CUDA tensors: auto must not run the interpreter.
    assert "interpreter" in triton_backend.triton_available(torch.device("cuda"))
    assert "CUDA" in triton_backend.triton_available(torch.device("meta"))
    monkeypatch.setattr(kernels, "INTERPRET", False)
    assert "TRITON_INTERPRET=1" in triton_backend.triton_available(torch.device("cpu"))
    monkeypatch.setattr(triton_backend, "_triton_found", False)
    assert "pip install triton" in triton_backend.triton_available(torch.device("cuda"))


def test_kernels_are_installed_inside_the_package():
    assert fastprompt.kernels is kernels
    assert os.path.basename(os.path.dirname(kernels.__file__)) == "kernels"
    assert callable(kernels.prompt_attention_fwd) and callable(kernels.prompt_attention_bwd)


# ---- torch.library / torch.compile --------------------------------------------------------------

# The custom ops: schema, fakes, autograd registration (tests/op_registration_checks.py).
TestOpRegistration = opcheck_suite("prompt_attention_triton", "prompt_attention_triton_bwd", prompt_grad_arg=True)


def test_torch_compile_traces_forward_and_backward_without_graph_breaks():
    tensors, dout, dlse, _ = make_case("one", 5, 32, causal=True, ragged=False)

    def step(q, k, v, pk, pv, backend):
        out, lse = prompt_attention(q, k, v, pk, pv, causal=True, backend=backend)
        return (out * dout).sum() + (lse * dlse).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)  # fake impls trace fwd and bwd
    leaves = [t.clone().requires_grad_() for t in tensors]
    loss = compiled(*leaves, "triton")
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.clone().requires_grad_() for t in tensors]
    ref_loss = step(*ref_leaves, "eager")
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    assert_close_rel(loss, ref_loss, FP32.parity, "loss")
    for name, g, r in zip(("dq", "dk", "dv", "dpk", "dpv"), grads, ref_grads):
        assert_close_rel(g, r, FP32.parity, name)


def test_custom_op_with_group_map_and_seqlens_compiles_fullgraph():
    tensors, _, _, kwargs = make_case("mixed", 5, 32, causal=True, ragged=True)
    op = torch.ops.fastprompt.prompt_attention_triton

    def fn(q, k, v, pk, pv, group, seqlens):
        out, lse = op(q, k, v, pk, pv, group, seqlens, True, 32 ** -0.5)
        return out * 2, lse

    out, lse = torch.compile(fn, backend="eager", fullgraph=True)(*tensors, kwargs["group"], kwargs["seqlens"])
    ref_out, ref_lse = prompt_attention(*tensors, backend="eager", **kwargs)
    assert_close_rel(out, 2 * ref_out, FP32.parity, "out")
    assert_close_rel(lse, ref_lse, FP32.parity, "lse")
