"""Peak resident memory of a code region on Linux (the CPU side of ``bench_step.py --memory``)."""
from __future__ import annotations

import ctypes
import gc


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakRSS:
    """``with PeakRSS() as m: ...; m.peak_bytes``.

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
