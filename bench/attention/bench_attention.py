"""Prompt-concatenated attention: every provider on the shapes that matter, against the memory floor.

Providers:
  eager   the baseline a user would write: the prompt block is copied in front of every
          sequence's keys (``torch.cat``) and ``F.scaled_dot_product_attention`` runs with a mask.
  <name>  every other backend registered with ``fastprompt.ops`` that can run on the device
          (``triton``; compiled ``cuda``/``cpu`` backends appear here once registered). They are
          called through the backend function on pre-validated arguments, i.e. without the
          op's argument checks (which read ``group``/``seqlens`` on the host).
  flex    FlexAttention on one flattened batch: queries are all N*L own tokens, keys/values are
          the G*P prompt rows followed by the N*L own rows, and a block mask lets each query see
          its group's prompt rows plus its own (causal, length-masked) tokens.

Shapes (``--small`` shrinks each to a few sequences and two heads, for Triton's interpreter):
  vit     ViT-B/16 vision layer: B = 32 images x 197 tokens, 4 deep prompts (G = 1), 12 heads
  text    text suffix layer: 1000 classes x 5 tokens (ragged), shared 17-token prefix, 8 heads, causal
  cocoop  CoCoOp: 8 images (groups) x 1000 classes x 5 tokens, 5-token prefix per image, 8 heads, causal
  vit_plain  a frozen ViT-B/16 layer without prompts: B = 128 images x 197 tokens, 12 heads (no prompt
          block and no lse: every backend hands it to SDPA; --shapes vit_plain, not in the default set)

Modes: ``fwd`` and ``fwd+bwd`` (gradients of q, k, v, pk, pv). Before timing, every provider's
output (and gradients) must agree with the eager provider. Reported per provider: median time,
achieved TB/s (the op's minimal HBM traffic / time) and TFLOP/s (useful FLOPs / time), both also
as a fraction of the device's measured peaks (a large copy and a large matmul), ``x_floor`` =
time / (minimal traffic / measured bandwidth), and the speed-up over eager. Rows are appended to
``bench/results/bench_attention.csv`` with the device name, the commit and the versions. Exit
status 1 when providers disagree (nothing is timed then).

On a machine without a GPU the kernels can only run in Triton's interpreter: the script then
checks agreement on the small shapes in the interpreter, times only the providers that run
natively on the CPU, and says that Triton timings need a GPU.

    python bench/attention/bench_attention.py                       # GPU: full shapes, bf16
    python bench/attention/bench_attention.py --shapes text cocoop --modes fwd+bwd --repeats 50
    python bench/attention/bench_attention.py --small --no-timing   # agreement only (CPU: interpreter)

This file is the command line; the pieces live in ``bench/attention/``: ``shapes``, ``floors``,
``providers``, ``agreement`` and ``measure`` (the timed runs and their rows).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import setup_threads  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402

import torch  # noqa: E402

# Without a GPU, Triton kernels run only in the interpreter, which must be on before
# fastprompt.kernels is first imported (the ops import it lazily, on first use).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastprompt.ops import registered_backends  # noqa: E402

from bench.attention.agreement import check_all  # noqa: E402
from bench.attention.floors import measure_peaks  # noqa: E402
from bench.attention.measure import time_all  # noqa: E402
from bench.attention.providers import default_providers, reference_only  # noqa: E402
from bench.attention.shapes import DEFAULT_SHAPES, SHAPES, SMALL  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_attention.csv")
MODES = ("fwd", "fwd+bwd")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=DEFAULT_SHAPES, choices=list(SHAPES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--providers", nargs="+", help="default: eager, every registered backend, flex")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--small", action="store_true", help="small shapes (what the interpreter can run)")
    parser.add_argument("--repeats", type=int, help="timing samples per provider (default 30 CUDA, 5 CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--no-timing", action="store_true", help="agreement check only")
    parser.add_argument("--compile-flex", action="store_true", help="torch.compile flex on CPU (slow first call)")
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)

    setup_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    repeats = args.repeats or (30 if device.type == "cuda" else 5)
    shapes = SMALL if args.small else SHAPES
    print(f"device: {common_fields(device)['device']}, dtype {dtype}, registered backends {registered_backends()}")

    names = args.providers or default_providers()
    if "eager" not in names:
        names = ["eager"] + names  # the baseline every provider is checked and compared against
    slow = {n: r for n in names if (r := reference_only(n, device, args.compile_flex))}
    not_timed = f"not timed: {', '.join(f'{n} ({r})' for n, r in slow.items())}; GPU timings need a GPU"

    # 1. Agreement. Providers that only run as references here can afford only the small shapes.
    failures = check_all(shapes, args.shapes, args.modes, device, dtype, names, slow, args.small, args.compile_flex)
    if failures:
        print("providers disagree, not timing: " + "; ".join(failures))
        return 1
    print("all providers agree")
    if args.no_timing:
        if slow:
            print(not_timed)
        return 0

    # 2. Timing (native providers only).
    peaks = measure_peaks(device, dtype)
    print(f"measured peaks: copy {peaks['bytes_per_s'] / 1e12:.3f} TB/s, matmul {peaks['flops_per_s'] / 1e12:.2f} "
          f"TFLOP/s ({dtype})")
    rows = time_all(shapes, args.shapes, args.modes, device, dtype, [n for n in names if n not in slow], peaks,
                    repeats, args.small, args.compile_flex)
    status = report_rows(args.csv, rows, no_fail=args.no_fail)
    if slow:
        print(not_timed)
    return status


if __name__ == "__main__":
    sys.exit(main())
