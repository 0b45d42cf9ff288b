"""Scaling curves: training-step time and peak memory vs the number of classes and vs the batch size,
fastprompt vs the reference, with the fitted growth.

Curves (``CURVES``): number of classes (100 -> 5,000 by default; the batch of the case) for CoOp,
CoCoOp and RPP, and batch size (1 -> 32 images; the case's 100 classes) for CoCoOp and MaPLe, on
the training steps of ``bench/steps/step_cases.py`` (random-weight ViT-B-16; past 1,000 classes the class
names continue with ImageNet-21K lemmas). Every point of every side runs in a fresh process
(``bench/steps/side_child.py``: set-up, one warm-up step, one step with its peak memory measured, then up to
``--scaling-repeats`` timed steps within the budget); at each point fastprompt runs first, then the
reference, so a change of machine load reaches both.

A side stops, and the row at that point says why (``status=stopped``, ``reason``), when the
prediction from its measured points (``growth.predict``) exceeds the per-point time budget
(``--budget-s``, the child's wall time: set-up + warm-up + one step) or the memory budget
(``--memory-budget-mb``, default half of the memory available when the run starts, or 90% of the
GPU's), or when its process runs past twice the budget (+ 60 s) or out of memory. Larger points of that
side are not run.

Per side and curve a ``status=fit`` row holds the least-squares line through the measured points
(``fit_s_per_unit``: seconds per added class or image; ``fit_mb_per_unit``: MiB per added class or
image) and, on the classes axis, its projection to 21,841 classes (ImageNet-21K).

RPP runs with ``teacher_templates="single"``: its teacher's class features are a constant computed
once at construction (both sides share the learner's), so the template count changes the set-up,
not a step.

    python bench/suite/scaling.py                                  # CPU, ViT-B-16, every curve
    python bench/suite/scaling.py --quick --out /tmp/scaling       # tiny model, 3 points per curve: a smoke run
    python bench/suite/scaling.py --axes classes --methods coop --classes 100 1000 5000 21841 --device cuda
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import median  # noqa: E402  (first: sets OMP_WAIT_POLICY)
from bench.suite.growth import fit_line, predict  # noqa: E402
from bench.harness.report import append_csv, common_fields  # noqa: E402
from bench.suite.rows import new_run_id, uniform  # noqa: E402
from bench.steps.side_child import SideStopped, Unit, run_side  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results")
CURVES = {"classes": ("coop", "cocoop", "rpp"), "batch": ("cocoop", "maple")}
POINTS = {"classes": (100, 250, 500, 1000, 2000, 5000), "batch": (1, 2, 4, 8, 16, 32)}
QUICK_POINTS = {"classes": (20, 40, 80), "batch": (1, 2, 4)}
PROJECT_CLASSES = 21841  # ImageNet-21K (fall11 "full")
CASE_KWARGS = {"rpp": {"teacher_templates": "single"}}
SIDES = ("fastprompt", "reference")


def add_scaling_arguments(parser: argparse.ArgumentParser) -> None:
    methods = sorted({m for curve in CURVES.values() for m in curve})
    parser.add_argument("--axes", nargs="+", default=list(CURVES), choices=list(CURVES), help="scaling: which curves")
    parser.add_argument("--methods", nargs="+", choices=methods, help="scaling: only these cases (default: each "
                        "curve's)")
    parser.add_argument("--classes", type=int, nargs="+", help=f"scaling: class counts (default {POINTS['classes']}; "
                        f"--quick {QUICK_POINTS['classes']})")
    parser.add_argument("--batches", type=int, nargs="+", help=f"scaling: batch sizes (default {POINTS['batch']}; "
                        f"--quick {QUICK_POINTS['batch']})")
    parser.add_argument("--budget-s", type=float, help="scaling: wall-time budget of one side at one point "
                        "(default 600; --quick 60)")
    parser.add_argument("--memory-budget-mb", type=float, help="scaling: peak-memory budget of one side at one point "
                        "(default: half the available memory, 90%% of a GPU's)")
    parser.add_argument("--scaling-repeats", type=int, help="scaling: timed steps per point (default 3; --quick 1)")


def default_memory_budget_mb(device: str) -> float:
    """Half of MemAvailable (CPU: the machine is shared) or 90% of the GPU's memory, in MiB."""
    if device.startswith("cuda"):
        import torch

        return 0.9 * torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return 0.5 * int(line.split()[1]) / 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo; pass --memory-budget-mb")


class Curve:
    """The measured points of one side of one curve, and whether (why) it stopped."""

    def __init__(self):
        self.points: List[Dict[str, float]] = []   # {"x", "seconds", "peak_mb", "setup_s"}
        self.stopped: Optional[str] = None

    def series(self, column: str):
        return [(p["x"], p[column]) for p in self.points]

    def refusal(self, x: float, budget_s: float, memory_budget_mb: float) -> Optional[str]:
        """Why ``x`` would not fit the budgets, predicted from the points so far (None: run it)."""
        need_mb = predict(self.series("peak_mb"), x)
        if need_mb > memory_budget_mb:
            return f"predicted peak {need_mb:.0f} MiB > the {memory_budget_mb:.0f} MiB memory budget"
        need_s = predict(self.series("setup_s"), x) + 2 * predict(self.series("seconds"), x)
        if need_s > budget_s:
            return f"predicted {need_s:.0f} s for set-up, warm-up and one step > the {budget_s:.0f} s budget"
        return None


def fit_row(base: Dict[str, object], curve: Curve, axis: str) -> Optional[Dict[str, object]]:
    """The ``status=fit`` row of ``curve``, or None with fewer than two measured sizes."""
    if len({p["x"] for p in curve.points}) < 2:
        return None
    xs = [p["x"] for p in curve.points]
    time_fit = fit_line(xs, [p["seconds"] for p in curve.points])
    mem_fit = fit_line(xs, [p["peak_mb"] for p in curve.points])
    row = dict(base, status="fit", fit_points=time_fit.points, fit_s_per_unit=f"{time_fit.slope:.6g}",
               fit_intercept_s=f"{time_fit.intercept:.6g}", fit_r2_s=f"{time_fit.r2:.4f}",
               fit_mb_per_unit=f"{mem_fit.slope:.6g}", fit_intercept_mb=f"{mem_fit.intercept:.6g}",
               max_measured=max(xs))
    if axis == "classes":
        row.update(projected_units=PROJECT_CLASSES, projected_s=round(time_fit.at(PROJECT_CLASSES), 3),
                   projected_mb=round(mem_fit.at(PROJECT_CLASSES), 1))
    return row


def run_curve(method: str, axis: str, points, opts, base: Dict[str, object]) -> List[Dict[str, object]]:
    """Rows of one curve: measured / stopped points of both sides, then a fit row per side."""
    curves = {side: Curve() for side in SIDES}
    rows = []
    for x in points:
        sizes = {"classes": x} if axis == "classes" else {"images": x}
        unit = Unit("train", method, model=opts.model, device=opts.device, threads=opts.threads,
                    kwargs=CASE_KWARGS.get(method, {}), **sizes)
        spec = unit.spec()
        shape = dict(base, case=method, axis=axis, classes=spec.classes, images=spec.images, n_ctx=spec.n_ctx)
        line = []
        for side in SIDES:
            curve = curves[side]
            if curve.stopped:
                continue
            reason = curve.refusal(x, opts.budget_s, opts.memory_budget_mb)
            if reason is None:
                try:
                    result = run_side(unit, side, opts.scaling_repeats, opts.budget_s)
                except SideStopped as stop:
                    reason = stop.reason
            if reason is not None:
                curve.stopped = reason
                rows.append(dict(shape, side=side, status="stopped", reason=reason))
                line.append(f"{side} stopped ({reason})")
                continue
            point = {"x": x, "seconds": median(result.times), "peak_mb": result.peak_bytes / 2**20,
                     "setup_s": result.setup_s}
            curve.points.append(point)
            rows.append(dict(shape, side=side, status="measured", repeats=len(result.times),
                             median_s=round(point["seconds"], 4), min_s=round(min(result.times), 4),
                             peak_mb=round(point["peak_mb"], 1), setup_s=round(result.setup_s, 2)))
            line.append(f"{side} {point['seconds']:.3f} s, {point['peak_mb']:.0f} MiB")
        print(f"{method:7s} {axis:7s} {x:6d}: " + "; ".join(line), flush=True)
    for side in SIDES:
        row = fit_row(dict(base, case=method, axis=axis, side=side), curves[side], axis)
        if row is not None:
            rows.append(row)
            projected = (f", {row['projected_s']:.1f} s and {row['projected_mb']:.0f} MiB at {PROJECT_CLASSES:,} "
                         "classes (projected)" if axis == "classes" else "")
            print(f"{method:7s} {axis:7s} {side}: {float(row['fit_s_per_unit']) * 1e3:.3f} ms and "
                  f"{float(row['fit_mb_per_unit']):.2f} MiB per added {'class' if axis == 'classes' else 'image'}"
                  f"{projected}", flush=True)
    return rows


def resolve_options(opts) -> None:
    """Fill the defaults that depend on ``--quick`` and the device, in place."""
    quick = getattr(opts, "quick", False)
    opts.budget_s = opts.budget_s or (60.0 if quick else 600.0)
    opts.scaling_repeats = opts.scaling_repeats or (1 if quick else 3)
    opts.memory_budget_mb = opts.memory_budget_mb or default_memory_budget_mb(opts.device)
    defaults = QUICK_POINTS if quick else POINTS
    opts.points = {"classes": tuple(opts.classes or defaults["classes"]),
                   "batch": tuple(opts.batches or defaults["batch"])}


def run_scaling(opts, run_id: str) -> List[Dict[str, object]]:
    """Every requested curve; the rows (not yet written)."""
    import torch

    resolve_options(opts)
    base = {**common_fields(torch.device(opts.device)), "run_id": run_id, "kind": "scaling", "model": opts.model,
            "budget_s": opts.budget_s, "memory_budget_mb": round(opts.memory_budget_mb)}
    print(f"scaling: model {opts.model} on {base['device']}, budget {opts.budget_s:.0f} s and "
          f"{opts.memory_budget_mb:.0f} MiB per side and point", flush=True)
    rows = []
    for axis in opts.axes:
        for method in CURVES[axis]:
            if opts.methods and method not in opts.methods:
                continue
            rows += run_curve(method, axis, opts.points[axis], opts, base)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 3 points per curve, 1 repeat")
    parser.add_argument("--model", help="open_clip architecture with random weights, or 'tiny' (default ViT-B-16)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=RESULTS, help="folder of scaling.csv and the plots")
    add_scaling_arguments(parser)
    opts = parser.parse_args(argv)
    opts.model = opts.model or ("tiny" if opts.quick else "ViT-B-16")
    run_id = new_run_id()
    rows = run_scaling(opts, run_id)
    path = os.path.join(opts.out, "scaling.csv")
    append_csv(path, uniform(rows))
    print(f"appended {len(rows)} rows to {path} (run {run_id})")
    from bench.suite.plots import write_plots

    for line in write_plots([], rows, opts.out):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
