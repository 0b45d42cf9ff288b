"""The ``cpu`` and ``cuda`` backends of ``prompt_attention``: the C++ / CUDA kernels of ``csrc/``.

Both run the op's contract in compiled kernels: an online softmax over the prompt block and then
the sequence's own visible keys, the group map read per sequence (a G = 1 block with batch
stride 0, never copied), ragged ``seqlens``, causal own keys, and the log-sum-exp in float32
(float64 for float64 inputs on CPU). The backward recomputes probabilities from the saved lse
and reduces dpk / dpv over every sequence of a group inside the kernel.

* ``cpu``: C++ with ATen's OpenMP thread pool and ``omp simd`` inner loops; float32, float64,
  bfloat16 and float16 (float32 accumulation).
* ``cuda``: CUDA kernels for float32, bfloat16 and float16 (float32 accumulation), head dim
  <= 128, compiled for sm_80 / sm_90 plus PTX (``FASTPROMPT_CUDA_ARCH_LIST``). float64 inputs are
  handed to the eager backend.

Calls without a prompt block that do not ask for the lse (the plain layers of both towers) go to
``F.scaled_dot_product_attention`` like the eager backend: it is already a fused kernel there. On
CPU, so do the non-causal calls with one batch-shared prompt block and no lse (the prompted ViT
layers), with the block's keys and values placed in front of each sequence's own: there the fused
kernel beats the C++ one.

The kernels run as the torch ops ``fastprompt::cpp_prompt_attention_fwd`` / ``_bwd``, declared here
at import (one schema for both devices) and registered like the ``triton`` backend's ops by
:func:`fastprompt.ops.op_registration.register_attention_op`: fake implementations for
``torch.compile``, and the forward's autograd formula calling the backward op. The extensions,
loaded (built on first use if needed) by :mod:`fastprompt.ops.jit`, add the CPU and CUDA kernels
of those ops; the availability probes only look for a prebuilt module, a cached build, or a
toolchain able to build one, so importing this module compiles nothing.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch

from . import jit
from .eager import _sdpa_attention, _sdpa_shared_prompt_attention, eager_prompt_attention
from .masked_exactness import has_nonfinite
from .op_registration import backward_formula, fake_backward, fake_forward, register_attention_op
from .registry import register_backend
from .validation import AttentionArgs

logger = logging.getLogger("fastprompt.ops")

_reported: set = set()


# ---- the torch ops ---------------------------------------------------------------------------
# Declared once per process, here, so that the CPU and the CUDA extension (either, both, in
# either order) only register kernels: see csrc/prompt_attention/extension_module.h. Until an
# extension loads, the ops trace (fake tensors) but have no kernel to run.

FORWARD_OP = "fastprompt::cpp_prompt_attention_fwd"
BACKWARD_OP = "fastprompt::cpp_prompt_attention_bwd"
torch.library.define(
    FORWARD_OP,
    "(Tensor q, Tensor k, Tensor v, Tensor? pk, Tensor? pv, Tensor? group, Tensor? seqlens, bool causal, "
    "float scale) -> (Tensor out, Tensor lse)")
torch.library.define(
    BACKWARD_OP,
    "(Tensor dout, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor? pk, Tensor? pv, Tensor? group, "
    "Tensor? seqlens, Tensor out, Tensor lse, bool causal, float scale) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dpk, Tensor dpv)")


def _fwd_fake(q, k, v, pk, pv, group, seqlens, causal, scale):
    # lse in the accumulation type: float64 for float64 inputs (CPU), float32 otherwise.
    return fake_forward(q, torch.float64 if q.dtype == torch.float64 else torch.float32)


def _bwd_fake(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale):
    return fake_backward(q, pk, pv, prompt_grads=True)  # the kernels always return dpk / dpv with a block


# The kernels compute dpk / dpv whenever a block is given, so the backward op takes no extra arguments.
register_attention_op(FORWARD_OP, BACKWARD_OP, forward_fake=_fwd_fake, backward_fake=_bwd_fake,
                      formula=backward_formula(torch.ops.fastprompt.cpp_prompt_attention_bwd))


def _run_kernels(args: AttentionArgs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    out, lse = torch.ops.fastprompt.cpp_prompt_attention_fwd(args.q, args.k, args.v, args.pk, args.pv, args.group,
                                                             args.seqlens, args.causal, args.scale)
    return out, (lse if args.return_lse else None)


def shares_one_block_without_mask(args: AttentionArgs) -> bool:
    """A non-causal call with full lengths reading one batch-shared prompt block, without the lse:
    the prompted layers of a ViT image tower (deep vision prompts, MaPLe, PromptSRC, RPP)."""
    return (args.pk is not None and args.group is None and not args.causal and args.seqlens is None
            and not args.return_lse)


def cpu_prompt_attention(args: AttentionArgs):
    """The ``cpu`` backend (see the module docstring)."""
    if has_nonfinite(args):
        # The kernels multiply a row block's zero probabilities of masked keys into P V (0 * NaN is
        # NaN); the eager backend keeps masked keys out exactly (fastprompt.ops.masked_exactness).
        out, lse = eager_prompt_attention(args)
        return out, (lse if args.return_lse else None)  # as the kernels answer
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    if shares_one_block_without_mask(args):
        # ViT layers: ~200 own keys per sequence and a few prompt rows. SDPA's fused CPU kernel over the
        # concatenated keys ran 1.2-1.8x faster (forward + backward) than the C++ kernel there on a
        # 2-core CPU (batch 4 and 32 x 197 tokens, 4 or 16 prompts; L = 50); the C++ kernel keeps the
        # short causal and grouped text layers, where it is 2-3x faster than the alternatives.
        return _sdpa_shared_prompt_attention(args), None
    jit.load_extension("cpu")
    return _run_kernels(args)


def cuda_prompt_attention(args: AttentionArgs):
    """The ``cuda`` backend (see the module docstring)."""
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    if args.q.dtype == torch.float64:  # the CUDA kernels accumulate in float32
        return eager_prompt_attention(args)
    jit.load_extension("cuda")
    return _run_kernels(args)


def _report(kind: str, reason: str) -> str:
    """Log a toolchain / build reason once (INFO): ``auto`` then takes the next backend."""
    if (kind, reason) not in _reported:
        _reported.add((kind, reason))
        logger.info("fastprompt: prompt_attention backend %r unavailable, backend='auto' falls back: %s", kind, reason)
    return reason


def cpu_available(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return f"runs on CPU tensors, not {device.type}"
    reason = jit.extension_problem("cpu")
    return None if reason is None else _report("cpu", reason)


def cuda_available(device: torch.device) -> Optional[str]:
    if device.type != "cuda":
        return f"runs on CUDA tensors, not {device.type}"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    reason = jit.extension_problem("cuda")
    if reason is not None:
        return _report("cuda", reason)
    major, minor = torch.cuda.get_device_capability(device)
    targets = jit.built_cuda_targets()
    sm = major * 10 + minor
    number = lambda target: int("".join(ch for ch in target.split("_", 1)[1] if ch.isdigit()))
    # A cubin runs on its own architecture; PTX is compiled by the driver for newer ones.
    runs = any(t.startswith("sm_") and number(t) == sm for t in targets) or \
        any(t.startswith("compute_") and number(t) <= sm for t in targets)
    if not runs:
        return _report("cuda", f"the CUDA extension targets {targets}, which do not run on sm_{sm}; set "
                               f"FASTPROMPT_CUDA_ARCH_LIST={major}.{minor} and rebuild")
    return None


register_backend("cpu", cpu_prompt_attention, cpu_available,
                 description="C++ kernels (csrc/, OpenMP + SIMD), JIT-built on first use")
register_backend("cuda", cuda_prompt_attention, cuda_available,
                 description="CUDA kernels (csrc/, sm_80/sm_90 + PTX), JIT-built on first use")
