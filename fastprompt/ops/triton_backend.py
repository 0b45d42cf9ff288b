"""The ``triton`` backend of ``prompt_attention``: Triton kernels behind ``torch.library`` custom ops.

Two custom ops wrap the launchers of ``fastprompt.kernels``:

* ``fastprompt::prompt_attention_triton(q, k, v, pk, pv, group, seqlens, causal, scale) -> (out, lse)``
* ``fastprompt::prompt_attention_triton_bwd(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse,
  causal, scale, deterministic, prompt_grad) -> (dq, dk, dv, dpk, dpv)``

Each has a fake (meta) implementation, and the forward has an autograd formula that calls the
backward op, so ``torch.compile`` traces through both without graph breaks. The lse output is
differentiable, like the eager backend's.

Where it runs: on CUDA tensors with the kernels compiled (``backend="auto"`` tries it first
there), and on CPU only when asked for by name and when Triton's interpreter is on
(``TRITON_INTERPRET=1`` in the environment *before* ``fastprompt.kernels`` is first imported:
Triton fixes a kernel's mode when the kernel is defined). The two exclude each other in one
process: with the interpreter on, the backend refuses CUDA tensors (so ``auto`` takes the next
backend instead of silently running the interpreter). Importing this module imports neither
triton nor the kernels; that happens on first use.

Calls without a prompt block that do not ask for the lse (the plain layers of both towers) go to
``F.scaled_dot_product_attention``, as in the other backends: it is a fused library kernel there.

Determinism: the prompt gradients dPK/dPV sum contributions of every sequence of a group. By
default (``DETERMINISTIC = True``) each program writes its partial sum and the partials are added
in a fixed order, so results are bitwise reproducible. ``FASTPROMPT_TRITON_DETERMINISTIC=0`` in
the environment (read at import) or ``fastprompt.ops.triton_backend.DETERMINISTIC = False`` (read
at each backward; under ``torch.compile`` when the backward graph is traced) switches to atomic
adds; ``torch.use_deterministic_algorithms(True)`` always forces the deterministic path.
Everything else in the backward is deterministic in both modes.

Not supported: float64 (use ``backend="eager"``), head dims above 128, and double backward.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Tuple

import torch

from .eager import _sdpa_attention
from .registry import register_backend
from .validation import AttentionArgs

_TRUE = ("1", "true", "yes", "on")
DETERMINISTIC: bool = os.environ.get("FASTPROMPT_TRITON_DETERMINISTIC", "1").strip().lower() in _TRUE
# What the kernels handle (mirrors fastprompt.kernels.common, which is not imported here so that
# importing this module stays cheap; a test checks that the two agree).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128


def deterministic() -> bool:
    """Whether the next backward sums prompt gradients in a fixed order (see the module docstring)."""
    return DETERMINISTIC or torch.are_deterministic_algorithms_enabled()


def _kernels():
    import fastprompt.kernels as kernels  # deferred: imports triton and defines the kernels
    return kernels


# ---- custom ops ------------------------------------------------------------------------------

@torch.library.custom_op("fastprompt::prompt_attention_triton", mutates_args=())
def prompt_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: Optional[torch.Tensor], pv: Optional[torch.Tensor],
    group: Optional[torch.Tensor], seqlens: Optional[torch.Tensor], causal: bool, scale: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Forward: ``out [N, L, H, d]`` (input dtype, contiguous) and ``lse [N, H, L]`` float32."""
    return _kernels().prompt_attention_fwd(q, k, v, pk, pv, group, seqlens, causal, scale)


@prompt_attention_triton.register_fake
def _prompt_attention_triton_fake(q, k, v, pk, pv, group, seqlens, causal, scale):
    n, seq_len, heads, _ = q.shape
    return (q.new_empty(q.shape), q.new_empty((n, heads, seq_len), dtype=torch.float32))


@torch.library.custom_op("fastprompt::prompt_attention_triton_bwd", mutates_args=())
def prompt_attention_triton_bwd(
    dout: torch.Tensor, dlse: Optional[torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    pk: Optional[torch.Tensor], pv: Optional[torch.Tensor], group: Optional[torch.Tensor],
    seqlens: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, causal: bool, scale: float,
    deterministic: bool, prompt_grad: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward: ``dq, dk, dv`` like q; ``dpk, dpv`` like pk (empty ``[0]`` when there is no prompt
    block or ``prompt_grad`` is false: custom ops cannot return ``None``)."""
    dq, dk, dv, dpk, dpv = _kernels().prompt_attention_bwd(
        dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale,
        deterministic=deterministic, prompt_grad=prompt_grad)
    if dpk is None:
        dpk, dpv = q.new_empty(0), q.new_empty(0)
    return dq, dk, dv, dpk, dpv


@prompt_attention_triton_bwd.register_fake
def _prompt_attention_triton_bwd_fake(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale,
                                      deterministic, prompt_grad):
    grads = tuple(q.new_empty(q.shape) for _ in range(3))
    if pk is None or not prompt_grad:
        return grads + (q.new_empty(0), q.new_empty(0))
    return grads + (pk.new_empty(pk.shape), pv.new_empty(pv.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, pk, pv, group, seqlens, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, pk, pv, group, seqlens, out, lse)
    ctx.causal, ctx.scale = causal, scale


def _backward(ctx, dout, dlse):
    q, k, v, pk, pv, group, seqlens, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    prompt_grad = pk is not None and (ctx.needs_input_grad[3] or ctx.needs_input_grad[4])
    dq, dk, dv, dpk, dpv = prompt_attention_triton_bwd(
        dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, ctx.causal, ctx.scale,
        deterministic(), prompt_grad)
    if not prompt_grad:
        dpk = dpv = None
    return dq, dk, dv, dpk, dpv, None, None, None, None


prompt_attention_triton.register_autograd(_backward, setup_context=_setup_context)


# ---- the backend -----------------------------------------------------------------------------

def triton_prompt_attention(args: AttentionArgs):
    """Backend function: ``(out [N, L, H, d], lse [N, H, L] fp32 or None)``; see ``prompt_attention``.

    Raises:
        ValueError: for float64 inputs or a head dim above ``MAX_HEAD_DIM`` (use ``backend="eager"``).
    """
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    q = args.q
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}, but the triton backend supports float16, bfloat16 and "
                         "float32; use backend='eager' for float64")
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        raise ValueError(f"q has head dim d = {q.shape[-1]}, but the triton backend supports "
                         f"1 <= d <= {MAX_HEAD_DIM}; use backend='eager'")
    out, lse = prompt_attention_triton(q, args.k, args.v, args.pk, args.pv, args.group, args.seqlens,
                                       args.causal, args.scale)
    return out, (lse if args.return_lse else None)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


_triton_found: Optional[bool] = None


def triton_available(device: torch.device) -> Optional[str]:
    """``None`` when the backend can run on ``device``, else the reason and how to fix it."""
    global _triton_found
    if _triton_found is None:
        _triton_found = importlib.util.find_spec("triton") is not None
    if not _triton_found:
        return "triton is not installed: pip install triton (or pip install 'fastprompt[kernels]')"
    loaded = sys.modules.get("fastprompt.kernels")
    if device.type == "cuda":
        interpreted = loaded.INTERPRET if loaded is not None else _interpret_requested()
        if interpreted:
            return ("Triton's interpreter is on (TRITON_INTERPRET=1 when fastprompt.kernels was first imported), "
                    "so its kernels would run on the CPU interpreter, not the GPU; unset TRITON_INTERPRET and "
                    "import fastprompt in a fresh process to run the compiled kernels")
        if not torch.cuda.is_available():
            return "no CUDA device is available"
        return None
    if device.type == "cpu":
        if loaded is not None:
            if loaded.INTERPRET:
                return None
            return ("fastprompt.kernels was imported without TRITON_INTERPRET=1, so its kernels target the "
                    "GPU; set TRITON_INTERPRET=1 before the first import (in a fresh process) to run them on CPU")
        if _interpret_requested():
            return None
        return ("Triton kernels need a CUDA device; on CPU they run only in Triton's interpreter (slow, "
                "for tests): set TRITON_INTERPRET=1 in the environment before fastprompt is imported")
    return f"Triton kernels need a CUDA device (or CPU with TRITON_INTERPRET=1), got a {device.type} device"


register_backend(
    "triton",
    triton_prompt_attention,
    available=triton_available,
    description="Triton kernels (fastprompt.kernels): CUDA, or CPU under TRITON_INTERPRET=1 for tests",
)
