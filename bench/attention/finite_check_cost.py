"""What the op's NaN/inf check costs a finite call on the CPU.

``prompt_attention`` keeps keys a row cannot see out of that row exactly, even when they hold NaN
or inf (``fastprompt/ops/masked_exactness.py``). A call whose inputs are all finite, the only
case in a training run that has not already diverged, pays one check (a sum per input, read back
together) before the usual kernel. This script times the eager kernel alone and with the check, side
by side, round-robin, medians, on a CoOp-sized text batch (N=64 sequences of L=77, H=8 heads of
d=64, causal, fp32), with and without a shared prompt block and ``lse``.

    OMP_WAIT_POLICY=PASSIVE python bench/attention/finite_check_cost.py [--repeats 100]

It prints the ratio (checked / unchecked) per case. No target is set for it: it says what the
exactness costs.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402

import torch  # noqa: E402

from fastprompt.ops.eager import _finite_prompt_attention  # noqa: E402
from fastprompt.ops.masked_exactness import has_nonfinite  # noqa: E402
from fastprompt.ops.validation import check_prompt_attention_args  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    setup_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(64, 77, 8, 64, generator=gen) for _ in range(3))
    pk, pv = (torch.randn(1, 4, 8, 64, generator=gen) for _ in range(2))
    cases = {"no prompt block, no lse (fused SDPA)": (None, None, False),
             "prompt block + lse (explicit softmax)": (pk, pv, True)}
    for name, (ppk, ppv, lse) in cases.items():
        call = check_prompt_attention_args(q, k, v, ppk, ppv, None, True, None, None, lse)

        def checked(call=call):
            if not has_nonfinite(call):
                _finite_prompt_attention(call)

        times = time_interleaved({"kernel": lambda call=call: _finite_prompt_attention(call), "checked": checked},
                                 args.repeats, torch.device("cpu"), warmup=3)
        plain, both = median(times["kernel"]), median(times["checked"])
        print(f"{name}: kernel {plain * 1e3:.2f} ms, with the check {both * 1e3:.2f} ms, ratio {both / plain:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
