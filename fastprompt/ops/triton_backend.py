"""The ``triton`` backend of ``prompt_attention``: Triton kernels behind ``torch.library`` custom ops.

Two custom ops wrap the launchers of ``fastprompt.kernels``:

* ``fastprompt::prompt_attention_triton(q, k, v, pk, pv, group, seqlens, causal, scale) -> (out, lse)``
* ``fastprompt::prompt_attention_triton_bwd(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse,
  causal, scale, deterministic, prompt_grad) -> (dq, dk, dv, dpk, dpv)``

Their fakes and the forward's autograd formula (calling the backward op) are registered by
:func:`fastprompt.ops.op_registration.register_attention_op`, as for the ``cpu`` / ``cuda`` ops, so
``torch.compile`` traces through both without graph breaks. The lse output is differentiable,
like the eager backend's.

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

Not supported (``fastprompt.kernels.SUPPORTED_DTYPES`` and ``MAX_HEAD_DIM``): float64 (use
``backend="eager"``), head dims above 128, and double backward.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Tuple

import torch

from .eager import _sdpa_attention, eager_prompt_attention
from .masked_exactness import has_nonfinite
from .op_registration import backward_formula, fake_backward, fake_forward, register_attention_op
from .registry import register_backend
from .validation import AttentionArgs

_TRUE = ("1", "true", "yes", "on")
DETERMINISTIC: bool = os.environ.get("FASTPROMPT_TRITON_DETERMINISTIC", "1").strip().lower() in _TRUE


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


def _fwd_fake(q, k, v, pk, pv, group, seqlens, causal, scale):
    # No check of the kernels' limits here: importing fastprompt.kernels while torch.compile traces
    # would break the guard that tracing triton_available put on sys.modules. The launchers check.
    return fake_forward(q, torch.float32)


def _bwd_fake(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale, deterministic, prompt_grad):
    return fake_backward(q, pk, pv, prompt_grads=prompt_grad)


# The backward op skips dpk / dpv unless asked for, and reads the reduction mode at each backward.
register_attention_op("fastprompt::prompt_attention_triton", "fastprompt::prompt_attention_triton_bwd",
                      forward_fake=_fwd_fake, backward_fake=_bwd_fake,
                      formula=backward_formula(prompt_attention_triton_bwd,
                                               extra_args=lambda prompt_grad: (deterministic(), prompt_grad)))


# ---- the backend -----------------------------------------------------------------------------

def triton_prompt_attention(args: AttentionArgs):
    """Backend function: ``(out [N, L, H, d], lse [N, H, L] fp32 or None)``; see ``prompt_attention``.

    Raises:
        ValueError: for float64 inputs or a head dim above ``fastprompt.kernels.MAX_HEAD_DIM`` (use
            ``backend="eager"``), from the launchers (``fastprompt.kernels.check_supported``).
    """
    if has_nonfinite(args):  # CPU (the interpreter) only: masked keys kept out exactly, as in eager
        out, lse = eager_prompt_attention(args)
        return out, (lse if args.return_lse else None)  # as the kernels answer
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    out, lse = prompt_attention_triton(args.q, args.k, args.v, args.pk, args.pv, args.group, args.seqlens,
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
