"""The precision of the frozen image forward: fp32 (default) or bf16 autocast.

``frozen_image_precision="bf16"`` (every learner's config) runs the frozen, unprompted image
tower (:meth:`~fastprompt.learners.base.PromptLearner.encode_image` without deep prompts) under
``torch.autocast(dtype=torch.bfloat16)``: the projections and the attention in bf16, LayerNorm,
softmax and the residual stream in fp32, the features cast back to the tower's dtype before they
are normalised. Only the frozen tower changes: the prompts, the text tower, the logits and every
gradient stay in the run's precision.

**Error against fp32** (relative feature error ``max_b ||f_bf16 - f_fp32|| / ||f_fp32||`` before
normalisation, measured 2026-11-30 on this project's CPU): 0.95 % on a random-weight ViT-B/16
(8 images, 224 px; cosine to the fp32 feature >= 0.99995) and 0.68 % on the tiny test model.
bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per GEMM input), accumulated over twelve
layers. The speed-up is that of bf16 GEMMs: about 2-3x on a CPU with AVX512-BF16 or AMX, more on
a GPU. It is not exact, so it is off by default; the fp32 path is the parity-tested one.

**Support.** bf16 is only worth it where the hardware multiplies in bf16: a CUDA GPU that
supports bf16 (``torch.cuda.is_bf16_supported()``), or a CPU with AVX512-BF16 or AMX tiles
(on other CPUs oneDNN emulates bf16, slower than fp32). Elsewhere the setting falls back to fp32
with a warning, once per device type (:func:`bf16_unsupported_reason` says why); a training run
asks first and refuses the configuration instead (``TRAIN.FROZEN_IMAGE_PRECISION``).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional

import torch

__all__ = ["FROZEN_IMAGE_PRECISIONS", "bf16_unsupported_reason", "frozen_image_autocast"]

FROZEN_IMAGE_PRECISIONS = ("fp32", "bf16")
_warned: set = set()


def bf16_unsupported_reason(device) -> Optional[str]:
    """``None`` when bf16 autocast is fast on ``device`` (a ``torch.device`` or its type), else why not."""
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if not torch.cuda.is_bf16_supported():
            return f"this GPU ({torch.cuda.get_device_name()}) does not support bf16"
        return None
    if kind == "cpu":
        cpu = getattr(torch, "cpu", None)
        native = any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                     "_is_amx_tile_supported"))
        if not native:
            return ("this CPU has neither AVX512-BF16 nor AMX, so bf16 matrix products are emulated and slower "
                    "than fp32")
        return None
    return f"bf16 autocast of the frozen image tower is only supported on cpu and cuda, not {kind}"


def frozen_image_autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The context the frozen image forward runs in: nothing for ``"fp32"``; bf16 autocast for
    ``"bf16"`` where :func:`bf16_unsupported_reason` finds no obstacle, else nothing and a warning."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"frozen_image_precision must be one of {FROZEN_IMAGE_PRECISIONS}, got {precision!r}")
    kind = torch.device(device).type
    reason = bf16_unsupported_reason(kind)
    if reason is not None:
        if kind not in _warned:
            _warned.add(kind)
            warnings.warn(f"frozen_image_precision='bf16' is not used on {kind}: {reason}; the frozen image tower "
                          "runs in fp32", RuntimeWarning, stacklevel=3)
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, dtype=torch.bfloat16)
