"""Numeric precision of a run: fp32, bf16 autocast, or fp16 autocast with a gradient scaler.

The originals' ``PREC`` (KaiyangZhou/CoOp ``trainers/coop.py``): ``"fp32"``; ``"amp"`` = fp16
autocast + ``GradScaler``; ``"fp16"`` = the whole CLIP *and the prompts* cast to fp16 and updated
by plain SGD without loss scaling. fastprompt never trains fp16 parameters: ``fp16`` here means
fp16 autocast with fp32 prompts and a ``GradScaler`` (what ``"amp"`` does), on CUDA; on a CPU,
where fp16 matmuls are slow, an original ``fp16``/``amp`` runs in fp32. ``TRAIN.PRECISION`` sets
the precision explicitly; a precision this PyTorch cannot autocast to on the device (older
PyTorch has no fp16 autocast or ``GradScaler`` on CPU, some GPUs no bf16) is refused with the
alternatives, never silently run in another precision.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Tuple

import torch

from ..errors import ConfigError

__all__ = ["PRECISIONS", "resolve_precision", "autocast_supported", "Precision"]

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_precision(explicit: str, prec: Optional[str], device: torch.device) -> Tuple[str, str]:
    """``(precision, why)`` from ``TRAIN.PRECISION`` (if set) or the method's ``PREC``."""
    if explicit:
        if explicit not in PRECISIONS:
            raise ConfigError(f"TRAIN.PRECISION must be one of {PRECISIONS}, got {explicit!r}")
        if explicit != "fp32" and not autocast_supported(device.type, explicit):
            others = [p for p in PRECISIONS if p == "fp32" or (p != explicit and autocast_supported(device.type, p))]
            raise ConfigError(f"TRAIN.PRECISION {explicit}: PyTorch {torch.__version__} cannot train with {explicit} "
                              f"autocast{' and a GradScaler' if explicit == 'fp16' else ''} on {device.type}; use "
                              f"{' or '.join(others)}")
        return explicit, "TRAIN.PRECISION"
    prec = (prec or "fp32").lower()
    if prec not in ("fp32", "fp16", "amp"):
        raise ConfigError(f"PREC must be fp32, fp16 or amp, got {prec!r}")
    if prec == "fp32":
        return "fp32", "PREC fp32"
    if device.type == "cuda":
        return "fp16", f"PREC {prec}: fp16 autocast, fp32 prompts, GradScaler"
    return "fp32", f"PREC {prec} on {device.type}: fp32 (fp16 autocast is for CUDA)"


_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_supported(device_type: str, precision: str) -> bool:
    """Whether ``torch.autocast(device_type)`` computes a matmul in ``precision`` (``bf16``/``fp16``),
    and for ``fp16`` whether a ``GradScaler`` exists for the device. PyTorch warns and disables an
    unsupported autocast instead of failing, so this is asked before a run starts."""
    dtype = _DTYPES[precision]
    if dtype is None:
        return True
    if device_type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type=device_type, dtype=dtype):
                a = torch.ones(2, 2, device=device_type)
                if (a @ a).dtype != dtype:
                    return False
            if precision == "fp16":
                torch.amp.GradScaler(device_type)
        except (RuntimeError, ValueError, TypeError, AttributeError):
            return False
    return True


class Precision:
    """``autocast()`` context and the ``scaler`` (fp16 only) for ``mode`` on ``device``."""

    def __init__(self, mode: str, device: torch.device):
        self.mode, self.device = mode, device
        self.dtype = _DTYPES[mode]
        self.scaler = torch.amp.GradScaler(device.type) if mode == "fp16" else None

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)
