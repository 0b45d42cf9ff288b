"""The suite's training-step and evaluation rows: fastprompt vs reference per case.

Both sides of a unit are timed in this process, round-robin (``timing.time_interleaved``: a change
of machine load reaches both), medians; each side's peak memory is measured in a fresh process
(``side_child.run_side``). One row per side: ``median_s``, ``min_s``, ``images_per_s`` (images
through the unit per second: the batch for a training step, the test set for an evaluation pass),
``peak_mb``, and on both rows the fastprompt speed-up and memory ratio over the reference; a
training row also has ``gflop`` (FLOPs of one step, ``bench/steps/flop_count.py``) and, on both rows,
``flop_ratio``: the reference's FLOPs over fastprompt's, the speed-up at equal FLOP/s.
Targets (``step_cases.CASES``) are checked on the training rows when ``check_targets`` is set;
the evaluation logits of the two sides must agree (``eval_cases.AGREEMENT``).
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from bench.steps.eval_cases import AGREEMENT, build_eval, has_eval
from bench.steps.flop_count import count_flops
from fastprompt.testing import BF16
from bench.steps.side_child import Unit, run_side
from bench.steps.step_cases import CaseSpec
from bench.harness.timing import median, time_interleaved

SIDES = ("fastprompt", "reference")


def _peaks(unit: Unit) -> Dict[str, float]:
    """Peak MiB of one call of each side, each in a fresh process."""
    return {side: run_side(unit, side, repeats=0, budget_s=float("inf"), hard_limit_s=3600).peak_bytes / 2**20
            for side in SIDES}


def pair_rows(kind: str, spec: CaseSpec, fns: Dict[str, object], info: Dict[str, object], opts,
              base: Dict[str, object], extra: Dict[str, object]) -> List[Dict[str, object]]:
    """Time both sides of one unit; two rows (fastprompt first)."""
    times = time_interleaved(fns, opts.repeats, torch.device(opts.device))
    seconds = {side: median(times[side]) for side in SIDES}
    peaks = {}
    if opts.memory:
        peaks = _peaks(Unit(kind, spec.name, model=opts.model, device=opts.device, threads=opts.threads,
                            eval_images=opts.eval_images, eval_batch=opts.eval_batch))
    images = info["eval_images"] if kind == "eval" else info["images"]
    rows = []
    for side in SIDES:
        row = dict(base, kind=kind, case=spec.name, description=spec.description, side=side, baseline="reference",
                   **info, repeats=opts.repeats, median_s=round(seconds[side], 4), min_s=round(min(times[side]), 4),
                   speedup=round(seconds["reference"] / seconds["fastprompt"], 2),
                   images_per_s=round(images / seconds[side], 3) if images else "", **extra)
        if peaks:
            row.update(peak_mb=round(peaks[side], 1),
                       memory_ratio=round(peaks["reference"] / max(peaks["fastprompt"], 1e-3), 2))
        rows.append(row)
    return rows


def flop_columns(fns: Dict[str, object]) -> Dict[str, Dict[str, object]]:
    """Per side, the FLOPs of one more call (``flop_count.count_flops``) and, on both rows, the
    reference's FLOPs over fastprompt's: the speed-up at equal FLOP/s, which bounds a ratio that
    only fewer FLOPs can raise."""
    flops = {side: count_flops(fns[side])[0] for side in SIDES}
    ratio = round(flops["reference"] / max(flops["fastprompt"], 1), 2)
    return {side: dict(gflop=round(flops[side] / 1e9, 2), flop_ratio=ratio) for side in SIDES}


def misses(spec: CaseSpec, fast_row: Dict[str, object]) -> List[str]:
    """The targets of ``spec`` the training row of fastprompt misses, each with its measured value
    and, for the speed-up, the FLOP ratio that bounds it."""
    below = []
    if fast_row["speedup"] < spec.target:
        miss = f"train {spec.name} speed-up {fast_row['speedup']:.2f}x < {spec.target}x"
        ratio = fast_row.get("flop_ratio")
        if ratio not in (None, ""):
            miss += (f" (the reference does {ratio:.2f}x fastprompt's FLOPs: "
                     + ("the target needs fewer FLOPs or more FLOP/s than the reference's)" if ratio < spec.target
                        else "the FLOPs allow the target; the time goes to lower FLOP/s: see "
                             "bench/steps/bench_breakdown.py)"))
        below.append(miss)
    ratio = fast_row.get("memory_ratio")
    if spec.memory_target and ratio not in (None, "") and ratio < spec.memory_target:
        below.append(f"train {spec.name} memory ratio {ratio:.2f}x < {spec.memory_target}x")
    return below


def step_rows(cases: Dict[str, CaseSpec], opts, base: Dict[str, object],
              check_targets: bool) -> Tuple[List[Dict[str, object]], List[str]]:
    """Training-step rows of every case, and the missed targets."""
    device = torch.device(opts.device)
    rows, below = [], []
    for spec in cases.values():
        case = spec.build(opts.model, device)
        targets = dict(target=spec.target, memory_target=spec.memory_target or "") if check_targets else {}
        fns = {"fastprompt": case.fastprompt, "reference": case.reference}
        pair = pair_rows("train", spec, fns, case.info, opts, base, targets)
        flops = flop_columns(fns)
        for row, side in zip(pair, SIDES):
            row.update(flops[side])
        _print(pair)
        if check_targets:
            below += misses(spec, pair[0])
        rows += pair
    return rows, below


def eval_rows(cases: Dict[str, CaseSpec], opts,
              base: Dict[str, object]) -> Tuple[List[Dict[str, object]], List[str]]:
    """Evaluation rows of every case that classifies images, and the cases whose logits disagree."""
    device = torch.device(opts.device)
    rows, below = [], []
    for spec in cases.values():
        if not has_eval(spec):
            continue
        case = build_eval(spec, opts.model, device, opts.eval_images, opts.eval_batch)
        extra = {"rel_error": f"{case.rel_error:.1e}"}
        if case.feature_error is not None:
            extra["feature_error"] = f"{case.feature_error:.1e}"
        pair = pair_rows("eval", spec, {"fastprompt": case.fastprompt, "reference": case.reference}, case.info,
                         opts, base, extra)
        _print(pair)
        if not case.rel_error <= AGREEMENT:
            below.append(f"eval {spec.name} logits differ from the reference's: rel err {case.rel_error:.1e} > "
                         f"{AGREEMENT:.0e}")
        if case.feature_error is not None and not case.feature_error <= BF16.frozen_image:
            below.append(f"eval {spec.name} bf16 image features differ from fp32 by {case.feature_error:.1e} > "
                         f"{BF16.frozen_image:.0e} ({BF16.why('frozen_image')})")
        rows += pair
    return rows, below


def _print(pair: List[Dict[str, object]]) -> None:
    fast, ref = pair
    line = (f"{fast['kind']:5s} {fast['case']:10s} fastprompt {fast['median_s']:.3f} s, reference {ref['median_s']:.3f} s, "
            f"speed-up {fast['speedup']:.1f}x")
    if fast.get("target"):
        line += f" (target >= {fast['target']}x)"
    if fast["kind"] == "eval":
        line += f"; {fast['images_per_s']:.2f} vs {ref['images_per_s']:.2f} images/s, logits rel err {fast['rel_error']}"
        if fast.get("feature_error"):
            line += f" (on fp32 image features; bf16 features {fast['feature_error']} off)"
    if "peak_mb" in fast:
        line += f"; peak {fast['peak_mb']:.0f} vs {ref['peak_mb']:.0f} MiB ({fast['memory_ratio']:.1f}x less)"
    if "flop_ratio" in fast:
        line += f"; {fast['gflop']:.1f} vs {ref['gflop']:.1f} GFLOP ({fast['flop_ratio']:.2f}x)"
    print(line, flush=True)
