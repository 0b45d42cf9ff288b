"""The whole benchmark suite in one command: CSV rows, plots and the table of ``bench/README.md``.

Parts (``--parts``, default all):
  train      every learner's training step (``bench/steps/step_cases.py``), fastprompt vs
             ``fastprompt.reference``
  eval       every learner's evaluation pass (``bench/steps/eval_cases.py``): classify a test set
             with a trained prompt, class features computed once and images batched vs the
             reference's text pass in every batch; images/s
  attention  the prompt-attention providers on the op's benchmark shapes (``bench/attention/``)
  scaling    step time and peak memory vs classes and vs batch size, with the fitted growth
             (``scaling.py``; its options apply)

Train and eval time both sides round-robin in one process (medians of ``--repeats`` after a
warm-up) and measure each side's peak memory in a fresh process. Written into ``--out``:
``suite.csv`` and ``scaling.csv`` (rows appended; each row names the device, versions, commit,
shapes and the ``run_id`` of this invocation), ``plots/*.png`` and ``README_table.md`` (the table
``bench/README.md`` includes). ``--compare OLD.csv [...]`` prints the change of every row against
the matching rows of earlier results (``compare.py``).

Exit status 1 when a training step misses its target (ViT-B-16 at the cases' sizes only, where the
targets are defined), evaluation logits disagree, or attention providers disagree; ``--no-fail``
only reports.

    python bench/suite/suite.py                                   # everything, CPU, 2 threads (an hour or more here)
    python bench/suite/suite.py --quick --out /tmp/suite          # tiny model, small shapes: a smoke run
    python bench/suite/suite.py --parts train eval --cases coop cocoop --compare bench/results/suite.csv
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import setup_threads  # noqa: E402  (first: sets OMP_WAIT_POLICY)

import torch  # noqa: E402

# Without a GPU, Triton kernels run only in the interpreter, which must be on before
# fastprompt.kernels is first imported (as bench/attention/bench_attention.py does).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.suite.compare import comparison_lines  # noqa: E402
from bench.suite.plots import write_plots  # noqa: E402
from bench.harness.report import common_fields, report_rows  # noqa: E402
from bench.suite.rows import latest_per_kind, new_run_id, read_rows, select_run, uniform  # noqa: E402
from bench.suite.scaling import add_scaling_arguments, run_scaling  # noqa: E402
from bench.steps.step_cases import load_all  # noqa: E402
from bench.suite.table import TABLE_FILE, write_table  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results")
PARTS = ("train", "eval", "attention", "scaling")
TARGET_MODEL = "ViT-B-16"  # the model the cases' targets are set for


def parse(argv):
    cases = load_all()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny model, 1 repeat, 4 eval images, small attention shapes, 3 scaling points")
    parser.add_argument("--out", default=RESULTS, help="folder of the CSVs, plots/ and README_table.md")
    parser.add_argument("--compare", nargs="+", metavar="OLD.csv", help="print the change against these results")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--cases", nargs="+", default=list(cases), choices=list(cases), metavar="CASE",
                        help="train/eval cases (default all)")
    parser.add_argument("--model", help=f"open_clip architecture with random weights, or 'tiny' (default {TARGET_MODEL})")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, help="timed rounds per unit after a warm-up (default 3; --quick 1)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--eval-images", type=int, help="test-set size of the eval unit (default 32; --quick 4)")
    parser.add_argument("--eval-batch", type=int, help="eval batch size (default 8; --quick 2)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-fail", action="store_true", help="only report missed targets (exit status 0)")
    add_scaling_arguments(parser)
    opts = parser.parse_args(argv)
    opts.model = opts.model or ("tiny" if opts.quick else TARGET_MODEL)
    opts.repeats = opts.repeats or (1 if opts.quick else 3)
    opts.eval_images = opts.eval_images or (4 if opts.quick else 32)
    opts.eval_batch = opts.eval_batch or (2 if opts.quick else 8)
    return opts, {name: cases[name] for name in opts.cases}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    opts, cases = parse(argv)
    # Read before anything is written: OLD.csv may be the very file this run appends to.
    old = [row for path in opts.compare or () for row in read_rows(path)]
    setup_threads(opts.threads)
    run_id = new_run_id()
    base = {**common_fields(torch.device(opts.device)), "run_id": run_id, "model": opts.model,
            "command": " ".join(["python bench/suite/suite.py"] + [shlex.quote(a) for a in argv])}
    check_targets = opts.model == TARGET_MODEL and not opts.quick
    print(f"suite run {run_id} on {base['device']}: {', '.join(opts.parts)}; model {opts.model}"
          + ("" if check_targets else f" (targets are set for {TARGET_MODEL}: not checked)"), flush=True)
    rows, notes, status = [], [], 0
    suite_csv = os.path.join(opts.out, "suite.csv")

    def keep(new, missed):
        """Append a part's rows as soon as it is measured: a run stopped later keeps them."""
        nonlocal rows, status
        rows = rows + new
        if new:
            status = max(status, report_rows(suite_csv, uniform(new), missed, opts.no_fail))
        elif missed:  # nothing measured, but something failed: say it and fail
            print("failed: " + "; ".join(missed))
            status = max(status, 0 if opts.no_fail else 1)

    os.makedirs(opts.out, exist_ok=True)
    if "train" in opts.parts:
        from bench.suite.suite_steps import step_rows

        keep(*step_rows(cases, opts, base, check_targets))
    if "eval" in opts.parts:
        from bench.suite.suite_steps import eval_rows

        keep(*eval_rows(cases, opts, base))
    if "attention" in opts.parts:
        from bench.suite.suite_attention import attention_rows

        new, failures, left_out = attention_rows(opts, base)
        keep(new, failures)
        notes += left_out
    scaling_rows = run_scaling(opts, run_id) if "scaling" in opts.parts else []
    if scaling_rows:
        report_rows(os.path.join(opts.out, "scaling.csv"), uniform(scaling_rows))
    for note in notes:
        print(note)
    write_outputs(opts, rows, scaling_rows)
    if opts.compare:
        print("\n".join(comparison_lines(rows + scaling_rows, old, ", ".join(opts.compare))))
    return status


def write_outputs(opts, rows, scaling_rows) -> None:
    """README_table.md and the plots, from this run's rows; a part or case not run this time is taken
    from the last run in its CSV that measured it, so the table stays whole."""
    suite_path, scaling_path = os.path.join(opts.out, "suite.csv"), os.path.join(opts.out, "scaling.csv")
    # This run's rows are already appended to suite.csv: its latest rows per part and case hold them, in
    # the order the cases first appeared there.
    suite_rows = latest_per_kind(read_rows(suite_path)) if os.path.exists(suite_path) else list(rows)
    scaling_rows = scaling_rows or (select_run(read_rows(scaling_path)) if os.path.exists(scaling_path) else [])
    print(f"wrote {write_table(os.path.join(opts.out, TABLE_FILE), suite_rows, scaling_rows)}")
    if not opts.no_plots:
        for line in write_plots(suite_rows, scaling_rows, opts.out):
            print(line)


if __name__ == "__main__":
    sys.exit(main())
