"""Backend registry for ``prompt_attention``.

A backend is a function ``fn(args: AttentionArgs) -> (out, lse)`` plus an availability probe
``available(device) -> reason | None`` (``None`` means usable on that device). Backends are
probed lazily, on first use, never at import time, so importing fastprompt on a machine
without a GPU or a compiler costs nothing and fails nothing.

``backend="auto"`` walks a per-device-type preference list and takes the first usable
backend; it logs (at DEBUG, once per device type) which one it picked and why the ones before
it were skipped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .validation import AttentionArgs

logger = logging.getLogger("fastprompt.ops")

BackendFn = Callable[[AttentionArgs], Tuple[torch.Tensor, torch.Tensor]]
AvailabilityFn = Callable[[torch.device], Optional[str]]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: BackendFn
    available: AvailabilityFn
    description: str = ""


_BACKENDS: Dict[str, Backend] = {}
# Preference order of ``auto`` per device type; names not registered are skipped silently.
AUTO_ORDER: Dict[str, List[str]] = {
    # Triton first: its kernels pass the full parity matrix under the interpreter, while the CUDA
    # C++ kernels are only compiled on the development machines so far; ``cuda`` is skipped until
    # GPU_VERIFIED records a GPU parity run.
    "cuda": ["triton", "cuda", "eager"],
    # The C++ kernels on CPU: a CoOp ViT-B/16 training step measured 1.04-1.12x faster than with
    # eager (bench/attention/bench_cpu_backend.py). Built on first use (about a minute, announced before and after);
    # with no compiler, FASTPROMPT_DISABLE_JIT=1 or a failed build, auto falls back to eager.
    "cpu": ["cpu", "eager"],
}
# Compiled GPU kernels that have passed the backend parity suite on a real GPU: backend -> where and
# when (GPU, date, commit). ``auto`` does not choose a backend listed here with ``None`` (it can
# still be asked for by name): kernels that compile and pass in an emulator have still never run.
# The GPU check (bench/gpu_check.sh) is what fills this in.
GPU_VERIFIED: Dict[str, Optional[str]] = {
    "cuda": None,
}
_auto_logged: set = set()


def auto_skip_reason(name: str, device: torch.device) -> Optional[str]:
    """Why ``auto`` passes over an otherwise usable backend on ``device`` (``None``: it does not)."""
    if device.type == "cuda" and name in GPU_VERIFIED and GPU_VERIFIED[name] is None:
        return ("its kernels have not passed the parity suite on a GPU yet (fastprompt.ops.registry.GPU_VERIFIED); "
                f"backend={name!r} still runs when asked for by name")
    return None


def register_backend(name: str, fn: BackendFn, available: AvailabilityFn, description: str = "") -> None:
    """Register (or replace) a backend under ``name``."""
    _BACKENDS[name] = Backend(name, fn, available, description)


def registered_backends() -> List[str]:
    return list(_BACKENDS)


def backend_status(device: torch.device | str) -> Dict[str, str]:
    """Map every registered backend to "available" or the reason it is not, for ``device``."""
    device = torch.device(device)
    return {name: (b.available(device) or "available") for name, b in _BACKENDS.items()}


def resolve_backend(name: str, device: torch.device) -> Backend:
    """Return the backend to run on ``device``: the named one, or the ``auto`` choice.

    Asking for a backend by name that cannot run raises ``RuntimeError`` with its reason;
    ``auto`` never raises while ``eager`` is registered.
    """
    if name != "auto":
        if name not in _BACKENDS:
            raise ValueError(
                f"backend must be 'auto' or one of {registered_backends()}, got {name!r}")
        backend = _BACKENDS[name]
        reason = backend.available(device)
        if reason is not None:
            raise RuntimeError(f"prompt_attention backend {name!r} cannot run on {device}: {reason}")
        return backend

    skipped = []
    for candidate in AUTO_ORDER.get(device.type, ["eager"]):
        backend = _BACKENDS.get(candidate)
        if backend is None:
            continue
        reason = backend.available(device) or auto_skip_reason(candidate, device)
        if reason is None:
            key = (device.type, candidate)
            if key not in _auto_logged:
                _auto_logged.add(key)
                why = "; ".join(f"{s}: {r}" for s, r in skipped) or f"first choice for {device.type} tensors"
                logger.debug("prompt_attention backend=auto chose %r on %s (%s)", candidate, device.type, why)
            return backend
        skipped.append((candidate, reason))
    raise RuntimeError(f"no prompt_attention backend can run on {device}: {skipped}")
