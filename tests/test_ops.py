"""prompt_attention (eager backend) against a float64 naive cat + softmax, gradcheck, bad inputs."""
import dataclasses
import logging

import pytest
import torch

from fastprompt.ops import backend_status, prompt_attention, registered_backends, resolve_backend
from fastprompt.ops import registry
from fastprompt.testing import FP32, FP64, assert_close_rel, naive_prompt_attention

GROUP_MODES = ["none", "one", "per_seq", "mixed"]


def make_inputs(n=5, seq_len=6, heads=2, head_dim=32, n_prompt=3, group_mode="mixed", ragged=False,
                dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)
    q, k, v = (rand(n, seq_len, heads, head_dim) for _ in range(3))
    pk = pv = group = None
    if group_mode != "none":
        n_groups = {"one": 1, "per_seq": n, "mixed": 3}[group_mode]
        pk, pv = rand(n_groups, n_prompt, heads, head_dim), rand(n_groups, n_prompt, heads, head_dim)
        if group_mode == "per_seq":
            group = torch.randperm(n, generator=gen)
        elif group_mode == "mixed":
            group = torch.tensor([2, 0, 2, 1, 0, 2, 1][:n] + [0] * max(0, n - 7))
    seqlens = None
    if ragged:
        seqlens = torch.randint(1, seq_len + 1, (n,), generator=gen)
        seqlens[0] = seq_len
        if n > 2 and group_mode != "none":
            seqlens[2] = 0  # an empty sequence: all rows uncomputed
    return q, k, v, pk, pv, group, seqlens


@pytest.mark.parametrize("group_mode", GROUP_MODES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("head_dim", [32, 64, 80])
@pytest.mark.parametrize("seq_len", [1, 7])
@pytest.mark.parametrize("return_lse", [True, False])
def test_matches_naive_float64_reference(group_mode, causal, ragged, head_dim, seq_len, return_lse):
    q, k, v, pk, pv, group, seqlens = make_inputs(seq_len=seq_len, head_dim=head_dim, group_mode=group_mode,
                                                  ragged=ragged)
    out, lse = prompt_attention(q, k, v, pk, pv, group=group, causal=causal, seqlens=seqlens,
                                return_lse=return_lse, backend="eager")
    ref_out, ref_lse = naive_prompt_attention(q, k, v, pk, pv, group=group, causal=causal, seqlens=seqlens)
    assert out.dtype == torch.float32 and out.shape == q.shape
    assert_close_rel(out, ref_out, FP32.parity, "out")
    if return_lse or lse is not None:
        assert lse.dtype == torch.float32 and lse.shape == (q.shape[0], q.shape[2], q.shape[1])
        assert_close_rel(lse, ref_lse, FP32.parity, "lse")


def test_float64_inputs_are_exact():
    q, k, v, pk, pv, group, seqlens = make_inputs(dtype=torch.float64, ragged=True)
    out, lse = prompt_attention(q, k, v, pk, pv, group=group, causal=True, seqlens=seqlens)
    ref_out, ref_lse = naive_prompt_attention(q, k, v, pk, pv, group=group, causal=True, seqlens=seqlens)
    assert_close_rel(out, ref_out, FP64.exact, "out")
    assert_close_rel(lse, ref_lse, FP64.exact, "lse")


def test_empty_prompt_block_equals_no_prompt():
    q, k, v, _, _, _, _ = make_inputs(group_mode="none")
    empty = torch.zeros(1, 0, q.shape[2], q.shape[3])
    out, lse = prompt_attention(q, k, v, empty, empty, causal=True)
    ref_out, ref_lse = prompt_attention(q, k, v, causal=True)
    assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_rows_past_seqlens_are_zero_with_minus_inf_lse():
    q, k, v, pk, pv, group, _ = make_inputs()
    seqlens = torch.tensor([6, 2, 0, 4, 1])
    out, lse = prompt_attention(q, k, v, pk, pv, group=group, seqlens=seqlens)
    for n, length in enumerate(seqlens.tolist()):
        assert torch.all(out[n, length:] == 0)
        assert torch.all(lse[n, :, length:] == float("-inf"))
        assert torch.isfinite(out[n, :length]).all()


def test_keys_past_seqlens_do_not_matter():
    q, k, v, pk, pv, group, _ = make_inputs()
    seqlens = torch.tensor([6, 2, 3, 4, 1])
    out1, _ = prompt_attention(q, k, v, pk, pv, group=group, seqlens=seqlens)
    k2, v2 = k.clone(), v.clone()
    for n, length in enumerate(seqlens.tolist()):
        k2[n, length:] = 1e4
        v2[n, length:] = -1e4
    out2, _ = prompt_attention(q, k2, v2, pk, pv, group=group, seqlens=seqlens)
    assert torch.equal(out1, out2)


@pytest.mark.parametrize("backend", [b for b, state in backend_status("cpu").items() if state == "available"])
@pytest.mark.parametrize("group_mode", ["none", "mixed"])
@pytest.mark.parametrize("return_lse", [True, False])
@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_what_padding_holds_never_reaches_the_computed_rows(backend, group_mode, return_lse, poison):
    """A masked key's probability is 0, but 0 * NaN is NaN: eager used to turn NaN in the values
    past ``seqlens`` into NaN in the valid rows (the C++ kernels never read them)."""
    q, k, v, pk, pv, group, _ = make_inputs(group_mode=group_mode)
    seqlens = torch.tensor([6, 2, 3, 4, 1])
    kwargs = dict(group=group, seqlens=seqlens, return_lse=return_lse, backend=backend)
    clean = prompt_attention(q, k, v, pk, pv, **kwargs)
    k2, v2, q2 = k.clone(), v.clone(), q.clone()
    for n, length in enumerate(seqlens.tolist()):
        k2[n, length:], v2[n, length:], q2[n, length:] = poison, poison, poison
    poisoned = prompt_attention(q2, k2, v2, pk, pv, **kwargs)
    # Compiled backends hand non-finite inputs to eager (fastprompt/ops/masked_exactness.py), so the two
    # calls may round differently: parity, whose check also demands the same non-finite entries.
    for name, a, b in zip(("out", "lse"), clean, poisoned):  # lse None without return_lse
        assert (a is None) == (b is None)
        if a is not None:
            assert_close_rel(b, a, FP32.parity, name)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1.0, True])
def test_a_scale_that_is_not_a_finite_positive_number_is_refused(scale):
    q, k, v, pk, pv, group, _ = make_inputs()
    with pytest.raises(ValueError, match="scale must be a finite positive number"):
        prompt_attention(q, k, v, pk, pv, group=group, scale=scale)


@pytest.mark.parametrize("group_mode,causal,ragged,return_lse", [
    ("one", True, True, True), ("mixed", False, True, True), ("per_seq", True, False, True),
    ("none", True, True, True), ("none", True, True, False), ("none", False, False, False),
])
def test_gradcheck_float64(group_mode, causal, ragged, return_lse):
    q, k, v, pk, pv, group, seqlens = make_inputs(n=4, seq_len=3, heads=2, head_dim=4, n_prompt=2,
                                                  group_mode=group_mode, ragged=ragged, dtype=torch.float64)
    if seqlens is not None:
        seqlens = seqlens.clamp_min(1)  # gradcheck of an all-padding row is trivially zero
    inputs = [t.requires_grad_() for t in (q, k, v) + ((pk, pv) if pk is not None else ())]

    def fn(*tensors):
        pk_, pv_ = (tensors[3], tensors[4]) if len(tensors) == 5 else (None, None)
        out, lse = prompt_attention(tensors[0], tensors[1], tensors[2], pk_, pv_, group=group, causal=causal,
                                    seqlens=seqlens, return_lse=return_lse)
        return out if lse is None else (out, lse.masked_fill(torch.isinf(lse), 0.0))

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_prompt_gradients_are_summed_over_the_group():
    """pk/pv of a block read by several sequences get the sum of the per-sequence gradients."""
    q, k, v, pk, pv, group, _ = make_inputs(group_mode="mixed", dtype=torch.float64)
    pk.requires_grad_(), pv.requires_grad_()
    out, _ = prompt_attention(q, k, v, pk, pv, group=group, causal=True)
    out.square().sum().backward()
    expected_k, expected_v = torch.zeros_like(pk), torch.zeros_like(pv)
    for n in range(q.shape[0]):
        g = int(group[n])
        pk_n, pv_n = pk[g:g + 1].detach().clone().requires_grad_(), pv[g:g + 1].detach().clone().requires_grad_()
        o, _ = prompt_attention(q[n:n + 1], k[n:n + 1], v[n:n + 1], pk_n, pv_n, causal=True)
        o.square().sum().backward()
        expected_k[g] += pk_n.grad[0]
        expected_v[g] += pv_n.grad[0]
    assert_close_rel(pk.grad, expected_k, FP64.exact, "dpk")
    assert_close_rel(pv.grad, expected_v, FP64.exact, "dpv")


def test_low_precision_runs_and_returns_fp32_lse():
    for dtype in (torch.bfloat16, torch.float16):
        q, k, v, pk, pv, group, seqlens = make_inputs(dtype=dtype, ragged=True)
        out, lse = prompt_attention(q, k, v, pk, pv, group=group, causal=True, seqlens=seqlens)
        ref_out, _ = naive_prompt_attention(q, k, v, pk, pv, group=group, causal=True, seqlens=seqlens)
        assert out.dtype == dtype and lse.dtype == torch.float32
        assert (out.double() - ref_out).abs().max() < 3e-2


# ---- bad inputs ---------------------------------------------------------------------------------

def _call(**overrides):
    q, k, v, pk, pv, group, seqlens = make_inputs()
    args = dict(q=q, k=k, v=v, pk=pk, pv=pv, group=group, seqlens=seqlens)
    args.update(overrides)
    return prompt_attention(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("pk"), args.pop("pv"), **args)


@pytest.mark.parametrize("overrides,argument", [
    (dict(k=torch.randn(5, 4, 2, 32)), "k"),
    (dict(v=torch.randn(5, 6, 2, 16)), "v"),
    (dict(q=torch.randn(5, 6, 64)), "q"),
    (dict(pk=torch.randn(3, 3, 2, 16)), "pk"),
    (dict(pv=torch.randn(3, 4, 2, 32)), "pv"),
    (dict(pv=None), "pk and pv"),
    (dict(group=torch.tensor([0, 1, 3, 0, 1])), "group"),
    (dict(group=torch.tensor([0, -1, 2, 0, 1])), "group"),
    (dict(group=torch.tensor([0, 1, 2])), "group"),
    (dict(group=torch.tensor([0.0, 1, 2, 0, 1])), "group"),
    (dict(group=None), "group"),
    (dict(seqlens=torch.tensor([6, 7, 1, 1, 1])), "seqlens"),
    (dict(seqlens=torch.tensor([6, -1, 1, 1, 1])), "seqlens"),
    (dict(k=torch.randn(5, 6, 2, 32, dtype=torch.float64)), "k"),
    (dict(pk=torch.randn(3, 3, 2, 32, dtype=torch.float16)), "pk"),
    (dict(q=torch.randint(0, 3, (5, 6, 2, 32))), "q"),
    (dict(pk=None, pv=None), "group"),
    (dict(seqlens=torch.tensor([6, 6, 6, 6, 6]).to("meta")), "seqlens"),
    (dict(pv=torch.randn(3, 3, 2, 32).to("meta")), "pv"),
    (dict(q=torch.randn(5, 6, 2, 0), k=torch.randn(5, 6, 2, 0), v=torch.randn(5, 6, 2, 0), pk=None, pv=None,
          group=None), "at least one head of at least one channel"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        _call(**overrides)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        _call(backend="nope")


def test_registry_reports_eager_available_and_auto_explains_choice(caplog):
    assert "eager" in registered_backends()
    assert backend_status("cpu")["eager"] == "available"
    registry._auto_logged.clear()
    with caplog.at_level(logging.DEBUG, logger="fastprompt.ops"):
        _call()
    messages = [r.getMessage() for r in caplog.records if r.name == "fastprompt.ops"]
    chosen = resolve_backend("auto", torch.device("cpu")).name  # 'cpu' where the C++ kernels build, else 'eager'
    assert any(f"auto chose {chosen!r} on cpu" in m for m in messages), messages


def test_explicit_unavailable_backend_raises_with_reason():
    registry.register_backend("never", lambda a: None, available=lambda d: "needs a unicorn")
    try:
        with pytest.raises(RuntimeError, match="needs a unicorn"):
            _call(backend="never")
        assert backend_status("cpu")["never"] == "needs a unicorn"
    finally:
        registry._BACKENDS.pop("never")


def test_auto_skips_gpu_kernels_not_yet_verified_on_a_gpu(monkeypatch):
    """The CUDA C++ kernels compile and pass nothing on a GPU yet: auto must not pick them there,
    while asking for them by name still works; a recorded GPU parity run lifts that."""
    usable = {name: dataclasses.replace(b, available=lambda device: None) for name, b in registry._BACKENDS.items()}
    usable["triton"] = dataclasses.replace(usable["triton"], available=lambda device: "no triton here")
    monkeypatch.setattr(registry, "_BACKENDS", usable)
    monkeypatch.setattr(registry, "_auto_logged", set())
    cuda = torch.device("cuda")
    monkeypatch.setitem(registry.GPU_VERIFIED, "cuda", None)
    assert registry.resolve_backend("auto", cuda).name == "eager"
    assert "parity suite on a GPU" in registry.auto_skip_reason("cuda", cuda)
    assert registry.resolve_backend("cuda", cuda).name == "cuda"
    assert registry.auto_skip_reason("cuda", torch.device("cpu")) is None
    monkeypatch.setitem(registry.GPU_VERIFIED, "cuda", "H200, 2026-12-01, abc1234")
    assert registry.resolve_backend("auto", cuda).name == "cuda"
