"""``bench/steps/flop_count.py``: the attention kernels PyTorch's FLOP counter does not know count as
the same attention computed with SDPA on the prompt-prefixed keys would, so the FLOP ratio
``bench/steps/bench_breakdown.py`` reports compares like with like."""
import os
import sys

import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.steps.flop_count import count_flops  # noqa: E402

from fastprompt.ops import prompt_attention  # noqa: E402

N, L, P, H, D = 3, 7, 4, 2, 8


def _inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(N, L, H, D, generator=gen).requires_grad_() for _ in range(3))
    pk, pv = (torch.randn(1, P, H, D, generator=gen).requires_grad_() for _ in range(2))
    return q, k, v, pk, pv


def _dense_formula(backward: bool) -> int:
    """QK^T and PV over L own + P prompt keys per query; the backward's five products are 2.5 times that."""
    forward = 4 * N * H * L * (L + P) * D
    return forward + (5 * forward // 2 if backward else 0)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("causal", [False, True])
def test_the_cpu_kernels_count_as_sdpa_on_the_concatenated_keys(backward, causal):
    q, k, v, pk, pv = _inputs()

    def kernels():
        out, _ = prompt_attention(q, k, v, pk, pv, causal=causal, return_lse=True, backend="cpu")
        if backward:
            out.sum().backward()

    def sdpa():
        keys = torch.cat([pk.expand(N, -1, -1, -1), k], 1).transpose(1, 2)
        values = torch.cat([pv.expand(N, -1, -1, -1), v], 1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values)
        if backward:
            out.sum().backward()

    kernels()  # loads the compiled extension, whose ops get their formulas on the next count
    total, by_op = count_flops(kernels)
    assert any(name.startswith("fastprompt.cpp_prompt_attention_fwd") for name in by_op), by_op
    assert total == _dense_formula(backward)
    total_sdpa, by_op_sdpa = count_flops(sdpa)
    assert total_sdpa == total, (by_op, by_op_sdpa)


def test_gemms_are_counted_as_pytorch_counts_them():
    x, w = torch.randn(5, 6), torch.randn(4, 6)
    total, by_op = count_flops(lambda: F.linear(x, w))
    assert total == 2 * 5 * 6 * 4 and by_op == {"aten.mm": total}
