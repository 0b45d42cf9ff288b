"""Per-op micro-benchmarks: ``prompt_attention`` providers on the op's benchmark shapes.

One benchmark per (shape, mode, provider): the providers of ``bench_attention.py`` that run
natively on the device (eager cat + SDPA, every registered backend, compiled FlexAttention on
CUDA); Triton's interpreter and uncompiled FlexAttention only serve as references and are not
collected. Shapes: ``attention.shapes.SMALL`` by default, ``SHAPES`` with ``--bench-full-shapes``.
"""
import pytest
import torch

from bench.attention.providers import default_providers, make_step, providers_for, reference_only
from bench.attention.shapes import DEFAULT_SHAPES, SHAPES, SMALL, make_case

MODES = ("fwd", "fwd+bwd")


def pytest_generate_tests(metafunc):
    if "provider" in metafunc.fixturenames:
        device = torch.device(metafunc.config.getoption("--bench-device"))
        native = [n for n in default_providers() if not reference_only(n, device, False)]
        metafunc.parametrize("provider", native)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", DEFAULT_SHAPES)
def test_prompt_attention(benchmark, run_rounds, pytestconfig, device, shape, mode, provider):
    full = pytestconfig.getoption("--bench-full-shapes")
    spec = (SHAPES if full else SMALL)[shape]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    case = make_case(spec, device, dtype)
    chosen, skipped = providers_for(case, mode, [provider], compile_flex=False)
    if provider in skipped:
        pytest.skip(f"{provider} on {shape}/{mode}: {skipped[provider]}")
    benchmark.group = f"attention {shape} {mode}"
    benchmark.extra_info.update(shape=shape, full=full, mode=mode, dtype=str(dtype).replace("torch.", ""), N=spec.n,
                                L=spec.seq_len, H=spec.heads, d=spec.head_dim, G=spec.groups, P=spec.n_prompt,
                                causal=spec.causal)
    run_rounds(benchmark, make_step(chosen[provider], case, mode))
