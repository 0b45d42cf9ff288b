"""Peak memory of a code region: resident memory on Linux (:class:`PeakRSS`), allocated memory on
CUDA (:func:`measure_peak` picks by device)."""
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


def measure_peak(fn, device) -> int:
    """Peak memory of one call of ``fn`` above what was in use before it (bytes): the peak RSS on
    CPU (:class:`PeakRSS`), ``max_memory_allocated`` above the allocation on CUDA."""
    import torch

    if device.type != "cuda":
        with PeakRSS() as measured:
            fn()
        return measured.peak_bytes
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
