"""The interpreter tier of the ``triton`` backend: its kernels run by Triton's CPU interpreter,
against the eager backend.

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
from fastprompt.testing import assert_close_rel  # noqa: E402

import attention_cases  # noqa: E402
from attention_cases import (GRAD_NAMES, HEAD_DIMS, LAYOUTS, MATRIX, MATRIX_ARGS, check_low_precision,  # noqa: E402
                             assert_learner_step_matches_eager, compare_to_eager, make_case, strided_layout,
                             strided_view)

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


def compare_fp32(tensors, dout, dlse, kwargs, rtol=1e-5):
    compare_to_eager("triton", tensors, dout, dlse, kwargs, rtol=rtol, guard=poisoned_outputs)


# ---- float32 parity over the matrix -----------------------------------------------------

@pytest.mark.parametrize(MATRIX_ARGS, MATRIX)
def test_fp32_matches_eager(group_mode, causal, ragged, seq_len, head_dim, layout):
    tensors, dout, dlse, kwargs = make_case(group_mode, seq_len, head_dim, causal, ragged, layout=layout)
    compare_fp32(tensors, dout, dlse, kwargs)


@pytest.mark.parametrize("head_dim", HEAD_DIMS)
def test_every_head_dim_with_a_group_map(head_dim):
    tensors, dout, dlse, kwargs = make_case("mixed", 5, head_dim, causal=True, ragged=True, n=4)
    compare_fp32(tensors, dout, dlse, kwargs)


# ---- low precision: within 2x (forward) / 3x (gradients) of eager's own error ---------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("group_mode,seq_len,head_dim,causal", [
    ("one", 77, 64, True), ("mixed", 5, 80, False), ("per_seq", 20, 128, True), ("empty", 9, 32, False),
])
def test_low_precision_error_is_within_eagers_own(dtype, group_mode, seq_len, head_dim, causal):
    tensors32, dout, dlse, kwargs = make_case(group_mode, seq_len, head_dim, causal, ragged=True)
    check_low_precision("triton", dtype, tensors32, dout, dlse, kwargs, guard=poisoned_outputs)


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

def test_strided_inputs_and_a_stride_zero_prompt_batch():
    """q/k/v as views of one packed qkv tensor; a G = N block that is an expanded (stride 0) view."""
    gen = torch.Generator().manual_seed(3)
    n, seq_len, heads, head_dim = 3, 6, 2, 32
    qkv = torch.randn(n, seq_len, 3, heads, head_dim, generator=gen)
    q, k, v = qkv.unbind(2)
    base_k, base_v = torch.randn(1, 5, heads, head_dim, generator=gen), torch.randn(1, 5, heads, head_dim,
                                                                                      generator=gen)
    pk, pv = base_k.expand(n, -1, -1, -1), base_v.expand(n, -1, -1, -1)
    dout, dlse = torch.randn(n, seq_len, heads, head_dim, generator=gen), torch.randn(n, heads, seq_len,
                                                                                     generator=gen)
    kwargs = dict(group=torch.tensor([2, 0, 1]), causal=True, seqlens=torch.tensor([6, 3, 5]))
    out, lse = prompt_attention(q, k, v, pk, pv, backend="triton", **kwargs)
    ref_out, ref_lse = prompt_attention(q, k, v, pk, pv, backend="eager", **kwargs)
    assert_close_rel(out, ref_out, 1e-5, "out")
    assert_close_rel(lse, ref_lse, 1e-5, "lse")
    compare_fp32([q, k, v, pk, pv], dout, dlse, kwargs)


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


def test_return_lse_false_returns_none_and_same_output():
    tensors, dout, dlse, kwargs = make_case("one", 5, 32, causal=True, ragged=True)
    out, lse = prompt_attention(*tensors, return_lse=False, backend="triton", **kwargs)
    ref, _ = prompt_attention(*tensors, backend="eager", **kwargs)
    assert lse is None
    assert_close_rel(out, ref, 1e-5, "out")


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


def test_rows_past_seqlens_are_zero_with_minus_inf_lse_and_no_gradient():
    tensors, dout, dlse, kwargs = make_case("mixed", 7, 32, causal=False, ragged=False)
    kwargs["seqlens"] = torch.tensor([7, 2, 0])
    out, lse, grads = run("triton", tensors, dout, dlse, kwargs)
    for n, length in enumerate(kwargs["seqlens"].tolist()):
        assert torch.all(out[n, length:] == 0) and torch.all(lse[n, :, length:] == float("-inf"))
        for g in grads[:3]:  # dq, dk, dv: nothing past the length gets a gradient
            assert torch.all(g[n, length:] == 0)
    assert torch.all(grads[3][2] == 0) and torch.all(grads[4][2] == 0)  # block 2 is read by nobody


def test_only_prompt_gradients_requested():
    """A frozen tower: only pk/pv need grad (the prompt kernel runs, q/k/v grads are not returned)."""
    tensors, dout, dlse, kwargs = make_case("per_seq", 5, 64, causal=True, ragged=True)
    q, k, v, pk, pv = tensors
    grads = {}
    for backend in ("triton", "eager"):
        pk_, pv_ = pk.clone().requires_grad_(), pv.clone().requires_grad_()
        out, _ = prompt_attention(q, k, v, pk_, pv_, backend=backend, **kwargs)
        grads[backend] = torch.autograd.grad((out * dout).sum(), (pk_, pv_))
    for name, g, r in zip(("dpk", "dpv"), grads["triton"], grads["eager"]):
        assert_close_rel(g, r, 1e-5, name)


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
        assert_close_rel(g, r, 1e-5, name)


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
        assert_close_rel(a, b, 1e-6, name)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert triton_backend.deterministic()  # the global switch wins over the module setting
    finally:
        torch.use_deterministic_algorithms(previous)


# ---- errors and availability --------------------------------------------------------------------

def test_float64_and_unsupported_head_dim_are_value_errors():
    tensors, _, _, kwargs = make_case("one", 5, 32, causal=True, ragged=False)
    with pytest.raises(ValueError, match="q has dtype torch.float64.*eager"):
        prompt_attention(*[t.double() for t in tensors], backend="triton", **kwargs)
    tensors, _, _, kwargs = make_case("one", 3, 160, causal=False, ragged=False)
    with pytest.raises(ValueError, match="head dim d = 160"):
        prompt_attention(*tensors, backend="triton", **kwargs)


def test_backend_limits_mirror_the_kernels():
    assert triton_backend.SUPPORTED_DTYPES == kernels.SUPPORTED_DTYPES
    assert triton_backend.MAX_HEAD_DIM == kernels.max_head_dim()


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

def test_custom_op_registration_passes_opcheck():
    tensors, dout, dlse, kwargs = make_case("mixed", 5, 32, causal=True, ragged=True)
    q, k, v, pk, pv = (t.requires_grad_() for t in tensors)
    torch.library.opcheck(torch.ops.fastprompt.prompt_attention_triton.default,
                          (q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], True, 32 ** -0.5),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("group_mode", ["mixed", "none", "empty"])
@pytest.mark.parametrize("prompt_grad", [True, False])
def test_backward_op_passes_opcheck(group_mode, prompt_grad):
    tensors, dout, dlse, kwargs = make_case(group_mode, 5, 32, causal=True, ragged=True)
    q, k, v, pk, pv = tensors
    out, lse = torch.ops.fastprompt.prompt_attention_triton(q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"],
                                                            True, 32 ** -0.5)
    torch.library.opcheck(torch.ops.fastprompt.prompt_attention_triton_bwd.default,
                          (dout, dlse, q, k, v, pk, pv, kwargs["group"], kwargs["seqlens"], out, lse, True,
                           32 ** -0.5, True, prompt_grad),
                          test_utils=("test_schema", "test_faketensor"))


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
    assert_close_rel(loss, ref_loss, 1e-5, "loss")
    for name, g, r in zip(("dq", "dk", "dv", "dpk", "dpv"), grads, ref_grads):
        assert_close_rel(g, r, 1e-5, name)


def test_custom_op_with_group_map_and_seqlens_compiles_fullgraph():
    tensors, _, _, kwargs = make_case("mixed", 5, 32, causal=True, ragged=True)
    op = torch.ops.fastprompt.prompt_attention_triton

    def fn(q, k, v, pk, pv, group, seqlens):
        out, lse = op(q, k, v, pk, pv, group, seqlens, True, 32 ** -0.5)
        return out * 2, lse

    out, lse = torch.compile(fn, backend="eager", fullgraph=True)(*tensors, kwargs["group"], kwargs["seqlens"])
    ref_out, ref_lse = prompt_attention(*tensors, backend="eager", **kwargs)
    assert_close_rel(out, 2 * ref_out, 1e-5, "out")
    assert_close_rel(lse, ref_lse, 1e-5, "lse")


# ---- a learner's training step ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["coop", "cocoop"])
def test_learner_step_triton_equals_eager(method, tiny_model, classnames):
    """Same loss and prompt gradients with every attention layer on the triton backend (CoOp: G = 1
    text prefix; CoCoOp: one prefix group per image, G = B)."""
    assert_learner_step_matches_eager("triton", method, tiny_model, classnames, "cpu")
