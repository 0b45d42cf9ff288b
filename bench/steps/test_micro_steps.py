"""Per-step micro-benchmarks: every learner's training step and evaluation pass, fastprompt and
reference (the units of ``step_cases.py`` and ``eval_cases.py`` at the cases' own sizes, on
``--bench-model``; eval: 4 images in batches of 2). One benchmark group per (kind, case), so
pytest-benchmark's table puts the two sides next to each other."""
import functools

import pytest

from bench.steps.eval_cases import build_eval, has_eval
from bench.steps.step_cases import load_all

CASES = load_all()
EVAL_IMAGES, EVAL_BATCH = 4, 2


@functools.lru_cache(maxsize=1)  # both sides of a case share one build; one build alive at a time
def _built(kind: str, case: str, model: str, device):
    spec = CASES[case]
    return spec.build(model, device) if kind == "train" else build_eval(spec, model, device, EVAL_IMAGES, EVAL_BATCH)


@pytest.mark.parametrize("side", ["fastprompt", "reference"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", ["train", "eval"])
def test_step(benchmark, run_rounds, pytestconfig, device, kind, case, side):
    spec = CASES[case]
    if kind == "eval" and not has_eval(spec):
        pytest.skip(f"{case} classifies no images: no evaluation unit")
    model = pytestconfig.getoption("--bench-model")
    built = _built(kind, case, model, device)
    benchmark.group = f"{kind} {case}"
    benchmark.extra_info.update(model=model, **built.info)
    run_rounds(benchmark, getattr(built, side))
