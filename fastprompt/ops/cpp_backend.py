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

The extensions are loaded (built on first use if needed) by :mod:`fastprompt.ops.jit`; the
availability probes only look for a prebuilt module, a cached build, or a toolchain able to build
one, so importing this module compiles nothing. Kernels are registered as the torch ops
``torch.ops.fastprompt.cpp_prompt_attention_fwd`` / ``_bwd`` (with fake implementations for
``torch.compile``); autograd goes through :class:`CppPromptAttentionFunction`.
"""
from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch

from . import jit
from .eager import _sdpa_attention, _sdpa_shared_prompt_attention, eager_prompt_attention
from .registry import register_backend
from .validation import AttentionArgs

logger = logging.getLogger("fastprompt.ops")

_fake_registered = False
_reported: set = set()


def _ops():
    return torch.ops.fastprompt


def _register_fakes() -> None:
    """Shape-only implementations so ``torch.compile`` can trace through the ops."""
    global _fake_registered
    if _fake_registered:
        return
    _fake_registered = True

    @torch.library.register_fake("fastprompt::cpp_prompt_attention_fwd")
    def _fwd_fake(q, k, v, pk, pv, group, seqlens, causal, scale):
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        n, seq_len, heads, _ = q.shape
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((n, heads, seq_len), dtype=acc)

    @torch.library.register_fake("fastprompt::cpp_prompt_attention_bwd")
    def _bwd_fake(dout, dlse, q, k, v, pk, pv, group, seqlens, out, lse, causal, scale):
        grads = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, q, q)]
        prompt = [pk.new_empty(pk.shape) if pk is not None else q.new_empty((0,)) for _ in range(2)]
        return (*grads, *prompt)


def _load(kind: str) -> None:
    jit.load_extension(kind)
    _register_fakes()


class CppPromptAttentionFunction(torch.autograd.Function):
    """Autograd for the compiled kernels: ``(q, k, v, pk, pv, group, seqlens, causal, scale) -> (out, lse)``.

    Saves the inputs, ``out`` and ``lse`` (nothing of size L x L); the backward returns gradients
    for q, k, v, pk, pv (``None`` for the integer and flag arguments), accepting a gradient for
    ``lse`` too, so merged partial attentions differentiate correctly.
    """

    @staticmethod
    def forward(ctx, q, k, v, pk, pv, group, seqlens, causal: bool, scale: float):
        out, lse = _ops().cpp_prompt_attention_fwd(q, k, v, pk, pv, group, seqlens, causal, scale)
        ctx.save_for_backward(q, k, v, pk, pv, group, seqlens, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out, lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlse):
        q, k, v, pk, pv, group, seqlens, out, lse = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        dq, dk, dv, dpk, dpv = _ops().cpp_prompt_attention_bwd(dout, dlse, q, k, v, pk, pv, group, seqlens,
                                                               out, lse, ctx.causal, ctx.scale)
        if pk is None:
            dpk = dpv = None
        return dq, dk, dv, dpk, dpv, None, None, None, None


def _run_kernels(args: AttentionArgs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    inputs = (args.q, args.k, args.v, args.pk, args.pv)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        out, lse = CppPromptAttentionFunction.apply(*inputs, args.group, args.seqlens, args.causal, args.scale)
    else:
        out, lse = _ops().cpp_prompt_attention_fwd(*inputs, args.group, args.seqlens, args.causal, args.scale)
    return out, (lse if args.return_lse else None)


def shares_one_block_without_mask(args: AttentionArgs) -> bool:
    """A non-causal call with full lengths reading one batch-shared prompt block, without the lse:
    the prompted layers of a ViT image tower (deep vision prompts, MaPLe, PromptSRC, RPP)."""
    return (args.pk is not None and args.group is None and not args.causal and args.seqlens is None
            and not args.return_lse)


def cpu_prompt_attention(args: AttentionArgs):
    """The ``cpu`` backend (see the module docstring)."""
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    if shares_one_block_without_mask(args):
        # ViT layers: ~200 own keys per sequence and a few prompt rows. SDPA's fused CPU kernel over the
        # concatenated keys ran 1.2-1.8x faster (forward + backward) than the C++ kernel there on a
        # 2-core CPU (batch 4 and 32 x 197 tokens, 4 or 16 prompts; L = 50); the C++ kernel keeps the
        # short causal and grouped text layers, where it is 2-3x faster than the alternatives.
        return _sdpa_shared_prompt_attention(args), None
    _load("cpu")
    return _run_kernels(args)


def cuda_prompt_attention(args: AttentionArgs):
    """The ``cuda`` backend (see the module docstring)."""
    if args.pk is None and not args.return_lse:
        return _sdpa_attention(args), None
    if args.q.dtype == torch.float64:  # the CUDA kernels accumulate in float32
        return eager_prompt_attention(args)
    _load("cuda")
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
