"""One side of one benchmark unit in a fresh process: set-up time, peak memory, call times.

A :class:`Unit` is a training step (``step_cases.py``) or an evaluation pass (``eval_cases.py``) of
one case at given sizes. The child (``python bench/steps/side_child.py ...``, started by
:func:`run_side`) builds the unit, runs one warm-up call (optimizer state and allocator caches
exist before anything is measured), measures the peak memory of the next call
(``memory.measure_peak``; a fresh process, so the other side's memory never counts) and times
further calls until ``repeats`` samples are taken or the time budget is spent (at least one), then
prints one JSON line. ``run_side`` turns a child that ran past its hard limit or ran out of memory
into :class:`SideStopped` with the reason, which the benchmarks record instead of a time.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)  # run as a script: ``bench`` imports from the repository root
from bench.harness.timing import setup_threads, synchronize  # noqa: E402  (first: sets OMP_WAIT_POLICY)

# What a child that ran out of memory prints (CPU allocator, CUDA caching allocator).
OUT_OF_MEMORY = ("can't allocate memory", "out of memory", "OutOfMemoryError", "MemoryError")


@dataclass(frozen=True)
class Unit:
    """What one side runs: ``kind`` "train" (one SGD step) or "eval" (classify ``eval_images`` in
    batches of ``eval_batch``) of ``case`` at ``classes`` x ``images`` (None: the case's own)."""
    kind: str
    case: str
    model: str = "ViT-B-16"
    device: str = "cpu"
    threads: int = 2
    classes: Optional[int] = None
    images: Optional[int] = None
    eval_images: int = 32
    eval_batch: int = 8
    kwargs: Dict[str, object] = field(default_factory=dict)  # extra constructor arguments, both sides

    def spec(self):
        from bench.steps.step_cases import load_all

        return load_all()[self.case].sized(self.classes, self.images, **self.kwargs)

    def build(self, side: str):
        """The callable of ``side`` ("fastprompt" or "reference")."""
        import torch

        device = torch.device(self.device)
        if self.kind == "train":
            return getattr(self.spec().build(self.model, device), side)
        if self.kind == "eval":
            from bench.steps.eval_cases import build_eval

            return getattr(build_eval(self.spec(), self.model, device, self.eval_images, self.eval_batch), side)
        raise ValueError(f"unit kind must be 'train' or 'eval', got {self.kind!r}")


@dataclass
class SideResult:
    setup_s: float            # building the model, learner/reference and inputs
    peak_bytes: int           # peak memory of one call above what was in use before it
    times: List[float]        # seconds per timed call (the peak-measured call is the first)


class SideStopped(Exception):
    """The side did not finish within its limits; ``reason`` says which and where."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def run_side(unit: Unit, side: str, repeats: int, budget_s: float, hard_limit_s: Optional[float] = None) -> SideResult:
    """Run ``side`` of ``unit`` in a fresh process: ``repeats`` timed calls (fewer once ``budget_s``
    seconds of the child's wall time are spent; ``repeats=0``: only the peak-memory call).

    Raises SideStopped when the child runs past ``hard_limit_s`` (default ``2 * budget_s + 60``) or
    runs out of memory; RuntimeError (with the child's stderr) when it fails otherwise.
    """
    limit = hard_limit_s if hard_limit_s is not None else 2 * budget_s + 60
    cmd = [sys.executable, os.path.abspath(__file__), json.dumps(asdict(unit)), side, "--repeats", str(repeats),
           "--budget", str(budget_s)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the child and anything it started
        proc.communicate()
        raise SideStopped(f"ran past the {limit:.0f} s limit")
    if proc.returncode == -signal.SIGKILL:
        raise SideStopped("killed (SIGKILL: out of memory, most likely)")
    if proc.returncode != 0:
        if any(marker in err for marker in OUT_OF_MEMORY):
            raise SideStopped("out of memory")
        raise RuntimeError(f"{unit.kind} {unit.case} {side} failed in its child process (exit {proc.returncode}); "
                           f"its stderr ends:\n{err[-3000:]}")
    return SideResult(**json.loads(out.strip().splitlines()[-1]))


def child(unit: Unit, side: str, repeats: int, budget_s: float) -> SideResult:
    import torch

    from bench.harness.memory import measure_peak

    start = time.perf_counter()
    setup_threads(unit.threads)
    device = torch.device(unit.device)
    fn = unit.build(side)
    setup_s = time.perf_counter() - start
    fn()  # warm-up
    synchronize(device)
    times = []

    def timed():
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)

    peak = measure_peak(timed, device)
    while len(times) < repeats and time.perf_counter() - start < budget_s:
        timed()
    return SideResult(setup_s, peak, times if repeats else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unit", help="the Unit's fields as JSON")
    parser.add_argument("side", choices=["fastprompt", "reference"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds of wall time for the timed calls")
    args = parser.parse_args(argv)
    result = child(Unit(**json.loads(args.unit)), args.side, args.repeats, args.budget)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
