"""The Markdown table ``bench/README.md`` includes, generated from the suite's CSVs (and the plots with it).

``markdown`` turns one suite run (training steps, evaluation passes, attention providers) and one
scaling run into Markdown that states the device, versions and commit measured and the command
that reproduces it. Run alone, this file regenerates ``README_table.md`` and the plots from the
last runs recorded in ``suite.csv`` / ``scaling.csv`` without measuring anything:

    python bench/suite/table.py                    # bench/results/{suite,scaling}.csv -> README_table.md, plots/
    python bench/suite/table.py --out /tmp/suite --suite-run 20261201T043900Z 20261201T061200Z
    python bench/suite/table.py --readme           # and into bench/README.md's bench-table block
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.suite.rows import Row, latest_per_kind, number, read_rows, run_ids, select_run  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results")
BENCH_README = os.path.join(REPO, "bench", "README.md")  # where --readme puts the table
TABLE_FILE = "README_table.md"
KIND_NAMES = {"train": "training steps", "eval": "evaluation", "attention": "attention providers"}


def _fmt(value: Optional[float], unit: str = "", digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}g}{unit}"


def _mib(value: Optional[float]) -> str:
    """Memory for a reader: MiB below 10 GiB, GiB above."""
    if value is None:
        return "—"
    return f"{value / 1024:.1f} GiB" if abs(value) >= 10240 else f"{value:.4g} MiB"


def _pick(rows: Sequence[Row], kind: str, case: str, side: str) -> Optional[Row]:
    for row in rows:
        if (row.get("kind"), str(row.get("case")), row.get("side")) == (kind, case, side):
            return row
    return None


def provenance(rows: Sequence[Row], lead: str = "Measured") -> str:
    """Where and with what the rows were measured: one sentence starting with ``lead``."""
    row = rows[0]
    commit = str(row.get("commit", ""))
    short = commit[:10] + ("-dirty" if commit.endswith("-dirty") else "")
    return (f"{lead} on **{row.get('device', '?')}**, {str(row.get('timestamp', ''))[:10]}, torch {row.get('torch', '?')}, "
            f"python {row.get('python', '?')}, open_clip {row.get('open_clip', '?')}, fastprompt "
            f"{row.get('fastprompt', '?')}, commit `{short}`; model {row.get('model', '?')} with random weights.")


def steps_table(rows: Sequence[Row]) -> List[str]:
    """Training step and evaluation per method, fastprompt vs reference."""
    cases = list(dict.fromkeys(str(r["case"]) for r in rows if r.get("kind") in ("train", "eval")))
    if not cases:
        return []
    lines = ["| case | training step fastprompt / reference | speed-up (target) | FLOP ratio "
             "| peak MiB fastprompt / reference | eval images/s fastprompt / reference | eval speed-up |",
             "|---|---|---|---|---|---|---|"]
    for case in cases:
        tf, tr = _pick(rows, "train", case, "fastprompt"), _pick(rows, "train", case, "reference")
        ef, er = _pick(rows, "eval", case, "fastprompt"), _pick(rows, "eval", case, "reference")
        step = speedup = flops = peak = ev = ev_x = "—"
        if tf and tr:
            step = f"{_fmt(number(tf, 'median_s'), ' s')} / {_fmt(number(tr, 'median_s'), ' s')}"
            target = number(tf, "target")
            speedup = _fmt(number(tf, "speedup"), "×") + (f" ({_fmt(target, '×')})" if target else "")
            flops = _fmt(number(tf, "flop_ratio"), "×")
            if number(tf, "peak_mb") is not None:
                peak = (f"{_fmt(number(tf, 'peak_mb'), '', 4)} / {_fmt(number(tr, 'peak_mb'), '', 4)} "
                        f"({_fmt(number(tf, 'memory_ratio'), '×')} less)")
        if ef and er:
            ev = f"{_fmt(number(ef, 'images_per_s'))} / {_fmt(number(er, 'images_per_s'))}"
            ev_x = _fmt(number(ef, "speedup"), "×")
        lines.append(f"| {case}: {(tf or ef)['description']} | {step} | {speedup} | {flops} | {peak} | {ev} | {ev_x} |")
    lines.append("")
    lines.append("FLOP ratio: the reference's FLOPs per training step over fastprompt's (`bench/steps/flop_count.py`), "
                 "the speed-up at equal FLOP/s; a target above it needs fewer FLOPs, or more FLOP/s than the reference "
                 "gets from the same GEMMs.")
    eval_row = next((r for r in rows if r.get("kind") == "eval"), None)
    if eval_row:
        lines.append("")
        lines.append(f"Evaluation: {eval_row.get('eval_images')} images classified in batches of "
                     f"{eval_row.get('eval_batch')}; fastprompt computes the class features once per test set, "
                     "the reference runs its full text pass in every batch (CoCoOp: per image, both sides).")
    return lines


def attention_table(rows: Sequence[Row]) -> List[str]:
    attention = [r for r in rows if r.get("kind") == "attention"]
    if not attention:
        return []
    lines = ["| shape | mode | provider | time | vs eager (cat + SDPA) |", "|---|---|---|---|---|"]
    for row in attention:
        lines.append(f"| {row['case']} ({row.get('description', '')}) | {row['mode']} | {row['side']} | "
                     f"{_fmt(1e3 * number(row, 'median_s'), ' ms')} | {_fmt(number(row, 'speedup'), '×')} |")
    return lines


def scaling_table(rows: Sequence[Row]) -> List[str]:
    fits = [r for r in rows if r.get("status") == "fit"]
    stops = {(str(r["case"]), r["axis"], r["side"]): r for r in rows if r.get("status") == "stopped"}
    curves = list(dict.fromkeys((str(r["case"]), r["axis"], r["side"]) for r in rows if r.get("status") != "fit"))
    if not curves:
        return []
    lines = ["| method | grows with | side | measured up to | cost per added class / image | memory per added "
             "class / image | projected to 21,841 classes | stopped |", "|---|---|---|---|---|---|---|---|"]
    for case, axis, side in curves:
        measured = [r for r in rows if (str(r["case"]), r["axis"], r["side"]) == (case, axis, side)
                    and r.get("status") == "measured"]
        column = "classes" if axis == "classes" else "images"
        reach = max((number(r, column) for r in measured), default=None)
        fit = next((r for r in fits if (str(r["case"]), r["axis"], r["side"]) == (case, axis, side)), None)
        cost = memory = projected = "—"
        if fit:
            cost = f"{_fmt(1e3 * number(fit, 'fit_s_per_unit'), ' ms')}"
            memory = _mib(number(fit, "fit_mb_per_unit"))
            if number(fit, "projected_s") is not None:
                projected = f"{_fmt(number(fit, 'projected_s'), ' s')}, {_mib(number(fit, 'projected_mb'))}"
        stop = stops.get((case, axis, side))
        stopped = f"at {stop[column]}: {stop['reason']}" if stop else "no"
        lines.append(f"| {case} | {'classes' if axis == 'classes' else 'batch'} | {side} | "
                     f"{_fmt(reach, '', 6)} | {cost} | {memory} | {projected} | {stopped} |")
    return lines


def markdown(suite_rows: Sequence[Row], scaling_rows: Sequence[Row]) -> str:
    """The whole generated section (no heading: ``bench/README.md`` gives it one)."""
    parts = ["<!-- generated by bench/suite/suite.py (or bench/suite/table.py from its CSVs): edit those, not this -->"]
    runs = run_ids(suite_rows)
    for run in runs:
        of_run = [row for row in suite_rows if str(row.get("run_id", "")) == run]
        kinds = list(dict.fromkeys(str(row.get("kind")) for row in of_run))
        names = []
        for kind in kinds:
            name = KIND_NAMES.get(kind, kind)
            if len(runs) > 1 and kind in ("train", "eval"):  # several runs: say which rows are this one's
                cases = dict.fromkeys(str(r.get("case")) for r in of_run if r.get("kind") == kind)
                name += " (" + ", ".join(cases) + ")"
            names.append(name)
        lead = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
        first = of_run[0]
        parts += [provenance(of_run, lead[:1].upper() + lead[1:] + " measured") + f" Medians of "
                  f"{first.get('repeats', '?')} interleaved runs; run `{run}`, reproduced by "
                  f"`{first.get('command', 'python bench/suite/suite.py')}`.", ""]
    if suite_rows:
        parts += steps_table(suite_rows) + [""]
        attention = attention_table(suite_rows)
        if attention:
            parts += ["Attention op, one layer:", ""] + attention + [""]
    if scaling_rows:
        parts += ["Scaling of the training step (least-squares line through the measured points; "
                  f"{provenance(scaling_rows, 'measured')} Run "
                  f"`{scaling_rows[0].get('run_id', '')}`, budget {_fmt(number(scaling_rows[0], 'budget_s'), ' s', 4)} "
                  f"and {_mib(number(scaling_rows[0], 'memory_budget_mb'))} per side and point):", ""]
        parts += scaling_table(scaling_rows) + [""]
    return "\n".join(parts).rstrip() + "\n"


def write_table(path: str, suite_rows: Sequence[Row], scaling_rows: Sequence[Row]) -> str:
    from fastprompt.atomic_io import atomic_write_text

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, markdown(suite_rows, scaling_rows))
    return path


README_START, README_END = "<!-- bench table: start -->", "<!-- bench table: end -->"


def include_in(readme: str, table: str) -> str:
    """``readme`` (text) with the block between its bench-table markers replaced by ``table``."""
    start, end = readme.find(README_START), readme.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f"the README has no {README_START} ... {README_END} block to put the table in")
    return readme[:start + len(README_START)] + "\n" + table + readme[end:]


def load_runs(out_dir: str, suite_runs: Optional[Sequence[str]] = None, scaling_run: Optional[str] = None):
    """The rows of ``out_dir/suite.csv`` and ``out_dir/scaling.csv`` (empty when a file does not exist):
    the suite runs named in ``suite_runs``, by default for each part (train, eval, attention) and case
    the last run that measured it; the scaling run ``scaling_run``, by default the last."""
    runs = []
    suite_path, scaling_path = os.path.join(out_dir, "suite.csv"), os.path.join(out_dir, "scaling.csv")
    if os.path.exists(suite_path):
        rows = read_rows(suite_path)
        runs.append([row for run in suite_runs for row in select_run(rows, run)] if suite_runs
                    else latest_per_kind(rows))
    else:
        runs.append([])
    runs.append(select_run(read_rows(scaling_path), scaling_run) if os.path.exists(scaling_path) else [])
    if not any(runs):
        raise FileNotFoundError(f"neither suite.csv nor scaling.csv is in {out_dir}; run bench/suite/suite.py first")
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=RESULTS, help="the folder holding suite.csv / scaling.csv")
    parser.add_argument("--suite-run", nargs="+", metavar="RUN_ID", help="run ids in suite.csv (default: for each "
                        "part and case, the last run that measured it)")
    parser.add_argument("--scaling-run", help="run id in scaling.csv (default: its last)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--readme", nargs="?", const=BENCH_README, metavar="README.md",
                        help=f"also put the table into this README (default bench/README.md), between "
                        f"{README_START} and {README_END}")
    args = parser.parse_args(argv)
    suite_rows, scaling_rows = load_runs(args.out, args.suite_run, args.scaling_run)
    print(f"wrote {write_table(os.path.join(args.out, TABLE_FILE), suite_rows, scaling_rows)}")
    if args.readme:
        from fastprompt.atomic_io import atomic_write_text

        with open(args.readme, encoding="utf-8") as f:
            text = include_in(f.read(), markdown(suite_rows, scaling_rows))
        atomic_write_text(args.readme, text)
        print(f"wrote the table into {args.readme}")
    if not args.no_plots:
        from bench.suite.plots import write_plots

        for line in write_plots(suite_rows, scaling_rows, args.out):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
