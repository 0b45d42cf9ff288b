"""One training step of fastprompt vs the literal original code path, same process, same weights.

Each case (``bench/steps/step_cases.py``) times one unit of work — usually forward + backward + SGD step
over the prompt parameters — of a fastprompt learner and of its reference in
``fastprompt.reference`` on a random-weight open_clip model (default ViT-B-16) with ImageNet
class names, round-robin, and reports medians and the ratio; a ratio below the case's target
exits with status 1 (``--no-fail``: report only). ``--memory`` also measures each
side's peak memory of one unit (after a warm-up) in a fresh subprocess (``side_child.py``): the
peak RSS above the starting RSS on CPU, ``max_memory_allocated`` above the starting allocation on
CUDA. Rows are appended to a CSV that names the device, the commit and the versions.
``bench/suite/suite.py`` runs these cases together with their evaluation units, the attention providers
and the scaling curves.

    python bench/steps/bench_step.py                          # every case, CPU, 2 threads
    python bench/steps/bench_step.py --cases coop cocoop --repeats 5 --memory
    python bench/steps/bench_step.py --list
    python bench/steps/bench_step.py --no-fail                # report missed targets, exit 0
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median, setup_threads, time_interleaved  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.steps.side_child import Unit, run_side  # noqa: E402
from bench.harness.report import add_report_arguments, common_fields, report_rows  # noqa: E402
from bench.steps.step_cases import load_all  # noqa: E402

import torch  # noqa: E402

DEFAULT_CSV = os.path.join(REPO, "bench", "results", "bench_step.csv")


def measure_memory(case: str, side: str, model_name: str, device: str, threads: int) -> int:
    """Peak memory of one unit of ``side`` in a fresh process (bytes)."""
    unit = Unit("train", case, model=model_name, device=device, threads=threads)
    return run_side(unit, side, repeats=0, budget_s=float("inf"), hard_limit_s=3600).peak_bytes


def main(argv=None) -> int:
    cases = load_all()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(cases), choices=list(cases), metavar="CASE")
    parser.add_argument("--list", action="store_true", help="list the cases and their targets")
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (subprocesses)")
    add_report_arguments(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    if args.list:
        for spec in cases.values():
            mem = f", memory >= {spec.memory_target}x less" if spec.memory_target else ""
            print(f"{spec.name:12s} target >= {spec.target}x{mem}: {spec.description}")
        return 0
    setup_threads(args.threads)
    device = torch.device(args.device)

    from fastprompt.ops import resolve_backend

    auto_backend = resolve_backend("auto", device).name  # what the fast side's attention runs on
    print(f"prompt_attention backend=auto on {device.type}: {auto_backend}", flush=True)
    rows, below = [], []
    for name in args.cases:
        spec = cases[name]
        case = spec.build(args.model, device)
        times = time_interleaved({"fastprompt": case.fastprompt, "reference": case.reference}, args.repeats, device)
        fast_s, ref_s = median(times["fastprompt"]), median(times["reference"])
        ratio = ref_s / fast_s
        row = {**common_fields(device), "case": name, "description": spec.description, "model": args.model,
               **{k: case.info.get(k, "") for k in ("method", "images", "classes", "n_ctx")},
               "repeats": args.repeats, "fastprompt_s": round(fast_s, 4), "reference_s": round(ref_s, 4),
               "speedup": round(ratio, 2), "target": spec.target, "fastprompt_peak_mb": "",
               "reference_peak_mb": "", "memory_ratio": "", "backend": auto_backend}
        line = (f"{name:10s} {spec.description}: fastprompt {fast_s:.3f} s, reference {ref_s:.3f} s, "
                f"speed-up {ratio:.1f}x (target >= {spec.target}x)")
        if ratio < spec.target:
            below.append(f"{name} speed-up {ratio:.1f}x < {spec.target}x")
        del case
        if args.memory:
            fast_mem = measure_memory(name, "fastprompt", args.model, args.device, args.threads)
            ref_mem = measure_memory(name, "reference", args.model, args.device, args.threads)
            mem_ratio = ref_mem / max(fast_mem, 1)
            row.update(fastprompt_peak_mb=round(fast_mem / 2**20, 1), reference_peak_mb=round(ref_mem / 2**20, 1),
                       memory_ratio=round(mem_ratio, 2))
            line += (f"; peak memory fastprompt {fast_mem / 2**20:.0f} MiB, reference {ref_mem / 2**20:.0f} MiB "
                     f"({mem_ratio:.1f}x less)")
            if spec.memory_target and mem_ratio < spec.memory_target:
                below.append(f"{name} memory ratio {mem_ratio:.1f}x < {spec.memory_target}x")
        print(line, flush=True)
        rows.append(row)
    return report_rows(args.csv, rows, below, no_fail=args.no_fail)


if __name__ == "__main__":
    sys.exit(main())
