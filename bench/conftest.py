"""pytest-benchmark micro-benchmarks: ``pytest bench/ --benchmark-json=out.json``.

Not part of the test suite: ``pytest.ini`` sets ``testpaths = tests``, so the test command never
collects this folder; it runs only when named. Small by default (a tiny CLIP, the attention op's
small shapes, 3 rounds) so that it finishes in minutes on two CPU cores; the options below give
the full sizes:

  --bench-model NAME    open_clip architecture with random weights for the step benchmarks
                        (default "tiny": 64 wide, 12 layers per tower)
  --bench-full-shapes   the attention op's full benchmark shapes (default: the small ones)
  --bench-rounds N      timed rounds per benchmark after one warm-up round (default 3)
  --bench-device DEV    default cuda when present, else cpu
  --bench-threads N     CPU threads (default 2)

    pytest bench/ --benchmark-json=out.json                              # everything, small
    pytest bench/attention/test_micro_ops.py --bench-full-shapes --benchmark-json=ops.json
    pytest bench/steps/test_micro_steps.py -k "coop and train" --bench-model ViT-B-16
"""
import os

from bench.harness import timing  # first: sets OMP_WAIT_POLICY before torch starts its threads

import pytest
import torch

if not torch.cuda.is_available():  # Triton only in its interpreter: on before fastprompt.kernels loads
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    group = parser.getgroup("fastprompt micro-benchmarks (bench/)")
    group.addoption("--bench-model", default="tiny", help="model of the step benchmarks (default tiny)")
    group.addoption("--bench-full-shapes", action="store_true", help="full-size attention shapes")
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per benchmark (default 3)")
    group.addoption("--bench-device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.addoption("--bench-threads", type=int, default=2)


def pytest_configure(config):
    timing.setup_threads(config.getoption("--bench-threads"))


@pytest.fixture(scope="session")
def device(pytestconfig):
    return torch.device(pytestconfig.getoption("--bench-device"))


@pytest.fixture(scope="session")
def run_rounds(pytestconfig, device):
    """``run_rounds(benchmark, fn)``: one warm-up round, then ``--bench-rounds`` timed rounds of ``fn``
    (synchronised on CUDA so a round is the device's time, not the launch's)."""
    rounds = pytestconfig.getoption("--bench-rounds")

    def run(benchmark, fn):
        def call():
            fn()
            timing.synchronize(device)
        return benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)
    return run
