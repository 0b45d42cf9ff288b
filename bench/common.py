"""Shared benchmark plumbing: thread/OMP settings, timing with medians, peak memory, CSV rows.

Benchmarks print ratios measured side by side in one process and append rows to a CSV that
names the device, so numbers from different machines can live in one file.
"""
from __future__ import annotations

import csv
import ctypes
import datetime as _dt
import gc
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Sequence

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # must be set before torch starts its thread pool

import torch  # noqa: E402


def setup_threads(n: int) -> None:
    torch.set_num_threads(n)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def median(xs: List[float]) -> float:
    return statistics.median(xs)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakRSS:
    """Peak resident memory of a code region on Linux: ``with PeakRSS() as m: ...; m.peak_bytes``.

    Frees what it can first (garbage collector, ``malloc_trim``), resets the kernel's high-water
    mark (``/proc/self/clear_refs``) and reports the high-water mark above the starting RSS.
    """

    def __enter__(self):
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start_kib = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.peak_bytes = max(_status_kib("VmHWM") - self.start_kib, 0) * 1024
        return False


def append_csv(path: str, rows: List[Dict[str, object]]) -> None:
    """Append rows (dicts with the same keys) to ``path``, writing a header for a new file.

    When the rows bring columns the file does not have yet, the file is rewritten (atomically)
    with the union of the columns, older rows leaving the new ones empty.
    """
    if not rows:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields = list(rows[0])
    old_rows: List[Dict[str, str]] = []
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_fields = list(reader.fieldnames or [])
            if old_fields == fields:
                old_rows = None
            else:
                old_rows = list(reader)
                fields = old_fields + [name for name in fields if name not in old_fields]
    if old_rows is None:  # same columns: a plain append
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
        return
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(old_rows + rows)
    os.replace(tmp, path)


def report_rows(path: str, rows: List[Dict[str, object]], below: Sequence[str] = ()) -> int:
    """Append ``rows`` to the CSV at ``path``, say so, list the targets missed; the exit status (0)."""
    append_csv(path, rows)
    print(f"appended {len(rows)} rows to {path}")
    if below:
        print("below target: " + "; ".join(below))
    return 0


def common_fields(device: torch.device) -> Dict[str, object]:
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_name(device),
        "torch": torch.__version__,
    }
