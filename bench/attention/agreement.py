"""Before anything is timed: every provider's output (and, for fwd+bwd, its five gradients)
against the eager provider. Providers that only run as references here (Triton's interpreter,
uncompiled FlexAttention) are checked on the small shapes only."""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from fastprompt.testing import FP32, TOLERANCES, max_rel_error

from .providers import Provider, outputs, providers_for
from .shapes import SMALL, Case, Shape, make_case

OUTPUT_NAMES = ["out", "dq", "dk", "dv", "dpk", "dpv"]


def tolerance(dtype: torch.dtype) -> float:
    """float32: ``FP32.compiled`` (full-size shapes, other summation orders); bf16/fp16: ``benchmark``."""
    return FP32.compiled if dtype == torch.float32 else TOLERANCES[dtype].benchmark


def check_agreement(case: Case, mode: str, providers: Dict[str, Provider]) -> List[str]:
    """Every provider against eager (out and, for fwd+bwd, the five gradients); returns failures."""
    tol = tolerance(case.q.dtype)
    ref = outputs(providers["eager"], case, mode)
    failures = []
    for name, provider in providers.items():
        if name == "eager":
            continue
        got = outputs(provider, case, mode)
        errors = {n: max_rel_error(g.float(), r.float()) for n, g, r in zip(OUTPUT_NAMES, got, ref)}
        worst = max(errors, key=errors.get)
        status = "ok" if errors[worst] <= tol else "MISMATCH"
        print(f"  check {case.shape.name:6s} {mode:7s} {name:7s} vs eager: worst {worst} rel err "
              f"{errors[worst]:.1e} (tol {tol:.0e}) {status}", flush=True)
        if status != "ok":
            failures.append(f"{case.shape.name}/{mode}/{name}: {worst} rel err {errors[worst]:.2e}")
    return failures


def check_all(shapes: Dict[str, Shape], shape_names: Sequence[str], modes: Sequence[str], device: torch.device,
              dtype: torch.dtype, names: List[str], slow: Dict[str, str], small: bool,
              compile_flex: bool) -> List[str]:
    """Agreement of ``names`` on every (shape, mode); ``slow``: {provider: why it is only a reference
    here}, checked on the small shape instead. Returns the failures."""
    native = [n for n in names if n not in slow]
    failures = []
    for shape_name in shape_names:
        for mode in modes:
            if slow and not small:
                small_case = make_case(SMALL[shape_name], device, dtype)
                small_providers, skipped = providers_for(small_case, mode, ["eager"] + list(slow), compile_flex)
                for name in small_providers:
                    if name in slow:
                        print(f"  ({name}: {slow[name]}, checked on the small {shape_name} shape)")
                for name, reason in skipped.items():
                    print(f"  skip   {shape_name:6s} {mode:7s} {name:7s}: {reason}")
                failures += check_agreement(small_case, mode, small_providers)
                run_names = native
            else:
                run_names = names
            case = make_case(shapes[shape_name], device, dtype)
            providers, skipped = providers_for(case, mode, run_names, compile_flex)
            for name, reason in skipped.items():
                print(f"  skip   {shape_name:6s} {mode:7s} {name:7s}: {reason}")
            failures += check_agreement(case, mode, providers)
    return failures
