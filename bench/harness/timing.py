"""Timing for the benchmarks: thread settings, round-robin samples, medians.

Every benchmark times the things it compares side by side in one process, round-robin, so that
a busy (shared) machine slows them alike; it reports medians.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, List

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must be set before torch starts its thread pool

import torch  # noqa: E402


def setup_threads(n: int) -> None:
    torch.set_num_threads(n)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def time_interleaved(fns: Dict[str, Callable[[], None]], repeats: int, device: torch.device,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Run every function ``warmup`` times, then ``repeats`` rounds round-robin; seconds per call."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def time_device(fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int) -> Dict[str, List[float]]:
    """Seconds per call, ``repeats`` samples each, round-robin.

    On CUDA each sample is a CUDA-event-timed loop long enough (>= ~1 ms) that launch gaps and
    host timing do not dominate microsecond kernels; on CPU one call per sample.
    """
    if device.type != "cuda":
        return time_interleaved(fns, repeats, device)
    inner = {}
    for name, fn in fns.items():  # warm-up (compilation, autotuning) and loop length
        fn()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(3):
            fn()
        synchronize(device)
        per_call = (time.perf_counter() - start) / 3
        inner[name] = int(min(1000, max(1, 1e-3 / max(per_call, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(inner[name]):
                fn()
            end.record()
            end.synchronize()
            times[name].append(begin.elapsed_time(end) / 1e3 / inner[name])
    return times
