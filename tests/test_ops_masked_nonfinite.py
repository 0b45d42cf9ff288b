"""NaN and inf where a causal mask hides them never reach a row or a gradient, on every CPU backend
(fastprompt/ops/masked_exactness.py); a non-finite value a row does attend propagates as IEEE says.

The Triton interpreter runs the same checks in its own process (tests/triton_interpreter_cases.py).
"""
import pytest
import torch

from fastprompt.ops import backend_status, prompt_attention
from fastprompt.testing import FP32, assert_close_rel, naive_prompt_attention

from masked_nonfinite_cases import FIRST, check_masked_poison_is_ignored, make_inputs, poisoned

CPU_BACKENDS = [b for b, state in backend_status("cpu").items() if state == "available" and b != "triton"]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("group_mode", ["none", "one", "mixed"])
@pytest.mark.parametrize("which", ["q", "k", "v"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("return_lse", [True, False])
def test_causally_masked_poison_reaches_no_row_and_no_gradient(backend, group_mode, which, value, return_lse):
    check_masked_poison_is_ignored(backend, group_mode, which, value, return_lse)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_an_attended_infinite_value_gives_inf_in_its_channel_only(backend):
    """``+inf`` in channel 0 of the values from FIRST on: the rows that see it are ``+inf`` in that
    channel and, elsewhere, what the float64 reference gives."""
    q, k, v, pk, pv, group = make_inputs("one")
    bad = poisoned([q, k, v, pk, pv], "v", float("inf"), channels=slice(0, 1))
    out, lse = prompt_attention(*bad, group=group, causal=True, backend=backend)
    ref_out, ref_lse = naive_prompt_attention(*bad, group=group, causal=True)
    assert torch.all(out[0, FIRST:, :, 0] == float("inf"))
    assert_close_rel(out[..., 1:], ref_out[..., 1:].float(), FP32.parity, "the finite channels")
    assert_close_rel(out[1:, ..., 0], ref_out[1:, ..., 0].float(), FP32.parity, "channel 0 of the other sequences")
    assert_close_rel(lse, ref_lse.float(), FP32.parity, "lse (values do not enter it)")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_row_that_attends_nan_and_is_read_has_nan_gradients(backend):
    """No silently finite gradient: a loss that reads a NaN row is NaN, and so are the gradients of
    what that row attends (an AMP grad scaler looks for exactly this to skip the step)."""
    q, k, v, pk, pv, group = make_inputs("none")
    bad = [t.requires_grad_() for t in poisoned([q, k, v], "v", float("nan"))]
    out, _ = prompt_attention(*bad, causal=True, backend=backend)
    out[0, FIRST].sum().backward()
    assert torch.isnan(bad[0].grad[0, FIRST]).all() and torch.isnan(bad[1].grad[0, :FIRST + 1]).any()
    assert torch.all(bad[0].grad[1:] == 0) and torch.all(bad[2].grad[1:] == 0)  # other sequences: untouched

